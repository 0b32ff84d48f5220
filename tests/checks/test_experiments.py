"""The experiment execution checks against the live sandbox and a stand-in API."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from labcheck.components.experiments import experiments_shape_problems
from standin import StandIn, unsigned_jwt

CHECKS = "checks/experiments.py"
ALL_CHECKS = ("check_experiments_list_answers", "check_no_experiment_stuck")
# The workers' availability is one check per deployment, in checks/kubernetes.py.
WORKERS = "check_deployment_has_available_replicas[experiment-workers]"


@pytest.mark.parametrize(("doc", "problem"), [
    ({"experiments": []}, None),
    ({"experiments": [{"id": 1, "name": "a", "state": "running", "started_at": "2026-01-01T00:00:00Z"}]}, None),
    ([], "not an object with an 'experiments' list"),
    ({"items": []}, "not an object with an 'experiments' list"),
    ({"experiments": [{"id": 1, "name": "a"}]}, "experiments[0] lacks state, started_at"),
    ({"experiments": ["x"]}, "experiments[0] is not an object"),
])
def test_experiment_list_shape(doc: Any, problem: str | None) -> None:
    problems = experiments_shape_problems(doc)
    assert (problems == []) if problem is None else any(problem in p for p in problems)


def stand_in_api(body: Any) -> StandIn:
    """Serves a fixed /experiments body with HTTP 200."""
    return StandIn(lambda path, query: (200, body))


@pytest.fixture
def bad_shape_api() -> Iterator[StandIn]:
    api = stand_in_api({"items": [{"id": 1}]})
    yield api
    api.close()


@pytest.fixture
def slow_but_alive_api() -> Iterator[StandIn]:
    now = datetime.now(UTC)
    api = stand_in_api({"experiments": [
        # Started a day ago, still reporting progress: a long run, not a stuck one.
        {"id": 1, "name": "long", "state": "running", "started_at": (now - timedelta(days=1)).isoformat(),
         "updated_at": now.isoformat()},
        {"id": 2, "name": "done", "state": "succeeded", "started_at": (now - timedelta(days=3)).isoformat(),
         "updated_at": (now - timedelta(days=2)).isoformat()},
    ]})
    yield api
    api.close()


# --- against the live sandbox ----------------------------------------------------------------


def test_healthy_sandbox_passes_every_experiments_check(healed: Any) -> None:
    healed.wait_for(lambda r: all(r.outcome(c) == "passed" for c in ALL_CHECKS), CHECKS,
                    deadline_s=60, what="every experiments check passing")


def test_stuck_experiment_fails(healed: Any) -> None:
    healed.fault("stuck-experiment")  # a `running` experiment without progress for 6 hours
    run = healed.wait_for(lambda r: r.outcome("check_no_experiment_stuck") == "failed", CHECKS,
                          deadline_s=30, what="stuck experiment check failing")
    check = run.check("check_no_experiment_stuck")
    assert check["severity"] == "SEV-3" and check["scenario"] is None
    assert "1 of " in check["message"] and "6.0 h since last update" in check["message"]
    assert run.outcome("check_experiments_list_answers") == "passed"
    assert run.triage["affected_components"] == ["experiments"]
    assert any(s["scenario"] == "generic" for s in run.triage["next_steps"])


def test_workers_unavailable_fails(healed: Any) -> None:
    healed.fault("workers-unavailable")
    run = healed.wait_for(lambda r: r.outcome(WORKERS) == "failed", CHECKS, "checks/kubernetes.py",
                          deadline_s=30, what="workers deployment check failing")
    check = run.check(WORKERS)
    assert check["severity"] == "SEV-2" and check["component"] == "experiments"
    assert "0 of " in check["message"] and "experiment-workers" in check["message"]
    assert run.triage["severity"] == "SEV-2"


def test_unexpected_shape_fails(healed: Any, bad_shape_api: StandIn) -> None:
    run = healed.run_checks(CHECKS, "-k", "list_answers", "--api-url", bad_shape_api.url,
                            "--set", f"test_token={unsigned_jwt()}")
    check = run.check("check_experiments_list_answers")
    assert check["outcome"] == "failed" and "'experiments' list" in check["message"]


def test_long_running_experiment_with_progress_is_not_stuck(healed: Any, slow_but_alive_api: StandIn) -> None:
    run = healed.run_checks(CHECKS, "-k", "stuck", "--api-url", slow_but_alive_api.url,
                            "--set", f"test_token={unsigned_jwt()}")
    assert run.outcome("check_no_experiment_stuck") == "passed"


def test_experiments_are_unknown_when_the_token_is_refused(healed: Any) -> None:
    healed.fault("auth-secret-rotated")
    run = healed.wait_for(lambda r: r.outcome("check_experiments_list_answers") == "unknown", CHECKS,
                          deadline_s=30, what="experiments list unknown")
    assert "see the auth checks" in run.check("check_experiments_list_answers")["message"]
    assert run.outcome("check_no_experiment_stuck") == "unknown"
