"""The sandbox API in every flavour, on the real exporter libraries: their metrics on /metrics,
and the faults moving them; and the readiness and experiments shapes.

One PostgreSQL, moto and S3 gateway for the module; one API process per flavour, in turn.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import _procs
import httpx
import pytest
from _platform import (
    APP_ROLE,
    DB_NAME,
    POOL_MAX,
    Services,
    Stack,
    api_config,
    new_secret,
    services,
)

from labcheck.sandbox.flavours import FLAVORS, parse_shape
from labcheck.sandbox.state import SandboxError

APP_GAUGES = ("db_pool_connections", "db_pool_max_connections", "db_pool_idle_connections",
              "db_pool_waiters", "experiments_running", "storage_quota_bytes")
CLIENT_LE = ("0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1.0",
             "2.5", "5.0", "7.5", "10.0", "+Inf")  # prometheus-client's default buckets


@dataclass(frozen=True)
class Spec:
    """What one flavour's library exposes, as its documentation and source say."""

    counter: str  # the sample counting requests
    route: str  # the label naming the route template
    status: str  # the label naming the status
    labels: frozenset[str]  # the counter's label names
    histogram: str  # the duration histogram's bucket samples
    buckets: tuple[str, ...]  # their le values
    grouped: bool = False  # status classes ("5xx") rather than codes

    def code(self, status: int) -> str:
        return f"{status // 100}xx" if self.grouped else str(status)


SPECS = {
    "playbook": Spec(
        "http_requests_total", "path", "status", frozenset({"path", "status"}),
        "http_request_duration_seconds_bucket",
        ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.0", "2.5", "5.0",
         "10.0", "+Inf"),
    ),
    "instrumentator": Spec(
        "http_requests_total", "handler", "status", frozenset({"handler", "method", "status"}),
        "http_request_duration_seconds_bucket", ("0.1", "0.5", "1.0", "+Inf"), grouped=True,
    ),
    "starlette-exporter": Spec(
        "starlette_requests_total", "path", "status_code",
        frozenset({"app_name", "method", "path", "status_code"}),
        "starlette_request_duration_seconds_bucket", CLIENT_LE,
    ),
    "starlette-exporter-http": Spec(
        "http_requests_total", "path", "status_code",
        frozenset({"app_name", "method", "path", "status_code"}),
        "http_request_duration_seconds_bucket", CLIENT_LE,
    ),
    "otel": Spec(
        "http_server_request_duration_seconds_count", "http_route", "http_response_status_code",
        frozenset({"http_request_method", "http_response_status_code", "http_route",
                   "network_protocol_version", "url_scheme", "otel_scope_name",
                   "otel_scope_version", "otel_scope_schema_url"}),
        "http_server_request_duration_seconds_bucket",
        ("0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1", "2.5",
         "5", "7.5", "10", "+Inf"),
    ),
}


@pytest.fixture(scope="module")
def backing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """PostgreSQL, moto and the S3 gateway, shared by the module's APIs."""
    with services(tmp_path_factory.mktemp("flavours")) as run:
        pg = run.pg = _procs.Postgres.init()
        pg.start()
        run.dsn = pg.create_app_db(APP_ROLE, secrets.token_hex(12), DB_NAME)
        run.wait_storage()
        yield run


def start_api(backing: Services, name: str, **extra: Any) -> tuple[_procs.Proc, Stack]:
    port = _procs.free_port()
    url = f"http://127.0.0.1:{port}"
    jwt_secret = new_secret()
    config = api_config(port=port, dsn=backing.dsn, moto_url=backing.moto_url,
                        s3gw_url=backing.s3gw_url, jwt_secret=jwt_secret,
                        admin_key=backing.admin_key, log_dir=backing.log_dir, **extra)
    proc = _procs.start_module(name, "labcheck.sandbox.api", config, backing.log_dir)
    stack = Stack(api_url=url, s3gw_url=backing.s3gw_url, moto_url=backing.moto_url,
                  admin_key=backing.admin_key, jwt_secret=jwt_secret, pg=backing.pg,
                  app_dsn=backing.dsn, api_config=config, log_dir=backing.log_dir,
                  client=httpx.Client(base_url=url, timeout=15.0))
    try:
        _procs.wait_for(_procs.alive_and(proc, lambda: stack.get("/health/ready").status_code == 200),
                        30, f"{name} ready", interval=0.1)
    except BaseException:
        proc.stop()
        stack.client.close()
        raise
    return proc, stack


@pytest.fixture(scope="module", params=FLAVORS)
def api(request: pytest.FixtureRequest, backing: Services) -> Iterator[tuple[Spec, Stack]]:
    flavor = request.param
    proc, stack = start_api(backing, f"api-{flavor}", flavor=flavor)
    try:
        yield SPECS[flavor], stack
    finally:
        stack.client.close()
        assert proc.stop(timeout=10) == 0, proc.log_tail()
    assert "Traceback" not in proc.log_path.read_text(errors="replace"), proc.log_tail()


@pytest.fixture
def healed(api: tuple[Spec, Stack]) -> Iterator[tuple[Spec, Stack]]:
    yield api
    api[1].heal()


def requests(spec: Spec, samples: dict[Any, float], route: str | None = None) -> dict[str, float]:
    """The flavour's request count by status (of route, or of all routes)."""
    counts: dict[str, float] = {}
    for (name, labels), value in samples.items():
        label = dict(labels)
        if name == spec.counter and (route is None or label.get(spec.route) == route):
            counts[label[spec.status]] = counts.get(label[spec.status], 0.0) + value
    return counts


def grown(before: dict[str, float], after: dict[str, float], status: str | None = None) -> float:
    if status is None:
        return sum(after.values()) - sum(before.values())
    return after.get(status, 0.0) - before.get(status, 0.0)


def wait_requests(spec: Spec, stack: Stack, n: int, what: str) -> tuple[dict[str, float], ...]:
    """Wait for n more requests to /experiments; (before, after) of /experiments and of all."""
    samples = stack.metrics()
    before, before_all = requests(spec, samples, "/experiments"), requests(spec, samples)

    def enough() -> tuple[dict[str, float], ...] | None:
        m = stack.metrics()
        after = requests(spec, m, "/experiments")
        return (before, after, before_all, requests(spec, m)) if grown(before, after) >= n else None

    return _procs.wait_for(enough, 10, what, 0.1)


def test_the_library_metrics_and_the_app_gauges(api: tuple[Spec, Stack]) -> None:
    spec, stack = api
    routes = ("/experiments", "/datasets", "/health", "/health/ready")

    def every_route_counted() -> dict[Any, float] | None:
        m = stack.metrics()
        return m if all(requests(spec, m, r).get(spec.code(200)) for r in routes) else None

    samples = _procs.wait_for(every_route_counted, 10, f"client traffic on {routes}", 0.1)
    counter_labels = {labels for (name, labels) in samples if name == spec.counter}
    for labels in counter_labels:
        names = {k for k, _ in labels}
        assert spec.labels <= names <= spec.labels | {"error_type"}, names
    buckets = [dict(labels)["le"] for (name, labels) in samples if name == spec.histogram
               and dict(labels)[spec.route] == "/experiments"]
    assert tuple(sorted(set(buckets), key=lambda le: float(le))) == spec.buckets
    for gauge in APP_GAUGES:
        assert any(name == gauge for name, _ in samples), gauge
    assert samples[("db_pool_max_connections", frozenset())] == POOL_MAX
    if spec.grouped:  # the instrumentator's default high-resolution histogram, no labels
        assert samples[("http_request_duration_highr_seconds_bucket", frozenset({("le", "60.0")}))]


def test_error_rate_answers_500_through_the_library(healed: tuple[Spec, Stack]) -> None:
    spec, stack = healed
    before = requests(spec, stack.metrics(), "/experiments")
    stack.fault("error-rate", share=0.6)
    statuses = [stack.get("/experiments", headers=stack.token()).status_code for _ in range(20)]
    assert set(statuses) == {200, 500}
    failed = statuses.count(500)
    _procs.wait_for(
        lambda: grown(before, requests(spec, stack.metrics(), "/experiments"), spec.code(500)) >= failed,
        10, f"{failed} 500s counted as {spec.status}={spec.code(500)}", 0.1,
    )


def test_latency_is_observed_by_the_library(healed: tuple[Spec, Stack]) -> None:
    spec, stack = healed

    def slow(samples: dict[Any, float]) -> float:  # observations over 1 s on /experiments
        by_le: dict[float, float] = {}
        for (name, labels), value in samples.items():
            label = dict(labels)
            if name == spec.histogram and label[spec.route] == "/experiments":
                le = float(label["le"])
                by_le[le] = by_le.get(le, 0.0) + value
        return by_le.get(float("inf"), 0.0) - by_le.get(1.0, 0.0)

    before = slow(stack.metrics())
    stack.fault("latency", seconds=1.2)
    started = time.monotonic()
    assert stack.get("/experiments", headers=stack.token()).status_code == 200
    assert time.monotonic() - started >= 1.2
    assert slow(stack.metrics()) >= before + 1


def test_rotated_secret_makes_the_clients_401s_rise(healed: tuple[Spec, Stack]) -> None:
    spec, stack = healed
    stack.fault("auth-secret-rotated", new_secret=new_secret())
    before, after, before_all, after_all = wait_requests(spec, stack, 30, "client traffic")
    refused = grown(before, after, spec.code(401))
    assert refused / grown(before_all, after_all) > 0.2  # of all requests, every route


def test_clock_skew_refuses_fresh_tokens(healed: tuple[Spec, Stack]) -> None:
    spec, stack = healed
    stack.fault("clock-skew")  # 120 s ahead
    fresh = stack.get("/experiments", headers=stack.token(ttl=60))
    assert fresh.status_code == 401 and fresh.json()["detail"] == "token expired"
    before, after, _, _ = wait_requests(spec, stack, 15, "client traffic")
    assert grown(before, after, spec.code(401)) == grown(before, after)
    stack.fault("clock-skew", seconds=-120)
    early = stack.get("/experiments", headers=stack.token(ttl=3600))
    assert early.status_code == 401 and early.json()["detail"] == "token not yet valid"


def test_shapes_change_the_bodies(backing: Services) -> None:
    shape = parse_shape(["readiness_components=checks", "readiness_names=database,jwt,s3",
                         "experiments_shape=items"])
    proc, stack = start_api(backing, "api-shaped", flavor="instrumentator", traffic_rps=0, **shape)
    try:
        ready = stack.get("/health/ready").json()
        assert set(ready) == {"status", "checks"}
        assert {name: c["status"] for name, c in ready["checks"].items()} == {
            "database": "ok", "jwt": "ok", "s3": "ok"}
        listed = stack.get("/experiments", headers=stack.token()).json()
        assert set(listed) == {"items"} and listed["items"]
        for item in listed["items"]:
            assert set(item) == {"id", "name", "status", "created_at"}
        assert {i["status"] for i in listed["items"]} >= {"running", "queued"}
    finally:
        stack.client.close()
        assert proc.stop(timeout=10) == 0, proc.log_tail()


@pytest.mark.parametrize(("items", "error"), [
    (["nope=1"], "KEY one of readiness_components"),
    (["experiments_shape=list"], "one of experiments, items"),
    (["readiness_names=db,auth"], "three distinct names"),
    (["readiness_names=a,a,b"], "three distinct names"),
    (["readiness_components="], "must not be empty"),
])
def test_bad_shape_options_are_one_line_errors(items: list[str], error: str) -> None:
    with pytest.raises(SandboxError, match=error):
        parse_shape(items)
