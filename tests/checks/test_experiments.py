"""The experiment execution checks against the live sandbox and a stand-in API."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from labcheck.components._bodies import read_experiments, running
from labcheck.signals import SignalMap
from standin import StandIn, unsigned_jwt

CHECKS = "checks/experiments.py"
ALL_CHECKS = ("check_experiments_list_answers", "check_no_experiment_stuck")
# The workers' availability is one check per deployment, in checks/kubernetes.py.
WORKERS = "check_deployment_has_available_replicas[experiment-workers]"


@pytest.mark.parametrize(("doc", "problem"), [
    ({"experiments": []}, None),
    ({"experiments": [{"id": 1, "name": "a", "state": "running", "started_at": "2026-01-01T00:00:00Z"}]}, None),
    ({"experiments": [{"id": 1, "name": "a", "state": "queued"}]}, None),  # not started: no time yet
    ([], "no 'experiments' in a list of 0; set signals.experiments_key"),
    ({"items": []}, "no 'experiments' in an object with keys items"),
    ({"experiments": {"a": 1}}, "experiments is an object with keys a"),
    ({"experiments": [{"id": 1, "name": "a"}]}, "experiments[0] lacks state (has id, name)"),
    ({"experiments": ["x"]}, "experiments[0] is not an object"),
])
def test_experiment_list_shape(doc: Any, problem: str | None) -> None:
    _, problems = read_experiments(doc, SignalMap())
    assert (problems == []) if problem is None else any(problem in p for p in problems), problems


def test_other_list_shapes_through_the_map() -> None:
    items = {"items": [{"id": 7, "name": "a", "status": "RUNNING", "created_at": 1_700_000_000}]}
    m = replace(SignalMap(), experiments_key="items", experiments_state="status", experiments_times="created_at")
    found, problems = read_experiments(items, m)
    assert problems == [] and found[0].progress == ("created_at", 1_700_000_000.0)
    assert [e.id for e in running(found, m)] == [7]  # running values compare case-insensitively
    bare = [{"uid": "x", "title": "b", "phase": "Running", "updated_at": None, "started_at": "2026-01-01T00:00:00Z"}]
    m = replace(SignalMap(), experiments_key="", experiments_id="uid", experiments_name="title",
                experiments_state="phase")
    found, problems = read_experiments(bare, m)
    assert problems == [] and found[0].progress is not None and found[0].progress[0] == "started_at"


def stand_in_api(body: Any) -> StandIn:
    """Serves a fixed /experiments body with HTTP 200."""
    return StandIn(lambda path, query: (200, body))


@pytest.fixture
def bad_shape_api() -> Iterator[StandIn]:
    api = stand_in_api({"items": [{"id": 1}]})
    yield api
    api.close()


@pytest.fixture
def items_api() -> Iterator[StandIn]:
    day_ago = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    api = stand_in_api({"items": [{"id": 1, "name": "a", "status": "running", "created_at": day_ago},
                                  {"id": 2, "name": "b", "status": "done", "created_at": day_ago}]})
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
    assert "1 of " in check["message"] and "6.0 h since updated_at" in check["message"]
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


def test_unexpected_shape_is_unknown_not_an_incident(healed: Any, bad_shape_api: StandIn) -> None:
    run = healed.run_checks(CHECKS, "--api-url", bad_shape_api.url, "--set", f"test_token={unsigned_jwt()}")
    for name in ALL_CHECKS:
        check = run.check(name)
        assert check["outcome"] == "unknown", check
        assert "could not read: no 'experiments' in an object with keys items" in check["message"], check
    assert run.triage["severity"] is None


def test_an_items_shape_passes_with_the_map(healed: Any, items_api: StandIn) -> None:
    token = ["--set", f"test_token={unsigned_jwt()}"]
    plain = healed.run_checks(CHECKS, "--api-url", items_api.url, *token)
    assert {plain.outcome(c) for c in ALL_CHECKS} == {"unknown"}
    assert "could not read" in plain.check("check_experiments_list_answers")["message"]
    sets = ["experiments_key=items", "experiments_state=status", "experiments_times=created_at"]
    mapped = healed.run_checks(CHECKS, "--api-url", items_api.url, *token,
                               *[a for s in sets for a in ("--set", f"signals.{s}")])
    assert mapped.outcome("check_experiments_list_answers") == "passed"
    stuck = mapped.check("check_no_experiment_stuck")  # created a day ago, still running: stuck
    assert stuck["outcome"] == "failed", stuck
    assert "1 of 1 running" in stuck["message"] and "24.0 h since created_at" in stuck["message"]


@pytest.mark.parametrize("status", [500, 503, 404])
def test_the_endpoint_failing_fails_the_list_check(healed: Any, status: int) -> None:
    api = StandIn(lambda path, query: (status, {"error": "boom"}))
    try:
        run = healed.run_checks(CHECKS, "--api-url", api.url, "--set", f"test_token={unsigned_jwt()}")
    finally:
        api.close()
    check = run.check("check_experiments_list_answers")
    assert check["outcome"] == "failed" and f"observed HTTP {status}" in check["message"], check
    assert run.outcome("check_no_experiment_stuck") == "unknown"


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


def test_no_answer_fails_the_list_check(healed: Any) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    run = healed.run_checks(CHECKS, "--api-url", url, "--set", f"test_token={unsigned_jwt()}")
    check = run.check("check_experiments_list_answers")
    assert check["outcome"] == "failed" and "connection refused" in check["message"], check
    assert "threshold HTTP 200 with {experiments: [{id, name, state, updated_at|started_at}, ...]}" in check["message"]
    assert run.outcome("check_no_experiment_stuck") == "unknown"
