"""Conditions a check observed, and the catalogue scenario each one picks.

A failing check may report the condition it observed (``expect(..., condition=...)`` or
``expect.condition(...)``). The condition, not the check's static scenario marker, then picks
the scenario, its steps and its escalation. A condition is either a scenario id itself or one of
the names below. The verdict also learns ``<condition> = true`` as a fact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from labcheck.scenarios import Catalogue
from labcheck.verdict.model import Advice, Finding

# condition -> the catalogue scenario it picks
CONDITIONS: dict[str, str] = {
    "db_refusing_connections": "database-unreachable",  # nothing listens: server down or failing over
    "db_connect_timeout": "database-unreachable",  # no answer within the connect timeout
    "db_unreachable": "database-unreachable",  # the address does not resolve or route
    "too_many_clients": "db-connection-exhaustion",  # every connection slot is taken
    "lock_holder_found": "blocking-lock",  # a session holds a lock others wait on
    "api_not_answering": "api-not-answering",  # /health timed out or was refused
    "prometheus_down": "prometheus-down",  # Prometheus's ready endpoint does not say ready
    "prometheus_misidentified": "prometheus-down",  # the URL answers 200, but not as Prometheus does
}

# Conditions that are evidence of a breach (the escalation matrix's "Data breach suspected").
BREACH_EVIDENCE = {
    "auth_bypass": "a request that should have been refused (no or invalid token) was accepted",
    "brute_force": "many 401s from few client addresses or for few subjects (the API pods' logs)",
}

def scenario_for(condition: str | None, catalogue: Catalogue, default: str | None) -> str | None:
    """The scenario a condition picks; ``default`` (the marker's) when it picks none in this catalogue."""
    if not condition:
        return default
    if condition in catalogue.scenarios:
        return condition
    picked = CONDITIONS.get(condition)
    return picked if picked in catalogue.scenarios else default


# --- facts derived from what failed ------------------------------------------------------------

# The generic mitigations' conditions (_generic.toml), derived from the failing findings where no
# check answered them, so that a step appears only when what failed calls for it.
def derived_facts(known: Mapping[str, Any], causes: Sequence[Finding],
                  symptoms: Sequence[Finding]) -> dict[str, tuple[bool, str]]:
    findings = [*causes, *symptoms]

    def labels(items: Iterable[Finding]) -> str:
        return ", ".join(f.label for f in items) or "none"

    out: dict[str, tuple[bool, str]] = {}
    db = [c for c in causes if c.component == "database"]
    out["db_issue"] = (bool(db), f"failing causes in the database: {labels(db)}")
    external = [c for c in causes if c.component == "storage"]
    out["external_dependency_failing"] = (bool(external), f"failing causes in storage (S3): {labels(external)}")
    load = [f for f in findings if f.component in LOAD_COMPONENTS and f.scenario in LOAD_SCENARIOS]
    if "cpu_bound" in known:
        out["capacity_issue"] = (bool(known["cpu_bound"]), "cpu_bound")
    else:
        out["capacity_issue"] = (bool(load), f"failing load signals (errors, latency) of the API or workers: "
                                             f"{labels(load)}")
    stuck = [f for f in findings if f.scenario in STATE_SCENARIOS]
    out["memory_or_state_issue"] = (bool(known.get("oom_killed")) or bool(stuck),
                                    "oom_killed = true" if known.get("oom_killed")
                                    else f"failing crash-loop or hung-process findings: {labels(stuck)}")
    return {name: (value, f"derived: {why}") for name, (value, why) in out.items() if name not in known}


LOAD_COMPONENTS = frozenset({"api_gateway", "experiments"})
LOAD_SCENARIOS = frozenset({"high-latency", "high-error-rate"})
STATE_SCENARIOS = frozenset({"pod-crash-loop", "api-not-answering"})


# --- the observed lock holder ------------------------------------------------------------------

LOCK_SCENARIO = "blocking-lock"
# The primary refusing or not answering: what else fails in the database waits on it (rank).
UNREACHABLE_SCENARIO = "database-unreachable"


def holder_steps(facts: Mapping[str, Any], sources: Mapping[str, str], roles: Mapping[str, str]) -> list[Advice]:
    """The first steps when a blocking-lock holder was observed: end that session, named."""
    holders = facts.get("lock_holder")
    if LOCK_SCENARIO not in roles or not holders:
        return []
    items = holders if isinstance(holders, list) else [holders]
    steps = []
    for h in items:
        if not isinstance(h, dict) or not isinstance(h.get("pid"), int):
            continue
        age = h.get("age_s")
        steps.append(Advice(
            f"Terminate the session holding the lock: pid {h['pid']} ({h.get('state') or 'state unknown'} for "
            f"{f'{age:.0f} s' if isinstance(age, int | float) else 'an unknown time'}, application "
            f"{h.get('application') or '(none)'}, blocking {h.get('blocks', '?')} session(s))",
            f"SELECT pg_terminate_backend({h['pid']});", condition="true",
            because=f"lock_holder = pid {h['pid']} ({sources.get('lock_holder', 'run')})", scenario=LOCK_SCENARIO))
    return steps
