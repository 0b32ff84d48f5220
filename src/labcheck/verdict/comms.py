"""The playbook's Status Update and Customer Communication (Status Page) templates, filled from a verdict.

Everything here is a plain function of the verdict as triage.json has it (a dict), plus optional
context a caller may know better than the run (the phase, the incident's start, the time): the
run writes both documents through ``render.write``, and a command that follows an incident over
time can call the same functions on each verdict it reads.

The status update is internal (the incident channel): it may name components, checks and
commands. The status page is for customers: its words come only from fixed sentences here and
the impact matrix's ``customer`` column (``scenarios/_severity.toml``), never from what the run
observed, so no target URL, host, port, pod, metric or check name can reach it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from labcheck.timefmt import hhmm

STATUS_UPDATE = "status-update.md"
STATUS_PAGE = "status-page.md"
PHASES = ("Investigating", "Identified", "Mitigating", "Monitoring", "Resolved")
# The status page has no "Mitigating": for customers the cause is identified and being fixed.
PAGE_STATUS = {"Investigating": "INVESTIGATING", "Identified": "IDENTIFIED", "Mitigating": "IDENTIFIED",
               "Monitoring": "MONITORING", "Resolved": "RESOLVED"}
FIRST_UPDATE_MIN = 15  # an open incident without a severity (nothing failed, nothing confirmed): the shortest cadence
SHOWN_STEPS = 5
SHOWN_FINDINGS = 6

# What customers see, by the scenario of the probable cause (then the symptoms); else by severity.
_EXPERIENCE = {"high-error-rate": "elevated error rates", "high-latency": "degraded performance",
               "api-not-answering": "an outage", "database-unreachable": "an outage",
               "auth-failure": "sign-in and authentication failures"}
_EXPERIENCE_BY_SEVERITY = {"SEV-1": "an outage", "SEV-2": "a partial outage"}
_PAGE_SENTENCE = {
    "Investigating": "Our engineering team is actively investigating and working to resolve this issue.",
    "Identified": "We have identified the cause and are working to resolve this issue.",
    "Mitigating": "We have identified the cause and are applying a fix.",
    "Monitoring": "A fix has been applied and we are monitoring the results.",
}
UNNAMED_SERVICE = "Some platform features"  # a component the impact matrix has no customer words for


def phase(data: Mapping[str, Any], *, mitigated: bool | None = None) -> tuple[str, str]:
    """The status update's phase, and why, from what the run knows.

    ``mitigated``: whether a mitigation is known to be in place; by default, whether this run is a
    round of ``labcheck gate`` (``data["gate"]``: the gate runs only after a fix). The rules, in order:

    - the run judged nothing (a usage error): Investigating;
    - something failed:
      - after a mitigation: Mitigating (the fix is in, the checks still fail);
      - Identified when the run is sure of the cause: a probable cause that is a playbook scenario,
        no caveat (no sev1/sev2 check of a component it depends on was blind), no sev1 check blind
        (an unseen outage could be the real cause), and at least one next step to act on;
      - Investigating otherwise;
    - nothing failed:
      - Resolved when every selected sev1 and sev2 check ran and passed (``verified``; in a gate
        round that includes the history checks' 15 minutes since the mitigation);
      - after a mitigation, not yet verified (history not yet 15 minutes, a sev1 check blind): Monitoring;
      - a single run, not verified: Investigating (nothing confirms the platform is healthy).

    So a single run produces Investigating, Identified or Resolved; Mitigating and Monitoring need a
    mitigation: a gate round, or a caller that passes ``mitigated=True``.
    """
    after_fix = bool(data.get("gate")) if mitigated is None else mitigated
    if data.get("error"):
        return "Investigating", f"labcheck could not judge the platform: {data['error']}"
    counted = data.get("counts") or {}
    if data.get("severity"):
        pc = data.get("probable_cause")
        cause = f"probable cause {pc['label']}" if pc else "no probable cause ranked"
        if after_fix:
            since = _mitigation_time(data)
            return "Mitigating", (f"a mitigation is in{since}, and {counted.get('failed', 0)} check(s) still fail "
                                  f"({data['severity']}; {cause})")
        if not pc or not pc.get("scenario"):
            return "Investigating", f"{counted.get('failed', 0)} check(s) fail, matching no playbook scenario"
        if pc.get("caveat"):
            return "Investigating", f"{cause}, not sure: {pc['caveat']}"
        if data.get("sev1_blind"):
            return "Investigating", f"{cause}, not sure: {data.get('blind_spot_warning') or 'a sev1 check was blind'}"
        if not data.get("next_steps"):
            return "Investigating", f"{cause}, but no playbook step applies"
        return "Identified", (f"{cause} is playbook scenario {pc['scenario']}, with no caveat and no sev1 check "
                              f"blind, and {len(data['next_steps'])} playbook step(s) to act on")
    if data.get("verified"):
        where = " since the mitigation" if after_fix else ""
        return "Resolved", f"no check failed{where}, and every sev1 and sev2 check ran and passed"
    if after_fix:
        return "Monitoring", (f"no check fails since the mitigation{_mitigation_time(data)}, but not yet verified: "
                              f"{_unverified(data)}")
    return "Investigating", f"no check failed, but nothing confirms the platform is healthy: {_unverified(data)}"


def _mitigation_time(data: Mapping[str, Any]) -> str:
    since = (data.get("gate") or {}).get("since")
    return f" (applied at {hhmm(since)})" if since else ""


def _unverified(data: Mapping[str, Any]) -> str:
    serious = [b for b in data.get("blind_spots") or [] if b.get("severity") in ("SEV-1", "SEV-2")]
    if serious:
        return f"{len(serious)} sev1/sev2 check(s) could not check ({', '.join(b['nodeid'] for b in serious[:3])}" \
               + (", ..." if len(serious) > 3 else "") + ")"
    return "no sev1 or sev2 check was selected"


def references(data: Mapping[str, Any]) -> dict[str, Any]:
    """triage.json's ``status_update`` and ``status_page``: the files and what they say."""
    name, why = phase(data)
    return {"status_update": {"file": STATUS_UPDATE, "phase": name, "why": why},
            "status_page": {"file": STATUS_PAGE, "status": PAGE_STATUS[name]}}


# --- the status update (internal) -------------------------------------------------------------


def status_update_markdown(data: Mapping[str, Any], *, phase_name: str | None = None,
                           incident_start: str | None = None, now: str | None = None) -> str:
    """The playbook's Status Update Template, filled in.

    ``phase_name`` overrides the phase the run chose; ``incident_start`` (ISO-8601) adds how long the
    incident has been open (default: the run's ``incident_start`` setting); ``now`` (ISO-8601) is the
    update's time (default: when the run finished).
    """
    chosen, why = phase(data)
    if phase_name is not None:
        if phase_name not in PHASES:
            raise ValueError(f"phase: one of {', '.join(PHASES)}, not {phase_name!r}")
        chosen, why = phase_name, f"set by the caller (the run alone would say {chosen}: {why})"
    at = now or data["finished_at"]
    lines = [f"**INCIDENT UPDATE** - {hhmm(at)}", "", f"**Status:** {chosen}", "", "**What we know:**"]
    lines += [f"- {finding}" for finding in _findings(data, incident_start or data.get("incident_start"), at)]
    lines.append(f"- Status {chosen}: {why}")
    lines += ["", "**Current actions:**"]
    lines += [f"- {action}" for action in _actions(data, chosen)]
    resolved = chosen == "Resolved"
    lines += ["", f"**Estimated resolution:** {'resolved at ' + hhmm(at) if resolved else 'Unknown'}", "",
              f"**Next update:** {'none: resolved' if resolved else _next_update(data, at)}"]
    return "\n".join(lines) + "\n"


def _findings(data: Mapping[str, Any], incident_start: str | None, at: str) -> list[str]:
    out: list[str] = []
    counted = data.get("counts") or {}
    if incident_start:
        minutes = int((datetime.fromisoformat(at) - datetime.fromisoformat(incident_start)).total_seconds() // 60)
        out.append(f"Incident open since {hhmm(incident_start)} ({max(minutes, 0)} min)")
    if data.get("error"):
        return [*out, f"labcheck could not run: {data['error']}"]
    if not data.get("severity"):
        out.append(f"No check failed at {hhmm(data['finished_at'])}: {counted.get('passed', 0)} passed, "
                   f"{counted.get('unknown', 0)} could not check")
    else:
        out.append(f"{data['severity']} ({data.get('severity_definition') or ''}): "
                   f"{data.get('impact') or ', '.join(data.get('affected_components') or [])}")
        out += cause_findings(data)
        failing = failing_cause_first(data)
        for c in failing[:SHOWN_FINDINGS]:
            first = (c.get("message") or "").splitlines()[0] if c.get("message") else ""
            out.append(f"FAILED {c.get('severity') or ''} {c.get('component') or '?'}: {first} (`{c['nodeid']}`)")
        if len(failing) > SHOWN_FINDINGS:
            out.append(f"{len(failing) - SHOWN_FINDINGS} more failing check(s) in incident.md")
    if data.get("blind_spot_warning"):
        out.append(f"WARNING: {data['blind_spot_warning']}")
    return out


def failing_cause_first(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The failing checks in the ranking's order: the causes' checks, then the symptoms', then the rest."""
    by_id = {c["nodeid"]: c for c in data.get("checks") or []}
    ordered = [n for f in [*(data.get("causes") or []), *(data.get("symptoms") or [])] for n in f["checks"]]
    ordered += [n for n, c in by_id.items() if c["outcome"] == "failed" and n not in ordered]
    return [by_id[n] for n in dict.fromkeys(ordered) if n in by_id]


def cause_findings(data: Mapping[str, Any]) -> list[str]:
    """The probable cause, its caveat and the suspects, one sentence each (incident.md and the status update)."""
    out: list[str] = []
    pc = data.get("probable_cause")
    if pc:
        title = f" ({pc['title']})" if pc.get("title") else ""
        out.append(f"probable cause {pc['label']}{title}; {pc['why']}")
        if pc.get("caveat"):
            out.append(pc["caveat"])
    return out + [f"suspect {s['why']}" for s in data.get("suspects") or []]


def _actions(data: Mapping[str, Any], chosen: str) -> list[str]:
    out: list[str] = []
    gate = data.get("gate")
    if gate:
        since = f" at {hhmm(gate['since'])}" if gate.get("since") else ""
        out.append(f"Taken: mitigation applied{since}; `labcheck gate` verifying it "
                   f"(history window {gate.get('history_window') or '?'})")
    if chosen == "Resolved":
        return [*out, "If an incident is open: post the resolution (incident.md) and schedule the post-incident review"]
    steps = data.get("next_steps") or []
    for step in steps[:SHOWN_STEPS]:
        cmd = f": `{step['command']}`" if step.get("command") else ""
        met = f" (condition met: {step['because']})" if step.get("condition") == "true" and step.get("because") else ""
        out.append(f"Next: {step['step']}{cmd}{met}")
    if len(steps) > SHOWN_STEPS:
        out.append(f"{len(steps) - SHOWN_STEPS} more next step(s) in incident.md")
    if not steps and chosen == "Monitoring":
        out.append("Next: keep running `labcheck gate` until the history window is in and every check passes")
    elif not steps and data.get("error"):
        out.append("Next: fix labcheck's configuration and run again")
    elif not steps:
        out.append("Next: run the sev1 and sev2 checks (pytest -m \"sev1 or sev2\") and look into what they could "
                   "not check")
    return out


def _next_update(data: Mapping[str, Any], at: str) -> str:
    if data.get("next_update_at"):
        return hhmm(data["next_update_at"])
    return hhmm((datetime.fromisoformat(at) + timedelta(minutes=FIRST_UPDATE_MIN)).isoformat())


# --- the status page (customers) -------------------------------------------------------------


def status_page_markdown(data: Mapping[str, Any], *, phase_name: str | None = None, now: str | None = None) -> str:
    """The playbook's Customer Communication (Status Page) template, filled in, in customers' words.

    Only the impact matrix's ``customer`` words and the fixed sentences of this module appear: an
    affected component without customer words is "Some platform features", never its name.
    """
    chosen = phase_name or phase(data)[0]
    if chosen not in PHASES:
        raise ValueError(f"phase: one of {', '.join(PHASES)}, not {phase_name!r}")
    at = datetime.fromisoformat(now or data["finished_at"])
    lines = [f"**{PAGE_STATUS[chosen]}**", "", f"**Posted:** {at:%Y-%m-%d %H:%M} UTC", ""]
    services = customer_services(data)
    if chosen == "Resolved":
        return "\n".join([*lines, "All systems operational: every service is working normally.", ""])
    if services:
        lines.append(f"We are currently experiencing {_experience(data)} affecting {_join(services)}.")
    elif chosen == "Monitoring":
        lines.append("Our services are responding normally again.")
    else:
        lines.append("We are investigating a possible issue with our services. No impact is confirmed yet.")
    lines += ["", _PAGE_SENTENCE[chosen], "",
              f"We will provide updates every {_cadence(data)} minutes until resolved.", "", "**Affected Services:**"]
    if services:
        lines += [f"- {s}" for s in services]
    else:
        lines.append("- None confirmed" if chosen != "Monitoring" else "- None currently affected")
    lines += ["", "**Current Workarounds:**", "- None known at this time", ""]
    return "\n".join(lines)


def customer_services(data: Mapping[str, Any]) -> list[str]:
    """The affected services in customers' words, cause first, each once."""
    out: list[str] = []
    for d in data.get("impact_details") or []:
        words = d.get("customer") or UNNAMED_SERVICE
        if words not in out:
            out.append(words)
    if not out and data.get("severity"):
        out.append(UNNAMED_SERVICE)
    return out


def _experience(data: Mapping[str, Any]) -> str:
    """What customers experience: by the cause's scenario, then the symptoms', then the severity."""
    ids = [f.get("scenario") for f in [*(data.get("causes") or []), *(data.get("symptoms") or [])]]
    found = [_EXPERIENCE[i] for i in ids if i in _EXPERIENCE]
    if "an outage" in found:
        return "an outage"
    found = list(dict.fromkeys(found))
    if found:
        return _join(found)
    return _EXPERIENCE_BY_SEVERITY.get(str(data.get("severity")), "degraded performance")


def _cadence(data: Mapping[str, Any]) -> int:
    """Minutes between updates: the verdict's next update (15 for SEV-1, else 30), else 15."""
    if data.get("next_update_at"):
        span = datetime.fromisoformat(data["next_update_at"]) - datetime.fromisoformat(data["finished_at"])
        return max(int(span.total_seconds() // 60), 1)
    return FIRST_UPDATE_MIN


def _join(items: list[str]) -> str:
    """``a, b and c``, each starting in lower case (they go mid-sentence)."""
    lowered = [i[:1].lower() + i[1:] for i in items]
    if len(lowered) <= 1:
        return "".join(lowered)
    return ", ".join(lowered[:-1]) + " and " + lowered[-1]
