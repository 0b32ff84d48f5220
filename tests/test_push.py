"""`--push-metrics URL`: the gauges, a failing push, xdist, and the series read back from Prometheus."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labcheck.push import build_registry, severity_level

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = str(REPO / "scenarios")

CHECKS = """
import pytest
from labcheck.errors import NoData

@pytest.mark.sev2
@pytest.mark.api_gateway
@pytest.mark.scenario("high-error-rate")
def check_passes(expect):
    expect(True, target="t", observed="0%", threshold="<= 10%")

@pytest.mark.sev1
@pytest.mark.database
def check_fails(expect):
    expect({fails}, target="db", observed="down", threshold="up")

@pytest.mark.sev1
@pytest.mark.auth
def check_cannot_check():
    raise NoData("no data", target="auth")
"""


def verdict(*checks: tuple[str, str, str | None], severity: str | None) -> dict[str, Any]:
    return {"severity": severity, "duration_s": 4.5, "finished_at": "2026-01-15T10:30:00+00:00",
            "checks": [{"nodeid": n, "outcome": o, "component": "api_gateway", "severity": s,
                        "scenario": "high-error-rate" if o == "failed" else None, "duration_s": 0.25}
                       for n, o, s in checks]}


def test_gauges_follow_the_verdict() -> None:
    from prometheus_client import generate_latest

    data = verdict(("checks/a.py::check_ok", "passed", "SEV-1"), ("checks/a.py::check_bad", "failed", "SEV-2"),
                   ("checks/a.py::check_blind", "unknown", "SEV-1"), ("checks/a.py::check_off", "skipped", "SEV-2"),
                   severity="SEV-2")
    text = generate_latest(build_registry(data)).decode()
    bad = 'check="checks/a.py::check_bad",component="api_gateway",scenario="high-error-rate",severity="sev2"'
    assert f"labcheck_check_success{{{bad}}} 0.0" in text
    assert 'labcheck_check_success{check="checks/a.py::check_ok",component="api_gateway",scenario="",severity="sev1"} 1.0' in text
    assert 'labcheck_check_success{check="checks/a.py::check_blind"' not in text  # absent when UNKNOWN
    assert 'labcheck_check_unknown{check="checks/a.py::check_blind",component="api_gateway",scenario="",severity="sev1"} 1.0' in text
    assert f"labcheck_check_unknown{{{bad}}} 0.0" in text
    assert f"labcheck_check_duration_seconds{{{bad}}} 0.25" in text
    # skipped: it did not run, but it does not vanish
    assert 'labcheck_check_skipped{check="checks/a.py::check_off",component="api_gateway",scenario="",severity="sev2"} 1.0' in text
    assert 'labcheck_check_success{check="checks/a.py::check_off"' not in text
    assert 'labcheck_check_unknown{check="checks/a.py::check_off"' not in text
    assert f"labcheck_check_skipped{{{bad}}} 0.0" in text
    assert "labcheck_incident_severity 2.0" in text
    assert "labcheck_run_duration_seconds 4.5" in text
    assert "labcheck_last_run_timestamp_seconds 1.7684730e+09" in text or \
        "labcheck_last_run_timestamp_seconds 1.768473e+09" in text
    assert severity_level(verdict(severity=None)) == 0


class Recorder(http.server.BaseHTTPRequestHandler):
    """A stand-in Pushgateway that records every request."""

    requests: list[tuple[str, str, bytes]] = []

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.requests.append(("PUT", self.path, body))
        self.send_response(200)
        self.end_headers()

    do_POST = do_PUT

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    class Handler(Recorder):
        requests: list[tuple[str, str, bytes]] = []

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", Handler.requests
    server.shutdown()
    server.server_close()


def run(pytester: pytest.Pytester, *args: str, fails: bool = False) -> pytest.RunResult:
    pytester.path.joinpath("checks").mkdir(exist_ok=True)
    pytester.path.joinpath("checks", "demo.py").write_text(CHECKS.replace("{fails}", "False" if fails else "True"))
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--no-sandbox", f"--scenarios-dir={SCENARIOS}",
                                         f"--reports-dir={pytester.path / 'reports'}", "checks", *args)


def test_push_sends_the_verdict_once_under_xdist(pytester: pytest.Pytester, gateway: Any) -> None:
    url, requests = gateway
    result = run(pytester, f"--push-metrics={url}", "--set", "push_instance=ci-run", "-n", "2", fails=True)
    assert result.ret == 1
    assert len(requests) == 1, requests  # the controller pushes, the workers do not
    method, path, body = requests[0]
    assert (method, path) == ("PUT", "/metrics/job/labcheck/instance/ci-run")
    text = body.decode()
    assert 'labcheck_check_success{check="checks/demo.py::check_fails",component="database",scenario="",severity="sev1"} 0.0' in text
    assert "labcheck_incident_severity 1.0" in text
    result.stdout.fnmatch_lines([f"labcheck: metrics pushed to {url} (job labcheck, instance ci-run, severity 1)"])


@pytest.mark.parametrize("fails, code", [(False, 0), (True, 1)])
def test_a_failed_push_is_one_line_and_changes_nothing(pytester: pytest.Pytester, fails: bool, code: int) -> None:
    baseline = run(pytester, fails=fails)
    started = time.monotonic()
    result = run(pytester, "--push-metrics=http://127.0.0.1:9", fails=fails)
    assert result.ret == baseline.ret == code
    assert time.monotonic() - started < 60
    lines = [line for line in result.stdout.lines if "metrics not pushed" in line]
    assert lines == [lines[0]] and lines[0].startswith("labcheck: metrics not pushed to http://127.0.0.1:9: ")
    assert json.loads((pytester.path / "reports" / "triage.json").read_text())["severity"] == ("SEV-1" if fails else None)


def test_a_bad_url_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--push-metrics=pushgateway:9091")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*command line --push-metrics: not an http(s) URL: 'pushgateway:9091'*"])


# --- against the sandbox's real Pushgateway and Prometheus -----------------------------------


def test_pushed_series_read_back_from_prometheus(healed: Any) -> None:
    import httpx

    instance = f"pytest-{time.time_ns()}"
    gateway_url = healed.settings["pushgateway_url"]
    healed.fault("error-rate", share=0.4)
    result = healed.wait_for(lambda r: r.outcome("check_error_ratio_below_sev2") == "failed",
                           "-m", "sev2", "checks/api_gateway.py", f"--push-metrics={gateway_url}",
                           f"--set=push_instance={instance}", what="error ratio check failing")
    assert "labcheck: metrics pushed to" in result.stdout
    level = int(result.triage["severity"].removeprefix("SEV-"))

    def query(expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{healed.settings['prometheus_url']}/api/v1/query", params={"query": expr}, timeout=5)
        return list(answer.json()["data"]["result"])

    check = "checks/api_gateway.py::check_error_ratio_below_sev2"
    success = f'labcheck_check_success{{job="labcheck",instance="{instance}",check="{check}"}}'
    severity = f'labcheck_incident_severity{{job="labcheck",instance="{instance}"}}'
    def landed() -> bool:
        # wait_for's earlier rounds pushed the same instance while the check still passed: poll until
        # Prometheus has scraped the last push (every second), not merely any push.
        got, sev = query(success), query(severity)
        return bool(got and sev) and got[0]["value"][1] == "0" and float(sev[0]["value"][1]) == level

    end = time.monotonic() + 30
    while not landed():
        assert time.monotonic() < end, f"the last push did not reach Prometheus within 30 s: {query(success)}"
        time.sleep(0.5)
    [series] = query(success)
    assert series["value"][1] == "0"
    assert series["metric"]["severity"] == "sev2" and series["metric"]["component"] == "api_gateway"
    assert series["metric"]["scenario"] == "high-error-rate"
    assert float(query(severity)[0]["value"][1]) == level
    assert query(f'labcheck_last_run_timestamp_seconds{{instance="{instance}"}}')
    httpx.delete(f"{gateway_url}/metrics/job/labcheck/instance/{instance}", timeout=5)
