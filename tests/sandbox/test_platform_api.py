"""The sandbox platform API on real processes: PostgreSQL, moto, the S3 gateway and the API."""

from __future__ import annotations

import math
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import _procs
import httpx
import psycopg
import pytest
from _platform import (
    APP_ROLE,
    AWS,
    BUCKET,
    DB_NAME,
    MAX_CONNECTIONS,
    POOL_MAX,
    QUOTA,
    Stack,
    api_config,
    metric,
    new_secret,
    services,
)

from labcheck.sandbox.api.auth import sign_token


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("platform-api")
    with services(log_dir) as run:
        # Everything starts at once; PostgreSQL last, after the API is up.
        admin_key, moto_url, s3gw_url = run.admin_key, run.moto_url, run.s3gw_url
        app_password = secrets.token_hex(12)
        pg_port = _procs.free_port()
        app_dsn = f"postgresql://{APP_ROLE}:{app_password}@127.0.0.1:{pg_port}/{DB_NAME}"
        jwt_secret = new_secret()
        api_port = _procs.free_port()
        api_url = f"http://127.0.0.1:{api_port}"
        config = api_config(port=api_port, dsn=app_dsn, moto_url=moto_url, s3gw_url=s3gw_url,
                            jwt_secret=jwt_secret, admin_key=admin_key, log_dir=log_dir)
        api = _procs.start_module("api", "labcheck.sandbox.api", config, log_dir)
        run.procs.append(api)
        pg = run.pg = _procs.Postgres.init(max_connections=MAX_CONNECTIONS, port=pg_port)
        _procs.wait_http(api, api_url + "/health")
        # The API came up without PostgreSQL.
        early = httpx.get(api_url + "/health/ready", timeout=10)
        early_health = httpx.get(api_url + "/health", timeout=5).status_code
        pg.start()
        pg.create_app_db(APP_ROLE, app_password, DB_NAME)
        run.wait_storage()
        _procs.wait_for(
            lambda: httpx.get(api_url + "/health/ready", timeout=5).status_code == 200,
            30,
            "the API to become ready once PostgreSQL is up",
            interval=0.1,
        )
        with httpx.Client(base_url=api_url, timeout=15.0) as client:
            yield Stack(
                api_url=api_url,
                s3gw_url=s3gw_url,
                moto_url=moto_url,
                admin_key=admin_key,
                jwt_secret=jwt_secret,
                pg=pg,
                app_dsn=app_dsn,
                api_config=config,
                log_dir=log_dir,
                early_ready=(early.status_code, early.json()),
                early_health=early_health,
                client=client,
            )


@pytest.fixture(autouse=True)
def _healed(stack: Stack) -> Iterator[None]:
    yield
    stack.heal()


def app_sessions(stack: Stack, state: str | None = None) -> int:
    query = "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND application_name = %s"
    args: list[Any] = [APP_ROLE, "llm-research-api"]
    if state:
        query += " AND state = %s"
        args.append(state)
    return int(stack.sql(query, *args)[0][0])


def test_api_started_while_postgres_was_down_and_recovered(stack: Stack) -> None:
    status, body = stack.early_ready
    assert stack.early_health == 200
    assert status == 503
    assert body["status"] == "degraded"
    assert body["components"]["db"]["status"] == "error"
    assert body["components"]["auth"]["status"] == "ok"
    ready = stack.get("/health/ready")
    assert ready.status_code == 200
    assert {name: c["status"] for name, c in ready.json()["components"].items()} == {
        "db": "ok",
        "storage": "ok",
        "auth": "ok",
    }


def test_experiments_need_a_valid_token(stack: Stack) -> None:
    missing = stack.get("/experiments")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    forged = stack.get("/experiments", headers=stack.token(secrets.token_urlsafe(32)))
    assert forged.status_code == 401
    assert 'error="invalid_token"' in forged.headers["www-authenticate"]
    expired = stack.get("/experiments", headers=stack.token(ttl=-60))
    assert expired.status_code == 401
    assert "expired" in expired.json()["detail"]

    ok = stack.get("/experiments", headers=stack.token())
    assert ok.status_code == 200
    listed = ok.json()["experiments"]
    rows = stack.sql("SELECT id, name, state FROM experiments ORDER BY id")
    assert [(e["id"], e["name"], e["state"]) for e in listed] == [tuple(r) for r in rows]
    assert {e["state"] for e in listed} >= {"running", "queued", "succeeded", "failed"}
    now = datetime.now(UTC)
    for exp in listed:
        if exp["state"] == "running":
            updated = datetime.fromisoformat(exp["updated_at"])
            assert now - updated < timedelta(seconds=60), exp


def test_metrics_come_from_traffic_and_the_real_pool(stack: Stack) -> None:
    before = stack.metrics()
    for _ in range(3):
        assert stack.get("/experiments").status_code == 401

    def traffic_counted() -> dict[Any, float] | None:
        after = stack.metrics()
        grew = metric(after, "http_requests_total", path="/experiments", status="200") > metric(
            before, "http_requests_total", path="/experiments", status="200"
        )
        return after if grew else None

    after = _procs.wait_for(traffic_counted, 10, "background traffic to be counted", 0.2)
    assert metric(after, "http_requests_total", path="/experiments", status="401") >= 3 + metric(
        before, "http_requests_total", path="/experiments", status="401"
    )
    assert metric(after, "http_requests_total", path="/datasets", status="200") > 0
    paths = {dict(labels).get("path") for (name, labels) in after if name == "http_requests_total"}
    assert "/metrics" not in paths
    assert not any(p and p.startswith("/admin") for p in paths)
    buckets = {
        dict(labels)["le"]
        for (name, labels) in after
        if name == "http_request_duration_seconds_bucket" and dict(labels)["path"] == "/experiments"
    }
    assert {"0.05", "0.1", "0.25", "0.5", "1.0", "2.0", "2.5", "5.0", "10.0", "+Inf"} <= buckets
    assert metric(after, "db_pool_max_connections") == POOL_MAX
    assert metric(after, "experiments_running") >= 2

    def pool_matches_postgres() -> bool:
        exposed = metric(stack.metrics(), "db_pool_connections")
        return 1 <= exposed <= POOL_MAX and exposed == app_sessions(stack)

    _procs.wait_for(pool_matches_postgres, 10, "db_pool_connections == backends of the API", 0.2)


def test_admin_needs_the_key(stack: Stack) -> None:
    url = f"{stack.api_url}/admin/faults"
    assert httpx.get(url, timeout=5).status_code == 403
    assert httpx.get(url, headers={"X-Admin-Key": "wrong"}, timeout=5).status_code == 403
    assert httpx.post(url + "/latency", json={}, timeout=5).status_code == 403
    assert httpx.delete(url, timeout=5).status_code == 403
    unknown = httpx.post(url + "/no-such-fault", headers=stack.admin, timeout=5)
    assert unknown.status_code == 404
    assert "latency" in unknown.json()["known"]
    assert httpx.get(url, headers=stack.admin, timeout=5).json()["active"] == {}


def test_error_rate(stack: Stack) -> None:
    stack.fault("error-rate", share=0.5)
    statuses = [stack.get("/experiments", headers=stack.token()).status_code for _ in range(40)]
    assert set(statuses) == {200, 500}
    assert 5 <= statuses.count(500) <= 35
    assert all(stack.get("/health").status_code == 200 for _ in range(10))
    assert metric(stack.metrics(), "http_requests_total", path="/experiments", status="500") > 0
    stack.heal()
    assert all(stack.get("/datasets").status_code == 200 for _ in range(15))


def test_latency_pushes_p95_over_two_seconds(stack: Stack) -> None:
    stack.fault("latency", seconds=2.5)
    start = time.monotonic()
    assert stack.get("/health").status_code == 200
    assert time.monotonic() - start < 1.0
    before = stack.metrics()
    start = time.monotonic()
    assert stack.get("/experiments", headers=stack.token()).status_code == 200
    assert time.monotonic() - start >= 2.5

    def observed(samples: dict[Any, float], le: str) -> float:
        return metric(samples, "http_request_duration_seconds_bucket", path="/experiments", le=le)

    def enough_traffic() -> dict[Any, float] | None:
        m = stack.metrics()  # the background traffic keeps going, slowly
        return m if observed(m, "+Inf") - observed(before, "+Inf") >= 20 else None

    after = _procs.wait_for(enough_traffic, 10, "20 slow requests", 0.2)
    total = observed(after, "+Inf") - observed(before, "+Inf")
    fast = observed(after, "2.0") - observed(before, "2.0")
    assert fast / total < 0.05  # so the p95 of the window is above 2 s
    stack.heal()
    start = time.monotonic()
    assert stack.get("/experiments", headers=stack.token()).status_code == 200
    assert time.monotonic() - start < 1.0


def test_db_pool_leak(stack: Stack) -> None:
    answer = stack.fault("db-pool-leak", fill=0.9)
    target = math.ceil(0.9 * MAX_CONNECTIONS)
    assert answer["detail"]["max_connections"] == MAX_CONNECTIONS
    assert int(stack.sql("SELECT count(*) FROM pg_stat_activity")[0][0]) >= target
    assert app_sessions(stack, "idle in transaction") >= POOL_MAX

    def starving() -> dict[Any, float] | None:
        m = stack.metrics()
        return m if metric(m, "db_pool_waiters") > 0 else None

    m = _procs.wait_for(starving, 10, "db_pool_waiters > 0", 0.2)
    assert metric(m, "db_pool_connections") == metric(m, "db_pool_max_connections") == POOL_MAX
    ready = stack.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["components"]["db"] == {"status": "error", "detail": "pool timeout"}
    assert stack.get("/experiments", headers=stack.token()).status_code == 503

    stack.heal()
    assert app_sessions(stack) <= POOL_MAX  # the pool's own connections, returned
    assert app_sessions(stack, "idle in transaction") == 0
    _procs.wait_for(lambda: stack.get("/health/ready").status_code == 200, 10, "ready again")
    assert stack.get("/experiments", headers=stack.token()).status_code == 200


def test_db_pool_leak_full_refuses_new_clients(stack: Stack) -> None:
    answer = stack.fault("db-pool-leak", fill=1.0)
    refused = answer["detail"]["refused"] or ""
    assert "too many clients" in refused or "reserved" in refused
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(stack.app_dsn, connect_timeout=3).close()
    stack.heal()
    psycopg.connect(stack.app_dsn, connect_timeout=3).close()


def test_long_query(stack: Stack) -> None:
    query = (
        "SELECT pid FROM pg_stat_activity WHERE usename = %s AND state = 'active'"
        " AND query ILIKE %s"
    )
    pid = stack.fault("long-query", seconds=600)["detail"]["pid"]
    assert [r[0] for r in stack.sql(query, APP_ROLE, "%pg_sleep%")] == [pid]
    stack.heal()
    assert stack.sql(query, APP_ROLE, "%pg_sleep%") == []


def test_blocking_lock(stack: Stack) -> None:
    query = (
        "SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity"
        " WHERE cardinality(pg_blocking_pids(pid)) > 0 AND query ILIKE %s"
    )
    detail = stack.fault("blocking-lock")["detail"]
    blocked = stack.sql(query, "%FROM experiments%")
    assert (detail["blocked_pid"], [detail["blocking_pid"]]) in blocked
    held = stack.sql(
        "SELECT mode, granted FROM pg_locks WHERE pid = %s AND relation = 'experiments'::regclass",
        detail["blocking_pid"],
    )
    assert ("AccessExclusiveLock", True) in held
    stack.heal()
    assert stack.sql(query, "%FROM experiments%") == []


def test_idle_in_transaction(stack: Stack) -> None:
    stack.fault("idle-in-transaction", count=3)
    assert app_sessions(stack, "idle in transaction") == 3
    stack.heal()
    assert app_sessions(stack, "idle in transaction") == 0


def test_quota_full(stack: Stack) -> None:
    s3 = _procs.s3_client(
        stack.s3gw_url, AWS["aws_region"], AWS["aws_access_key_id"], AWS["aws_secret_access_key"]
    )

    def used() -> int:
        return sum(o["Size"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))

    assert used() < 0.1 * QUOTA
    stack.fault("quota-full", fraction=0.95)
    assert 0.95 * QUOTA <= used() <= QUOTA
    body = stack.get("/datasets").json()
    assert body["total_bytes"] >= 0.95 * body["quota_bytes"]
    assert any(d["key"].startswith("datasets/filler-") for d in body["datasets"])
    stack.heal()
    assert used() < 0.1 * QUOTA


def _experiments_by_status(stack: Stack) -> dict[str, float]:
    counts: dict[str, float] = {}
    for (name, labels), value in stack.metrics().items():
        label = dict(labels)
        if name == "http_requests_total" and label.get("path") == "/experiments":
            counts[label["status"]] = counts.get(label["status"], 0.0) + value
    return counts


def _traffic_401s(stack: Stack, what: str) -> tuple[float, float]:
    """Wait for 40 more requests of the clients to /experiments: (their 401s, all of them)."""
    before = _experiments_by_status(stack)

    def grown() -> tuple[float, float] | None:
        after = _experiments_by_status(stack)
        total = sum(after.values()) - sum(before.values())
        return (after.get("401", 0.0) - before.get("401", 0.0), total) if total >= 40 else None

    return _procs.wait_for(grown, 10, what, 0.2)


def test_auth_secret_rotated(stack: Stack) -> None:
    new_secret = secrets.token_urlsafe(32)
    stack.fault("auth-secret-rotated", new_secret=new_secret)
    assert stack.get("/experiments", headers=stack.token()).status_code == 401
    assert stack.get("/experiments", headers=stack.token(new_secret)).status_code == 200
    # Most of the platform's own clients keep the old secret: their calls are refused.
    refused, total = _traffic_401s(stack, "client traffic after the rotation")
    assert refused / total > 0.5
    stack.heal()
    assert stack.get("/experiments", headers=stack.token()).status_code == 200
    assert stack.get("/experiments", headers=stack.token(new_secret)).status_code == 401


def test_clock_skew(stack: Stack) -> None:
    def skew(path: str) -> float:
        resp = stack.get(path)
        assert len(resp.headers.get_list("date")) == 1
        return (parsedate_to_datetime(resp.headers["date"]) - datetime.now(UTC)).total_seconds()

    assert abs(skew("/health")) < 5
    stack.fault("clock-skew", seconds=120)
    assert 115 < skew("/health") < 125
    assert 115 < skew("/docs") < 125
    # Ahead by 120 s, the API finds a fresh 60 s token expired; a long-lived one still valid.
    expired = stack.get("/experiments", headers=stack.token(ttl=60))
    assert expired.status_code == 401 and expired.json()["detail"] == "token expired"
    assert stack.get("/experiments", headers=stack.token(ttl=3600)).status_code == 200
    refused, total = _traffic_401s(stack, "client traffic with the API ahead")
    assert refused == total  # the clients' 60 s tokens, signed by the real clock
    assert stack.get("/health/ready").json()["components"]["auth"]["status"] == "ok"
    # Behind by 120 s, a token issued now is not yet valid, whatever its lifetime.
    stack.fault("clock-skew", seconds=-120)
    assert -125 < skew("/health") < -115
    early = stack.get("/experiments", headers=stack.token(ttl=3600))
    assert early.status_code == 401 and early.json()["detail"] == "token not yet valid"
    stack.heal()
    assert abs(skew("/health")) < 5
    assert stack.get("/experiments", headers=stack.token(ttl=60)).status_code == 200


def test_stuck_experiment(stack: Stack) -> None:
    exp_id = stack.fault("stuck-experiment", hours=6)["detail"]["experiment_id"]
    listed = {
        e["id"]: e for e in stack.get("/experiments", headers=stack.token()).json()["experiments"]
    }
    stuck = listed[exp_id]
    assert stuck["state"] == "running"
    age = datetime.now(UTC) - datetime.fromisoformat(stuck["updated_at"])
    assert timedelta(hours=5.9) < age < timedelta(hours=6.1)
    stale = "SELECT id FROM experiments WHERE state = 'running' AND updated_at < now() - interval '1 hour'"
    assert stack.sql(stale) == [(exp_id,)]
    # The workers' heartbeat keeps the healthy ones fresh but leaves the stuck one alone.
    since = stack.sql("SELECT now()")[0][0]
    fresh = "SELECT min(updated_at) FROM experiments WHERE state = 'running' AND id <> %s"
    _procs.wait_for(lambda: stack.sql(fresh, exp_id)[0][0] > since, 10, "a heartbeat", 0.2)
    assert stack.sql(stale) == [(exp_id,)]
    stack.heal()
    assert stack.sql(stale) == []


def test_docs(stack: Stack) -> None:
    ok = stack.get("/docs")
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("text/html")
    assert "<h1>" in ok.text
    stack.fault("docs-down")
    assert stack.get("/docs").status_code == 503
    stack.heal()
    assert stack.get("/docs").status_code == 200


def test_datasets_fail_during_s3_outage(stack: Stack) -> None:
    assert stack.get("/datasets").status_code == 200
    resp = httpx.post(
        f"{stack.s3gw_url}/admin/faults/s3-outage", json={}, headers=stack.admin, timeout=5
    )
    assert resp.status_code == 200
    datasets = stack.get("/datasets")
    assert datasets.status_code == 503
    assert "SlowDown" in datasets.json()["detail"]
    ready = stack.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["components"]["storage"]["status"] == "error"
    # The app logs it as Scenario 5's grep finds it.
    (line,) = _log_lines(stack, lambda ln: "aws_error_code=SlowDown" in ln, 1, "the S3 error line")[-1:]
    assert "ERROR [llm_research.storage] s3 list_objects_v2 failed: bucket=" in line
    stack.heal()
    assert stack.get("/datasets").status_code == 200


def test_starts_without_its_dependencies_and_stops_cleanly(stack: Stack, tmp_path: Path) -> None:
    port = _procs.free_port()
    dead = _procs.free_port()  # nothing listens there
    config = {
        **stack.api_config,
        "port": port,
        "traffic_rps": 0,
        "dsn": f"postgresql://{APP_ROLE}:pw@127.0.0.1:{dead}/{DB_NAME}",
        "s3_endpoint": f"http://127.0.0.1:{dead}",
    }
    url = f"http://127.0.0.1:{port}"
    proc = _procs.start_module("api-2", "labcheck.sandbox.api", config, tmp_path, url + "/health")
    try:
        ready = httpx.get(url + "/health/ready", timeout=10)
        assert ready.status_code == 503
        components = ready.json()["components"]
        assert components["db"]["status"] == components["storage"]["status"] == "error"
        assert "connect failed" in components["db"]["detail"]
        assert httpx.get(url + "/datasets", timeout=10).status_code == 503
    finally:
        assert proc.stop(timeout=10) == 0, proc.log_tail()
    assert "Traceback" not in proc.log_path.read_text()


def _log_lines(stack: Stack, predicate: Callable[[str], bool], count: int, what: str) -> list[str]:
    """Wait until the API's log file holds ``count`` lines matching ``predicate``; those lines."""
    path = stack.log_dir / "api-app.log"

    def found() -> list[str] | None:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if predicate(ln)]
        return lines if len(lines) >= count else None

    return _procs.wait_for(found, 10, what, 0.1)


def test_the_api_log_has_access_and_error_lines(stack: Stack) -> None:
    assert os.stat(stack.log_dir / "api-app.log").st_mode & 0o777 == 0o600
    token = sign_token(new_secret(), subject="mallory")  # signed with a secret the API does not know
    marker = f"/experiments?probe={secrets.token_hex(4)}"
    resp = stack.get(marker, headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "192.0.2.9, 10.0.0.1"})
    assert resp.status_code == 401
    (access,) = _log_lines(stack, lambda ln: marker in ln, 1, "the access line")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO  \[uvicorn\.access\] 192\.0\.2\.9 - "
                        rf'"GET {re.escape(marker)} HTTP/1\.1" 401 \d+\.\dms', access), access
    refused = _log_lines(stack, lambda ln: "sub=mallory client=192.0.2.9" in ln, 1, "the auth failure line")
    assert "WARNING [llm_research.auth] auth failure: jwt signature verification failed" in refused[0]
    assert token not in (stack.log_dir / "api-app.log").read_text()  # the token itself is never logged
    # The platform's clients: many addresses of the pod network.
    clients = _log_lines(stack, lambda ln: '[uvicorn.access] 10.244.' in ln, 20, "client traffic")
    assert len({ln.split()[3] for ln in clients}) >= 5
    stack.fault("error-rate", share=1.0)
    try:
        assert stack.get("/datasets").status_code == 500
        _log_lines(stack, lambda ln: " ERROR [llm_research.api] Exception in ASGI application: GET /datasets" in ln,
                   1, "the error line")
    finally:
        stack.heal()


def test_brute_force_sends_bad_tokens_from_a_few_addresses(stack: Stack) -> None:
    answer = stack.fault("brute-force", rps=30, sources=2, subject="root")
    assert answer["params"] == {"rps": 30.0, "sources": 2, "subject": "root"}
    addresses = answer["detail"]["addresses"]
    try:
        lines = _log_lines(stack, lambda ln: any(f"] {a} - " in ln and '" 401 ' in ln for a in addresses), 30,
                           "the brute force's 401s")
        assert {ln.split()[3] for ln in lines} == set(addresses)
        _log_lines(stack, lambda ln: "sub=root client=" in ln, 30, "the brute force's auth failures")
    finally:
        stack.heal()
    assert "brute-force" not in stack.get("/admin/faults", headers=stack.admin).json()["active"]
