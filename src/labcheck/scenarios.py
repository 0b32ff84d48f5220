"""Playbook scenarios: TOML files -> frozen dataclasses, validated when the run starts."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labcheck.errors import CatalogueError

GENERIC_FILE = "_generic.toml"
SEVERITY_FILE = "_severity.toml"


@dataclass(frozen=True)
class Step:
    """One investigation or mitigation step; ``when`` names a condition the run may know."""

    text: str
    command: str | None = None
    when: str | None = None


@dataclass(frozen=True)
class Scenario:
    """One playbook scenario."""

    id: str
    title: str
    symptoms: tuple[str, ...]
    mitigation: tuple[Step, ...]
    investigation: tuple[Step, ...] = ()
    escalation: str | None = None
    playbook: str | None = None
    source: str = field(default="", compare=False)

    def mitigation_texts(self) -> list[str]:
        return [s.text for s in self.mitigation]


@dataclass(frozen=True)
class Catalogue:
    """Every scenario, the generic mitigations and the severity data."""

    scenarios: Mapping[str, Scenario]
    generic: tuple[Step, ...] = ()
    severity: Mapping[str, Any] = field(default_factory=dict)
    directory: Path | None = None

    def get(self, scenario_id: str | None) -> Scenario | None:
        return self.scenarios.get(scenario_id) if scenario_id else None


def _need(doc: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in doc:
        raise CatalogueError(f"{where}: key {key!r} is missing")
    value = doc[key]
    if not isinstance(value, kind):
        raise CatalogueError(f"{where}: key {key!r} must be a {kind.__name__}")
    return value


def _steps(doc: Mapping[str, Any], key: str, where: str, *, required: bool) -> tuple[Step, ...]:
    if key not in doc and not required:
        return ()
    items = _need(doc, key, list, where)
    if required and not items:
        raise CatalogueError(f"{where}: key {key!r} must list at least one step")
    steps = []
    for index, item in enumerate(items):
        at = f"{where}: key {key}[{index}]"
        if isinstance(item, str):
            steps.append(Step(text=item))
            continue
        if not isinstance(item, dict):
            raise CatalogueError(f"{at}: must be a string or a table with 'step'")
        text = _need(item, "step", str, at)
        unknown = set(item) - {"step", "command", "when"}
        if unknown:
            raise CatalogueError(f"{at}: unknown key {sorted(unknown)[0]!r}")
        steps.append(Step(text=text, command=item.get("command"), when=item.get("when")))
    return tuple(steps)


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise CatalogueError(f"{path}: cannot read: {exc.strerror}") from None


def load_scenario(path: Path) -> Scenario:
    """Read and validate one scenario file."""
    doc = _load_toml(path)
    where = str(path)
    known = {"id", "title", "symptoms", "investigation", "mitigation", "escalation", "playbook"}
    unknown = set(doc) - known
    if unknown:
        raise CatalogueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    scenario_id = _need(doc, "id", str, where)
    if scenario_id != path.stem:
        raise CatalogueError(f"{where}: key 'id' is {scenario_id!r} but the file is named {path.stem!r}")
    symptoms = _need(doc, "symptoms", list, where)
    if not all(isinstance(s, str) for s in symptoms):
        raise CatalogueError(f"{where}: key 'symptoms' must be a list of strings")
    escalation = doc.get("escalation")
    if escalation is not None and not isinstance(escalation, str):
        raise CatalogueError(f"{where}: key 'escalation' must be a str")
    return Scenario(
        id=scenario_id,
        title=_need(doc, "title", str, where),
        symptoms=tuple(symptoms),
        investigation=_steps(doc, "investigation", where, required=False),
        mitigation=_steps(doc, "mitigation", where, required=True),
        escalation=escalation,
        playbook=doc.get("playbook"),
        source=where,
    )


def load_catalogue(directory: Path) -> Catalogue:
    """Every ``*.toml`` in the directory; files starting with '_' hold shared data."""
    if not directory.is_dir():
        raise CatalogueError(f"{directory}: scenario directory not found")
    scenarios: dict[str, Scenario] = {}
    for path in sorted(directory.glob("*.toml")):
        if path.name.startswith("_"):
            continue
        scenario = load_scenario(path)
        scenarios[scenario.id] = scenario
    generic: tuple[Step, ...] = ()
    if (directory / GENERIC_FILE).is_file():
        generic = _steps(_load_toml(directory / GENERIC_FILE), "mitigation", str(directory / GENERIC_FILE), required=True)
    severity: dict[str, Any] = {}
    if (directory / SEVERITY_FILE).is_file():
        severity = _load_toml(directory / SEVERITY_FILE)
    return Catalogue(scenarios=scenarios, generic=generic, severity=severity, directory=directory)
