"""PostgreSQL transport: one read-only, bounded session per process, its failures classified."""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from labcheck.errors import (
    ProbeAuthError,
    ProbeBadResponse,
    ProbeError,
    ProbeRefused,
    ProbeTimeout,
    ProbeUnreachable,
)
from labcheck.evidence import mask_dsn

if TYPE_CHECKING:
    from labcheck.lab import Lab

T = TypeVar("T")

APPLICATION_NAME = "labcheck"
QUERY_SHOWN_CHARS = 200
QUERY_FETCHED_CHARS = 1000

# How a failed connection is reported; each kind names its own cause.
REFUSED = "refused"
TIMED_OUT = "timed out"
AUTH_FAILED = "auth failed"
ROLE_MISSING = "role missing"
DATABASE_MISSING = "database missing"
PERMISSION_DENIED = "permission denied"
TOO_MANY_CLIENTS = "too many clients"
UNREACHABLE = "unreachable"

_KIND_ERRORS: dict[str, type[ProbeError]] = {
    REFUSED: ProbeRefused,
    TIMED_OUT: ProbeTimeout,
    AUTH_FAILED: ProbeAuthError,
    ROLE_MISSING: ProbeAuthError,
    DATABASE_MISSING: ProbeBadResponse,
    PERMISSION_DENIED: ProbeAuthError,
    TOO_MANY_CLIENTS: ProbeError,
    UNREACHABLE: ProbeUnreachable,
}

# Kinds that are about labcheck's own role, not the server's health: the checks are UNKNOWN.
OWN_ACCESS = frozenset({AUTH_FAILED, ROLE_MISSING, DATABASE_MISSING, PERMISSION_DENIED})

# SQLSTATEs a refused login carries (when libpq hands one over) and the texts PostgreSQL sends.
_TOO_MANY_STATES = {"53300"}
_AUTH_STATES = {"28P01", "28000"}
_MISSING_DB_STATES = {"3D000"}
_PERMISSION_STATES = {"42501"}
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


def role_of(dsn: str) -> str:
    """The role a DSN logs in as (libpq's default, the OS user, when it names none)."""
    try:
        user = unquote(urlsplit(dsn).username or "")
    except ValueError:
        user = ""
    if user:
        return user
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - only a name for messages
        return "(default role)"


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
    if "role \"" in text and "does not exist" in text:
        return ROLE_MISSING
    if state in _PERMISSION_STATES or "permission denied" in text:
        return PERMISSION_DENIED
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
    role: str = ""

    @property
    def own_access(self) -> bool:
        """Whether the failure is about labcheck's own role (credentials, grants), not the server."""
        return not self.ok and self.kind in OWN_ACCESS

    @property
    def error(self) -> ProbeError | None:
        """The failure as the UNKNOWN every other database check reports."""
        if self.ok:
            return None
        cls = _KIND_ERRORS.get(self.kind or "", ProbeUnreachable)
        if self.own_access:
            return cls(f"labcheck's database role {self.role or '(unknown)'!r} cannot connect: {self.kind} "
                       f"({self.message}); fix labcheck's credentials or grants, not the database",
                       target=self.target)
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
        self.user = role_of(dsn)
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
                           message=clean_message(str(exc), self.dsn)[:300], role=self.user)
        try:
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        except Exception as exc:  # noqa: BLE001 - a session we cannot make read-only is not used
            conn.close()
            return Attempt(self.target, False, time.monotonic() - started, kind=classify(exc),
                           message=clean_message(str(exc), self.dsn)[:300], role=self.user)
        if self._closed:  # the run ended while we were connecting
            conn.close()
        else:
            self._conn = conn
        return Attempt(self.target, True, time.monotonic() - started, role=self.user)

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
            raise ProbeAuthError(f"labcheck's database role {self.user!r}: permission denied for {what} "
                                 f"({clean_message(str(exc), self.dsn)[:160]}); grant it pg_monitor",
                                 target=self.target) from None
        except psycopg.OperationalError as exc:
            raise ProbeUnreachable(f"connection lost during {what} ({clean_message(str(exc), self.dsn)[:160]})",
                                   target=self.target) from None
        except psycopg.Error as exc:
            raise ProbeBadResponse(f"{what} failed: {type(exc).__name__}: {clean_message(str(exc), self.dsn)[:160]}",
                                   target=self.target) from None
        finally:
            self._lock.release()

    def run_last(self, fn: Callable[[Any], T], what: str) -> T:
        """``run`` the session's last question, then give the slot back whatever the outcome."""
        try:
            return self.run(fn, what)
        finally:
            self.release()

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


def rows(conn: Any, sql: str, params: Iterable[Any] | None = None) -> list[dict[str, Any]]:
    """The rows of one statement on `conn`, as dicts (inside ``Session.run``)."""
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return list(cur.fetchall())
