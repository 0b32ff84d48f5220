"""The signal map: every metric, label and body field a check reads, in one table.

The playbook's names are the defaults. A preset sets the request metrics to what one exporter
library writes with its documented defaults (checked against the installed library, see
``PRESETS``); ``auto`` picks the preset from the live series' label names. Any field can be set on
its own: ``[signals]`` in a profile, ``--set signals.FIELD=VALUE`` or ``LABCHECK_SIGNALS_FIELD``.

This module reads nothing: the query that detects the exporter, and its answer, are described here
as data (``detection_query``, ``detect``); the components run the query once per run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_MATCHER = r'\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*'
SELECTOR = re.compile(rf"(?:{_MATCHER}(?:,{_MATCHER})*)?,?\s*")
JSON_PATH = re.compile(r"(?:[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*)?")
STATUS_MATCHES = ("code", "class")
AUTO = "auto"


def _metric(value: str) -> str:
    if not METRIC_NAME.fullmatch(value):
        raise ValueError(f"not a Prometheus metric name: {value!r}")
    return value


def _label(value: str) -> str:
    if not LABEL_NAME.fullmatch(value) or value.startswith("__"):
        raise ValueError(f"not a Prometheus label name: {value!r}")
    return value


def _status_match(value: str) -> str:
    if value not in STATUS_MATCHES:
        raise ValueError(f"not a status match: {value!r} (known: code for exact codes like 500, "
                         "class for grouped values like 5xx)")
    return value


def _selector(value: str) -> str:
    if not SELECTOR.fullmatch(value):
        raise ValueError(f'not a list of PromQL label matchers such as job="api": {value!r}')
    return value.strip().rstrip(",").strip()


def _path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"not a URL path starting with '/': {value!r}")
    return value


def _json_path(value: str) -> str:
    if not JSON_PATH.fullmatch(value):
        raise ValueError(f"not a dotted JSON path such as components or data.checks: {value!r}")
    return value


def _field(value: str) -> str:
    if not value or not JSON_PATH.fullmatch(value) or "." in value:
        raise ValueError(f"not a JSON field name: {value!r}")
    return value


def _values(value: str) -> str:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ValueError("empty list")
    return ",".join(items)


@dataclass(frozen=True)
class SignalMap:
    """Where each signal lives. ``name`` and ``why`` say which map this is and how it was chosen."""

    # Request metrics: the counter, the duration histogram (without _bucket), their labels.
    requests: str = "http_requests_total"
    duration: str = "http_request_duration_seconds"
    endpoint_label: str = "path"
    status_label: str = "status"
    status_match: str = "code"  # "code": exact codes (500); "class": grouped values (5xx)
    selector: str = ""  # label matchers that pick the API's series, e.g. job="api"
    # The API's database pool gauges (read through Prometheus, else the API's /metrics).
    pool_connections: str = "db_pool_connections"
    pool_max: str = "db_pool_max_connections"
    pool_idle: str = "db_pool_idle_connections"
    pool_waiters: str = "db_pool_waiters"
    # Readiness: the path, where its components sit in the JSON body, their status field and names.
    readiness_path: str = "/health/ready"
    readiness_components: str = "components"
    readiness_status: str = "status"
    readiness_ok: str = "ok,up,healthy,pass,true"
    readiness_failed: str = "error,down,fail,failed,unhealthy,degraded,false"
    readiness_db: str = "db"
    readiness_auth: str = "auth"
    readiness_storage: str = "storage"
    # The experiments list: where the list sits, and the fields read from each item.
    experiments_key: str = "experiments"
    experiments_id: str = "id"
    experiments_name: str = "name"
    experiments_state: str = "state"
    experiments_running: str = "running"
    experiments_times: str = "updated_at,started_at"

    name: str = "playbook"
    why: str = "the playbook's names"

    # -- PromQL ----------------------------------------------------------------------------------

    def series(self, metric: str, *matchers: str) -> str:
        """A series selector for ``metric`` with the map's selector and extra matchers."""
        inner = ",".join(m for m in (self.selector, *matchers) if m)
        return f"{metric}{{{inner}}}"

    def labelled(self) -> tuple[str, str]:
        """Matchers that keep only request series carrying the endpoint and status labels."""
        return f'{self.endpoint_label}!=""', f'{self.status_label}!=""'

    def status_is(self, first_digit: str) -> str:
        """Matcher for a status class (``"5"``) in this map's status form."""
        pattern = f"{first_digit}[xX][xX]" if self.status_match == "class" else f"{first_digit}[0-9][0-9]"
        return f'{self.status_label}=~"{pattern}"'

    def auth_refusals(self) -> tuple[str, bool]:
        """Matcher for 401/403, and whether it is only an upper bound (grouped status: all of 4xx)."""
        if self.status_match == "class":
            return self.status_is("4"), True
        return f'{self.status_label}=~"401|403"', False

    @property
    def times(self) -> tuple[str, ...]:
        return tuple(v for v in self.experiments_times.split(",") if v)

    @property
    def ok_values(self) -> frozenset[str]:
        return frozenset(v.lower() for v in self.readiness_ok.split(","))

    @property
    def failed_values(self) -> frozenset[str]:
        return frozenset(v.lower() for v in self.readiness_failed.split(","))

    def readiness_name(self, component: str) -> str:
        """The readiness entry of a playbook component (``db``, ``auth`` or ``storage``)."""
        return str(getattr(self, f"readiness_{component}"))

    def pool_names(self) -> dict[str, str]:
        return {"connections": self.pool_connections, "max": self.pool_max, "idle": self.pool_idle,
                "waiters": self.pool_waiters}

    def describe(self) -> str:
        return self.why if self.why.startswith("auto:") else f"{self.name}: {self.why}"


REQUEST_FIELDS = ("requests", "duration", "endpoint_label", "status_label", "status_match")

# Each field's parser. Fields not listed are free text (none today).
PARSE: dict[str, Callable[[str], str]] = {
    "requests": _metric, "duration": _metric, "endpoint_label": _label, "status_label": _label,
    "status_match": _status_match, "selector": _selector,
    "pool_connections": _metric, "pool_max": _metric, "pool_idle": _metric, "pool_waiters": _metric,
    "readiness_path": _path, "readiness_components": _json_path, "readiness_status": _field,
    "readiness_ok": _values, "readiness_failed": _values, "readiness_db": _field, "readiness_auth": _field,
    "readiness_storage": _field, "experiments_key": _json_path, "experiments_id": _field,
    "experiments_name": _field, "experiments_state": _field, "experiments_running": _values,
    "experiments_times": _values,
}
HELP: dict[str, str] = {
    "requests": "request counter (a counter, or a histogram's _count)",
    "duration": "request duration histogram, without _bucket",
    "endpoint_label": "label naming the endpoint (route template)",
    "status_label": "label holding the HTTP status",
    "status_match": "code: exact codes like 500; class: grouped values like 5xx",
    "selector": 'label matchers that pick the API\'s series, e.g. job="api" (default: none)',
    "pool_connections": "gauge: pool connections open",
    "pool_max": "gauge: pool maximum size",
    "pool_idle": "gauge: pool connections idle (optional)",
    "pool_waiters": "gauge: requests waiting for a pool connection",
    "readiness_path": "readiness endpoint",
    "readiness_components": "dotted JSON path of the components object in the readiness body ('' = the body)",
    "readiness_status": "status field of each readiness component",
    "readiness_ok": "status values that mean ready (case-insensitive)",
    "readiness_failed": "status values that mean not ready (others are UNKNOWN)",
    "readiness_db": "readiness component name of the database",
    "readiness_auth": "readiness component name of authentication",
    "readiness_storage": "readiness component name of dataset storage",
    "experiments_key": "dotted JSON path of the experiments list ('' = the body is the list)",
    "experiments_id": "experiment id field",
    "experiments_name": "experiment name field",
    "experiments_state": "experiment state field",
    "experiments_running": "state values of a running experiment",
    "experiments_times": "progress time fields, first present wins",
}
FIELDS = tuple(f.name for f in fields(SignalMap) if f.name not in ("name", "why"))
assert set(FIELDS) == set(PARSE) == set(HELP), "every field has a parser and a help line"


@dataclass(frozen=True)
class Preset:
    """What one exporter library writes with its defaults (its request metrics only)."""

    name: str
    library: str
    requests: str
    duration: str
    endpoint_label: str
    status_label: str
    status_match: str

    def apply(self, base: SignalMap, why: str) -> SignalMap:
        return replace(base, requests=self.requests, duration=self.duration, endpoint_label=self.endpoint_label,
                       status_label=self.status_label, status_match=self.status_match, name=self.name, why=why)


# Each written from the library's own defaults, read in the installed library (versions named).
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("playbook", "the playbook (prometheus-client Counter and Histogram)",
           "http_requests_total", "http_request_duration_seconds", "path", "status", "code"),
    # prometheus-fastapi-instrumentator 8.1: metrics.default(): http_requests_total{handler,method,status}
    # with should_group_status_codes=True ("2xx"), http_request_duration_seconds{handler,method} with
    # latency_lowr_buckets (0.1, 0.5, 1).
    Preset("prometheus-fastapi-instrumentator", "prometheus-fastapi-instrumentator",
           "http_requests_total", "http_request_duration_seconds", "handler", "status", "class"),
    # starlette_exporter 0.24: PrometheusMiddleware(prefix="starlette"): {prefix}_requests_total and
    # {prefix}_request_duration_seconds with labels method, path, status_code (app_name).
    Preset("starlette_exporter", "starlette_exporter",
           "starlette_requests_total", "starlette_request_duration_seconds", "path", "status_code", "code"),
    Preset("starlette_exporter-http", 'starlette_exporter with prefix="http"',
           "http_requests_total", "http_request_duration_seconds", "path", "status_code", "code"),
    # OpenTelemetry HTTP server semantic conventions (http.server.request.duration, seconds) through
    # opentelemetry-exporter-prometheus: a histogram whose _count is the request counter.
    Preset("opentelemetry", "OpenTelemetry (http.server.request.duration via the Prometheus exporter)",
           "http_server_request_duration_seconds_count", "http_server_request_duration_seconds",
           "http_route", "http_response_status_code", "code"),
    # prometheus_flask_exporter 0.23: flask_http_request_total has no path label; the duration
    # histogram flask_http_request_duration_seconds{method,path,status} counts every request.
    Preset("prometheus_flask_exporter", "prometheus_flask_exporter",
           "flask_http_request_duration_seconds_count", "flask_http_request_duration_seconds",
           "path", "status", "code"),
)}


# ``[signals] preset = ...`` in a profile, or ``--set signals.preset=...``, names the preset.
RENAMED = {"signals_preset": "signals"}


def keys(make: Callable[..., Any]) -> list[Any]:
    """The configuration keys of the map, built with ``config.Key``: the preset, then one per field."""
    return [make("signals", parse_preset, AUTO,
                 f"Signal map preset: auto (detect from the live series) or one of {', '.join(PRESETS)}"),
            *(make(f"signals_{f}", parse_field(f), None, f"Signal map: {HELP[f]}") for f in FIELDS)]


def parse_preset(value: Any) -> str:
    text = str(value).strip()
    if text != AUTO and text not in PRESETS:
        raise ValueError(f"unknown signal preset {text!r} (known: {', '.join((AUTO, *PRESETS))})")
    return text


def parse_field(name: str) -> Callable[[Any], str]:
    """The configuration parser of one field (for ``signals_<field>``)."""

    def parse(value: Any) -> str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        return PARSE[name](str(value).strip())

    return parse


def overrides(values: Mapping[str, Any]) -> dict[str, str]:
    """The fields set in the configuration (``signals_<field>`` keys whose value is not None)."""
    return {f: str(values[f"signals_{f}"]) for f in FIELDS if values.get(f"signals_{f}") is not None}


def chosen(preset: str, values: Mapping[str, Any]) -> SignalMap:
    """The map for a named preset with the configured fields on top (not for ``auto``)."""
    p = PRESETS[preset]
    why = "set in the configuration" if preset != "playbook" else "the playbook's names (the default preset)"
    return with_overrides(p.apply(SignalMap(), why), overrides(values))


def with_overrides(base: SignalMap, fields_set: Mapping[str, str]) -> SignalMap:
    if not fields_set:
        return base
    names = ", ".join(f"{k}={v}" for k, v in fields_set.items())
    return replace(base, **fields_set, why=f"{base.why}; set: {names}")


# -- detection ----------------------------------------------------------------------------------

CLASS_VALUE = re.compile(r"[1-5][xX][xX]")
CODE_VALUE = re.compile(r"[1-5][0-9][0-9]")


def candidates(fields_set: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """The request counters and status labels detection asks about."""
    names = list(dict.fromkeys([*(p.requests for p in PRESETS.values()), *(
        [fields_set["requests"]] if "requests" in fields_set else [])]))
    statuses = list(dict.fromkeys([*(p.status_label for p in PRESETS.values()), *(
        [fields_set["status_label"]] if "status_label" in fields_set else [])]))
    return names, statuses


def detection_query(fields_set: Mapping[str, str]) -> str:
    """One bounded query: one series per request counter and status value, with all its labels."""
    names, statuses = candidates(fields_set)
    pattern = "|".join(re.escape(n) for n in names).replace("\\", "\\\\")
    inner = ",".join(m for m in (fields_set.get("selector", ""), f'__name__=~"{pattern}"') if m)
    return f"topk by (__name__, {', '.join(statuses)}) (1, {{{inner}}})"


@dataclass(frozen=True)
class Shape:
    """What the detection query saw: per request counter, its label names and status values."""

    labels: dict[str, frozenset[str]]
    values: dict[tuple[str, str], frozenset[str]]

    @classmethod
    def of(cls, series: Iterable[Mapping[str, str]]) -> Shape:
        labels: dict[str, set[str]] = {}
        values: dict[tuple[str, str], set[str]] = {}
        for s in series:
            name = s.get("__name__", "")
            if not name:
                continue
            labels.setdefault(name, set()).update(k for k in s if k != "__name__")
            for k, v in s.items():
                if k != "__name__":
                    values.setdefault((name, k), set()).add(v)
        return cls({k: frozenset(v) for k, v in labels.items()},
                   {k: frozenset(v) for k, v in values.items()})

    def seen(self, name: str) -> str:
        """'NAME has labels a, b with STATUS values ...' or 'NAME has no series'."""
        if name not in self.labels:
            return f"{name} has no series"
        return f"{name} has labels {', '.join(sorted(self.labels[name])) or '(none)'}"

    def status_form(self, name: str, label: str) -> str | None:
        """``class`` or ``code`` from the status label's values; None when they are neither."""
        vals = self.values.get((name, label), frozenset())
        if vals and all(CLASS_VALUE.fullmatch(v) for v in vals):
            return "class"
        if vals and all(CODE_VALUE.fullmatch(v) for v in vals):
            return "code"
        return None

    def missing(self, m: SignalMap) -> list[str]:
        """What the map needs of the request counter that the live series lack (empty when fine)."""
        if m.requests not in self.labels:
            return [f"no series of {m.requests}"]
        have = self.labels[m.requests]
        return [f"no label {label}" for label in (m.endpoint_label, m.status_label) if label not in have]

    def explain(self, names: Iterable[str]) -> str:
        return "; ".join(self.seen(n) for n in names)


@dataclass(frozen=True)
class Detected:
    """The outcome of ``auto``: a map, or why none fits (the checks that read it are UNKNOWN)."""

    map: SignalMap | None
    reason: str


def detect(shape: Shape, fields_set: Mapping[str, str]) -> Detected:
    """The preset whose request counter and labels the live series carry, the configured fields on top.

    How status is written (exact codes or classes) is read from the status label's values, unless
    ``status_match`` is set: the instrumentator with grouping off writes codes, for one.
    """
    request_set = {k: v for k, v in fields_set.items() if k in REQUEST_FIELDS or k == "selector"}
    fits = []
    for preset in PRESETS.values():
        m = with_overrides(preset.apply(SignalMap(), ""), request_set)
        form = None if shape.missing(m) else shape.status_form(m.requests, m.status_label)
        if form is not None:
            fits.append((preset, replace(m, status_match=fields_set.get("status_match", form))))
    names, _ = candidates(fields_set)
    present = [n for n in names if n in shape.labels]
    if not fits:
        if present:
            return Detected(None, "auto: no preset fits the live series: " + shape.explain(present))
        return Detected(None, f"auto: no series of any request counter a preset knows ({', '.join(names)})")
    preset, m = fits[0]
    vals = sorted(shape.values.get((m.requests, m.status_label), frozenset()))
    why = (f"auto: {m.requests} has labels {', '.join(sorted(shape.labels[m.requests]))} "
           f"with {m.status_label} values {', '.join(vals[:6])}{' ...' if len(vals) > 6 else ''} "
           f"-> {preset.name}")
    if len(fits) > 1:
        why += f" (also fits: {', '.join(p.name for p, _ in fits[1:])})"
    rest = {k: v for k, v in fields_set.items() if k not in request_set}
    return Detected(with_overrides(replace(m, name=preset.name, why=why), rest), why)


RUN_KEY = "signal map"  # the run's fact: the Detected map (components/_signals.py fetches it)


def note(detected: Any, preset: str) -> str:
    """Which map a run used and why, for the reports: what ``auto`` found, if a check asked."""
    if isinstance(detected, Detected):
        return detected.map.describe() if detected.map is not None else detected.reason
    if preset == AUTO:
        return "auto: not detected (no check read a request metric)"
    return f"{preset}: set in the configuration"
