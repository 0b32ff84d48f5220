"""`labcheck watch` without the sandbox: confirmation, the incident state, its messages, bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from labcheck.verdict import empty_verdict
from labcheck.watch import confirm, messages, rounds
from labcheck.watch import state as st
from labcheck.watch.confirm import FAILED, PASSED, UNKNOWN, Rule
from labcheck.watch.loop import Watcher

REPO = Path(__file__).resolve().parents[1]
RULE = Rule()
T0 = 1_800_000_000.0
SEV2 = "checks/api_gateway.py::check_error_ratio_below_sev2"
SEV1 = "checks/api_gateway.py::check_api_is_not_failing_most_requests"


def outcomes(text: str) -> list[str]:
    return [{"F": FAILED, ".": PASSED, "?": UNKNOWN}[ch] for ch in text]


@pytest.mark.parametrize(("seq", "confirmed", "status"), [
    ("F", False, confirm.PENDING),
    ("FF", False, confirm.CONFIRMED),
    (".FF", False, confirm.CONFIRMED),
    ("F.F", False, confirm.FLAPPING),       # alternating: never confirmed with 2 of 3
    ("F.F.F.F", False, confirm.FLAPPING),
    ("F?F", False, confirm.CONFIRMED),      # could not check is neither a pass nor a failure
    ("FF.", True, confirm.RECOVERING),
    ("F..", True, confirm.RECOVERED),
    ("F.?.", True, confirm.RECOVERING),     # UNKNOWN breaks the passing run: not recovered
    ("F.F", True, confirm.FLAPPING),
    ("...", False, confirm.OK),
])
def test_judge(seq: str, confirmed: bool, status: str) -> None:
    assert confirm.judge(outcomes(seq), confirmed=confirmed, rule=RULE) == status


def test_rule_options_are_validated() -> None:
    assert confirm.parse_rule("3/5", 4) == Rule(3, 5, 4)
    for bad in ("3", "4/3", "0/3", "x/y"):
        with pytest.raises(ValueError, match="--confirm"):
            confirm.parse_rule(bad, 2)
    with pytest.raises(ValueError, match="--recover"):
        confirm.parse_rule("2/3", 0)


def triage(failed: dict[str, str], passed: tuple[str, ...] = (SEV1, SEV2)) -> dict[str, Any]:
    """A triage.json with these checks failing (nodeid -> severity) and the others passing."""
    checks = [{"nodeid": n, "outcome": FAILED, "severity": sev, "component": "api_gateway",
               "scenario": "high-error-rate", "message": f"{n} failed\nmore"} for n, sev in failed.items()]
    checks += [{"nodeid": n, "outcome": PASSED, "severity": "SEV-2", "component": "api_gateway"}
               for n in passed if n not in failed]
    worst = st.worst(list(failed.values()))
    cause = {"label": "high-error-rate (api_gateway)", "scenario": "high-error-rate", "title": "High Error Rate",
             "why": "the only failing finding"} if failed else None
    return {**empty_verdict(started_at=T0), "error": None, "severity": worst, "checks": checks,
            "probable_cause": cause, "counts": {"passed": 1, "failed": len(failed), "unknown": 0},
            "affected_components": ["api_gateway"] if failed else [],
            "impact": "API Gateway failing" if failed else None,
            "suspects": [{"namespace": "ns", "deployment": "api", "revision": 7, "age_s": 120, "image": "api:2",
                          "rollback": "kubectl rollout undo", "why": "rolled out 2 min before"}] if failed else []}


def play(script: list[dict[str, str]], state: st.State | None = None, *, every: float = 2.0) -> tuple[
        st.State, list[st.Events]]:
    state = state or st.new_state("t", RULE)
    done = len(state["recent"]) and state["round"]
    evs = [st.apply_round(state, st.Round(T0 + every * (done + i), 1.0, 1 if f else 0, triage(f)), RULE)
           for i, f in enumerate(script)]
    return state, evs


def test_declared_after_confirmation_dated_from_the_first_failing_round() -> None:
    s, evs = play([{}, {SEV2: "SEV-2"}, {SEV2: "SEV-2"}, {SEV2: "SEV-2"}, {}, {}])
    assert [e.declared for e in evs] == [False, False, True, False, False, False]
    assert evs[1].new == [SEV2]
    inc = s["incident"]
    assert st.epoch(inc["started_at"]) == T0 + 2  # round 2, not round 3 that confirmed it
    assert evs[5].resolved and inc["status"] == "resolved"
    assert st.epoch(inc["ended_at"]) == T0 + 8  # the first passing round
    assert inc["duration_s"] == 6.0
    assert inc["findings"][SEV2]["first_seen"] == inc["started_at"]
    assert st.epoch(inc["findings"][SEV2]["last_seen"]) == T0 + 6
    assert inc["rollouts"][0]["deployment"] == "api"
    assert st.root_cause(inc)["label"] == "high-error-rate (api_gateway)"  # type: ignore[index]


def test_flapping_is_never_declared_with_two_of_three() -> None:
    s, evs = play([{SEV2: "SEV-2"}, {}] * 4)
    assert s["incident"] is None and not any(e.declared for e in evs)
    assert s["checks"][SEV2]["status"] == confirm.FLAPPING
    assert evs[-1].flapping == [SEV2]


def test_severity_is_raised_only_once_confirmed() -> None:
    s, evs = play([{SEV2: "SEV-2"}, {SEV2: "SEV-2"}, {SEV2: "SEV-2", SEV1: "SEV-1"}, {SEV2: "SEV-2"},
                   {SEV2: "SEV-2", SEV1: "SEV-1"}, {SEV2: "SEV-2", SEV1: "SEV-1"}])
    assert s["incident"]["severity"] == "SEV-1"
    assert [e.severity_change for e in evs] == [None, None, None, None, None, ("SEV-2", "SEV-1")]
    assert [h["event"] for h in s["incident"]["severity_history"]] == ["declared", "raised"]


def test_escalation_is_evaluated_from_the_state() -> None:
    s, _ = play([{SEV1: "SEV-1"}] * 2)
    esc = s["incident"]["escalations"]["SEV-1 not mitigated in 15 min"]
    assert esc["holds"] is False
    s, evs = play([{SEV1: "SEV-1"}], s, every=16 * 60)
    assert s["incident"]["escalations"]["SEV-1 not mitigated in 15 min"]["holds"] is True
    assert evs[0].escalated == ["SEV-1 not mitigated in 15 min"]


def test_updates_at_each_change_and_at_the_cadence() -> None:
    s, _ = play([{SEV2: "SEV-2"}] * 2)
    inc = s["incident"]
    assert messages.due(inc, RULE, T0)[0] == "declaration"  # type: ignore[index]
    inc["messages"].append({"kind": "declaration", "at": inc["declared_at"], "reason": "", "file": "x"})
    inc["posted"] = messages.snapshot(inc, RULE)
    assert messages.due(inc, RULE, T0 + 60) is None
    kind, why = messages.due(inc, RULE, T0 + 31 * 60)  # type: ignore[misc]
    assert kind == "update" and "cadence (30 minutes at SEV-2)" in why
    play([{SEV2: "SEV-2", SEV1: "SEV-1"}] * 2, s)
    kind, why = messages.due(s["incident"], RULE, T0 + 60)  # type: ignore[misc]
    assert kind == "update" and "severity SEV-2 -> SEV-1" in why and f"+{SEV1}" in why


def test_corrupt_state_is_moved_aside_and_a_new_one_starts(tmp_path: Path) -> None:
    path = tmp_path / st.STATE_FILE
    warnings: list[str] = []
    for garbage in ("{not json", '{"version": 1, "round": "x"}', "[]"):
        path.write_text(garbage)
        fresh = st.load(path, target="t", rule=RULE, warn=warnings.append)
        assert fresh == st.new_state("t", RULE)
        assert not path.exists()
    assert len(warnings) == 3 and all("moved aside" in w for w in warnings)
    aside = sorted(tmp_path.glob(f"{st.STATE_FILE}.corrupt-*"))
    assert [a.read_text() for a in aside] == ["{not json", '{"version": 1, "round": "x"}', "[]"]


class FakeNotifier:
    targets = ["fake"]
    budget_s = 1.0

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, kind: str, *, key: str, text: str, data: dict[str, Any]) -> list[Any]:
        self.sent.append((kind, key))
        return [type("Delivery", (), {"target": "fake", "ok": True, "detail": "HTTP 202"})()]


def test_restart_continues_the_incident_without_a_second_declaration(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed watcher's successor reads the state: same key, same start, no second declaration."""
    script = iter([{SEV2: "SEV-2"}, {SEV2: "SEV-2"}, {SEV2: "SEV-2"}, {}, {}])
    clock = iter(T0 + 2 * i for i in range(10))

    def fake_run(cmd: list[str], **kw: Any) -> st.Round:
        failed = next(script)
        return st.Round(next(clock), 1.0, 1 if failed else 0, triage(failed))

    monkeypatch.setattr(rounds, "run", fake_run)
    env = type("Env", (), {"name": "default", "profile": None, "reports": tmp_path, "target": "t",
                           "timeout_s": 5.0, "redact": staticmethod(lambda s: s), "settings": None})()
    options = type("Options", (), {"interval_s": 2.0, "until_resolved": True, "rule": RULE, "pytest_args": [],
                                   "deadline_s": None})()
    first, second = FakeNotifier(), FakeNotifier()
    w1 = Watcher(env, options, first, warn=print)
    stop = threading.Event()
    w1.step(stop)
    w1.step(stop)
    w1.outbox.close()  # sent, in the background
    assert [k for k, _ in first.sent] == ["declaration"]
    assert json.loads((tmp_path / st.STATE_FILE).read_text())["incident"]["messages"][0]["deliveries"] == [
        {"target": "fake", "ok": True, "detail": "HTTP 202", "skipped": False}]
    w2 = Watcher(env, options, second, warn=print)  # the first one was killed: nothing but the file remains
    for _ in range(3):
        w2.step(stop)
    w2.close()
    inc = w2.state["incident"]
    assert [m["kind"] for m in inc["messages"]] == ["declaration", "resolution"]
    assert [k for k, _ in second.sent] == ["resolution"]
    assert {key for _, key in first.sent + second.sent} == {inc["key"]}
    assert st.epoch(inc["started_at"]) == T0 and inc["duration_s"] == 6.0
    review = (tmp_path / "post-incident-review.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in review if re.match(r"\| \d+ \| \d", line)] == [
        "| 1", "| 2", "| 3", "| 4", "| 5"]  # the rounds table: each round once, across the restart
    assert any("Rollout: api revision 7" in line for line in review)
    assert "Duration:** 20" in (tmp_path / inc["messages"][-1]["file"]).read_text()
    assert json.loads((tmp_path / st.STATE_FILE).read_text())["incident"]["status"] == "resolved"


def test_a_message_recorded_but_not_sent_is_sent_by_the_next_watcher(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rounds, "run", lambda cmd, **kw: st.Round(T0, 1.0, 1, triage({SEV2: "SEV-2"})))
    env = type("Env", (), {"name": "default", "profile": None, "reports": tmp_path, "target": "t",
                           "timeout_s": 5.0, "redact": staticmethod(lambda s: s), "settings": None})()
    options = type("Options", (), {"interval_s": 2.0, "until_resolved": False, "rule": RULE, "pytest_args": [],
                                   "deadline_s": None})()
    silent = FakeNotifier()
    silent.targets = []  # nowhere to post yet: killed before sending, as far as the state knows
    w1 = Watcher(env, options, silent, warn=print)
    w1.step(threading.Event())
    w1.step(threading.Event())
    state = json.loads((tmp_path / st.STATE_FILE).read_text())
    state["incident"]["messages"][0]["deliveries"] = None
    (tmp_path / st.STATE_FILE).write_text(json.dumps(state))
    second = FakeNotifier()
    w2 = Watcher(env, options, second, warn=print)
    w2.close()
    assert [k for k, _ in second.sent] == ["declaration"]
    assert w2.state["incident"]["messages"][0]["deliveries"][0]["ok"] is True


def watch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labcheck.cli", "watch", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize(("args", "message"), [
    (["--interval", "0.5s"], "--interval: 0.5s is under 1 s"),
    (["--interval", "soon"], "--interval: not a duration"),
    (["--notify", "ftp://hooks.example/x"], "unknown notify scheme 'ftp'"),
    (["--notify", "not a url"], "not a URL"),
    (["--confirm", "4/3"], "--confirm"),
    (["--profile", "/nonexistent/a.toml"], "file not found"),
    (["--bogus-pytest-option"], "unrecognized arguments: --bogus-pytest-option"),  # pytest's, in the first round
])
def test_bad_input_exits_4_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    proc = watch("--reports-dir", str(tmp_path), *args)
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / st.STATE_FILE).exists()


def test_a_round_is_killed_at_its_bound_and_recorded_as_an_error(tmp_path: Path) -> None:
    hung = [sys.executable, "-c", "import time; time.sleep(60)"]
    started = time.monotonic()
    rnd = rounds.run(hung, reports=tmp_path, limit_s=1.0, stop=threading.Event())
    assert rnd is not None and rnd.triage is None and "killed after 1 s" in (rnd.error or "")
    assert time.monotonic() - started < 4.0  # the bound, plus the SIGTERM grace


def test_a_stopped_round_is_discarded_at_once(tmp_path: Path) -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    assert rounds.run([sys.executable, "-c", "import time; time.sleep(60)"], reports=tmp_path, limit_s=60,
                      stop=stop) is None
    assert time.monotonic() - started < 4.0


def test_each_round_carries_the_deadline_and_the_incident_start(tmp_path: Path) -> None:
    cmd = rounds.command(["-k", "error_ratio"], reports=tmp_path, deadline_s=15, profile="a.toml",
                         incident_start="2030-01-01T00:00:00+00:00")
    assert cmd[1:3] == ["-m", "pytest"] and cmd[-2:] == ["-k", "error_ratio"]
    assert {"--triage-deadline=15", "--profile=a.toml", "--set=incident_start=2030-01-01T00:00:00+00:00",
            f"--reports-dir={tmp_path}"} <= set(cmd)
