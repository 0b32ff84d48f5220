"""Diagnosis from findings, against the sandbox with faults made by hand (issue 13).

Each case asserts the probable cause, the first next step, the severity, the escalation lines and
the resolution status (``verified``).
"""

from __future__ import annotations

import json
import shlex
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest

from conftest import Run, Sandbox


def _env(sandbox: Sandbox, **overrides: Any) -> dict[str, str]:
    """Every sandbox target as configuration (the sandbox is then not used implicitly), with overrides."""
    values = {**sandbox.settings, **overrides}
    return {f"LABCHECK_{k.upper()}": str(v) for k, v in values.items() if v is not None}


class Hanging:
    """A loopback listener that accepts connections, reads the request and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)  # kept open, never answered

    def close(self) -> None:
        self.stop.set()
        for conn in self.conns:
            conn.close()
        self.sock.close()


@pytest.fixture
def hanging() -> Iterator[Hanging]:
    server = Hanging()
    yield server
    server.close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def _steps(run: Run) -> list[str]:
    return [s["step"] for s in run.triage["next_steps"]]


def test_hung_api_is_the_cause_not_storage(sandbox: Sandbox, hanging: Hanging) -> None:
    start = (datetime.now(tz=UTC) - timedelta(minutes=20)).isoformat()
    run = sandbox.run_checks("checks/api_gateway.py", "checks/storage.py", "--probe-timeout", "2",
                             env=_env(sandbox, api_url=hanging.url, incident_start=start))
    data = run.triage
    health = run.check("check_health_answers_within_budget")
    assert health["outcome"] == "failed" and health["condition"] == "api_not_answering", health
    datasets = run.check("check_datasets_endpoint_answers")
    # Sent at once with /health (nothing waits on another answer): its own timeout, or "not tried".
    assert datasets["outcome"] == "unknown" and ("not tried" in datasets["message"]
                                                 or "timed out" in datasets["message"]), datasets
    assert data["severity"] == "SEV-1"
    pc = data["probable_cause"]
    assert pc["scenario"] == "api-not-answering" and pc["component"] == "api_gateway", pc
    assert all(c["scenario"] != "storage-failure" for c in data["causes"] + data["symptoms"])
    assert data["next_steps"][0]["scenario"] == "api-not-answering"
    assert "Restart pods if memory/state issues (a hung process)" in _steps(run)
    assert not any("Failover database" in s for s in _steps(run))
    assert data["escalation"][0] == "SEV-1 not mitigated in 15 min: escalate to Engineering Manager (Phone)"
    assert not any(line.startswith(("Database issue", "Data breach")) for line in data["escalation"])
    assert data["verified"] is False


def test_postgresql_stopped_is_the_primary_unreachable(sandbox: Sandbox) -> None:
    dsn = urlsplit(sandbox.settings["database_url"])
    closed = dsn._replace(netloc=f"{dsn.netloc.rsplit(':', 1)[0]}:{_closed_port()}").geturl()
    run = sandbox.run_checks("checks/database.py", env=_env(sandbox, database_url=closed))
    data = _primary_unreachable(run)
    assert not any("idle" in s.lower() for s in _steps(run))
    assert "implied" not in data["fact_sources"].get("database_overload", "")
    assert "Database issue: escalate to DBA on-call (Phone)" in data["escalation"]
    assert not any(line.startswith("SEV-1 not") for line in data["escalation"])  # no incident_start given
    assert any(line.startswith("SEV-1 not mitigated in 15 min") and "incident start unknown" in line
               for line in data["escalation_not_evaluated"])
    assert data["verified"] is False
    assert (run.reports / "incident.md").read_text().startswith("**INCIDENT DECLARED**")


def _primary_unreachable(run: Run) -> dict[str, Any]:
    """The refused connect check, SEV-1, the primary unreachable as the cause and failover its first step."""
    data: dict[str, Any] = run.triage
    connect = run.check("check_database_accepts_connections")
    assert connect["outcome"] == "failed" and connect["condition"] == "db_refusing_connections", connect
    assert data["severity"] == "SEV-1"
    pc = data["probable_cause"]
    assert pc["scenario"] == "database-unreachable" and pc["title"] == "Database Primary Unreachable", pc
    assert data["next_steps"][0]["step"] == "Failover database (requires DBA involvement for RDS failover)"
    return data


def test_prometheus_down_is_its_own_finding(sandbox: Sandbox) -> None:
    run = sandbox.run_checks("checks/metrics.py", "checks/api_gateway.py",
                             env=_env(sandbox, prometheus_url=f"http://127.0.0.1:{_closed_port()}"))
    data = run.triage
    ready = run.check("check_prometheus_ready")
    assert ready["outcome"] == "failed" and ready["condition"] == "prometheus_down", ready
    assert data["severity"] == "SEV-3"
    assert data["probable_cause"]["scenario"] == "prometheus-down"
    assert data["next_steps"][0]["step"] == "Restart Prometheus if memory/state issues (Phase 2, Step 6)"
    steps = " | ".join(_steps(run))
    assert "Scale up" not in steps and "Failover database" not in steps
    assert data["escalation"] == [] and data["verified"] is False


def test_a_page_answering_200_as_prometheus_is_not_prometheus_down(sandbox: Sandbox) -> None:
    from standin import StandIn

    page = StandIn(lambda path, query: (200, (b"<html><body>Welcome</body></html>", "text/html")))
    try:
        run = sandbox.run_checks("checks/metrics.py", "checks/api_gateway.py", env=_env(sandbox, prometheus_url=page.url))
    finally:
        page.close()
    data = run.triage
    ready = run.check("check_prometheus_ready")
    assert ready["outcome"] == "failed" and ready["condition"] == "prometheus_misidentified", ready
    assert "not Prometheus's ready answer" in ready["message"]
    assert data["severity"] == "SEV-3"
    assert data["probable_cause"]["scenario"] == "prometheus-down"
    # The URL answers: fix where it points; restarting Prometheus is not the step.
    assert data["next_steps"][0]["step"].startswith("The URL answers, but not as Prometheus: point prometheus_url")
    assert not any("Restart Prometheus" in s for s in _steps(run))
    assert data["facts"]["prometheus_down"] is False
    assert data["escalation"] == [] and data["verified"] is False
    assert not (run.reports / "incident.md").read_text().startswith("**INCIDENT RESOLVED**")


@pytest.fixture
def stopped_postgres(sandbox: Sandbox) -> Iterator[None]:
    """The sandbox's PostgreSQL itself stopped (pg_ctl stop -m fast), started again on the same data after."""
    from pathlib import Path

    from labcheck.sandbox import postgres
    from labcheck.sandbox.state import locked, state_path, write_json

    d = Path(sandbox.state["dir"])
    pgdata = d / "pgdata"
    argv = shlex.split((pgdata / "postmaster.opts").read_text())  # the server's own command line
    opts = [a for i, a in enumerate(argv[1:], 1) if a != "-D" and argv[i - 1] != "-D"]
    postgres.stop_postgres(d, sandbox.state["services"]["postgres"]["pid"])
    _poll(lambda: postgres.postmaster_pid(pgdata) is None, "postgres to stop")
    try:
        yield
    finally:
        res = postgres._run_pg_tool(d, [str(postgres.pg_bindir() / "pg_ctl"), "start", "-W", "-D", str(pgdata),
                                        "-l", str(d / "logs" / "postgres.log"), "-o", shlex.join(opts)],
                                    "pg_ctl", 30)
        assert res.returncode == 0, "pg_ctl start failed: see the sandbox's logs/pg_ctl.log"
        pid = _poll(lambda: postgres.postmaster_pid(pgdata), "postgres to write postmaster.pid")
        sandbox.state["services"]["postgres"]["pid"] = pid  # the sandbox's record: `sandbox up` finds it healthy
        with locked(d):
            state = json.loads(state_path(d).read_text())
            state["services"]["postgres"]["pid"] = pid
            write_json(state_path(d), state)
        _poll(lambda: sandbox.run_checks("checks/database.py", "-k", "accepts_connections").returncode == 0,
              "the database to accept connections again")


def _poll(predicate: Any, what: str, deadline_s: float = 30) -> Any:
    end = time.monotonic() + deadline_s
    while not (value := predicate()):
        assert time.monotonic() < end, f"{what}: not within {deadline_s:g} s"
        time.sleep(0.2)
    return value


def test_postgresql_really_stopped_is_the_primary_unreachable(sandbox: Sandbox, stopped_postgres: None) -> None:
    run = sandbox.run_checks("checks/database.py")
    data = _primary_unreachable(run)
    # The application's pool fills with requests waiting for a server that is gone: a symptom of it,
    # so the steps of connection exhaustion (terminate idle connections) never come first.
    pool = [s for s in data["symptoms"] if s["scenario"] == "db-connection-exhaustion"]
    assert all(s["caused_by"] == ["database-unreachable (database)"] for s in pool), data["symptoms"]
    assert [c["scenario"] for c in data["causes"]] == ["database-unreachable"], data["causes"]
    steps = [s for s in data["next_steps"] if s["scenario"] == "database-unreachable"]
    assert data["next_steps"][: len(steps)] == steps and not any("idle" in s["step"].lower() for s in steps)
    assert "database_overload" not in data["facts"] or "implied" not in data["fact_sources"]["database_overload"]
    assert "Database issue: escalate to DBA on-call (Phone)" in data["escalation"]
    assert not any(line.startswith("Data breach") for line in data["escalation"])
    assert data["verified"] is False
    incident = (run.reports / "incident.md").read_text()
    assert incident.startswith("**INCIDENT DECLARED**") and "INCIDENT RESOLVED" not in incident


def _app_dsn(sandbox: Sandbox) -> dict[str, Any]:
    parts = urlsplit(sandbox.settings["database_url"])
    return {"host": parts.hostname, "port": parts.port, "dbname": parts.path.lstrip("/"), "user": "llm_app",
            "password": sandbox.state["secrets"]["app_db_password"], "connect_timeout": 3,
            "application_name": "hand-made-lock"}


def test_a_lock_holder_is_the_cause_and_its_pid_the_first_step(sandbox: Sandbox) -> None:
    import psycopg

    holder = psycopg.connect(**_app_dsn(sandbox))
    waiter = psycopg.connect(**{**_app_dsn(sandbox), "application_name": "hand-made-waiter"})
    try:
        holder.execute("LOCK TABLE experiments IN ACCESS EXCLUSIVE MODE")  # the transaction stays open
        pid = holder.info.backend_pid
        blocked = threading.Thread(target=lambda: _wait(waiter), daemon=True)
        blocked.start()
        run = _until(sandbox, lambda r: r.outcome("check_no_blocking_locks") == "failed",
                     "checks/database.py", "--set", "db_lock_wait_s=1")
    finally:
        holder.rollback()
        holder.close()
    blocked.join(10)
    waiter.close()
    data = run.triage
    locks = run.check("check_no_blocking_locks")
    assert locks["condition"] == "lock_holder_found" and locks["scenario"] == "blocking-lock", locks
    assert data["probable_cause"]["scenario"] == "blocking-lock", data["probable_cause"]
    assert all(s["caused_by"][0] == "blocking-lock (database)" for s in data["symptoms"] if s["component"] == "database")
    first = data["next_steps"][0]
    assert first["command"] == f"SELECT pg_terminate_backend({pid});"
    assert f"pid {pid} (idle in transaction for" in first["step"] and "hand-made-lock" in first["step"]
    assert data["severity"] in ("SEV-1", "SEV-2")
    assert "Database issue: escalate to DBA on-call (Phone)" in data["escalation"]
    assert data["verified"] is False


def _wait(conn: Any) -> None:
    import psycopg

    try:
        conn.execute("SELECT count(*) FROM experiments")
    except psycopg.Error:
        pass


def _until(sandbox: Sandbox, predicate: Any, *args: str, deadline_s: float = 45) -> Run:
    end = time.monotonic() + deadline_s
    while True:
        run = sandbox.run_checks(*args)
        if (run.reports / "triage.json").exists() and predicate(run):
            return run
        assert time.monotonic() < end, run.stdout[-3000:]


def test_a_healthy_database_run_is_verified(sandbox: Sandbox) -> None:
    run = sandbox.run_checks("checks/database.py", "-k", "accepts_connections or headroom")
    assert run.returncode == 0, run.stdout[-3000:]
    assert run.triage["verified"] is True
    assert (run.reports / "incident.md").read_text().startswith("**INCIDENT RESOLVED**")
