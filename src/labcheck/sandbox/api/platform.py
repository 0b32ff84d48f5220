"""One API process's platform: its settings, database, storage, auth, metrics and background tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from labcheck.sandbox.api.auth import Auth
from labcheck.sandbox.api.db import Database
from labcheck.sandbox.api.settings import ApiSettings
from labcheck.sandbox.api.storage import Storage
from labcheck.sandbox.api.traffic import traffic

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0)


class Metrics:
    """The API's Prometheus metrics.

    Flavour `playbook`: its own registry, with the request counter and histogram under the
    playbook's names. Other flavours: a library records the requests in prometheus-client's
    default REGISTRY (see instrument.py), and the app's gauges join them there.
    """

    requests: Counter | None = None
    duration: Histogram | None = None

    def __init__(self, settings: ApiSettings, db: Database) -> None:
        if settings.flavor != "playbook":
            self.registry = REGISTRY
        else:
            self.registry = CollectorRegistry()
            self.requests = Counter(
                "http_requests_total",
                "HTTP requests by route template and status code.",
                ["path", "status"],
                registry=self.registry,
            )
            self.duration = Histogram(
                "http_request_duration_seconds",
                "HTTP request duration by route template.",
                ["path"],
                buckets=LATENCY_BUCKETS,
                registry=self.registry,
            )
        pool_gauges: list[tuple[str, str, Callable[[], float]]] = [
            ("db_pool_connections", "Connections currently open in the database pool.",
             lambda: db.pool_stat("pool_size")),
            ("db_pool_max_connections", "Maximum size of the database pool.",
             lambda: settings.pool_max),
            ("db_pool_idle_connections", "Pool connections open and not checked out.",
             lambda: db.pool_stat("pool_available")),
            ("db_pool_waiters", "Requests waiting for a database pool connection.",
             lambda: db.pool_stat("requests_waiting")),
        ]
        for name, help_text, read in pool_gauges:
            Gauge(name, help_text, registry=self.registry).set_function(read)
        self.experiments_running = Gauge(
            "experiments_running",
            "Experiments in state running, as last read from the database.",
            registry=self.registry,
        )
        Gauge(
            "storage_quota_bytes",
            "Quota of the datasets bucket.",
            registry=self.registry,
        ).set_function(lambda: settings.quota_bytes)


class Platform:
    """State and behaviour of one API process."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.db = Database(settings)
        self.storage = Storage(settings)
        self.auth = Auth(settings.jwt_secret)
        self.metrics = Metrics(settings, self.db)
        self.tasks: list[asyncio.Task[Any]] = []

    def start(self) -> None:
        """Start the background work: pool and schema, bucket and seed, heartbeat, traffic."""
        for coro in (
            self.db.bootstrap(),
            self.storage.bootstrap(),
            self.db.heartbeat(self.metrics.experiments_running.set),
            traffic(self.settings, self.auth.client_token),
        ):
            self.tasks.append(asyncio.create_task(coro))
