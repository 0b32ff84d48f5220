"""The documentation check against the live sandbox."""

from __future__ import annotations

from typing import Any

CHECKS = "checks/docs.py"


def test_healthy_sandbox_docs_answer(healed: Any) -> None:
    run = healed.wait_for(lambda r: r.outcome("check_docs_site_answers") == "passed", CHECKS,
                          deadline_s=30, what="docs check passing")
    assert run.triage["severity"] is None


def test_docs_down_is_a_sev4_failure(healed: Any) -> None:
    healed.fault("docs-down")
    run = healed.wait_for(lambda r: r.outcome("check_docs_site_answers") == "failed", CHECKS,
                          deadline_s=30, what="docs check failing")
    check = run.check("check_docs_site_answers")
    assert "HTTP 503" in check["message"]
    assert run.triage["severity"] == "SEV-4"
    assert run.triage["affected_components"] == ["docs"]
    assert check["scenario"] is None


def test_docs_are_unknown_without_a_docs_url(healed: Any) -> None:
    # Naming a target on the command line replaces the sandbox's settings, docs_url included.
    run = healed.run_checks(CHECKS, "--api-url", healed.settings["api_url"])
    check = run.check("check_docs_site_answers")
    assert check["outcome"] == "unknown"
    assert "docs_url is not configured" in check["message"]
