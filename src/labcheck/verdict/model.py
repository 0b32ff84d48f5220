"""The verdict's vocabulary: a check's result, a finding, a rollout, a piece of advice, and their JSON shapes.

The bottom of ``labcheck.verdict``: it imports none of the other verdict modules. Each class's
``doc`` gives the dict written into triage.json (described by ``triage.schema.json``), keys in
the order the file has always had them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "triage.schema.json"
BUSINESS_ORDER = ("critical", "high", "medium", "low", "none")
OUTCOMES = ("passed", "failed", "unknown", "skipped")
ROLLBACK = "recent-rollout"  # the scenario of the rollback step a suspect rollout puts first


def sev_name(level: int | None) -> str | None:
    return f"SEV-{level}" if level else None


@dataclass(frozen=True)
class CheckResult:
    """One check's result, as the plugin reported it."""

    nodeid: str
    outcome: str
    component: str | None = None
    level: int | None = None
    scenario: str | None = None
    message: str | None = None
    observed: list[Any] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    duration_s: Any = 0.0
    condition: str | None = None  # what a failing check observed; it picked ``scenario``

    @classmethod
    def from_raw(cls, r: Mapping[str, Any]) -> CheckResult:
        """From the plugin's dict (a ``severity`` level 1-4); lenient, as a verdict error's fallback needs."""
        return cls(nodeid=r.get("nodeid"), outcome=r.get("outcome"),  # type: ignore[arg-type]
                   component=r.get("component"), level=r.get("severity"), scenario=r.get("scenario"),
                   message=r.get("message"), observed=r.get("observed") or [], facts=r.get("facts") or {},
                   duration_s=r.get("duration_s", 0.0), condition=r.get("condition"))

    @property
    def severity(self) -> str | None:
        return sev_name(self.level)

    def doc(self) -> dict[str, Any]:
        return {"nodeid": self.nodeid, "outcome": self.outcome, "component": self.component,
                "severity": self.severity, "scenario": self.scenario, "message": self.message,
                "observed": self.observed, "facts": self.facts, "duration_s": self.duration_s,
                "condition": self.condition}


SERIOUS = ("SEV-1", "SEV-2")


def fully_verified(rows: Iterable[tuple[str | None, str]]) -> bool:
    """(severity, outcome) of every selected check: nothing failed, and every sev1 and sev2 check ran
    and passed (at least one was selected)."""
    seen = list(rows)
    serious = [outcome for severity, outcome in seen if severity in SERIOUS]
    return bool(serious) and all(o == "passed" for o in serious) and all(o != "failed" for _, o in seen)


def counts(checks: list[CheckResult]) -> dict[str, int]:
    return {o: sum(1 for c in checks if c.outcome == o) for o in OUTCOMES}


@dataclass(frozen=True)
class Finding:
    """Failing checks of one (component, scenario); once ranked, a cause or a symptom with the reason why."""

    label: str
    scenario: str | None
    title: str | None
    component: str
    severity: str | None
    level: int
    check: str
    checks: list[str]
    via: str | None = None  # the component it was seen only through (the API gateway)
    why: str | None = None
    explains: list[str] = field(default_factory=list)  # a cause: the findings it explains
    caused_by: list[str] = field(default_factory=list)  # a symptom: the causes that explain it

    def public(self) -> dict[str, Any]:
        return {"label": self.label, "scenario": self.scenario, "title": self.title, "component": self.component,
                "severity": self.severity, "check": self.check, "checks": self.checks, "why": self.why}

    def cause_doc(self) -> dict[str, Any]:
        return {**self.public(), "explains": self.explains}

    def symptom_doc(self) -> dict[str, Any]:
        return {**self.public(), "caused_by": self.caused_by}


@dataclass(frozen=True)
class Rollout:
    """A recent rollout of a deployment (from the ``recent_rollout`` fact), with its rollback command."""

    deployment: str | None
    namespace: str
    revision: Any
    previous_revision: Any
    age_s: Any
    image: Any
    rollback: str | None

    def doc(self) -> dict[str, Any]:
        return {"kind": ROLLBACK, **asdict(self)}


@dataclass(frozen=True)
class Suspect:
    """A rollout suspected of the failures, and why."""

    rollout: Rollout
    why: str

    def doc(self) -> dict[str, Any]:
        return {**self.rollout.doc(), "why": self.why}


@dataclass(frozen=True)
class Advice:
    """A playbook step: to do (``condition`` unknown or true) or dropped (its condition known false)."""

    step: str
    command: str | None = None
    when: str | None = None
    condition: str | None = None
    because: str | None = None
    scenario: str | None = None

    def doc(self) -> dict[str, Any]:
        if self.scenario == ROLLBACK:
            return {"step": self.step, "command": self.command, "scenario": self.scenario,
                    "condition": self.condition, "because": self.because}
        return {k: v for k, v in asdict(self).items() if v is not None}

    def of(self, scenario: str) -> Advice:
        return replace(self, scenario=scenario)


@dataclass(frozen=True)
class ScenarioAdvice:
    """A failing scenario's playbook page, its steps evaluated against the run's facts."""

    id: str
    title: str
    role: str
    symptoms: list[str]
    mitigation: list[Advice]
    dropped: list[Advice]
    investigation: list[Advice]
    escalation: list[str]
    playbook: str | None

    def doc(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "role": self.role, "symptoms": self.symptoms,
                "mitigation": [a.doc() for a in self.mitigation],
                "dropped_mitigation": [a.doc() for a in self.dropped],
                "investigation": [a.doc() for a in self.investigation],
                "escalation": self.escalation, "playbook": self.playbook}


@dataclass(frozen=True)
class BlindSpot:
    """A check that could not check."""

    nodeid: str
    component: str | None
    severity: str | None
    reason: str | None


@dataclass(frozen=True)
class Impact:
    """One affected component's row of the impact matrix."""

    component: str
    name: str
    users: str | None
    business: str | None
    matrix_severity: str | None
    role: str
    customer: str | None = None  # the impact row's words for customers (the status page)


@dataclass
class Facts:
    """Conditions the run established, and which check (or scenario) established each."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def learn(self, name: str, value: Any, source: str) -> None:
        self.values[name] = value
        self.sources[name] = source


@dataclass(frozen=True)
class GateEvidence:
    """What `labcheck gate` adds to the resolution document: when, what history, what soak."""

    finished: float
    since: float | None = None
    history_window: str | None = None
    soak_rounds: int | None = None
    soak_s: float | None = None
