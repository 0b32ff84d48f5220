"""The incident state (``incident-state.json``): each round applied to it, saved after every round.

The file is the watcher's memory, so a new watcher continues the same incident::

    {"version": 1, "target": ..., "round": 17, "rule": {"k": 2, "n": 3, "m": 2},
     "recent": [round, ...],                 the last rounds, compact (to date a confirmed failure);
                                             a round's "at" is when its checks started (observed_at)
     "checks": {nodeid: {"severity", "component", "scenario", "message", "status", "confirmed",
                         "outcomes": [[round, "failed"|"passed"|"unknown"], ...]}},
     "incident": {"key", "status": "open"|"resolved", "started_at", "declared_at", "ended_at",
                  "resolved_at", "duration_s", "severity", "severity_history": [...],
                  "findings": {nodeid: {"first_seen", "last_seen", "confirmed_at", "recovered_at", ...}},
                  "causes": [{"label", "scenario", "title", "from", "to", "rounds"}],
                  "escalations": {condition: {"holds", "because", "since"}},
                  "rollouts": [...], "messages": [...], "posted": {...}, "rounds": [round, ...]} | null,
     "previous": [{"key", "started_at", "ended_at", "severity", "root_cause"}, ...]}

Times are ISO-8601 UTC. A file that cannot be read as such a state is moved aside
(``incident-state.json.corrupt-<time>``) with a warning and a new state starts: never a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labcheck.timefmt import iso_utc, parse_timestamp
from labcheck.watch import confirm
from labcheck.watch.confirm import FAILED, PASSED, UNKNOWN, Rule

STATE_FILE = "incident-state.json"
VERSION = 1
KEEP_PREVIOUS = 10
SEV_ORDER = ("SEV-1", "SEV-2", "SEV-3", "SEV-4")
# The escalation rows the watcher itself evaluates from the state (labcheck.verdict.escalation's wording).
WATCHED_ESCALATIONS = ("SEV-1 not mitigated in 15 min", "SEV-1 not resolved in 1 hour")

State = dict[str, Any]


def new_state(target: str, rule: Rule) -> State:
    return {"version": VERSION, "target": target, "round": 0, "rule": {"k": rule.k, "n": rule.n, "m": rule.m},
            "recent": [], "checks": {}, "incident": None, "previous": []}


def _valid(data: Any) -> bool:
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return False
    types = {"round": int, "recent": list, "checks": dict, "previous": list}
    if not all(isinstance(data.get(k), t) for k, t in types.items()):
        return False
    if not all(isinstance(c, dict) and isinstance(c.get("outcomes"), list) for c in data["checks"].values()):
        return False
    inc = data.get("incident")
    return inc is None or (isinstance(inc, dict) and isinstance(inc.get("findings"), dict)
                           and isinstance(inc.get("rounds"), list) and isinstance(inc.get("started_at"), str))


def load(path: Path, *, target: str, rule: Rule, warn: Callable[[str], None]) -> State:
    """The saved state, or a new one; an unreadable file is moved aside with a warning."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return new_state(target, rule)
    except OSError as exc:
        warn(f"{path}: cannot be read ({exc.strerror}); starting a new state in memory")
        return new_state(target, rule)
    try:
        data = json.loads(text)
        ok = _valid(data)
    except ValueError as exc:
        why = f"not JSON ({exc})"
        ok = False
    else:
        why = "not an incident state of this labcheck"
    if ok:
        data["rule"] = {"k": rule.k, "n": rule.n, "m": rule.m}
        if data.get("target") != target:
            warn(f"{path}: it was written for {data.get('target')!r}, now watching {target!r}; continuing it")
            data["target"] = target
        return data  # type: ignore[no-any-return]
    now = time.time()
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}"
                           f".{int(now % 1 * 1e6):06d}")
    try:
        os.replace(path, aside)
        where = f"moved aside to {aside}"
    except OSError as exc:
        where = f"could not be moved aside ({exc.strerror})"
    warn(f"{path}: {why}; {where}; a new incident state starts")
    return new_state(target, rule)


def save(path: Path, state: State, redact: Callable[[str], str]) -> None:
    """Write the state atomically (a killed watcher leaves the previous round's state), redacted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(redact(json.dumps(state, indent=1, default=str)) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def epoch(iso: str) -> float:
    return parse_timestamp(iso)


def sev_rank(sev: str | None) -> int:
    return SEV_ORDER.index(sev) if sev in SEV_ORDER else len(SEV_ORDER)


def worst(sevs: list[str | None]) -> str | None:
    known = [s for s in sevs if s in SEV_ORDER]
    return min(known, key=sev_rank) if known else None


# --- one round ---------------------------------------------------------------------------------


@dataclass
class Round:
    """One run of the checks: when, how long, and what its triage.json said (None: it did not work)."""

    started_at: float
    duration_s: float
    exit_code: int
    triage: dict[str, Any] | None
    error: str | None = None


@dataclass
class Events:
    """What changed in one round."""

    round: int
    new: list[str] = field(default_factory=list)          # failed now, not in the previous round
    cleared: list[str] = field(default_factory=list)      # passed now, failed in the previous round
    confirmed: list[str] = field(default_factory=list)    # became part of the incident
    recovered: list[str] = field(default_factory=list)    # left it after M passing rounds
    flapping: list[str] = field(default_factory=list)
    declared: bool = False
    resolved: bool = False
    severity_change: tuple[str | None, str | None] | None = None
    cause_change: tuple[str | None, str | None] | None = None
    escalated: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether the incident changed in a way a status update reports."""
        return bool(self.confirmed or self.recovered or self.severity_change or self.cause_change or self.escalated)


def observed_at(rnd: Round) -> float:
    """When the round looked: its run's start as triage.json has it (after the interpreter started,
    which on a loaded machine takes seconds), else when its process was started."""
    try:
        seen = parse_timestamp((rnd.triage or {}).get("started_at"))
    except ValueError:
        return rnd.started_at
    return seen if rnd.started_at - 1 <= seen <= rnd.started_at + rnd.duration_s + 1 else rnd.started_at


def _summary(index: int, rnd: Round) -> dict[str, Any]:
    tri = rnd.triage or {}
    checks = tri.get("checks") or []
    pc = tri.get("probable_cause") or {}
    return {"round": index, "at": iso_utc(observed_at(rnd)), "duration_s": round(rnd.duration_s, 3),
            "exit_code": rnd.exit_code, "status": "error" if rnd.triage is None else "ok",
            "error": rnd.error, "severity": tri.get("severity"),
            "failed": [c["nodeid"] for c in checks if c.get("outcome") == FAILED],
            "passed": sum(1 for c in checks if c.get("outcome") == PASSED),
            "unknown": sum(1 for c in checks if c.get("outcome") not in (FAILED, PASSED)),
            "cause": pc.get("label")}


def _first_line(text: Any) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0] if lines else ""


def apply_round(state: State, rnd: Round, rule: Rule) -> Events:
    """Record one round: each check's outcome, its confirmation, and the incident's lifecycle."""
    state["round"] = index = int(state["round"]) + 1
    summary = _summary(index, rnd)
    state["recent"] = [*state["recent"], summary][-(rule.keep + 1):]
    times = {r["round"]: r["at"] for r in state["recent"]}
    ev = Events(round=index)
    seen = {c["nodeid"]: c for c in (rnd.triage or {}).get("checks") or []}
    for nodeid in sorted(set(seen) | set(state["checks"])):
        c = seen.get(nodeid)
        entry = state["checks"].setdefault(nodeid, {"outcomes": [], "confirmed": False, "status": confirm.OK})
        outcome = c.get("outcome") if c else UNKNOWN
        outcome = outcome if outcome in (FAILED, PASSED) else UNKNOWN
        if c:
            entry.update(severity=c.get("severity"), component=c.get("component"), scenario=c.get("scenario"))
            if outcome == FAILED:
                entry["message"] = _first_line(c.get("message"))
        before = entry["outcomes"][-1][1] if entry["outcomes"] else None
        entry["outcomes"] = [*entry["outcomes"], [index, outcome]][-rule.keep:]
        if outcome == FAILED and before != FAILED:
            ev.new.append(nodeid)
        if outcome == PASSED and before == FAILED:
            ev.cleared.append(nodeid)
        status = confirm.judge([o for _, o in entry["outcomes"]], confirmed=entry["confirmed"], rule=rule)
        if status == confirm.CONFIRMED:
            entry["confirmed"] = True
            entry["first_seen"] = next(times.get(r, summary["at"]) for r, o in entry["outcomes"] if o == FAILED)
            ev.confirmed.append(nodeid)
            status = confirm.FAILING
        elif status == confirm.RECOVERED:
            entry["confirmed"] = False
            streak = [r for r, _ in entry["outcomes"][-rule.m:]]
            entry["passing_since"] = times.get(streak[0], summary["at"])
            ev.recovered.append(nodeid)
        if status == confirm.FLAPPING:
            ev.flapping.append(nodeid)
        entry["status"] = status
        if not c and rnd.triage is not None and status == confirm.OK and not entry["confirmed"]:
            del state["checks"][nodeid]  # no longer selected, nothing pending: forget it
    _incident(state, rnd, summary, ev)
    return ev


def incident_key(target: str, started_at: str) -> str:
    """The incident's dedup key: stable across restarts (it is stored), unique per target and start."""
    digest = hashlib.sha256(f"{target}|{started_at}".encode()).hexdigest()[:12]
    return f"labcheck-{digest}"


def _incident(state: State, rnd: Round, summary: dict[str, Any], ev: Events) -> None:
    checks = state["checks"]
    confirmed = {n: c for n, c in checks.items() if c["confirmed"]}
    inc = state.get("incident")
    at = summary["at"]
    if confirmed and (inc is None or inc["status"] != "open"):
        if inc is not None:
            state["previous"] = [*state["previous"], _brief(inc)][-KEEP_PREVIOUS:]
        start = min(c["first_seen"] for c in confirmed.values())
        sev = worst([c.get("severity") for c in confirmed.values()])
        inc = state["incident"] = {
            "key": incident_key(state.get("target") or "", start), "status": "open",
            "started_at": start, "declared_at": at, "declared_round": ev.round, "ended_at": None,
            "resolved_at": None, "duration_s": None, "severity": sev,
            "severity_history": [{"at": at, "round": ev.round, "severity": sev, "event": "declared"}],
            "findings": {}, "causes": [], "escalations": {}, "rollouts": [], "messages": [], "posted": {},
            "rounds": [r for r in state["recent"] if epoch(r["at"]) >= epoch(start)]}
        ev.declared = True
    elif inc is not None and inc["status"] == "open":
        inc["rounds"].append(summary)
    if inc is None or inc["status"] != "open":
        return
    _findings(inc, checks, at, ev)
    _cause(inc, rnd, at, ev)
    _rollouts(inc, rnd)
    tri = rnd.triage or {}
    if tri.get("impact") and tri.get("severity") == inc["severity"]:
        inc["impact"] = tri["impact"]
    sev = worst([c.get("severity") for c in confirmed.values()])
    if not confirmed:
        ends = [checks[n].get("passing_since") or at for n in ev.recovered if n in checks]
        ended = max(ends) if ends else at
        inc.update(status="resolved", ended_at=ended, resolved_at=at, resolved_round=ev.round,
                   duration_s=round(epoch(ended) - epoch(inc["started_at"]), 3))
        inc["severity_history"].append({"at": at, "round": ev.round, "severity": None, "event": "resolved"})
        ev.resolved = True
    elif sev != inc["severity"] and not ev.declared:
        event = "raised" if sev_rank(sev) < sev_rank(inc["severity"]) else "lowered"
        ev.severity_change = (inc["severity"], sev)
        inc["severity_history"].append({"at": at, "round": ev.round, "severity": sev, "event": event})
        inc["severity"] = sev
    _escalations(inc, at, ev)


def _findings(inc: dict[str, Any], checks: Mapping[str, Any], at: str, ev: Events) -> None:
    findings = inc["findings"]
    for nodeid, c in checks.items():
        if not c["confirmed"] and nodeid not in findings and nodeid not in ev.recovered:
            continue
        f = findings.setdefault(nodeid, {"first_seen": c.get("first_seen") or at, "last_seen": None,
                                         "confirmed_at": at, "recovered_at": None})
        f.update(severity=c.get("severity"), component=c.get("component"), scenario=c.get("scenario"),
                 message=c.get("message"), status=c["status"])
        if c["outcomes"] and c["outcomes"][-1][1] == FAILED:
            f["last_seen"] = at
        if nodeid in ev.confirmed and f.get("recovered_at"):  # back again after recovering
            f.update(confirmed_at=at, recovered_at=None)
        if nodeid in ev.recovered:
            f["recovered_at"] = at


def _cause(inc: dict[str, Any], rnd: Round, at: str, ev: Events) -> None:
    pc = (rnd.triage or {}).get("probable_cause") or {}
    label = pc.get("label")
    spans = inc["causes"]
    if ev.declared:  # the rounds before the declaration, from the incident's start, by their cause's label
        for r in inc["rounds"][:-1]:
            if spans and spans[-1]["label"] == r.get("cause"):
                spans[-1].update(to=r["at"], rounds=spans[-1]["rounds"] + 1)
            else:
                spans.append({"label": r.get("cause"), "scenario": None, "title": None, "why": None,
                              "from": r["at"], "to": r["at"], "rounds": 1})
    if spans and spans[-1]["label"] == label:
        spans[-1].update(to=at, rounds=spans[-1]["rounds"] + 1)
        if label:
            spans[-1].update(scenario=pc.get("scenario"), title=pc.get("title"), why=pc.get("why"))
    else:
        before = next((s["label"] for s in reversed(spans) if s["label"]), None)
        spans.append({"label": label, "scenario": pc.get("scenario"), "title": pc.get("title"),
                      "why": pc.get("why"), "from": at, "to": at, "rounds": 1})
        if label and label != before and not ev.declared:
            ev.cause_change = (before, label)


def _rollouts(inc: dict[str, Any], rnd: Round) -> None:
    """Rollouts the verdict suspects, dated (the round's time less their age), each once."""
    for s in (rnd.triage or {}).get("suspects") or []:
        try:
            when = observed_at(rnd) - float(s.get("age_s"))
        except (TypeError, ValueError):
            continue
        key = f"{s.get('namespace')}/{s.get('deployment')}@{s.get('revision')}"
        if all(r["key"] != key for r in inc["rollouts"]):
            inc["rollouts"].append({"key": key, "at": iso_utc(when), "deployment": s.get("deployment"),
                                    "revision": s.get("revision"), "image": s.get("image"),
                                    "rollback": s.get("rollback"), "why": s.get("why")})


def _escalations(inc: dict[str, Any], at: str, ev: Events) -> None:
    """The escalation matrix's SEV-1 rows, evaluated from the incident's start and its confirmed severity."""
    from labcheck.verdict.escalation import RULES, Situation

    situation = Situation(sev=inc["severity"], causes=[], symptoms=[], facts={}, sources={},
                          finished_at=epoch(at), incident_start=epoch(inc["started_at"]))
    for condition in WATCHED_ESCALATIONS:
        holds, because = RULES[condition](situation)
        if inc["status"] != "open":
            holds = False
        entry = inc["escalations"].setdefault(condition, {"holds": False, "because": because, "since": None})
        if holds and not entry["holds"]:
            entry["since"] = at
            ev.escalated.append(condition)
        entry.update(holds=bool(holds), because=because)


def root_cause(inc: Mapping[str, Any]) -> dict[str, Any] | None:
    """The probable cause held longest over the incident (time from each span to the next)."""
    spans = inc.get("causes") or []
    end = inc.get("resolved_at") or (spans[-1]["to"] if spans else None)
    held: dict[str, float] = {}
    first: dict[str, dict[str, Any]] = {}
    for i, s in enumerate(spans):
        stop = spans[i + 1]["from"] if i + 1 < len(spans) else end
        if not s["label"] or stop is None:
            continue
        held[s["label"]] = held.get(s["label"], 0.0) + max(epoch(stop) - epoch(s["from"]), 0.0) + 1e-3 * s["rounds"]
        first.setdefault(s["label"], s)
    if not held:
        return None
    label = max(held, key=lambda name: held[name])
    return {**first[label], "held_s": round(held[label], 3)}


def _brief(inc: Mapping[str, Any]) -> dict[str, Any]:
    rc = root_cause(inc)
    return {"key": inc["key"], "started_at": inc["started_at"], "ended_at": inc.get("ended_at"),
            "severity": worst([h["severity"] for h in inc["severity_history"]]),
            "root_cause": rc["label"] if rc else None}
