"""The history checks' PromQL, built from the signal map (issue 12)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import pytest

from labcheck.components.history import error_ratio_query, p95_query
from labcheck.signals import PRESETS, SignalMap


def test_the_playbook_map_gives_the_playbook_queries() -> None:
    m = SignalMap()
    assert error_ratio_query(m, "5m") == (
        '(sum(rate(http_requests_total{status=~"5[0-9][0-9]",path!="",status!=""}[5m])) or vector(0))'
        ' / sum(rate(http_requests_total{path!="",status!=""}[5m]))')
    assert p95_query(m, "5m") == ("histogram_quantile(0.95, sum by (path, le) "
                                  "(rate(http_request_duration_seconds_bucket{}[5m])))")


def test_an_exporter_preset_gives_its_names_labels_and_status_form() -> None:
    m = PRESETS["prometheus-fastapi-instrumentator"].apply(SignalMap(selector='job="api"'), "test")
    ratio = error_ratio_query(m, "1m")
    assert 'http_requests_total{job="api",status=~"5[xX][xX]",handler!="",status!=""}[1m]' in ratio
    assert 'sum(rate(http_requests_total{job="api",handler!="",status!=""}[1m]))' in ratio
    assert "sum by (handler, le)" in p95_query(m, "1m")
    otel = PRESETS["opentelemetry"].apply(SignalMap(), "test")
    assert 'http_response_status_code=~"5[0-9][0-9]"' in error_ratio_query(otel, "1m")
    assert "rate(http_server_request_duration_seconds_bucket{}[1m])" in p95_query(otel, "1m")


def prometheus_with(p95: float) -> Any:
    """A Prometheus whose p95 history is ``p95`` every minute, over the instrumentator's buckets."""
    from standin import StandIn

    def answer(path: str, query: str) -> tuple[int, Any]:
        q = parse_qs(query)
        if path == "/api/v1/query_range":
            start, end, step = (float(q[k][0]) for k in ("start", "end", "step"))
            points = [[start + i * step, str(p95)] for i in range(int((end - start) / step) + 1)]
            data = {"resultType": "matrix", "result": [{"metric": {"handler": "/experiments"}, "values": points}]}
        elif "count by (le)" in q["query"][0]:
            data = {"resultType": "vector", "result": [{"metric": {"le": le}, "value": [0, "3"]}
                                                       for le in ("0.1", "0.5", "1.0", "+Inf")]}
        else:
            data = {"resultType": "vector", "result": []}
        return 200, {"status": "success", "data": data}

    return StandIn(answer)


@pytest.mark.parametrize(("p95", "outcome", "text"), [
    (0.4, "unknown", "http_request_duration_seconds buckets end at 1 s; p95 against 2 s cannot be judged"),
    (1.0, "failed", "1.00 s on /experiments (p95 in the +Inf bucket, above the largest bucket 1 s)"),
])
def test_p95_history_cannot_pass_when_the_buckets_end_under_the_threshold(healed: Any, p95: float, outcome: str,
                                                                           text: str) -> None:
    prom = prometheus_with(p95)
    try:
        run = healed.run_checks("checks/history.py", "-k", "p95", "--set", "history_window=1m",
                                "--set", f"prometheus_url={prom.url}",
                                "--set", "signals=prometheus-fastapi-instrumentator")
    finally:
        prom.close()
    check = run.check("check_p95_latency_history_below_threshold")
    assert check["outcome"] == outcome and text in check["message"], check
