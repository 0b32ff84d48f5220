"""End-to-end tests of the sandbox manager and the `labcheck sandbox` CLI on real processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from labcheck.sandbox import manager

# A non-default offset so a developer's own sandbox on the default ports is left alone; each
# xdist worker gets its own range (the default ports lie within 1000 of each other).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
OFFSET = int(os.environ.get("LABCHECK_TEST_PORT_OFFSET", "230")) + 1000 * (
    int(_WORKER) if _WORKER.isdigit() else 0
)
README_SETTINGS = {
    "api_url",
    "prometheus_url",
    "pushgateway_url",
    "database_url",
    "s3_bucket",
    "s3_endpoint",
    "cloudwatch_endpoint",
    "aws_region",
    "aws_access_key_id",
    "aws_secret_access_key",
    "kubeconfig",
    "namespace",
    "test_token",
    "docs_url",
    "window",
    "s3_quota_bytes",
    "s3_error_window",
    # the log-pattern checks' windows, compressed like the S3 error window
    "log_error_window_s",
    "log_storage_window_s",
    "log_auth_window_s",
}

pytestmark = [
    pytest.mark.xdist_group("sandbox-manager"),
    pytest.mark.skipif(
        not (
            Path("/usr/bin/prometheus").exists()
            and Path("/usr/bin/prometheus-pushgateway").exists()
        ),
        reason="needs apt packages prometheus and prometheus-pushgateway",
    ),
]


def _env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LABCHECK_SANDBOX_") and k != "LABCHECK_DEBUG"
    }


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `labcheck sandbox ARGS` in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "labcheck.cli", "sandbox", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        check=False,
    )


def _log_tails(d: Path, lines: int = 8) -> str:
    out = []
    for log in sorted((d / "logs").glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {log.name}\n" + "\n".join(tail))
    return "\n".join(out)


def _prom_query(prom_url: str, query: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{prom_url}/api/v1/query", params={"query": query}, timeout=5)
    resp.raise_for_status()
    return resp.json()["data"]["result"]


def _ports(state: dict[str, Any]) -> dict[str, int]:
    result = {}
    for name, svc in state["services"].items():
        addr = svc.get("address") or svc["url"]
        result[name] = int(addr.rsplit(":", 1)[1])
    return result


def _connects(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def managed() -> Iterator[dict[str, Any]]:
    """A sandbox of our own (temp dir, offset ports) brought up by the CLI, down at the end."""
    base = Path(tempfile.mkdtemp(prefix="labcheck-manager-test-", dir="/tmp"))
    base.chmod(0o711)  # PostgreSQL runs as the postgres user when we are root
    d = base / "sandbox"
    try:
        started = time.monotonic()
        res = cli("up", "--dir", str(d), "--port-offset", str(OFFSET), timeout=150)
        up_seconds = time.monotonic() - started
        assert res.returncode == 0, f"up failed: {res.stderr}\n{_log_tails(d)}"
        state = manager.load_state(d)
        assert state is not None
        yield {"dir": d, "state": state, "up_seconds": up_seconds}
    finally:
        try:
            manager.down(dir=d)
        finally:
            shutil.rmtree(base, ignore_errors=True)


def test_up_brings_everything_up(managed: dict[str, Any]) -> None:
    d, state = managed["dir"], managed["state"]
    state_file = d / "state.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    for name in ("api.json", "s3gw.json", "kube.json", "kubeconfig"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    assert state["version"] == 1 and state["dir"] == str(d)
    assert set(state["services"]) == set(manager.SERVICES)
    assert set(state["settings"]) == README_SETTINGS
    assert {"admin_key", "jwt_secret", "app_db_password"} <= set(state["secrets"])
    assert state["settings"]["window"] == "10s"
    assert state["services"]["kube"]["kubeconfig"] == state["settings"]["kubeconfig"]

    for name, svc in state["services"].items():
        assert manager.pid_alive(svc["pid"], name), f"{name} pid {svc['pid']} not alive"
    for name, port in _ports(state).items():
        assert _connects(port), f"{name} does not answer on {port}"
        assert port == manager.DEFAULT_PORTS[name] + OFFSET

    result = _prom_query(state["settings"]["prometheus_url"], 'up{job="api"}')
    assert result and result[0]["value"][1] == "1"


def test_database_roles(managed: dict[str, Any]) -> None:
    import psycopg

    settings = managed["state"]["settings"]
    with psycopg.connect(settings["database_url"], connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT current_user, current_database(),"
            " pg_has_role('labcheck', 'pg_monitor', 'member'),"
            " pg_has_role('labcheck', 'pg_read_all_data', 'member'),"
            " has_schema_privilege('labcheck', 'public', 'CREATE'),"
            " current_setting('max_connections')"
        ).fetchone()
        assert row == ("labcheck", "llm_research", True, True, False, "40")
    with psycopg.connect(settings["database_url"], connect_timeout=5) as conn:
        with pytest.raises(psycopg.Error):
            conn.execute("CREATE TABLE labcheck_must_not_write (id int)")


def test_up_is_idempotent(managed: dict[str, Any]) -> None:
    d, before = managed["dir"], managed["state"]
    started = time.monotonic()
    again = manager.up(dir=d, port_offset=OFFSET)
    assert time.monotonic() - started < 10
    assert {n: s["pid"] for n, s in again["services"].items()} == {
        n: s["pid"] for n, s in before["services"].items()
    }
    assert again["secrets"] == before["secrets"]
    # Another flavour or shape than what runs is refused, not silently handed back.
    with pytest.raises(manager.SandboxError, match="runs flavour playbook, not otel"):
        manager.up(dir=d, port_offset=OFFSET, flavor="otel")
    with pytest.raises(manager.SandboxError, match="runs another shape"):
        manager.up(dir=d, port_offset=OFFSET, shape={"experiments_shape": "items"})


def test_status_json_via_cli_has_no_secrets(managed: dict[str, Any]) -> None:
    d, state = managed["dir"], managed["state"]
    res = cli("status", "--json", "--dir", str(d))
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["running"] is True
    assert set(info["services"]) == set(manager.SERVICES)
    for name, svc in info["services"].items():
        assert svc["pid"] == state["services"][name]["pid"]
        assert svc["alive"] is True
        assert svc.get("url") or svc.get("address"), name
    assert info["database_url"].startswith("postgresql://labcheck:***@")
    assert info["api_url"] == state["settings"]["api_url"]
    assert info["kubeconfig"] == state["settings"]["kubeconfig"]
    assert info["s3_bucket"] == "llm-research-datasets"
    assert info["flavor"] == state["flavor"] == "playbook"
    assert info["shape"] == state["shape"] == {
        "readiness_components": "components",
        "readiness_names": ["db", "auth", "storage"],
        "experiments_shape": "experiments",
    }

    plain = cli("status", "--dir", str(d))
    assert plain.returncode == 0, plain.stderr
    assert "Flavour:     playbook (prometheus-client" in plain.stdout
    secret_values = [v for v in state["secrets"].values() if isinstance(v, str)]
    secret_values += [
        state["settings"]["test_token"],
        state["settings"]["aws_secret_access_key"],
        state["settings"]["database_url"].split(":")[2].split("@")[0],
    ]
    for value in secret_values:
        assert len(value) >= 8
        for out in (res.stdout, res.stderr, plain.stdout, plain.stderr):
            assert value not in out


def test_error_rate_fault_reaches_prometheus_and_heals(managed: dict[str, Any]) -> None:
    d, state = managed["dir"], managed["state"]
    prom = state["settings"]["prometheus_url"]
    res = cli("fault", "error-rate", "--param", "share=0.5", "--dir", str(d))
    assert res.returncode == 0, res.stderr
    query = 'sum(rate({job="api", __name__=~".*requests_total", status=~"5.."}[10s])) > 0'
    manager.poll(
        lambda: _prom_query(prom, query),
        deadline=time.monotonic() + 30,
        what="5xx series of the api in Prometheus",
    )
    res = cli("heal", "--dir", str(d))
    assert res.returncode == 0, res.stderr
    faults = httpx.get(
        f"{state['settings']['api_url']}/admin/faults",
        headers={"X-Admin-Key": state["secrets"]["admin_key"]},
        timeout=5,
    )
    assert faults.status_code == 200
    assert "error-rate" not in faults.json().get("active", {})


def test_unknown_fault_is_one_line_usage_error(managed: dict[str, Any]) -> None:
    res = cli("fault", "no-such-fault", "--dir", str(managed["dir"]))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("labcheck: error: unknown fault 'no-such-fault'")
    assert "error-rate" in lines[0] and "crash-loop" in lines[0]
    assert "Traceback" not in res.stderr


def test_up_refuses_ports_in_use(managed: dict[str, Any], tmp_path: Path) -> None:
    before = manager.status(managed["dir"])
    with pytest.raises(manager.SandboxError, match="ports already in use"):
        manager.up(dir=tmp_path / "other", port_offset=OFFSET, timeout=20)
    assert manager.status(managed["dir"]) == before


def test_partial_sandbox_is_restarted_clean_in_the_flavour_asked(managed: dict[str, Any]) -> None:
    d, old = managed["dir"], managed["state"]
    victim = old["services"]["pushgateway"]["pid"]
    os.kill(victim, signal.SIGTERM)
    manager.poll(
        lambda: not manager.pid_alive(victim, "pushgateway"),
        deadline=time.monotonic() + 10,
        what="pushgateway to exit",
    )
    res = cli("up", "--dir", str(d), "--port-offset", str(OFFSET), "--flavor", "otel",
              "--set", "experiments_shape=items", timeout=150)
    assert res.returncode == 0, f"{res.stderr}\n{_log_tails(d)}"
    assert "partially up" in res.stderr
    new = manager.load_state(d)
    assert new is not None and set(new["services"]) == set(manager.SERVICES)
    for name, svc in old["services"].items():
        assert not manager.pid_alive(svc["pid"], name), f"old {name} left running"
        assert manager.pid_alive(new["services"][name]["pid"], name), f"new {name} not alive"
    assert new["secrets"]["admin_key"] != old["secrets"]["admin_key"]
    # up waited for the flavour's own request counter; the suite's settings name no signals.
    assert new["flavor"] == "otel" and new["shape"]["experiments_shape"] == "items"
    assert set(new["settings"]) == README_SETTINGS
    assert _prom_query(new["settings"]["prometheus_url"],
                       'sum(http_server_request_duration_seconds_count{job="api"}) > 0')
    assert "Flavour:     otel" in res.stdout and "Shape:       experiments_shape=items" in res.stdout
    managed["state"] = new


def test_down_stops_everything(managed: dict[str, Any]) -> None:
    d, state = managed["dir"], managed["state"]
    started = time.monotonic()
    res = cli("down", "--dir", str(d))
    elapsed = time.monotonic() - started
    assert res.returncode == 0, res.stderr
    assert elapsed < 20
    for name, svc in state["services"].items():
        assert not manager.pid_alive(svc["pid"], name), f"{name} pid {svc['pid']} still alive"
    for name, port in _ports(state).items():
        assert not manager.port_listening(port), f"{name} still listening on {port}"
        assert not _connects(port), f"{name} still accepts on {port}"
    assert not (d / "state.json").exists()
    assert (d / "logs" / "api.log").exists()

    again = cli("down", "--dir", str(d))
    assert again.returncode == 0, again.stderr
    gone = cli("status", "--json", "--dir", str(d))
    assert gone.returncode == 1
    assert json.loads(gone.stdout)["running"] is False


def test_port_offset_comes_from_the_environment_as_the_tests_fixture_reads_it(tmp_path: Path) -> None:
    """`sandbox up` without --port-offset reads LABCHECK_SANDBOX_PORT_OFFSET (a bad value is one line, no start)."""
    res = subprocess.run([sys.executable, "-m", "labcheck.cli", "sandbox", "up", "--dir", str(tmp_path / "box")],
                         capture_output=True, text=True, timeout=60, check=False,
                         env={**_env(), "LABCHECK_SANDBOX_PORT_OFFSET": "12x"})
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == "labcheck: error: LABCHECK_SANDBOX_PORT_OFFSET must be a whole number, not '12x'"
    assert not (tmp_path / "box").exists()  # nothing was started
