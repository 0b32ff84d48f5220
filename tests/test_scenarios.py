"""The scenario catalogue: the shipped files, validation errors that name file and key, drop-in scenarios."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from labcheck.errors import CatalogueError
from labcheck.scenarios import load_catalogue

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "scenarios"
# Conditions the playbook has no scenario for: their own entries, steps from the playbook's phases.
CONDITION_IDS = {"database-unreachable", "api-not-answering", "prometheus-down", "blocking-lock"}
PLAYBOOK_IDS = {"high-error-rate", "high-latency", "db-connection-exhaustion", "pod-crash-loop",
                "storage-failure", "auth-failure"}


def run(pytester: pytest.Pytester, scenarios: Path, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--no-sandbox", f"--scenarios-dir={scenarios}",
        f"--reports-dir={pytester.path / 'reports'}", *args,
    )


def copy_catalogue(tmp_path: Path) -> Path:
    target = tmp_path / "scenarios"
    shutil.copytree(SCENARIOS, target)
    return target


def test_the_shipped_catalogue_holds_every_playbook_scenario_completely() -> None:
    cat = load_catalogue(SCENARIOS)
    assert set(cat.scenarios) == PLAYBOOK_IDS | CONDITION_IDS
    for sc in cat.scenarios.values():
        if sc.id in CONDITION_IDS:
            continue
        assert sc.title and sc.symptoms and sc.mitigation, sc.id
        assert sc.investigation and all(s.command for s in sc.investigation), sc.id
        assert sc.playbook and sc.playbook.startswith("PLAYBOOK.md#scenario-"), sc.id
        assert sc.escalation, f"{sc.id}: no escalation"
    # Conditions are data: the playbook's "if recent deployment -> rollback", "if OOMKilled -> ...".
    assert any(s.when == "recent_deployment" for s in cat.scenarios["high-error-rate"].mitigation)
    oom = [s for s in cat.scenarios["pod-crash-loop"].mitigation if s.when == "oom_killed"]
    assert oom and "memory" in oom[0].text.lower()
    assert [s.text for s in cat.generic][:2] == ["Rollback if recent deployment", "Scale up if capacity issue"]


def test_condition_entries_take_their_steps_from_the_playbook_not_from_other_scenarios() -> None:
    from labcheck.verdict.conditions import CONDITIONS

    cat = load_catalogue(SCENARIOS)
    assert set(CONDITIONS.values()) <= set(cat.scenarios)
    others = {s.text for sid in PLAYBOOK_IDS for s in cat.scenarios[sid].mitigation}
    for sid in CONDITION_IDS:
        sc = cat.scenarios[sid]
        assert sc.title and sc.symptoms and sc.mitigation and sc.investigation, sid
        assert sc.playbook and sc.playbook.startswith("PLAYBOOK.md#"), sid
        assert not {s.text for s in sc.mitigation} & others, f"{sid} borrows another scenario's steps"
    unreachable = [s.text for s in cat.scenarios["database-unreachable"].mitigation]
    assert not any("idle" in t.lower() for t in unreachable)
    assert any("Failover database" in t for t in unreachable)

    # Severity data: classification, impact matrix, escalation matrix, dependency graph.
    sev = cat.severity
    assert [sev.levels[n].response_time for n in ("SEV-1", "SEV-2", "SEV-3", "SEV-4")] == [
        "15 minutes", "30 minutes", "2 hours", "24 hours"]
    assert {n: lvl.allure for n, lvl in sev.levels.items()} == {
        "SEV-1": "blocker", "SEV-2": "critical", "SEV-3": "normal", "SEV-4": "minor"}
    assert sev.impact["api_gateway"].severity == "SEV-1" and sev.impact["storage"].severity == "SEV-2/3"
    assert sev.rule("SEV-1 not mitigated in 15 min").to == "Engineering Manager"
    assert {"database", "auth", "storage", "kubernetes"} <= set(sev.depends_on["api_gateway"])
    assert {"database", "storage", "kubernetes"} <= set(sev.depends_on["experiments"])


def test_placeholders_are_filled_from_the_configuration_and_secrets_never_are() -> None:
    from labcheck import config as cfg
    from labcheck.verdict import _fill

    settings = cfg.load(cli={"namespace": ("prod-ns", "test"), "s3_bucket": ("prod-bucket", "test"),
                             "database_url": ("postgresql://u:pw@db/x", "test")}, environ={}, use_sandbox=False)
    cat = load_catalogue(SCENARIOS)
    commands = [_fill(s.command, settings) or "" for sc in cat.scenarios.values() for s in sc.investigation]
    assert any("-n prod-ns" in c for c in commands)
    assert any("s3://prod-bucket/" in c for c in commands)
    assert any('psql "$DATABASE_URL"' in c for c in commands)
    assert not any("pw@" in c or "{namespace}" in c or "{s3_bucket}" in c for c in commands)
    assert any("{.data.JWT_SECRET}" in c for c in commands), "literal braces survive"


@pytest.mark.parametrize(("file", "text", "expected"), [
    ("high-latency.toml", 'id = "high-latency"\ntitle = 3\n', "high-latency.toml: key 'title' must be a string"),
    ("high-latency.toml", 'id = "high-latency"\ntitle = "x"\nsymptoms = ["a"]\n',
     "high-latency.toml: key 'mitigation' is missing"),
    ("high-latency.toml", 'id = "high-latency"\ntitle = "x"\nsymptoms = ["a"]\nmitigaton = ["typo"]\n',
     "high-latency.toml: unknown key 'mitigaton'"),
    ("high-latency.toml", 'id = "slow"\n', "high-latency.toml: key 'id' is 'slow' but the file is named"),
    ("high-latency.toml", 'id = "high-latency"\ntitle = "x"\nsymptoms = ["a"]\n'
                          '[[mitigation]]\nstep = "a"\ncommand = "kubectl -n {namespce}"\n',
     "key 'mitigation[0].command': placeholder {namespce} is not a configuration key"),
    ("high-latency.toml", 'id = "high-latency"\ntitle = "x"\nsymptoms = ["a"]\n'
                          '[[mitigation]]\nstep = "a"\ncommand = "psql {database_url}"\n',
     "placeholder {database_url} is a secret"),
    ("high-latency.toml", 'id = "high-latency"\ntitle = "x"\nsymptoms = ["a"]\nmitigation = ["a"]\n'
                          'escalation = ["Call mum"]\n',
     "key 'escalation[0]': 'Call mum' is not a condition of the escalation matrix"),
    ("high-latency.toml", 'id = "high-latency"\ntitle = "x"\nsymptoms = ["a"]\nmitigation = ["a"]\n'
                          'causes = ["nope"]\n', "key 'causes[0]': 'nope' is not a scenario"),
    ("high-latency.toml", 'id = "high-latency"\ntitle = "x"\nsymptoms = ["a"]\n'
                          '[[mitigation]]\nstep = "a"\nwhen = "If OOM"\n', "key 'mitigation[0].when' must be a condition"),
    ("high-latency.toml", "id = \n", "high-latency.toml: not valid TOML"),
    ("_severity.toml", None, "_severity.toml: key 'depends_on.api_gateway': 'mainframe' is not a component"),
    ("_severity.toml", "", "_severity.toml: key 'levels' is missing"),
])
def test_a_bad_file_is_one_line_naming_the_file_and_the_key(tmp_path: Path, file: str, text: str | None,
                                                           expected: str) -> None:
    directory = copy_catalogue(tmp_path)
    path = directory / file
    if text is None:
        path.write_text(path.read_text().replace('api_gateway = ["database"', 'api_gateway = ["mainframe", "database"'))
    else:
        path.write_text(text)
    with pytest.raises(CatalogueError) as err:
        load_catalogue(directory)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_a_dependency_cycle_is_refused(tmp_path: Path) -> None:
    directory = copy_catalogue(tmp_path)
    path = directory / "_severity.toml"
    path.write_text(path.read_text().replace("kubernetes = []", 'kubernetes = ["database"]'))
    with pytest.raises(CatalogueError, match=r"key 'depends_on': cycle .*kubernetes -> database"):
        load_catalogue(directory)


def test_a_bad_catalogue_is_a_usage_error_at_run_start(pytester: pytest.Pytester, tmp_path: Path) -> None:
    directory = copy_catalogue(tmp_path)
    (directory / "storage-failure.toml").write_text('id = "storage-failure"\ntitle = ["not", "a", "string"]\n')
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_ok.py").write_text(
        "import pytest\n@pytest.mark.sev3\n@pytest.mark.metrics\ndef check_ok():\n    pass\n")
    result = run(pytester, directory, "checks")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if "storage-failure.toml" in line]
    assert errors and "key 'title' must be a string" in errors[0], result.stderr.str()
    data = json.loads((pytester.path / "reports" / "triage.json").read_text())
    assert "storage-failure.toml" in data["error"] and data["checks"] == []


def test_an_unknown_scenario_marker_is_a_collection_error(pytester: pytest.Pytester) -> None:
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_typo.py").write_text(
        "import pytest\n@pytest.mark.sev2\n@pytest.mark.api_gateway\n@pytest.mark.scenario('high-eror-rate')\n"
        "def check_typo():\n    pass\n")
    result = run(pytester, SCENARIOS, "checks")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*check_typo*scenario('high-eror-rate') is not in the catalogue*"])


DROP_IN = """\
id = "gpu-quota-exhausted"
title = "GPU Quota Exhausted"
playbook = "https://wiki.example.invalid/ml-infra#gpu-quota"
symptoms = ["Experiments stay pending", "Quota errors in the scheduler"]
escalation = [{ condition = "GPU quota not raised in 1 hour", to = "ML Infra on-call", contact = "Slack #ml-infra" }]
causes = ["high-latency"]

[[investigation]]
step = "Check pending experiment pods"
command = "kubectl get pods -n {namespace} --field-selector=status.phase=Pending"

[[mitigation]]
step = "If quota is exhausted: request a quota increase"
when = "gpu_quota_exhausted"

[[mitigation]]
step = "Pause low-priority sweeps"
"""

DROP_IN_CHECKS = """\
import pytest

@pytest.mark.sev2
@pytest.mark.experiments
@pytest.mark.scenario("gpu-quota-exhausted")
def check_gpu_quota(expect):
    expect.fact("gpu_quota_exhausted", True)
    expect(False, target="GPU quota", observed="64 of 64 GPUs", threshold="< 90% of quota")

@pytest.mark.sev2
@pytest.mark.experiments
@pytest.mark.scenario("high-latency")
def check_experiment_latency(expect):
    expect(False, target="experiment start latency", observed="9 min", threshold="<= 2 min")
"""


def test_a_team_drops_a_scenario_file_in_and_the_verdict_uses_it(pytester: pytest.Pytester,
                                                                 tmp_path: Path) -> None:
    directory = copy_catalogue(tmp_path)
    (directory / "gpu-quota-exhausted.toml").write_text(DROP_IN)
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_gpu.py").write_text(DROP_IN_CHECKS)
    result = run(pytester, directory, "checks", "--set", "namespace=ml-prod")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    data = json.loads((pytester.path / "reports" / "triage.json").read_text())
    assert data["severity"] == "SEV-2"
    assert data["probable_cause"]["scenario"] == "gpu-quota-exhausted"
    assert [s["scenario"] for s in data["symptoms"]] == ["high-latency"]
    doc = next(s for s in data["scenarios"] if s["id"] == "gpu-quota-exhausted")
    assert doc["title"] == "GPU Quota Exhausted" and doc["role"] == "cause"
    assert doc["investigation"][0]["command"] == "kubectl get pods -n ml-prod --field-selector=status.phase=Pending"
    assert data["next_steps"][0]["step"] == "If quota is exhausted: request a quota increase"
    assert data["next_steps"][0]["condition"] == "true"
    assert "GPU quota not raised in 1 hour: escalate to ML Infra on-call (Slack #ml-infra)" in data["escalation"]
    categories = json.loads((pytester.path / "reports" / "allure-results" / "categories.json").read_text())
    assert any("gpu-quota-exhausted" in c["name"] for c in categories)
    incident = (pytester.path / "reports" / "incident.md").read_text()
    assert "probable cause gpu-quota-exhausted (experiments) (GPU Quota Exhausted)" in incident
