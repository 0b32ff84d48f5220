"""The watcher's screen, redrawn after every round: one environment in detail, or a line per environment.

On a terminal the screen is cleared and redrawn; elsewhere (a log, a test) each round's screen is
printed after a separator line, so the output is a plain record of the rounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from labcheck.timefmt import clock, hms
from labcheck.watch import confirm
from labcheck.watch.state import epoch

CLEAR = "\x1b[H\x1b[2J"
SHOWN = 8


def _first(text: Any, width: int = 110) -> str:
    line = (str(text or "").strip().splitlines() or [""])[0]
    return line if len(line) <= width else line[: width - 3] + "..."


def headline(state: Mapping[str, Any], now: float) -> str:
    """The severity now and the incident's age, in one line."""
    inc = state.get("incident")
    if inc and inc["status"] == "open":
        return (f"INCIDENT {inc['severity']} open {hms(now - epoch(inc['started_at']))} "
                f"(since {clock(epoch(inc['started_at']))} UTC)")
    pending = [n for n, c in state["checks"].items() if c.get("status") in (confirm.PENDING, confirm.FLAPPING)]
    if pending:
        return f"no incident; {len(pending)} check(s) failing or flapping, not confirmed"
    if inc:
        return f"no incident (last: {inc.get('severity_history', [{}])[0].get('severity')} resolved " \
               f"{clock(epoch(inc['resolved_at']))} UTC, lasted {hms(inc.get('duration_s') or 0)})"
    return "no incident"


def cause_line(state: Mapping[str, Any]) -> str | None:
    inc = state.get("incident")
    spans = (inc or {}).get("causes") or []
    if not inc or inc["status"] != "open" or not spans or not spans[-1]["label"]:
        return None
    s = spans[-1]
    title = f": {s['title']}" if s.get("title") else ""
    return f"Probable cause: {s['label']}{title} (for {s['rounds']} round(s))"


def detail(name: str, state: Mapping[str, Any], events: Any, *, now: float, interval_s: float, rule: Any,
           last_round: Mapping[str, Any] | None, notes: Sequence[str], state_path: str) -> list[str]:
    """The one-environment screen."""
    rnd = last_round or {}
    took = f"{rnd.get('duration_s', 0):.1f} s" if rnd else "-"
    lines = [f"labcheck watch: {name} | round {state['round']} at {clock(now)} UTC ({took}) | every "
             f"{interval_s:g} s | {rule.text()}", "", headline(state, now)]
    if rnd.get("status") == "error":
        lines.append(f"ROUND ERROR: {_first(rnd.get('error'))}")
    cause = cause_line(state)
    if cause:
        lines.append(cause)
    checks = state["checks"]
    if events is not None:
        for label, names in (("New since last round", events.new), ("Recovered since last round", events.cleared)):
            if names:
                lines.append(f"{label}:")
                lines += [f"  {checks.get(n, {}).get('severity') or ''} {n}" for n in names[:SHOWN]]
    groups = {"Confirmed failing": [n for n, c in checks.items() if c.get("confirmed")],
              "Failing, not confirmed": [n for n, c in checks.items() if c.get("status") == confirm.PENDING],
              "Flapping (not declared)": [n for n, c in checks.items() if c.get("status") == confirm.FLAPPING]}
    for label, names in groups.items():
        if not names:
            continue
        lines.append(f"{label}:")
        for n in names[:SHOWN]:
            c = checks[n]
            seq = "".join({"failed": "F", "passed": ".", "unknown": "?"}[o] for _, o in c["outcomes"])
            lines.append(f"  {c.get('severity') or ''} {n} [{seq}] {c.get('status')}: {_first(c.get('message'), 80)}")
        if len(names) > SHOWN:
            lines.append(f"  ... {len(names) - SHOWN} more")
    inc = state.get("incident")
    if inc and inc["status"] == "open":
        for condition, e in (inc.get("escalations") or {}).items():
            if e.get("holds"):
                lines.append(f"ESCALATE: {condition} ({e['because']})")
    if inc and inc.get("messages"):
        m = inc["messages"][-1]
        if m.get("deliveries") is None:
            sent = "being sent"
        else:
            sent = ", ".join(f"{d['target']} {'ok' if d['ok'] else 'FAILED: ' + _first(d['detail'], 60)}"
                             for d in m["deliveries"]) or "no --notify target"
        lines.append(f"Last message: {m['kind']} at {clock(epoch(m['at']))} UTC -> {m['file']} ({sent})")
    lines += [f"Note: {n}" for n in notes]
    lines.append(f"State: {state_path}. Ctrl-C stops (the state is kept).")
    return lines


def fleet_line(name: str, state: Mapping[str, Any], last_round: Mapping[str, Any] | None, now: float) -> str:
    """One environment in the fleet screen."""
    rnd = last_round or {}
    err = f" | ROUND ERROR: {_first(rnd.get('error'), 60)}" if rnd.get("status") == "error" else ""
    flapping = sum(1 for c in state["checks"].values() if c.get("status") == confirm.FLAPPING)
    cause = cause_line(state)
    return (f"{name:<16} round {state['round']:>4}  {headline(state, now)}"
            + (f" | {cause}" if cause else "") + (f" | {flapping} flapping" if flapping else "") + err)
