"""Diagnosis when the fault is labcheck's own access, or a bucket deleted by hand (issue 13).

Each case asserts the probable cause (or that there is none), the first next step, the severity,
the escalation lines and the resolution status (incident.md, ``verified``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

from conftest import Run, Sandbox
from test_diagnosis import _env, _steps


def _outputs(run: Run) -> str:
    return "".join(p.read_text(errors="replace") for p in run.reports.rglob("*") if p.is_file())


def _not_verified(run: Run, *blind: str) -> str:
    """incident.md says "not verified" and lists ``blind`` among the checks that could not run."""
    assert run.triage["verified"] is False
    incident = (run.reports / "incident.md").read_text()
    assert "INCIDENT RESOLVED" not in incident
    assert "not verified" in incident, incident
    for name in blind:
        assert any(name in line and "could not run" in line for line in incident.splitlines()), incident
    return incident


def test_an_expired_test_token_blames_nothing_on_auth(sandbox: Sandbox) -> None:
    from labcheck.sandbox.api import sign_token

    # Signed with the platform's own secret: only its expiry is wrong, which is labcheck's problem.
    token = str(sign_token(sandbox.state["secrets"]["jwt_secret"], ttl_seconds=-600))
    sandbox.quiet()  # a previous module's fault lingers in the rate window for a few scrapes
    run = sandbox.run_checks("checks/auth.py", "checks/api_gateway.py", env=_env(sandbox, test_token=token))
    data = run.triage
    check = run.check("check_test_token_accepted")
    assert check["outcome"] == "unknown" and "labcheck's test token expired at" in check["message"], check
    assert not any(c["scenario"] == "auth-failure" for c in data["causes"] + data["symptoms"])
    pc = data["probable_cause"]
    assert pc is None or pc.get("scenario") != "auth-failure", pc
    failing = [(c["nodeid"], c["message"]) for c in data["checks"] if c["outcome"] == "failed"]
    assert data["severity"] is None and data["next_steps"] == [], failing
    assert not any(line.startswith("Data breach") for line in data["escalation"] + data["escalation_not_evaluated"])
    _not_verified(run, "check_test_token_accepted")  # a sev1 check was blind
    assert token not in _outputs(run) and token not in run.stdout and token not in run.stderr


def test_labcheck_s_role_refused_is_not_the_primary_unavailable(sandbox: Sandbox) -> None:
    dsn = urlsplit(sandbox.settings["database_url"])
    assert dsn.username == "labcheck"
    wrong = dsn._replace(netloc=f"labcheck:{quote('not-the-password')}@{dsn.hostname}:{dsn.port}").geturl()
    run = sandbox.run_checks("checks/database.py", env=_env(sandbox, database_url=wrong))
    data = run.triage
    connect = run.check("check_database_accepts_connections")
    assert connect["outcome"] == "unknown" and "labcheck" in connect["message"], connect
    assert "not-the-password" not in _outputs(run)
    for c in data["checks"]:
        if c["nodeid"].startswith("checks/database.py") and "pool" not in c["nodeid"]:
            assert c["outcome"] in ("unknown", "passed"), c  # nothing read from the server fails
    assert not any(c["scenario"] == "database-unreachable" for c in data["causes"] + data["symptoms"])
    assert (data["probable_cause"] or {}).get("scenario") != "database-unreachable"
    assert not any("Failover database" in s for s in _steps(run))
    assert not any(line.startswith("Database issue") for line in data["escalation"])
    _not_verified(run, "check_database_accepts_connections")


def _clients(sandbox: Sandbox) -> Any:
    import boto3

    s = sandbox.settings
    return boto3.client("s3", endpoint_url=s["s3_endpoint"], aws_access_key_id=s["aws_access_key_id"],
                        aws_secret_access_key=s["aws_secret_access_key"], region_name=s["aws_region"])


def test_a_deleted_bucket_is_a_storage_failure_and_not_resolved(sandbox: Sandbox) -> None:
    import secrets

    bucket = f"labcheck-gone-{secrets.token_hex(4)}"
    client = _clients(sandbox)
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="d.bin", Body=b"0" * 1000)
    client.delete_object(Bucket=bucket, Key="d.bin")
    client.delete_bucket(Bucket=bucket)  # deleted by hand, not through a fault switch
    run = sandbox.run_checks("checks/storage.py", "-k", "reachable or quota",
                             env=_env(sandbox, s3_bucket=bucket))
    data = run.triage
    reach = run.check("check_bucket_reachable")
    assert reach["outcome"] == "failed" and reach["scenario"] == "storage-failure", reach
    assert "HTTP 404" in reach["message"]
    for name in ("check_bucket_below_quota", "check_bucket_usage_below_quota_ratio"):
        assert run.outcome(name) != "passed", run.check(name)
    assert data["severity"] == "SEV-2"
    pc = data["probable_cause"]
    assert pc["scenario"] == "storage-failure" and pc["component"] == "storage", pc
    first = data["next_steps"][0]
    assert first["scenario"] == "storage-failure", first
    assert not any("Scale up" in s or "Failover database" in s for s in _steps(run))
    # S3 answered (404): a deleted bucket is not the cloud provider's failure; no support ticket.
    assert data["escalation"] == [], data["escalation"]
    infra = next(e for e in data["escalation_evaluated"] if e["condition"] == "Infrastructure failure")
    assert infra["holds"] is False and "aws_outage = false" in infra["because"], infra
    assert data["verified"] is False
    incident = (run.reports / "incident.md").read_text()
    assert incident.startswith("**INCIDENT DECLARED**") and "INCIDENT RESOLVED" not in incident
