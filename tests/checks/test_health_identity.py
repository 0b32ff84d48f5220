"""The API's /health passes only on the API's own JSON health body: a bare HTTP 200 is not health."""

from __future__ import annotations

from typing import Any

import pytest

from standin import StandIn

HEALTH = "check_health_answers_within_budget"


@pytest.mark.parametrize(("body", "outcome", "text"), [
    ((b"<html><body>Maintenance page</body></html>", "text/html"), "failed",
     'HTTP 200 text/html, not the API\'s health answer {"status": "ok"} (the body is not JSON)'),
    ({"status": "degraded"}, "failed", "(the body says status 'degraded')"),
    ([1, 2], "failed", "(the body is not a JSON object)"),
    ({"status": "ok"}, "passed", "HTTP 200 in"),
])
def test_health_passes_only_on_the_api_s_health_body(healed: Any, body: Any, outcome: str, text: str) -> None:
    standin = StandIn(lambda path, query: (200, body))
    try:
        run = healed.run_checks("checks/api_gateway.py", "-k", "health_answers", "--api-url", standin.url)
    finally:
        standin.close()
    check = run.check(HEALTH)
    assert check["outcome"] == outcome, check
    assert text in (check["message"] or check["observed"][0]["observed"])
    if outcome == "failed":
        assert run.triage["severity"] == "SEV-1"


def test_the_sandbox_api_s_health_passes(healed: Any) -> None:
    run = healed.run_checks("checks/api_gateway.py", "-k", "health_answers")
    assert run.outcome(HEALTH) == "passed"
