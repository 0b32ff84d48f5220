"""PostgreSQL probe: one read-only session per process, and one pg_stat_activity snapshot per run."""

from __future__ import annotations

import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from labcheck.errors import (
    NoData,
    NotConfigured,
    ProbeAuthError,
    ProbeBadResponse,
    ProbeError,
    ProbeRefused,
    ProbeTimeout,
    ProbeUnreachable,
)
from labcheck.evidence import mask_dsn

if TYPE_CHECKING:
    from labcheck.components.api_gateway import Api
    from labcheck.lab import Lab

T = TypeVar("T")

APPLICATION_NAME = "labcheck"
QUERY_SHOWN_CHARS = 200
QUERY_FETCHED_CHARS = 1000

# How a failed connection is reported; each kind names its own cause.
REFUSED = "refused"
TIMED_OUT = "timed out"
AUTH_FAILED = "auth failed"
DATABASE_MISSING = "database missing"
TOO_MANY_CLIENTS = "too many clients"
UNREACHABLE = "unreachable"

_KIND_ERRORS: dict[str, type[ProbeError]] = {
    REFUSED: ProbeRefused,
    TIMED_OUT: ProbeTimeout,
    AUTH_FAILED: ProbeAuthError,
    DATABASE_MISSING: ProbeBadResponse,
    TOO_MANY_CLIENTS: ProbeError,
    UNREACHABLE: ProbeUnreachable,
}

# SQLSTATEs a refused login carries (when libpq hands one over) and the texts PostgreSQL sends.
_TOO_MANY_STATES = {"53300"}
_AUTH_STATES = {"28P01", "28000"}
_MISSING_DB_STATES = {"3D000"}
_TOO_MANY_TEXTS = ("too many clients", "too many connections", "remaining connection slots are reserved")
_AUTH_TEXTS = ("password authentication failed", "no pg_hba.conf entry", "authentication failed",
               "role \"", "no password supplied", "peer authentication failed")
_TIMEOUT_TEXTS = ("timeout expired", "timed out", "connection timeout")
_REFUSED_TEXTS = ("connection refused",)
_UNREACHABLE_TEXTS = ("could not translate host name", "name or service not known", "no route to host",
                      "network is unreachable", "temporary failure in name resolution")


# --- query text ------------------------------------------------------------------------------

# One pass over the text, left to right, so a quote inside an identifier or a comment cannot
# start a literal. Quoted identifiers and $n parameters are kept; literals and numbers become ?,
# as pg_stat_statements normalises them. An unterminated literal (the text was cut) runs to the end.
_SQL_TOKENS = re.compile(
    r"""
      (?P<ident>"(?:[^"]|"")*"?)                       # "quoted identifier": kept
    | (?P<dollar>\$(?P<tag>[A-Za-z_]\w*)?\$.*?(?:\$(?P=tag)?\$|\Z))  # $tag$ ... $tag$ literal
    | (?P<param>\$\d+)                                 # $1: a bind parameter, kept
    | (?P<string>[EeBbXxNn]?'(?:[^'\\]|''|\\.)*(?:'|\Z))  # 'string', E'...', B'...', X'...'
    | (?P<word>[A-Za-z_][\w$]*)                        # identifiers and keywords (t1, col2): kept
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)  # 42, 3.14, .5, 1e9
    """,
    re.VERBOSE | re.DOTALL,
)


def redact_query(text: str | None, limit: int = QUERY_SHOWN_CHARS) -> str:
    """A query's first `limit` characters with its literals replaced by ``?`` (redacted first)."""
    if not text:
        return ""

    def replace(match: re.Match[str]) -> str:
        if match.group("string") is not None or match.group("dollar") is not None:
            return "?"
        if match.group("number") is not None:
            return "?"
        return match.group(0)

    redacted = _SQL_TOKENS.sub(replace, text)
    redacted = " ".join(redacted.split())
    return redacted if len(redacted) <= limit else redacted[: limit - 1] + "…"


# --- the connection ------------------------------------------------------------------------


def describe_dsn(dsn: str) -> str:
    """``host:port/dbname`` of a DSN, without its user or password."""
    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432
    db = unquote(parts.path.lstrip("/")) or (unquote(parts.username or "") or "postgres")
    return f"{host}:{port}/{db}"


def _password(dsn: str) -> str | None:
    try:
        return unquote(urlsplit(dsn).password or "") or None
    except ValueError:
        return None


def clean_message(text: str, dsn: str) -> str:
    """A libpq error message on one line, without the DSN's password."""
    text = mask_dsn(text)
    password = _password(dsn)
    if password:
        text = text.replace(password, "***")
    return " ".join(text.split())


def classify(exc: BaseException) -> str:
    """The kind of a failed connection attempt: refused, timed out, auth failed, ..."""
    state = getattr(exc, "sqlstate", None)
    text = str(exc).lower()
    if state in _TOO_MANY_STATES or any(t in text for t in _TOO_MANY_TEXTS):
        return TOO_MANY_CLIENTS
    if state in _MISSING_DB_STATES or ("database \"" in text and "does not exist" in text):
        return DATABASE_MISSING
    if state in _AUTH_STATES or any(t in text for t in _AUTH_TEXTS):
        return AUTH_FAILED
    if type(exc).__name__ == "ConnectionTimeout" or any(t in text for t in _TIMEOUT_TEXTS):
        return TIMED_OUT
    if any(t in text for t in _REFUSED_TEXTS):
        return REFUSED
    return UNREACHABLE


@dataclass(frozen=True)
class Attempt:
    """One connection attempt: the failure, when there is one, is itself the observation."""

    target: str
    ok: bool
    elapsed_s: float
    kind: str | None = None
    message: str = ""

    @property
    def error(self) -> ProbeError | None:
        """The failure as the UNKNOWN every other database check reports."""
        if self.ok:
            return None
        cls = _KIND_ERRORS.get(self.kind or "", ProbeUnreachable)
        after = f" after {self.elapsed_s:.1f} s" if self.kind == TIMED_OUT else ""
        return cls(f"cannot connect: {self.kind}{after} ({self.message})", target=self.target)

    def describe(self) -> str:
        if self.ok:
            return f"connected in {self.elapsed_s:.3f} s"
        return f"{self.kind} after {self.elapsed_s:.3f} s ({self.message})"


class Session:
    """The process's single read-only connection, shared by every database check.

    It connects at most once per run and never retries: during an incident another
    connection attempt is load on a database that may be out of slots. Once the run's
    facts are fetched it gives the slot back (``release``) and does not connect again.
    """

    def __init__(self, lab: Lab, dsn: str, *, role: str) -> None:
        self.lab = lab
        self.dsn = dsn
        self.role = role
        self.target = f"PostgreSQL {role} {describe_dsn(dsn)}"
        self._lock = threading.Lock()
        self._conn: Any = None
        self._attempt: Attempt | None = None
        self._closed = False

    @property
    def statement_timeout_ms(self) -> int:
        return max(1, int(self.lab.settings.statement_timeout * 1000))

    def _options(self) -> str:
        ms = self.statement_timeout_ms
        return " ".join([
            f"-c statement_timeout={ms}",
            f"-c lock_timeout={ms}",
            "-c default_transaction_read_only=on",
            # We run in autocommit, so we are never idle in a transaction; if we ever are,
            # the server ends the session rather than let it hold a snapshot.
            f"-c idle_in_transaction_session_timeout={max(ms * 2, 1000)}",
        ])

    def attempt(self) -> Attempt:
        """Connect, once per run; every later call returns the same attempt."""
        with self._lock:
            if self._attempt is None:
                self._attempt = self._connect()
            return self._attempt

    def _connect(self) -> Attempt:
        import psycopg

        settings = self.lab.settings
        started = time.monotonic()
        try:
            conn = psycopg.connect(
                self.dsn,
                connect_timeout=max(1, math.ceil(settings.connect_s)),
                application_name=APPLICATION_NAME,
                options=self._options(),
                autocommit=True,
            )
        except Exception as exc:  # noqa: BLE001 - classified, never retried
            return Attempt(self.target, False, time.monotonic() - started, kind=classify(exc),
                           message=clean_message(str(exc), self.dsn)[:300])
        try:
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        except Exception as exc:  # noqa: BLE001 - a session we cannot make read-only is not used
            conn.close()
            return Attempt(self.target, False, time.monotonic() - started, kind=classify(exc),
                           message=clean_message(str(exc), self.dsn)[:300])
        if self._closed:  # the run ended while we were connecting
            conn.close()
        else:
            self._conn = conn
        return Attempt(self.target, True, time.monotonic() - started)

    def run(self, fn: Callable[[Any], T], what: str) -> T:
        """Run `fn(connection)` under the session lock; errors become UNKNOWN naming `what`."""
        import psycopg

        attempt = self.attempt()
        if attempt.error is not None:
            raise attempt.error
        if not self._lock.acquire(timeout=self.lab.budget + self.lab.settings.statement_timeout):
            raise ProbeTimeout(f"the shared session stayed busy; gave up before {what}", target=self.target)
        try:
            if self._conn is None or self._conn.closed:
                raise ProbeUnreachable(f"connection closed before {what}", target=self.target)
            return fn(self._conn)
        except psycopg.errors.QueryCanceled:
            raise ProbeTimeout(f"statement_timeout ({self.statement_timeout_ms} ms) hit by {what}",
                               target=self.target) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ProbeAuthError(f"permission denied for {what} ({clean_message(str(exc), self.dsn)[:160]}); "
                                 "grant pg_monitor", target=self.target) from None
        except psycopg.OperationalError as exc:
            raise ProbeUnreachable(f"connection lost during {what} ({clean_message(str(exc), self.dsn)[:160]})",
                                   target=self.target) from None
        except psycopg.Error as exc:
            raise ProbeBadResponse(f"{what} failed: {type(exc).__name__}: {clean_message(str(exc), self.dsn)[:160]}",
                                   target=self.target) from None
        finally:
            self._lock.release()

    def release(self) -> None:
        """Give the connection slot back once every fact is fetched; never reconnect after."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _rows(conn: Any, sql: str, params: Iterable[Any] | None = None) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return list(cur.fetchall())


# --- facts -----------------------------------------------------------------------------------


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
        return redact_query(self.query_raw)

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
    s = _rows(conn, _SETTINGS_SQL)[0]
    server = ServerSettings(version_num=int(s["version_num"]), max_connections=int(s["max_connections"]),
                            superuser_reserved=int(s["superuser_reserved"]), reserved=int(s["reserved"]))
    lock_wait = _LOCK_WAIT_14 if server.version_num >= 140000 else "NULL::float8"
    rows = _rows(conn, _ACTIVITY_SQL.format(lock_wait=lock_wait, chars=QUERY_FETCHED_CHARS))
    return Activity(target=target, backends=tuple(_backend(r) for r in rows), settings=server)


def _replication(conn: Any, target: str) -> Replication:
    r = _rows(conn, _REPLICATION_SQL)[0]
    return Replication(target=target, in_recovery=bool(r["in_recovery"]), lag_s=r["lag_s"],
                       receive_lsn=r["receive_lsn"], replay_lsn=r["replay_lsn"], last_replay=r["last_replay"])


class Database:
    """The database as the checks see it: every fact fetched once per run over one session."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def _dsn(self, key: str, what: str) -> str:
        dsn = self.lab.settings.values.get(key)
        if not dsn:
            raise NotConfigured(f"{key} is not configured", target=what)
        return str(dsn)

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

    def attempt(self) -> Attempt:
        """Connect to the primary once per run; failing to is returned, not raised."""
        session = self.session()
        try:
            return self.lab.fact("postgres primary connect", session.attempt, target=session.target,
                                 budget=self._connect_budget)
        except ProbeTimeout as exc:
            return Attempt(session.target, False, self._connect_budget, kind=TIMED_OUT, message=exc.reason)

    def _snapshot(self) -> tuple[str, Callable[[], Activity], str]:
        session = self.session()

        def fetch() -> Activity:
            # The snapshot is the last thing we ask the primary: during connection exhaustion
            # labcheck must not sit on a slot for the rest of the run.
            try:
                return session.run(lambda c: _activity(c, session.target), "the pg_stat_activity snapshot")
            finally:
                session.release()

        return "postgres pg_stat_activity", fetch, session.target

    def prefetch(self, facts: Collection[str] = ("connect", "snapshot")) -> None:
        """Connect (and take the snapshot, when asked) in the background, while other checks run."""
        if not self.lab.settings.values.get("database_url") or not facts:
            return
        session = self.session()
        self.lab.start("postgres primary connect", session.attempt)
        if "snapshot" in facts:
            key, fn, _ = self._snapshot()
            self.lab.start(key, fn)

    def activity(self) -> Activity:
        """The run's single pg_stat_activity snapshot (UNKNOWN when we cannot connect)."""
        attempt = self.attempt()
        if attempt.error is not None:
            raise attempt.error
        key, fn, target = self._snapshot()
        return self.lab.fact(key, fn, target=target, budget=self._budget)

    def replication(self) -> Replication:
        """Replica lag, where a replica is configured; otherwise UNKNOWN, never a pass."""
        if not self.lab.settings.values.get("replica_url"):
            raise NotConfigured("no replica configured (set replica_url to check replication lag)",
                                target="PostgreSQL replica")
        session = self.session("replica")

        def fetch() -> Replication:
            try:
                return session.run(lambda c: _replication(c, session.target), "the replication query")
            finally:
                session.release()

        return self.lab.fact("postgres replica lag", fetch, target=session.target, budget=self._budget)


# --- the application's own pool -------------------------------------------------------------

POOL_SERIES = ("db_pool_connections", "db_pool_max_connections", "db_pool_waiters")
POOL_IDLE_SERIES = "db_pool_idle_connections"


@dataclass(frozen=True)
class PoolStats:
    """The API's database pool, from its /metrics."""

    url: str
    connections: float
    max_connections: float
    waiters: float
    idle: float | None
    samples: dict[str, float]

    @property
    def in_use(self) -> float:
        """Connections checked out: open minus idle, where the pool says how many are idle."""
        return self.connections - (self.idle or 0.0)

    @property
    def saturated(self) -> bool:
        # A pool that grew to its maximum but still has idle connections serves the next
        # request at once; it is saturated when requests wait or every connection is in use.
        return self.waiters > 0 or self.in_use >= self.max_connections

    def describe(self) -> str:
        idle = "" if self.idle is None else f" ({self.in_use:g} in use, {self.idle:g} idle)"
        return (f"{self.connections:g} of {self.max_connections:g} pool connections open{idle}, "
                f"{self.waiters:g} waiter(s)")


def parse_pool_metrics(text: str, url: str) -> PoolStats:
    """The pool gauges from a Prometheus exposition; a missing series is UNKNOWN naming it."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = (*POOL_SERIES, POOL_IDLE_SERIES)
    values: dict[str, float] = {}
    samples: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("db_pool_"):
                    labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                    samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
                    if sample.name in wanted and not math.isnan(sample.value):
                        values[sample.name] = values.get(sample.name, 0.0) + sample.value
    except ValueError as exc:
        raise ProbeBadResponse(f"/metrics is not a Prometheus exposition ({str(exc)[:120]})", target=url) from None
    missing = [name for name in POOL_SERIES if name not in values]
    if missing:
        raise NoData(f"the application does not expose {', '.join(missing)}", target=url)
    return PoolStats(url=url, connections=values["db_pool_connections"],
                     max_connections=values["db_pool_max_connections"], waiters=values["db_pool_waiters"],
                     idle=values.get(POOL_IDLE_SERIES), samples=samples)


class AppPool:
    """The platform API's database pool, read from the API's own /metrics once per run."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def prefetch(self, facts: Collection[str] = ("metrics",)) -> None:
        """Start the GET of /metrics in the background (the same fact ``stats`` reads)."""
        from labcheck.probes import http

        if self.api.lab.settings.api_url and "metrics" in facts:
            http.start(self.api.lab, self.api.url("/metrics"))

    def stats(self) -> PoolStats:
        result = self.api.get("/metrics")
        if result.status != 200:
            raise ProbeBadResponse(f"HTTP {result.status} for the application's metrics", target=result.url)
        return parse_pool_metrics(result.text, result.url)
