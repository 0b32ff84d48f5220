"""Allure results: labels from markers, UNKNOWN as broken, redacted evidence, categories, environment, executor."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from labcheck import allure_results
from labcheck.scenarios import load_catalogue

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "scenarios"
CAT = load_catalogue(SCENARIOS)

CHECKS = """\
import pytest
from labcheck.errors import ProbeRefused, ProbeTimeout

@pytest.fixture
def refused():
    raise ProbeRefused("connection refused", target="postgresql://127.0.0.1:1/x")

@pytest.fixture
def asserting():
    assert False, "fixture saw the platform unhealthy"

@pytest.mark.sev1
@pytest.mark.database
@pytest.mark.scenario("db-connection-exhaustion")
def check_pool(expect):
    expect(False, target="the application's database pool", observed="10 of 10 open, 40 waiters",
           threshold="db_pool_waiters = 0", evidence={"db_pool_waiters": 40, "dsn": "postgresql://app:s3cretpw@db/x"})

@pytest.mark.sev2
@pytest.mark.api_gateway
@pytest.mark.scenario("high-error-rate")
def check_error_ratio(expect):
    raise ProbeTimeout("no complete answer within 6 s", target="Prometheus")

@pytest.mark.sev1
@pytest.mark.database
def check_connects(refused):
    pass

@pytest.mark.sev3
@pytest.mark.metrics
def check_scrapes(asserting):
    pass

@pytest.mark.sev4
@pytest.mark.docs
def check_docs(expect):
    expect(False, target="GET /docs", observed="HTTP 404", threshold="HTTP 200")

@pytest.mark.sev2
@pytest.mark.storage
@pytest.mark.scenario("storage-failure")
def check_bucket(expect):
    expect(True, target="s3://datasets", observed="reachable", threshold="reachable")
"""

GITHUB = {"GITHUB_ACTIONS": "true", "GITHUB_SERVER_URL": "https://github.example", "GITHUB_REPOSITORY": "lab/labcheck",
          "GITHUB_RUN_ID": "987", "GITHUB_RUN_NUMBER": "42", "GITHUB_WORKFLOW": "nightly canary"}


def results(directory: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in directory.glob("*-result.json"):
        doc = json.loads(path.read_text())
        out[doc["name"]] = doc
    return out


def labels(doc: dict[str, Any], name: str) -> list[str]:
    return [label["value"] for label in doc["labels"] if label["name"] == name]


def category_allure3(categories: list[dict[str, Any]], doc: dict[str, Any]) -> str | None:
    """Allure 3's matching: the first rule whose status matches and whose regex is *found* in the message."""
    message = (doc.get("statusDetails") or {}).get("message") or ""
    for cat in categories:
        if doc["status"] in cat["matchedStatuses"] and re.search(cat.get("messageRegex", ""), message):
            return str(cat["name"])
    return None


def category_allure2(categories: list[dict[str, Any]], doc: dict[str, Any]) -> str | None:
    """Allure 2's matching (Java): the regex must match the *whole* message."""
    message = (doc.get("statusDetails") or {}).get("message") or ""
    for cat in categories:
        regex = cat.get("messageRegex", "[\\s\\S]*")
        if doc["status"] in cat["matchedStatuses"] and re.fullmatch(regex, message, re.DOTALL):
            return str(cat["name"])
    return None


def test_allure_results_carry_labels_statuses_evidence_and_extras(pytester: pytest.Pytester,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in GITHUB.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LABCHECK_PLAYBOOK_URL", "https://wiki.example/PLAYBOOK.md")
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_allure.py").write_text(CHECKS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--no-sandbox", f"--scenarios-dir={SCENARIOS}",
        f"--reports-dir={pytester.path / 'reports'}", "-n", "2", "checks")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    out = pytester.path / "reports" / "allure-results"
    docs = results(out)

    # Failed is failed; UNKNOWN (call or setup, a bare assert in a fixture included) is broken.
    assert {name: doc["status"] for name, doc in docs.items()} == {
        "check_pool": "failed", "check_error_ratio": "broken", "check_connects": "broken",
        "check_scrapes": "broken", "check_docs": "failed", "check_bucket": "passed"}
    triage = json.loads((pytester.path / "reports" / "triage.json").read_text())
    # Only expect fails a check: a bare assert in a fixture (a component) is UNKNOWN in the verdict.
    assert {c["nodeid"].split("::")[1]: c["outcome"] for c in triage["checks"]} == {
        "check_pool": "failed", "check_error_ratio": "unknown", "check_connects": "unknown",
        "check_scrapes": "unknown", "check_docs": "failed", "check_bucket": "passed"}

    # Labels from the markers (added in the xdist workers).
    pool = docs["check_pool"]
    assert labels(pool, "severity") == ["blocker"]
    assert labels(pool, "feature") == ["database"]
    assert labels(pool, "story") == ["Database Connection Exhaustion"]
    assert pool["links"] == [{"type": "link", "name": "Playbook: Database Connection Exhaustion",
                              "url": "https://wiki.example/PLAYBOOK.md#scenario-3-database-connection-exhaustion"}]
    assert [labels(docs[n], "severity") for n in ("check_error_ratio", "check_scrapes", "check_docs")] == [
        ["critical"], ["normal"], ["minor"]]
    assert labels(docs["check_docs"], "story") == [] and "links" not in docs["check_docs"]

    # Evidence comes through the single redacting recorder.
    attachment = pool["attachments"][0]
    assert attachment["name"] == "failure"
    body = (out / attachment["source"]).read_text()
    assert '"db_pool_waiters": 40' in body and "s3cretpw" not in body

    # categories.json groups failures by scenario; UNKNOWN has its own category.
    categories = json.loads((out / "categories.json").read_text())
    assert len([c for c in categories if c["matchedStatuses"] == ["failed"]]) == len(CAT.scenarios) + 1
    expected = {
        "check_pool": "Database Connection Exhaustion [db-connection-exhaustion]",
        "check_docs": allure_results.NO_SCENARIO_CATEGORY,
        "check_error_ratio": allure_results.UNKNOWN_CATEGORY,
        "check_connects": allure_results.UNKNOWN_CATEGORY,
        "check_scrapes": allure_results.UNKNOWN_CATEGORY,
        "check_bucket": None,
    }
    for name, category in expected.items():
        assert category_allure3(categories, docs[name]) == category, name
        assert category_allure2(categories, docs[name]) == category, name

    # environment.properties and executor.json, written once by the controller.
    env = dict(line.split("=", 1) for line in (out / "environment.properties").read_text().splitlines())
    assert env["namespace"] == "llm-research"
    assert env["target"].startswith("configured target") or env["target"].startswith("nothing configured")
    assert env["labcheck.version"] and env["python.version"] and env["pytest.version"]
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", env["suite.git.commit"])
    executor = json.loads((out / "executor.json").read_text())
    assert executor == {"name": "GitHub Actions", "type": "github", "url": "https://github.example/lab/labcheck",
                        "buildOrder": 42, "buildName": "nightly canary #42",
                        "buildUrl": "https://github.example/lab/labcheck/actions/runs/987",
                        "reportName": "labcheck triage"}


AGREEMENT = """\
import pytest
from labcheck.errors import ProbeRefused

def probe():
    assert 1 == 2, "the probe's own sanity check"

@pytest.fixture
def asserting():
    assert False, "fixture saw the platform unhealthy"

@pytest.fixture
def refused():
    raise ProbeRefused("connection refused", target="postgresql://127.0.0.1:1/x")

@pytest.fixture
def asserts_at_teardown():
    yield
    assert False, "teardown surprised"

@pytest.mark.sev3
@pytest.mark.metrics
def check_fixture_asserts(asserting):
    pass

@pytest.mark.sev3
@pytest.mark.metrics
def check_probe_asserts(expect):
    probe()

@pytest.mark.sev1
@pytest.mark.database
def check_probe_error(refused):
    pass

@pytest.mark.sev4
@pytest.mark.docs
def check_expect_fails(expect):
    expect(False, target="GET /docs", observed="HTTP 404", threshold="HTTP 200")

@pytest.mark.sev4
@pytest.mark.docs
def check_expect_fails_then_teardown_asserts(expect, asserts_at_teardown):
    expect(False, target="GET /redoc", observed="HTTP 404", threshold="HTTP 200")

@pytest.mark.sev4
@pytest.mark.docs
def check_passes(expect):
    expect(True, target="GET /openapi.json", observed="HTTP 200", threshold="HTTP 200")
"""


def test_allure_status_follows_the_triage_outcome(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only expect fails a check: a bare assert anywhere else is UNKNOWN in triage.json and broken in Allure."""
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITLAB_CI", raising=False)
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_agreement.py").write_text(AGREEMENT)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--no-sandbox", f"--scenarios-dir={SCENARIOS}",
        f"--reports-dir={pytester.path / 'reports'}", "checks")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    triage = json.loads((pytester.path / "reports" / "triage.json").read_text())
    outcomes = {c["nodeid"].split("::")[1]: c["outcome"] for c in triage["checks"]}
    assert outcomes == {
        "check_fixture_asserts": "unknown", "check_probe_asserts": "unknown", "check_probe_error": "unknown",
        "check_expect_fails": "failed", "check_expect_fails_then_teardown_asserts": "failed",
        "check_passes": "passed"}
    allure = {"unknown": "broken", "failed": "failed", "passed": "passed"}
    docs = results(pytester.path / "reports" / "allure-results")
    assert {name: doc["status"] for name, doc in docs.items()} == {n: allure[o] for n, o in outcomes.items()}
    assert "fixture saw the platform unhealthy" in docs["check_fixture_asserts"]["statusDetails"]["message"]

    # The terminal summary and the pushed metrics read the same triage results.
    summary = result.stdout.str().partition("labcheck triage")[2]
    listed = re.findall(r"^  (FAILED|UNKNOWN) SEV-\d checks/test_agreement.py::(\w+)", summary, re.MULTILINE)
    assert {name: outcome.lower() for outcome, name in listed} == {
        n: o for n, o in outcomes.items() if o != "passed"}
    assert "1 passed, 2 failed, 3 unknown" in summary
    # The failure stands with its own message, not the teardown's surprise.
    failed = {c["nodeid"].split("::")[1]: c for c in triage["checks"]}["check_expect_fails_then_teardown_asserts"]
    assert "teardown surprised" not in failed["message"]
    from labcheck import push

    registry = push.build_registry(triage)
    for check in triage["checks"]:
        labels = push._labels(check)
        assert registry.get_sample_value("labcheck_check_unknown", labels) == (check["outcome"] == "unknown")
        success = registry.get_sample_value("labcheck_check_success", labels)
        assert success == {"unknown": None, "failed": 0, "passed": 1}[check["outcome"]], check["nodeid"]


def test_each_run_starts_with_fresh_default_results(pytester: pytest.Pytester,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITLAB_CI", raising=False)
    stale = pytester.path / "reports" / "allure-results" / "stale-result.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_one.py").write_text(CHECKS.split("@pytest.mark.sev2\n@pytest.mark.storage")[0]
                                                               .split("@pytest.mark.sev2\n@pytest.mark.api_gateway")[0])
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--no-sandbox", f"--scenarios-dir={SCENARIOS}",
        f"--reports-dir={pytester.path / 'reports'}", "checks")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert not stale.exists()
    assert set(results(stale.parent)) == {"check_pool"}
    assert (stale.parent / "categories.json").is_file()
    assert not (stale.parent / "executor.json").exists(), "no CI variables, no executor.json"


def test_categories_escape_their_regex_and_name_the_scenario() -> None:
    for cat, sc in zip(allure_results.categories(CAT), sorted(CAT.scenarios.values(), key=lambda s: s.id),
                       strict=False):
        assert sc.id in cat["name"] and sc.title in cat["name"]
        message = f"AssertionError: x: observed 1; threshold 0; scenario {sc.id} ({sc.title})\ndetail"
        assert re.search(cat["messageRegex"], message)
        assert not re.search(cat["messageRegex"], message.replace(sc.id, sc.id + "-other"))
    assert allure_results.categories(CAT)[-1] == {"name": allure_results.UNKNOWN_CATEGORY,
                                                   "matchedStatuses": ["broken"]}


def test_executor_from_gitlab_and_nothing_outside_ci() -> None:
    gitlab = {"GITLAB_CI": "true", "CI_PROJECT_URL": "https://gitlab.example/lab/labcheck", "CI_PIPELINE_IID": "17",
              "CI_PROJECT_PATH": "lab/labcheck", "CI_JOB_NAME": "canary",
              "CI_PIPELINE_URL": "https://gitlab.example/lab/labcheck/-/pipelines/99",
              "CI_JOB_URL": "https://gitlab.example/lab/labcheck/-/jobs/5"}
    assert allure_results.executor(gitlab) == {
        "name": "GitLab CI", "type": "gitlab", "url": "https://gitlab.example/lab/labcheck", "buildOrder": 17,
        "buildName": "lab/labcheck pipeline #17 job canary",
        "buildUrl": "https://gitlab.example/lab/labcheck/-/pipelines/99",
        "reportUrl": "https://gitlab.example/lab/labcheck/-/jobs/5", "reportName": "labcheck triage"}
    assert allure_results.executor({}) is None


def test_properties_are_escaped_and_playbook_links_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    text = allure_results.properties_text({"a key": "C:\\dir\nnext"})
    assert text == "a\\ key=C:\\\\dir\\nnext\n"
    monkeypatch.delenv("LABCHECK_PLAYBOOK_URL", raising=False)
    assert allure_results.playbook_url("PLAYBOOK.md#x", Path("/nonexistent/scenarios")) == "PLAYBOOK.md#x"
    monkeypatch.setenv("LABCHECK_PLAYBOOK_URL", "https://git.example/ops/raw/main/")
    assert allure_results.playbook_url("PLAYBOOK.md#x") == "https://git.example/ops/raw/main/PLAYBOOK.md#x"
