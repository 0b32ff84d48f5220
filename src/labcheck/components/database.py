"""The PostgreSQL primary (and replica), and the API's own pool; the ``db`` and ``db_pool`` fixtures.

Every fact is fetched once per run over the process's single read-only session
(``labcheck.probes.postgres``): the connect attempt, one pg_stat_activity snapshot, replica lag.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from labcheck.components import _signals
from labcheck.components._pool import Pools, from_prometheus, parse_pool_metrics, pool_query
from labcheck.components.api_gateway import Api
from labcheck.errors import NoData, NotConfigured, ProbeBadResponse, ProbeTimeout, Unknown
from labcheck.lab import Lab
from labcheck.prefetch import component, fact
from labcheck.probes import http, postgres, prometheus
from labcheck.probes.postgres import Attempt, Session

# --- the snapshot and its rows -----------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """One row of the pg_stat_activity snapshot."""

    pid: int
    usename: str | None
    application_name: str
    client_addr: str | None
    state: str | None
    backend_type: str | None
    backend_age_s: float | None
    xact_age_s: float | None
    query_age_s: float | None
    state_age_s: float | None
    lock_wait_s: float | None
    wait_event_type: str | None
    wait_event: str | None
    blocked_by: tuple[int, ...]
    query_raw: str = field(repr=False)
    is_self: bool = False

    @property
    def is_client(self) -> bool:
        return self.backend_type == "client backend"

    @property
    def query(self) -> str:
        """The first 200 characters of the query, literals redacted."""
        return postgres.redact_query(self.query_raw)

    @property
    def client(self) -> str:
        return f"{self.application_name or '(no application_name)'}@{self.client_addr or 'local'}"

    @property
    def waiting_s(self) -> float:
        """How long this session has been waiting for a lock (or running, before PG14)."""
        if self.lock_wait_s is not None:
            return self.lock_wait_s
        return self.query_age_s or 0.0

    def row(self) -> dict[str, Any]:
        """The row as evidence: the query is redacted, ages are rounded."""
        def age(v: float | None) -> float | None:
            return None if v is None else round(v, 1)

        return {
            "pid": self.pid, "usename": self.usename, "application_name": self.application_name,
            "client_addr": self.client_addr, "state": self.state, "backend_type": self.backend_type,
            "xact_age_s": age(self.xact_age_s), "query_age_s": age(self.query_age_s),
            "state_age_s": age(self.state_age_s), "lock_wait_s": age(self.lock_wait_s),
            "wait_event_type": self.wait_event_type, "wait_event": self.wait_event,
            "blocked_by": list(self.blocked_by), "query": self.query,
        }


@dataclass(frozen=True)
class ServerSettings:
    """The connection limits of the server."""

    version_num: int
    max_connections: int
    superuser_reserved: int
    reserved: int  # reserved_connections (PostgreSQL 16+), else 0

    @property
    def available(self) -> int:
        """Slots for ordinary roles: max_connections minus the reserved ones."""
        return max(self.max_connections - self.superuser_reserved - self.reserved, 0)

    def describe(self) -> str:
        parts = f"max_connections {self.max_connections} - superuser_reserved_connections {self.superuser_reserved}"
        if self.version_num >= 160000:
            parts += f" - reserved_connections {self.reserved}"
        return parts


@dataclass(frozen=True)
class Activity:
    """The run's single pg_stat_activity snapshot, and the server's connection limits."""

    target: str
    backends: tuple[Backend, ...]
    settings: ServerSettings

    @property
    def clients(self) -> list[Backend]:
        """Client backends: the ones max_connections counts."""
        return [b for b in self.backends if b.is_client]

    @property
    def others(self) -> list[Backend]:
        """Client backends other than labcheck's own session."""
        return [b for b in self.clients if not b.is_self]

    def by_state(self) -> dict[str, int]:
        return dict(Counter(b.state or "unknown" for b in self.clients).most_common())

    def top_clients(self, backends: Iterable[Backend] | None = None, n: int = 5) -> list[tuple[str, int]]:
        chosen = self.clients if backends is None else backends
        return Counter(b.client for b in chosen).most_common(n)

    def older_than(self, states: Iterable[str], seconds: float) -> list[Backend]:
        """Other client sessions in one of `states` for longer than `seconds`, oldest first."""
        wanted = set(states)
        found = [b for b in self.others if b.state in wanted and (b.state_age_s or 0.0) > seconds]
        return sorted(found, key=lambda b: b.state_age_s or 0.0, reverse=True)

    def long_running(self, seconds: float) -> list[Backend]:
        """Other client sessions running one query for longer than `seconds`, longest first."""
        found = [b for b in self.others if b.state == "active" and (b.query_age_s or 0.0) > seconds]
        return sorted(found, key=lambda b: b.query_age_s or 0.0, reverse=True)

    def blocked(self, seconds: float) -> list[Backend]:
        """Sessions waiting on another session's lock for longer than `seconds`, longest first."""
        found = [b for b in self.backends if b.blocked_by and b.waiting_s > seconds]
        return sorted(found, key=lambda b: b.waiting_s, reverse=True)

    def pid(self, pid: int) -> Backend | None:
        return next((b for b in self.backends if b.pid == pid), None)

    def lock_holders(self, blocked: Iterable[Backend]) -> list[dict[str, Any]]:
        """The sessions at the head of the lock queues ``blocked`` wait in, most waiters first.

        Each is a fact for the verdict: pid, state, age (of its open transaction, else of its
        state), application, client address, how many sessions it blocks, its query (redacted).
        A blocker that itself waits on another session is not a head: the chain is followed up.
        """
        waiting = list(blocked)
        counts: Counter[int] = Counter()
        for b in waiting:
            for pid in b.blocked_by:
                head = self._head(pid)
                if head is not None:
                    counts[head.pid] += 1
        holders = []
        for pid, n in counts.most_common():
            h = self.pid(pid)
            if h is None:
                continue
            age = h.xact_age_s if h.xact_age_s is not None else h.state_age_s
            holders.append({"pid": h.pid, "state": h.state, "age_s": None if age is None else round(age, 1),
                            "application": h.application_name or None, "client_addr": h.client_addr,
                            "blocks": n, "query": h.query})
        return holders

    def _head(self, pid: int) -> Backend | None:
        """Follow a blocker up its own waits to the session that waits on nobody."""
        seen: set[int] = set()
        current = self.pid(pid)
        while current is not None and current.blocked_by and current.pid not in seen:
            seen.add(current.pid)
            current = self.pid(current.blocked_by[0])
        return current


@dataclass(frozen=True)
class Replication:
    """Replay lag as the replica sees it."""

    target: str
    in_recovery: bool
    lag_s: float | None
    receive_lsn: str | None
    replay_lsn: str | None
    last_replay: str | None

    def row(self) -> dict[str, Any]:
        return {"in_recovery": self.in_recovery, "lag_s": self.lag_s, "receive_lsn": self.receive_lsn,
                "replay_lsn": self.replay_lsn, "last_replay": self.last_replay}


_SETTINGS_SQL = """
SELECT current_setting('server_version_num')::int AS version_num,
       current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved,
       coalesce((SELECT setting::int FROM pg_settings WHERE name = 'reserved_connections'), 0) AS reserved
"""

_ACTIVITY_SQL = """
SELECT a.pid, a.usename, a.application_name, host(a.client_addr) AS client_addr, a.state, a.backend_type,
       a.xact_start, a.query_start, a.state_change,
       extract(epoch FROM now() - a.backend_start)::float8 AS backend_age_s,
       extract(epoch FROM now() - a.xact_start)::float8 AS xact_age_s,
       extract(epoch FROM now() - a.query_start)::float8 AS query_age_s,
       extract(epoch FROM now() - a.state_change)::float8 AS state_age_s,
       {lock_wait} AS lock_wait_s,
       a.wait_event_type, a.wait_event, pg_blocking_pids(a.pid) AS blocked_by,
       left(a.query, {chars}) AS query, a.pid = pg_backend_pid() AS is_self
FROM pg_stat_activity a
"""
# pg_locks.waitstart (PostgreSQL 14+) says exactly when a lock wait began.
_LOCK_WAIT_14 = ("(SELECT extract(epoch FROM now() - min(l.waitstart))::float8"
                 " FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted)")

_REPLICATION_SQL = """
SELECT pg_is_in_recovery() AS in_recovery,
       pg_last_wal_receive_lsn()::text AS receive_lsn,
       pg_last_wal_replay_lsn()::text AS replay_lsn,
       pg_last_xact_replay_timestamp()::text AS last_replay,
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0.0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END AS lag_s
"""


def _backend(row: dict[str, Any]) -> Backend:
    return Backend(
        pid=int(row["pid"]), usename=row["usename"], application_name=row["application_name"] or "",
        client_addr=row["client_addr"], state=row["state"], backend_type=row["backend_type"],
        backend_age_s=row["backend_age_s"], xact_age_s=row["xact_age_s"], query_age_s=row["query_age_s"],
        state_age_s=row["state_age_s"], lock_wait_s=row["lock_wait_s"],
        wait_event_type=row["wait_event_type"], wait_event=row["wait_event"],
        blocked_by=tuple(int(p) for p in row["blocked_by"] or ()), query_raw=row["query"] or "",
        is_self=bool(row["is_self"]),
    )


def _activity(conn: Any, target: str) -> Activity:
    s = postgres.rows(conn, _SETTINGS_SQL)[0]
    server = ServerSettings(version_num=int(s["version_num"]), max_connections=int(s["max_connections"]),
                            superuser_reserved=int(s["superuser_reserved"]), reserved=int(s["reserved"]))
    lock_wait = _LOCK_WAIT_14 if server.version_num >= 140000 else "NULL::float8"
    rows = postgres.rows(conn, _ACTIVITY_SQL.format(lock_wait=lock_wait, chars=postgres.QUERY_FETCHED_CHARS))
    return Activity(target=target, backends=tuple(_backend(r) for r in rows), settings=server)


def _replication(conn: Any, target: str) -> Replication:
    r = postgres.rows(conn, _REPLICATION_SQL)[0]
    return Replication(target=target, in_recovery=bool(r["in_recovery"]), lag_s=r["lag_s"],
                       receive_lsn=r["receive_lsn"], replay_lsn=r["replay_lsn"], last_replay=r["last_replay"])


@component("db")
class Database:
    """The database as the checks see it: every fact fetched once per run over one session."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def _dsn(self, key: str, what: str) -> str:
        dsn = self.lab.settings.values.get(key)
        if not dsn:
            raise NotConfigured(f"{key} is not configured", target=what)
        return str(dsn)

    @fact(None)
    def session(self, role: str = "primary") -> Session:
        """The one session to the primary (or the replica) for this process."""
        key = "database_url" if role == "primary" else "replica_url"
        dsn = self._dsn(key, f"PostgreSQL {role}")
        return self.lab.client(f"postgres {role}", lambda: Session(self.lab, dsn, role=role))

    @property
    def target(self) -> str:
        return self.session().target

    @property
    def _connect_budget(self) -> float:
        # libpq (and psycopg) wait at least 2 s whatever connect_timeout says.
        return max(self.lab.settings.connect_s, 2.0) + 1.5

    @property
    def _budget(self) -> float:
        s = self.lab.settings
        return s.connect_s + float(s.statement_timeout) * 2 + 1.0

    def _start_connect(self) -> None:
        """Connect to the primary in the background, while other checks run."""
        if self.lab.settings.values.get("database_url"):
            self.lab.start("postgres primary connect", self.session().attempt)

    def _start_snapshot(self) -> None:
        """Connect, then take the pg_stat_activity snapshot, in the background."""
        if self.lab.settings.values.get("database_url"):
            self._start_connect()
            key, fn, _ = self._snapshot()
            self.lab.start(key, fn)

    @fact(lambda db, uses: db._start_connect())
    def attempt(self) -> Attempt:
        """Connect to the primary once per run; failing to is returned, not raised (except for our own role)."""
        session = self.session()
        try:
            attempt = self.lab.fact("postgres primary connect", session.attempt, target=session.target,
                                    budget=self._connect_budget)
        except ProbeTimeout as exc:
            return Attempt(session.target, False, self._connect_budget, kind=postgres.TIMED_OUT,
                           message=exc.reason, role=session.user)
        if attempt.own_access and attempt.error is not None:
            # labcheck's own role was refused (password, role, database, grants): we could not
            # check the server, which answered. UNKNOWN, naming the role; refusals stay FAILED.
            raise attempt.error
        return attempt

    def _snapshot(self) -> tuple[str, Callable[[], Activity], str]:
        session = self.session()

        def fetch() -> Activity:
            # The snapshot is the last thing we ask the primary: during connection exhaustion
            # labcheck must not sit on a slot for the rest of the run.
            return session.run_last(lambda c: _activity(c, session.target), "the pg_stat_activity snapshot")

        return "postgres pg_stat_activity", fetch, session.target

    @fact(lambda db, uses: db._start_snapshot())
    def activity(self) -> Activity:
        """The run's single pg_stat_activity snapshot (UNKNOWN when we cannot connect)."""
        attempt = self.attempt()
        if attempt.error is not None:
            raise attempt.error
        key, fn, target = self._snapshot()
        return self.lab.fact(key, fn, target=target, budget=self._budget)

    @fact(None)  # the replica is read when asked
    def replication(self) -> Replication:
        """Replica lag, where a replica is configured; otherwise UNKNOWN, never a pass."""
        if not self.lab.settings.values.get("replica_url"):
            raise NotConfigured("no replica configured (set replica_url to check replication lag)",
                                target="PostgreSQL replica")
        session = self.session("replica")

        def fetch() -> Replication:
            return session.run_last(lambda c: _replication(c, session.target), "the replication query")

        return self.lab.fact("postgres replica lag", fetch, target=session.target, budget=self._budget)


@pytest.fixture(scope="session")
def db(lab: Lab) -> Database:
    """The database: the connect attempt, the pg_stat_activity snapshot and replication lag."""
    return Database(lab)


# --- the application's own pool -------------------------------------------------------------


@component("db_pool", make=lambda lab: AppPool(Api(lab)))
class AppPool:
    """The platform API's database pool, per pod: through Prometheus when it has the gauges, else
    from the API's own /metrics (one replica: whichever answered). One query or one GET per run."""

    def __init__(self, api: Api) -> None:
        self.api = api

    @property
    def lab(self) -> Lab:
        return self.api.lab

    def _start(self) -> None:
        """Start the pool query in the background (the /metrics fallback is fetched when needed)."""
        if self.lab.settings.prometheus_url:
            prometheus.start(self.lab, pool_query(_signals.static(self.lab)))
        elif self.lab.settings.api_url:
            http.start(self.lab, self.api.url("/metrics"))

    @fact(lambda pool, uses: pool._start())
    def stats(self) -> Pools:
        """Every pod's pool; UNKNOWN naming the gauges looked for when neither source has them."""
        m = _signals.static(self.lab)
        why = "prometheus_url is not configured"
        if self.lab.settings.prometheus_url:
            q = pool_query(m)
            try:
                series = prometheus.query(self.lab, q)
            except Unknown as exc:
                why = f"Prometheus could not be asked ({exc.reason})"
            else:
                if series:
                    source = f"Prometheus {self.lab.settings.prometheus_url} (query {q})"
                    return from_prometheus(source, m, ((s.labels, s.value) for s in series))
                why = f"Prometheus has no series of {', '.join(m.pool_names().values())} (query {q})"
        try:
            result = self.api.get("/metrics")
        except Unknown as exc:
            raise NoData(f"{why}; and the API's /metrics could not be read ({exc.reason})",
                         target="the application's database pool") from None
        if result.status != 200:
            raise ProbeBadResponse(f"{why}; and HTTP {result.status} for the application's metrics",
                                   target=result.url)
        try:
            return parse_pool_metrics(result.text, result.url, m)
        except Unknown as exc:
            raise type(exc)(f"{why}; and from /metrics: {exc.reason}", target=exc.target) from None


@pytest.fixture(scope="session")
def db_pool(api: Api) -> AppPool:
    """The platform API's own database pool, through Prometheus or its /metrics."""
    return AppPool(api)
