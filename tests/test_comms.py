"""The status update and the status page (issue 14, part 4): the phase, the filled templates, the files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from labcheck import config as cfg
from labcheck import verdict
from labcheck.scenarios import CatalogueError, load_catalogue
from labcheck.verdict import comms
from test_verdict import API_5XX, API_P95, CAT, DB, HEALTHY, SCENARIOS, T0, check, run, validate

MITIGATED = "2027-01-15T07:50:00Z"  # ten minutes before the run's T0 + 4 s


def build(*checks: dict[str, Any], gate: bool = False, **values: str) -> dict[str, Any]:
    cli = {k: (v, "test") for k, v in values.items()}
    if gate:  # what `labcheck gate` passes to each round
        cli |= {"history_window": ("15m", "gate"), "history_since": (MITIGATED, "gate")}
    settings = cfg.load(cli=cli, environ={}, use_sandbox=False) if cli else None
    data = verdict.build(list(checks), catalogue=CAT, settings=settings, started_at=T0, finished_at=T0 + 4)
    validate(json.loads(json.dumps(data, default=str)))
    return data


def blind(component: str = "database", level: int = 1) -> dict[str, Any]:
    return check(f"check_{component}_blind", component, level, outcome="unknown", message="timed out after 5 s")


# --- the phase -------------------------------------------------------------------------------


def test_a_cause_the_run_is_sure_of_is_identified() -> None:
    data = build(API_5XX, API_P95, DB, HEALTHY)
    assert data["status_update"]["phase"] == "Identified"
    assert "is playbook scenario db-connection-exhaustion, with no caveat" in data["status_update"]["why"]
    assert data["status_page"] == {"file": "status-page.md", "status": "IDENTIFIED"}


@pytest.mark.parametrize(("checks", "why"), [
    # the database (which the API depends on) could not be checked: the cause may be there
    ((API_5XX, blind("database", 1)), "not sure: database (which api_gateway depends on) could not be checked"),
    # an unseen sev1 outage could be the real cause
    ((DB, blind("auth", 1)), "not sure: A sev1 check could not be run"),
    # a failure no playbook scenario covers
    ((check("check_odd", "metrics", 3),), "matching no playbook scenario"),
])
def test_a_cause_the_run_is_not_sure_of_is_still_investigating(checks: tuple[dict[str, Any], ...],
                                                               why: str) -> None:
    data = build(*checks)
    assert data["severity"] is not None
    assert data["status_update"]["phase"] == "Investigating"
    assert why in data["status_update"]["why"]
    assert data["status_page"]["status"] == "INVESTIGATING"


def test_a_single_run_without_failures_is_resolved_only_when_verified() -> None:
    assert build(HEALTHY)["status_update"]["phase"] == "Resolved"
    unverified = build(HEALTHY, blind("database", 1))
    assert unverified["status_update"]["phase"] == "Investigating"
    assert "1 sev1/sev2 check(s) could not check (checks/database.py::check_database_blind)" \
        in unverified["status_update"]["why"]
    assert "**Status:** Investigating: no check failed" in verdict.incident_markdown(unverified)
    nothing_serious = build(check("check_docs", "docs", 4, outcome="passed"))
    assert nothing_serious["status_update"]["why"].endswith("no sev1 or sev2 check was selected")


def test_a_gate_round_knows_mitigating_monitoring_and_resolved() -> None:
    failing = build(API_5XX, gate=True)
    assert failing["gate"] == {"history_window": "15m", "since": "2027-01-15T07:50:00+00:00"}
    assert failing["status_update"]["phase"] == "Mitigating"
    assert failing["status_page"]["status"] == "IDENTIFIED"  # customers see no "Mitigating"
    update = verdict.status_update_markdown(failing)
    assert "- Taken: mitigation applied at 07:50 UTC; `labcheck gate` verifying it (history window 15m)" in update
    history = check("check_error_ratio_history_below_sev2", "api_gateway", 2, outcome="unknown",
                    message="not yet 15 minutes of evidence since the mitigation")
    pending = build(HEALTHY, history, gate=True)
    assert pending["status_update"]["phase"] == "Monitoring"
    page = verdict.status_page_markdown(pending)
    assert page.startswith("**MONITORING**") and "A fix has been applied and we are monitoring" in page
    assert build(HEALTHY, gate=True)["status_update"]["phase"] == "Resolved"
    assert build(API_5XX)["gate"] is None  # a single run


def test_a_caller_may_say_the_phase_and_the_incident_start() -> None:
    data = build(API_5XX, DB, incident_start="2027-01-15T07:30:00Z")
    assert data["incident_start"] == "2027-01-15T07:30:00+00:00"
    update = verdict.status_update_markdown(data)
    assert "- Incident open since 07:30 UTC (30 min)" in update
    later = verdict.status_update_markdown(data, phase_name="Monitoring", incident_start="2027-01-15T07:00:00Z",
                                           now="2027-01-15T08:20:00+00:00")
    assert later.startswith("**INCIDENT UPDATE** - 08:20 UTC\n\n**Status:** Monitoring\n")
    assert "- Incident open since 07:00 UTC (80 min)" in later
    assert "set by the caller (the run alone would say Identified" in later
    assert verdict.status_page_markdown(data, phase_name="Mitigating").startswith("**IDENTIFIED**")
    with pytest.raises(ValueError, match="phase: one of Investigating"):
        verdict.status_update_markdown(data, phase_name="Fixed")
    assert verdict.phase(build(HEALTHY, blind()), mitigated=True)[0] == "Monitoring"


# --- the documents ---------------------------------------------------------------------------


def test_the_status_update_fills_the_template_from_the_run() -> None:
    data = build(API_5XX, API_P95, DB, HEALTHY)
    text = verdict.status_update_markdown(data)
    assert text.startswith("**INCIDENT UPDATE** - 08:00 UTC\n\n**Status:** Identified\n\n**What we know:**\n"
                           "- SEV-1 (Critical - Service completely unavailable): Database (Primary) failing")
    assert "- probable cause db-connection-exhaustion (database) (Database Connection Exhaustion);" in text
    assert "- FAILED SEV-1 database: check_connection_headroom_below_sev1: observed bad" in text
    steps = re.findall(r"^- Next: (.*)$", text, re.M)
    assert steps[0].startswith("Terminate idle connections: `SELECT pg_terminate_backend(pid)")
    assert len(steps) == comms.SHOWN_STEPS and f"- {len(data['next_steps']) - 5} more next step(s) in incident.md" in text
    assert "**Estimated resolution:** Unknown" in text
    assert text.rstrip().endswith("**Next update:** 08:15 UTC")  # SEV-1: 15 minutes


def test_the_status_page_names_services_in_customers_words_only() -> None:
    url = "http://api.internal.test:8080/experiments"
    leaky = check("check_error_ratio_below_sev2", "api_gateway", 2, "high-error-rate",
                  message=f"GET {url} on pod llm-research-api-7f9c: http_requests_total 5xx 18%")
    data = build(leaky, DB)
    page = verdict.status_page_markdown(data)
    assert page.startswith("**IDENTIFIED**\n\n**Posted:** 2027-01-15 08:00 UTC\n\n")
    assert ("We are currently experiencing elevated error rates affecting all platform features (loading and "
            "saving data) and platform API.") in page
    assert "**Affected Services:**\n- All platform features (loading and saving data)\n- Platform API\n" in page
    assert "We will provide updates every 15 minutes until resolved." in page
    internal = ["api.internal.test", "8080", "llm-research", "http_requests_total", "check_", "checks/",
                "api_gateway", "database", "db-connection-exhaustion", "SEV-", "pg_"]
    assert [w for w in internal if w in page] == []
    docs = build(check("check_docs_answers", "docs", 4, "docs-down"))
    assert "experiencing degraded performance affecting documentation" in verdict.status_page_markdown(docs)
    assert "every 30 minutes" in verdict.status_page_markdown(docs)


def test_a_component_without_customer_words_is_not_named(tmp_path: Path) -> None:
    data = build(API_5XX)
    data["impact_details"] = [{**data["impact_details"][0], "component": "queue_internal", "name": "Queue (rabbitmq)",
                               "customer": None}]
    page = verdict.status_page_markdown(data)
    assert "- Some platform features\n" in page and "queue" not in page.lower() and "rabbit" not in page


def test_a_healthy_run_writes_the_all_clear_and_lists_the_files(tmp_path: Path) -> None:
    data = build(HEALTHY)
    verdict.write(tmp_path, data, lambda s: s)
    assert (tmp_path / "status-page.md").read_text() == (
        "**RESOLVED**\n\n**Posted:** 2027-01-15 08:00 UTC\n\nAll systems operational: every service is working "
        "normally.\n")
    update = (tmp_path / "status-update.md").read_text()
    assert "**Status:** Resolved" in update and "**Next update:** none: resolved" in update
    triage = json.loads((tmp_path / "triage.json").read_text())
    assert triage["status_update"]["file"] == "status-update.md" and triage["status_page"]["file"] == "status-page.md"
    assert verdict.summary_lines(data)[-1].endswith(
        "Reports: triage.json, incident.md, status-update.md, status-page.md")


def test_every_document_is_written_through_the_one_redactor(tmp_path: Path) -> None:
    data = build(check("check_error_ratio_below_sev2", "api_gateway", 2, "high-error-rate",
                       message="GET http://api/x with Bearer s3cr3t-token: 500"))
    verdict.write(tmp_path, data, lambda s: s.replace("s3cr3t-token", "***"))
    assert "Bearer ***" in (tmp_path / "status-update.md").read_text()
    assert not any("s3cr3t" in p.read_text() for p in tmp_path.iterdir())


def test_a_usage_error_writes_no_status_documents_and_removes_stale_ones(tmp_path: Path) -> None:
    verdict.write(tmp_path, build(API_5XX), lambda s: s)
    assert (tmp_path / "status-page.md").exists()
    verdict.write_usage_error(tmp_path, "profile x.toml: file not found")
    assert not (tmp_path / "status-update.md").exists() and not (tmp_path / "status-page.md").exists()
    triage = json.loads((tmp_path / "triage.json").read_text())
    validate(triage)
    assert triage["status_update"] is None and triage["status_page"] is None
    # For a caller holding such a verdict, the phase still says what it is.
    assert verdict.phase(triage) == ("Investigating",
                                     "labcheck could not judge the platform: profile x.toml: file not found")


def test_the_impact_matrix_customer_words_are_optional_strings(tmp_path: Path) -> None:
    assert CAT.severity.impact["storage"].customer == "Dataset uploads and downloads"
    copy = tmp_path / "scenarios"
    shutil.copytree(SCENARIOS, copy)
    text = (copy / "_severity.toml").read_text()
    (copy / "_severity.toml").write_text(text.replace('customer = "Documentation"\n', ""))
    assert load_catalogue(copy).severity.impact["docs"].customer is None
    (copy / "_severity.toml").write_text(text.replace('customer = "Documentation"', "customer = 3"))
    with pytest.raises(CatalogueError, match="impact.docs.customer' must be a string"):
        load_catalogue(copy)


def test_a_run_stopped_by_a_usage_error_leaves_no_status_documents(pytester: pytest.Pytester) -> None:
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_ok.py").write_text(
        "import pytest\n\n@pytest.mark.sev1\n@pytest.mark.api_gateway\ndef check_ok(expect):\n"
        "    expect(True, target='t', observed='ok', threshold='ok')\n")
    reports = pytester.path / "reports"
    ok = run(pytester, "checks")
    assert ok.ret == 0 and (reports / "status-page.md").read_text().startswith("**RESOLVED**")
    ok.stdout.fnmatch_lines(["*Reports: triage.json, incident.md, status-update.md, status-page.md"])
    bad = run(pytester, "checks", "--set", "p95_latency_s=fast")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    triage = json.loads((reports / "triage.json").read_text())
    assert triage["error"] and triage["status_update"] is None and triage["status_page"] is None
    assert not (reports / "status-update.md").exists() and not (reports / "status-page.md").exists()
