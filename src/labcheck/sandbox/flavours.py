"""The sandbox API's flavours (which exporter library instruments it) and its response shapes.

Light on purpose: the manager, the CLI and the API all read these tables; the libraries
themselves are imported by `labcheck.sandbox.api.instrument` only, in the API process.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from labcheck.sandbox.state import SandboxError

DEFAULT_FLAVOR = "playbook"

# Each flavour's request counter as Prometheus stores it: what `up` waits for before it says the
# sandbox is ready (two scrapes of traffic inside the window).
REQUEST_COUNTER: dict[str, str] = {
    "playbook": "http_requests_total",  # prometheus-client Counter, the playbook's names
    "instrumentator": "http_requests_total",  # prometheus-fastapi-instrumentator defaults
    "starlette-exporter": "starlette_requests_total",  # starlette_exporter defaults
    "starlette-exporter-http": "http_requests_total",  # starlette_exporter, prefix="http"
    # OpenTelemetry has no request counter: the duration histogram's count is one.
    "otel": "http_server_request_duration_seconds_count",
}
FLAVORS = tuple(REQUEST_COUNTER)
# What instruments the API in each flavour (for `up` and `status`).
FLAVOR_LIBRARY: dict[str, str] = {
    "playbook": "prometheus-client Counter and Histogram, the playbook's names",
    "instrumentator": "prometheus-fastapi-instrumentator, Instrumentator().instrument(app)",
    "starlette-exporter": "starlette_exporter PrometheusMiddleware, defaults",
    "starlette-exporter-http": 'starlette_exporter PrometheusMiddleware, prefix="http"',
    "otel": "OpenTelemetry SDK, Starlette instrumentation, Prometheus reader (stable HTTP semconv)",
}

# The API's data routes: `/experiments` and `/datasets`, and with `up --endpoints N` the same two
# again under /s1 ... /s(N-1), each its own route (its own series in Prometheus), all with traffic.
DATA_ROUTES = ("/experiments", "/datasets")


def endpoint_paths(endpoints: int) -> list[str]:
    """Every data route of an API started with ``endpoints`` endpoint sets (1: the playbook's two)."""
    return [f"/s{i}{route}" if i else route for i in range(max(1, endpoints)) for route in DATA_ROUTES]


def traffic_rps(endpoints: int) -> float:
    """Background requests per second: 20, and half a request more per extra endpoint set. The
    traffic takes the routes in turn, so at 50 sets each /datasets route still gets a request every
    6 s, inside every 10 s rate window, while the API (one process, ten pooled connections, on the
    same cores as everything else) is not overrun by its own clients."""
    return 20.0 + 0.5 * (max(1, endpoints) - 1)


# The readiness components, in this order, under their default names.
READINESS_COMPONENTS = ("db", "auth", "storage")
EXPERIMENTS_SHAPES = ("experiments", "items")
SHAPE_DEFAULTS: dict[str, Any] = {
    # the key of /health/ready's body the components sit under
    "readiness_components": "components",
    # the names of the db, auth and storage components, in that order
    "readiness_names": list(READINESS_COMPONENTS),
    # "experiments": {"experiments": [{id, name, state, started_at, updated_at}]}
    # "items":       {"items": [{id, name, status, created_at}]}
    "experiments_shape": "experiments",
}


def check_flavor(flavor: str) -> str:
    if flavor not in REQUEST_COUNTER:
        raise SandboxError(f"unknown flavour {flavor!r}; flavours: {', '.join(FLAVORS)}")
    return flavor


def parse_shape(pairs: Iterable[str]) -> dict[str, Any]:
    """The response shape from `--set KEY=VALUE` items, over the defaults; one-line errors."""
    shape = {k: (list(v) if isinstance(v, list) else v) for k, v in SHAPE_DEFAULTS.items()}
    for item in pairs:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in SHAPE_DEFAULTS:
            raise SandboxError(
                f"--set expects KEY=VALUE with KEY one of {', '.join(SHAPE_DEFAULTS)}; got {item!r}"
            )
        shape[key] = value
    return check_shape(shape)


def check_shape(shape: dict[str, Any]) -> dict[str, Any]:
    """shape with readiness_names as a list, or a SandboxError naming the bad value."""
    names = shape["readiness_names"]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    if len(names) != len(READINESS_COMPONENTS) or not all(names) or len(set(names)) != len(names):
        raise SandboxError(
            f"readiness_names={','.join(names)!r}: give three distinct names, for "
            f"{', '.join(READINESS_COMPONENTS)} in that order"
        )
    if not str(shape["readiness_components"]).strip():
        raise SandboxError("readiness_components must not be empty")
    if shape["experiments_shape"] not in EXPERIMENTS_SHAPES:
        raise SandboxError(
            f"experiments_shape={shape['experiments_shape']!r}: one of {', '.join(EXPERIMENTS_SHAPES)}"
        )
    return {**shape, "readiness_names": list(names)}
