"""The triage verdict: severity, probable cause, suspects, next steps, blind spots and impact, as triage.json's dict.

``build`` takes the plugin's check results (dicts), works on the dataclasses of ``model`` and
returns the JSON-ready dict that ``triage.schema.json`` describes. The severity is the worst
failing severity marker; facts the checks recorded with ``expect.fact`` decide the conditional
mitigation steps.

Facts the verdict reads: any condition named by a step's ``when`` (``oom_killed``,
``recent_deployment``, ...), and ``recent_rollout``: a dict (or a list of dicts) with
``deployment``, ``revision``, ``previous_revision``, ``age_s`` and optionally ``namespace`` and
``rollback`` (the command), recorded by the rollout check; an empty value means "no recent rollout".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

from labcheck.config import Settings
from labcheck.scenarios import Catalogue, Scenario, SeverityData, Step
from labcheck.timefmt import ago, iso_utc
from labcheck.verdict import comms, escalation
from labcheck.verdict.conditions import derived_facts, holder_steps, scenario_for
from labcheck.verdict.model import (
    BUSINESS_ORDER,
    OUTCOMES,
    ROLLBACK,
    SCHEMA_VERSION,
    Advice,
    BlindSpot,
    CheckResult,
    Facts,
    Finding,
    Impact,
    Rollout,
    ScenarioAdvice,
    Suspect,
    counts,
    fully_verified,
    sev_name,
)
from labcheck.verdict.rank import _concerned, rank

SECRETS = ("database_url", "replica_url", "test_token", "aws_access_key_id", "aws_secret_access_key")


def _fill(text: str | None, settings: Settings | None) -> str | None:
    """Fill {namespace}-style placeholders from the configuration; leave unknown ones as they are."""
    if text is None:
        return None

    class Keep(dict[str, str]):
        def __missing__(self, key: str) -> str:
            return "{" + key + "}"

    values = Keep()
    if settings is not None:
        values.update({k: str(v) for k, v in settings.values.items()
                       if v is not None and not isinstance(v, tuple)})
    for secret in SECRETS:
        values.pop(secret, None)  # secrets never go into a command: it names the environment variable
    try:
        return text.format_map(values)
    except (ValueError, IndexError, KeyError, AttributeError):
        return text


# --- facts -----------------------------------------------------------------------------------


def _facts(checks: Iterable[CheckResult]) -> Facts:
    """Conditions the run established, and which check established each (a true answer wins)."""
    facts = Facts()
    rollouts: list[Any] = []
    for check in checks:
        for name, value in check.facts.items():
            if name == "recent_rollout" and value:  # one per deployment: keep them all
                rollouts.extend(value if isinstance(value, list) else [value])
                facts.learn(name, rollouts, ", ".join(filter(None, [facts.sources.get(name), check.nodeid])))
            elif name not in facts.values or (value and not facts.values[name]):
                facts.learn(name, value, check.nodeid)
        if check.condition and not facts.values.get(check.condition):  # observed by a failing check
            facts.learn(check.condition, True, check.nodeid)
    return facts


def _implied(facts: Facts, findings: Iterable[Finding], catalogue: Catalogue) -> None:
    """Conditions a failing scenario implies, where no check answered them."""
    for finding in findings:
        sc = catalogue.get(finding.scenario)
        if sc is None:
            continue
        for name in sc.implies:
            if name not in facts.values:
                facts.learn(name, True, f"implied by failing scenario {sc.id}")


def _rollouts(facts: Mapping[str, Any], settings: Settings | None) -> list[Rollout]:
    value = facts.get("recent_rollout")
    items = value if isinstance(value, list) else [value] if isinstance(value, dict) else []
    out = []
    namespace = getattr(settings, "namespace", None) if settings is not None else None
    for item in items:
        if not isinstance(item, dict):
            continue
        deployment = item.get("deployment") or item.get("name")
        previous = item.get("previous_revision")
        ns = item.get("namespace") or namespace or "{namespace}"
        rollback = item.get("rollback")
        if not rollback and deployment:
            rollback = f"kubectl rollout undo deployment/{deployment} -n {ns}"
            if previous is not None:
                rollback += f" --to-revision={previous}"
        out.append(Rollout(deployment=deployment, namespace=ns, revision=item.get("revision"),
                           previous_revision=previous, age_s=item.get("age_s"), image=item.get("image"),
                           rollback=rollback))
    out.sort(key=lambda r: r.age_s if isinstance(r.age_s, int | float) else float("inf"))  # newest first
    return out


def _suspects(rollouts: list[Rollout], failed: list[CheckResult], level: int | None,
              settings: Settings | None) -> list[Suspect]:
    """Recent rollouts before a SEV-1/2: the rollout of what is failing first, then newest first."""
    if level is None or level > 2:
        return []
    ranked: list[tuple[bool, Suspect]] = []
    for r in rollouts:
        concerned = _concerned(r, failed, settings)
        about = f" (failing: {', '.join(concerned)}, which it runs)" if concerned else ""
        ranked.append((not concerned, Suspect(r, f"deployment/{r.deployment} was rolled out to revision "
                                                 f"{r.revision} {ago(r.age_s)}, shortly before {sev_name(level)} "
                                                 f"failures{about}: a recent deployment is the playbook's first "
                                                 "suspect (Scenario 1: rollback)")))
    return [s for _, s in sorted(ranked, key=lambda pair: pair[0])]


# --- steps -----------------------------------------------------------------------------------


def _step(step: Step, facts: Facts, settings: Settings | None) -> tuple[Advice | None, Advice | None]:
    """A mitigation step with its condition evaluated where the run knows the answer: (kept, dropped)."""
    command = _fill(step.command, settings) if step.command else None
    if not step.when:
        return Advice(step.text, command), None
    if step.when not in facts.values:
        return Advice(step.text, command, when=step.when, condition="unknown"), None
    because = f"{step.when} = {_show(facts.values[step.when])} ({facts.sources.get(step.when, 'run')})"
    if not facts.values[step.when]:
        return None, Advice(step.text, when=step.when, because=because)
    return Advice(step.text, command, when=step.when, condition="true", because=because), None


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return "yes" if value else "none"
    return str(value)


def _evaluate(steps: Iterable[Step], facts: Facts, settings: Settings | None) -> tuple[list[Advice], list[Advice]]:
    """Kept steps (those whose condition is known true first, in playbook order otherwise) and dropped ones."""
    kept, dropped = [], []
    for step in steps:
        doc, gone = _step(step, facts, settings)
        if doc is not None:
            kept.append(doc)
        if gone is not None:
            dropped.append(gone)
    kept.sort(key=lambda a: 0 if a.condition == "true" else 1)
    return kept, dropped


def _scenario_doc(sc: Scenario, role: str, facts: Facts, settings: Settings | None,
                  sev: str | None) -> ScenarioAdvice:
    mitigation, dropped = _evaluate(sc.mitigation, facts, settings)
    return ScenarioAdvice(
        id=sc.id, title=sc.title, role=role, symptoms=list(sc.symptoms), mitigation=mitigation, dropped=dropped,
        investigation=[Advice(s.text, _fill(s.command, settings) if s.command else None) for s in sc.investigation],
        escalation=[r.line() for r in sc.escalation if not r.applies_to or (sev and sev in r.applies_to)],
        playbook=sc.playbook)


def _scenario_roles(causes: list[Finding], symptoms: list[Finding]) -> dict[str, str]:
    """The failing scenarios, cause-first."""
    roles: dict[str, str] = {}
    for role, findings in (("cause", causes), ("symptom", symptoms)):
        for finding in findings:
            if finding.scenario:
                roles.setdefault(finding.scenario, role)
    return roles


def _next_steps(suspects: list[Suspect], playbook: list[tuple[str, list[Advice], list[Advice]]],
                first: Iterable[Advice] = ()) -> tuple[list[Advice], list[Advice]]:
    """Steps on an observed culprit first (``first``: the lock holder), then rollback when a rollout is
    suspect, then the playbook's steps: (scenario, kept, dropped) in order."""
    steps: list[Advice] = list(first)
    dropped: list[Advice] = []
    seen: set[str] = set()

    def add(advice: Advice) -> None:
        key = " ".join(advice.step.lower().split())
        if key not in seen:
            seen.add(key)
            steps.append(advice)

    for s in suspects:
        r = s.rollout
        target = f" to revision {r.previous_revision}" if r.previous_revision is not None else ""
        add(Advice(f"Rollback deployment/{r.deployment} from revision {r.revision}{target} "
                   f"(rolled out {ago(r.age_s)})", r.rollback, condition="true", because=s.why, scenario=ROLLBACK))
    for scenario, kept, gone in playbook:
        for step in kept:
            if suspects and step.when == "recent_deployment":
                continue  # replaced by the explicit rollback above
            add(step.of(scenario))
        dropped.extend(d.of(scenario) for d in gone)
    return steps, dropped


# --- blind spots, cause and impact -----------------------------------------------------------


def _blind_spots(checks: list[CheckResult]) -> list[BlindSpot]:
    unknown = sorted((c for c in checks if c.outcome == "unknown"), key=lambda c: (c.level or 9, c.nodeid))
    return [BlindSpot(c.nodeid, c.component, c.severity, c.message) for c in unknown]


def _blind_warning(blind: list[BlindSpot], sev: str | None) -> str | None:
    sev1 = [b for b in blind if b.severity == "SEV-1"]
    if not sev1:
        return None
    what = "A sev1 check could not be run" if len(sev1) == 1 else f"{len(sev1)} sev1 checks could not be run"
    names = ", ".join(b.nodeid.split("::")[-1] for b in sev1[:3]) + (", ..." if len(sev1) > 3 else "")
    if sev is None:
        return f"{what} ({names}): no check failed, but the service may still be unavailable."
    if sev != "SEV-1":
        return f"{what} ({names}): the real severity may be SEV-1, not {sev}."
    return f"{what} ({names})."


def _probable_cause(causes: list[Finding], blind: list[BlindSpot], data: SeverityData) -> dict[str, Any] | None:
    """The top cause, with a caveat when a dependency of it could not be checked."""
    if not causes:
        return None
    top = causes[0]
    blind_upstream = sorted({str(b.component) for b in blind  # checks that could have shown an outage
                             if b.component in data.upstream(top.component) and b.severity in ("SEV-1", "SEV-2")})
    caveat = (f"{', '.join(blind_upstream)} (which {top.component} depends on) could not be checked: the real "
              "cause may be there") if blind_upstream else None
    return {**top.cause_doc(), "caveat": caveat}


def _ranking(causes: list[Finding], suspects: list[Suspect], symptoms: list[Finding],
             rollout_source: str | None) -> list[dict[str, Any]]:
    """Causes (the suspects right after the first), then symptoms, numbered."""
    ranking: list[dict[str, Any]] = []
    for n, c in enumerate(causes):
        ranking.append({"kind": "cause", **c.public()})
        if n == 0:
            ranking.extend({"kind": "suspect", "label": f"rollout of deployment/{s.rollout.deployment} "
                                                       f"(revision {s.rollout.revision})",
                            "scenario": None, "title": None, "component": "kubernetes", "severity": None,
                            "check": rollout_source, "checks": [], "why": s.why}
                           for s in suspects)
    ranking.extend({"kind": "symptom", **s.public()} for s in symptoms)
    for n, entry in enumerate(ranking, 1):
        entry["rank"] = n
    return ranking


def _impact(causes: list[Finding], symptoms: list[Finding], data: SeverityData) -> tuple[str | None, list[Impact]]:
    """The user impact in words, from the affected components and the impact matrix."""
    details: list[Impact] = []
    for role, findings in (("cause", causes), ("symptom", symptoms)):
        for f in findings:
            if any(d.component == f.component for d in details):
                continue
            row = data.impact.get(f.component)
            details.append(Impact(component=f.component, name=row.name if row else f.component,
                                  users=row.users if row else None, business=row.business if row else None,
                                  matrix_severity=row.severity if row else None, role=role,
                                  customer=row.customer if row else None))
    if not details:
        return None, details
    failing = [d.name for d in details if d.role == "cause"]
    degraded = [d.name for d in details if d.role == "symptom"]
    text = f"{_join(failing)} failing" + (" (probable cause)" if degraded else "")
    if degraded:
        text += f"; {_join(degraded)} degraded as a consequence"
    users = [d.users for d in details if d.users]
    if any(u.lower() == "all" for u in users):
        text += ". Users affected: all users"
    elif users:
        text += f". Users affected: {_join(sorted(set(users), key=users.index)).lower()}"
    business = sorted({d.business.lower() for d in details if d.business},
                      key=lambda b: BUSINESS_ORDER.index(b) if b in BUSINESS_ORDER else 9)
    if business:
        text += f". Business impact: {business[0]}"
    return text + ".", details


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# --- the verdict -----------------------------------------------------------------------------


def build(
    results: list[dict[str, Any]],
    *,
    catalogue: Catalogue,
    settings: Settings | None,
    started_at: float,
    finished_at: float,
    signals: str | None = None,
) -> dict[str, Any]:
    """The triage verdict as a JSON-ready dict (see triage.schema.json); ``signals`` names the signal map."""
    checks = [_observed(CheckResult.from_raw(r), catalogue) for r in sorted(results, key=lambda r: r["nodeid"])]
    failed = [c for c in checks if c.outcome == "failed"]
    level = min((c.level for c in failed if c.level), default=None)
    sev = sev_name(level)
    data = catalogue.severity
    lvl = data.level(sev)

    causes, symptoms = rank(failed, catalogue, settings)
    facts = _facts(checks)
    _implied(facts, causes + symptoms, catalogue)
    for name, (value, source) in derived_facts(facts.values, causes, symptoms).items():
        facts.learn(name, value, source)
    rollouts = _rollouts(facts.values, settings)
    if "recent_deployment" not in facts.values and "recent_rollout" in facts.values:
        facts.learn("recent_deployment", bool(rollouts), facts.sources.get("recent_rollout", "run"))
    suspects = _suspects(rollouts, failed, level, settings)

    roles = _scenario_roles(causes, symptoms)
    scenarios = [_scenario_doc(sc, role, facts, settings, sev)
                 for sid, role in roles.items() if (sc := catalogue.get(sid)) is not None]
    playbook = [(sc.id, sc.mitigation, sc.dropped) for sc in scenarios]
    if failed and (not scenarios or any(not c.scenario for c in causes)):
        playbook.append(("generic", *_evaluate(catalogue.generic, facts, settings)))
    next_steps, dropped = _next_steps(suspects, playbook, holder_steps(facts.values, facts.sources, roles))
    values: Mapping[str, Any] = settings.values if settings is not None else {}
    situation = escalation.Situation(sev=sev, causes=causes, symptoms=symptoms, facts=facts.values,
                                     sources=facts.sources, finished_at=finished_at,
                                     incident_start=values.get("incident_start"))
    escalated = escalation.evaluate(data, situation, [catalogue.get(s) for s in roles])
    held, not_evaluated = escalation.lines(escalated)

    blind = _blind_spots(checks)
    impact, impact_details = _impact(causes, symptoms, data)
    doc = {
        "schema_version": SCHEMA_VERSION,
        "severity": sev,
        "severity_definition": lvl.definition if lvl is not None else None,
        "response_time": lvl.response_time if lvl is not None else None,
        "target": settings.describe() if settings else None,
        "signals": signals,
        "started_at": iso_utc(started_at),
        "finished_at": iso_utc(finished_at),
        "detected_at": iso_utc(finished_at) if sev else None,
        "next_update_at": iso_utc(finished_at + 60 * min(lvl.response_minutes, 30)) if lvl is not None else None,
        "duration_s": round(finished_at - started_at, 3),
        "counts": counts(checks),
        "affected_components": [d.component for d in impact_details],
        "impact": impact,
        "impact_details": [asdict(d) for d in impact_details],
        "probable_cause": _probable_cause(causes, blind, data),
        "causes": [c.cause_doc() for c in causes],
        "symptoms": [s.symptom_doc() for s in symptoms],
        "suspects": [s.doc() for s in suspects],
        "ranking": _ranking(causes, suspects, symptoms, facts.sources.get("recent_rollout")),
        "scenarios": [sc.doc() for sc in scenarios],
        "next_steps": [a.doc() for a in next_steps],
        "dropped_steps": [a.doc() for a in dropped],
        "blind_spots": [asdict(b) for b in blind],
        "sev1_blind": any(b.severity == "SEV-1" for b in blind),
        "blind_spot_warning": _blind_warning(blind, sev),
        "escalation": held,
        "escalation_evaluated": [e.doc() for e in escalated],
        "escalation_not_evaluated": not_evaluated,
        "verified": fully_verified((c.severity, c.outcome) for c in checks),
        "facts": dict(facts.values),
        "fact_sources": facts.sources,
        "checks": [c.doc() for c in checks],
        "incident_start": iso_utc(values["incident_start"]) if values.get("incident_start") is not None else None,
        "gate": _gate_context(values),
    }
    return {**doc, **comms.references(doc)}


def _gate_context(values: Mapping[str, Any]) -> dict[str, Any] | None:
    """A round of `labcheck gate` (it sets history_window, and history_since to the mitigation time):
    the run verifies a mitigation, which is what lets the status update say Mitigating or Monitoring.
    A gate run with --no-history sets neither, and reads as a single run."""
    if not values.get("history_window"):
        return None
    since = values.get("history_since")
    return {"history_window": str(values["history_window"]), "since": iso_utc(since) if since is not None else None}


def _observed(check: CheckResult, catalogue: Catalogue) -> CheckResult:
    """A failing check's condition picks its scenario; a check that did not fail observed no condition."""
    if check.outcome != "failed":
        return replace(check, condition=None)
    condition = check.condition or None
    return replace(check, condition=condition, scenario=scenario_for(condition, catalogue, check.scenario))


def blind_spots_fail(data: Mapping[str, Any], mode: str) -> bool:
    """Whether blind spots should fail a run that otherwise passed."""
    if mode == "any":
        return bool(data["blind_spots"])
    if mode == "sev1":
        return bool(data["sev1_blind"])
    return False


def empty_verdict(*, error: str | None = None, started_at: float | None = None) -> dict[str, Any]:
    """A verdict with nothing checked (a usage error): the same shape as ``build``'s."""
    now = datetime.now(tz=UTC).timestamp() if started_at is None else started_at
    blind = [asdict(BlindSpot("*", None, None, f"configuration error: {error}"))] if error else []
    return {
        "schema_version": SCHEMA_VERSION, "severity": None, "severity_definition": None, "response_time": None,
        "error": error, "target": None, "signals": None, "started_at": iso_utc(now), "finished_at": iso_utc(now), "detected_at": None,
        "next_update_at": None, "duration_s": 0.0, "counts": dict.fromkeys(OUTCOMES, 0),
        "affected_components": [], "impact": None, "impact_details": [], "probable_cause": None, "causes": [],
        "symptoms": [], "suspects": [], "ranking": [], "scenarios": [], "next_steps": [], "dropped_steps": [],
        "blind_spots": blind, "sev1_blind": bool(error),
        "blind_spot_warning": "Nothing was checked: the run stopped on a configuration error." if error else None,
        "escalation": [], "escalation_evaluated": [], "escalation_not_evaluated": [], "verified": False,
        "facts": {}, "fact_sources": {}, "checks": [], "incident_start": None, "gate": None,
        "status_update": None, "status_page": None,
    }
