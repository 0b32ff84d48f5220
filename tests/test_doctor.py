"""`labcheck doctor` against the live sandbox: every row OK, then unusable targets one line each."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def _doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labcheck.cli", "doctor", *args], cwd=REPO, env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rows(stdout: str) -> dict[str, list[tuple[str, str]]]:
    """target -> [(status, line)] from the table."""
    out: dict[str, list[tuple[str, str]]] = {}
    for line in stdout.splitlines()[2:]:
        parts = line.split()
        if len(parts) >= 3 and parts[0] in ("prometheus", "database", "kubernetes", "s3", "test_token"):
            status = next(p for p in parts[1:] if p in ("OK", "FAIL", "SKIP"))
            out.setdefault(parts[0], []).append((status, line))
    return out


def test_rbac_mirror_is_the_manifest() -> None:
    from labcheck.sandbox.kube import rbac

    rules = set()
    for doc in yaml.safe_load_all((REPO / "deploy" / "rbac.yaml").read_text()):
        if doc and doc["kind"] in ("Role", "ClusterRole"):
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    rules.add((doc["kind"] == "Role", group, tuple(rule["resources"]), tuple(rule["verbs"]),
                               tuple(rule.get("resourceNames", ()))))
    assert {(g.namespaced, g.group, g.resources, g.verbs, g.names) for g in rbac.grants()} == rules


def test_review_answers_from_the_rules() -> None:
    from labcheck.sandbox.kube import rbac

    def ask(**attrs: str) -> bool:
        return bool(rbac.review({"spec": {"resourceAttributes": attrs}}, "llm-research")["status"]["allowed"])

    assert ask(resource="pods", verb="watch", namespace="llm-research")
    assert not ask(resource="pods", verb="delete", namespace="llm-research")
    assert not ask(resource="pods", verb="list", namespace="kube-system")
    assert ask(resource="nodes", verb="watch") and not ask(resource="nodes", verb="delete")
    assert ask(resource="secrets", verb="get", name="llm-research-secrets", namespace="llm-research")
    assert not ask(resource="secrets", verb="get", name="other", namespace="llm-research")
    assert not ask(resource="secrets", verb="list", namespace="llm-research")
    assert ask(group="apps", resource="deployments", verb="list", namespace="llm-research")
    assert ask(group="metrics.k8s.io", resource="pods", verb="list", namespace="llm-research")
    assert not ask(group="metrics.k8s.io", resource="pods", verb="watch", namespace="llm-research")


def test_doctor_on_the_healthy_sandbox_is_all_ok(sandbox: Any) -> None:
    proc = _doctor()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _rows(proc.stdout)
    assert set(rows) == {"prometheus", "database", "kubernetes", "s3", "test_token"}, proc.stdout
    assert all(status == "OK" for lines in rows.values() for status, _ in lines), proc.stdout
    assert len(rows["kubernetes"]) == 7 and len(rows["database"]) == 2 and len(rows["s3"]) == 2
    assert "Traceback" not in proc.stderr
    assert sandbox.settings["test_token"] not in proc.stdout


def test_doctor_names_each_unusable_target_in_one_line(sandbox: Any) -> None:
    from labcheck.sandbox.api.auth import sign_token

    s = sandbox.settings
    expired = sign_token(sandbox.state["secrets"]["jwt_secret"], ttl_seconds=-60)
    wrong_pw = "wrong-pw-7331"
    dsn = s["database_url"].replace(s["database_url"].split("@")[0].split(":")[-1], wrong_pw)
    kubeconfig = Path(sandbox.tmp) / "closed-kubeconfig"
    doc = yaml.safe_load(Path(s["kubeconfig"]).read_text())
    for cluster in doc["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{_closed_port()}"
    kubeconfig.write_text(yaml.safe_dump(doc))
    proc = _doctor("--no-sandbox", "--set", f"prometheus_url=http://127.0.0.1:{_closed_port()}",
                   "--set", f"database_url={dsn}", "--set", f"kubeconfig={kubeconfig}",
                   "--set", "s3_bucket=llm-research-datasets", "--set", f"s3_endpoint=http://127.0.0.1:{_closed_port()}",
                   "--set", "aws_access_key_id=x", "--set", "aws_secret_access_key=yyyyyyyy",
                   "--set", f"test_token={expired}")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    rows = _rows(proc.stdout)
    for target, words in (("prometheus", "connection refused"), ("database", "labcheck's database role 'labcheck'"),
                          ("kubernetes", "connection refused"), ("s3", "127.0.0.1"), ("test_token", "expired at")):
        assert len(rows[target]) == 1, (target, proc.stdout)
        status, line = rows[target][0]
        assert status == "FAIL" and words in line, line
    assert wrong_pw not in proc.stdout and expired not in proc.stdout
