"""`labcheck gate`: options, the round logic, the soak schedule, the reports, and the live sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from labcheck.cli import build_parser, main
from labcheck.gate import (
    Gate,
    GateOptions,
    GateUsageError,
    Round,
    classify,
    options_from,
    resolution_markdown,
)

REPO = Path(__file__).resolve().parents[1]
HISTORY_ERR = "checks/history.py::check_error_ratio_history_below_sev2"
HISTORY_P95 = "checks/history.py::check_p95_latency_history_below_threshold"


def parse(*argv: str) -> GateOptions:
    return options_from(build_parser().parse_args(["gate", *argv]))


# --- options ---------------------------------------------------------------------------------


def test_unknown_arguments_go_to_pytest_in_order() -> None:
    o = parse("--since", "2026-01-15T10:30:00Z", "--profile", "prod.toml", "-x", "--soak", "15m",
              "checks/api_gateway.py", "--set", "timeout=3", "--", "--window", "x")
    assert o.since == 1768473000.0
    assert o.soak_s == 900 and o.interval_s == 30 and o.window == "15m"
    assert o.pytest_args == ["--profile", "prod.toml", "-x", "checks/api_gateway.py", "--set", "timeout=3",
                             "--window", "x"]


def test_since_accepts_epoch_and_iso_without_zone_as_utc() -> None:
    assert parse("--since", "1768473000").since == 1768473000.0
    assert parse("--since", "2026-01-15T10:30:00").since == 1768473000.0
    assert parse("--since", "2026-01-15T12:30:00+02:00").since == 1768473000.0


@pytest.mark.parametrize("argv, message", [
    (["--since", "yesterday"], "--since: not an ISO-8601 time or epoch seconds"),
    (["--since", str(int(time.time()) + 3600)], "is in the future"),
    (["--soak", "soon"], "--soak: not a duration"),
    (["--interval", "0s"], "--interval: not a duration"),
    (["--window", "15 minutes"], "--window: not a duration"),
])
def test_bad_options_are_one_line_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(GateUsageError, match=message):
        parse(*argv)


def test_bad_option_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gate", "--soak", "soon"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and err.startswith("labcheck: error: --soak")


def test_fail_fast_and_fail_at_end_are_exclusive() -> None:
    assert parse("--fail-at-end").fail_fast is False
    assert parse().fail_fast is True
    assert main(["gate", "--fail-fast", "--fail-at-end"]) == 2


def test_command_selects_sev1_sev2_and_switches_history_on(tmp_path: Path) -> None:
    gate = Gate(parse("--since", "1768473000", "--window", "10m", "--reports-dir", str(tmp_path), "-x"))
    cmd = gate.command(tmp_path / "r")
    assert cmd[:3] == [sys.executable, "-m", "pytest"]
    assert cmd[cmd.index("-m", 3) + 1] == "sev1 or sev2"
    assert "--fail-on-unknown=sev1" in cmd and f"--reports-dir={tmp_path / 'r'}" in cmd
    assert "--set=history_window=10m" in cmd and "--set=history_since=1768473000.000" in cmd
    assert cmd[-1] == "-x"
    # The user's own -m wins; --no-history leaves history off.
    cmd = Gate(parse("--no-history", "-m", "sev1")).command(tmp_path)
    assert cmd.count("-m") == 2 and cmd[cmd.index("-m", 3) + 1] == "sev1" and not any("history_window" in a for a in cmd)


# --- the decision for one round --------------------------------------------------------------


def triage(*checks: tuple[str, str, str], severity: str | None = None) -> dict[str, Any]:
    out = [{"nodeid": n, "outcome": o, "severity": s, "message": f"{n} says {o}", "observed": []}
           for n, o, s in checks]
    counts = {k: sum(1 for c in out if c["outcome"] == k) for k in ("passed", "failed", "unknown", "skipped")}
    return {"severity": severity, "counts": counts, "checks": out, "blind_spots": [], "target": "sandbox",
            "started_at": "2026-01-15T10:30:00+00:00", "finished_at": "2026-01-15T10:30:09+00:00"}


def decide(exit_code: int, data: dict[str, Any] | None, *, final: bool = True, mode: str = "sev1") -> Round:
    rnd = Round(index=1, started_at=0.0, offset_s=0.0, exit_code=exit_code)
    classify(rnd, data, final=final, fail_on_unknown=mode)
    return rnd


def test_round_status() -> None:
    ok = ("checks/api_gateway.py::check_health_answers_within_budget", "passed", "SEV-1")
    assert decide(0, triage(ok)).status == "green"
    red = decide(1, triage(ok, ("checks/a.py::check_x", "failed", "SEV-2"), severity="SEV-2"))
    assert red.status == "red" and red.failed[0]["nodeid"] == "checks/a.py::check_x"
    assert decide(6, triage(ok, ("checks/a.py::check_db", "unknown", "SEV-1"))).status == "blind"
    # A sev2 blind spot does not fail the gate by default; it does with --fail-on-unknown any.
    sev2_unknown = triage(ok, ("checks/a.py::check_s3", "unknown", "SEV-2"))
    assert decide(0, sev2_unknown).status == "green"
    assert decide(6, sev2_unknown, mode="any").status == "blind"
    assert decide(4, {"error": "profile x.toml: file not found", "checks": []}).status == "error"
    assert decide(5, None).reasons == ["pytest exited 5: no triage.json was written"]


def test_history_without_enough_evidence_fails_only_the_final_round() -> None:
    data = triage(("checks/api_gateway.py::check_health_answers_within_budget", "passed", "SEV-1"),
                  (HISTORY_ERR, "unknown", "SEV-2"), (HISTORY_P95, "passed", "SEV-2"))
    assert decide(0, data, final=False).status == "green"  # pending: the soak is still gathering evidence
    final = decide(0, data, final=True)
    assert final.status == "blind" and final.blind[0]["nodeid"] == HISTORY_ERR
    assert decide(0, data, final=True, mode="none").status == "green"


# --- the soak schedule, with a fake pytest and a fake clock ----------------------------------


class FakeRun:
    """Stands in for pytest: writes the triage each round should see, keeps time on a fake clock."""

    def __init__(self, outcomes: list[str], round_s: float = 3.0) -> None:
        self.outcomes = outcomes
        self.round_s = round_s
        self.now = 1000.0
        self.started: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def __call__(self, cmd: list[str], output: Path | None) -> int:
        reports = Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("--reports-dir=")))
        self.started.append(self.now - 1000.0)
        outcome = self.outcomes[min(len(self.started), len(self.outcomes)) - 1]
        checks = [("checks/api_gateway.py::check_error_ratio_below_sev2",
                   "failed" if outcome == "red" else "passed", "SEV-2"),
                  (HISTORY_ERR, "unknown" if outcome == "pending" else "passed", "SEV-2")]
        reports.mkdir(parents=True, exist_ok=True)
        (reports / "triage.json").write_text(json.dumps(triage(*checks, severity="SEV-2" if outcome == "red" else None)))
        (reports / "incident.md").write_text(f"round {len(self.started)}\n")
        self.now += self.round_s
        return 1 if outcome == "red" else 0


def soak(tmp_path: Path, fake: FakeRun, *argv: str) -> tuple[int, dict[str, Any], list[str]]:
    lines: list[str] = []
    options = parse("--soak", "40s", "--interval", "10s", "--reports-dir", str(tmp_path), *argv)
    gate = Gate(options, runner=fake, clock=fake.clock, sleep=fake.sleep, out=lines.append)
    code = gate.run()
    return code, json.loads((tmp_path / "gate.json").read_text()), lines


def test_soak_runs_a_round_every_interval_up_to_its_end(tmp_path: Path) -> None:
    fake = FakeRun(["green"])
    code, doc, lines = soak(tmp_path, fake)
    assert code == 0 and doc["gate"] == "passed"
    assert fake.started == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert [r["status"] for r in doc["rounds"]] == ["green"] * 5
    assert "round 3 GREEN" in lines[3] and "elapsed 0:23, remaining 0:17" in lines[3]
    assert "failures so far: 0 round(s)" in lines[3]
    assert (tmp_path / "incident.md").read_text().startswith("**INCIDENT RESOLVED**")
    assert sorted(p.name for p in (tmp_path / "rounds").iterdir()) == ["001", "002", "003", "004", "005"]


def test_soak_fail_fast_stops_at_the_first_red_round(tmp_path: Path) -> None:
    fake = FakeRun(["green", "green", "red", "green"])
    code, doc, lines = soak(tmp_path, fake)
    assert code == 1 and doc["gate"] == "failed" and len(doc["rounds"]) == 3
    assert doc["triage_round"] == 3 and doc["checks"][
        "checks/api_gateway.py::check_error_ratio_below_sev2"]["first_failed_round"] == 3
    assert "round 3 RED" in lines[3] and "failures so far: 1 round(s), checks/api_gateway.py" in lines[3]
    # The combined triage is the failing round's, and incident.md stays the declaration.
    assert (tmp_path / "incident.md").read_text() == "round 3\n"


def test_soak_fail_at_end_runs_every_round(tmp_path: Path) -> None:
    fake = FakeRun(["green", "red", "green"])
    code, doc, _ = soak(tmp_path, fake, "--fail-at-end")
    assert code == 1 and len(doc["rounds"]) == 5
    assert [r["status"] for r in doc["rounds"]] == ["green", "red", "green", "green", "green"]


def test_soak_history_counts_in_the_last_round_only(tmp_path: Path) -> None:
    code, doc, lines = soak(tmp_path / "a", FakeRun(["pending", "pending", "green"]))
    assert code == 0, doc["reasons"]
    assert "GREEN (history pending)" in lines[1]
    code, doc, _ = soak(tmp_path / "b", FakeRun(["pending"]))
    assert code == 6 and doc["gate"] == "blind" and doc["rounds"][-1]["status"] == "blind"


def test_slow_rounds_start_back_to_back(tmp_path: Path) -> None:
    fake = FakeRun(["green"], round_s=15.0)
    soak(tmp_path, fake)
    assert fake.started == [0.0, 15.0, 30.0]


# --- the resolution document -----------------------------------------------------------------


def test_resolution_fills_the_playbook_template() -> None:
    data = triage(("checks/api_gateway.py::check_error_ratio_below_sev2", "passed", "SEV-2"))
    data["checks"][0]["observed"] = [{"target": "API 5xx ratio over 10s", "observed": "0.0%", "threshold": "<= 10%"}]
    gate = {"since": "2026-01-15T10:30:00Z", "history_window": "15m", "soak": None, "rounds": [{}]}
    text = resolution_markdown(gate, data, since=1768473000.0, finished=1768473000.0 + 3 * 3600 + 25 * 60)
    assert text.startswith("**INCIDENT RESOLVED**\n\n**Duration:** 2026-01-15 10:30 UTC - 2026-01-15 13:55 UTC "
                           "(3 hours 25 minutes)\n")
    for placeholder in ("**Impact:** [Description of what was affected]", "**Root Cause:** [Brief explanation]",
                        "**Resolution:** [What fixed it]", "- [ ] Post-incident review scheduled for [date]",
                        "- [ ] [Other action items]", "Thank you for your patience during this incident."):
        assert placeholder in text
    assert ("- PASSED SEV-2 checks/api_gateway.py::check_error_ratio_below_sev2: API 5xx ratio over 10s: 0.0% "
            "(threshold <= 10%)") in text
    assert "in every minute since the mitigation at 2026-01-15T10:30:00Z" in text
    assert "**Duration:** [Start time] - " in resolution_markdown(gate, data, since=None, finished=1768473000.0)


# --- against the sandbox ---------------------------------------------------------------------


def gate_run(tmp: Path, *argv: str, timeout: float = 240) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    reports = tmp / f"gate-{time.monotonic_ns()}"
    proc = subprocess.run([sys.executable, "-m", "labcheck.cli", "gate", "--reports-dir", str(reports), *argv],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    doc = json.loads((reports / "gate.json").read_text()) if (reports / "gate.json").exists() else {}
    doc["_reports"] = str(reports)
    return proc, doc


def triage_of(doc: dict[str, Any]) -> dict[str, Any]:
    return json.loads((Path(doc["_reports"]) / "triage.json").read_text())


def entry_of(doc: dict[str, Any], nodeid: str) -> dict[str, Any]:
    return next(c for c in triage_of(doc)["checks"] if c["nodeid"] == nodeid)


def prom(sandbox: Any, expr: str) -> float | None:
    import httpx

    answer = httpx.get(f"{sandbox.settings['prometheus_url']}/api/v1/query", params={"query": expr}, timeout=5).json()
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def poll(predicate: Any, what: str, deadline_s: float = 60.0, every: float = 0.5) -> Any:
    end = time.monotonic() + deadline_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not reached within {deadline_s:g} s")
        time.sleep(every)


RATIO = ('(sum(rate(http_requests_total{status=~"5.."}[10s])) or vector(0)) '
         "/ sum(rate(http_requests_total[10s]))")


def test_healthy_sandbox_gate_passes_and_writes_the_resolution(healed: Any, tmp_path: Path) -> None:
    # One minute of history: the sandbox may have been up (or faulted by another test) only
    # moments ago, so run the gate until a clean minute exists, within a deadline.
    end = time.monotonic() + 150
    while True:
        proc, doc = gate_run(tmp_path, "--window", "1m")
        if doc.get("gate") == "passed" or time.monotonic() > end:
            break
        history = [h for r in doc.get("rounds", []) for h in r["history"]]
        if not any("not yet" in h["message"] or h["outcome"] == "failed" for h in history):
            break  # failing for another reason: no use retrying
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert doc["gate"] == "passed" and doc["rounds"][0]["status"] == "green"
    incident = (Path(doc["_reports"]) / "incident.md").read_text()
    assert incident.startswith("**INCIDENT RESOLVED**")
    assert "- PASSED SEV-2 checks/api_gateway.py::check_error_ratio_below_sev2: API 5xx ratio over 10s" in incident
    assert f"- PASSED SEV-2 {HISTORY_ERR}: API 5xx ratio per minute" in incident
    assert "gate: PASSED" in proc.stdout
    # The round knew it was verifying a fix: its status documents say resolved, for the channel and customers.
    assert triage_of(doc)["gate"]["history_window"] == "1m"
    assert "**Status:** Resolved\n" in (Path(doc["_reports"]) / "status-update.md").read_text()
    assert (Path(doc["_reports"]) / "status-page.md").read_text().startswith("**RESOLVED**")


def test_gate_fails_under_error_rate(healed: Any, tmp_path: Path) -> None:
    healed.fault("error-rate", share=0.4)
    poll(lambda: (prom(healed, RATIO) or 0) > 0.2, "5xx ratio above 20% in Prometheus")
    proc, doc = gate_run(tmp_path, "--window", "1m")
    assert proc.returncode == 1, proc.stdout[-4000:]
    assert doc["gate"] == "failed"
    assert entry_of(doc, "checks/api_gateway.py::check_error_ratio_below_sev2")["outcome"] == "failed"
    assert "INCIDENT DECLARED" in (Path(doc["_reports"]) / "incident.md").read_text()
    # After a fix the checks still fail: Mitigating, which customers read as IDENTIFIED.
    assert triage_of(doc)["status_update"]["phase"] == "Mitigating"
    assert "**Status:** Mitigating\n" in (Path(doc["_reports"]) / "status-update.md").read_text()
    assert (Path(doc["_reports"]) / "status-page.md").read_text().startswith("**IDENTIFIED**")


def errors_then_heal(sandbox: Any, *, share: float, above: float) -> None:
    """Inject that share of 5xx, heal once the history query has seen it, wait for 0 again."""
    sandbox.fault("error-rate", share=share)
    # Heal once a point the history query itself samples (10 s subquery steps, aligned to the
    # clock) is above the mark: an instant reading between two steps was seen above 20% while
    # every step in its minute stayed at 18%.
    poll(lambda: (prom(sandbox, f"max_over_time(({RATIO})[30s:10s])") or 0) > above,
         f"5xx ratio above {above:.0%} at a 10 s step in Prometheus")
    sandbox.heal()
    poll(lambda: prom(sandbox, RATIO) == 0.0, "5xx ratio back to 0 after heal", deadline_s=30)


def test_after_heal_history_still_fails_naming_the_worst_minute(healed: Any, tmp_path: Path) -> None:
    errors_then_heal(healed, share=0.4, above=0.25)
    proc, doc = gate_run(tmp_path, "--window", "2m")
    assert proc.returncode == 1, proc.stdout[-4000:]
    assert entry_of(doc, "checks/api_gateway.py::check_error_ratio_below_sev2")["outcome"] == "passed"
    history = entry_of(doc, HISTORY_ERR)
    assert history["outcome"] == "failed"
    observed = history["observed"][0]
    assert observed["target"] == "API 5xx ratio per minute (rate window 10s) over the last 2 minutes"
    assert observed["observed"].startswith("worst minute 20") and " UTC: " in observed["observed"]
    worst = float(observed["observed"].split(" UTC: ")[1].split("%")[0])
    assert worst > 20.0
    assert "threshold <= 5% in every minute" in history["message"]


def test_history_at_seven_percent_fails_the_gate(healed: Any, tmp_path: Path) -> None:
    # The playbook's high-error-rate scenario starts above 5%: a minute at 7% 5xx is that scenario
    # (though under SEV-2's 10%), so the gate must not call the platform resolved after it.
    errors_then_heal(healed, share=0.07, above=0.05)
    proc, doc = gate_run(tmp_path, "--window", "2m", "-k", "history or health_answers")
    assert proc.returncode == 1, proc.stdout[-4000:]
    history = entry_of(doc, HISTORY_ERR)
    assert history["outcome"] == "failed"
    assert "threshold <= 5% in every minute" in history["message"]
    worst = float(history["observed"][0]["observed"].split(" UTC: ")[1].split("%")[0])
    assert worst > 5.0
    # The limit is a key: raised to 50% by hand, the same minutes pass.
    proc, doc = gate_run(tmp_path, "--window", "2m", "-k", "history or health_answers",
                         "--set", "history_error_ratio=0.5")
    assert entry_of(doc, HISTORY_ERR)["outcome"] == "passed", proc.stdout[-3000:]


def test_short_since_is_not_yet_enough_evidence(healed: Any, tmp_path: Path) -> None:
    since = time.time() - 20
    proc, doc = gate_run(tmp_path, "--since", f"{since:.0f}", "-k", "history or health_answers")
    assert proc.returncode == 6, proc.stdout[-3000:]
    assert doc["gate"] == "blind"
    message = entry_of(doc, HISTORY_ERR)["message"]
    assert "not yet 15 minutes of evidence" in message and "since the mitigation at" in message
    assert any("not yet 15 minutes of evidence" in r for r in doc["reasons"])
    # Clean since the fix, but not yet 15 minutes of it: Monitoring, naming the mitigation time.
    update = (Path(doc["_reports"]) / "status-update.md").read_text()
    assert "**Status:** Monitoring\n" in update and f"(applied at {time.strftime('%H:%M', time.gmtime(round(since)))} UTC)" in update
    assert (Path(doc["_reports"]) / "status-page.md").read_text().startswith("**MONITORING**")
    # --fail-on-unknown none lets it pass: then the document is the resolution.
    proc, doc = gate_run(tmp_path, "--since", f"{since:.0f}", "--fail-on-unknown", "none",
                         "-k", "history or health_answers")
    assert proc.returncode == 0 and doc["gate"] == "passed"
    assert "Not verified (blind spots)" in (Path(doc["_reports"]) / "incident.md").read_text()


def test_soak_fails_in_the_round_after_the_fault(healed: Any, tmp_path: Path) -> None:
    reports = tmp_path / "soak"
    cmd = [sys.executable, "-m", "labcheck.cli", "gate", "--reports-dir", str(reports), "--soak", "40s",
           "--interval", "10s", "--no-history", "-k", "error_ratio_below_sev2 or health_answers"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    injected_after: list[int] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("gate: round 2 ") and not injected_after:
                healed.fault("error-rate", share=0.4)  # between rounds 2 and 3
                injected_after.append(2)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    output = "\n".join(lines)
    assert injected_after == [2], output
    doc = json.loads((reports / "gate.json").read_text())
    statuses = [r["status"] for r in doc["rounds"]]
    assert code == 1, output
    assert statuses == ["green", "green", "red"], output  # fail-fast: stops in the round after the fault
    assert doc["rounds"][2]["failed"][0]["nodeid"] == "checks/api_gateway.py::check_error_ratio_below_sev2"
    assert "gate: round 3 RED" in output and "remaining" in output and "failures so far: 1 round(s)" in output
    assert json.loads((reports / "triage.json").read_text())["severity"] == "SEV-2"
    assert any((reports / "allure-results").glob("*-result.json"))


# --- the history arithmetic, without Prometheus ----------------------------------------------


class FakeLab:
    def __init__(self) -> None:
        from labcheck import config as cfg

        self.settings = cfg.load(cli={"window": ("10s", "test")}, use_sandbox=False)


def history(since: float | None, have: list[int] | None = None, window: str = "15m") -> Any:
    from labcheck.components.history import History, HistorySignals, Minute

    signals = HistorySignals(FakeLab(), window=window, since=since, now=1_768_473_000.0)  # type: ignore[arg-type]
    ends = signals.ends()
    keep = range(len(ends)) if have is None else have
    minutes = tuple(Minute(end=ends[i], value=0.01 * (i + 1), where="/x") for i in keep)
    return History(what="API 5xx ratio", expr="q", wanted_s=signals.wanted_s, evidence_start=signals.evidence_start(),
                   now=signals.now, since=since, rate_window="10s", ends=ends, minutes=minutes)


def test_history_minutes_end_now_and_start_a_rate_window_after_since() -> None:
    from labcheck.errors import NoData

    now = 1_768_473_000.0
    full = history(None)
    assert len(full.ends) == 15 and full.ends[-1] == now and full.ends[0] == now - 14 * 60
    full.require_complete()
    assert full.worst().value == pytest.approx(0.15) and [m.value for m in full.over(0.13)] == pytest.approx([0.14, 0.15])
    assert full.worst().label == "2026-01-15 10:29:00-10:30:00 UTC"
    short = history(now - 100)  # (100 s - the 10 s rate window) holds one whole minute
    assert len(short.ends) == 1
    with pytest.raises(NoData, match=r"not yet 15 minutes of evidence: only 1 minute since the mitigation at "
                                     r"2026-01-15 10:28:20 UTC \(evidence starts one rate window, 10s, after it\); "
                                     r"complete at 2026-01-15 10:44:00 UTC"):
        short.require_complete()
    with pytest.raises(NoData, match="not yet 15 minutes of evidence: only 0 minutes since"):
        history(now - 5).require_complete()


def test_history_with_missing_minutes_is_unknown() -> None:
    from labcheck.errors import NoData

    with pytest.raises(NoData, match="not yet 15 minutes of evidence: Prometheus has API 5xx ratio data for the "
                                     "last 3 minutes only"):
        history(None, have=[12, 13, 14]).require_complete()
    with pytest.raises(NoData, match=r"no API 5xx ratio data for 1 of 15 minutes \(minutes ending 10:21:00 UTC\)"):
        history(None, have=[i for i in range(15) if i != 5]).require_complete()
    # Since long ago, Prometheus restarted since: enough unbroken minutes, but not every minute.
    with pytest.raises(NoData, match="no API 5xx ratio data for 2 of 20 minutes"):
        history(1_768_473_000.0 - 20 * 60 - 10, have=list(range(2, 20))).require_complete()


def test_sigterm_during_a_soak_still_writes_gate_json(tmp_path: Path) -> None:
    import signal

    reports = tmp_path / "r"
    cmd = [sys.executable, "-m", "labcheck.cli", "gate", "--reports-dir", str(reports), "--soak", "5m",
           "--interval", "60s", "--fail-at-end", "--no-history", "--no-sandbox", "--api-url=http://127.0.0.1:9",
           "-k", "health_answers"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.startswith("gate: round 1 "):
                assert "RED" in line
                proc.send_signal(signal.SIGTERM)
                break
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130
    doc = json.loads((reports / "gate.json").read_text())
    assert doc["gate"] == "interrupted" and len(doc["rounds"]) == 1 and doc["rounds"][0]["status"] == "red"
