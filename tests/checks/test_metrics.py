"""The metrics collection checks: durations, then the live sandbox, a stopped and an empty Prometheus."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest

from labcheck.components.metrics import prom_duration_s
from standin import StandIn

CHECKS = "checks/metrics.py"
SERIES = ("requests", "duration", "pool")  # the roles of the signal map
ALL_CHECKS = ("check_prometheus_ready", "check_scrape_targets_up", "check_scrapes_fresh",
              *(f"check_app_exposes_series[{s}]" for s in SERIES))
READS_PROMETHEUS = ("check_scrape_targets_up", "check_scrapes_fresh",
                    *(f"check_app_exposes_series[{s}]" for s in SERIES),
                    "check_api_is_not_failing_most_requests", "check_error_ratio_below_sev2",
                    "check_p95_latency_below_threshold", "check_auth_error_ratio")


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("15s", 15.0), ("1m30s", 90.0), ("500ms", 0.5), ("2h", 7200.0), ("", None), ("1x", None),
])
def test_scrape_intervals_are_read(text: str, seconds: float | None) -> None:
    assert prom_duration_s(text) == seconds


# --- a stand-in Prometheus with no data ------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _empty_prometheus(path: str, query: str) -> tuple[int, Any]:
    """The Prometheus HTTP API: ready, one healthy target, and empty vectors (but timestamp(up))."""
    if path == "/-/ready":
        return 200, (b"Prometheus Server is Ready.\n", "text/plain")
    if path == "/api/v1/targets":
        target = {"labels": {"job": "api", "instance": "x:1"}, "health": "up", "lastError": "",
                  "scrapeInterval": "15s", "scrapeUrl": "http://x:1/metrics", "lastScrape": ""}
        return 200, {"status": "success", "data": {"activeTargets": [target]}}
    if path == "/api/v1/query":
        result = []
        if "timestamp(up)" in parse_qs(query).get("query", [""])[0]:
            result = [{"metric": {"job": "api", "instance": "x:1"}, "value": [0, "3"]}]
        return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}
    return 404, (b"not found", "text/plain")


@pytest.fixture
def empty_prometheus() -> Iterator[StandIn]:
    fake = StandIn(_empty_prometheus)
    yield fake
    fake.close()


# --- against the live sandbox ----------------------------------------------------------------


def test_healthy_sandbox_passes_every_metrics_check(healed: Any) -> None:
    run = healed.wait_for(lambda r: all(r.outcome(c) == "passed" for c in ALL_CHECKS), CHECKS,
                          deadline_s=60, what="every metrics check passing")
    assert run.triage["severity"] is None


def test_stopped_prometheus_is_a_failure_and_blinds_the_checks_that_read_it(healed: Any) -> None:
    port = _closed_port()
    run = healed.run_checks(CHECKS, "checks/api_gateway.py", "checks/auth.py",
                            "--prometheus-url", f"http://127.0.0.1:{port}",
                            "--api-url", healed.settings["api_url"])
    ready = run.check("check_prometheus_ready")
    assert ready["outcome"] == "failed"
    assert "connection refused" in ready["message"]
    for name in READS_PROMETHEUS:
        check = run.check(name)
        assert check["outcome"] == "unknown", (name, check)
        assert f"127.0.0.1:{port}" in check["message"]
    blind = {b["nodeid"].split("::")[1] for b in run.triage["blind_spots"]}
    assert {"check_error_ratio_below_sev2", "check_auth_error_ratio"} <= blind


def test_missing_application_series_are_unknown_here_and_where_read(
        healed: Any, empty_prometheus: StandIn) -> None:
    # Missing instrumentation is a blind spot, not an incident (issue 12): UNKNOWN naming what was
    # looked for, here and in every check that reads it; nothing fails.
    run = healed.run_checks(CHECKS, "checks/api_gateway.py", "checks/auth.py",
                            "--prometheus-url", empty_prometheus.url, "--api-url", healed.settings["api_url"])
    assert run.outcome("check_prometheus_ready") == "passed"
    assert run.outcome("check_scrape_targets_up") == "passed"
    assert run.outcome("check_scrapes_fresh") == "passed"
    for role in SERIES:
        check = run.check(f"check_app_exposes_series[{role}]")
        assert check["outcome"] == "unknown", check
        assert "http_requests_total" in check["message"] and "starlette_requests_total" in check["message"]
    for name in ("check_error_ratio_below_sev2", "check_api_is_not_failing_most_requests",
                 "check_p95_latency_below_threshold", "check_auth_error_ratio"):
        check = run.check(name)
        assert check["outcome"] == "unknown", (name, check)
        assert "no series of any request counter" in check["message"], check
    assert run.triage["severity"] is None
    assert "auto: no series of any request counter" in run.triage["signals"]


def _unfamiliar_prometheus(path: str, query: str) -> tuple[int, Any]:
    """Like the empty one, but the request counter has labels no preset writes (route, code)."""
    expr = parse_qs(query).get("query", [""])[0]
    if path == "/api/v1/query" and expr.startswith("topk by (__name__"):
        series = [{"metric": {"__name__": "http_requests_total", "route": "/experiments", "code": c, "verb": "GET"},
                   "value": [0, "1"]} for c in ("200", "500")]
        return 200, {"status": "success", "data": {"resultType": "vector", "result": series}}
    if path == "/api/v1/query" and "http_requests_total" in expr:
        # Were the checks to read the counter anyway, it would be a plausible healthy answer.
        return 200, {"status": "success", "data": {"resultType": "vector",
                                                   "result": [{"metric": {}, "value": [0, "5"]}]}}
    return _empty_prometheus(path, query)


def test_a_series_shape_no_preset_fits_is_unknown_naming_the_labels_seen(healed: Any) -> None:
    fake = StandIn(_unfamiliar_prometheus)
    try:
        run = healed.run_checks(CHECKS, "checks/api_gateway.py", "checks/auth.py",
                                "--prometheus-url", fake.url, "--api-url", healed.settings["api_url"])
    finally:
        fake.close()
    assert "Traceback" not in run.stdout + run.stderr
    for name in ("check_api_is_not_failing_most_requests", "check_error_ratio_below_sev2",
                 "check_p95_latency_below_threshold", "check_auth_error_ratio", "check_app_exposes_series[requests]"):
        check = run.check(name)
        assert check["outcome"] == "unknown", (name, check)
        assert "no preset fits" in check["message"] and "http_requests_total has labels code, route, verb" in check["message"]
    assert run.triage["severity"] is None
    assert run.triage["signals"].startswith("auto: no preset fits")
