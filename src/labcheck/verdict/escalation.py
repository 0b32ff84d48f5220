"""The escalation matrix evaluated: a line appears only when its condition holds, with the facts it used.

Rows of ``_severity.toml`` are evaluated by their condition text (the playbook's wording); a
scenario's own rows (tables in its file) hold while that scenario is failing. A row that applies
but cannot be evaluated (the incident's start, or SLA data, unknown) is listed apart, as "not
evaluated", never as an escalation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from labcheck import config
from labcheck.scenarios import Escalation, Scenario, SeverityData
from labcheck.timefmt import iso_z, minutes_text, parse_timestamp
from labcheck.verdict.conditions import BREACH_EVIDENCE
from labcheck.verdict.model import Finding

config.declare(config.Key(
    "incident_start", parse_timestamp, None,
    "When the incident started (ISO-8601 or epoch seconds): the escalation matrix's \"SEV-1 not mitigated "
    "in 15 min\" and \"not resolved in 1 hour\" are evaluated from it"))

# Components that are managed infrastructure: their failure as a cause is the provider's to look at.
INFRASTRUCTURE = {"storage": "S3 (a managed service)", "kubernetes": "the cluster's nodes"}


@dataclass(frozen=True)
class Situation:
    """What the rules read: the incident's severity, its ranked findings, the run's facts and times."""

    sev: str | None
    causes: list[Finding]
    symptoms: list[Finding]
    facts: Mapping[str, Any]
    sources: Mapping[str, str]
    finished_at: float
    incident_start: float | None


@dataclass(frozen=True)
class Evaluated:
    """One escalation row, evaluated: ``holds`` is None when it could not be evaluated."""

    rule: Escalation
    holds: bool | None
    because: str

    def doc(self) -> dict[str, Any]:
        return {"condition": self.rule.condition, "to": self.rule.to, "contact": self.rule.contact,
                "holds": self.holds, "because": self.because, "line": self.rule.line()}


Verdict = tuple[bool | None, str]


def _sev1_for(limit_s: float) -> Callable[[Situation], Verdict]:
    def rule(s: Situation) -> Verdict:
        if s.sev != "SEV-1":
            return False, f"severity is {s.sev or 'none'}"
        if s.incident_start is None:
            return None, "incident start unknown (set incident_start)"
        open_s = s.finished_at - s.incident_start
        text = (f"SEV-1 still failing at {iso_z(s.finished_at)}, {minutes_text(max(open_s, 0.0))} after the "
                f"incident started at {iso_z(s.incident_start)} (incident_start)")
        return open_s >= limit_s, text
    return rule


def _breach(s: Situation) -> Verdict:
    seen = [f"{BREACH_EVIDENCE[name]} ({name}, {s.sources.get(name, 'run')})"
            for name in BREACH_EVIDENCE if s.facts.get(name)]
    if seen:
        return True, "; ".join(seen)
    return False, "no evidence of a breach (auth failures, clock skew or a missing secret alone are not)"


def _sla(s: Situation) -> Verdict:
    if s.sev not in ("SEV-1", "SEV-2"):
        return False, f"severity is {s.sev or 'none'}"
    return None, "labcheck has no customer SLA data; check the SLA for this impact"


def _infrastructure(s: Situation) -> Verdict:
    if s.facts.get("aws_outage"):
        return True, f"aws_outage = true ({s.sources.get('aws_outage', 'run')})"
    # A bucket deleted, full or refused while S3 itself answers (aws_outage ruled out by this run) is
    # not the provider's to fix: no support ticket for it.
    ruled_out = "aws_outage" in s.facts and not s.facts["aws_outage"]
    hit = [f"{c.label} ({INFRASTRUCTURE[c.component]})" for c in s.causes
           if c.component in INFRASTRUCTURE and not (c.component == "storage" and ruled_out)]
    if hit:
        return True, "cause in managed infrastructure: " + ", ".join(hit)
    if ruled_out and any(c.component == "storage" for c in s.causes):
        return False, f"S3 answers (aws_outage = false, {s.sources.get('aws_outage', 'run')}): the storage cause is not the provider's"
    return False, "no cause in managed infrastructure"


def _database(s: Situation) -> Verdict:
    hit = [c.label for c in s.causes if c.component == "database"]
    if hit:
        return True, "cause in the database: " + ", ".join(hit)
    return False, "no cause in the database"


RULES: dict[str, Callable[[Situation], Verdict]] = {
    "SEV-1 not mitigated in 15 min": _sev1_for(15 * 60),
    "SEV-1 not resolved in 1 hour": _sev1_for(60 * 60),
    "Data breach suspected": _breach,
    "Customer SLA breach": _sla,
    "Infrastructure failure": _infrastructure,
    "Database issue": _database,
}


def evaluate(data: SeverityData, situation: Situation, scenarios: Iterable[Scenario | None]) -> list[Evaluated]:
    """Every escalation row that applies to this incident, evaluated (in the matrix's order)."""
    if not situation.sev:
        return []
    out: list[Evaluated] = []
    matrix = {r.condition for r in data.escalation}
    for r in data.escalation:
        if r.applies_to and situation.sev not in r.applies_to:
            continue
        rule = RULES.get(r.condition)
        if rule is None:
            out.append(Evaluated(r, None, "labcheck has no rule for this condition"))
            continue
        holds, because = rule(situation)
        out.append(Evaluated(r, holds, because))
    for sc in scenarios:
        if sc is None:
            continue
        for r in sc.escalation:
            if r.condition in matrix or any(e.rule == r for e in out):
                continue
            out.append(Evaluated(r, True, f"scenario {sc.id} is failing"))
    return out


def lines(evaluated: list[Evaluated]) -> tuple[list[str], list[str]]:
    """(escalations that hold, rows that could not be evaluated), as lines."""
    held = [e.rule.line() for e in evaluated if e.holds]
    open_rows = [f"{e.rule.line()}: {e.because}" for e in evaluated if e.holds is None]
    return held, open_rows
