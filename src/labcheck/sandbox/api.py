"""The sandbox platform API: experiments, datasets, health, Prometheus metrics, traffic and faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any

import boto3
import httpx
import jwt
import psycopg
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labcheck.sandbox.serve import admin_key_ok, fault_params, parse_args, serve

log = logging.getLogger("labcheck.sandbox.api")

APP_NAME = "llm-research-api"
JWT_ALGORITHM = "HS256"
REALM = "llm-research"
LIVE_WORKERS = ["experiment-worker-0", "experiment-worker-1"]
# Rows of the stuck-experiment fault belong to a worker that no longer heartbeats.
LOST_WORKER = "experiment-worker-7f9c-lost"
FILLER_PREFIX = "datasets/filler-"
FILLER_CHUNK = 64 * 1024 * 1024
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0)
# Routes counted in http_requests_total; /metrics and /admin are not.
UNCOUNTED_PREFIXES = ("/metrics", "/admin")
HEALTH_PATHS = ("/health", "/health/ready")


@dataclass
class Settings:
    """The API's configuration, read from api.json."""

    dsn: str
    jwt_secret: str
    admin_key: str
    host: str = "127.0.0.1"
    port: int = 18080
    pool_min: int = 2
    pool_max: int = 10
    pool_timeout: float = 2.0
    statement_timeout_ms: int = 5000
    lock_timeout_ms: int = 3000
    s3_endpoint: str = "http://127.0.0.1:18900"
    cloudwatch_endpoint: str = "http://127.0.0.1:18901"
    bucket: str = "llm-research-datasets"
    aws_region: str = "us-east-1"
    aws_access_key_id: str = "testing"
    aws_secret_access_key: str = "testing"
    quota_bytes: int = 1024**3
    traffic_rps: float = 20.0
    traffic_concurrency: int = 0
    state_dir: str = ""
    grant_select_to: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> Settings:
        data = json.loads(Path(path).read_text())
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            log.warning("ignoring unknown config keys: %s", ", ".join(unknown))
        return cls(**{k: v for k, v in data.items() if k in known})


def sign_token(secret: str, subject: str = "labcheck", ttl_seconds: int = 3600) -> str:
    """An HS256 bearer token the API accepts while `secret` is its signing secret."""
    now = int(time.time())
    claims = {"sub": subject, "iat": now, "exp": now + ttl_seconds, "iss": APP_NAME}
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


class FaultError(Exception):
    """A fault could not be applied."""


@dataclass
class Held:
    """Resources a fault holds until it is healed."""

    pool_conns: list[psycopg.AsyncConnection[Any]] = field(default_factory=list)
    conns: list[psycopg.AsyncConnection[Any]] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


class Metrics:
    """The API's Prometheus metrics, in a registry of their own."""

    def __init__(self, platform: Platform) -> None:
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
        Gauge(
            "db_pool_connections",
            "Connections currently open in the database pool.",
            registry=self.registry,
        ).set_function(lambda: platform.pool_stat("pool_size"))
        Gauge(
            "db_pool_max_connections",
            "Maximum size of the database pool.",
            registry=self.registry,
        ).set_function(lambda: platform.settings.pool_max)
        Gauge(
            "db_pool_idle_connections",
            "Pool connections open and not checked out.",
            registry=self.registry,
        ).set_function(lambda: platform.pool_stat("pool_available"))
        Gauge(
            "db_pool_waiters",
            "Requests waiting for a database pool connection.",
            registry=self.registry,
        ).set_function(lambda: platform.pool_stat("requests_waiting"))
        self.experiments_running = Gauge(
            "experiments_running",
            "Experiments in state running, as last read from the database.",
            registry=self.registry,
        )
        Gauge(
            "storage_quota_bytes",
            "Quota of the datasets bucket.",
            registry=self.registry,
        ).set_function(lambda: platform.settings.quota_bytes)


class Platform:
    """State and behaviour of one API process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.jwt_secret = settings.jwt_secret
        self.pool: AsyncConnectionPool | None = None
        self.db_error: str | None = "not connected yet"
        self.metrics = Metrics(self)
        self.faults: dict[str, dict[str, Any]] = {}
        self.held: dict[str, Held] = {}
        self.fault_lock = asyncio.Lock()
        self.tasks: list[asyncio.Task[Any]] = []
        self.storage_ready = False
        self.schema_ready = asyncio.Event()
        self._admin: psycopg.AsyncConnection[Any] | None = None
        self._admin_lock = asyncio.Lock()
        self._filler_cleanup: asyncio.Task[None] | None = None
        self._token_cache: tuple[str, float, str] | None = None
        common = {
            "endpoint_url": settings.s3_endpoint,
            "region_name": settings.aws_region,
            "aws_access_key_id": settings.aws_access_key_id,
            "aws_secret_access_key": settings.aws_secret_access_key,
        }
        s3_style = {"addressing_style": "path"}
        checksums = {
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
        self.s3 = boto3.session.Session().client(
            "s3",
            config=BotoConfig(
                s3=s3_style,
                connect_timeout=2,
                read_timeout=30,
                retries={"total_max_attempts": 2, "mode": "standard"},
                max_pool_connections=32,
                **checksums,
            ),
            **common,
        )
        self.s3_probe = boto3.session.Session().client(
            "s3",
            config=BotoConfig(
                s3=s3_style,
                connect_timeout=1,
                read_timeout=2,
                retries={"total_max_attempts": 1, "mode": "standard"},
                **checksums,
            ),
            **common,
        )

    # -- database -------------------------------------------------------------------

    def pool_stat(self, key: str) -> float:
        if self.pool is None:
            return 0.0
        return float(self.pool.get_stats().get(key, 0))

    def _conn_kwargs(self) -> dict[str, Any]:
        s = self.settings
        return {
            "application_name": APP_NAME,
            "connect_timeout": 3,
            "options": f"-c statement_timeout={s.statement_timeout_ms} -c lock_timeout={s.lock_timeout_ms}",
        }

    async def raw_connect(self, options: str = "") -> psycopg.AsyncConnection[Any]:
        """An autocommit connection outside the pool, as the app role (used by faults)."""
        extra: dict[str, Any] = {"options": options} if options else {}
        return await psycopg.AsyncConnection.connect(
            self.settings.dsn,
            autocommit=True,
            application_name=APP_NAME,
            connect_timeout=3,
            **extra,
        )

    @contextlib.asynccontextmanager
    async def admin_conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """One raw connection, kept while faults are active, for the faults' own queries.

        Faults that fill PostgreSQL must not lock their own bookkeeping out.
        """
        async with self._admin_lock:
            conn = self._admin
            if conn is None or conn.closed or conn.broken:
                # Bounded: e.g. an INSERT must not hang behind the blocking-lock fault.
                conn = self._admin = await self.raw_connect("-c statement_timeout=10000")
            try:
                yield conn
            except psycopg.OperationalError:
                self._admin = None
                with contextlib.suppress(Exception):
                    await conn.close()
                raise

    async def close_admin_conn(self) -> None:
        async with self._admin_lock:
            conn, self._admin = self._admin, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def db_bootstrap(self) -> None:
        """Open the pool once PostgreSQL answers, then create and seed the schema."""
        s = self.settings
        while self.pool is None:
            try:
                conn = await psycopg.AsyncConnection.connect(s.dsn, **self._conn_kwargs())
                await conn.close()
            except Exception as exc:  # noqa: BLE001 - PostgreSQL may still be starting
                self.db_error = f"connect failed: {_first_line(exc)}"
                await asyncio.sleep(1.0)
                continue
            pool = AsyncConnectionPool(
                s.dsn,
                min_size=s.pool_min,
                max_size=s.pool_max,
                timeout=s.pool_timeout,
                # A well-behaved pool closes connections it no longer needs well before the
                # playbook's 10-minute idle threshold, so a long-lived healthy sandbox stays healthy.
                max_idle=240.0,
                kwargs={**self._conn_kwargs(), "autocommit": True},
                check=AsyncConnectionPool.check_connection,
                name=APP_NAME,
                open=False,
            )
            await pool.open(wait=False)
            self.pool = pool
            self.db_error = None
        while True:
            try:
                async with self.pool.connection(timeout=10) as conn:
                    await _create_schema(conn, s.grant_select_to)
                log.info("database ready")
                self.schema_ready.set()
                return
            except Exception as exc:  # noqa: BLE001
                log.warning("schema bootstrap failed, retrying: %s", _first_line(exc))
                await asyncio.sleep(1.0)

    async def heartbeat(self) -> None:
        """Like the experiment workers: running experiments report progress every few seconds."""
        await self.schema_ready.wait()
        while True:
            assert self.pool is not None
            try:
                async with self.pool.connection() as conn:
                    await conn.execute(
                        "UPDATE experiments SET updated_at = now()"
                        " WHERE state = 'running' AND worker = ANY(%s)",
                        (LIVE_WORKERS,),
                    )
                    cur = await conn.execute(
                        "SELECT count(*) FROM experiments WHERE state = 'running'"
                    )
                    row = await cur.fetchone()
                    self.metrics.experiments_running.set(row[0] if row else 0)
            except Exception as exc:  # noqa: BLE001
                log.debug("heartbeat failed: %s", _first_line(exc))
            await asyncio.sleep(3.0)

    async def check_db(self) -> tuple[bool, str]:
        if self.pool is None:
            return False, self.db_error or "not connected"
        if not self.schema_ready.is_set():
            return False, "schema not ready"
        try:
            async with asyncio.timeout(3.0):
                async with self.pool.connection(timeout=self.settings.pool_timeout) as conn:
                    await conn.execute("SELECT 1")
            return True, "SELECT 1 ok"
        except PoolTimeout:
            return False, "pool timeout"
        except TimeoutError:
            return False, "query timeout"
        except Exception as exc:  # noqa: BLE001
            return False, _first_line(exc)

    # -- storage --------------------------------------------------------------------

    async def storage_bootstrap(self) -> None:
        """Create the bucket and a few datasets if the bucket is missing or empty."""
        while True:
            try:
                await run_in_threadpool(self._ensure_bucket)
                self.storage_ready = True
                return
            except Exception as exc:  # noqa: BLE001
                log.info("storage not ready yet: %s", _first_line(exc))
                await asyncio.sleep(1.0)

    def _ensure_bucket(self) -> None:
        bucket = self.settings.bucket
        try:
            self.s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
            with contextlib.suppress(ClientError):
                self.s3.create_bucket(Bucket=bucket)
        listing = self.s3.list_objects_v2(Bucket=bucket, MaxKeys=1)
        if listing.get("KeyCount", 0) == 0:
            for key, body in _seed_datasets():
                self.s3.put_object(Bucket=bucket, Key=key, Body=body)

    async def check_storage(self) -> tuple[bool, str]:
        def probe() -> None:
            self.s3_probe.head_bucket(Bucket=self.settings.bucket)

        try:
            await asyncio.wait_for(run_in_threadpool(probe), 4.0)
            return True, f"head_bucket {self.settings.bucket} ok"
        except ClientError as exc:
            err = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return False, f"head_bucket failed: HTTP {status} {err.get('Code', '')}".strip()
        except TimeoutError:
            return False, "head_bucket timeout"
        except Exception as exc:  # noqa: BLE001
            return False, f"head_bucket failed: {_first_line(exc)}"

    def list_objects(self, prefix: str = "") -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.settings.bucket, Prefix=prefix):
            out.extend(page.get("Contents", []))
        return out

    # -- auth -----------------------------------------------------------------------

    def verify_token(self, token: str) -> dict[str, Any]:
        return jwt.decode(
            token,
            self.jwt_secret,
            algorithms=[JWT_ALGORITHM],
            options={"require": ["sub"]},
        )

    def client_token(self) -> str:
        """The token the platform's own clients (background traffic) send: the current secret."""
        now = time.monotonic()
        cached = self._token_cache
        if cached and cached[0] == self.jwt_secret and cached[1] > now:
            return cached[2]
        token = sign_token(self.jwt_secret, subject="experiment-scheduler", ttl_seconds=900)
        self._token_cache = (self.jwt_secret, now + 600, token)
        return token

    def check_auth(self) -> tuple[bool, str]:
        if not self.jwt_secret:
            return False, "signing secret not loaded"
        try:
            self.verify_token(sign_token(self.jwt_secret, subject="readiness", ttl_seconds=60))
        except jwt.PyJWTError as exc:
            return False, f"self-signed token rejected: {exc}"
        return True, "signing secret loaded, self-signed token verifies"

    # -- background traffic ---------------------------------------------------------

    async def traffic(self) -> None:
        """Real HTTP requests to this API over loopback, at about traffic_rps."""
        s = self.settings
        if s.traffic_rps <= 0:
            return
        host = "127.0.0.1" if s.host in ("0.0.0.0", "", "::") else s.host
        if ":" in host:
            host = f"[{host}]"
        concurrency = s.traffic_concurrency or max(8, math.ceil(s.traffic_rps * 3))
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        timeout = httpx.Timeout(6.0, connect=1.0)
        sem = asyncio.Semaphore(concurrency)
        inflight: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(
            base_url=f"http://{host}:{s.port}", timeout=timeout, limits=limits
        ) as client:
            while True:  # wait for the server to listen
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/health")).status_code == 200:
                        break
                await asyncio.sleep(0.2)
            interval = 1.0 / s.traffic_rps
            next_at = loop.time()
            while True:
                next_at += interval
                delay = next_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -1.0:
                    next_at = loop.time()
                if sem.locked():
                    continue
                await sem.acquire()
                task = asyncio.create_task(self._one_request(client, sem))
                inflight.add(task)
                task.add_done_callback(inflight.discard)

    async def _one_request(self, client: httpx.AsyncClient, sem: asyncio.Semaphore) -> None:
        try:
            roll = random.random()
            if roll < 0.6:
                headers = {"Authorization": f"Bearer {self.client_token()}"}
                await client.get("/experiments", headers=headers)
            elif roll < 0.8:
                await client.get("/datasets")
            elif roll < 0.9:
                await client.get("/health")
            else:
                await client.get("/health/ready")
        except Exception:  # noqa: BLE001 - traffic never crashes
            pass
        finally:
            sem.release()

    # -- faults ---------------------------------------------------------------------

    def fault_param(self, name: str, key: str, default: float) -> float:
        params = self.faults.get(name)
        if params is None:
            return default
        return float(params.get(key, default))

    async def apply_fault(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        handler = self._handlers().get(name)
        if handler is None:
            raise KeyError(name)
        async with self.fault_lock:
            if name in self.faults:
                await self._heal(name)
            self.held[name] = Held()
            try:
                effective, detail = await handler(params)
            except BaseException:
                # Undo what was done; a failed INSERT leaves no row to delete.
                await self._heal(name, cleanup=name != "stuck-experiment")
                raise
            self.faults[name] = effective
            log.warning("fault %s applied: %s", name, effective)
            return {"fault": name, "params": effective, "detail": detail}

    async def heal_all(self, cleanup_storage: bool = True) -> dict[str, Any]:
        async with self.fault_lock:
            names = list(self.faults)
            # Free connections and locks first: the other heals may need them.
            first = ["db-pool-leak", "blocking-lock", "long-query", "idle-in-transaction"]
            order = sorted(names, key=lambda n: first.index(n) if n in first else len(first))
            errors: dict[str, str] = {}
            for name in order:
                try:
                    await self._heal(name)
                except Exception as exc:  # noqa: BLE001
                    errors[name] = _first_line(exc)
            # Leftovers of a previous process, best effort.
            with contextlib.suppress(Exception):
                await self._delete_stuck_rows()
            if cleanup_storage and "quota-full" not in names and self._filler_cleanup is None:
                with contextlib.suppress(Exception):
                    await run_in_threadpool(self._delete_fillers)
            if not self.faults:
                await self.close_admin_conn()
            answer: dict[str, Any] = {
                "healed": [n for n in order if n not in errors],
                "errors": errors,
            }
            if self._filler_cleanup is not None:
                answer["pending"] = [
                    "quota-full: deleting filler objects, retrying until S3 answers"
                ]
            return answer

    async def _heal(self, name: str, cleanup: bool = True) -> None:
        held = self.held.pop(name, Held())
        self.faults.pop(name, None)
        await self._release(held)
        if name == "auth-secret-rotated":
            self.jwt_secret = self.settings.jwt_secret
        elif name == "stuck-experiment" and cleanup:
            await self._delete_stuck_rows()
        elif name == "quota-full":
            try:
                await run_in_threadpool(self._delete_fillers)
            except Exception as exc:  # noqa: BLE001 - e.g. during s3-outage: retry in background
                log.warning("deleting filler objects failed, retrying: %s", _first_line(exc))
                if self._filler_cleanup is None:
                    self._filler_cleanup = asyncio.create_task(self._retry_filler_cleanup())
        log.warning("fault %s healed", name)

    async def _retry_filler_cleanup(self) -> None:
        try:
            while True:
                await asyncio.sleep(2.0)
                try:
                    await run_in_threadpool(self._delete_fillers)
                    log.warning("filler objects deleted")
                    return
                except Exception as exc:  # noqa: BLE001
                    log.info("deleting filler objects failed again: %s", _first_line(exc))
        finally:
            self._filler_cleanup = None

    async def _release(self, held: Held) -> None:
        for conn in held.conns:
            if conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
                with contextlib.suppress(Exception):
                    await conn.cancel_safe(timeout=3.0)
        if held.tasks:
            _, pending = await asyncio.wait(held.tasks, timeout=5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*held.tasks, return_exceptions=True)
        for conn in held.conns:
            with contextlib.suppress(Exception):
                await conn.close()
        for conn in held.pool_conns:
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
            if self.pool is not None:
                with contextlib.suppress(Exception):
                    await self.pool.putconn(conn)
        held.conns.clear()
        held.tasks.clear()
        held.pool_conns.clear()

    def _handlers(
        self,
    ) -> dict[str, Callable[[dict[str, Any]], Awaitable[tuple[dict[str, Any], dict[str, Any]]]]]:
        return {
            "error-rate": self._f_error_rate,
            "latency": self._f_latency,
            "db-pool-leak": self._f_db_pool_leak,
            "long-query": self._f_long_query,
            "blocking-lock": self._f_blocking_lock,
            "idle-in-transaction": self._f_idle_in_transaction,
            "quota-full": self._f_quota_full,
            "auth-secret-rotated": self._f_auth_secret_rotated,
            "clock-skew": self._f_clock_skew,
            "stuck-experiment": self._f_stuck_experiment,
            "docs-down": self._f_docs_down,
        }

    async def _f_error_rate(self, p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        share = min(1.0, max(0.0, float(p.get("share", 0.2))))
        return {"share": share}, {"routes": ["/experiments", "/datasets"]}

    async def _f_latency(self, p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        seconds = max(0.0, float(p.get("seconds", 2.5)))
        return {"seconds": seconds}, {"routes": ["/experiments", "/datasets", "/docs"]}

    async def _f_docs_down(self, p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        return {}, {"route": "/docs"}

    async def _f_clock_skew(self, p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"seconds": float(p.get("seconds", 120))}, {"header": "Date"}

    async def _f_auth_secret_rotated(
        self, p: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        new_secret = str(p.get("new_secret") or "")
        detail: dict[str, Any] = {}
        if not new_secret:
            new_secret = secrets.token_urlsafe(32)
            detail["new_secret"] = new_secret
        if new_secret == self.settings.jwt_secret:
            raise FaultError("new_secret equals the configured secret")
        self.jwt_secret = new_secret
        return {"rotated": True}, detail

    def _need_pool(self) -> AsyncConnectionPool:
        if self.pool is None:
            raise FaultError(f"database not connected: {self.db_error}")
        return self.pool

    async def _f_db_pool_leak(self, p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        fill = min(1.0, max(0.0, float(p.get("fill", 0.9))))
        pool = self._need_pool()
        held = self.held["db-pool-leak"]
        for _ in range(self.settings.pool_max):
            conn = await pool.getconn(timeout=15.0)
            held.pool_conns.append(conn)
            await conn.execute("BEGIN")
            await conn.execute("SELECT now()")
        count_sql = "SELECT count(*) FROM pg_stat_activity"
        async with self.admin_conn() as conn:
            max_conns = int(await _scalar(conn, "SHOW max_connections"))
        # fill=1.0: until PostgreSQL refuses (pg_stat_activity also lists background workers).
        target = math.ceil(fill * max_conns) if fill < 1.0 else max_conns * 2
        refused: str | None = None
        while refused is None and len(held.conns) <= max_conns:
            async with self.admin_conn() as conn:
                backends = int(await _scalar(conn, count_sql))
            if backends >= target:
                break
            batch = min(target - backends, 16)
            results = await asyncio.gather(
                *(self.raw_connect() for _ in range(batch)), return_exceptions=True
            )
            for res in results:
                if isinstance(res, BaseException):
                    refused = _first_line(res)
                else:
                    held.conns.append(res)
        async with self.admin_conn() as conn:
            backends = int(await _scalar(conn, count_sql))
        detail = {
            "max_connections": max_conns,
            "target_backends": target if fill < 1.0 else None,
            "backends": backends,
            "pool_held": len(held.pool_conns),
            "raw_leaked": len(held.conns),
            "refused": refused,
        }
        return {"fill": fill}, detail

    async def _f_long_query(self, p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        seconds = max(1.0, float(p.get("seconds", 600)))
        held = self.held["long-query"]
        conn = await self.raw_connect()
        held.conns.append(conn)
        pid = conn.info.backend_pid
        held.tasks.append(asyncio.create_task(conn.execute("SELECT pg_sleep(%s)", (seconds,))))
        await self._wait_backend(pid, "state = 'active'")
        return {"seconds": seconds}, {"pid": pid}

    async def _f_blocking_lock(self, p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        held = self.held["blocking-lock"]
        holder = await self.raw_connect()
        held.conns.append(holder)
        waiter = await self.raw_connect()
        held.conns.append(waiter)
        await holder.execute("SET lock_timeout = '10s'")
        await holder.execute("BEGIN")
        await holder.execute("LOCK TABLE experiments IN ACCESS EXCLUSIVE MODE")
        held.tasks.append(asyncio.create_task(waiter.execute("SELECT count(*) FROM experiments")))
        blocker, blocked = holder.info.backend_pid, waiter.info.backend_pid
        await self._wait_backend(blocked, f"{blocker} = ANY(pg_blocking_pids(pid))")
        return {}, {"blocking_pid": blocker, "blocked_pid": blocked}

    async def _f_idle_in_transaction(
        self, p: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        count = max(1, int(p.get("count", 3)))
        held = self.held["idle-in-transaction"]
        pids = []
        for _ in range(count):
            conn = await self.raw_connect()
            held.conns.append(conn)
            await conn.execute("BEGIN")
            await conn.execute("SELECT now()")
            pids.append(conn.info.backend_pid)
        return {"count": count}, {"pids": pids}

    async def _f_stuck_experiment(self, p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        hours = max(0.0, float(p.get("hours", 6)))
        async with self.admin_conn() as conn:
            cur = await conn.execute(
                "INSERT INTO experiments (name, state, worker, started_at, updated_at)"
                " VALUES (%s, 'running', %s, now() - make_interval(secs => %s),"
                " now() - make_interval(secs => %s)) RETURNING id",
                (
                    f"llama-70b-pretrain-shard-{secrets.randbelow(1000):03d}",
                    LOST_WORKER,
                    hours * 3600,
                    hours * 3600,
                ),
            )
            row = await cur.fetchone()
        return {"hours": hours}, {"experiment_id": row[0] if row else None}

    async def _delete_stuck_rows(self) -> None:
        if self.pool is None:
            return
        async with self.admin_conn() as conn:
            await conn.execute("DELETE FROM experiments WHERE worker = %s", (LOST_WORKER,))

    async def _f_quota_full(self, p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        fraction = min(1.0, max(0.0, float(p.get("fraction", 0.95))))
        if self._filler_cleanup is not None:  # the old fillers count towards the new fill
            self._filler_cleanup.cancel()
        detail = await run_in_threadpool(self._fill_bucket, fraction)
        return {"fraction": fraction}, detail

    def _fill_bucket(self, fraction: float) -> dict[str, Any]:
        """Fillers of zeros up to `fraction` of the quota: one upload, then server-side copies."""
        bucket = self.settings.bucket
        quota = self.settings.quota_bytes
        used = sum(int(o["Size"]) for o in self.list_objects())
        needed = max(0, math.ceil(fraction * quota) - used)
        count = math.ceil(needed / FILLER_CHUNK)
        size = needed // count if count else 0
        keys = [f"{FILLER_PREFIX}{i:04d}.bin" for i in range(count)]
        if keys:
            self.s3.put_object(Bucket=bucket, Key=keys[0], Body=bytes(size))
        source = {"Bucket": bucket, "Key": keys[0]} if keys else {}
        for key in keys[1:]:  # server-side copies: no bytes through the gateway
            self.s3.copy_object(Bucket=bucket, Key=key, CopySource=source)
        rest = needed - size * count
        if rest:
            keys.append(f"{FILLER_PREFIX}{count:04d}.bin")
            self.s3.put_object(Bucket=bucket, Key=keys[-1], Body=bytes(rest))
        return {
            "quota_bytes": quota,
            "used_bytes": used + needed,
            "uploaded_bytes": needed,
            "objects": len(keys),
        }

    def _delete_fillers(self) -> None:
        for obj in self.list_objects(prefix=FILLER_PREFIX):
            self.s3.delete_object(Bucket=self.settings.bucket, Key=obj["Key"])

    async def _wait_backend(self, pid: int, condition: str, timeout: float = 5.0) -> None:
        """Poll pg_stat_activity until the backend `pid` satisfies the SQL `condition`."""
        deadline = time.monotonic() + timeout
        sql = f"SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND {condition}"
        while True:
            async with self.admin_conn() as conn:
                if int(await _scalar(conn, sql, (pid,))) > 0:
                    return
            if time.monotonic() > deadline:
                raise FaultError(f"backend {pid} never satisfied: {condition}")
            await asyncio.sleep(0.05)

    # -- request-time fault effects -------------------------------------------------

    async def inject(self) -> Response | None:
        """Latency and error-rate, applied to the non-health routes."""
        seconds = self.fault_param("latency", "seconds", 0.0)
        if seconds > 0:
            await asyncio.sleep(seconds)
        share = self.fault_param("error-rate", "share", 0.0)
        if share > 0 and random.random() < share:
            return JSONResponse({"error": "internal server error"}, status_code=500)
        return None


async def _scalar(conn: psycopg.AsyncConnection[Any], sql: str, args: Any = None) -> Any:
    cur = await conn.execute(sql, args)
    row = await cur.fetchone()
    return row[0] if row else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


async def _create_schema(conn: psycopg.AsyncConnection[Any], readers: list[str]) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('labcheck-experiments-schema'))")
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS experiments (
                id bigserial PRIMARY KEY,
                name text NOT NULL,
                state text NOT NULL
                    CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
                worker text,
                started_at timestamptz,
                updated_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        if int(await _scalar(conn, "SELECT count(*) FROM experiments")) == 0:
            await conn.execute(
                """
                INSERT INTO experiments (name, state, worker, started_at, updated_at) VALUES
                ('llama-7b-sft-baseline', 'succeeded', NULL,
                    now() - interval '2 days', now() - interval '1 day 20 hours'),
                ('tokenizer-ablation-32k', 'failed', NULL,
                    now() - interval '5 hours', now() - interval '4 hours'),
                ('mistral-7b-dpo-sweep-03', 'running', 'experiment-worker-0',
                    now() - interval '40 minutes', now()),
                ('rlhf-reward-model-v2', 'running', 'experiment-worker-1',
                    now() - interval '15 minutes', now()),
                ('eval-mmlu-nightly', 'queued', NULL, NULL, now())
                """
            )
        for role in readers:
            await conn.execute(
                psycopg.sql.SQL("GRANT SELECT ON experiments TO {}").format(
                    psycopg.sql.Identifier(role)
                )
            )


def _seed_datasets() -> list[tuple[str, bytes]]:
    rows = [
        json.dumps({"instruction": f"Summarise paragraph {i}.", "output": "..."}) for i in range(60)
    ]
    jsonl = ("\n".join(rows) + "\n").encode()
    return [
        ("datasets/alpaca-cleaned/train.jsonl", jsonl),
        ("datasets/alpaca-cleaned/README.md", b"# alpaca-cleaned\nInstruction tuning set.\n"),
        ("datasets/mmlu/test.jsonl", jsonl[: len(jsonl) // 2]),
    ]


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Instrumentation:
    """ASGI middleware: request metrics by route template, and the (maybe skewed) Date header."""

    def __init__(self, app: ASGIApp, platform: Platform, routes: list[Route]) -> None:
        self.app = app
        self.platform = platform
        self.routes = routes

    def _label(self, scope: Scope) -> str | None:
        path = scope.get("path", "")
        if any(path == p or path.startswith(p + "/") for p in UNCOUNTED_PREFIXES):
            return None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.path
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        label = self._label(scope)
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                skew = self.platform.fault_param("clock-skew", "seconds", 0.0)
                date = formatdate(time.time() + skew, usegmt=True).encode()
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"date"]
                headers.append((b"date", date))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if label is not None:
                m = self.platform.metrics
                m.requests.labels(path=label, status=str(status)).inc()
                m.duration.labels(path=label).observe(time.perf_counter() - start)


DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LLM Research Lab API</title></head>
<body>
<h1>LLM Research Lab API</h1>
<p>The platform API for experiments and datasets.</p>
<ul>
<li><code>GET /health</code>: liveness</li>
<li><code>GET /health/ready</code>: readiness of db, storage and auth</li>
<li><code>GET /experiments</code>: experiments (Bearer JWT, HS256)</li>
<li><code>GET /datasets</code>: objects in the datasets bucket</li>
<li><code>GET /metrics</code>: Prometheus metrics</li>
</ul>
</body></html>
"""


def create_app(settings: Settings) -> Starlette:
    """The API as an ASGI application."""
    platform = Platform(settings)

    def unauthorized(detail: str | None) -> JSONResponse:
        challenge = f'Bearer realm="{REALM}"'
        if detail:
            challenge += f', error="invalid_token", error_description="{detail}"'
        body = {"error": "unauthorized", "detail": detail or "missing bearer token"}
        return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": challenge})

    def token_denied(request: Request) -> Response | None:
        """401 unless the request carries a valid bearer token (None when it does)."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return unauthorized(None)
        try:
            platform.verify_token(token.strip())
        except jwt.ExpiredSignatureError:
            return unauthorized("token expired")
        except jwt.PyJWTError:
            return unauthorized("token invalid")
        return None

    def admin_denied(request: Request) -> Response | None:
        if admin_key_ok(request, settings.admin_key):
            return None
        return JSONResponse({"error": "forbidden"}, status_code=403)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        (db_ok, db_detail), (st_ok, st_detail) = await asyncio.gather(
            platform.check_db(), platform.check_storage()
        )
        auth_ok, auth_detail = platform.check_auth()
        components = {
            "db": {"status": "ok" if db_ok else "error", "detail": db_detail},
            "storage": {"status": "ok" if st_ok else "error", "detail": st_detail},
            "auth": {"status": "ok" if auth_ok else "error", "detail": auth_detail},
        }
        all_ok = db_ok and st_ok and auth_ok
        body = {"status": "ok" if all_ok else "degraded", "components": components}
        return JSONResponse(body, status_code=200 if all_ok else 503)

    async def experiments(request: Request) -> Response:
        if (injected := await platform.inject()) is not None:
            return injected
        if (denied := token_denied(request)) is not None:
            return denied
        if platform.pool is None:
            body = {"error": "database unavailable", "detail": platform.db_error}
            return JSONResponse(body, status_code=503)
        try:
            async with platform.pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT id, name, state, started_at, updated_at FROM experiments ORDER BY id"
                )
                rows = await cur.fetchall()
        except PoolTimeout:
            body = {"error": "database unavailable", "detail": "pool timeout"}
            return JSONResponse(body, status_code=503)
        except psycopg.Error as exc:
            body = {"error": "database error", "detail": _first_line(exc)}
            return JSONResponse(body, status_code=503)
        items = [
            {
                "id": r[0],
                "name": r[1],
                "state": r[2],
                "started_at": _iso(r[3]),
                "updated_at": _iso(r[4]),
            }
            for r in rows
        ]
        return JSONResponse({"experiments": items})

    async def submit_experiment(request: Request) -> Response:
        """POST /experiments?dry_run=true: validate a submission, schedule nothing (issue 8's canary)."""
        if (injected := await platform.inject()) is not None:
            return injected
        if (denied := token_denied(request)) is not None:
            return denied
        if request.query_params.get("dry_run", "").lower() not in ("1", "true", "yes"):
            return JSONResponse({"error": "the sandbox accepts dry-run submissions only (?dry_run=true)"},
                                status_code=501)
        try:
            spec = json.loads(await request.body() or b"null")
        except json.JSONDecodeError:
            spec = None
        errors = []
        if not isinstance(spec, dict):
            errors.append("body must be a JSON object")
        elif not isinstance(spec.get("name"), str) or not spec["name"].strip():
            errors.append("name: a non-empty string is required")
        if errors:
            return JSONResponse({"dry_run": True, "valid": False, "errors": errors}, status_code=422)
        if platform.pool is None:
            return JSONResponse({"error": "database unavailable", "detail": platform.db_error}, status_code=503)
        try:  # a real submission needs the database: so does its dry run
            async with platform.pool.connection() as conn:
                await conn.execute("SELECT 1")
        except PoolTimeout:
            return JSONResponse({"error": "database unavailable", "detail": "pool timeout"}, status_code=503)
        except psycopg.Error as exc:
            return JSONResponse({"error": "database error", "detail": _first_line(exc)}, status_code=503)
        return JSONResponse({"dry_run": True, "valid": True,
                             "experiment": {"name": spec["name"], "state": "queued", "id": None}})

    async def datasets(request: Request) -> Response:
        if (injected := await platform.inject()) is not None:
            return injected
        try:
            objects = await run_in_threadpool(platform.list_objects)
        except (ClientError, BotoCoreError) as exc:
            body = {"error": "storage unavailable", "detail": _first_line(exc)}
            return JSONResponse(body, status_code=503)
        items = [{"key": o["Key"], "size": int(o["Size"])} for o in objects]
        total = sum(i["size"] for i in items)
        listing = {"datasets": items, "total_bytes": total, "quota_bytes": settings.quota_bytes}
        return JSONResponse(listing)

    async def docs(request: Request) -> Response:
        if "docs-down" in platform.faults:
            return HTMLResponse("<h1>503 Service Unavailable</h1>", status_code=503)
        seconds = platform.fault_param("latency", "seconds", 0.0)
        if seconds > 0:
            await asyncio.sleep(seconds)
        return HTMLResponse(DOCS_HTML)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(platform.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def admin_fault(request: Request) -> Response:
        if (denied := admin_denied(request)) is not None:
            return denied
        name = request.path_params["name"]
        try:
            params = await fault_params(request)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        try:
            result = await platform.apply_fault(name, params)
        except KeyError:
            known = sorted(platform._handlers())
            return JSONResponse(
                {"error": f"unknown fault {name!r}", "known": known}, status_code=404
            )
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": f"bad parameters: {exc}"}, status_code=400)
        except Exception as exc:  # noqa: BLE001
            log.exception("fault %s failed", name)
            return JSONResponse({"error": _first_line(exc)}, status_code=500)
        return JSONResponse(result)

    async def admin_faults(request: Request) -> Response:
        if (denied := admin_denied(request)) is not None:
            return denied
        if request.method == "DELETE":
            return JSONResponse(await platform.heal_all())
        return JSONResponse({"active": platform.faults, "known": sorted(platform._handlers())})

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/experiments", experiments, methods=["GET"]),
        Route("/experiments", submit_experiment, methods=["POST"]),
        Route("/datasets", datasets, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/admin/faults/{name}", admin_fault, methods=["POST"]),
        Route("/admin/faults", admin_faults, methods=["GET", "DELETE"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for coro in (
            platform.db_bootstrap(),
            platform.storage_bootstrap(),
            platform.heartbeat(),
            platform.traffic(),
        ):
            platform.tasks.append(asyncio.create_task(coro))
        try:
            yield
        finally:
            if platform._filler_cleanup is not None:
                platform.tasks.append(platform._filler_cleanup)
            for task in platform.tasks:
                task.cancel()
            await asyncio.gather(*platform.tasks, return_exceptions=True)
            for name in list(platform.held):
                with contextlib.suppress(Exception):
                    await platform._release(platform.held.pop(name))
            await platform.close_admin_conn()
            if platform.pool is not None:
                with contextlib.suppress(Exception):
                    await platform.pool.close(timeout=3.0)

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.platform = platform
    app.add_middleware(Instrumentation, platform=platform, routes=routes)
    return app


def main(argv: list[str] | None = None) -> int:
    args = parse_args("api", __doc__, argv, quiet=(("psycopg.pool", logging.ERROR),))
    disable_created_metrics()
    settings = Settings.load(args.config)
    app = create_app(settings)
    return serve(app, host=settings.host, port=settings.port, log_level=args.log_level,
                 server_header=False, date_header=False)


if __name__ == "__main__":
    raise SystemExit(main())
