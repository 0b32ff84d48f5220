"""The verdict: severity, cause-first ranking, conditional next steps, escalation, triage.json and incident.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from labcheck import verdict
from labcheck.scenarios import load_catalogue

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "scenarios"
CAT = load_catalogue(SCENARIOS)
SCHEMA = json.loads(verdict.SCHEMA_FILE.read_text())
T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC


def validate(data: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(data)


def check(name: str, component: str, level: int, scenario: str | None = None, *, outcome: str = "failed",
          facts: dict[str, Any] | None = None, message: str | None = None) -> dict[str, Any]:
    return {"nodeid": f"checks/{component}.py::{name}", "outcome": outcome, "component": component,
            "severity": level, "scenario": scenario, "facts": facts or {}, "duration_s": 0.1,
            "message": message or (f"{name}: observed bad; threshold good; scenario {scenario}" if outcome == "failed"
                                   else None),
            "observed": [{"target": name, "observed": "bad" if outcome == "failed" else "ok", "threshold": "good"}]}


def build(*checks: dict[str, Any]) -> dict[str, Any]:
    data = verdict.build(list(checks), catalogue=CAT, settings=None, started_at=T0, finished_at=T0 + 4)
    validate(json.loads(json.dumps(data, default=str)))
    return data


DB = check("check_connection_headroom_below_sev1", "database", 1, "db-connection-exhaustion")
API_5XX = check("check_error_ratio_below_sev2", "api_gateway", 2, "high-error-rate")
API_P95 = check("check_p95_latency_below_threshold", "api_gateway", 2, "high-latency")
STORAGE = check("check_bucket_reachable", "storage", 2, "storage-failure")
CRASH_API = check("check_no_container_crash_looping[llm-research-api]", "api_gateway", 2, "pod-crash-loop")
NODES = check("check_nodes_ready_without_pressure", "kubernetes", 1, "pod-crash-loop")
AUTH = check("check_test_token_accepted", "auth", 1, "auth-failure")
HEALTHY = check("check_health_answers_within_budget", "api_gateway", 1, outcome="passed")


# --- severity --------------------------------------------------------------------------------


@pytest.mark.parametrize(("levels", "expected"), [
    ([4], "SEV-4"), ([3], "SEV-3"), ([3, 2], "SEV-2"), ([4, 3, 1, 2], "SEV-1"), ([], None),
])
def test_severity_is_the_worst_failing_marker(levels: list[int], expected: str | None) -> None:
    checks = [check(f"check_{n}", "metrics", lvl) for n, lvl in enumerate(levels)]
    data = build(*checks, HEALTHY)
    assert data["severity"] == expected
    if expected:
        level = CAT.severity.levels[expected]
        assert data["response_time"] == level.response_time


def test_a_sev1_check_that_could_not_run_is_said_plainly() -> None:
    blind = check("check_database_accepts_connections", "database", 1, "db-connection-exhaustion",
                  outcome="unknown", message="PostgreSQL: connection timed out after 5 s")
    data = build(API_5XX, blind)
    assert data["severity"] == "SEV-2"
    assert data["blind_spots"] == [{"nodeid": blind["nodeid"], "component": "database", "severity": "SEV-1",
                                    "reason": "PostgreSQL: connection timed out after 5 s"}]
    assert data["sev1_blind"] is True
    assert data["blind_spot_warning"].startswith("A sev1 check could not be run (check_database_accepts_connections)")
    assert "the real severity may be SEV-1, not SEV-2" in data["blind_spot_warning"]
    assert "database (which api_gateway depends on) could not be checked" in data["probable_cause"]["caveat"]
    lines = verdict.summary_lines(data)
    assert any(line.startswith("WARNING: A sev1 check could not be run") for line in lines)
    nothing_failed = build(blind, HEALTHY)
    assert nothing_failed["severity"] is None
    assert "no check failed, but the service may still be unavailable" in nothing_failed["blind_spot_warning"]


# --- ranking ---------------------------------------------------------------------------------


def labels(entries: list[dict[str, Any]]) -> list[str]:
    return [e["label"] for e in entries]


def test_db_exhaustion_with_api_errors_and_latency_ranks_the_database_first() -> None:
    data = build(API_5XX, API_P95, DB, HEALTHY)
    pc = data["probable_cause"]
    assert pc["scenario"] == "db-connection-exhaustion" and pc["component"] == "database"
    assert "api_gateway depends on database" in pc["why"]
    assert [s["scenario"] for s in data["symptoms"]] == ["high-error-rate", "high-latency"]
    assert all(s["caused_by"] == ["db-connection-exhaustion (database)"] for s in data["symptoms"])
    assert [(e["kind"], e["scenario"]) for e in data["ranking"]] == [
        ("cause", "db-connection-exhaustion"), ("symptom", "high-error-rate"), ("symptom", "high-latency")]
    assert [s["id"] for s in data["scenarios"]] == ["db-connection-exhaustion", "high-error-rate", "high-latency"]
    assert data["next_steps"][0]["step"] == "Terminate idle connections"
    summary = "\n".join(verdict.summary_lines(data))
    assert "Probable cause: db-connection-exhaustion (database): Database Connection Exhaustion" in summary
    assert "  why: ranked as a cause: database failed" in summary


def test_storage_failure_explains_api_errors() -> None:
    data = build(API_5XX, STORAGE)
    assert data["probable_cause"]["scenario"] == "storage-failure"
    assert labels(data["symptoms"]) == ["high-error-rate (api_gateway)"]
    assert data["symptoms"][0]["why"] == "symptom of storage-failure (storage): api_gateway depends on storage"


def test_a_dependency_seen_only_through_a_failing_api_is_the_apis_symptom() -> None:
    from labcheck import config as cfg

    settings = cfg.load(cli={"api_url": ("http://api.test:8080", "test")}, environ={}, use_sandbox=False)
    datasets = check("check_datasets_endpoint_answers", "storage", 2, "storage-failure",
                     message="GET http://api.test:8080/datasets: observed HTTP 500; threshold HTTP 200")
    datasets["observed"] = [{"target": "GET http://api.test:8080/datasets", "observed": "HTTP 500", "threshold": "200"}]
    bucket_ok = check("check_bucket_reachable", "storage", 2, "storage-failure", outcome="passed")
    data = verdict.build([API_5XX, datasets, bucket_ok], catalogue=CAT, settings=settings, started_at=T0,
                         finished_at=T0 + 1)
    validate(json.loads(json.dumps(data, default=str)))
    assert data["probable_cause"]["scenario"] == "high-error-rate"
    assert data["symptoms"][0]["label"] == "storage-failure (storage)"
    assert "seen only as server errors from the API's endpoints" in data["symptoms"][0]["why"]
    # With the bucket itself unreachable, storage is the cause again.
    bucket = check("check_bucket_reachable", "storage", 2, "storage-failure",
                   message="s3://datasets: observed connection refused; threshold reachable")
    outage = verdict.build([API_5XX, datasets, bucket], catalogue=CAT, settings=settings, started_at=T0,
                           finished_at=T0 + 1)
    assert outage["probable_cause"]["scenario"] == "storage-failure"
    # A rejected token is seen through the API too, but slow requests do not explain it.
    token = check("check_test_token_accepted", "auth", 1, "auth-failure",
                  message="GET http://api.test:8080/experiments: observed HTTP 401; threshold HTTP 200")
    for api in (API_P95, API_5XX):
        data = verdict.build([api, token], catalogue=CAT, settings=settings, started_at=T0, finished_at=T0 + 1)
        assert data["probable_cause"]["scenario"] == "auth-failure"
    # A single 500 from /experiments while the API fails requests is the API's symptom, even at SEV-3.
    listing = check("check_experiments_list_answers", "experiments", 2,
                    message="GET http://api.test:8080/experiments: observed HTTP 500; threshold HTTP 200")
    endpoint = check("check_endpoint_error_ratio[/datasets]", "api_gateway", 3, "high-error-rate")
    data = verdict.build([listing, endpoint], catalogue=CAT, settings=settings, started_at=T0, finished_at=T0 + 1)
    assert data["probable_cause"]["label"] == "high-error-rate (api_gateway)"
    assert labels(data["symptoms"]) == ["experiments (no playbook scenario)"]
    # Without the API failing, a failing /datasets is storage's own finding.
    alone = verdict.build([datasets], catalogue=CAT, settings=settings, started_at=T0, finished_at=T0 + 1)
    assert alone["probable_cause"]["scenario"] == "storage-failure"


def test_crash_looping_api_pods_explain_api_errors_in_the_same_component() -> None:
    data = build(API_5XX, CRASH_API)
    assert data["probable_cause"]["scenario"] == "pod-crash-loop"
    assert data["probable_cause"]["component"] == "api_gateway"
    assert "the catalogue lists high-error-rate among the effects of pod-crash-loop" in data["probable_cause"]["why"]
    assert [s["scenario"] for s in data["symptoms"]] == ["high-error-rate"]


def test_a_node_problem_outranks_everything_running_on_it() -> None:
    data = build(API_5XX, DB, NODES)
    assert data["probable_cause"]["component"] == "kubernetes"
    assert labels(data["symptoms"]) == ["high-error-rate (api_gateway)"]
    assert data["symptoms"][0]["caused_by"] == ["pod-crash-loop (kubernetes)", "db-connection-exhaustion (database)"]
    # A failure mode of its own is not a dependency's symptom unless the catalogue says so.
    assert labels(data["causes"]) == ["pod-crash-loop (kubernetes)", "db-connection-exhaustion (database)"]
    unscenarioed = build(NODES, check("check_experiments_list_answers", "experiments", 2))
    assert labels(unscenarioed["symptoms"]) == ["experiments (no playbook scenario)"]


def test_a_minor_condition_does_not_explain_a_worse_one_downstream() -> None:
    s3_errors = check("check_s3_request_errors[5xxErrors]", "storage", 3, "storage-failure")
    data = build(API_P95, s3_errors)
    assert data["probable_cause"]["scenario"] == "high-latency"
    assert labels(data["causes"]) == ["high-latency (api_gateway)", "storage-failure (storage)"]
    endpoint = check("check_endpoint_error_ratio[/datasets]", "api_gateway", 3, "high-error-rate")
    assert build(endpoint, s3_errors)["probable_cause"]["scenario"] == "storage-failure"
    # Crash-looping nodes take the same scenario down on the workloads they run.
    pods = check("check_every_pod_is_ready[llm-research-api]", "api_gateway", 1, "pod-crash-loop")
    assert labels(build(pods, NODES)["symptoms"]) == ["pod-crash-loop (api_gateway)"]


def test_an_oom_kill_is_not_blamed_on_old_storage_errors() -> None:
    oom = check("check_no_recent_oom_kill[llm-research-api]", "api_gateway", 2, "pod-crash-loop",
                facts={"oom_killed": True})
    s3_errors = check("check_s3_request_errors[5xxErrors]", "storage", 3, "storage-failure")
    data = build(oom, s3_errors)
    assert labels(data["causes"]) == ["pod-crash-loop (api_gateway)", "storage-failure (storage)"]
    assert data["symptoms"] == []
    assert data["next_steps"][0]["step"] == "If OOMKilled: increase memory limits"


def test_independent_failures_stay_separate_causes_worst_first() -> None:
    data = build(STORAGE, AUTH)
    assert labels(data["causes"]) == ["auth-failure (auth)", "storage-failure (storage)"]
    assert data["symptoms"] == []
    assert "an independent problem" in data["causes"][1]["why"]
    single = build(API_5XX)
    assert single["probable_cause"]["why"].startswith("the only failing finding")


def test_a_failure_without_scenario_gets_the_generic_mitigations() -> None:
    health = check("check_health_answers_within_budget", "api_gateway", 1)
    data = build(health)
    assert data["probable_cause"]["label"] == "api_gateway (no playbook scenario)"
    generic = [s["step"] for s in data["next_steps"] if s["scenario"] == "generic"]
    # Only the steps what failed calls for: no load signal failed, so no "scale up"; no DB cause, no failover.
    assert generic == ["Rollback if recent deployment"]
    dropped = {d["step"]: d["because"] for d in data["dropped_steps"]}
    assert dropped["Scale up if capacity issue"].startswith("capacity_issue = false (derived: failing load signals")
    assert dropped["Failover database if DB issue (requires DBA involvement for RDS failover)"].startswith(
        "db_issue = false (derived")
    loaded = build(API_5XX, health)
    assert any(s["command"] == "kubectl scale deployment {api_deployment} -n {namespace} --replicas=10"
               for s in loaded["next_steps"] if s.get("command", "").startswith("kubectl scale"))


def test_only_metrics_failing_gives_no_api_scaling_nor_database_failover() -> None:
    data = build(check("check_scrape_targets_up", "metrics", 3))
    steps = " | ".join(s["step"] for s in data["next_steps"])
    assert "Scale up" not in steps and "Failover database" not in steps and "Restart pods" not in steps
    assert data["escalation"] == []


# --- next steps ------------------------------------------------------------------------------


ROLLOUT = {"deployment": "llm-research-api", "namespace": "llm-research", "revision": 7, "previous_revision": 6,
           "age_s": 65.0}


def test_a_recent_rollout_is_a_suspect_and_rollback_comes_first_naming_the_revision() -> None:
    rollout_check = check("check_recent_rollout_is_recorded[llm-research-api]", "kubernetes", 4, outcome="passed",
                          facts={"recent_rollout": ROLLOUT})
    data = build(API_5XX, rollout_check)
    first = data["next_steps"][0]
    assert first["step"].startswith("Rollback deployment/llm-research-api from revision 7 to revision 6")
    assert first["command"] == "kubectl rollout undo deployment/llm-research-api -n llm-research --to-revision=6"
    assert not any(s["step"] == "If recent deployment: rollback" for s in data["next_steps"])
    assert data["suspects"][0]["revision"] == 7 and "revision 7 65 s ago" in data["suspects"][0]["why"]
    assert [e["kind"] for e in data["ranking"]] == ["cause", "suspect"]
    assert data["facts"]["recent_deployment"] is True
    workers = check("check_recent_rollout_is_recorded[experiment-workers]", "experiments", 4, outcome="passed",
                    facts={"recent_rollout": {**ROLLOUT, "deployment": "experiment-workers", "revision": 3,
                                              "previous_revision": 2, "age_s": 600.0}})
    both = build(API_5XX, rollout_check, workers)
    assert [s["deployment"] for s in both["suspects"]] == ["llm-research-api", "experiment-workers"]
    assert [s["scenario"] for s in both["next_steps"][:2]] == ["recent-rollout", "recent-rollout"]
    assert "(failing: api_gateway, which it runs)" in both["suspects"][0]["why"]
    assert "failing:" not in both["suspects"][1]["why"]
    # When what fails is what the older rollout runs, that rollout is the first suspect.
    stalled = build(check("check_workers_deployment_available", "experiments", 2), rollout_check, workers)
    assert [s["deployment"] for s in stalled["suspects"]] == ["experiment-workers", "llm-research-api"]
    assert stalled["next_steps"][0]["command"].startswith("kubectl rollout undo deployment/experiment-workers")
    # A rollout with only a sev3 failure is information, not a suspect.
    minor = build(check("check_endpoint_error_ratio[/datasets]", "api_gateway", 3, "high-error-rate"), rollout_check)
    assert minor["suspects"] == []
    assert minor["next_steps"][0]["step"] == "If recent deployment: rollback"
    assert minor["next_steps"][0]["condition"] == "true"


def test_known_false_conditions_drop_their_advice_and_known_true_ones_come_first() -> None:
    crash = check("check_no_container_crash_looping[llm-research-api]", "api_gateway", 2, "pod-crash-loop",
                  facts={"oom_killed": False, "crash": True})
    no_rollout = check("check_recent_rollout_is_recorded[llm-research-api]", "kubernetes", 4, outcome="passed",
                       facts={"recent_rollout": None})
    data = build(crash, API_5XX, no_rollout)
    steps = [s["step"] for s in data["next_steps"]]
    assert steps[0] == "If panic/crash: rollback to previous version"
    assert data["next_steps"][0]["because"] == f"crash = true ({crash['nodeid']})"
    assert "If OOMKilled: increase memory limits" not in steps
    assert "If recent deployment: rollback" not in steps
    dropped = {d["step"]: d["because"] for d in data["dropped_steps"]}
    assert dropped["If OOMKilled: increase memory limits"] == f"oom_killed = false ({crash['nodeid']})"
    assert dropped["If recent deployment: rollback"].startswith("recent_deployment = false")
    unknown = next(s for s in data["next_steps"] if s["step"] == "If startup failure: check configs, secrets, dependencies")
    assert unknown["condition"] == "unknown"
    oom = build(check("check_no_recent_oom_kill[llm-research-api]", "api_gateway", 2, "pod-crash-loop",
                      facts={"oom_killed": True}))
    assert oom["next_steps"][0]["step"] == "If OOMKilled: increase memory limits"


def test_a_failing_scenario_establishes_the_conditions_it_implies() -> None:
    data = build(DB, API_P95)
    step = next(s for s in data["next_steps"] if s["step"] == "Increase connection pool if DB bound")
    assert step["condition"] == "true"
    assert step["because"] == "db_bound = true (implied by failing scenario db-connection-exhaustion)"


def built_with(settings: Any, *checks: dict[str, Any]) -> dict[str, Any]:
    data = verdict.build(list(checks), catalogue=CAT, settings=settings, started_at=T0, finished_at=T0 + 4)
    validate(json.loads(json.dumps(data, default=str)))
    return data


def test_escalation_is_evaluated_not_listed() -> None:
    from labcheck import config as cfg

    sev1 = build(DB, API_5XX)
    # Without the incident's start the time-based rows are not evaluated, and say so apart.
    assert sev1["escalation"] == ["Database issue: escalate to DBA on-call (Phone)"]
    assert sev1["escalation_not_evaluated"][0] == ("SEV-1 not mitigated in 15 min: escalate to Engineering Manager "
                                                   "(Phone): incident start unknown (set incident_start)")
    lines = verdict.summary_lines(sev1)
    assert ("Escalation: Database issue: escalate to DBA on-call (Phone) (because cause in the database: "
            "db-connection-exhaustion (database))") in lines
    started = cfg.load(cli={"incident_start": ("2027-01-15T07:40:00Z", "test")}, environ={}, use_sandbox=False)
    late = built_with(started, DB, API_5XX)["escalation"]
    assert late[:1] == ["SEV-1 not mitigated in 15 min: escalate to Engineering Manager (Phone)"]
    assert "SEV-1 not resolved in 1 hour: escalate to VP Engineering (Phone)" not in late
    row = next(e for e in built_with(started, DB)["escalation_evaluated"] if e["condition"].startswith("SEV-1 not m"))
    assert row["holds"] is True and "20.1 minutes after the incident started at 2027-01-15T07:40:00Z" in row["because"]
    early = cfg.load(cli={"incident_start": ("2027-01-15T07:55:00Z", "test")}, environ={}, use_sandbox=False)
    assert not any(line.startswith("SEV-1") for line in built_with(early, DB)["escalation"])
    storage = build(STORAGE)["escalation"]
    assert storage == ["Infrastructure failure: escalate to Cloud Provider Support (Support Ticket)"]
    # An auth failure, a clock skew or a missing secret alone is no evidence of a breach.
    assert not any("Data breach" in line for line in build(AUTH)["escalation"])
    skew = check("check_clock_skew", "auth", 2, "auth-failure", facts={"clock_skew": True})
    secret = check("check_jwt_secret_present[JWT_SECRET]", "auth", 1, "auth-failure", facts={"secret_rotation": True})
    assert not any("Data breach" in line for line in build(skew, secret)["escalation"])
    bypass = {**check("check_request_without_token_rejected", "auth", 1, "auth-failure"), "condition": "auth_bypass"}
    breach = build(bypass)
    assert "Data breach suspected: escalate to Security Team + Legal (Phone + Email)" in breach["escalation"]
    row = next(e for e in breach["escalation_evaluated"] if e["condition"] == "Data breach suspected")
    assert "should have been refused" in row["because"] and "check_request_without_token_rejected" in row["because"]
    assert build(HEALTHY)["escalation"] == []


# --- incident.md -----------------------------------------------------------------------------


def test_incident_md_is_the_initial_declaration_filled_in() -> None:
    blind = check("check_replication_lag", "database", 3, outcome="unknown", message="no replica configured")
    text = verdict.incident_markdown(build(API_5XX, DB, blind))
    assert text.startswith("**INCIDENT DECLARED**\n\n**Severity:** SEV-1\n**Time Detected:** 08:00 UTC\n")
    assert ("**Impact:** Database (Primary) failing (probable cause); API Gateway degraded as a consequence. "
            "Users affected: all users. Business impact: critical.") in text
    known = [line for line in text.splitlines() if line.startswith("- Known: FAILED")]
    assert known[0].startswith("- Known: FAILED SEV-1 database: check_connection_headroom_below_sev1: observed bad")
    assert known[1].startswith("- Known: FAILED SEV-2 api_gateway:")
    assert "- Investigating: probable cause db-connection-exhaustion (database) (Database Connection Exhaustion);" in text
    assert "- Investigating: ranked as symptoms after the cause: high-error-rate (api_gateway)" in text
    assert ('- Investigating (db-connection-exhaustion): Check current connections: '
            '`psql "$DATABASE_URL" -c "SELECT count(*), state FROM pg_stat_activity GROUP BY state;"`') in text
    assert "**Roles Assigned:**\n- IC: @[name]\n- Technical Lead: @[name]\n- Comms: @[name]" in text
    assert "**Next Update:** 08:15 UTC" in text
    assert re.search(r"\*\*Incident Channel:\*\* #inc-20270115-\[description\]", text)
    assert "- Database issue: escalate to DBA on-call (Phone) (because cause in the database:" in text
    assert ("- not evaluated: SEV-1 not mitigated in 15 min: escalate to Engineering Manager (Phone): "
            "incident start unknown") in text
    assert "- UNKNOWN SEV-3 checks/database.py::check_replication_lag - no replica configured" in text
    assert "**Next Update:** 08:30 UTC" in verdict.incident_markdown(build(API_5XX))


def test_nothing_failed_writes_the_resolution_status_with_the_checks_that_passed() -> None:
    text = verdict.incident_markdown(build(HEALTHY))
    assert text.startswith("**INCIDENT RESOLVED**\n\n**Status:** Resolved: no check failed at 08:00 UTC (1 passed")
    assert ("- PASSED SEV-1 checks/api_gateway.py::check_health_answers_within_budget: "
            "check_health_answers_within_budget: observed ok (threshold good)") in text
    assert "**Root Cause:** [Brief explanation]" in text
    blind = check("check_health_answers_within_budget", "api_gateway", 1, outcome="unknown", message="timeout")
    text = verdict.incident_markdown(build(blind))
    assert text.startswith("**STATUS: NOT VERIFIED**")
    assert "WARNING: A sev1 check could not be run" in text


def test_usage_and_verdict_errors_leave_a_valid_triage_json(tmp_path: Path) -> None:
    verdict.write_usage_error(tmp_path, "profile p.toml, key api_url: not an http(s) URL: 'x'")
    data = json.loads((tmp_path / "triage.json").read_text())
    validate(data)
    assert data["error"].startswith("profile p.toml") and data["severity"] is None
    verdict.write_usage_error(tmp_path, "boom", checks=[DB, HEALTHY])
    data = json.loads((tmp_path / "triage.json").read_text())
    validate(data)
    assert data["severity"] == "SEV-1" and len(data["checks"]) == 2


# --- end to end through pytest ---------------------------------------------------------------


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--no-sandbox", f"--scenarios-dir={SCENARIOS}",
        f"--reports-dir={pytester.path / 'reports'}", *args,
    )


INCIDENT_CHECKS = """\
import pytest
from labcheck.errors import ProbeTimeout

@pytest.mark.sev1
@pytest.mark.database
@pytest.mark.scenario("db-connection-exhaustion")
def check_connection_headroom(expect):
    expect.fact("database_overload", True)
    expect(False, target="PostgreSQL primary connections in use", observed="37 of 37 (100%)", threshold="< 95%")

@pytest.mark.sev2
@pytest.mark.api_gateway
@pytest.mark.scenario("high-error-rate")
def check_error_ratio(expect):
    expect(False, target="API 5xx ratio over 5m", observed="31.0%", threshold="<= 10%")

@pytest.mark.sev2
@pytest.mark.api_gateway
@pytest.mark.scenario("high-latency")
def check_p95(expect):
    expect(False, target="API p95 latency over 5m", observed="4.20 s on /experiments", threshold="<= 2 s")

@pytest.mark.sev1
@pytest.mark.api_gateway
def check_health(expect):
    expect(True, target="GET /health", observed="HTTP 200 in 0.05 s", threshold="HTTP 200 within 2 s")

@pytest.mark.sev1
@pytest.mark.auth
@pytest.mark.scenario("auth-failure")
def check_token(expect):
    raise ProbeTimeout("timed out after 5 s", target="http://api/experiments")
"""


def test_a_run_ranks_cause_first_and_writes_valid_documents_under_xdist(pytester: pytest.Pytester) -> None:
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_incident.py").write_text(INCIDENT_CHECKS)
    result = run(pytester, "checks", "-n", "2")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*labcheck triage*",
        "INCIDENT SEVERITY: SEV-1 (Critical - Service completely unavailable; respond within 15 minutes)",
        "WARNING: A sev1 check could not be run (check_token)*",
        "Probable cause: db-connection-exhaustion (database): Database Connection Exhaustion",
        "  why: ranked as a cause: database failed*api_gateway depends on database*",
        "Affected components: database, api_gateway",
        "Ranking (cause first):",
        "  1. cause: db-connection-exhaustion (database) [SEV-1]",
        "  2. symptom: high-error-rate (api_gateway) [SEV-2]",
        "  3. symptom: high-latency (api_gateway) [SEV-2]",
        "Next steps:",
        "  1. Terminate idle connections",
        "*",
        "Blind spots (1 checks could not run):",
        "  UNKNOWN SEV-1 checks/test_incident.py::check_token - http://api/experiments: timed out after 5 s",
        "Escalation: Database issue: escalate to DBA on-call (Phone) (because cause in the database:*",
    ])
    reports = pytester.path / "reports"
    data = json.loads((reports / "triage.json").read_text())
    validate(data)  # real output against the schema shipped in the package
    assert data["severity"] == "SEV-1"
    assert data["probable_cause"]["scenario"] == "db-connection-exhaustion"
    assert [s["scenario"] for s in data["symptoms"]] == ["high-error-rate", "high-latency"]
    assert data["facts"]["database_overload"] is True
    step = next(s for s in data["next_steps"] if s["step"].startswith("If database overload"))
    assert step["condition"] == "true" and "check_connection_headroom" in step["because"]
    incident = (reports / "incident.md").read_text()
    assert "**Severity:** SEV-1" in incident
    assert "- Known: FAILED SEV-1 database: PostgreSQL primary connections in use: observed 37 of 37 (100%)" in incident
    assert "**Impact:** Database (Primary) failing (probable cause); API Gateway degraded" in incident


CRASH_CHECKS = """\
import pytest

@pytest.mark.sev2
@pytest.mark.api_gateway
@pytest.mark.scenario("pod-crash-loop")
def check_no_crash_loop(expect):
    expect.fact("oom_killed", False)
    expect(False, target="pod llm-research-api-7f9c", observed="CrashLoopBackOff, 9 restarts, last exit 1 (Error)",
           threshold="no container waiting in CrashLoopBackOff")

@pytest.mark.sev2
@pytest.mark.api_gateway
@pytest.mark.scenario("high-error-rate")
def check_error_ratio(expect):
    expect(False, target="API 5xx ratio over 5m", observed="18.0%", threshold="<= 10%")

@pytest.mark.sev4
@pytest.mark.kubernetes
def check_recent_rollout(expect):
    expect.fact("recent_rollout", {"deployment": "llm-research-api", "revision": 12, "previous_revision": 11,
                                   "age_s": 70, "namespace": "llm-research"})
"""


def test_a_run_with_a_rollout_and_no_oom_puts_rollback_first_and_drops_the_oom_advice(
        pytester: pytest.Pytester) -> None:
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_crash.py").write_text(CRASH_CHECKS)
    result = run(pytester, "checks")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    data = json.loads((pytester.path / "reports" / "triage.json").read_text())
    validate(data)
    assert data["probable_cause"]["scenario"] == "pod-crash-loop"
    assert [s["scenario"] for s in data["symptoms"]] == ["high-error-rate"]
    first = data["next_steps"][0]
    assert first["step"].startswith("Rollback deployment/llm-research-api from revision 12 to revision 11")
    assert first["command"] == "kubectl rollout undo deployment/llm-research-api -n llm-research --to-revision=11"
    steps = [s["step"] for s in data["next_steps"]]
    assert "If OOMKilled: increase memory limits" not in steps
    assert "If panic/crash: rollback to previous version" in steps
    result.stdout.fnmatch_lines(["Next steps:", "  1. Rollback deployment/llm-research-api from revision 12*",
                                 "       $ kubectl rollout undo deployment/llm-research-api -n llm-research "
                                 "--to-revision=11"])
    result.stdout.fnmatch_lines(["  (dropped: If OOMKilled: increase memory limits: oom_killed = false*"])
    assert "Rollback deployment/llm-research-api from revision 12" in (pytester.path / "reports" / "incident.md").read_text()


def test_a_healthy_run_writes_the_resolution_status(pytester: pytest.Pytester) -> None:
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_ok.py").write_text(INCIDENT_CHECKS.split("@pytest.mark.sev1\n@pytest.mark.auth")[0]
                                                              .replace("expect(False", "expect(True"))
    result = run(pytester, "checks")
    assert result.ret == 0
    data = json.loads((pytester.path / "reports" / "triage.json").read_text())
    validate(data)
    assert data["severity"] is None and data["probable_cause"] is None and data["next_steps"] == []
    incident = (pytester.path / "reports" / "incident.md").read_text()
    assert incident.startswith("**INCIDENT RESOLVED**")
    assert "- PASSED SEV-1 checks/test_ok.py::check_connection_headroom: PostgreSQL primary connections in use" in incident
    assert incident.count("- PASSED ") == 4


def test_resolution_only_with_sev1_and_sev2_coverage() -> None:
    docs = check("check_docs_answers", "docs", 4, outcome="passed")
    blind = [check(f"check_s{n}", "storage", 2, "storage-failure", outcome="unknown", message="timed out")
             for n in (1, 2)]
    data = build(docs, *blind)
    assert data["severity"] is None and data["verified"] is False
    text = verdict.incident_markdown(data)
    assert text.startswith("**STATUS: NOT VERIFIED**\n\nNo failing checks among 1 that ran; 2 sev1/sev2 checks "
                           "could not run: not verified.\n- could not run: SEV-2 checks/storage.py::check_s1")
    assert "INCIDENT RESOLVED" not in text
    assert build(HEALTHY)["verified"] is True
    assert build(API_5XX)["verified"] is False
