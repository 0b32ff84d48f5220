"""The metrics collection checks: durations, then the live sandbox, a stopped and an empty Prometheus."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest

from labcheck.components.metrics import prom_duration_s
from standin import StandIn

CHECKS = "checks/metrics.py"
SERIES = ("http_requests_total", "http_request_duration_seconds_bucket", "db_pool_connections", "db_pool_waiters")
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


def test_missing_application_series_fail_here_and_are_unknown_where_read(
        healed: Any, empty_prometheus: StandIn) -> None:
    run = healed.run_checks(CHECKS, "checks/api_gateway.py", "checks/auth.py",
                            "--prometheus-url", empty_prometheus.url, "--api-url", healed.settings["api_url"])
    assert run.outcome("check_prometheus_ready") == "passed"
    assert run.outcome("check_scrape_targets_up") == "passed"
    assert run.outcome("check_scrapes_fresh") == "passed"
    for series in SERIES:
        check = run.check(f"check_app_exposes_series[{series}]")
        assert check["outcome"] == "failed"
        assert series in check["message"] and "UNKNOWN" in check["message"]
    for name, series in (("check_error_ratio_below_sev2", "http_requests_total"),
                         ("check_api_is_not_failing_most_requests", "http_requests_total"),
                         ("check_p95_latency_below_threshold", "http_request_duration_seconds"),
                         ("check_auth_error_ratio", "http_requests_total")):
        check = run.check(name)
        assert check["outcome"] == "unknown", (name, check)
        assert series in check["message"]
    assert run.triage["severity"] == "SEV-3"


def _html_page(path: str, query: str) -> tuple[int, Any]:
    """A web server that answers every path with an HTML page and HTTP 200, as a misrouted ingress does."""
    return 200, (b"<!doctype html><html><body>Welcome to nginx!</body></html>", "text/html")


def _compatible_server(path: str, query: str) -> tuple[int, Any]:
    """A Prometheus-compatible server: its own ready wording, Prometheus's query API."""
    if path == "/-/ready":
        return 200, (b"OK", "text/plain")
    return _empty_prometheus(path, query)


@pytest.mark.parametrize(("answer", "outcome", "text"), [
    (_html_page, "failed", "HTTP 200 text/html, not Prometheus's ready answer"),
    (_compatible_server, "passed", "HTTP 200 in"),
    (_empty_prometheus, "passed", "HTTP 200 in"),
])
def test_ready_passes_only_on_prometheus_s_answer(healed: Any, answer: Any, outcome: str, text: str) -> None:
    standin = StandIn(answer)
    try:
        run = healed.run_checks(CHECKS, "-k", "ready", "--prometheus-url", standin.url)
    finally:
        standin.close()
    ready = run.check("check_prometheus_ready")
    assert ready["outcome"] == outcome, ready
    assert text in (ready["message"] or ready["observed"][0]["observed"])
    if outcome == "failed":
        assert "Welcome to nginx!" in ready["message"]  # what was seen, named
        assert run.triage["severity"] == "SEV-3"


def test_stale_scrapes_fail(healed: Any, empty_prometheus: StandIn) -> None:
    # The stand-in's only target was last sampled 3 s ago: fresh at 15 s, stale at a factor of 0.1.
    args = (CHECKS, "-k", "fresh", "--prometheus-url", empty_prometheus.url)
    assert healed.run_checks(*args).outcome("check_scrapes_fresh") == "passed"
    stale = healed.run_checks(*args, "--set", "scrape_stale_factor=0.1").check("check_scrapes_fresh")
    assert stale["outcome"] == "failed"
    assert "api/x:1 3.0 s" in stale["message"]


def test_a_target_down_is_named(healed: Any) -> None:
    from labcheck.sandbox import manager

    pid = healed.state["services"]["pushgateway"]["pid"]
    os.kill(pid, signal.SIGTERM)  # a process of our own sandbox, by its PID
    try:
        run = healed.wait_for(lambda r: r.outcome("check_scrape_targets_up") == "failed", CHECKS, "-k", "targets",
                              deadline_s=30, what="scrape target check failing")
        message = run.check("check_scrape_targets_up")["message"]
        assert "1 not up: pushgateway/" in message
        assert "api/" not in message.split("\n")[0]
    finally:
        healed.state = manager.up(port_offset=int(os.environ.get("LABCHECK_SANDBOX_PORT_OFFSET", "0")))
    healed.wait_for(lambda r: r.outcome("check_scrape_targets_up") == "passed", CHECKS, "-k", "targets",
                    deadline_s=30, what="every target up again")
