"""Diagnosis from findings, against the sandbox with faults made by hand (issue 13).

Each case asserts the probable cause, the first next step, the severity, the escalation lines and
the resolution status (``verified``).
"""

from __future__ import annotations

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
    assert datasets["outcome"] == "unknown" and "not tried" in datasets["message"], datasets
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
    data = run.triage
    connect = run.check("check_database_accepts_connections")
    assert connect["outcome"] == "failed" and connect["condition"] == "db_refusing_connections", connect
    assert data["severity"] == "SEV-1"
    pc = data["probable_cause"]
    assert pc["scenario"] == "database-unreachable" and pc["title"] == "Database Primary Unreachable", pc
    assert data["next_steps"][0]["step"] == "Failover database (requires DBA involvement for RDS failover)"
    assert not any("idle" in s.lower() for s in _steps(run))
    assert "implied" not in data["fact_sources"].get("database_overload", "")
    assert "Database issue: escalate to DBA on-call (Phone)" in data["escalation"]
    assert not any(line.startswith("SEV-1 not") for line in data["escalation"])  # no incident_start given
    assert any(line.startswith("SEV-1 not mitigated in 15 min") and "incident start unknown" in line
               for line in data["escalation_not_evaluated"])
    assert data["verified"] is False
    assert (run.reports / "incident.md").read_text().startswith("**INCIDENT DECLARED**")


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
