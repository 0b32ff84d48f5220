"""The log-pattern checks: against the live sandbox (the API's own access and error lines, served by the
Kubernetes stand-in as its pods' logs, and the faults that leave traces there), and against a small
stand-in for the bodies a live server cannot easily give (no logs, binary bytes, a line of megabytes,
secrets in log lines)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from standin import StandIn

LOGS = "checks/logs.py"
REPO = Path(__file__).resolve().parents[2]
NS = "llm-research"
API = "llm-research-api"
RATE_LIMIT = "If DDoS/brute force: enable additional rate limiting"
BREACH = "Data breach suspected: escalate to Security Team + Legal (Phone + Email)"
CHECKS = ("check_error_lines_below_surge", "check_no_s3_errors_in_logs", "check_no_brute_force")

pytestmark = pytest.mark.xdist_group("sandbox-kubernetes")


def _outcomes(run) -> dict[str, str]:
    return {c["nodeid"].split("::", 1)[1]: c["outcome"] for c in run.triage["checks"] if c["nodeid"].startswith(LOGS)}


def _evidence(run, check: str) -> str:
    folder = run.reports / "evidence" / f"checks_logs.py_{check}"
    return (folder / "failure.txt").read_text()


def _recovered(sandbox) -> None:
    """Heal, then wait until the faults' lines have left the windows: later tests see a healthy log."""
    sandbox.heal()
    sandbox.wait_for(lambda r: set(_outcomes(r).values()) == {"passed"}, LOGS, deadline_s=90,
                     what="the log checks passing again after heal")


def _mitigation(run, scenario: str) -> list[dict[str, Any]]:
    found = [s for s in run.triage["scenarios"] if s["id"] == scenario]
    assert found, f"scenario {scenario} not matched: {sorted(run.scenario_ids())}"
    return list(found[0].get("mitigation") or [])


# --- the live sandbox --------------------------------------------------------------------------------


def test_healthy_sandbox_passes_and_brute_force_is_false(healed):
    run = healed.wait_for(lambda r: set(_outcomes(r).values()) == {"passed"}, LOGS, deadline_s=90,
                          what="the log checks passing on the healthy sandbox")
    assert sorted(_outcomes(run)) == sorted(CHECKS)
    assert run.triage["facts"]["brute_force"] is False
    surge = run.check("check_error_lines_below_surge")
    assert (surge["severity"], surge["component"], surge["scenario"]) == ("SEV-2", "api_gateway", "high-error-rate")
    # At most a blip (fewer than log_lines_min lines): a check that failed a moment ago still logs.
    assert re.search(r"\(([0-4]) in the last 20 s", surge["observed"][0]["observed"]), surge["observed"]
    brute = run.check("check_no_brute_force")
    assert (brute["severity"], brute["component"], brute["scenario"]) == ("SEV-2", "auth", "auth-failure")
    assert "access lines" in brute["observed"][0]["observed"]
    storage = run.check("check_no_s3_errors_in_logs")
    assert (storage["severity"], storage["component"]) == ("SEV-3", "storage")


def test_error_rate_fault_makes_the_error_lines_surge(healed):
    healed.fault("error-rate")
    run = healed.wait_for(lambda r: r.outcome("check_error_lines_below_surge") == "failed", LOGS, deadline_s=60,
                          what="the error-line surge check failing")
    check = run.check("check_error_lines_below_surge")
    assert check["scenario"] == "high-error-rate", check
    message = check["message"]
    assert "lines/min" in message and "threshold <= 10 lines/min" in message, message
    assert "Exception in ASGI application" in message, message
    evidence = _evidence(run, "check_error_lines_below_surge")
    assert "error/panic/fatal" in evidence and "lines matching each playbook grep" in evidence
    assert evidence.count("RuntimeError") >= 3, evidence[-2000:]
    assert run.triage["facts"]["brute_force"] is False
    _recovered(healed)


def test_s3_outage_shows_in_the_s3_aws_counts(healed):
    healed.fault("s3-outage")
    run = healed.wait_for(lambda r: r.outcome("check_no_s3_errors_in_logs") == "failed", LOGS, deadline_s=60,
                          what="the S3 log check failing")
    check = run.check("check_no_s3_errors_in_logs")
    assert check["scenario"] == "storage-failure" and "aws_error_code=" in check["message"], check["message"]
    evidence = _evidence(run, "check_no_s3_errors_in_logs")
    table = evidence.split("\n\n")[0].splitlines()[2:]
    assert len(table) == 3, evidence[:1000]
    s3_column = [int(row.split()[3]) for row in table]  # POD LINES error s3 auth READ
    assert sum(s3_column) > 0 and all(n >= 0 for n in s3_column), table
    assert "s3 list_objects_v2 failed" in evidence
    _recovered(healed)


def test_brute_force_keeps_the_rate_limiting_step_and_escalates_a_breach(healed):
    healed.fault("brute-force")
    run = healed.wait_for(lambda r: r.outcome("check_no_brute_force") == "failed", LOGS, "checks/auth.py",
                          deadline_s=60, what="the brute-force check failing")
    check = run.check("check_no_brute_force")
    assert check["condition"] == "brute_force" and check["scenario"] == "auth-failure", check
    assert "203.0.113." in check["message"] and "admin (" in check["message"], check["message"]
    assert run.triage["facts"]["brute_force"] is True
    kept = [s for s in _mitigation(run, "auth-failure") if s["step"] == RATE_LIMIT]
    assert kept and kept[0]["condition"] == "true", _mitigation(run, "auth-failure")
    assert BREACH in run.triage["escalation"], run.triage["escalation"]
    breach = next(e for e in run.triage["escalation_evaluated"] if e["condition"] == "Data breach suspected")
    assert "brute_force" in breach["because"], breach
    assert "203.0.113." in _evidence(run, "check_no_brute_force")
    _recovered(healed)


def test_a_rotated_secret_is_many_401s_but_no_brute_force(healed):
    # Every client is refused, from its own address and as its own user: the step and the escalation stay out.
    healed.fault("auth-secret-rotated")
    run = healed.wait_for(lambda r: r.outcome("check_test_token_accepted") == "failed"
                          and r.outcome("check_no_brute_force") == "passed"
                          and int(r.check("check_no_brute_force")["observed"][0]["observed"].split()[0]) >= 50,
                          LOGS, "checks/auth.py", deadline_s=60, what="many 401s, no brute force")
    assert run.triage["facts"]["brute_force"] is False
    assert RATE_LIMIT not in [s["step"] for s in _mitigation(run, "auth-failure")]
    dropped = [s for s in run.triage["dropped_steps"] if s["step"] == RATE_LIMIT]
    assert dropped and dropped[0]["because"] == f"brute_force = false ({LOGS}::check_no_brute_force)", dropped
    assert not any(line.startswith("Data breach") for line in run.triage["escalation"])
    _recovered(healed)


# --- a stand-in Kubernetes API for the bodies a live server cannot easily give -----------------------


def _pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS, "labels": {"app": API}},
            "spec": {"containers": [{"name": "api", "image": "api:1"}], "nodeName": "node-a"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "api", "ready": True, "restartCount": 0,
                                              "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}}


def _stamp(line: str) -> bytes:
    """A log line as the kubelet sends it with timestamps=true, a second ago."""
    from datetime import UTC, datetime, timedelta

    t = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"
    return f"{t} {line}\n".encode()


@pytest.fixture
def fake_kube(tmp_path: Path) -> Iterator[Callable[[dict[str, bytes]], Callable[..., Any]]]:
    """A Kubernetes API serving two API pods whose logs are the given bytes; returns a runner of checks/logs.py."""
    servers: list[StandIn] = []

    def start(logs: dict[str, bytes]) -> Callable[..., Any]:
        asked: list[str] = []

        def answer(path: str, query: str) -> tuple[int, Any]:
            if path == f"/api/v1/namespaces/{NS}/pods":
                return 200, {"kind": "PodList", "items": [_pod(name) for name in logs]}
            for name, body in logs.items():
                if path == f"/api/v1/namespaces/{NS}/pods/{name}/log":
                    asked.append(query)
                    return 200, (body, "text/plain")
            return 404, {"kind": "Status", "message": f"{path} not found", "code": 404}

        server = StandIn(answer)
        servers.append(server)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
            f"clusters: [{{name: fake, cluster: {{server: '{server.url}'}}}}]\n"
            "users: [{name: fake, user: {token: fake-kube-token}}]\n"
            f"contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: {NS}}}}}]\n")

        def run(*args: str) -> dict[str, Any]:
            env = {k: v for k, v in os.environ.items() if not k.startswith("LABCHECK_") and k != "KUBECONFIG"}
            env["KUBECONFIG"] = str(kubeconfig)
            reports = tmp_path / "reports"
            proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--no-sandbox",
                                   f"--reports-dir={reports}", *args, LOGS], cwd=REPO, env=env,
                                  capture_output=True, text=True, timeout=120)
            triage = json.loads((reports / "triage.json").read_text())
            files = "".join(p.read_text(errors="replace") for p in reports.rglob("*") if p.is_file())
            return {"triage": triage, "asked": asked, "output": proc.stdout + proc.stderr + files,
                    "checks": {c["nodeid"].split("::", 1)[1]: c for c in triage["checks"]}}

        return run

    yield start
    for server in servers:
        server.close()


def test_no_logs_at_all_is_unknown(fake_kube):
    result = fake_kube({"api-a": b"", "api-b": b""})()
    assert {c["outcome"] for c in result["checks"].values()} == {"unknown"}, result["checks"]
    for check in result["checks"].values():
        assert "wrote no log line in the last 1800 s" in check["message"], check["message"]
    assert "brute_force" not in result["triage"]["facts"]
    # One read per pod for the three checks, with the playbook's bounds and the kubelet's timestamps.
    assert len(result["asked"]) == 2, result["asked"]
    for query in result["asked"]:
        assert "sinceSeconds=1800" in query and "limitBytes=1048576" in query and "tailLines=2000" in query
        assert "timestamps=true" in query


def test_binary_bytes_and_a_line_of_megabytes_are_capped_and_not_a_pass(fake_kube):
    binary = _stamp("INFO  [app] started") + b"\x00\xff\xfe\x80 garbage \x1b[31m\n" + _stamp("INFO  [app] ok")
    huge = _stamp("INFO  [app] ok") + _stamp("INFO  [app] dump " + "x" * (3 * 1024 * 1024))
    result = fake_kube({"api-a": binary, "api-b": huge})()
    checks = result["checks"]
    # api-b's read was cut by log_limit_bytes mid-way through the huge line: it does not reach the present.
    assert checks["check_error_lines_below_surge"]["outcome"] == "unknown", checks
    assert "log_limit_bytes cut the read" in checks["check_error_lines_below_surge"]["message"]
    # No access line anywhere: who sent 401s cannot be told.
    assert checks["check_no_brute_force"]["outcome"] == "unknown"
    assert "no access line" in checks["check_no_brute_force"]["message"]
    assert "x" * 5000 not in result["output"]


def test_brute_force_from_log_lines_with_secrets_is_found_and_redacted(fake_kube):
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJyb290In0.c2lnbmF0dXJlLW9mLWEtZm9yZ2VkLXRva2Vu"
    lines = [_stamp(f'INFO  [uvicorn.access] 198.51.100.7:4{i:04d} - "GET /experiments HTTP/1.1" 401 1.0ms')
             for i in range(60)]
    lines += [_stamp(f"WARNING [app.auth] auth failure: invalid token sub=root header=Authorization: Bearer {jwt}"),
              _stamp("WARNING [app.auth] jwt login failed user=root password=hunter2-plain Bearer sekrit-opaque-77")]
    result = fake_kube({"api-a": b"".join(lines[::2]), "api-b": b"".join(lines[1::2])}
                       )("--set", "brute_force_min_401=50")
    brute = result["checks"]["check_no_brute_force"]
    assert brute["outcome"] == "failed" and brute["condition"] == "brute_force", brute
    assert "198.51.100.7 (60) = 100%" in brute["message"], brute["message"]
    assert result["triage"]["facts"]["brute_force"] is True
    for secret in (jwt, "hunter2-plain", "sekrit-opaque-77", jwt.split(".")[1]):
        assert secret not in result["output"], secret
    assert "Bearer ***" in result["output"]
