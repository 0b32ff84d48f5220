"""The plugin through pytester: markers, the collection rule, UNKNOWN results and triage.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = str(REPO / "scenarios")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--no-sandbox", f"--scenarios-dir={SCENARIOS}",
        f"--reports-dir={pytester.path / 'reports'}", *args,
    )


def triage(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "reports" / "triage.json").read_text())


def test_markers_are_documented() -> None:
    out = subprocess.run([sys.executable, "-m", "pytest", "--markers"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    for name in ("sev1", "sev2", "sev3", "sev4", "api_gateway", "database", "auth", "experiments",
                 "storage", "metrics", "kubernetes", "docs", "scenario(id)", "writes"):
        assert f"@pytest.mark.{name}:" in out, name


def test_collect_only_needs_no_network_and_no_heavy_imports() -> None:
    code = (
        "import sys, pytest\n"
        "rc = pytest.main(['-q', '--collect-only', '-m', 'sev1', 'checks', '-p', 'no:cacheprovider'])\n"
        "heavy = [m for m in ('kubernetes', 'boto3', 'botocore', 'psycopg') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
        "sys.exit(rc)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "LABCHECK_API_URL": "http://192.0.2.1:1", "HOME": "/nonexistent",
           "http_proxy": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "HEAVY []" in proc.stdout
    assert "check_health_answers_within_budget" in proc.stdout


def test_garbage_collector_is_frozen_only_at_exit() -> None:
    # The final full collection cost a run 0.2-0.5 s after its reports were written. A handler
    # registered before pytest runs is called after the plugin's (atexit is last in, first out).
    code = (
        "import atexit, gc, sys, pytest\n"
        "atexit.register(lambda: print('AT EXIT FROZEN', gc.get_freeze_count() > 0))\n"
        "pytest.main(['-q', '--collect-only', 'checks', '-p', 'no:cacheprovider'])\n"
        "print('AFTER MAIN FROZEN', gc.get_freeze_count() > 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "AFTER MAIN FROZEN False" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "AT EXIT FROZEN True" in proc.stdout, proc.stdout[-2000:]


def test_check_without_markers_is_a_collection_error_naming_it(pytester: pytest.Pytester) -> None:
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_bare.py").write_text(
        "import pytest\n"
        "@pytest.mark.sev2\n"
        "def check_without_component():\n    pass\n"
    )
    result = run(pytester, "checks")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*check checks/test_bare.py::check_without_component: needs exactly one "
                                 "component marker*"])


def test_two_severities_and_unknown_scenario_are_refused(pytester: pytest.Pytester) -> None:
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_bad.py").write_text(
        "import pytest\n"
        "@pytest.mark.sev1\n@pytest.mark.sev2\n@pytest.mark.auth\n@pytest.mark.scenario('no-such')\n"
        "def check_bad():\n    pass\n"
    )
    result = run(pytester, "checks")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*needs exactly one severity marker*has ?'sev1', 'sev2'?;*"
                                 "scenario('no-such') is not in the catalogue*"])


CHECKS = """
import pytest
from labcheck.errors import ProbeTimeout

@pytest.mark.sev1
@pytest.mark.api_gateway
def check_ok(expect):
    expect(True, target="GET http://api/health", observed="HTTP 200", threshold="HTTP 200")

@pytest.mark.sev2
@pytest.mark.api_gateway
@pytest.mark.scenario("high-error-rate")
def check_errors(expect):
    expect(False, target="API 5xx ratio", observed="20.0%", threshold="<= 10%")

@pytest.mark.sev3
@pytest.mark.database
def check_cannot_see():
    raise ProbeTimeout("timed out after 5 s waiting for a response", target="http://prometheus")

@pytest.mark.sev1
@pytest.mark.database
def check_broken_probe():
    {}["missing"]
"""

# A probe's own assert (UNKNOWN), and an observed condition picking the scenario.
MORE_CHECKS = """
import pytest

def _probe():
    assert False, "a probe's own sanity assert"

@pytest.mark.sev2
@pytest.mark.database
def check_probe_asserts(expect):
    _probe()
    expect(True, target="x", observed="y", threshold="z")

@pytest.mark.sev1
@pytest.mark.database
@pytest.mark.scenario("db-connection-exhaustion")
def check_refused(expect):
    expect(False, target="connect to db", observed="refused", threshold="a session",
           condition="db_refusing_connections")
"""


def test_failed_unknown_and_passed_are_told_apart(pytester: pytest.Pytester) -> None:
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_mix.py").write_text(CHECKS + MORE_CHECKS)
    result = run(pytester, "checks", "-rA")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*2 failed, 1 passed, 3 unknown*",
    ])
    result.stdout.fnmatch_lines(["*labcheck triage*", "INCIDENT SEVERITY: SEV-1*"])
    data = triage(pytester)
    assert data["severity"] == "SEV-1"
    outcomes = {c["nodeid"].split("::")[1]: c["outcome"] for c in data["checks"]}
    # Only expect fails a check: an AssertionError inside a probe is UNKNOWN.
    assert outcomes == {"check_ok": "passed", "check_errors": "failed", "check_cannot_see": "unknown",
                        "check_broken_probe": "unknown", "check_probe_asserts": "unknown",
                        "check_refused": "failed"}
    asserts = next(c for c in data["checks"] if c["nodeid"].endswith("check_probe_asserts"))
    assert "AssertionError: a probe's own sanity assert" in asserts["message"]
    # The observed condition, not the marker, picks the scenario.
    refused = next(c for c in data["checks"] if c["nodeid"].endswith("check_refused"))
    assert refused["condition"] == "db_refusing_connections" and refused["scenario"] == "database-unreachable"
    assert "condition db_refusing_connections; scenario database-unreachable" in refused["message"]
    assert data["probable_cause"]["scenario"] == "database-unreachable"
    errors = next(c for c in data["checks"] if c["nodeid"].endswith("check_errors"))
    assert errors["component"] == "api_gateway" and errors["severity"] == "SEV-2"
    assert errors["scenario"] == "high-error-rate"
    assert "observed 20.0%; threshold <= 10%; scenario high-error-rate" in errors["message"]
    assert [s["id"] for s in data["scenarios"]] == ["database-unreachable", "high-error-rate"]
    assert data["scenarios"][0]["mitigation"], "mitigation steps listed"
    blind = {b["nodeid"].split("::")[1]: b["reason"] for b in data["blind_spots"]}
    assert blind["check_cannot_see"] == "http://prometheus: timed out after 5 s waiting for a response"
    assert "KeyError" in blind["check_broken_probe"]
    assert data["sev1_blind"] is True
    for key in ("target", "started_at", "duration_s"):
        assert key in data


HELPER = """
def fetch():
    raise TimeoutError("the probe timed out")  # HELPER-SOURCE
"""

THROUGH_HELPER = """
import pytest
from helper_deep import fetch


@pytest.mark.sev3
@pytest.mark.metrics
def check_through_a_helper():
    fetch()  # CHECK-SOURCE
"""


def test_unknown_keeps_only_the_checks_own_traceback_entry(pytester: pytest.Pytester) -> None:
    # Formatting every frame of a probe's traceback cost an outage run up to 0.3 s per UNKNOWN.
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "helper_deep.py").write_text(HELPER)
    pytester.path.joinpath("checks", "through.py").write_text(THROUGH_HELPER)
    result = run(pytester, "checks")
    result.stdout.fnmatch_lines(["*1 unknown*"])
    [broken] = [json.loads(p.read_text()) for p in (pytester.path / "reports" / "allure-results").glob("*-result.json")]
    assert broken["status"] == "broken"
    trace = broken["statusDetails"]["trace"]
    assert "CHECK-SOURCE" in trace and "HELPER-SOURCE" not in trace, trace


def test_nothing_failed_gives_null_severity_and_exit_zero(pytester: pytest.Pytester) -> None:
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_ok.py").write_text(CHECKS.split("@pytest.mark.sev2")[0])
    result = run(pytester, "checks")
    assert result.ret == 0
    assert triage(pytester)["severity"] is None


def test_blind_spots_can_fail_a_gate(pytester: pytest.Pytester) -> None:
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_blind.py").write_text(
        "import pytest\nfrom labcheck.errors import NoData\n"
        "@pytest.mark.sev1\n@pytest.mark.database\n"
        "def check_blind():\n    raise NoData('no data', target='x')\n"
    )
    assert run(pytester, "checks").ret == 0
    assert run(pytester, "checks", "--fail-on-unknown", "sev1").ret == 6


def test_triage_is_written_once_by_the_controller_under_xdist(pytester: pytest.Pytester) -> None:
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_mix.py").write_text(CHECKS)
    result = run(pytester, "checks", "-n", "2")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    data = triage(pytester)
    assert data["severity"] == "SEV-2"
    assert len(data["checks"]) == 4
    assert {c["outcome"] for c in data["checks"]} == {"passed", "failed", "unknown"}


def test_secrets_in_assertion_messages_are_redacted(pytester: pytest.Pytester,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_secret.py").write_text(
        "import os, pytest\n"
        "@pytest.mark.sev1\n@pytest.mark.auth\n"
        "def check_leaky(expect):\n"
        "    dsn, tok, jwt = os.environ['PLANT_DSN'], os.environ['PLANT_TOKEN'], os.environ['PLANT_JWT']\n"
        "    expect.record('exchange', {'dsn': dsn, 'headers': {'Authorization': 'Bearer ' + jwt}})\n"
        "    expect(False, target=dsn, observed='token=' + tok, threshold='Authorization: Bearer ' + jwt)\n"
    )
    monkeypatch.setenv("PLANT_DSN", "postgresql://u:hunter2secret@db/x")
    monkeypatch.setenv("PLANT_TOKEN", "abcdef123456")
    monkeypatch.setenv("LABCHECK_TEST_TOKEN", "abcdef123456")  # a configured secret the redactor knows
    monkeypatch.setenv("PLANT_JWT", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl")
    result = run(pytester, "checks", "-l")
    out = result.stdout.str() + result.stderr.str()
    everything = out + "".join(p.read_text(errors="replace") for p in (pytester.path / "reports").rglob("*")
                               if p.is_file())
    for secret in ("hunter2secret", "abcdef123456", "eyJhbGciOiJIUzI1NiJ9"):
        assert secret not in everything


SLOW = """
import time, pytest

@pytest.mark.sev2
@pytest.mark.docs
def check_first(expect):
    expect(True, target="t", observed="ok", threshold="ok")

@pytest.mark.sev1
@pytest.mark.database
def check_slow():
    {marker}
    time.sleep(30)

@pytest.mark.sev1
@pytest.mark.auth
def check_after(expect):
    expect(True, target="t", observed="ok", threshold="ok")
"""


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupted_run_still_writes_triage(pytester: pytest.Pytester, signame: str) -> None:
    import signal
    import time

    pytester.mkdir("checks")
    marker = pytester.path / "started"
    pytester.path.joinpath("checks", "test_slow.py").write_text(
        SLOW.replace("{marker}", f"open({str(marker)!r}, 'w').close()"))
    proc = pytester.popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--no-sandbox",
                           f"--scenarios-dir={SCENARIOS}", f"--reports-dir={pytester.path / 'reports'}", "checks"],
                          stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the slow check never started"
        time.sleep(0.05)
    proc.send_signal(getattr(signal, signame))
    proc.wait(timeout=30)
    data = triage(pytester)
    outcomes = {c["nodeid"].split("::")[1]: (c["outcome"], c["message"]) for c in data["checks"]}
    assert outcomes["check_first"][0] == "passed"
    assert outcomes["check_slow"] == ("unknown", "interrupted before this check finished")
    assert outcomes["check_after"] == ("unknown", "interrupted before this check finished")
    assert data["sev1_blind"] is True


def test_triage_deadline_turns_the_rest_unknown(pytester: pytest.Pytester) -> None:
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_slow.py").write_text(
        SLOW.replace("{marker}", "").replace("time.sleep(30)", "time.sleep(2)"))
    result = run(pytester, "checks", "--triage-deadline", "1")
    assert result.ret == 0
    data = triage(pytester)
    outcomes = {c["nodeid"].split("::")[1]: (c["outcome"], c["message"]) for c in data["checks"]}
    assert outcomes["check_first"][0] == "passed"
    assert outcomes["check_after"] == ("unknown", "deadline reached before this check could finish")


def test_plugin_is_inert_in_a_project_that_does_not_use_labcheck(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    # labcheck is a global entry point: in another project's run it validates and writes nothing,
    # even with a KUBECONFIG it would refuse (no such files) and check_* functions around.
    for name in [n for n in os.environ if n.startswith("LABCHECK_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/a:/nonexistent/b")
    pytester.makepyfile(test_unrelated="def test_one():\n    assert True\n\ndef check_helper():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    assert not (pytester.path / "reports").exists()
    assert "labcheck target" not in result.stdout.str()


def test_a_labcheck_marker_wakes_the_plugin(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("LABCHECK_")]:
        monkeypatch.delenv(name)
    pytester.makepyfile(test_marked="import pytest\n\n@pytest.mark.sev4\ndef test_marked():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", "--no-sandbox")
    result.assert_outcomes(passed=1)
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/a:/nonexistent/b")
    bad = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "none of these kubeconfig files exists: /nonexistent/a, /nonexistent/b" in bad.stderr.str() + bad.stdout.str()


def test_two_profiles_are_one_clear_line_not_the_last_one_silently(pytester: pytest.Pytester,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A pytest run is one environment: `--profile a --profile b` must not check b alone and say nothing."""
    for name in [n for n in os.environ if n.startswith("LABCHECK_")]:
        monkeypatch.delenv(name)
    for name in ("a", "b"):
        (pytester.path / f"{name}.toml").write_text("[targets]\n")
    pytester.makepyfile(test_marked="import pytest\n\n@pytest.mark.sev4\ndef test_marked():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", "--no-sandbox",
                                           "--profile", "a.toml", "--profile", "b.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    out = result.stderr.str() + result.stdout.str()
    assert "--profile given 2 times (a.toml, b.toml): a pytest run checks one environment" in out
    assert "Traceback" not in out and "INTERNALERROR" not in out
    assert (pytester.path / "reports" / "triage.json").exists()  # nothing is lost: the reports are written
    same = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", "--no-sandbox",
                                         "--profile", "a.toml", "--profile", "a.toml")
    same.assert_outcomes(passed=1)  # the same file twice is one environment
