"""The auth checks against the live sandbox, a stand-in open API and a stand-in Prometheus."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest

from standin import Answer, StandIn, unsigned_jwt

CHECKS = "checks/auth.py"
ALL_CHECKS = ("check_jwt_secret_present[JWT_SECRET]", "check_test_token_accepted",
              "check_request_without_token_rejected", "check_auth_error_ratio", "check_clock_skew")

@pytest.fixture
def stand_in() -> Iterator[Callable[[Answer], StandIn]]:
    servers: list[StandIn] = []

    def start(answer: Answer) -> StandIn:
        servers.append(StandIn(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _vector(value: float | None) -> dict[str, Any]:
    result = [] if value is None else [{"metric": {}, "value": [0, str(value)]}]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def _playbook_series(expr: str) -> dict[str, Any] | None:
    """The answer to the signal map's detection query: the playbook's counter, exact status codes."""
    if not expr.startswith("topk by (__name__"):
        return None
    result = [{"metric": {"__name__": "http_requests_total", "path": "/experiments", "status": code},
               "value": [0, "1"]} for code in ("200", "401")]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


# --- without the sandbox ---------------------------------------------------------------------


@pytest.mark.parametrize(("token", "reason"), [
    ("opaque-api-key-1234", "test_token is not a JWT"),
    ("a.b", "test_token is not a JWT"),
    ("eyJhbGciOiJIUzI1NiJ9.!!!notbase64.sig", "test_token is not a JWT"),
    (unsigned_jwt(exp="tomorrow"), "exp is not a NumericDate"),
    (unsigned_jwt(exp=1_700_000_000), "labcheck's test token expired at 2023-11-14T22:13:20Z; renew it"),
    (unsigned_jwt(nbf=4_000_000_000), "is not valid before 2096-10-02T07:06:40Z"),
])
def test_an_unusable_token_is_unknown_without_quoting_it(token: str, reason: str) -> None:
    from labcheck.components.auth import usable_token
    from labcheck.errors import Unknown

    with pytest.raises(Unknown) as caught:
        usable_token(token)
    assert reason in str(caught.value)
    assert token not in str(caught.value)


def test_a_token_without_exp_is_usable() -> None:
    from labcheck.components.auth import token_times, usable_token

    token = unsigned_jwt(exp=None)
    assert token_times(token).exp is None
    assert usable_token(token) == token


# --- against the live sandbox ----------------------------------------------------------------


def test_healthy_sandbox_passes_every_auth_check(healed: Any) -> None:
    run = healed.wait_for(lambda r: all(r.outcome(c) == "passed" for c in ALL_CHECKS), CHECKS,
                          deadline_s=60, what="every auth check passing")
    assert run.triage["facts"]["clock_skew"] is False
    assert run.triage["facts"]["secret_rotation"] is False


def test_rotated_secret_rejects_the_token_and_points_to_rotation(healed: Any) -> None:
    healed.fault("auth-secret-rotated")
    run = healed.wait_for(lambda r: r.outcome("check_test_token_accepted") == "failed", CHECKS,
                          deadline_s=30, what="test token check failing")
    token = run.check("check_test_token_accepted")
    assert token["severity"] == "SEV-1"
    assert "HTTP 401" in token["message"] and "secret rotation" in token["message"]
    assert run.outcome("check_jwt_secret_present[JWT_SECRET]") == "passed"  # rotated, not lost
    assert run.triage["severity"] == "SEV-1"
    assert run.triage["probable_cause"]["scenario"] == "auth-failure"
    assert run.triage["facts"]["secret_rotation"] is True
    steps = {s["step"]: s for s in run.triage["next_steps"] if s["scenario"] == "auth-failure"}
    assert steps["If secret rotation issue: verify and fix secrets"]["condition"] == "true"
    # Neither secret's value reaches any report.
    from labcheck.sandbox import manager

    secrets = (manager.load_state() or {}).get("secrets", {})
    values = [secrets.get("jwt_secret"), secrets.get("rotated_jwt_secret")]
    assert all(values)
    reports = "".join(p.read_text(errors="replace") for p in run.reports.rglob("*") if p.is_file())
    assert not [v for v in values if v in reports]


def test_clock_skew_fails_and_names_ntp(healed: Any) -> None:
    healed.fault("clock-skew", seconds=120)
    run = healed.wait_for(lambda r: r.outcome("check_clock_skew") == "failed", CHECKS,
                          deadline_s=30, what="clock skew check failing")
    skew = run.check("check_clock_skew")
    assert skew["severity"] == "SEV-2" and skew["scenario"] == "auth-failure"
    assert "ahead of the local clock" in skew["message"]
    assert run.outcome("check_test_token_accepted") == "passed"
    assert run.triage["facts"]["clock_skew"] is True
    assert "auth-failure" in run.scenario_ids()
    steps = {s["step"]: s for s in run.triage["next_steps"]}
    assert steps["If clock skew: check NTP sync on pods"]["condition"] == "true"


def test_an_open_endpoint_is_a_sev1_failure(healed: Any, stand_in: Callable[[Answer], StandIn]) -> None:
    api = stand_in(lambda path, query: (200, {"experiments": []}))
    run = healed.run_checks(CHECKS, "--api-url", api.url, "--set", f"test_token={unsigned_jwt()}")
    check = run.check("check_request_without_token_rejected")
    assert check["outcome"] == "failed"
    assert "open to anyone" in check["message"]
    assert run.outcome("check_test_token_accepted") == "passed"
    assert run.triage["severity"] == "SEV-1"


def test_token_check_is_unknown_without_a_token(healed: Any) -> None:
    run = healed.run_checks(CHECKS, "-k", "token_accepted", "--api-url", healed.settings["api_url"])
    check = run.check("check_test_token_accepted")
    assert check["outcome"] == "unknown" and "test_token is not configured" in check["message"]


def test_auth_error_ratio_fails_and_compares_with_an_hour_before(
        healed: Any, stand_in: Callable[[Answer], StandIn]) -> None:
    def answer(path: str, query: str) -> tuple[int, Any]:
        expr = parse_qs(query).get("query", [""])[0]
        if (shape := _playbook_series(expr)) is not None:
            return 200, shape
        earlier = "offset 1h" in expr
        if "401|403" in expr:
            return 200, _vector(1.0 if earlier else 5.0)
        return 200, _vector(20.0)

    prom = stand_in(answer)
    run = healed.run_checks(CHECKS, "-k", "auth_error_ratio", "--prometheus-url", prom.url)
    check = run.check("check_auth_error_ratio")
    assert check["outcome"] == "failed"
    assert "observed 25.0% (5.0% 1h earlier)" in check["message"]
    assert "auth-failure" in run.scenario_ids()


def test_auth_error_ratio_says_when_there_is_nothing_to_compare(
        healed: Any, stand_in: Callable[[Answer], StandIn]) -> None:
    def answer(path: str, query: str) -> tuple[int, Any]:
        expr = parse_qs(query).get("query", [""])[0]
        if (shape := _playbook_series(expr)) is not None:
            return 200, shape
        if "offset 1h" in expr:
            return 200, _vector(None)
        return 200, _vector(0.0 if "401|403" in expr else 20.0)

    prom = stand_in(answer)
    run = healed.run_checks(CHECKS, "-k", "auth_error_ratio", "--prometheus-url", prom.url)
    check = run.check("check_auth_error_ratio")
    assert check["outcome"] == "passed"
    assert check["observed"][0]["observed"] == "0.0% (no data 1h earlier to compare with)"


def _signed(healed: Any, ttl_seconds: int) -> str:
    from labcheck.sandbox.api.auth import sign_token

    return str(sign_token(healed.state["secrets"]["jwt_secret"], ttl_seconds=ttl_seconds))


@pytest.mark.parametrize("kind", ["expired", "not a JWT"])
def test_an_unusable_test_token_is_unknown_not_an_auth_outage(healed: Any, kind: str) -> None:
    # Signed with the platform's own secret, so only its expiry is wrong: labcheck's problem.
    token = _signed(healed, -120) if kind == "expired" else "opaque-labcheck-key-5150"
    healed.quiet()
    run = healed.run_checks(CHECKS, "checks/experiments.py", "--set", f"test_token={token}")
    reason = "test token expired at" if kind == "expired" else "test_token is not a JWT"
    for name in ("check_test_token_accepted", "check_experiments_list_answers"):
        check = run.check(name)
        assert check["outcome"] == "unknown", check
        assert reason in check["message"], check["message"]
    if kind == "expired":
        assert "renew it" in run.check("check_test_token_accepted")["message"]
    assert run.outcome("check_request_without_token_rejected") == "passed"
    assert run.triage["severity"] is None and run.returncode == 0
    # The token itself reaches no output.
    reports = "".join(p.read_text(errors="replace") for p in run.reports.rglob("*") if p.is_file())
    assert token not in reports and token not in run.stdout and token not in run.stderr
