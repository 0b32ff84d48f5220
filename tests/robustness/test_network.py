"""Bad networks and bad answers: every affected check is FAILED or UNKNOWN with a one-line reason, and the reports are written."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hostile
import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 2


def run_suite(tmp_path: Path, *sets: str, module: str = "checks/api_gateway.py"
              ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    reports = tmp_path / "reports"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--no-sandbox",
           f"--reports-dir={reports}", "--probe-timeout", str(TIMEOUT), module]
    for item in sets:
        cmd += ["--set", item]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABCHECK_")}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "INTERNALERROR" not in out, out[-4000:]
    assert proc.returncode in (0, 1), out[-4000:]
    data = json.loads((reports / "triage.json").read_text())
    assert any((reports / "allure-results").glob("*-result.json")), "allure results written"
    return proc, data


def checks(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["nodeid"].split("::")[1]: c for c in data["checks"]}


@pytest.fixture
def server() -> Iterator[list[hostile.Server]]:
    servers: list[hostile.Server] = []
    yield servers
    for s in servers:
        s.close()


def start(servers: list[hostile.Server], *args: Any, **kwargs: Any) -> hostile.Server:
    s = hostile.Server(*args, **kwargs)
    servers.append(s)
    return s


def assert_unreachable(data: dict[str, Any], url: str, reason: str) -> None:
    by_name = checks(data)
    health = by_name["check_health_answers_within_budget"]
    assert health["outcome"] == "failed", health
    assert url in health["message"] and reason in health["message"], health["message"]
    assert "\n" not in health["message"].split("; threshold")[0]
    for name, check in by_name.items():
        if name != "check_health_answers_within_budget":
            assert check["outcome"] == "unknown", (name, check)
            assert check["message"] and "\n" not in check["message"], check["message"]
    assert data["severity"] == "SEV-1"


def test_connection_refused(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{hostile.closed_port()}"
    _, data = run_suite(tmp_path, f"api_url={url}", f"prometheus_url={url}")
    assert_unreachable(data, url, "connection refused")
    assert "connection refused" in checks(data)["check_error_ratio_below_sev2"]["message"]


def test_dns_name_that_does_not_resolve(tmp_path: Path) -> None:
    url = "http://no-such-host.invalid:8080"
    _, data = run_suite(tmp_path, f"api_url={url}", f"prometheus_url={url}")
    assert_unreachable(data, url, "DNS name does not resolve")


def test_listener_that_never_answers_costs_one_timeout(tmp_path: Path, server: list[hostile.Server]) -> None:
    s = start(server, hostile.hang)
    started = time.monotonic()
    _, data = run_suite(tmp_path, f"api_url={s.url}", f"prometheus_url={s.url}")
    elapsed = time.monotonic() - started
    assert_unreachable(data, s.url, f"timed out after {TIMEOUT} s")
    # Not a speed goal: a bound. Every probe hangs concurrently, so the run pays one timeout,
    # not one per check (9 checks x 2 s).
    assert elapsed < 9 * TIMEOUT, elapsed


def test_trickling_server_is_cut_off(tmp_path: Path, server: list[hostile.Server]) -> None:
    s = start(server, hostile.trickle)
    _, data = run_suite(tmp_path, f"api_url={s.url}", f"prometheus_url={s.url}")
    health = checks(data)["check_health_answers_within_budget"]
    assert health["outcome"] == "failed" and s.url in health["message"]
    assert "no complete answer" in health["message"] or "timed out" in health["message"], health["message"]


def test_self_signed_tls_is_not_trusted(tmp_path: Path, server: list[hostile.Server]) -> None:
    ctx = hostile.self_signed_context(tmp_path)
    s = start(server, hostile.respond(200, b'{"status":"ok"}'), tls=ctx)
    _, data = run_suite(tmp_path, f"api_url={s.url}", f"prometheus_url={s.url}")
    assert_unreachable(data, s.url, "TLS certificate not trusted")


def test_reset_mid_response(tmp_path: Path, server: list[hostile.Server]) -> None:
    s = start(server, hostile.reset_mid_response)
    _, data = run_suite(tmp_path, f"api_url={s.url}", f"prometheus_url={s.url}")
    health = checks(data)["check_health_answers_within_budget"]
    assert health["outcome"] == "failed" and "connection closed mid-response" in health["message"]


def test_html_where_json_was_expected(tmp_path: Path, server: list[hostile.Server]) -> None:
    s = start(server, hostile.respond(200, b"<html><body>Login</body></html>", "text/html"))
    _, data = run_suite(tmp_path, f"api_url={s.url}", f"prometheus_url={s.url}")
    by_name = checks(data)
    # A login page answering 200 is not the API's health body: the API is not there (issue 13).
    health = by_name["check_health_answers_within_budget"]
    assert health["outcome"] == "failed" and "text/html" in health["message"], health
    ready = by_name["check_readiness_reports_component_ok[db]"]
    assert ready["outcome"] == "unknown" and "not JSON (text/html)" in ready["message"]
    assert by_name["check_error_ratio_below_sev2"]["outcome"] == "unknown"


def test_truncated_json(tmp_path: Path, server: list[hostile.Server]) -> None:
    s = start(server, hostile.respond(200, b'{"status": "success", "data": {"resultType": "vec'))
    _, data = run_suite(tmp_path, f"api_url={s.url}", f"prometheus_url={s.url}")
    assert "not JSON" in checks(data)["check_error_ratio_below_sev2"]["message"]


def test_fifty_megabyte_body_is_read_bounded(tmp_path: Path, server: list[hostile.Server]) -> None:
    s = start(server, hostile.huge_body(50 * 1024 * 1024))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    _, data = run_suite(tmp_path, f"api_url={s.url}", f"prometheus_url={s.url}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    ready = checks(data)["check_readiness_reports_component_ok[db]"]
    assert ready["outcome"] == "unknown" and "larger than" in ready["message"]
    assert max(before, peak_kib) < 400 * 1024, f"peak RSS {peak_kib} KiB"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"status":"error","errorType":"bad_data","error":"parse error"}', "query failed (bad_data: parse error)"),
        # Every query, the signal map's detection included, gets the same answer: no counter to read.
        (b'{"status":"success","data":{"resultType":"vector","result":[]}}', "no series of any request counter"),
        (b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{"path":"/x"},"value":[1,"NaN"]},'
         b'{"metric":{"path":"/y"},"value":[1,"+Inf"]}]}}', "no series of any request counter"),
    ],
    ids=["status-error", "empty-vector", "nan-and-inf"],
)
def test_prometheus_answers_that_mean_no_verdict(tmp_path: Path, server: list[hostile.Server], body: bytes,
                                                 reason: str) -> None:
    prom = start(server, hostile.respond(200, body))
    api = start(server, hostile.respond(200, b'{"status":"ok","components":{"db":{"status":"ok"},'
                                             b'"auth":{"status":"ok"},"storage":{"status":"ok"}}}'))
    _, data = run_suite(tmp_path, f"api_url={api.url}", f"prometheus_url={prom.url}")
    by_name = checks(data)
    for name in ("check_api_is_not_failing_most_requests", "check_error_ratio_below_sev2"):
        assert by_name[name]["outcome"] == "unknown", by_name[name]
        assert reason in by_name[name]["message"], by_name[name]["message"]
    assert data["severity"] is None and data["sev1_blind"] is True
