"""The database checks: query redaction and failure classification, then the live sandbox."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from labcheck import config
from labcheck.components._pool import from_prometheus, parse_pool_metrics, pool_query
from labcheck.components.database import Database
from labcheck.errors import NoData, ProbeBadResponse, ProbeError
from labcheck.evidence import Redactor
from labcheck.lab import Lab
from labcheck.probes import postgres
from labcheck.signals import SignalMap

CHECKS = "checks/database.py"
# Every check that reads the pg_stat_activity snapshot: UNKNOWN when labcheck cannot connect.
SNAPSHOT_CHECKS = (
    "check_connection_headroom_below_sev1",
    "check_connection_headroom_below_sev2",
    "check_no_idle_connection_leak",
    "check_no_long_idle_in_transaction",
    "check_no_long_running_queries",
    "check_no_blocking_locks",
)
ALL_CHECKS = ("check_database_accepts_connections", *SNAPSHOT_CHECKS, "check_pool_not_saturated",
              "check_replication_lag")


# --- without the sandbox ---------------------------------------------------------------------


@pytest.mark.parametrize(("query", "shown"), [
    ("SELECT * FROM users WHERE email = 'alice@example.com' AND id = 42",
     "SELECT * FROM users WHERE email = ? AND id = ?"),
    ("UPDATE t SET pw = 'it''s secret', n = 3.5e2 WHERE x = $1", "UPDATE t SET pw = ?, n = ? WHERE x = $1"),
    ("SELECT \"col1\", t2.c3 FROM t2 WHERE v IN (1, 2.5, .5)", "SELECT \"col1\", t2.c3 FROM t2 WHERE v IN (?, ?, ?)"),
    ("SELECT E'a\\'b', $$dollar 'quoted' 7$$, $fn$body$fn$", "SELECT ?, ?, ?"),
    ("SELECT 'cut off at the fetch limit with a secret", "SELECT ?"),
    ("SELECT   1\n  FROM\tx", "SELECT ? FROM x"),
    (None, ""),
])
def test_query_literals_are_redacted(query: str | None, shown: str) -> None:
    assert postgres.redact_query(query) == shown


def test_query_is_redacted_before_it_is_cut_to_200_characters() -> None:
    secret = "s3cr3t-" * 40
    text = postgres.redact_query("SELECT " + "a, " * 60 + f"'{secret}'")
    assert len(text) <= postgres.QUERY_SHOWN_CHARS
    assert "s3cr3t" not in postgres.redact_query(f"SELECT '{secret}'")
    # A literal cut by the 1000-character fetch limit has no closing quote: still redacted.
    assert postgres.redact_query(f"SELECT '{secret[:30]}") == "SELECT ?"
    assert "s3cr3t" not in text


class _PgError(Exception):
    def __init__(self, text: str, sqlstate: str | None = None) -> None:
        super().__init__(text)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(("message", "sqlstate", "kind"), [
    ('connection to server at "10.0.0.5", port 5432 failed: FATAL:  sorry, too many clients already', None,
     "too many clients"),
    ("FATAL: remaining connection slots are reserved for roles with the SUPERUSER attribute", "53300",
     "too many clients"),
    ('FATAL:  password authentication failed for user "labcheck"', None, "auth failed"),
    ('FATAL:  no pg_hba.conf entry for host "10.1.1.1"', "28000", "auth failed"),
    ('FATAL:  database "nope" does not exist', None, "database missing"),
    ('FATAL:  database "nope" does not exist', "3D000", "database missing"),
    ('FATAL:  role "ghost" does not exist', "28000", "role missing"),
    ("FATAL:  permission denied for database \"app\"", "42501", "permission denied"),
    ("FATAL:  password authentication failed", "28P01", "auth failed"),
    ('connection to server at "127.0.0.1", port 1 failed: Connection refused', None, "refused"),
    ("connection timeout expired", None, "timed out"),
    ('could not translate host name "db.invalid" to address', None, "unreachable"),
])
def test_connection_failures_are_told_apart(message: str, sqlstate: str | None, kind: str) -> None:
    assert postgres.classify(_PgError(message, sqlstate)) == kind


@pytest.mark.parametrize(("kind", "own"), [
    ("auth failed", True), ("role missing", True), ("database missing", True), ("permission denied", True),
    ("refused", False), ("timed out", False), ("too many clients", False), ("unreachable", False),
])
def test_own_role_failures_are_unknown_naming_the_role(kind: str, own: bool) -> None:
    attempt = postgres.Attempt("PostgreSQL primary db:5432/app", False, 0.1, kind=kind, message="m",
                               role="labcheck_ro")
    assert attempt.own_access is own
    assert attempt.error is not None
    assert ("labcheck's database role 'labcheck_ro'" in str(attempt.error)) is own


def test_connection_messages_never_carry_the_password() -> None:
    dsn = "postgresql://labcheck:hunter2-pw@db.example:5432/app"
    text = postgres.clean_message(f"could not connect with {dsn}: hunter2-pw rejected", dsn)
    assert "hunter2-pw" not in text
    assert postgres.describe_dsn(dsn) == "db.example:5432/app"


def _lab_for(dsn: str, **keys: Any) -> Lab:
    cli = {"database_url": (dsn, "test"), **{k: (v, "test") for k, v in keys.items()}}
    settings = config.load(cli=cli, environ={}, use_sandbox=False)
    return Lab(settings, redactor=Redactor(settings.secrets))


def test_refused_connection_is_an_attempt_and_unknown_for_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import psycopg

    calls = []
    real_connect = psycopg.connect

    def counting_connect(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(psycopg, "connect", counting_connect)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    lab = _lab_for(f"postgresql://labcheck:hunter2-pw@127.0.0.1:{port}/app")
    try:
        db = Database(lab)
        attempt = db.attempt()
        assert not attempt.ok and attempt.kind == "refused", attempt
        assert "hunter2-pw" not in attempt.describe()
        with pytest.raises(ProbeError, match="cannot connect: refused"):
            db.activity()
        assert db.attempt() is attempt
        assert len(calls) == 1  # one attempt per run, never retried
        assert calls[0]["application_name"] == "labcheck" and calls[0]["autocommit"] is True
        assert "default_transaction_read_only=on" in calls[0]["options"]
    finally:
        lab.close()


def test_silent_listener_is_timed_out_not_a_hang() -> None:
    import socket
    import time

    with socket.socket() as server:  # accepts (the kernel does) and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        lab = _lab_for(f"postgresql://u:p@127.0.0.1:{server.getsockname()[1]}/app", timeout=1)
        started = time.monotonic()
        try:
            attempt = Database(lab).attempt()
        finally:
            lab.close()
    assert attempt.kind == "timed out", attempt
    assert time.monotonic() - started < 5


def test_pool_metrics_missing_series_is_no_data() -> None:
    text = "# TYPE db_pool_connections gauge\ndb_pool_connections 3\n"
    with pytest.raises(NoData, match="db_pool_max_connections, db_pool_waiters"):
        parse_pool_metrics(text, "http://api/metrics")
    with pytest.raises(ProbeBadResponse):
        parse_pool_metrics("<html>not metrics{", "http://api/metrics")
    full = text + "db_pool_max_connections 10\ndb_pool_waiters 2\n"
    stats = parse_pool_metrics(full, "http://api/metrics")
    assert stats.saturated and stats.worst.waiters == 2


def test_pool_query_is_one_query_for_every_gauge_per_pod() -> None:
    m = SignalMap(selector='job="api"')
    assert pool_query(m) == ('sum by (__name__, pod, kubernetes_pod_name, instance) ({__name__=~"db_pool_connections|'
                             'db_pool_max_connections|db_pool_idle_connections|db_pool_waiters",job="api"})')


def _series(pod: str, open_: float, idle: float, waiters: float) -> list[tuple[dict[str, str], float]]:
    values = {"db_pool_connections": open_, "db_pool_max_connections": 10, "db_pool_idle_connections": idle,
              "db_pool_waiters": waiters}
    return [({"__name__": k, "pod": pod, "instance": f"{pod}:8000"}, v) for k, v in values.items()]


def test_pool_is_judged_per_pod_and_the_worst_reported() -> None:
    # Summed over three pods, 18 of 30 in use and no waiter looks fine; one pod has every connection out.
    series = _series("api-a", 10, 6, 0) + _series("api-b", 10, 0, 0) + _series("api-c", 10, 6, 0)
    pools = from_prometheus("Prometheus p", SignalMap(), series)
    assert pools.saturated and pools.worst.where == "pod api-b"
    assert pools.describe() == ("10 of 10 pool connections open (10 in use, 0 idle), 0 waiter(s) on pod api-b "
                                "(the worst of 3 pods; 1 saturated)")
    assert set(pools.samples) == {"pod api-a", "pod api-b", "pod api-c"}  # evidence lists every pod
    assert not from_prometheus("Prometheus p", SignalMap(), _series("api-a", 10, 6, 0)).saturated


def test_a_pod_without_its_gauges_is_unknown_unless_another_is_saturated() -> None:
    partial = _series("api-a", 4, 2, 0) + [({"__name__": "db_pool_connections", "pod": "api-b"}, 3.0)]
    with pytest.raises(NoData, match="pod api-b lacks db_pool_max_connections, db_pool_waiters"):
        from_prometheus("Prometheus p", SignalMap(), partial)
    hot = _series("api-a", 10, 0, 2) + [({"__name__": "db_pool_connections", "pod": "api-b"}, 3.0)]
    assert from_prometheus("Prometheus p", SignalMap(), hot).saturated
    renamed = SignalMap(pool_connections="sqlalchemy_pool_checkedout")
    with pytest.raises(NoData, match="no pool gauges: looked for sqlalchemy_pool_checkedout, db_pool_max_connections"):
        from_prometheus("Prometheus p", renamed, [])


@pytest.mark.parametrize(("open_", "idle", "waiters", "saturated"), [
    (3, None, 0, False),
    (10, None, 0, True),    # at its maximum, and the pool does not say how many are idle
    (10, 4, 0, False),      # grew to its maximum earlier; idle connections serve the next request
    (10, 0, 0, True),       # every connection checked out
    (5, 5, 1, True),        # requests waiting
])
def test_pool_saturation(open_: int, idle: int | None, waiters: int, saturated: bool) -> None:
    text = f"db_pool_connections {open_}\ndb_pool_max_connections 10\ndb_pool_waiters {waiters}\n"
    if idle is not None:
        text += f"db_pool_idle_connections {idle}\n"
    assert parse_pool_metrics(text, "http://api/metrics").saturated is saturated


# --- against the live sandbox ----------------------------------------------------------------


def _superuser(sandbox: Any) -> dict[str, Any]:
    """Connection arguments for the sandbox's superuser (it can use the reserved slots)."""
    from urllib.parse import urlsplit

    parts = urlsplit(sandbox.settings["database_url"])
    return {"host": parts.hostname, "port": parts.port, "dbname": parts.path.lstrip("/"),
            "user": "postgres", "password": sandbox.state["secrets"]["postgres_password"],
            "connect_timeout": 3, "autocommit": True, "application_name": "labcheck-tests"}


class Footprint:
    """Watches pg_stat_activity for labcheck's own sessions while a run goes on."""

    def __init__(self, sandbox: Any) -> None:
        import psycopg

        self.conn = psycopg.connect(**_superuser(sandbox))
        self.most = 0
        self.pids: set[int] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            rows = self.conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'labcheck'").fetchall()
            self.most = max(self.most, len(rows))
            self.pids.update(r[0] for r in rows)
            self.samples += 1
            self._stop.wait(0.005)  # the sampling period, not a wait for a condition

    def __enter__(self) -> Footprint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.conn.close()


def test_healthy_database_passes_every_check(healed: Any) -> None:
    def healthy(run: Any) -> bool:
        return all(run.outcome(name) == "passed" for name in ALL_CHECKS[:-1])

    # The pool drains what a previous fault left waiting within a pool timeout (2 s): poll.
    runs_before = healed.runs
    with Footprint(healed) as watch:
        run = healed.wait_for(healthy, CHECKS, deadline_s=30, what="every database check passing")
    lag = run.check("check_replication_lag")
    assert lag["outcome"] == "unknown" and "no replica configured" in lag["message"]
    assert run.check("check_no_long_running_queries")["facts"] == {"long_running_queries": False}
    assert run.check("check_pool_not_saturated")["facts"] == {"database_overload": False}
    # One session per run: never two at once, and never a second one (no reconnects). The
    # session lives only until the snapshot is taken, so a sample may miss it altogether.
    assert watch.samples > 0 and watch.most <= 1, vars(watch)
    assert len(watch.pids) <= healed.runs - runs_before, vars(watch)


def test_one_labcheck_connection_per_worker(healed: Any) -> None:
    with Footprint(healed) as watch:
        run = healed.run_checks("-n", "2", CHECKS)
    assert run.outcome("check_database_accepts_connections") == "passed"
    assert watch.samples > 0 and watch.most <= 2 and len(watch.pids) <= 2, vars(watch)


def test_session_is_read_only_and_bounded(sandbox: Any) -> None:
    lab = _lab_for(sandbox.settings["database_url"])
    settings = lab.settings
    try:
        session = Database(lab).session()
        shown = session.run(lambda c: c.execute(
            "SELECT current_setting('transaction_read_only'), current_setting('default_transaction_read_only'),"
            " (SELECT setting FROM pg_settings WHERE name = 'statement_timeout'),"
            " current_setting('application_name')").fetchone(), "settings")
        assert shown == ("on", "on", str(int(settings.statement_timeout * 1000)), "labcheck")
        with pytest.raises(ProbeBadResponse, match="ReadOnlySqlTransaction"):
            session.run(lambda c: c.execute("CREATE TABLE labcheck_write_probe (x int)"), "a write")
        # The snapshot is the last question: the slot is given back, and never taken again.
        db = Database(lab)
        assert any(b.is_self for b in db.activity().backends)
        with pytest.raises(ProbeError, match="connection closed"):
            session.run(lambda c: c.execute("SELECT 1"), "a late query")
        assert db.attempt().ok
    finally:
        lab.close()


def test_replica_query_reads_recovery_state(sandbox: Any) -> None:
    dsn = sandbox.settings["database_url"]
    lab = _lab_for(dsn, replica_url=dsn)  # the primary posing as a replica: not in recovery
    try:
        lag = Database(lab).replication()
    finally:
        lab.close()
    assert lag.in_recovery is False and lag.lag_s is None, lag
    assert lag.target.startswith("PostgreSQL replica ")


def test_pool_leak_points_to_connection_exhaustion(healed: Any) -> None:
    healed.fault("db-pool-leak", fill=0.9)
    run = healed.wait_for(
        lambda r: r.outcome("check_connection_headroom_below_sev2") == "failed"
        and r.outcome("check_no_idle_connection_leak") == "failed",
        "--set", "db_idle_max_s=1", "--set", "db_idle_max_count=10", CHECKS, deadline_s=30,
        what="headroom and idle-leak checks failing")
    pool = run.check("check_pool_not_saturated")
    assert pool["outcome"] == "failed"
    # Read through Prometheus (the sandbox's API exports the gauges and Prometheus scrapes it), per pod.
    assert f"Prometheus {healed.settings['prometheus_url']}" in pool["message"], pool
    assert "on instance 127.0.0.1:" in pool["message"], pool
    assert run.outcome("check_database_accepts_connections") == "passed"
    assert "db-connection-exhaustion" in run.scenario_ids()
    assert run.triage["facts"]["database_overload"] is True
    headroom = run.check("check_connection_headroom_below_sev2")["message"]
    assert "by state:" in headroom and "llm-research-api@127.0.0.1" in headroom
    assert "llm-research-api@127.0.0.1" in run.check("check_no_idle_connection_leak")["message"]


def test_long_query_points_to_high_latency(healed: Any) -> None:
    healed.fault("long-query")
    run = healed.wait_for(lambda r: r.outcome("check_no_long_running_queries") == "failed",
                          "--set", "db_long_query_s=1", CHECKS, deadline_s=30, what="long-query check failing")
    check = run.check("check_no_long_running_queries")
    assert check["scenario"] == "high-latency" and "high-latency" in run.scenario_ids()
    assert check["facts"] == {"long_running_queries": True}
    assert "pid " in check["message"] and "state active" in check["message"]
    assert "pg_sleep($1)" in check["message"]
    mitigation = next(s for s in run.triage["scenarios"] if s["id"] == "high-latency")
    assert any("Kill long-running queries" in str(step) for step in mitigation.get("mitigation", [])), mitigation


def test_blocking_lock_names_the_blocker(healed: Any) -> None:
    healed.fault("blocking-lock")
    run = healed.wait_for(lambda r: r.outcome("check_no_blocking_locks") == "failed",
                          "--set", "db_lock_wait_s=1", CHECKS, deadline_s=30, what="blocking-lock check failing")
    message = run.check("check_no_blocking_locks")["message"]
    # The observed holder picks the blocking-lock entry, and is the first next step.
    assert "blocking-lock" in run.scenario_ids()
    assert run.triage["probable_cause"]["scenario"] == "blocking-lock"
    assert run.triage["next_steps"][0]["command"].startswith("SELECT pg_terminate_backend(")
    assert "LOCK TABLE experiments IN ACCESS EXCLUSIVE MODE" in message and "blocks" in message


def test_idle_in_transaction_fails(healed: Any) -> None:
    healed.fault("idle-in-transaction")
    run = healed.wait_for(lambda r: r.outcome("check_no_long_idle_in_transaction") == "failed",
                          "--set", "db_idle_in_tx_max_s=1", CHECKS, deadline_s=30,
                          what="idle-in-transaction check failing")
    message = run.check("check_no_long_idle_in_transaction")["message"]
    assert "3 session(s)" in message and "idle in transaction for" in message
    assert "db-connection-exhaustion" in run.scenario_ids()


def test_too_many_clients_fails_connect_and_leaves_the_rest_unknown(healed: Any) -> None:
    healed.fault("db-pool-leak", fill=1.0)
    with Footprint(healed) as watch:
        run = healed.run_checks(CHECKS)
    connect = run.check("check_database_accepts_connections")
    assert connect["outcome"] == "failed" and "too many clients" in connect["message"], connect
    assert "db-connection-exhaustion" in run.scenario_ids()
    for name in SNAPSHOT_CHECKS:
        check = run.check(name)
        assert check["outcome"] == "unknown" and "too many clients" in check["message"], check
    # The pool check reads the application's /metrics, not PostgreSQL: it still sees the leak.
    assert run.outcome("check_pool_not_saturated") == "failed"
    assert watch.most == 0
    password = healed.settings["database_url"].split(":")[2].split("@")[0]
    assert password not in run.stdout and password not in (run.reports / "triage.json").read_text()


def _dsn_with(sandbox: Any, *, password: str | None = None, dbname: str | None = None) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(sandbox.settings["database_url"])
    netloc = parts.netloc
    if password is not None:
        netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{dbname}" if dbname else parts.path))


@pytest.mark.parametrize(("case", "words"), [
    ("wrong password", "auth failed"),
    ("missing database", "database missing"),
])
def test_labcheck_role_refused_is_unknown_naming_the_role(healed: Any, case: str, words: str) -> None:
    wrong = "not-the-pw-4242"
    dsn = (_dsn_with(healed, password=wrong) if case == "wrong password"
           else _dsn_with(healed, dbname="no_such_database"))
    run = healed.run_checks(CHECKS, "--database-url", dsn)
    for name in ("check_database_accepts_connections", *SNAPSHOT_CHECKS):
        check = run.check(name)
        assert check["outcome"] == "unknown", check
        assert "labcheck's database role 'labcheck'" in check["message"] and words in check["message"]
    assert run.triage["severity"] is None
    assert "db-connection-exhaustion" not in run.scenario_ids()
    assert wrong not in run.stdout and wrong not in (run.reports / "triage.json").read_text()


def test_refused_connection_still_fails_the_connect_check(healed: Any) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = healed.run_checks(CHECKS, "--database-url", f"postgresql://labcheck:x@127.0.0.1:{port}/app")
    connect = run.check("check_database_accepts_connections")
    assert connect["outcome"] == "failed" and "refused" in connect["message"], connect
    assert run.triage["severity"] == "SEV-1"


def test_missing_pool_gauges_are_unknown_naming_them(healed: Any) -> None:
    one = healed.run_checks(CHECKS, "-k", "pool", "--set", "signals.pool_connections=no_such_gauge")
    check = one.check("check_pool_not_saturated")
    assert check["outcome"] == "unknown", check
    assert "lacks no_such_gauge" in check["message"] and "looked for no_such_gauge, db_pool_max_connections" \
        in check["message"], check
    # None of them anywhere: Prometheus has none, so /metrics is read, and has none either.
    names = {"pool_connections": "a_open", "pool_max": "a_max", "pool_idle": "a_idle", "pool_waiters": "a_wait"}
    none = healed.run_checks(CHECKS, "-k", "pool", *[a for k, v in names.items() for a in ("--set", f"signals.{k}={v}")])
    check = none.check("check_pool_not_saturated")
    assert check["outcome"] == "unknown", check
    assert "Prometheus has no series of a_open, a_max, a_idle, a_wait" in check["message"], check
    assert "no pool gauges: looked for a_open, a_max, a_wait, a_idle" in check["message"], check
    assert none.triage["severity"] is None


def test_pool_falls_back_to_metrics_when_prometheus_has_none(healed: Any) -> None:
    from standin import StandIn

    empty = {"status": "success", "data": {"resultType": "vector", "result": []}}
    exposition = (b"db_pool_connections 5\ndb_pool_max_connections 5\ndb_pool_idle_connections 0\n"
                  b"db_pool_waiters 4\n", "text/plain; version=0.0.4")
    prom = StandIn(lambda path, query: (200, empty))
    api = StandIn(lambda path, query: (200, exposition) if path == "/metrics" else (404, {}))
    try:
        run = healed.run_checks(CHECKS, "-k", "pool", "--api-url", api.url, "--set", f"prometheus_url={prom.url}")
    finally:
        prom.close()
        api.close()
    check = run.check("check_pool_not_saturated")
    assert check["outcome"] == "failed", check
    assert f"GET {api.url}/metrics" in check["message"] and "4 waiter(s)" in check["message"], check
