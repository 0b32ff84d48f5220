"""The sandbox API's PostgreSQL side: the pool, the experiments schema, the workers' heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from labcheck.sandbox.api.settings import APP_NAME, ApiSettings, first_line, log

LIVE_WORKERS = ["experiment-worker-0", "experiment-worker-1"]


class Database:
    """The connection pool (opened once PostgreSQL answers) and one raw connection for the faults."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.pool: AsyncConnectionPool | None = None
        self.error: str | None = "not connected yet"
        self.schema_ready = asyncio.Event()
        self._admin: psycopg.AsyncConnection[Any] | None = None
        self._admin_lock = asyncio.Lock()

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

    async def close(self) -> None:
        """At shutdown: the faults' connection, then the pool."""
        await self.close_admin_conn()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await self.pool.close(timeout=3.0)

    async def bootstrap(self) -> None:
        """Open the pool once PostgreSQL answers, then create and seed the schema."""
        s = self.settings
        while self.pool is None:
            try:
                conn = await psycopg.AsyncConnection.connect(s.dsn, **self._conn_kwargs())
                await conn.close()
            except Exception as exc:  # noqa: BLE001 - PostgreSQL may still be starting
                self.error = f"connect failed: {first_line(exc)}"
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
            self.error = None
        while True:
            try:
                async with self.pool.connection(timeout=10) as conn:
                    await _create_schema(conn, s.grant_select_to)
                log.info("database ready")
                self.schema_ready.set()
                return
            except Exception as exc:  # noqa: BLE001
                log.warning("schema bootstrap failed, retrying: %s", first_line(exc))
                await asyncio.sleep(1.0)

    async def heartbeat(self, report_running: Callable[[int], None]) -> None:
        """Like the experiment workers: running experiments report progress every few seconds.

        `report_running` receives the count of running experiments after each beat.
        """
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
                    report_running(row[0] if row else 0)
            except Exception as exc:  # noqa: BLE001
                log.debug("heartbeat failed: %s", first_line(exc))
            await asyncio.sleep(3.0)

    async def check(self) -> tuple[bool, str]:
        if self.pool is None:
            return False, self.error or "not connected"
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
            return False, first_line(exc)


async def scalar(conn: psycopg.AsyncConnection[Any], sql: str, args: Any = None) -> Any:
    cur = await conn.execute(sql, args)
    row = await cur.fetchone()
    return row[0] if row else None


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
        if int(await scalar(conn, "SELECT count(*) FROM experiments")) == 0:
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
