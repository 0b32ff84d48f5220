"""The opt-in experiment canary: a dry-run submission, ``POST /experiments?dry_run=true``.

The one write labcheck sends to the platform API, and only when the run opted in to write
canaries (``-m writes`` or ``canary_writes = true``, as in ``deploy/canary-profile.toml``). A
dry run asks the API to validate and schedule nothing; the check fails if the API ignores the flag.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest

from labcheck.components.auth import usable_token
from labcheck.errors import NotConfigured, ProbeError
from labcheck.lab import Lab
from labcheck.prefetch import component, fact
from labcheck.probes import http

# Answers that mean "this API has no such endpoint" rather than "the endpoint is broken": the
# canary cannot check, so it is UNKNOWN (never skipped, which would switch it off unseen).
NOT_OFFERED = (404, 405, 501)


def canary_spec() -> dict[str, Any]:
    """The experiment the canary submits: small, obviously labcheck's, never meant to run."""
    return {"name": f"labcheck-canary-{int(time.time())}", "dry_run": True,
            "config": {"model": "labcheck-canary", "max_steps": 1}, "labels": {"created-by": "labcheck"}}


@dataclass(frozen=True)
class Submission:
    """What the API answered to the dry-run submission (or why it did not answer)."""

    url: str
    result: http.HttpResult | None
    error: ProbeError | None
    spec: dict[str, Any]

    def describe(self) -> str:
        if self.result is None:
            return f"no answer ({self.error.reason if self.error else 'unknown'})"
        return f"HTTP {self.result.status} in {self.result.elapsed_s:.3f} s"

    def evidence(self) -> dict[str, Any]:
        out: dict[str, Any] = {"request": f"POST {self.url}", "body": self.spec}
        if self.result is not None:
            out["response"] = self.result.exchange()
        return out


@component("experiment_canary")
class ExperimentCanary:
    """Submits one dry-run experiment per run (never more: it is a write)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    @fact(None)  # a write: sent only when the opted-in check asks, never ahead
    def dry_run(self) -> Submission:
        s = self.lab.settings
        if not s.api_url:
            raise NotConfigured("api_url is not configured", target="platform API")
        if not s.test_token:
            raise NotConfigured("test_token is not configured: the submission needs a bearer token",
                                target=f"POST {s.api_url}/experiments")
        url = f"{s.api_url}/experiments?dry_run=true"
        spec = canary_spec()
        # Read locally first, as the auth checks do: an expired token (or not a JWT) is labcheck's
        # own problem, UNKNOWN, and is never sent.
        token = usable_token(str(s.test_token))
        headers = {"Authorization": f"Bearer {token}", "User-Agent": "labcheck-canary"}
        try:
            result = self.lab.fact(f"POST {url}", lambda: http.post(self.lab, url, spec, headers=headers), target=url)
        except ProbeError as exc:
            return Submission(url, None, exc, spec)
        return Submission(url, result, None, spec)


@pytest.fixture(scope="session")
def experiment_canary(lab: Lab) -> ExperimentCanary:
    """The opt-in experiment dry-run submission."""
    return ExperimentCanary(lab)
