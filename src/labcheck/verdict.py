"""Incident severity, probable cause, next steps and the incident documents."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from labcheck.config import Settings
from labcheck.scenarios import Catalogue, Scenario, Step

SCHEMA_VERSION = 1


def sev_name(level: int | None) -> str | None:
    return f"SEV-{level}" if level else None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")


def _fill(text: str | None, settings: Settings | None) -> str | None:
    """Fill {namespace}-style placeholders from the configuration; leave unknown ones as they are."""
    if text is None or settings is None:
        return text

    class Keep(dict[str, str]):
        def __missing__(self, key: str) -> str:
            return "{" + key + "}"

    values = Keep({k: str(v) for k, v in settings.values.items() if v is not None and not isinstance(v, tuple)})
    values.pop("database_url", None)  # a DSN carries a password: the command says $DATABASE_URL instead
    try:
        return text.format_map(values)
    except (ValueError, IndexError):
        return text


def _ancestors(component: str, graph: Mapping[str, Iterable[str]]) -> set[str]:
    seen: set[str] = set()
    stack = list(graph.get(component, ()))
    while stack:
        dep = stack.pop()
        if dep not in seen:
            seen.add(dep)
            stack.extend(graph.get(dep, ()))
    return seen


def _facts(checks: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Conditions the run established (e.g. recent_deployment, oom_killed)."""
    facts: dict[str, Any] = {}
    for check in checks:
        for name, value in (check.get("facts") or {}).items():
            if value is True or name not in facts:
                facts[name] = value
    return facts


def _step(step: Step, facts: Mapping[str, Any], settings: Settings | None) -> dict[str, Any] | None:
    """A mitigation step with its condition evaluated where the run knows the answer."""
    known = step.when in facts if step.when else False
    value = facts.get(step.when) if step.when else None
    if known and not value:
        return None  # the run knows the condition is false: drop the advice
    out: dict[str, Any] = {"step": step.text}
    if step.command:
        out["command"] = _fill(step.command, settings)
    if step.when:
        out["when"] = step.when
        out["condition"] = "true" if known else "unknown"
    return out


def rank(failed: list[Mapping[str, Any]], graph: Mapping[str, Iterable[str]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split failing checks into causes and symptoms using the dependency graph."""
    failing_components = {c["component"] for c in failed}
    causes, symptoms = [], []
    for check in failed:
        upstream = _ancestors(check["component"], graph) & failing_components
        if upstream:
            symptoms.append({**check, "because": sorted(upstream)})
        else:
            causes.append({**check, "because": []})
    order = {"sev": lambda c: c.get("severity") or 9}
    causes.sort(key=order["sev"])
    symptoms.sort(key=order["sev"])
    return causes, symptoms


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
    severity_data = catalogue.severity or {}
    graph = severity_data.get("depends_on", {})
    facts = _facts(checks)

    causes, symptoms = rank(failed, graph)
    matched_ids: list[str] = []
    for c in causes + symptoms:
        if c["scenario"] and c["scenario"] not in matched_ids:
            matched_ids.append(c["scenario"])
    scenarios = []
    for sid in matched_ids:
        sc = catalogue.get(sid)
        if sc is None:
            continue
        scenarios.append(_scenario_doc(sc, facts, settings))

    probable = None
    if causes:
        top = causes[0]
        dependents = sorted({s["component"] for s in symptoms})
        why = (f"{top['component']} failed and {', '.join(dependents)} depend(s) on it"
               if dependents else f"{top['component']} failed and none of its dependencies did")
        probable = {
            "scenario": top["scenario"],
            "component": top["component"],
            "check": top["nodeid"],
            "why": why,
        }
    rollout = facts.get("recent_rollout") if isinstance(facts.get("recent_rollout"), dict) else None
    suspects = []
    if rollout and level is not None and level <= 2:
        suspects.append({
            "kind": "recent-rollout",
            "deployment": rollout.get("deployment"),
            "revision": rollout.get("revision"),
            "previous_revision": rollout.get("previous_revision"),
            "age_s": rollout.get("age_s"),
            "why": "a rollout happened shortly before sev1/sev2 failures",
            "rollback": rollout.get("rollback"),
        })

    next_steps: list[dict[str, Any]] = []
    if suspects:
        s = suspects[0]
        next_steps.append({"step": f"Rollback deployment/{s['deployment']} from revision {s['revision']} "
                                   f"to {s['previous_revision']}", "command": s["rollback"],
                           "scenario": "recent-rollout"})
    for sc in scenarios:
        for step in sc["mitigation"]:
            if suspects and step.get("when") == "recent_deployment":
                continue
            next_steps.append({**step, "scenario": sc["id"]})
    if failed and not scenarios:
        for generic in catalogue.generic:
            doc = _step(generic, facts, settings)
            if doc:
                next_steps.append({**doc, "scenario": "generic"})

    blind = [{"nodeid": c["nodeid"], "component": c["component"], "severity": c["severity"],
              "reason": c["message"]} for c in unknown]
    levels = severity_data.get("levels", {})
    sev = sev_name(level)
    return {
        "schema_version": SCHEMA_VERSION,
        "severity": sev,
        "severity_definition": levels.get(sev, {}).get("definition") if sev else None,
        "response_time": levels.get(sev, {}).get("response_time") if sev else None,
        "target": settings.describe() if settings else None,
        "started_at": _iso(started_at),
        "finished_at": _iso(finished_at),
        "duration_s": round(finished_at - started_at, 3),
        "counts": {o: sum(1 for c in checks if c["outcome"] == o) for o in ("passed", "failed", "unknown", "skipped")},
        "affected_components": sorted({c["component"] for c in failed if c["component"]}),
        "probable_cause": probable,
        "symptoms": [{"scenario": s["scenario"], "component": s["component"], "check": s["nodeid"],
                      "caused_by": s["because"]} for s in symptoms],
        "suspects": suspects,
        "scenarios": scenarios,
        "next_steps": next_steps,
        "blind_spots": blind,
        "sev1_blind": any(b["severity"] == "SEV-1" for b in blind),
        "escalation": _escalation(severity_data, sev, matched_ids),
        "facts": {k: v for k, v in facts.items() if not isinstance(v, dict)},
        "checks": [{k: v for k, v in c.items() if k != "level"} for c in checks],
    }


def _scenario_doc(sc: Scenario, facts: Mapping[str, Any], settings: Settings | None) -> dict[str, Any]:
    mitigation = [d for d in (_step(s, facts, settings) for s in sc.mitigation) if d]
    return {
        "id": sc.id,
        "title": sc.title,
        "symptoms": list(sc.symptoms),
        "mitigation": mitigation,
        "investigation": [{"step": s.text, "command": _fill(s.command, settings)} for s in sc.investigation],
        "escalation": sc.escalation,
        "playbook": sc.playbook,
    }


def _escalation(data: Mapping[str, Any], sev: str | None, scenario_ids: list[str]) -> list[str]:
    lines = []
    for rule in data.get("escalation", []):
        if (sev and sev in rule.get("applies_to", [])) or set(rule.get("scenarios", [])) & set(scenario_ids):
            lines.append(f"{rule['condition']}: escalate to {rule['to']} ({rule['contact']})")
    return lines if sev else []


def blind_spots_fail(data: Mapping[str, Any], mode: str) -> bool:
    """Whether blind spots should fail a run that otherwise passed."""
    if mode == "any":
        return bool(data["blind_spots"])
    if mode == "sev1":
        return bool(data["sev1_blind"])
    return False


def summary_lines(data: Mapping[str, Any]) -> list[str]:
    """The terminal triage section."""
    lines = []
    sev = data["severity"]
    if sev:
        lines.append(f"INCIDENT SEVERITY: {sev} ({data.get('severity_definition') or ''}; respond within "
                     f"{data.get('response_time') or '?'})")
    else:
        lines.append("No failing checks: no incident detected by the checks that ran.")
    pc = data.get("probable_cause")
    if pc:
        lines.append(f"Probable cause: {pc['scenario'] or pc['component']} ({pc['why']})")
    if data["symptoms"]:
        lines.append("Symptoms: " + ", ".join(sorted({s['scenario'] or s['component'] for s in data['symptoms']})))
    for s in data.get("suspects", []):
        lines.append(f"Suspect: rollout of {s['deployment']} to revision {s['revision']} "
                     f"{int(s['age_s'] or 0)} s ago")
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
        for i, step in enumerate(data["next_steps"][:8], 1):
            cmd = f"  $ {step['command']}" if step.get("command") else ""
            lines.append(f"  {i}. {step['step']}{cmd}")
    if data["blind_spots"]:
        lines.append(f"Blind spots ({len(data['blind_spots'])} checks could not run):")
        for b in data["blind_spots"]:
            lines.append(f"  UNKNOWN {b['severity']} {b['nodeid']}: {b['reason']}")
        if data["sev1_blind"]:
            lines.append("  WARNING: a sev1 check could not be run; the severity above may be too low.")
    for line in data.get("escalation", []):
        lines.append(f"Escalation: {line}")
    counts = data["counts"]
    lines.append(f"{counts['passed']} passed, {counts['failed']} failed, {counts['unknown']} unknown "
                 f"in {data['duration_s']:.1f} s. Reports: triage.json, incident.md")
    return lines


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write(directory: Path, data: Mapping[str, Any], redact: Callable[[str], str]) -> None:
    """Write triage.json and incident.md, redacted."""
    _write_text(directory / "triage.json", redact(json.dumps(data, indent=2, default=str)) + "\n")
    _write_text(directory / "incident.md", redact(incident_markdown(data)))


def write_usage_error(directory: Path, message: str) -> None:
    """Even a bad configuration leaves a triage.json that says why nothing was checked."""
    from labcheck.evidence import Redactor

    now = datetime.now(tz=UTC)
    data = {
        "schema_version": SCHEMA_VERSION,
        "severity": None,
        "error": Redactor()(message),
        "target": None,
        "started_at": now.isoformat(timespec="seconds"),
        "finished_at": now.isoformat(timespec="seconds"),
        "duration_s": 0.0,
        "checks": [],
        "scenarios": [],
        "blind_spots": [{"nodeid": "*", "component": None, "severity": None,
                         "reason": f"configuration error: {Redactor()(message)}"}],
        "sev1_blind": True,
    }
    try:
        _write_text(directory / "triage.json", json.dumps(data, indent=2) + "\n")
    except OSError:
        pass


def incident_markdown(data: Mapping[str, Any]) -> str:
    """The playbook's Initial Incident Declaration, or the Resolution status when nothing failed."""
    started = datetime.fromisoformat(data["started_at"])
    if not data["severity"]:
        passed = [c for c in data["checks"] if c["outcome"] == "passed"]
        lines = [
            "**INCIDENT RESOLVED**" if not data["blind_spots"] else "**STATUS: NO FAILING CHECKS (with blind spots)**",
            "",
            f"**Checked at:** {started.strftime('%Y-%m-%d %H:%M UTC')}",
            f"**Target:** {data.get('target')}",
            "",
            "**Health evidence:**",
        ]
        for c in passed:
            values = "; ".join(f"{o['target']}: {o['observed']} (threshold {o['threshold']})" for o in c["observed"])
            lines.append(f"- PASSED {c['nodeid']}" + (f": {values}" if values else ""))
        if data["blind_spots"]:
            lines += ["", "**Not verified (blind spots):**"]
            lines += [f"- UNKNOWN {b['nodeid']}: {b['reason']}" for b in data["blind_spots"]]
        return "\n".join(lines) + "\n"
    impact_names = ", ".join(data["affected_components"])
    next_update = (started + timedelta(minutes=15 if data["severity"] in ("SEV-1", "SEV-2") else 30))
    lines = [
        "**INCIDENT DECLARED**",
        "",
        f"**Severity:** {data['severity']}",
        f"**Time Detected:** {started.strftime('%H:%M UTC')}",
        f"**Impact:** {data.get('impact') or ('Affected components: ' + impact_names)}",
        "",
        "**Current Status:**",
    ]
    for c in data["checks"]:
        if c["outcome"] == "failed":
            first = (c["message"] or "").splitlines()[0]
            lines.append(f"- Known: {first}")
    pc = data.get("probable_cause")
    if pc:
        lines.append(f"- Investigating: probable cause {pc['scenario'] or pc['component']} ({pc['why']})")
    for sc in data["scenarios"][:1]:
        for step in sc.get("investigation", [])[:3]:
            lines.append(f"- Investigating: {step['step']}" + (f": `{step['command']}`" if step.get("command") else ""))
    for b in data["blind_spots"]:
        lines.append(f"- Not verified: {b['nodeid']} ({b['reason']})")
    lines += [
        "",
        "**Roles Assigned:**",
        "- IC: @[name]",
        "- Technical Lead: @[name]",
        "- Comms: @[name]",
        "",
        f"**Next Update:** {next_update.strftime('%H:%M UTC')}",
        "",
        f"**Incident Channel:** #inc-{started.strftime('%Y%m%d')}-[description]",
    ]
    return "\n".join(lines) + "\n"
