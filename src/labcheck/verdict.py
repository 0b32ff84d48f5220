"""Incident severity, probable cause, next steps and the incident documents.

``build`` turns the run's check results into the verdict (``triage.json``, described by
``triage.schema.json``): the severity is the worst failing severity marker; failing checks are
grouped into findings (one per scenario and component) and ranked cause-first with the component
dependency graph and the scenarios' ``causes`` (both data in ``scenarios/``); facts the checks
recorded with ``expect.fact`` decide the conditional mitigation steps.

Facts the verdict reads: any condition named by a step's ``when`` (``oom_killed``,
``recent_deployment``, ...), and ``recent_rollout``: a dict (or a list of dicts) with
``deployment``, ``revision``, ``previous_revision``, ``age_s`` and optionally ``namespace`` and
``rollback`` (the command), recorded by the rollout check; an empty value means "no recent rollout".
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from labcheck.config import KEYS, Settings
from labcheck.scenarios import Catalogue, Escalation, Scenario, SeverityData, Step
from labcheck.timefmt import ago, hhmm, iso_utc

SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("triage.schema.json")
BUSINESS_ORDER = ("critical", "high", "medium", "low", "none")


def sev_name(level: int | None) -> str | None:
    return f"SEV-{level}" if level else None


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
    for secret in ("database_url", "replica_url", "test_token", "aws_access_key_id", "aws_secret_access_key"):
        values.pop(secret, None)  # secrets never go into a command: it names the environment variable
    try:
        return text.format_map(values)
    except (ValueError, IndexError, KeyError, AttributeError):
        return text


# --- facts -----------------------------------------------------------------------------------


def _facts(checks: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    """Conditions the run established, and which check established each (a true answer wins)."""
    facts: dict[str, Any] = {}
    sources: dict[str, str] = {}
    rollouts: list[Any] = []
    for check in checks:
        for name, value in (check.get("facts") or {}).items():
            if name == "recent_rollout" and value:  # one per deployment: keep them all
                rollouts.extend(value if isinstance(value, list) else [value])
                sources[name] = ", ".join(filter(None, [sources.get(name), check["nodeid"]]))
                facts[name] = rollouts
            elif name not in facts or (value and not facts[name]):
                facts[name] = value
                sources[name] = check["nodeid"]
    return facts, sources


def _rollouts(facts: Mapping[str, Any], settings: Settings | None) -> list[dict[str, Any]]:
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
        out.append({"kind": "recent-rollout", "deployment": deployment, "namespace": ns,
                    "revision": item.get("revision"), "previous_revision": previous,
                    "age_s": item.get("age_s"), "image": item.get("image"), "rollback": rollback})
    out.sort(key=lambda r: r["age_s"] if isinstance(r["age_s"], int | float) else float("inf"))  # newest first
    return out


# The failing components a deployment's rollout can explain: the API is the gateway and checks
# the tokens; the workers run the experiments. (A check parametrised by a deployment names it.)
API_COMPONENTS = frozenset({"api_gateway", "auth"})
WORKER_COMPONENTS = frozenset({"experiments"})


def _concerned(rollout: Mapping[str, Any], failed: list[dict[str, Any]], settings: Settings | None) -> list[str]:
    """The failing components that the rolled-out deployment runs (or whose checks name it)."""
    def name(key: str) -> str:
        return str(getattr(settings, key, None) or KEYS[key].default)

    serves = {name("api_deployment"): API_COMPONENTS, name("workers_deployment"): WORKER_COMPONENTS}
    deployment = rollout.get("deployment")
    return sorted({c["component"] for c in failed if c["component"] in serves.get(str(deployment), ())
                   or f"[{deployment}]" in c["nodeid"]})


# --- ranking ---------------------------------------------------------------------------------


API_GATEWAY = "api_gateway"
MINOR_CAUSE_LEVEL = 2  # a finding of SEV-3/4 explains only findings of its own severity or lower


def _via_api(check: Mapping[str, Any], settings: Settings | None) -> bool:
    """Whether a check failed only with server errors (or timeouts) from the API's user-facing endpoints.

    Such a check sees its component through the API gateway: when the gateway itself is failing,
    its failure is the gateway's symptom, not evidence against the component. Health, readiness and
    metrics endpoints are the API's reports about its dependencies, so they do not count; nor does a
    client error such as a rejected token (HTTP 401), which is the component's own answer.
    """
    api_url = getattr(settings, "values", {}).get("api_url") if settings is not None else None
    endpoints = set(getattr(settings, "values", {}).get("api_endpoints") or ()) if settings is not None else set()
    if not api_url or not endpoints:
        return False
    texts = [str(o.get("target", "")) for o in check.get("observed") or []]
    first = (check.get("message") or "").split("\n")[0]
    if not re.search(r"HTTP 5\d\d|time[sd]? ?out", first, re.I):
        return False
    texts.append(first)
    paths = [m.group(1) or "/" for text in texts
             for m in re.finditer(re.escape(api_url.rstrip("/")) + r"(/[^\s?#;:,]*)?", text)]
    return bool(paths) and all(path.rstrip("/") in endpoints for path in paths)


def _findings(failed: list[dict[str, Any]], catalogue: Catalogue,
              settings: Settings | None = None) -> list[dict[str, Any]]:
    """Failing checks grouped by (component, scenario)."""
    groups: dict[tuple[str, str | None], dict[str, Any]] = {}
    for check in sorted(failed, key=lambda c: (c["level"] or 9, c["nodeid"])):
        key = (check["component"] or "?", check["scenario"])
        group = groups.get(key)
        if group is None:
            sc = catalogue.get(check["scenario"])
            label = f"{check['scenario']} ({key[0]})" if check["scenario"] else f"{key[0]} (no playbook scenario)"
            group = groups[key] = {
                "label": label, "scenario": check["scenario"], "title": sc.title if sc else None,
                "component": key[0], "severity": check["severity"], "level": check["level"] or 9,
                "check": check["nodeid"], "checks": [], "via": API_GATEWAY,
            }
        group["checks"].append(check["nodeid"])
        if key[0] == API_GATEWAY or not _via_api(check, settings):
            group["via"] = None
    return list(groups.values())


def _explains(a: Mapping[str, Any], b: Mapping[str, Any], catalogue: Catalogue) -> str | None:
    """Why finding ``a`` explains finding ``b`` (None when it does not)."""
    if a is b:
        return None
    if b.get("via") and b["via"] == a["component"]:
        return (f"{b['label']} was seen only as server errors from the API's endpoints, and the "
                f"{a['component']} itself is failing")
    if a.get("via") and a["via"] == b["component"]:
        return None  # seen only through b's interface: it cannot be b's cause
    if a["level"] > max(b["level"], MINOR_CAUSE_LEVEL):
        # A limited-impact condition (SEV-3/4) does not explain a worse one elsewhere.
        return None
    effect = bool(a["scenario"] and b["scenario"] and (b["scenario"] in catalogue.explained_by(a["scenario"])
                                                       or a["scenario"] == b["scenario"]))
    up = catalogue.severity.upstream(b["component"])
    if a["component"] != b["component"] and a["component"] in up:
        # The graph says who can affect whom; a failure mode of its own (a crash loop, an auth
        # failure) is explained by a dependency only where the catalogue lists it as an effect.
        if not b["scenario"] or catalogue.is_symptom(b["scenario"]) or effect:
            path = up[a["component"]]
            via = f" (via {' -> '.join(path[1:-1])})" if len(path) > 2 else ""
            return f"{b['component']} depends on {a['component']}{via}"
    if effect and a["scenario"] != b["scenario"]:
        return f"the catalogue lists {b['scenario']} among the effects of {a['scenario']}"
    return None


def rank(failed: list[dict[str, Any]], catalogue: Catalogue,
         settings: Settings | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split failing checks into causes and symptoms, cause-first, each with the reason why."""
    findings = _findings(failed, catalogue, settings)
    edges: dict[int, dict[int, str]] = {i: {} for i in range(len(findings))}
    for i, a in enumerate(findings):
        for j, b in enumerate(findings):
            reason = _explains(a, b, catalogue)
            if reason and not _explains(b, a, catalogue):  # mutual explanations cancel out
                edges[i][j] = reason
    explained = {j for i in edges for j in edges[i]}
    cause_ids = [i for i in range(len(findings)) if i not in explained]
    cause_ids.sort(key=lambda i: (-len(edges[i]), findings[i]["level"],
                                  len(catalogue.severity.upstream(findings[i]["component"])), findings[i]["label"]))
    causes = []
    for i in cause_ids:
        f = findings[i]
        effects = [findings[j]["label"] for j in edges[i]]
        up = catalogue.severity.upstream(f["component"])
        failing_up = [g for g in findings if g["component"] in up]
        if not up:
            deps = "it depends on no other component"
        elif not failing_up:
            deps = "none of its dependencies failed"
        elif all(g.get("via") == f["component"] for g in failing_up):
            deps = (f"its failing dependencies ({', '.join(g['label'] for g in failing_up)}) were seen only "
                    "through it")
        else:
            deps = f"its failing dependencies ({', '.join(g['label'] for g in failing_up)}) do not explain it"
        if effects:
            why = (f"ranked as a cause: {f['component']} failed and {deps}; it explains "
                   + "; ".join(f"{findings[j]['label']} ({edges[i][j]})" for j in edges[i]))
        elif len(cause_ids) > 1:
            why = f"{f['component']} failed and {deps}; it explains no other failure (an independent problem)"
        else:
            why = f"the only failing finding; {deps}"
        causes.append({**f, "explains": effects, "why": why})
    order = {findings[i]["label"]: n for n, i in enumerate(cause_ids)}
    symptoms = []
    for j in sorted(explained, key=lambda j: (findings[j]["level"], findings[j]["label"])):
        by = [i for i in range(len(findings)) if j in edges[i]]
        by.sort(key=lambda i: (order.get(findings[i]["label"], len(order)), findings[i]["level"]))
        first = by[0]
        symptoms.append({**findings[j], "caused_by": [findings[i]["label"] for i in by],
                         "why": f"symptom of {findings[first]['label']}: {edges[first][j]}"})
    symptoms.sort(key=lambda s: (min(order.get(c, len(order)) for c in s["caused_by"]), s["level"], s["label"]))
    return causes, symptoms


def _public(f: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    return {k: f.get(k) for k in keys}


FINDING_KEYS = ("label", "scenario", "title", "component", "severity", "check", "checks", "why")


# --- steps -----------------------------------------------------------------------------------


def _step(step: Step, facts: Mapping[str, Any], sources: Mapping[str, str],
          settings: Settings | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """A mitigation step with its condition evaluated where the run knows the answer: (kept, dropped)."""
    out: dict[str, Any] = {"step": step.text}
    if step.command:
        out["command"] = _fill(step.command, settings)
    if not step.when:
        return out, None
    out["when"] = step.when
    if step.when not in facts:
        out["condition"] = "unknown"
        return out, None
    because = f"{step.when} = {_show(facts[step.when])} ({sources.get(step.when, 'run')})"
    if not facts[step.when]:
        return None, {"step": step.text, "when": step.when, "because": because}
    out["condition"] = "true"
    out["because"] = because
    return out, None


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return "yes" if value else "none"
    return str(value)


def _evaluate(steps: Iterable[Step], facts: Mapping[str, Any], sources: Mapping[str, str],
              settings: Settings | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Kept steps (those whose condition is known true first, in playbook order otherwise) and dropped ones."""
    kept, dropped = [], []
    for step in steps:
        doc, gone = _step(step, facts, sources, settings)
        if doc is not None:
            kept.append(doc)
        if gone is not None:
            dropped.append(gone)
    kept.sort(key=lambda d: {"true": 0}.get(d.get("condition", ""), 1))
    return kept, dropped


def _scenario_doc(sc: Scenario, role: str, facts: Mapping[str, Any], sources: Mapping[str, str],
                  settings: Settings | None, sev: str | None) -> dict[str, Any]:
    mitigation, dropped = _evaluate(sc.mitigation, facts, sources, settings)
    return {
        "id": sc.id,
        "title": sc.title,
        "role": role,
        "symptoms": list(sc.symptoms),
        "mitigation": mitigation,
        "dropped_mitigation": dropped,
        "investigation": [{"step": s.text, **({"command": _fill(s.command, settings)} if s.command else {})}
                          for s in sc.investigation],
        "escalation": [r.line() for r in sc.escalation if not r.applies_to or (sev and sev in r.applies_to)],
        "playbook": sc.playbook,
    }


# --- the verdict -----------------------------------------------------------------------------


def build(
    results: list[dict[str, Any]],
    *,
    catalogue: Catalogue,
    settings: Settings | None,
    started_at: float,
    finished_at: float,
) -> dict[str, Any]:
    """The triage verdict as a JSON-ready dict (see triage.schema.json)."""
    checks = []
    for r in sorted(results, key=lambda r: r["nodeid"]):
        checks.append({
            "nodeid": r["nodeid"],
            "outcome": r["outcome"],
            "component": r.get("component"),
            "severity": sev_name(r.get("severity")),
            "level": r.get("severity"),
            "scenario": r.get("scenario"),
            "message": r.get("message"),
            "observed": r.get("observed") or [],
            "facts": r.get("facts") or {},
            "duration_s": r.get("duration_s", 0.0),
        })
    failed = [c for c in checks if c["outcome"] == "failed"]
    unknown = [c for c in checks if c["outcome"] == "unknown"]
    level = min((c["level"] for c in failed if c["level"]), default=None)
    sev = sev_name(level)
    data: SeverityData = catalogue.severity
    lvl = data.level(sev)

    causes, symptoms = rank(failed, catalogue, settings)
    facts, sources = _facts(checks)
    for finding in causes + symptoms:
        sc = catalogue.get(finding["scenario"])
        if sc is None:
            continue
        for name in sc.implies:
            if name not in facts:
                facts[name] = True
                sources[name] = f"implied by failing scenario {sc.id}"
    rollouts = _rollouts(facts, settings)
    if "recent_deployment" not in facts and "recent_rollout" in facts:
        facts["recent_deployment"] = bool(rollouts)
        sources["recent_deployment"] = sources.get("recent_rollout", "run")

    ranked: list[tuple[bool, dict[str, Any]]] = []
    if level is not None and level <= 2:
        for r in rollouts:
            concerned = _concerned(r, failed, settings)
            about = f" (failing: {', '.join(concerned)}, which it runs)" if concerned else ""
            ranked.append((not concerned, {
                **r, "why": f"deployment/{r['deployment']} was rolled out to revision {r['revision']} "
                            f"{ago(r['age_s'])}, shortly before {sev} failures{about}: a recent deployment "
                            "is the playbook's first suspect (Scenario 1: rollback)"}))
    # The rollout of what is failing first; otherwise newest first, as the rollouts come.
    suspects = [doc for _, doc in sorted(ranked, key=lambda pair: pair[0])]

    # Scenarios, cause-first.
    scenario_roles: dict[str, str] = {}
    for finding in causes:
        if finding["scenario"]:
            scenario_roles.setdefault(finding["scenario"], "cause")
    for finding in symptoms:
        if finding["scenario"]:
            scenario_roles.setdefault(finding["scenario"], "symptom")
    scenarios = [_scenario_doc(sc, role, facts, sources, settings, sev)
                 for sid, role in scenario_roles.items() if (sc := catalogue.get(sid)) is not None]

    # Next steps: rollback first when a rollout is suspect, then each scenario's mitigation.
    next_steps: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(doc: dict[str, Any]) -> None:
        key = " ".join(doc["step"].lower().split())
        if key not in seen:
            seen.add(key)
            next_steps.append(doc)

    for s in suspects:
        target = f" to revision {s['previous_revision']}" if s["previous_revision"] is not None else ""
        add({"step": f"Rollback deployment/{s['deployment']} from revision {s['revision']}{target} "
                     f"(rolled out {ago(s['age_s'])})", "command": s["rollback"], "scenario": "recent-rollout",
             "condition": "true", "because": s["why"]})
    for sc_doc in scenarios:
        for step in sc_doc["mitigation"]:
            if suspects and step.get("when") == "recent_deployment":
                continue  # replaced by the explicit rollback above
            add({**step, "scenario": sc_doc["id"]})
        dropped.extend({**d, "scenario": sc_doc["id"]} for d in sc_doc["dropped_mitigation"])
    if failed and (not scenarios or any(not c["scenario"] for c in causes)):
        kept, gone = _evaluate(catalogue.generic, facts, sources, settings)
        for step in kept:
            if suspects and step.get("when") == "recent_deployment":
                continue
            add({**step, "scenario": "generic"})
        dropped.extend({**d, "scenario": "generic"} for d in gone)

    blind = [{"nodeid": c["nodeid"], "component": c["component"], "severity": c["severity"],
              "reason": c["message"]} for c in sorted(unknown, key=lambda c: (c["level"] or 9, c["nodeid"]))]
    sev1_blind = any(b["severity"] == "SEV-1" for b in blind)

    probable = None
    if causes:
        top = causes[0]
        probable = {**_public(top, FINDING_KEYS), "explains": top["explains"], "caveat": None}
        blind_upstream = sorted({b["component"] for b in blind  # checks that could have shown an outage
                                 if b["component"] in data.upstream(top["component"])
                                 and b["severity"] in ("SEV-1", "SEV-2")})
        if blind_upstream:
            probable["caveat"] = (f"{', '.join(blind_upstream)} (which {top['component']} depends on) could not be "
                                  "checked: the real cause may be there")

    ranking: list[dict[str, Any]] = []
    for n, c in enumerate(causes):
        ranking.append({"kind": "cause", **_public(c, FINDING_KEYS)})
        if n == 0:
            ranking.extend({"kind": "suspect", "label": f"rollout of deployment/{s['deployment']} "
                                                       f"(revision {s['revision']})",
                            "scenario": None, "title": None, "component": "kubernetes", "severity": None,
                            "check": sources.get("recent_rollout"), "checks": [], "why": s["why"]}
                           for s in suspects)
    ranking.extend({"kind": "symptom", **_public(s, FINDING_KEYS)} for s in symptoms)
    for n, entry in enumerate(ranking, 1):
        entry["rank"] = n

    impact, impact_details = _impact(causes, symptoms, data)
    detected = finished_at
    next_update = None
    if lvl is not None:
        next_update = iso_utc(detected + 60 * min(lvl.response_minutes, 30))
    return {
        "schema_version": SCHEMA_VERSION,
        "severity": sev,
        "severity_definition": lvl.definition if lvl else None,
        "response_time": lvl.response_time if lvl else None,
        "target": settings.describe() if settings else None,
        "started_at": iso_utc(started_at),
        "finished_at": iso_utc(finished_at),
        "detected_at": iso_utc(detected) if sev else None,
        "next_update_at": next_update,
        "duration_s": round(finished_at - started_at, 3),
        "counts": {o: sum(1 for c in checks if c["outcome"] == o) for o in ("passed", "failed", "unknown", "skipped")},
        "affected_components": [d["component"] for d in impact_details],
        "impact": impact,
        "impact_details": impact_details,
        "probable_cause": probable,
        "causes": [{**_public(c, FINDING_KEYS), "explains": c["explains"]} for c in causes],
        "symptoms": [{**_public(s, FINDING_KEYS), "caused_by": s["caused_by"]} for s in symptoms],
        "suspects": suspects,
        "ranking": ranking,
        "scenarios": scenarios,
        "next_steps": next_steps,
        "dropped_steps": dropped,
        "blind_spots": blind,
        "sev1_blind": sev1_blind,
        "blind_spot_warning": _blind_warning(blind, sev),
        "escalation": _escalation(data, sev, [catalogue.get(s) for s in scenario_roles]),
        "facts": {k: v for k, v in facts.items()},
        "fact_sources": sources,
        "checks": [{k: v for k, v in c.items() if k != "level"} for c in checks],
    }


def _blind_warning(blind: list[dict[str, Any]], sev: str | None) -> str | None:
    sev1 = [b for b in blind if b["severity"] == "SEV-1"]
    if not sev1:
        return None
    what = "A sev1 check could not be run" if len(sev1) == 1 else f"{len(sev1)} sev1 checks could not be run"
    names = ", ".join(b["nodeid"].split("::")[-1] for b in sev1[:3]) + (", ..." if len(sev1) > 3 else "")
    if sev is None:
        return f"{what} ({names}): no check failed, but the service may still be unavailable."
    if sev != "SEV-1":
        return f"{what} ({names}): the real severity may be SEV-1, not {sev}."
    return f"{what} ({names})."


def _impact(causes: list[dict[str, Any]], symptoms: list[dict[str, Any]],
            data: SeverityData) -> tuple[str | None, list[dict[str, Any]]]:
    """The user impact in words, from the affected components and the impact matrix."""
    details: list[dict[str, Any]] = []
    for role, findings in (("cause", causes), ("symptom", symptoms)):
        for f in findings:
            if any(d["component"] == f["component"] for d in details):
                continue
            row = data.impact.get(f["component"])
            details.append({"component": f["component"], "name": row.name if row else f["component"],
                            "users": row.users if row else None, "business": row.business if row else None,
                            "matrix_severity": row.severity if row else None, "role": role})
    if not details:
        return None, details
    failing = [d["name"] for d in details if d["role"] == "cause"]
    degraded = [d["name"] for d in details if d["role"] == "symptom"]
    text = f"{_join(failing)} failing" + (" (probable cause)" if degraded else "")
    if degraded:
        text += f"; {_join(degraded)} degraded as a consequence"
    users = [d["users"] for d in details if d["users"]]
    if any(u.lower() == "all" for u in users):
        text += ". Users affected: all users"
    elif users:
        text += f". Users affected: {_join(sorted(set(users), key=users.index)).lower()}"
    business = sorted({(d["business"] or "").lower() for d in details if d["business"]},
                      key=lambda b: BUSINESS_ORDER.index(b) if b in BUSINESS_ORDER else 9)
    if business:
        text += f". Business impact: {business[0]}"
    return text + ".", details


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _escalation(data: SeverityData, sev: str | None, scenarios: Iterable[Scenario | None]) -> list[str]:
    if not sev:
        return []
    rules: list[Escalation] = [r for r in data.escalation if sev in r.applies_to]
    for sc in scenarios:
        for r in sc.escalation if sc else ():
            if (not r.applies_to or sev in r.applies_to) and r not in rules:
                rules.append(r)
    return [r.line() for r in rules]


def blind_spots_fail(data: Mapping[str, Any], mode: str) -> bool:
    """Whether blind spots should fail a run that otherwise passed."""
    if mode == "any":
        return bool(data["blind_spots"])
    if mode == "sev1":
        return bool(data["sev1_blind"])
    return False


# --- terminal --------------------------------------------------------------------------------


def summary_lines(data: Mapping[str, Any]) -> list[str]:
    """The terminal triage section."""
    lines = []
    sev = data["severity"]
    if sev:
        lines.append(f"INCIDENT SEVERITY: {sev} ({data.get('severity_definition') or ''}; respond within "
                     f"{data.get('response_time') or '?'})")
    else:
        lines.append("No failing checks: no incident detected by the checks that ran.")
    if data.get("blind_spot_warning"):
        lines.append(f"WARNING: {data['blind_spot_warning']}")
    pc = data.get("probable_cause")
    if pc:
        lines.append(f"Probable cause: {pc['label']}" + (f": {pc['title']}" if pc.get("title") else ""))
        lines.append(f"  why: {pc['why']}")
        if pc.get("caveat"):
            lines.append(f"  caveat: {pc['caveat']}")
    if sev:
        lines.append(f"Affected components: {', '.join(data['affected_components'])}")
        if data.get("impact"):
            lines.append(f"Impact: {data['impact']}")
    ranking = data.get("ranking") or []
    if len(ranking) > 1:
        lines.append("Ranking (cause first):")
        for entry in ranking:
            lines.append(f"  {entry['rank']}. {entry['kind']}: {entry['label']}"
                         + (f" [{entry['severity']}]" if entry.get("severity") else ""))
            if entry["kind"] != "cause" or entry["rank"] != 1:
                lines.append(f"     why: {entry['why']}")
    failing = [c for c in data["checks"] if c["outcome"] == "failed"]
    by_component: dict[str, list[dict[str, Any]]] = {}
    for c in failing:
        by_component.setdefault(c["component"] or "?", []).append(c)
    titles = {s["id"]: s for s in data["scenarios"]}
    for component in sorted(by_component):
        lines.append(f"[{component}]")
        for c in by_component[component]:
            first = (c["message"] or "").splitlines()[0] if c["message"] else ""
            lines.append(f"  FAILED {c['severity']} {c['nodeid']}")
            lines.append(f"         {first}")
            sc = titles.get(c["scenario"])
            if sc:
                lines.append(f"         scenario: {sc['title']}")
                for step in sc["mitigation"][:2]:
                    lines.append(f"           - {step['step']}")
    if data["next_steps"]:
        lines.append("Next steps:")
        for i, step in enumerate(data["next_steps"][:10], 1):
            note = " [condition met]" if step.get("condition") == "true" else ""
            lines.append(f"  {i}. {step['step']}{note}")
            if step.get("command"):
                lines.append(f"       $ {step['command']}")
        if len(data["next_steps"]) > 10:
            lines.append(f"  ... {len(data['next_steps']) - 10} more in triage.json")
    for d in data.get("dropped_steps") or []:
        lines.append(f"  (dropped: {d['step']}: {d['because']})")
    if data["blind_spots"]:
        lines.append(f"Blind spots ({len(data['blind_spots'])} checks could not run):")
        for b in data["blind_spots"]:
            lines.append(f"  UNKNOWN {b['severity']} {b['nodeid']} - {b['reason']}")
    for line in data.get("escalation", []):
        lines.append(f"Escalation: {line}")
    counts = data["counts"]
    lines.append(f"{counts['passed']} passed, {counts['failed']} failed, {counts['unknown']} unknown "
                 f"in {data['duration_s']:.1f} s. Reports: triage.json, incident.md")
    return lines


# --- files -----------------------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write(directory: Path, data: Mapping[str, Any], redact: Callable[[str], str]) -> None:
    """Write triage.json and incident.md, redacted."""
    _write_text(directory / "triage.json", redact(json.dumps(data, indent=2, default=str)) + "\n")
    _write_text(directory / "incident.md", redact(incident_markdown(data)))


def empty_verdict(*, error: str | None = None, started_at: float | None = None) -> dict[str, Any]:
    """A verdict with nothing checked (a usage error): the same shape as ``build``'s."""
    now = datetime.now(tz=UTC).timestamp() if started_at is None else started_at
    blind = [{"nodeid": "*", "component": None, "severity": None, "reason": f"configuration error: {error}"}] \
        if error else []
    return {
        "schema_version": SCHEMA_VERSION, "severity": None, "severity_definition": None, "response_time": None,
        "error": error, "target": None, "started_at": iso_utc(now), "finished_at": iso_utc(now), "detected_at": None,
        "next_update_at": None, "duration_s": 0.0,
        "counts": {"passed": 0, "failed": 0, "unknown": 0, "skipped": 0},
        "affected_components": [], "impact": None, "impact_details": [], "probable_cause": None, "causes": [],
        "symptoms": [], "suspects": [], "ranking": [], "scenarios": [], "next_steps": [], "dropped_steps": [],
        "blind_spots": blind, "sev1_blind": bool(error),
        "blind_spot_warning": "Nothing was checked: the run stopped on a configuration error." if error else None,
        "escalation": [], "facts": {}, "fact_sources": {}, "checks": [],
    }


def write_usage_error(directory: Path, message: str, *, checks: Iterable[Mapping[str, Any]] | None = None,
                      redact: Callable[[str], str] | None = None) -> None:
    """Even a bad configuration (or a verdict that could not be built) leaves a triage.json saying why.

    ``checks`` are the run's raw results when there were some: they are kept, with the worst failing
    severity, so that a bug in the verdict does not cost the run its results.
    """
    from labcheck.evidence import Redactor

    clean = redact or Redactor()
    data = empty_verdict(error=clean(message))
    rows = []
    for r in sorted(checks or (), key=lambda r: str(r.get("nodeid"))):
        rows.append({"nodeid": r.get("nodeid"), "outcome": r.get("outcome"), "component": r.get("component"),
                     "severity": sev_name(r.get("severity")), "scenario": r.get("scenario"),
                     "message": r.get("message"), "observed": r.get("observed") or [],
                     "facts": r.get("facts") or {}, "duration_s": r.get("duration_s", 0.0)})
    if rows:
        data["checks"] = rows
        data["counts"] = {o: sum(1 for c in rows if c["outcome"] == o) for o in data["counts"]}
        level = min((int(r["severity"][4]) for r in rows if r["outcome"] == "failed" and r["severity"]),
                    default=None)
        data["severity"] = sev_name(level)
        data["blind_spots"][0]["reason"] = f"verdict error: {clean(message)}"
        data["blind_spot_warning"] = "The verdict could not be built: the checks' results are listed as they are."
    try:
        _write_text(directory / "triage.json", clean(json.dumps(data, indent=2, default=str)) + "\n")
    except OSError:
        pass


# --- incident.md -----------------------------------------------------------------------------


def _observed(check: Mapping[str, Any]) -> str:
    values = "; ".join(f"{o['target']}: observed {o['observed']} (threshold {o['threshold']})"
                       for o in check.get("observed") or [])
    return values


def incident_markdown(data: Mapping[str, Any]) -> str:
    """The playbook's Initial Incident Declaration, or the Resolution status when nothing failed."""
    if not data["severity"]:
        return _resolution_markdown(data)
    detected = data.get("detected_at") or data["finished_at"]
    day = datetime.fromisoformat(detected).strftime("%Y%m%d")
    lines = [
        "**INCIDENT DECLARED**",
        "",
        f"**Severity:** {data['severity']}",
        f"**Time Detected:** {hhmm(detected)}",
        f"**Impact:** {data.get('impact') or 'Affected components: ' + ', '.join(data['affected_components'])}",
        "",
        "**Current Status:**",
    ]
    by_id = {c["nodeid"]: c for c in data["checks"]}
    ordered = [n for f in [*data.get("causes", []), *data.get("symptoms", [])] for n in f["checks"]]
    ordered += [c["nodeid"] for c in data["checks"] if c["outcome"] == "failed" and c["nodeid"] not in ordered]
    for nodeid in ordered:
        c = by_id[nodeid]
        first = (c["message"] or "").splitlines()[0]
        lines.append(f"- Known: FAILED {c['severity']} {c['component']}: {first} (`{c['nodeid']}`)")
    pc = data.get("probable_cause")
    if pc:
        title = f" ({pc['title']})" if pc.get("title") else ""
        lines.append(f"- Investigating: probable cause {pc['label']}{title}; {pc['why']}")
        if pc.get("caveat"):
            lines.append(f"- Investigating: {pc['caveat']}")
    for s in data.get("suspects") or []:
        lines.append(f"- Investigating: suspect {s['why']}")
    others = [c["label"] for c in data.get("causes", [])[1:]]
    if others:
        lines.append(f"- Investigating: independent failures also seen: {', '.join(others)}")
    if data.get("symptoms"):
        lines.append("- Investigating: ranked as symptoms after the cause: "
                     + ", ".join(s["label"] for s in data["symptoms"]))
    first_scenario = next((s for s in data["scenarios"] if s["role"] == "cause"), None) \
        or (data["scenarios"][0] if data["scenarios"] else None)
    if first_scenario:
        for step in first_scenario.get("investigation", []):
            cmd = f": `{step['command']}`" if step.get("command") else ""
            lines.append(f"- Investigating ({first_scenario['id']}): {step['step']}{cmd}")
    if data.get("blind_spot_warning"):
        lines.append(f"- WARNING: {data['blind_spot_warning']}")
    serious = [b for b in data["blind_spots"] if b["severity"] in ("SEV-1", "SEV-2")]
    for b in serious[:5]:
        lines.append(f"- Not verified: {b['nodeid']} ({b['reason']})")
    rest = len(data["blind_spots"]) - len(serious[:5])
    if rest > 0:
        lines.append(f"- Not verified: {rest} more check(s), listed below")
    next_update = data.get("next_update_at")
    lines += [
        "",
        "**Roles Assigned:**",
        "- IC: @[name]",
        "- Technical Lead: @[name]",
        "- Comms: @[name]",
        "",
        f"**Next Update:** {hhmm(next_update) if next_update else '[Time - typically 15-30 min]'}",
        "",
        f"**Incident Channel:** #inc-{day}-[description]",
        "",
        "---",
        "",
        f"Response time for {data['severity']}: {data.get('response_time') or '?'} "
        f"({data.get('severity_definition') or ''}). Target: {data.get('target')}",
        "",
    ]
    if data["next_steps"]:
        lines.append("**Next steps (playbook):**")
        for i, step in enumerate(data["next_steps"], 1):
            note = f" (condition met: {step['because']})" if step.get("condition") == "true" and step.get("because") else ""
            cmd = f": `{step['command']}`" if step.get("command") else ""
            lines.append(f"{i}. {step['step']}{cmd}{note}")
        lines.append("")
    if data.get("dropped_steps"):
        lines.append("**Advice dropped (condition known false):**")
        lines += [f"- {d['step']} ({d['because']})" for d in data["dropped_steps"]]
        lines.append("")
    if data.get("escalation"):
        lines.append("**Escalation:**")
        lines += [f"- {line}" for line in data["escalation"]]
        lines.append("")
    if data["blind_spots"]:
        lines.append("**Blind spots (could not check):**")
        lines += [f"- UNKNOWN {b['severity'] or ''} {b['nodeid']} - {b['reason']}" for b in data["blind_spots"]]
        lines.append("")
    refs = [f"{s['title']}: {s['playbook']}" for s in data["scenarios"] if s.get("playbook")]
    if refs:
        lines.append("**Playbook:** " + "; ".join(refs))
    return "\n".join(lines).rstrip() + "\n"


def _resolution_markdown(data: Mapping[str, Any]) -> str:
    """The Resolution template's status section, with the checks that passed as evidence."""
    finished = data["finished_at"]
    passed = [c for c in data["checks"] if c["outcome"] == "passed"]
    counts = data["counts"]
    if data.get("sev1_blind"):
        head = "**STATUS: NOT VERIFIED** (no check failed, but a sev1 check could not be run)"
    else:
        head = "**INCIDENT RESOLVED**"
    lines = [
        head,
        "",
        f"**Status:** {'Monitoring' if data.get('sev1_blind') else 'Resolved'}: no check failed at "
        f"{hhmm(finished)} ({counts['passed']} passed, {counts['unknown']} unknown)",
        f"**Duration:** [Start time] - {hhmm(finished)} ([X hours Y minutes])",
        "**Impact:** [Description of what was affected]",
        "",
        "**Root Cause:** [Brief explanation]",
        "",
        "**Resolution:** [What fixed it]",
        "",
        f"**Verified by labcheck at {datetime.fromisoformat(finished).strftime('%Y-%m-%d %H:%M UTC')}:** "
        f"{data.get('target')}",
    ]
    for c in passed:
        values = _observed(c)
        lines.append(f"- PASSED {c['severity'] or ''} {c['nodeid']}" + (f": {values}" if values else ""))
    if data.get("blind_spot_warning"):
        lines += ["", f"WARNING: {data['blind_spot_warning']}"]
    if data["blind_spots"]:
        lines += ["", "**Not verified (blind spots):**"]
        lines += [f"- UNKNOWN {b['severity'] or ''} {b['nodeid']} - {b['reason']}" for b in data["blind_spots"]]
    lines += [
        "",
        "**Follow-up Actions:**",
        "- [ ] Post-incident review scheduled for [date]",
        "- [ ] [Other action items]",
    ]
    return "\n".join(lines) + "\n"
