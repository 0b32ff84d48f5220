"""The history checks' PromQL, built from the signal map (issue 12)."""

from __future__ import annotations

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
