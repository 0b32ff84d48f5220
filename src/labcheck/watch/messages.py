"""The incident's messages, from the state: when to post one, and its text.

- the declaration (the playbook's Initial Incident Declaration, ``verdict.incident_markdown`` of the
  confirming round, dated from the incident's start) when the incident is declared;
- a status update (the playbook's Status Update Template, ``verdict.comms.status_update_markdown``)
  at each change -- severity, the confirmed findings, the settled probable cause, an escalation
  that now holds -- and at the playbook's cadence (15 minutes at SEV-1, else 30: the verdict's
  ``next_update_at`` rule) when nothing changed;
- the resolution (the playbook's Resolution Communication) with the real duration, from the first
  failing round to the first round of the passing run that resolved it, and the root cause: the
  probable cause held longest;
- the post-incident review skeleton (the playbook's Timeline, Questions and Action Items), its
  timeline built from round timestamps, findings, causes, escalations, messages and the rollouts
  the verdict suspected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labcheck import verdict
from labcheck.timefmt import clock, hms
from labcheck.watch.confirm import Rule
from labcheck.watch.state import WATCHED_ESCALATIONS, epoch, root_cause

SHOWN_ROUNDS = 60


def cadence_s(severity: str | None) -> float:
    """Minutes between status updates, as the verdict's ``next_update_at``: min(response time, 30)."""
    return 15 * 60.0 if severity == "SEV-1" else 30 * 60.0


def settled_cause(inc: Mapping[str, Any], rule: Rule) -> str | None:
    """The latest probable cause that held K rounds in a row (a cause that flickers is not a change)."""
    for span in reversed(inc.get("causes") or []):
        if span["label"] and span["rounds"] >= rule.k:
            return str(span["label"])
    first = next((s for s in inc.get("causes") or [] if s["label"]), None)
    return str(first["label"]) if first else None


def snapshot(inc: Mapping[str, Any], rule: Rule) -> dict[str, Any]:
    """What a status update reports; a new update is due when it differs from the last one posted."""
    return {"severity": inc.get("severity"),
            "findings": sorted(n for n, f in inc["findings"].items() if not f.get("recovered_at")),
            "cause": settled_cause(inc, rule),
            "escalations": sorted(c for c, e in (inc.get("escalations") or {}).items() if e.get("holds"))}


def due(inc: Mapping[str, Any], rule: Rule, now: float) -> tuple[str, str] | None:
    """(kind, why) of the message due now, or None."""
    sent = [m for m in inc.get("messages") or []]
    kinds = {m["kind"] for m in sent}
    if "declaration" not in kinds:
        return "declaration", f"incident declared: {inc.get('severity')}, failing in {rule.k} of {rule.n} rounds"
    if inc["status"] == "resolved":
        return None if "resolution" in kinds else ("resolution", "every confirmed failure recovered")
    now_snap, posted = snapshot(inc, rule), inc.get("posted") or {}
    changed = [k for k in now_snap if now_snap[k] != posted.get(k)]
    if changed:
        return "update", "changed: " + ", ".join(_change(k, posted.get(k), now_snap[k]) for k in changed)
    last = max(epoch(m["at"]) for m in sent)
    every = cadence_s(inc.get("severity"))
    if now - last >= every:
        return "update", f"no change; the playbook's cadence ({every / 60:g} minutes at {inc.get('severity')})"
    return None


def _change(key: str, before: Any, after: Any) -> str:
    if isinstance(after, list):
        added = [x for x in after if x not in (before or [])]
        gone = [x for x in before or [] if x not in after]
        return f"{key} " + "; ".join([*(f"+{x}" for x in added), *(f"-{x}" for x in gone)])
    return f"{key} {before or 'none'} -> {after or 'none'}"


# --- texts -----------------------------------------------------------------------------------


def watch_lines(inc: Mapping[str, Any], state: Mapping[str, Any], rule: Rule, at: float) -> list[str]:
    """The watcher's own facts, appended to the declaration and the updates."""
    out = [f"Incident open since {clock(epoch(inc['started_at']), date=True)} ({hms(at - epoch(inc['started_at']))}), "
           f"key `{inc['key']}`; {rule.text()}"]
    for nodeid, f in inc["findings"].items():
        state_of = "recovered at " + clock(epoch(f["recovered_at"])) if f.get("recovered_at") else f.get("status")
        out.append(f"{f.get('severity') or ''} `{nodeid}`: {state_of}; first seen {clock(epoch(f['first_seen']))}, "
                   f"last seen {clock(epoch(f['last_seen'])) if f.get('last_seen') else '-'}")
    flapping = [n for n, c in state["checks"].items() if c.get("status") == "flapping"]
    if flapping:
        out.append("Flapping (not declared on its own): " + ", ".join(f"`{n}`" for n in flapping))
    for condition, e in (inc.get("escalations") or {}).items():
        if e.get("holds"):
            out.append(f"ESCALATE: {condition}: {e['because']}")
    return out


def declaration(inc: Mapping[str, Any], state: Mapping[str, Any], triage: Mapping[str, Any], rule: Rule,
                at: float) -> str:
    text = verdict.incident_markdown({**triage, "detected_at": inc["started_at"]})
    return text.rstrip() + "\n\n**Watch:**\n" + "".join(f"- {line}\n" for line in watch_lines(inc, state, rule, at))


def update(inc: Mapping[str, Any], state: Mapping[str, Any], triage: Mapping[str, Any], rule: Rule,
           at: float, why: str) -> str:
    from labcheck.timefmt import iso_utc

    phase = None if triage.get("severity") else "Monitoring"  # the confirmed failures are not failing now
    text = verdict.comms.status_update_markdown(triage, phase_name=phase, incident_start=inc["started_at"],
                                                now=iso_utc(at))
    lines = [f"Why this update: {why}", *watch_lines(inc, state, rule, at)]
    return text.rstrip() + "\n\n**Watch:**\n" + "".join(f"- {line}\n" for line in lines)


def _span(inc: Mapping[str, Any]) -> str:
    start, end = epoch(inc["started_at"]), epoch(inc["ended_at"])
    minutes = int((end - start) // 60)
    return (f"{clock(start, date=True)} - {clock(end, date=True)} ({minutes // 60} hours {minutes % 60} minutes; "
            f"{hms(end - start)})")


def resolution(inc: Mapping[str, Any], triage: Mapping[str, Any], rule: Rule) -> str:
    """The playbook's Resolution Communication, with the real duration and the root cause."""
    rc = root_cause(inc)
    comps = sorted({str(f.get("component")) for f in inc["findings"].values() if f.get("component")})
    peak = min((h["severity"] for h in inc["severity_history"] if h["severity"]), default=None)
    cause = "[Brief explanation]"
    if rc:
        title = f" ({rc['title']})" if rc.get("title") else ""
        cause = f"{rc['label']}{title}: {rc.get('why') or ''} (the probable cause for {hms(rc['held_s'])})"
    passed = (triage.get("counts") or {}).get("passed", 0)
    lines = ["**INCIDENT RESOLVED**", "", f"**Duration:** {_span(inc)}",
             f"**Impact:** {peak or '?'}: {inc.get('impact') or ', '.join(comps) or '[Description]'}", "",
             f"**Root Cause:** {cause}", "",
             "**Resolution:** [What fixed it]. Every confirmed failure passed in "
             f"{rule.m} consecutive rounds from {clock(epoch(inc['ended_at']))} UTC "
             f"({passed} checks passed in the last round)."]
    for r in inc.get("rollouts") or []:
        lines.append(f"Suspected rollout: {r['deployment']} revision {r['revision']} at {clock(epoch(r['at']))} UTC")
    lines += ["", "**Severity history:** " + "; ".join(
        f"{clock(epoch(h['at']))} {h['event']} {h['severity'] or ''}".rstrip() for h in inc["severity_history"]), "",
              "**Follow-up Actions:**", "- [ ] Post-incident review scheduled for [date] (skeleton: "
              "post-incident-review.md)", "- [ ] [Other action items]", "",
              "Thank you for your patience during this incident.", ""]
    return "\n".join(lines)


def review(inc: Mapping[str, Any], rule: Rule) -> str:
    """The playbook's Post-Incident Review skeleton, its timeline from the state."""
    rows: list[tuple[float, str, str]] = []
    first_round = inc["rounds"][0] if inc["rounds"] else None
    failing = ", ".join(f"`{n}`" for n in (first_round or {}).get("failed", [])) or "checks"
    rows.append((epoch(inc["started_at"]), f"First failing round (incident start): {failing}", "labcheck watch"))
    for h in inc["severity_history"]:
        what = {"declared": f"Incident declared {h['severity']} (failing in {rule.k} of {rule.n} rounds)",
                "resolved": f"Incident resolved ({rule.m} passing rounds)"}.get(
                    h["event"], f"Severity {h['event']} to {h['severity']}")
        rows.append((epoch(h["at"]), what, "labcheck watch"))
    for s in inc.get("causes") or []:
        if s["label"]:
            rows.append((epoch(s["from"]), f"Probable cause: {s['label']} ({s['rounds']} round(s))", "labcheck"))
    for r in inc.get("rollouts") or []:
        rows.append((epoch(r["at"]), f"Rollout: {r['deployment']} revision {r['revision']}", "deploy"))
    for n, f in inc["findings"].items():
        rows.append((epoch(f["confirmed_at"]), f"Confirmed failing: `{n}`", "labcheck watch"))
        if f.get("recovered_at"):
            rows.append((epoch(f["recovered_at"]), f"Recovered: `{n}`", "labcheck watch"))
    for c, e in (inc.get("escalations") or {}).items():
        if e.get("since"):
            rows.append((epoch(e["since"]), f"Escalation holds: {c}", "labcheck watch"))
    for m in inc.get("messages") or []:
        rows.append((epoch(m["at"]), f"{m['kind'].capitalize()} posted ({m['reason']})", "labcheck watch"))
    if inc.get("ended_at"):
        rows.append((epoch(inc["ended_at"]), "Service restored (first round of the passing run)", "System"))
    rows.sort(key=lambda r: r[0])
    rc = root_cause(inc)
    lines = [f"# Post-incident review: {inc['key']}", "",
             f"Severity: {min((h['severity'] for h in inc['severity_history'] if h['severity']), default='?')}; "
             f"duration: {_span(inc) if inc.get('ended_at') else 'still open'}; "
             f"probable root cause: {rc['label'] if rc else '[unknown]'}", "",
             "## Timeline", "", "| Time (UTC) | Event | Actor |", "|------------|-------|-------|"]
    lines += [f"| {clock(t)} | {what} | {actor} |" for t, what, actor in rows]
    lines += ["| HH:MM | IC assigned | @name |", "| HH:MM | Mitigation deployed | @name |", "", "### Rounds", "",
              "| Round | Time (UTC) | Severity | Failed | Probable cause |", "|---|---|---|---|---|"]
    shown = inc["rounds"][-SHOWN_ROUNDS:]
    if len(inc["rounds"]) > len(shown):
        lines.append(f"| ... | {len(inc['rounds']) - len(shown)} earlier rounds in incident-state.json | | | |")
    lines += [f"| {r['round']} | {clock(epoch(r['at']))} | {r.get('severity') or ('error' if r['status'] == 'error' else '-')} "
              f"| {len(r.get('failed') or [])} | {r.get('cause') or '-'} |" for r in shown]
    detected = clock(epoch(inc["declared_at"]))
    lines += ["", "## Post-Incident Review Questions", "", "1. **Detection**",
              f"   - How was the incident detected? `labcheck watch`: first failing round at "
              f"{clock(epoch(inc['started_at']))}, declared at {detected} ({rule.k} of {rule.n} rounds)",
              "   - Could we have detected it earlier?", "   - Were the right people alerted?",
              "2. **Response**", "   - Was the response time acceptable?",
              *(f"   - Escalation {c}: {'held since ' + clock(epoch(e['since'])) if e.get('since') else 'did not hold'}"
                for c, e in (inc.get("escalations") or {}).items() if c in WATCHED_ESCALATIONS),
              "   - Were runbooks helpful and accurate?", "   - What blocked faster resolution?",
              "3. **Root Cause**", f"   - What was the root cause? (probable: {rc['label'] if rc else 'unknown'})",
              "   - How did this slip through our processes?", "   - Were there warning signs we missed?",
              "4. **Prevention**", "   - How can we prevent recurrence?", "   - What monitoring improvements are needed?",
              "   - What process changes should we make?", "", "## Action Items", "",
              "| Priority | Action | Owner | Due Date | Status |", "|----------|--------|-------|----------|--------|",
              "| P0 | [Critical fix] | @name | [date] | [ ] |", "| P1 | [Important improvement] | @name | [date] | [ ] |",
              "| P2 | [Nice to have] | @name | [date] | [ ] |", ""]
    return "\n".join(lines)
