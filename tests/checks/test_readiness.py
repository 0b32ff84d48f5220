"""Readiness read through the signal map: other names and shapes pass, absence is UNKNOWN, only the
body saying "failed" or the endpoint itself failing is FAILED (issue 12)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from labcheck.components._bodies import read_readiness
from labcheck.errors import NoData, ProbeBadResponse, ProbeTimeout
from labcheck.probes import http
from labcheck.signals import SignalMap
from standin import StandIn

CHECKS = "checks/api_gateway.py"
URL = "http://api/health/ready"
PLAYBOOK = {"status": "ok", "components": {"db": {"status": "ok"}, "auth": {"status": "ok"},
                                            "storage": {"status": "ok"}}}


def answer(status: int, body: Any) -> http.Attempt:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    kind = "text/html" if isinstance(body, bytes) else "application/json"
    return http.Attempt(URL, http.HttpResult("GET", URL, status, 0.01, {"content-type": kind}, raw), None)


def test_the_playbook_shape_passes() -> None:
    ready = read_readiness(answer(200, PLAYBOOK), SignalMap())
    assert all(ready.judge(c).ok for c in ("db", "auth", "storage"))
    assert ready.judge("db").target == f"GET {URL} components.db"


def test_other_names_and_shapes_through_the_map() -> None:
    # Spring Boot style: UP/DOWN under "components"; MicroProfile style: a list of named checks.
    spring = {"status": "DOWN", "components": {"postgres": {"status": "UP"}, "jwt": "UP",
                                               "s3": {"status": "DOWN", "details": {"error": "x"}}}}
    m = replace(SignalMap(), readiness_db="postgres", readiness_auth="jwt", readiness_storage="s3")
    ready = read_readiness(answer(503, spring), m)
    assert ready.judge("db").ok and ready.judge("auth").ok
    storage = ready.judge("storage")
    assert not storage.ok and "'DOWN'" in storage.observed
    micro = {"status": "UP", "checks": [{"name": "database", "state": "UP"}]}
    m = replace(SignalMap(), readiness_components="checks", readiness_status="state", readiness_db="database")
    assert read_readiness(answer(200, micro), m).judge("db").ok
    nested = {"data": {"health": {"db": True}}}
    assert read_readiness(answer(200, nested), replace(SignalMap(), readiness_components="data.health")).judge("db").ok
    flat = {"db": "ok", "auth": "ok"}  # the body itself is the components object
    assert read_readiness(answer(200, flat), replace(SignalMap(), readiness_components="")).judge("auth").ok


def test_an_absent_component_is_unknown_naming_the_ones_present() -> None:
    ready = read_readiness(answer(200, {"components": {"database": "ok", "jwt": "ok"}}), SignalMap())
    with pytest.raises(NoData, match=r"no component 'db' at components \(components present: database, jwt\)"):
        ready.judge("db")


@pytest.mark.parametrize(("status", "body", "reason"), [
    (200, {"status": "ok"}, "no 'components' in an object with keys status"),
    (200, {"components": "ok"}, "components is a str"),
    (200, b"<html>login</html>", "not JSON (text/html)"),
    (404, {"detail": "Not Found"}, "HTTP 404 (no such endpoint; set signals.readiness_path)"),
    (401, {"detail": "auth"}, "HTTP 401"),
    (200, {"components": {"db": {"state": "ok"}}}, "no field 'status'"),
])
def test_a_body_without_the_expected_shape_is_unknown(status: int, body: Any, reason: str) -> None:
    ready = read_readiness(answer(status, body), SignalMap())
    with pytest.raises(ProbeBadResponse, match="could not read") as exc:
        ready.judge("db")
    assert reason in exc.value.reason


def test_a_status_neither_ok_nor_failed_is_unknown_naming_it() -> None:
    ready = read_readiness(answer(200, {"components": {"db": {"status": "warming"}}}), SignalMap())
    with pytest.raises(NoData, match="reports status 'warming', neither a ready value"):
        ready.judge("db")


@pytest.mark.parametrize(("attempt", "text"), [
    (http.Attempt(URL, None, ProbeTimeout("timed out after 5 s waiting for a response", target=URL)),
     "no answer: timed out"),
    (answer(503, b"<h1>no healthy upstream</h1>"), "HTTP 503 without readable components"),
    (answer(500, {"error": "boom"}), "HTTP 500 without readable components"),
])
def test_the_endpoint_failing_as_a_whole_is_unknown_for_every_component(attempt: http.Attempt, text: str) -> None:
    # It says nothing of the database, auth or storage: a finding here would be counted against them
    # (a hung API escalated as an auth failure). /health and the ratio checks judge the endpoint.
    ready = read_readiness(attempt, SignalMap())
    for component in ("db", "auth", "storage"):
        with pytest.raises(NoData, match="failed as a whole") as err:
            ready.judge(component)
        assert text in err.value.reason


def test_a_503_naming_the_failing_component_fails_only_that_one() -> None:
    body = {"status": "degraded", "components": {"db": {"status": "error", "detail": "pool timeout"},
                                                 "auth": {"status": "ok"}, "storage": {"status": "ok"}}}
    ready = read_readiness(answer(503, body), SignalMap())
    db = ready.judge("db")
    assert not db.ok
    assert db.observed == "status 'error' (pool timeout) in HTTP 503"
    assert ready.judge("auth").ok and ready.judge("storage").ok


# --- through the checks, against the sandbox and a stand-in ----------------------------------------


@pytest.fixture
def other_api() -> Iterator[StandIn]:
    body = {"status": "DOWN", "checks": {"postgres": {"state": "UP"}, "jwt": {"state": "UP"},
                                         "objectstore": {"state": "DOWN", "message": "bucket gone"}}}
    api = StandIn(lambda path, query: (503, body) if path == "/ready" else (404, {"detail": "Not Found"}))
    yield api
    api.close()


def test_other_component_names_and_keys_pass_with_the_map(healed: Any, other_api: StandIn) -> None:
    sets = ["readiness_path=/ready", "readiness_components=checks", "readiness_status=state",
            "readiness_db=postgres", "readiness_auth=jwt", "readiness_storage=objectstore"]
    args = [a for s in sets for a in ("--set", f"signals.{s}")]
    run = healed.run_checks(CHECKS, "-k", "readiness", "--api-url", other_api.url, *args)
    assert run.outcome("check_readiness_reports_component_ok[db]") == "passed"
    assert run.outcome("check_readiness_reports_component_ok[auth]") == "passed"
    storage = run.check("check_readiness_reports_component_ok[storage]")
    assert storage["outcome"] == "failed", storage
    assert f"GET {other_api.url}/ready checks.objectstore" in storage["message"]
    assert "state 'DOWN' (bucket gone) in HTTP 503" in storage["message"]
    assert storage["scenario"] == "storage-failure"
    # Without the map the same body is UNKNOWN, never a SEV-1: the path is not there.
    plain = healed.run_checks(CHECKS, "-k", "readiness", "--api-url", other_api.url)
    assert {plain.outcome(f"check_readiness_reports_component_ok[{c}]") for c in ("db", "auth", "storage")} \
        == {"unknown"}
    assert plain.triage["severity"] is None


def test_an_absent_component_in_the_sandbox_is_unknown(healed: Any) -> None:
    run = healed.run_checks(CHECKS, "-k", "readiness", "--set", "signals.readiness_db=database")
    db = run.check("check_readiness_reports_component_ok[db]")
    assert db["outcome"] == "unknown", db
    assert "no component 'database'" in db["message"] and "components present: auth, db, storage" in db["message"]
    assert run.outcome("check_readiness_reports_component_ok[auth]") == "passed"
    assert run.triage["severity"] is None
