"""The verdict's outputs: the terminal summary, triage.json, incident.md (declaration or resolution),
and the status update and status page (``comms``).

Everything here reads the verdict as triage.json has it (a dict), so the gate can render a
resolution from a triage.json it read back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from labcheck.timefmt import hhmm, hms, iso_z
from labcheck.verdict import comms
from labcheck.verdict.build import empty_verdict
from labcheck.verdict.model import (
    SERIOUS,
    CheckResult,
    GateEvidence,
    counts,
    fully_verified,
    sev_name,
)

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
    for line in escalation_lines(data):
        lines.append(f"Escalation: {line}")
    if data.get("signals"):
        lines.append(f"Signals: {data['signals']}")
    counts = data["counts"]
    lines.append(f"{counts['passed']} passed, {counts['failed']} failed, {counts['unknown']} unknown "
                 f"in {data['duration_s']:.1f} s. Reports: {', '.join(report_files(data))}")
    return lines


def report_files(data: Mapping[str, Any]) -> list[str]:
    """The documents ``write`` writes for this verdict, as triage.json names them."""
    refs = [data.get("status_update"), data.get("status_page")]
    return ["triage.json", "incident.md", *(r["file"] for r in refs if r)]


def escalation_lines(data: Mapping[str, Any]) -> list[str]:
    """The escalations that hold, each with the facts it used; then the rows that could not be evaluated."""
    evaluated = data.get("escalation_evaluated")
    if evaluated is None:  # a triage.json from before the rows were evaluated
        return list(data.get("escalation") or [])
    held = [f"{e['line']} (because {e['because']})" for e in evaluated if e.get("holds")]
    return held + [f"not evaluated: {line}" for line in data.get("escalation_not_evaluated") or []]


# --- files -----------------------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write(directory: Path, data: Mapping[str, Any], redact: Callable[[str], str]) -> None:
    """Write triage.json, incident.md, and the status update and status page it references, redacted."""
    _write_text(directory / "triage.json", redact(json.dumps(data, indent=2, default=str)) + "\n")
    _write_text(directory / "incident.md", redact(incident_markdown(data)))
    if data.get("status_update"):
        _write_text(directory / data["status_update"]["file"], redact(comms.status_update_markdown(data)))
    if data.get("status_page"):
        _write_text(directory / data["status_page"]["file"], redact(comms.status_page_markdown(data)))


def write_usage_error(directory: Path, message: str, *, checks: Iterable[Mapping[str, Any]] | None = None,
                      redact: Callable[[str], str] | None = None) -> None:
    """Even a bad configuration (or a verdict that could not be built) leaves a triage.json saying why.

    ``checks`` are the run's raw results when there were some: they are kept, with the worst failing
    severity, so that a bug in the verdict does not cost the run its results.
    """
    from labcheck.evidence import Redactor

    clean = redact or Redactor()
    data = empty_verdict(error=clean(message))
    rows = [CheckResult.from_raw(r) for r in sorted(checks or (), key=lambda r: str(r.get("nodeid")))]
    if rows:
        data["checks"] = [r.doc() for r in rows]
        data["counts"] = counts(rows)
        data["severity"] = sev_name(min((r.level for r in rows if r.outcome == "failed" and r.level), default=None))
        data["blind_spots"][0]["reason"] = f"verdict error: {clean(message)}"
        data["blind_spot_warning"] = "The verdict could not be built: the checks' results are listed as they are."
    try:
        _write_text(directory / "triage.json", clean(json.dumps(data, indent=2, default=str)) + "\n")
        # No status update or status page: nothing (or no verdict) says what to tell anyone, and a
        # previous run's must not be posted as this one's.
        for name in (comms.STATUS_UPDATE, comms.STATUS_PAGE):
            (directory / name).unlink(missing_ok=True)
    except OSError:
        pass


# --- incident.md -----------------------------------------------------------------------------


def incident_markdown(data: Mapping[str, Any]) -> str:
    """The playbook's Initial Incident Declaration, or the Resolution status when nothing failed."""
    if not data["severity"]:
        return resolution_markdown(data)
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
    for c in comms.failing_cause_first(data):
        first = (c["message"] or "").splitlines()[0]
        lines.append(f"- Known: FAILED {c['severity']} {c['component']}: {first} (`{c['nodeid']}`)")
    lines += [f"- Investigating: {finding}" for finding in comms.cause_findings(data)]
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
        f"Signals read through: {data.get('signals') or 'not recorded'}",
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
    escalate = escalation_lines(data)
    if escalate:
        lines.append("**Escalation:**")
        lines += [f"- {line}" for line in escalate]
        lines.append("")
    if data["blind_spots"]:
        lines.append("**Blind spots (could not check):**")
        lines += [f"- UNKNOWN {b['severity'] or ''} {b['nodeid']} - {b['reason']}" for b in data["blind_spots"]]
        lines.append("")
    refs = [f"{s['title']}: {s['playbook']}" for s in data["scenarios"] if s.get("playbook")]
    if refs:
        lines.append("**Playbook:** " + "; ".join(refs))
    return "\n".join(lines).rstrip() + "\n"


# --- the resolution --------------------------------------------------------------------------


def resolution_markdown(data: Mapping[str, Any], *, gate: GateEvidence | None = None) -> str:
    """The playbook's "Incident Resolved" template, with the checks that passed as evidence.

    After a plain run that found nothing failing, it is a status (or NOT VERIFIED, when a sev1 check
    could not run); after `labcheck gate` passed, ``gate`` supplies the span since the mitigation,
    the history and the soak that verified the resolution.
    """
    finished = data["finished_at"]
    counted = data.get("counts") or {}
    verified = bool(data["verified"]) if "verified" in data else \
        fully_verified((c.get("severity"), c["outcome"]) for c in data.get("checks") or [])
    lines = ["**INCIDENT RESOLVED**" if verified else "**STATUS: NOT VERIFIED**", ""]
    if not verified:
        lines += [_coverage(data), ""]
    if gate is None:
        lines += [f"**Status:** {comms.phase({**data, 'verified': verified})[0]}: no check failed at "
                  f"{hhmm(finished)} ({counted['passed']} passed, {counted['unknown']} unknown)",
                  f"**Duration:** [Start time] - {hhmm(finished)} ([X hours Y minutes])"]
    else:
        lines.append(f"**Duration:** {_gate_span(gate)}")
    lines += [
        "**Impact:** [Description of what was affected]",
        "",
        "**Root Cause:** [Brief explanation]",
        "",
        "**Resolution:** [What fixed it]",
        "",
    ]
    read_through = [f"Signals read through: {data['signals']}"] if data.get("signals") else []
    if gate is None:
        lines.append(f"**Verified by labcheck at {datetime.fromisoformat(finished):%Y-%m-%d %H:%M UTC}:** "
                     f"{data.get('target')}")
        lines += read_through
    else:
        lines += [*read_through, f"**Verification:** {_gate_verification(gate, data)}.", "", "**Health evidence:**"]
    said = "observed " if gate is None else ""
    for c in data.get("checks", []):
        if c["outcome"] != "passed":
            continue
        values = "; ".join(f"{o['target']}: {said}{o['observed']} (threshold {o['threshold']})"
                           for o in c.get("observed") or [])
        lines.append(f"- PASSED {c.get('severity') or ''} {c['nodeid']}" + (f": {values}" if values else ""))
    if data.get("blind_spot_warning"):
        lines += ["", f"WARNING: {data['blind_spot_warning']}"]
    if data.get("blind_spots"):
        lines += ["", "**Not verified (blind spots):**"]
        lines += [f"- UNKNOWN {b.get('severity') or ''} {b['nodeid']} - {b['reason']}" for b in data["blind_spots"]]
    lines += [
        "",
        "**Follow-up Actions:**",
        "- [ ] Post-incident review scheduled for [date]",
        "- [ ] [Other action items]",
    ]
    if gate is not None:
        lines += ["", "Thank you for your patience during this incident."]
    return "\n".join(lines) + "\n"


def _coverage(data: Mapping[str, Any]) -> str:
    """Why a run without failures does not verify the resolution: the sev1/sev2 checks that did not run."""
    checks = data.get("checks") or []
    ran = [c for c in checks if c["outcome"] in ("passed", "failed")]
    missing = [c for c in checks if c.get("severity") in SERIOUS and c["outcome"] not in ("passed", "failed")]
    if not any(c.get("severity") in SERIOUS for c in checks):
        return (f"No failing checks among {len(ran)} that ran; no sev1/sev2 check was selected: not verified. "
                "Run the sev1 and sev2 checks (pytest -m \"sev1 or sev2\").")
    text = (f"No failing checks among {len(ran)} that ran; {len(missing)} sev1/sev2 checks could not run: "
            "not verified.")
    return "\n".join([text, *(f"- could not run: {c['severity']} {c['nodeid']} - {c.get('message') or c['outcome']}"
                             for c in missing)])


def _gate_span(gate: GateEvidence) -> str:
    end = datetime.fromtimestamp(gate.finished, tz=UTC)
    if gate.since is None:
        return f"[Start time] - {end:%Y-%m-%d %H:%M UTC} ([X hours Y minutes])"
    start = datetime.fromtimestamp(gate.since, tz=UTC)
    minutes = int((gate.finished - gate.since) // 60)
    return f"{start:%Y-%m-%d %H:%M UTC} - {end:%Y-%m-%d %H:%M UTC} ({minutes // 60} hours {minutes % 60} minutes)"


def _gate_verification(gate: GateEvidence, data: Mapping[str, Any]) -> str:
    counted = data.get("counts") or {}
    text = (f"`labcheck gate` passed at {datetime.fromtimestamp(gate.finished, tz=UTC):%H:%M UTC} against "
            f"{data.get('target')}: {counted.get('passed', 0)} checks passed, {counted.get('failed', 0)} failed, "
            f"{counted.get('unknown', 0)} unknown")
    if gate.history_window:
        where = f"since the mitigation at {iso_z(gate.since)}" if gate.since is not None \
            else f"in the last {gate.history_window}"
        text += f"; the 5xx ratio and p95 latency stayed under their thresholds in every minute {where}"
    if gate.soak_rounds is not None:
        text += f"; soak: {gate.soak_rounds} rounds over {hms(gate.soak_s or 0.0)}, all green"
    return text
