"""Playbook scenarios: TOML files -> frozen dataclasses, validated when the run starts.

``scenarios/`` holds one file per playbook scenario (``<id>.toml``) and two shared files:
``_generic.toml`` (the playbook's common mitigations, Phase 2 Step 6) and ``_severity.toml``
(severity levels, the impact matrix, the escalation matrix and the component dependency graph).
A team adds a scenario by dropping a file there; nothing else changes. Every problem is a
``CatalogueError`` whose one-line message names the file and the key.
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labcheck.errors import CatalogueError

GENERIC_FILE = "_generic.toml"
SEVERITY_FILE = "_severity.toml"
LEVELS = ("SEV-1", "SEV-2", "SEV-3", "SEV-4")
ALLURE_SEVERITIES = ("blocker", "critical", "normal", "minor", "trivial")

_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_CONDITION = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Step:
    """One investigation or mitigation step; ``when`` names a condition the run may know."""

    text: str
    command: str | None = None
    when: str | None = None


@dataclass(frozen=True)
class Escalation:
    """One row of the playbook's escalation matrix."""

    condition: str
    to: str
    contact: str
    applies_to: tuple[str, ...] = ()

    def line(self) -> str:
        return f"{self.condition}: escalate to {self.to} ({self.contact})"


@dataclass(frozen=True)
class Level:
    """One severity level of the playbook's classification table."""

    name: str
    definition: str
    response_time: str
    response_minutes: int
    allure: str


@dataclass(frozen=True)
class Impact:
    """One row of the playbook's impact assessment matrix."""

    component: str
    name: str
    users: str
    business: str
    severity: str
    customer: str | None = None  # the service in a customer's words (the status page); None: not customer-facing

    def words(self) -> str:
        users = "all users" if self.users.lower() == "all" else f"{self.users.lower()}"
        return f"{self.name} ({users} affected; business impact {self.business.lower()})"


@dataclass(frozen=True)
class SeverityData:
    """Severity levels, impact matrix, escalation matrix and the component dependency graph."""

    levels: Mapping[str, Level] = field(default_factory=dict)
    impact: Mapping[str, Impact] = field(default_factory=dict)
    escalation: tuple[Escalation, ...] = ()
    depends_on: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    playbook: str | None = None

    def level(self, name: str | None) -> Level | None:
        return self.levels.get(name) if name else None

    def rule(self, condition: str) -> Escalation | None:
        return next((r for r in self.escalation if r.condition == condition), None)

    def upstream(self, component: str | None) -> dict[str, list[str]]:
        """Every component ``component`` depends on, directly or not, with the path to it."""
        paths: dict[str, list[str]] = {}
        if not component:
            return paths
        stack = [(dep, [component, dep]) for dep in self.depends_on.get(component, ())]
        while stack:
            dep, path = stack.pop(0)
            if dep in paths:
                continue
            paths[dep] = path
            stack.extend((d, [*path, d]) for d in self.depends_on.get(dep, ()))
        return paths


@dataclass(frozen=True)
class Scenario:
    """One playbook scenario."""

    id: str
    title: str
    symptoms: tuple[str, ...]
    mitigation: tuple[Step, ...]
    investigation: tuple[Step, ...] = ()
    escalation: tuple[Escalation, ...] = ()
    playbook: str | None = None
    causes: tuple[str, ...] = ()
    implies: tuple[str, ...] = ()
    source: str = field(default="", compare=False)

    def mitigation_texts(self) -> list[str]:
        return [s.text for s in self.mitigation]


@dataclass(frozen=True)
class Catalogue:
    """Every scenario, the generic mitigations and the severity data."""

    scenarios: Mapping[str, Scenario]
    generic: tuple[Step, ...] = ()
    severity: SeverityData = field(default_factory=SeverityData)
    directory: Path | None = None
    generic_playbook: str | None = None

    def get(self, scenario_id: str | None) -> Scenario | None:
        return self.scenarios.get(scenario_id) if scenario_id else None

    def is_symptom(self, scenario_id: str | None) -> bool:
        """Whether a scenario is an effect other scenarios list in their ``causes`` (e.g. high-error-rate).

        Other scenarios are failure modes (pod-crash-loop, storage-failure, ...): a failing dependency
        explains them only where the catalogue says so.
        """
        return any(scenario_id in sc.causes for sc in self.scenarios.values())

    def explained_by(self, scenario_id: str | None) -> set[str]:
        """Every scenario that ``scenario_id`` causes, directly or not."""
        seen: set[str] = set()
        sc = self.get(scenario_id)
        stack = list(sc.causes) if sc else []
        while stack:
            sid = stack.pop()
            if sid not in seen:
                seen.add(sid)
                nxt = self.get(sid)
                stack.extend(nxt.causes if nxt else ())
        return seen


# --- reading --------------------------------------------------------------------------------


def _need(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in doc:
        raise CatalogueError(f"{where}: key {key!r} is missing")
    return _kind(doc[key], key, kind, where)


def _kind(value: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        names = " or ".join({str: "string", list: "list", dict: "table", int: "integer"}.get(k, k.__name__)
                            for k in kinds)
        raise CatalogueError(f"{where}: key {key!r} must be a {names}")
    if isinstance(value, str) and not value.strip():
        raise CatalogueError(f"{where}: key {key!r} must not be empty")
    return value


def _strings(doc: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> tuple[str, ...]:
    if key not in doc and not required:
        return ()
    items = _need(doc, key, list, where)
    if not all(isinstance(s, str) and s.strip() for s in items):
        raise CatalogueError(f"{where}: key {key!r} must be a list of non-empty strings")
    return tuple(items)


def _no_unknown_keys(doc: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise CatalogueError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")


def check_placeholders(text: str, key: str, where: str) -> None:
    """A command's ``{placeholders}`` must name configuration keys that are not secrets."""
    from labcheck.config import KEYS

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise CatalogueError(f"{where}: key {key!r}: bad placeholder ({exc}); write {{{{ and }}}} for braces") from None
    for name in fields:
        base = re.split(r"[.\[!:]", name, maxsplit=1)[0]
        if base not in KEYS:
            raise CatalogueError(f"{where}: key {key!r}: placeholder {{{name}}} is not a configuration key"
                                 " (write {{ and }} for literal braces)")
        if KEYS[base].secret:
            raise CatalogueError(f"{where}: key {key!r}: placeholder {{{name}}} is a secret; use an environment"
                                 f" variable such as ${base.upper()} instead")


def _steps(doc: Mapping[str, Any], key: str, where: str, *, required: bool) -> tuple[Step, ...]:
    if key not in doc and not required:
        return ()
    items = _need(doc, key, list, where)
    if required and not items:
        raise CatalogueError(f"{where}: key {key!r} must list at least one step")
    steps = []
    for index, item in enumerate(items):
        at = f"{key}[{index}]"
        if isinstance(item, str):
            steps.append(Step(text=item))
            continue
        if not isinstance(item, dict):
            raise CatalogueError(f"{where}: key {at!r} must be a string or a table with 'step'")
        _no_unknown_keys(item, ("step", "command", "when"), f"{where}: key {at!r}")
        text = _need(item, "step", str, f"{where}: key {at!r}")
        command = item.get("command")
        if command is not None:
            _kind(command, f"{at}.command", str, where)
            check_placeholders(command, f"{at}.command", where)
        when = item.get("when")
        if when is not None:
            _kind(when, f"{at}.when", str, where)
            if not _CONDITION.match(when):
                raise CatalogueError(f"{where}: key '{at}.when' must be a condition name such as oom_killed,"
                                     f" got {when!r}")
        steps.append(Step(text=text, command=command, when=when))
    return tuple(steps)


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise CatalogueError(f"{path}: cannot read: {exc.strerror}") from None


SCENARIO_KEYS = ("id", "title", "symptoms", "investigation", "mitigation", "escalation", "playbook",
                 "causes", "implies")


def _escalation_refs(doc: Mapping[str, Any], where: str, severity: SeverityData) -> tuple[Escalation, ...]:
    """A scenario's escalation: conditions of the escalation matrix, or tables of its own."""
    if "escalation" not in doc:
        return ()
    value = doc["escalation"]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise CatalogueError(f"{where}: key 'escalation' must be a list of escalation-matrix conditions or tables")
    out = []
    for index, item in enumerate(items):
        at = f"escalation[{index}]"
        if isinstance(item, str):
            rule = severity.rule(item)
            if rule is None:
                known = "; ".join(r.condition for r in severity.escalation) or "none"
                raise CatalogueError(f"{where}: key {at!r}: {item!r} is not a condition of the escalation"
                                     f" matrix in {SEVERITY_FILE} (known: {known})")
            out.append(rule)
        elif isinstance(item, dict):
            _no_unknown_keys(item, ("condition", "to", "contact"), f"{where}: key {at!r}")
            out.append(Escalation(condition=_need(item, "condition", str, f"{where}: key {at!r}"),
                                  to=_need(item, "to", str, f"{where}: key {at!r}"),
                                  contact=_need(item, "contact", str, f"{where}: key {at!r}")))
        else:
            raise CatalogueError(f"{where}: key {at!r} must be a condition string or a table")
    return tuple(out)


def load_scenario(path: Path, severity: SeverityData | None = None) -> Scenario:
    """Read and validate one scenario file."""
    doc = _load_toml(path)
    where = str(path)
    _no_unknown_keys(doc, SCENARIO_KEYS, where)
    scenario_id = _need(doc, "id", str, where)
    if scenario_id != path.stem:
        raise CatalogueError(f"{where}: key 'id' is {scenario_id!r} but the file is named {path.stem!r}")
    if not _ID.match(scenario_id):
        raise CatalogueError(f"{where}: key 'id' must be lowercase letters, digits and '-', got {scenario_id!r}")
    playbook = doc.get("playbook")
    if playbook is not None:
        _kind(playbook, "playbook", str, where)
    implies = _strings(doc, "implies", where)
    for name in implies:
        if not _CONDITION.match(name):
            raise CatalogueError(f"{where}: key 'implies' must list condition names such as db_bound, got {name!r}")
    return Scenario(
        id=scenario_id,
        title=_need(doc, "title", str, where),
        symptoms=_strings(doc, "symptoms", where, required=True),
        investigation=_steps(doc, "investigation", where, required=False),
        mitigation=_steps(doc, "mitigation", where, required=True),
        escalation=_escalation_refs(doc, where, severity or SeverityData()),
        playbook=playbook,
        causes=_strings(doc, "causes", where),
        implies=implies,
        source=where,
    )


def load_severity(path: Path) -> SeverityData:
    """Read and validate ``_severity.toml``."""
    doc = _load_toml(path)
    where = str(path)
    _no_unknown_keys(doc, ("playbook", "levels", "impact", "escalation", "depends_on"), where)
    levels: dict[str, Level] = {}
    for name, table in _need(doc, "levels", dict, where).items():
        at = f"levels.{name}"
        if name not in LEVELS:
            raise CatalogueError(f"{where}: key {at!r}: levels are {', '.join(LEVELS)}")
        _kind(table, at, dict, where)
        _no_unknown_keys(table, ("definition", "response_time", "response_minutes", "allure"), f"{where}: key {at!r}")
        allure = _need(table, "allure", str, f"{where}: key {at!r}")
        if allure not in ALLURE_SEVERITIES:
            raise CatalogueError(f"{where}: key '{at}.allure' must be one of {', '.join(ALLURE_SEVERITIES)}")
        levels[name] = Level(name=name, definition=_need(table, "definition", str, f"{where}: key {at!r}"),
                             response_time=_need(table, "response_time", str, f"{where}: key {at!r}"),
                             response_minutes=_need(table, "response_minutes", int, f"{where}: key {at!r}"),
                             allure=allure)
    missing = [n for n in LEVELS if n not in levels]
    if missing:
        raise CatalogueError(f"{where}: key 'levels.{missing[0]}' is missing")
    impact: dict[str, Impact] = {}
    for component, table in _need(doc, "impact", dict, where).items():
        at = f"impact.{component}"
        _kind(table, at, dict, where)
        _no_unknown_keys(table, ("name", "users", "business", "severity", "customer"), f"{where}: key {at!r}")
        customer = table.get("customer")
        if customer is not None:
            _kind(customer, f"{at}.customer", str, where)
        impact[component] = Impact(component=component, name=_need(table, "name", str, f"{where}: key {at!r}"),
                                   users=_need(table, "users", str, f"{where}: key {at!r}"),
                                   business=_need(table, "business", str, f"{where}: key {at!r}"),
                                   severity=_need(table, "severity", str, f"{where}: key {at!r}"),
                                   customer=customer)
    depends_on: dict[str, tuple[str, ...]] = {}
    for component, deps in doc.get("depends_on", {}).items():
        depends_on[component] = _strings({component: deps}, component, f"{where}: table 'depends_on'")
    known = set(depends_on) | set(impact)
    for component, deps in depends_on.items():
        for dep in deps:
            if dep not in known:
                raise CatalogueError(f"{where}: key 'depends_on.{component}': {dep!r} is not a component"
                                     f" ({', '.join(sorted(known))})")
    _check_acyclic(depends_on, lambda c: depends_on.get(c, ()), f"{where}: key 'depends_on'")
    rules = []
    for index, table in enumerate(doc.get("escalation", [])):
        at = f"escalation[{index}]"
        _kind(table, at, dict, where)
        _no_unknown_keys(table, ("condition", "to", "contact", "applies_to"), f"{where}: key {at!r}")
        applies = _strings(table, "applies_to", f"{where}: key {at!r}")
        for sev in applies:
            if sev not in LEVELS:
                raise CatalogueError(f"{where}: key '{at}.applies_to': {sev!r} is not one of {', '.join(LEVELS)}")
        rules.append(Escalation(condition=_need(table, "condition", str, f"{where}: key {at!r}"),
                                to=_need(table, "to", str, f"{where}: key {at!r}"),
                                contact=_need(table, "contact", str, f"{where}: key {at!r}"),
                                applies_to=applies))
    playbook = doc.get("playbook")
    return SeverityData(levels=levels, impact=impact, escalation=tuple(rules), depends_on=depends_on,
                        playbook=playbook if isinstance(playbook, str) else None)


def _check_acyclic(nodes: Mapping[str, Any], edges: Any, where: str) -> None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 2:
            return
        if state.get(node) == 1:
            cycle = " -> ".join([*path[path.index(node):], node])
            raise CatalogueError(f"{where}: cycle {cycle}")
        state[node] = 1
        for nxt in edges(node):
            visit(nxt, [*path, node])
        state[node] = 2

    for node in nodes:
        visit(node, [])


def load_catalogue(directory: Path) -> Catalogue:
    """Every ``*.toml`` in the directory; files starting with '_' hold shared data."""
    if not directory.is_dir():
        raise CatalogueError(f"{directory}: scenario directory not found")
    severity = SeverityData()
    if (directory / SEVERITY_FILE).is_file():
        severity = load_severity(directory / SEVERITY_FILE)
    scenarios: dict[str, Scenario] = {}
    for path in sorted(directory.glob("*.toml")):
        if path.name.startswith("_"):
            if path.name not in (GENERIC_FILE, SEVERITY_FILE):
                raise CatalogueError(f"{path}: unknown shared file (files starting with '_' are"
                                     f" {GENERIC_FILE} and {SEVERITY_FILE})")
            continue
        scenario = load_scenario(path, severity)
        scenarios[scenario.id] = scenario
    for scenario in scenarios.values():
        for index, other in enumerate(scenario.causes):
            if other not in scenarios:
                raise CatalogueError(f"{scenario.source}: key 'causes[{index}]': {other!r} is not a scenario"
                                     f" ({', '.join(sorted(scenarios))})")
    _check_acyclic(scenarios, lambda s: scenarios[s].causes, "scenario key 'causes'")
    generic: tuple[Step, ...] = ()
    generic_playbook = None
    if (directory / GENERIC_FILE).is_file():
        doc = _load_toml(directory / GENERIC_FILE)
        _no_unknown_keys(doc, ("playbook", "mitigation"), str(directory / GENERIC_FILE))
        generic = _steps(doc, "mitigation", str(directory / GENERIC_FILE), required=True)
        generic_playbook = doc.get("playbook") if isinstance(doc.get("playbook"), str) else None
    return Catalogue(scenarios=scenarios, generic=generic, severity=severity, directory=directory,
                     generic_playbook=generic_playbook)
