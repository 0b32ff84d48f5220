"""The API's request metrics in each flavour: which library's middleware counts the requests, and
/metrics serving the registry that library writes to (the app's own gauges are registered there too).

Every library is set up as its documentation shows, with its defaults: no imitation of one.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry
from prometheus_client.exposition import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from labcheck.sandbox.api.settings import APP_NAME


def instrument(app: Starlette, flavor: str, registry: CollectorRegistry) -> None:
    """Add `flavor`'s request instrumentation and the /metrics route to app.

    `registry` holds the app's own gauges: its own registry for `playbook` (whose request metrics
    the app's Instrumentation middleware records), the default REGISTRY for the libraries, which
    write there by default.
    """
    if flavor != "playbook" and registry is not REGISTRY:
        raise ValueError(f"flavour {flavor}: the app's gauges must be in the library's registry")
    if flavor == "playbook":
        app.add_route("/metrics", _exposition(registry), methods=["GET"])
    elif flavor == "instrumentator":
        from prometheus_fastapi_instrumentator import Instrumentator

        # Works on plain Starlette: instrument() adds a middleware, expose() a route.
        Instrumentator().instrument(app).expose(app)
    elif flavor in ("starlette-exporter", "starlette-exporter-http"):
        from starlette_exporter import PrometheusMiddleware, handle_metrics

        if flavor == "starlette-exporter-http":
            app.add_middleware(PrometheusMiddleware, prefix="http")
        else:
            app.add_middleware(PrometheusMiddleware)
        app.add_route("/metrics", handle_metrics, methods=["GET"])
    elif flavor == "otel":
        _instrument_otel(app)
        app.add_route("/metrics", _exposition(REGISTRY), methods=["GET"])
    else:
        raise ValueError(f"unknown flavour {flavor!r}")


def _instrument_otel(app: Starlette) -> None:
    # opentelemetry-instrumentation 0.66b1 still emits the old HTTP conventions by default
    # (http.server.duration in ms, http_target/http_status_code); the stable ones
    # (http.server.request.duration in s, http.route, http.response.status_code) only with this
    # opt-in, read when the middleware is first built. This process serves one app: set it here.
    os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "http"
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.instrumentation.starlette import StarletteInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource

    # The reader registers its collector in prometheus-client's default REGISTRY.
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader()],
        resource=Resource.create({"service.name": APP_NAME}),
    )
    StarletteInstrumentor.instrument_app(app, meter_provider=provider)


def _exposition(registry: CollectorRegistry) -> Callable[[Request], Awaitable[Response]]:
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
