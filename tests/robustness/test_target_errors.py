"""Targets that answer with errors: PostgreSQL refusing or dropping us, a Kubernetes API answering 500."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import hostile
import pytest

from labcheck import config
from labcheck.errors import ProbeTimeout, ProbeUnreachable
from labcheck.evidence import Redactor
from labcheck.lab import Lab
from labcheck.probes.postgres import Session

REPO = Path(__file__).resolve().parents[2]


def run_checks(tmp_path: Path, module: str, env_extra: dict[str, str]) -> dict[str, dict[str, Any]]:
    reports = tmp_path / "reports"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABCHECK_") and k != "KUBECONFIG"}
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-sandbox",
                           "--probe-timeout", "3", f"--reports-dir={reports}", module],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode in (0, 1) and "Traceback" not in out and "INTERNALERROR" not in out, out[-3000:]
    data = json.loads((reports / "triage.json").read_text())
    return {c["nodeid"].split("::")[1]: c for c in data["checks"]}


def dsn(sandbox: Any, *, password: str | None = None, database: str = "llm_research") -> str:
    host, _, port = sandbox.state["services"]["postgres"]["address"].rpartition(":")
    secret = password if password is not None else sandbox.state["secrets"]["labcheck_db_password"]
    return f"postgresql://labcheck:{quote(secret, safe='')}@{host}:{port}/{database}"


@pytest.mark.parametrize(("case", "kind"), [("wrong-password", "auth failed"), ("database-missing", "database missing")])
def test_postgres_refusing_us_is_unknown_and_names_why(sandbox: Any, tmp_path: Path, case: str, kind: str) -> None:
    # labcheck's own role refused is labcheck's access problem, not the platform's: UNKNOWN, naming
    # the role and why (issue 13), never "primary unavailable".
    target = dsn(sandbox, password="not-the-password") if case == "wrong-password" else dsn(sandbox, database="nope")
    checks = run_checks(tmp_path, "checks/database.py", {"LABCHECK_DATABASE_URL": target})
    connect = checks["check_database_accepts_connections"]
    assert connect["outcome"] == "unknown" and kind in connect["message"], connect
    assert "labcheck's database role 'labcheck'" in connect["message"], connect
    assert "not-the-password" not in json.dumps(checks)
    for name, check in checks.items():
        if name not in ("check_database_accepts_connections", "check_pool_not_saturated", "check_replication_lag"):
            assert check["outcome"] == "unknown" and kind in check["message"], (name, check)


def _session(sandbox: Any, statement_timeout: float = 5.0) -> Session:
    settings = config.load(environ={"LABCHECK_DATABASE_URL": dsn(sandbox),
                                    "LABCHECK_STATEMENT_TIMEOUT": str(statement_timeout)}, use_sandbox=False)
    return Session(Lab(settings, redactor=Redactor(settings.secrets)), settings.database_url, role="primary")


def test_statement_timeout_hit_is_unknown_naming_it(sandbox: Any) -> None:
    session = _session(sandbox, statement_timeout=0.2)
    try:
        with pytest.raises(ProbeTimeout, match=r"statement_timeout \(200 ms\) hit by a slow read"):
            session.run(lambda conn: conn.execute("SELECT pg_sleep(2)").fetchone(), "a slow read")
    finally:
        session.close()


def test_server_closing_during_a_query_is_unknown_naming_it(sandbox: Any) -> None:
    import psycopg

    session = _session(sandbox)
    host, _, port = sandbox.state["services"]["postgres"]["address"].rpartition(":")
    admin = psycopg.connect(f"postgresql://postgres:{quote(sandbox.state['secrets']['postgres_password'], safe='')}"
                            f"@{host}:{port}/llm_research", autocommit=True, connect_timeout=5)
    started = threading.Event()

    def slow(conn: Any) -> Any:
        started.set()
        return conn.execute("SELECT pg_sleep(4)").fetchone()

    def terminate() -> None:
        assert started.wait(10)
        # Poll (bounded) until labcheck's backend is visibly running the sleep, then drop it.
        for _ in range(200):
            row = admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'labcheck' "
                                "AND query LIKE 'SELECT pg_sleep%' AND state = 'active'").fetchone()
            if row:
                admin.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                return
            threading.Event().wait(0.02)

    killer = threading.Thread(target=terminate, daemon=True)
    killer.start()
    try:
        with pytest.raises(ProbeUnreachable, match=r"connection lost during a query"):
            session.run(slow, "a query")
    finally:
        killer.join(timeout=10)
        session.close()
        admin.close()


def test_kubernetes_api_answering_500_is_unknown(tmp_path: Path) -> None:
    server = hostile.Server(hostile.respond(500, b'{"kind":"Status","apiVersion":"v1","status":"Failure",'
                                                b'"message":"etcdserver: request timed out","code":500}'))
    try:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
            f"clusters: [{{name: c, cluster: {{server: '{server.url}'}}}}]\n"
            "users: [{name: u, user: {token: t0ken-for-500-test}}]\n"
            "contexts: [{name: c, context: {cluster: c, user: u, namespace: llm-research}}]\n")
        checks = run_checks(tmp_path, "checks/kubernetes.py", {"KUBECONFIG": str(kubeconfig)})
        assert checks
        for name, check in checks.items():
            assert check["outcome"] == "unknown", (name, check)
            assert "500" in check["message"] and server.url.split("//")[1] in check["message"], check["message"]
    finally:
        server.close()
