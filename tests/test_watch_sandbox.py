"""`labcheck watch` against the live sandbox: a fault declared, raised, lowered, the watcher killed and
restarted, healed and resolved; a flapping fault; a corrupt state; two environments at once.

Rounds select a few checks and run every 2-3 s; the sandbox's rate window is 10 s. Waits poll the
state file with deadlines.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from labcheck.watch.state import STATE_FILE, epoch
from receiver import Receiver

REPO = Path(__file__).resolve().parents[1]
INTERVAL = 2.0
# A round's timestamp is when its run started (triage.json's started_at, whole seconds); its check
# reads the ratio a moment later, after collection. So the incident's start and end are each known
# within one interval -- the time between two rounds, which on a loaded machine is the round's own
# length when that exceeds --interval -- give or take that moment and the rounding.
READ_MARGIN_S = 1.5
SEV2 = "check_error_ratio_below_sev2"
SEV1 = "check_api_is_not_failing_most_requests"
# The sev2 line (10% 5xx over the 10 s window) is crossed about as long after the fault as after the
# heal when the ratio sits near 20%: a share of 0.3 of the faulted routes gives about that overall (the
# health and readiness traffic is not faulted), so the incident lasts fault-to-heal.
SHARE = 0.3
ROUTING_KEY = "R0123456789abcdef0123456789ABCDE"
SELECT = ["-k", f"{SEV2} or {SEV1}"]


class Watch:
    """A `labcheck watch` subprocess, its output in a file, its state read back."""

    def __init__(self, reports: Path, *args: str) -> None:
        self.reports = reports
        self.log = reports.parent / f"{reports.name}-watch-{time.monotonic_ns()}.log"
        self.fh = self.log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "labcheck.cli", "watch", "--reports-dir", str(reports),
                                      *args], cwd=REPO, stdout=self.fh, stderr=subprocess.STDOUT)

    def state(self, name: str | None = None) -> dict[str, Any]:
        path = (self.reports / name if name else self.reports) / STATE_FILE
        try:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {"round": 0, "incident": None, "checks": {}}

    def output(self) -> str:
        return self.log.read_text()

    def wait(self, predicate: Callable[[dict[str, Any]], bool], what: str, deadline_s: float = 45) -> dict[str, Any]:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            s = self.state()
            if predicate(s):
                return s
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{what}: not within {deadline_s:g} s; watcher output:\n{self.output()[-3000:]}")

    def exit_code(self, deadline_s: float = 60) -> int:
        try:
            return self.proc.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"watcher still running; output:\n{self.output()[-3000:]}") from None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.fh.close()


@pytest.fixture
def watches() -> Iterator[list[Watch]]:
    started: list[Watch] = []
    yield started
    for w in started:
        w.kill()


def incident(s: dict[str, Any]) -> dict[str, Any]:
    return s.get("incident") or {}


def kinds(s: dict[str, Any]) -> list[str]:
    return [m["kind"] for m in incident(s).get("messages") or []]


def test_fault_declared_raised_lowered_survives_a_kill_and_resolves(healed: Any, tmp_path: Path,
                                                                    watches: list[Watch]) -> None:
    reports = tmp_path / "reports"
    # The broken receiver answers late: each message keeps it busy for two slow 500s and the back-off.
    pagerduty, broken = Receiver(statuses=[202]), Receiver(statuses=[500], delay=1.0)
    notify = ["--notify", f"pagerduty+{pagerduty.url}/v2/enqueue?routing_key={ROUTING_KEY}",
              "--notify", f"webhook+{broken.url}/hook"]
    try:
        inc = _fault_to_resolution(healed, reports, watches, notify, broken)
    finally:
        pagerduty.close()
        broken.close()
    events = pagerduty.bodies()
    assert {e["dedup_key"] for e in events} == {inc["key"]}
    assert [e["payload"]["custom_details"]["kind"] for e in events[:1]] == ["declaration"]
    assert sum(1 for e in events if e.get("payload", {}).get("custom_details", {}).get("kind") == "declaration") == 1
    assert events[-1]["event_action"] == "resolve" and events[0]["payload"]["severity"] == "error"  # SEV-2
    assert broken.requests, "the failing receiver was not even tried"


def _recorded(reports: Path, key: str, target: str, kind: str) -> bool:
    try:
        records = json.loads((reports / "notify-sent.json").read_text())["incidents"].get(key, {})
    except (OSError, ValueError, KeyError):
        return False
    return any(kind in r and str(r.get("target", "")).startswith(target) for r in records.values())


def _fault_to_resolution(healed: Any, reports: Path, watches: list[Watch], notify: list[str],
                         broken: Receiver) -> dict[str, Any]:
    w1 = Watch(reports, "--interval", f"{INTERVAL:g}s", *notify, *SELECT)
    watches.append(w1)
    w1.wait(lambda s: s["round"] >= 1, "a first, healthy round")
    fault_at = time.time()
    healed.fault("error-rate", share=SHARE)
    s = w1.wait(lambda s: incident(s).get("status") == "open" and "declaration" in kinds(s), "the declaration")
    inc = incident(s)
    first_failing = next(r for r in inc["rounds"] if r["failed"])
    assert inc["declared_round"] > first_failing["round"], "declared in the first failing round: no confirmation"
    assert inc["started_at"] == first_failing["at"] and inc["severity"] == "SEV-2"
    assert kinds(s) == ["declaration"]
    assert "INCIDENT DECLARED" in (reports / inc["messages"][0]["file"]).read_text()
    key, started = inc["key"], inc["started_at"]
    # Killed while the slow webhook still holds its first attempt, once PagerDuty's declaration is on record:
    # before, the record waited for the slowest receiver, and the restarted watcher declared again.
    w1.wait(lambda s: len(broken.requests) == 1 and _recorded(reports, key, "pagerduty+", "declaration"),
            "PagerDuty's declaration on record while the webhook is still being tried")

    w1.kill()  # mid-incident, without a chance to save anything more
    w2 = Watch(reports, "--interval", f"{INTERVAL:g}s", "--until-resolved", *notify, *SELECT)
    watches.append(w2)
    rounds_before = s["round"]
    w2.wait(lambda s: s["round"] > rounds_before, "a round of the second watcher")

    healed.fault("error-rate", share=1.0)
    s = w2.wait(lambda s: incident(s).get("severity") == "SEV-1", "SEV-1 confirmed")
    esc = incident(s)["escalations"]["SEV-1 not mitigated in 15 min"]  # evaluated from the state's start
    assert esc["holds"] is False and "after the incident started" in esc["because"], esc
    switched_at = time.time()
    healed.fault("error-rate", share=SHARE)
    w2.wait(lambda s: incident(s).get("severity") == "SEV-2", "back to SEV-2")
    # Heal once the 10 s window holds 20% again, so that the end is as sharp as the start was.
    w2.wait(lambda s: epoch(s["recent"][-1]["at"]) >= switched_at + 10.5, "a round 10 s after the switch back")
    heal_at = time.time()
    healed.heal()
    assert w2.exit_code() == 0, w2.output()[-3000:]

    s = w2.state()
    inc = incident(s)
    assert inc["status"] == "resolved" and inc["key"] == key and inc["started_at"] == started
    assert kinds(s).count("declaration") == 1 and kinds(s)[-1] == "resolution"
    updates = [m["reason"] for m in inc["messages"] if m["kind"] == "update"]
    assert any("severity SEV-2 -> SEV-1" in u for u in updates), updates
    assert any("severity SEV-1 -> SEV-2" in u for u in updates), updates
    assert [h["event"] for h in inc["severity_history"]] == ["declared", "raised", "lowered", "resolved"]
    lasted, expected = inc["duration_s"], heal_at - fault_at
    at = [epoch(r["at"]) for r in inc["rounds"]]
    ended = at.index(epoch(inc["ended_at"]))
    interval = max(INTERVAL, at[1] - at[0], at[ended] - at[ended - 1])  # as the rounds were actually spaced
    assert abs(lasted - expected) <= interval + READ_MARGIN_S, (lasted, expected, interval)
    resolution = (reports / inc["messages"][-1]["file"]).read_text()
    assert "INCIDENT RESOLVED" in resolution and "Root Cause:** high-error-rate" in resolution
    review = (reports / "post-incident-review.md").read_text()
    assert "## Timeline" in review and "Severity raised to SEV-1" in review
    # The receiver answering 500 is a failed delivery in the state, and changes nothing else.
    hooks = [d for m in inc["messages"] for d in m["deliveries"] if d["target"].startswith("webhook+")]
    assert hooks and not any(d["ok"] for d in hooks) and all("500" in d["detail"] for d in hooks), hooks
    assert all(d["ok"] for m in inc["messages"] for d in m["deliveries"] if d["target"].startswith("pagerduty+"))
    assert ROUTING_KEY not in json.dumps(s) and ROUTING_KEY not in w2.output()
    return inc


def test_flapping_fault_is_shown_as_flapping_never_declared(healed: Any, tmp_path: Path,
                                                           watches: list[Watch]) -> None:
    """/docs down, up, down, ... one round each (toggled right after each round): 2 of 3 never declares."""
    w = Watch(tmp_path / "reports", "--interval", "3s", "-m", "docs")
    watches.append(w)
    s = w.wait(lambda s: s["round"] >= 1, "a first round")
    for _ in range(6):
        if s["recent"][-1]["failed"]:
            healed.heal()
        else:
            healed.fault("docs-down")
        done = s["round"]
        s = w.wait(lambda s2, done=done: s2["round"] > done, "the next round")
    failed = [bool(r["failed"]) for r in s["recent"]]
    assert s["incident"] is None, failed
    assert any(c["status"] == "flapping" for c in s["checks"].values()), s["checks"]
    w.proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean end, the state kept
    assert w.exit_code(30) == 0
    assert "Flapping (not declared)" in w.output() and "interrupted; no incident open; state kept" in w.output()
    assert w.state()["round"] >= s["round"]


def test_corrupt_state_is_moved_aside_with_a_warning(healed: Any, tmp_path: Path, watches: list[Watch]) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / STATE_FILE).write_text('{"version": 1, "round": 3, "incident": {"started_at": ')
    w = Watch(reports, "--interval", "1s", "--until-resolved", "-m", "docs")
    watches.append(w)
    assert w.exit_code() == 0, w.output()
    aside = list(reports.glob(f"{STATE_FILE}.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text().startswith('{"version": 1, "round": 3')
    assert f"warning: {reports / STATE_FILE}: not JSON" in w.output() and "moved aside" in w.output()
    assert w.state()["round"] >= 2 and w.state()["incident"] is None


def test_two_environments_one_screen_one_state_each(sandbox: Any, tmp_path: Path, watches: list[Watch]) -> None:
    from labcheck import config

    profiles = []
    for name in ("east", "west"):
        path = tmp_path / f"{name}.toml"
        path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in sandbox.settings.items()
                                if k in config.KEYS and isinstance(v, str | int | float)))
        profiles += ["--profile", str(path)]
    w = Watch(tmp_path / "reports", *profiles, "--interval", "1s", "--until-resolved", "-m", "docs")
    watches.append(w)
    assert w.exit_code() == 0, w.output()
    assert w.state("east")["round"] >= 2 and w.state("west")["round"] >= 2
    screen = w.output()
    assert "labcheck watch: 2 environments" in screen
    assert any(line.startswith("east ") for line in screen.splitlines())
    assert any(line.startswith("west ") for line in screen.splitlines())
    assert sandbox.settings["database_url"].split(":")[2].split("@")[0] not in screen  # the password
