"""The sandbox API's faults: what each one does to the platform, and how it is healed."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from labcheck.sandbox.api.applog import api_log
from labcheck.sandbox.api.bruteforce import brute_force
from labcheck.sandbox.api.db import scalar
from labcheck.sandbox.api.platform import Platform
from labcheck.sandbox.api.settings import first_line, log

# Rows of the stuck-experiment fault belong to a worker that no longer heartbeats.
LOST_WORKER = "experiment-worker-7f9c-lost"

Handler = Callable[[dict[str, Any]], Awaitable[tuple[dict[str, Any], dict[str, Any]]]]


class FaultError(Exception):
    """A fault could not be applied."""


@dataclass
class Held:
    """Resources a fault holds until it is healed."""

    pool_conns: list[psycopg.AsyncConnection[Any]] = field(default_factory=list)
    conns: list[psycopg.AsyncConnection[Any]] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


class Faults:
    """The active faults of one API process (name -> effective parameters) and what they hold."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.active: dict[str, dict[str, Any]] = {}
        self.held: dict[str, Held] = {}
        self.lock = asyncio.Lock()
        self.filler_cleanup: asyncio.Task[None] | None = None

    def param(self, name: str, key: str, default: float) -> float:
        params = self.active.get(name)
        if params is None:
            return default
        return float(params.get(key, default))

    async def apply_fault(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        handler = self.handlers().get(name)
        if handler is None:
            raise KeyError(name)
        async with self.lock:
            if name in self.active:
                await self._heal(name)
            self.held[name] = Held()
            try:
                effective, detail = await handler(params)
            except BaseException:
                # Undo what was done; a failed INSERT leaves no row to delete.
                await self._heal(name, cleanup=name != "stuck-experiment")
                raise
            self.active[name] = effective
            log.warning("fault %s applied: %s", name, effective)
            return {"fault": name, "params": effective, "detail": detail}

    async def heal_all(self, cleanup_storage: bool = True) -> dict[str, Any]:
        async with self.lock:
            names = list(self.active)
            # Free connections and locks first: the other heals may need them.
            first = ["db-pool-leak", "blocking-lock", "long-query", "idle-in-transaction"]
            order = sorted(names, key=lambda n: first.index(n) if n in first else len(first))
            errors: dict[str, str] = {}
            for name in order:
                try:
                    await self._heal(name)
                except Exception as exc:  # noqa: BLE001
                    errors[name] = first_line(exc)
            # Leftovers of a previous process, best effort.
            with contextlib.suppress(Exception):
                await self._delete_stuck_rows()
            if cleanup_storage and "quota-full" not in names and self.filler_cleanup is None:
                with contextlib.suppress(Exception):
                    await run_in_threadpool(self.platform.storage.delete_fillers)
            if not self.active:
                await self.platform.db.close_admin_conn()
            answer: dict[str, Any] = {
                "healed": [n for n in order if n not in errors],
                "errors": errors,
            }
            if self.filler_cleanup is not None:
                answer["pending"] = [
                    "quota-full: deleting filler objects, retrying until S3 answers"
                ]
            return answer

    async def release_all(self) -> None:
        """At shutdown: give back what every fault holds, best effort."""
        for name in list(self.held):
            with contextlib.suppress(Exception):
                await self._release(self.held.pop(name))

    async def _heal(self, name: str, cleanup: bool = True) -> None:
        held = self.held.pop(name, Held())
        self.active.pop(name, None)
        if name == "brute-force":  # its sender runs until stopped: nothing to wait for
            for task in held.tasks:
                task.cancel()
        await self._release(held)
        if name == "auth-secret-rotated":
            self.platform.auth.restore()
        elif name == "clock-skew":
            self.platform.auth.skew_s = 0.0
        elif name == "stuck-experiment" and cleanup:
            await self._delete_stuck_rows()
        elif name == "quota-full":
            try:
                await run_in_threadpool(self.platform.storage.delete_fillers)
            except Exception as exc:  # noqa: BLE001 - e.g. during s3-outage: retry in background
                log.warning("deleting filler objects failed, retrying: %s", first_line(exc))
                if self.filler_cleanup is None:
                    self.filler_cleanup = asyncio.create_task(self._retry_filler_cleanup())
        log.warning("fault %s healed", name)

    async def _retry_filler_cleanup(self) -> None:
        try:
            while True:
                await asyncio.sleep(2.0)
                try:
                    await run_in_threadpool(self.platform.storage.delete_fillers)
                    log.warning("filler objects deleted")
                    return
                except Exception as exc:  # noqa: BLE001
                    log.info("deleting filler objects failed again: %s", first_line(exc))
        finally:
            self.filler_cleanup = None

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
        pool = self.platform.db.pool
        for conn in held.pool_conns:
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
            if pool is not None:
                with contextlib.suppress(Exception):
                    await pool.putconn(conn)
        held.conns.clear()
        held.tasks.clear()
        held.pool_conns.clear()

    def handlers(self) -> dict[str, Handler]:
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
            "brute-force": self._f_brute_force,
        }

    async def _f_error_rate(self, p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        share = min(1.0, max(0.0, float(p.get("share", 0.2))))
        return {"share": share}, {"routes": ["/experiments", "/datasets"]}

    async def _f_latency(self, p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        seconds = max(0.0, float(p.get("seconds", 2.5)))
        return {"seconds": seconds}, {"routes": ["/experiments", "/datasets", "/docs"]}

    async def _f_brute_force(self, p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        # Bad tokens from a few client addresses (X-Forwarded-For, which the access log honours), all
        # for one subject, at `rps`: the 401s surge, and the logs say from where and for whom.
        rps = min(200.0, max(1.0, float(p.get("rps", 20))))
        sources = min(8, max(1, int(p.get("sources", 3))))
        subject = str(p.get("subject") or "admin")
        addresses = [f"203.0.113.{17 + 23 * i}" for i in range(sources)]  # TEST-NET-3: documentation addresses
        self.held["brute-force"].tasks.append(asyncio.create_task(
            brute_force(self.platform.settings, rps=rps, addresses=addresses, subject=subject)))
        return {"rps": rps, "sources": sources, "subject": subject}, {"addresses": addresses}

    async def _f_docs_down(self, p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        return {}, {"route": "/docs"}

    async def _f_clock_skew(self, p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        # The API's clock: its Date header and its token validation. Ahead, tokens with less
        # than `seconds` left are expired (the clients' 60 s tokens all are); behind, freshly
        # issued tokens are not yet valid.
        seconds = float(p.get("seconds", 120))
        self.platform.auth.skew_s = seconds
        return {"seconds": seconds}, {"header": "Date", "token_validation": f"clock {seconds:+g} s"}

    async def _f_auth_secret_rotated(
        self, p: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        new_secret = str(p.get("new_secret") or "")
        detail: dict[str, Any] = {}
        if not new_secret:
            new_secret = secrets.token_urlsafe(32)
            detail["new_secret"] = new_secret
        if new_secret == self.platform.settings.jwt_secret:
            raise FaultError("new_secret equals the configured secret")
        self.platform.auth.rotate(new_secret)
        return {"rotated": True}, detail

    def _need_pool(self) -> AsyncConnectionPool:
        db = self.platform.db
        if db.pool is None:
            raise FaultError(f"database not connected: {db.error}")
        return db.pool

    async def _f_db_pool_leak(self, p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        fill = min(1.0, max(0.0, float(p.get("fill", 0.9))))
        pool = self._need_pool()
        db = self.platform.db
        held = self.held["db-pool-leak"]
        for _ in range(self.platform.settings.pool_max):
            conn = await pool.getconn(timeout=15.0)
            held.pool_conns.append(conn)
            await conn.execute("BEGIN")
            await conn.execute("SELECT now()")
        count_sql = "SELECT count(*) FROM pg_stat_activity"
        async with db.admin_conn() as conn:
            max_conns = int(await scalar(conn, "SHOW max_connections"))
        # fill=1.0: until PostgreSQL refuses (pg_stat_activity also lists background workers).
        target = math.ceil(fill * max_conns) if fill < 1.0 else max_conns * 2
        refused: str | None = None
        while refused is None and len(held.conns) <= max_conns:
            async with db.admin_conn() as conn:
                backends = int(await scalar(conn, count_sql))
            if backends >= target:
                break
            batch = min(target - backends, 16)
            results = await asyncio.gather(
                *(db.raw_connect() for _ in range(batch)), return_exceptions=True
            )
            for res in results:
                if isinstance(res, BaseException):
                    refused = first_line(res)
                else:
                    held.conns.append(res)
        async with db.admin_conn() as conn:
            backends = int(await scalar(conn, count_sql))
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
        conn = await self.platform.db.raw_connect()
        held.conns.append(conn)
        pid = conn.info.backend_pid
        held.tasks.append(asyncio.create_task(conn.execute("SELECT pg_sleep(%s)", (seconds,))))
        await self._wait_backend(pid, "state = 'active'")
        return {"seconds": seconds}, {"pid": pid}

    async def _f_blocking_lock(self, p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        held = self.held["blocking-lock"]
        holder = await self.platform.db.raw_connect()
        held.conns.append(holder)
        waiter = await self.platform.db.raw_connect()
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
            conn = await self.platform.db.raw_connect()
            held.conns.append(conn)
            await conn.execute("BEGIN")
            await conn.execute("SELECT now()")
            pids.append(conn.info.backend_pid)
        return {"count": count}, {"pids": pids}

    async def _f_stuck_experiment(self, p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        hours = max(0.0, float(p.get("hours", 6)))
        async with self.platform.db.admin_conn() as conn:
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
        db = self.platform.db
        if db.pool is None:
            return
        async with db.admin_conn() as conn:
            await conn.execute("DELETE FROM experiments WHERE worker = %s", (LOST_WORKER,))

    async def _f_quota_full(self, p: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        fraction = min(1.0, max(0.0, float(p.get("fraction", 0.95))))
        if self.filler_cleanup is not None:  # the old fillers count towards the new fill
            self.filler_cleanup.cancel()
        detail = await run_in_threadpool(self.platform.storage.fill_bucket, fraction)
        return {"fraction": fraction}, detail

    async def _wait_backend(self, pid: int, condition: str, timeout: float = 5.0) -> None:
        """Poll pg_stat_activity until the backend `pid` satisfies the SQL `condition`."""
        deadline = time.monotonic() + timeout
        sql = f"SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND {condition}"
        while True:
            async with self.platform.db.admin_conn() as conn:
                if int(await scalar(conn, sql, (pid,))) > 0:
                    return
            if time.monotonic() > deadline:
                raise FaultError(f"backend {pid} never satisfied: {condition}")
            await asyncio.sleep(0.05)

    # -- request-time fault effects -------------------------------------------------

    async def inject(self, request: Request) -> Response | None:
        """Latency and error-rate, applied to the non-health routes (an error is logged as the app's would be)."""
        seconds = self.param("latency", "seconds", 0.0)
        if seconds > 0:
            await asyncio.sleep(seconds)
        share = self.param("error-rate", "share", 0.0)
        if share > 0 and random.random() < share:
            api_log.error("Exception in ASGI application: %s %s: RuntimeError: experiment scheduler returned "
                          "an internal error (fault error-rate)", request.method, request.url.path)
            return JSONResponse({"error": "internal server error"}, status_code=500)
        return None
