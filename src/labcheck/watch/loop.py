"""One environment's watcher: its rounds, its state, its messages and notifications."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labcheck.timefmt import iso_utc
from labcheck.watch import confirm, messages, rounds, screen
from labcheck.watch import state as st
from labcheck.watch.outbox import Outbox

REVIEW_FILE = "post-incident-review.md"
MESSAGES_DIR = "messages"
KEPT_NOTES = 5


class Watcher:
    """Runs the rounds of one environment and keeps its incident state."""

    def __init__(self, env: Any, options: Any, notifier: Any, *, warn: Callable[[str], None]) -> None:
        self.env = env
        self.options = options
        self.rule: confirm.Rule = options.rule
        self.notifier = notifier
        self.warn = warn
        self.path: Path = env.reports / st.STATE_FILE
        self.notes: list[str] = []
        self.state = st.load(self.path, target=env.target, rule=self.rule, warn=self._warn)
        self.events: st.Events | None = None
        self.fatal: tuple[int, str] | None = None
        self.rounds_run = 0
        self.ok_rounds = 0
        self.lock = threading.Lock()  # the state, between the rounds and the sender thread
        self.outbox = Outbox(notifier, lock=self.lock, saved=self._save, warn=self._warn)
        self._resend_pending()

    def _save(self) -> None:
        st.save(self.path, self.state, self.env.redact)

    def _warn(self, line: str) -> None:
        self.notes = [*self.notes, line][-KEPT_NOTES:]
        self.warn(line)

    # --- the loop ------------------------------------------------------------------------------

    def loop(self, stop: threading.Event, redraw: Callable[[], None]) -> None:
        """Rounds every interval (start to start), never overlapping, until stopped or done."""
        next_at = time.monotonic()
        while not stop.is_set():
            wait = next_at - time.monotonic()
            if wait > 0 and stop.wait(wait):
                break
            next_at = time.monotonic() + self.options.interval_s
            try:
                if not self.step(stop):
                    break
            except Exception as exc:  # never let one environment's surprise end the others silently
                self._warn(f"round failed inside the watcher: {type(exc).__name__}: {exc}")
            redraw()
            if self.fatal or (self.options.until_resolved and self.settled()):
                break

    def deadline_s(self) -> float:
        return float(self.options.deadline_s or self.env.timeout_s + 10.0)

    def step(self, stop: threading.Event) -> bool:
        """One round: run it, apply it, post what is due, save. False when stopped during the round."""
        inc = self.state.get("incident")
        start = inc["started_at"] if inc and inc["status"] == "open" else None
        reports = self.env.reports / rounds.ROUND_DIR
        cmd = rounds.command(self.options.pytest_args, reports=reports, deadline_s=self.deadline_s(),
                             profile=self.env.profile, incident_start=start)
        rnd = rounds.run(cmd, reports=reports, limit_s=self.deadline_s() + self.env.timeout_s + rounds.KILL_MARGIN_S,
                         stop=stop)
        if rnd is None:
            return False
        self.rounds_run += 1
        if rnd.triage is None and rnd.exit_code in rounds.FATAL and self.ok_rounds == 0:
            self.fatal = (rnd.exit_code, self.env.redact(rnd.error or f"pytest exited {rnd.exit_code}"))
            return False
        if rnd.triage is not None:
            self.ok_rounds += 1
        with self.lock:
            self.events = st.apply_round(self.state, rnd, self.rule)
            if rnd.triage is not None:
                self._messages(rnd)
            self._save()
        return True

    def settled(self) -> bool:
        """--until-resolved: no incident open, and no check failed in the last M rounds (nor flaps).

        A check that could not check does not hold the watcher: it is a blind spot, not an incident.
        """
        if self.incident_open() or self.ok_rounds < self.rule.m:
            return False
        return all(c.get("status") in (confirm.OK, confirm.RECOVERED)
                   and confirm.FAILED not in [o for _, o in c["outcomes"][-self.rule.m:]]
                   for c in self.state["checks"].values())

    def incident_open(self) -> bool:
        inc = self.state.get("incident")
        return bool(inc and inc["status"] == "open")

    def last_round(self) -> dict[str, Any] | None:
        return self.state["recent"][-1] if self.state["recent"] else None

    def close(self) -> None:
        """At exit: the review skeleton of an incident still open (a draft), and the state saved."""
        self.outbox.close()
        with self.lock:
            inc = self.state.get("incident")
            if inc and inc["status"] == "open":
                self._write(REVIEW_FILE, messages.review(inc, self.rule))
            if self.state["round"]:  # nothing to keep when no round ever ran (a first round that could not)
                self._save()

    # --- messages ------------------------------------------------------------------------------

    def _write(self, name: str, text: str) -> Path:
        path: Path = self.env.reports / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.env.redact(text), encoding="utf-8")
        tmp.replace(path)
        return path

    def _messages(self, rnd: st.Round) -> None:
        inc = self.state.get("incident")
        if not inc or rnd.triage is None:
            return
        now = st.observed_at(rnd)
        due = messages.due(inc, self.rule, now)
        if due is None:
            return
        kind, why = due
        if kind == "declaration":
            text = messages.declaration(inc, self.state, rnd.triage, self.rule, now)
        elif kind == "update":
            text = messages.update(inc, self.state, rnd.triage, self.rule, now, why)
        else:
            text = messages.resolution(inc, rnd.triage, self.rule)
            self._write(REVIEW_FILE, messages.review(inc, self.rule))
        name = f"{MESSAGES_DIR}/{inc['key']}-{len(inc['messages']) + 1:03d}-{kind}.md"
        self._write(name, text)
        record = {"kind": kind, "at": iso_utc(now), "round": self.state["round"], "reason": why, "file": name,
                  "deliveries": None}
        inc["messages"].append(record)
        inc["posted"] = messages.snapshot(inc, self.rule)
        self.outbox.post(record, inc["key"], self.env.redact(text), notify_data(inc, rnd.triage))

    def _resend_pending(self) -> None:
        """Messages a killed predecessor recorded but did not send (the notifier's record stops a repeat)."""
        inc = self.state.get("incident")
        if not inc:
            return
        for record in inc.get("messages") or []:
            if record.get("deliveries") is None:
                try:
                    text = (self.env.reports / record["file"]).read_text(encoding="utf-8")
                except OSError:
                    continue
                self.outbox.post(record, inc["key"], self.env.redact(text), notify_data(inc, None))

    def screen(self) -> list[str]:
        """This environment's screen, redacted (a check's message may quote what a target said)."""
        with self.lock:
            lines = screen.detail(self.env.name, self.state, self.events, now=time.time(),
                                  interval_s=self.options.interval_s, rule=self.rule, last_round=self.last_round(),
                                  notes=self.notes, state_path=str(self.path))
        return [self.env.redact(line) for line in lines]

    def line(self, now: float) -> str:
        """This environment's line of the fleet screen, redacted."""
        with self.lock:
            line = screen.fleet_line(self.env.name, self.state, self.last_round(), now)
        return str(self.env.redact(line))


def notify_data(inc: dict[str, Any], triage: dict[str, Any] | None) -> dict[str, Any]:
    """What the notifier reads (the verdict's shape), with the incident's confirmed severity and a summary."""
    base = dict(triage or {})
    if not base.get("probable_cause"):
        rc = st.root_cause(inc)
        base["probable_cause"] = {k: rc.get(k) for k in ("label", "scenario", "title", "why")} if rc else None
    return {**base, "severity": inc["severity"], "incident": {
        "key": inc["key"], "status": inc["status"], "started_at": inc["started_at"], "ended_at": inc.get("ended_at"),
        "duration_s": inc.get("duration_s"), "root_cause": (st.root_cause(inc) or {}).get("label")}}
