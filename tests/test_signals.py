"""The signal map: presets, detection from live label sets, configuration errors, and bucket reading."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from labcheck import config, signals
from labcheck.components.api_gateway import quantile
from labcheck.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _series(name: str, status_label: str, values: tuple[str, ...], **labels: str) -> list[dict[str, str]]:
    return [{"__name__": name, status_label: v, **labels} for v in values]


# Label sets as each library writes them with its defaults (seen on the sandbox flavours' /metrics).
SHAPES = {
    "playbook": _series("http_requests_total", "status", ("200", "500"), path="/experiments", job="api"),
    "prometheus-fastapi-instrumentator": _series("http_requests_total", "status", ("2xx", "5xx"),
                                                 handler="/experiments", method="GET"),
    "starlette_exporter": _series("starlette_requests_total", "status_code", ("200", "500"),
                                  path="/experiments", method="GET", app_name="starlette"),
    "starlette_exporter-http": _series("http_requests_total", "status_code", ("200", "500"),
                                       path="/experiments", method="GET", app_name="starlette"),
    "opentelemetry": _series("http_server_request_duration_seconds_count", "http_response_status_code",
                             ("200", "500"), http_route="/experiments", http_request_method="GET"),
    "prometheus_flask_exporter": _series("flask_http_request_duration_seconds_count", "status", ("200",),
                                         path="/experiments", method="GET"),
}


@pytest.mark.parametrize("preset", sorted(SHAPES))
def test_auto_picks_the_preset_whose_labels_the_series_carry(preset: str) -> None:
    detected = signals.detect(signals.Shape.of(SHAPES[preset]), {})
    assert detected.map is not None, detected.reason
    assert detected.map.name == preset
    assert detected.reason.startswith("auto: ") and f"-> {preset}" in detected.reason
    assert detected.map.status_match == ("class" if preset == "prometheus-fastapi-instrumentator" else "code")


def test_the_instrumentator_with_grouping_off_writes_codes() -> None:
    shape = signals.Shape.of(_series("http_requests_total", "status", ("200", "503"), handler="/x"))
    detected = signals.detect(shape, {})
    assert detected.map is not None and detected.map.name == "prometheus-fastapi-instrumentator"
    assert detected.map.status_match == "code"


def test_no_preset_fits_names_the_labels_seen() -> None:
    shape = signals.Shape.of(_series("http_requests_total", "code", ("200",), route="/x", method="GET"))
    detected = signals.detect(shape, {})
    assert detected.map is None
    assert "no preset fits" in detected.reason and "http_requests_total has labels code, method, route" in detected.reason


def test_nothing_at_all_names_the_counters_looked_for() -> None:
    detected = signals.detect(signals.Shape.of([]), {})
    assert detected.map is None and "starlette_requests_total" in detected.reason


def test_configured_fields_apply_on_top_of_the_detected_preset() -> None:
    shape = signals.Shape.of(_series("http_requests_total", "status", ("200",), route="/x"))
    detected = signals.detect(shape, {"endpoint_label": "route", "readiness_db": "database"})
    assert detected.map is not None and detected.map.endpoint_label == "route"
    assert detected.map.readiness_name("db") == "database"


def test_detection_is_one_bounded_query() -> None:
    q = signals.detection_query({"selector": 'job="api"'})
    assert q.startswith("topk by (__name__, status, status_code, http_response_status_code) (1, {")
    assert 'job="api"' in q and "starlette_requests_total" in q


def test_status_matchers_follow_the_map() -> None:
    codes, grouped = signals.SignalMap(), signals.SignalMap(status_match="class")
    assert codes.status_is("5") == 'status=~"5[0-9][0-9]"'
    assert grouped.status_is("5") == 'status=~"5[xX][xX]"'
    assert codes.auth_refusals() == ('status=~"401|403"', False)
    assert grouped.auth_refusals() == ('status=~"4[xX][xX]"', True)
    assert signals.SignalMap(selector='job="api"').series("m", 'a!=""') == 'm{job="api",a!=""}'


def _load(**cli: str) -> config.Settings:
    return config.load(cli={k: (v, f"--set {k}") for k, v in cli.items()}, environ={}, use_sandbox=False)


def test_every_field_is_a_key() -> None:
    settings = _load(signals="starlette_exporter", signals_endpoint_label="route")
    m = signals.chosen(settings.signals, settings.values)
    assert (m.requests, m.endpoint_label, m.status_label) == ("starlette_requests_total", "route", "status_code")
    assert "set: endpoint_label=route" in m.why


@pytest.mark.parametrize(("key", "value", "says"), [
    ("signals", "nope", "unknown signal preset 'nope' (known: auto, playbook"),
    ("signals_endpoint_label", "a-b", "--set signals_endpoint_label: not a Prometheus label name: 'a-b'"),
    ("signals_requests", "9bad", "not a Prometheus metric name"),
    ("signals_selector", "job=api", "not a list of PromQL label matchers"),
    ("signals_status_match", "exact", "not a status match"),
])
def test_bad_values_name_the_key_and_where_they_came_from(key: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(**{key: value})
    assert says in str(err.value)


def test_profile_table_and_dotted_set_are_read(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text('[signals]\npreset = "opentelemetry"\nreadiness_components = "checks"\n')
    settings = config.load(profile=str(profile), cli=config.parse_assignments(["signals.readiness_db=database"], "--set"),
                           environ={}, use_sandbox=False)
    assert settings.signals == "opentelemetry"
    assert settings.signals_readiness_components == "checks" and settings.signals_readiness_db == "database"


def test_an_unknown_preset_exits_4_with_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                           "checks", "--set", "signals=nope", "--reports-dir", "/tmp/labcheck-test-signals"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "nope" in ln]
    assert len(lines) == 1 and "known: auto, playbook, prometheus-fastapi-instrumentator" in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


# --- reading buckets -----------------------------------------------------------------------------

INSTRUMENTATOR = (0.1, 0.5, 1.0, math.inf)


def _buckets(bounds: tuple[float, ...], counts: tuple[float, ...]) -> list[tuple[float, float]]:
    return list(zip(bounds, counts, strict=True))


def test_a_quantile_beyond_the_buckets_cannot_pass_a_higher_threshold() -> None:
    # All requests took 2.5 s; the instrumentator's buckets end at 1 s: histogram_quantile says 1.0.
    q = quantile(0.95, _buckets(INSTRUMENTATOR, (0, 0, 0, 10)))
    assert q is not None and q.beyond_buckets and q.largest == 1.0
    assert q.judge(2.0) is None  # UNKNOWN: somewhere above 1 s
    assert q.judge(0.5) is False  # above 1 s is above 0.5 s: FAILED


def test_a_quantile_inside_the_buckets_is_judged_by_its_bounds() -> None:
    q = quantile(0.95, _buckets(INSTRUMENTATOR, (9, 10, 10, 10)))
    assert q is not None and not q.beyond_buckets and q.upper == 0.5
    assert q.judge(2.0) is True and q.judge(0.5) is True and q.judge(0.05) is False
    assert q.value == pytest.approx(0.1 + 0.4 * (9.5 - 9) / 1)


def test_no_requests_or_no_inf_bucket_is_no_quantile() -> None:
    assert quantile(0.95, _buckets(INSTRUMENTATOR, (0, 0, 0, 0))) is None
    assert quantile(0.95, [(0.1, 1.0), (1.0, 2.0)]) is None
