"""The verdict against the live sandbox: a leaking pool is the cause, the API's failures its symptoms."""

from __future__ import annotations

from typing import Any

# The API gateway and database checks: the ones this fault shows in, and fast.
MODULES = ("checks/api_gateway.py", "checks/database.py")


def _db_and_api_failing(run: Any) -> bool:
    failed = {c["component"] for c in run.triage["checks"] if c["outcome"] == "failed"}
    return {"database", "api_gateway"} <= failed


def test_db_pool_leak_is_the_probable_cause_and_api_failures_its_symptoms(healed: Any) -> None:
    healed.fault("db-pool-leak")
    run = healed.wait_for(_db_and_api_failing, *MODULES, deadline_s=120,
                          what="database and API gateway checks failing")
    data = run.triage
    assert data["severity"] in ("SEV-1", "SEV-2")
    assert data["probable_cause"]["scenario"] == "db-connection-exhaustion", data["probable_cause"]
    assert data["probable_cause"]["component"] == "database"
    ranking = data["ranking"]
    assert ranking[0]["kind"] == "cause" and ranking[0]["scenario"] == "db-connection-exhaustion"
    api = [e for e in ranking if e["component"] == "api_gateway"]
    assert api and all(e["kind"] == "symptom" and "api_gateway depends on database" in e["why"] for e in api)
    assert all(s["caused_by"][0] == "db-connection-exhaustion (database)" for s in data["symptoms"])
    assert data["next_steps"][0]["step"] == "Terminate idle connections"
    assert data["scenarios"][0]["id"] == "db-connection-exhaustion"
    assert "Probable cause: db-connection-exhaustion (database)" in run.stdout
    incident = (run.reports / "incident.md").read_text()
    assert incident.startswith("**INCIDENT DECLARED**")
    assert "- Investigating: probable cause db-connection-exhaustion (database)" in incident
    assert "Check current connections" in incident


def test_a_healthy_run_writes_the_resolution_status(healed: Any) -> None:
    run = healed.wait_for(lambda r: r.triage["severity"] is None, *MODULES, deadline_s=120,
                          what="a healthy sandbox with no failing check")
    data = run.triage
    assert data["probable_cause"] is None and data["next_steps"] == [] and data["escalation"] == []
    assert not data["sev1_blind"], data["blind_spots"]
    incident = (run.reports / "incident.md").read_text()
    assert incident.startswith("**INCIDENT RESOLVED**\n\n**Status:** Resolved: no check failed")
    passed = [c["nodeid"] for c in data["checks"] if c["outcome"] == "passed"]
    assert passed and all(f"- PASSED SEV-{c['severity'][-1]} {c['nodeid']}" in incident
                          for c in data["checks"] if c["outcome"] == "passed")
