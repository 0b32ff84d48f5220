"""Experiment execution as the API reports it: the ``experiments`` fixture and the list read through the
signal map (``experiments_key``, ``experiments_id/name/state/running/times``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from labcheck import signals
from labcheck.components import _signals
from labcheck.components._bodies import Experiment, experiments_shape, read_experiments
from labcheck.components._bodies import running as running_of
from labcheck.components.api_gateway import Api
from labcheck.components.auth import start_with_test_token, with_test_token
from labcheck.errors import NoData, ProbeBadResponse
from labcheck.lab import Lab
from labcheck.prefetch import component, fact
from labcheck.probes import http


@dataclass(frozen=True)
class Listing:
    """GET /experiments read through the map.

    ``failure`` says the endpoint itself failed (no answer, HTTP >= 500, or another non-200 that is
    not 401/403): FAILED. ``unreadable`` says what could not be read in an HTTP 200: UNKNOWN.
    """

    attempt: http.Attempt
    map: signals.SignalMap
    experiments: list[Experiment] = field(default_factory=list)
    failure: str | None = None
    unreadable: str | None = None

    @property
    def target(self) -> str:
        return f"GET {self.attempt.url}"

    @property
    def shape(self) -> str:
        return experiments_shape(self.map)

    @property
    def evidence(self) -> object:
        return self.attempt.result.exchange() if self.attempt.result is not None else None

    def describe(self) -> str:
        if self.failure is not None:
            return self.failure
        return f"{len(self.experiments)} experiments listed ({self.attempt.describe()})"

    def readable(self) -> list[Experiment]:
        """The experiments, when the list could be read; UNKNOWN otherwise (nothing to inspect)."""
        if self.failure is not None:
            raise NoData(f"no experiment list to inspect: {self.failure}", target=self.attempt.url)
        if self.unreadable is not None:
            raise ProbeBadResponse(f"could not read: {self.unreadable}", target=self.attempt.url)
        return self.experiments

    def running(self) -> list[Experiment]:
        return running_of(self.readable(), self.map)


def read_listing(attempt: http.Attempt, m: signals.SignalMap) -> Listing:
    """Judge the /experiments answer: the endpoint failing, a 401/403 (UNKNOWN: the token), or a body."""
    result = attempt.result
    if result is None:
        return Listing(attempt, m, failure=attempt.describe())
    if result.status in (401, 403):
        raise NoData(f"HTTP {result.status}: the test token was refused (see the auth checks)", target=attempt.url)
    if result.status != 200:
        return Listing(attempt, m, failure=f"HTTP {result.status}")
    try:
        doc = result.json()
    except ProbeBadResponse as exc:
        return Listing(attempt, m, unreadable=exc.reason)
    experiments, problems = read_experiments(doc, m)
    return Listing(attempt, m, experiments, unreadable="; ".join(problems) if problems else None)


@component("experiments", make=lambda lab: Experiments(lab, Api(lab)))
class Experiments:
    """Experiment execution as the API reports it."""

    def __init__(self, lab: Lab, api: Api) -> None:
        self.lab = lab
        self.api = api

    @fact(lambda experiments, uses: start_with_test_token(experiments.lab, experiments.api))
    def listing(self) -> Listing:
        """GET /experiments with the test token (the same request the auth check makes), read through
        the map; a 401/403 is UNKNOWN (the auth checks judge the token)."""
        return read_listing(with_test_token(self.lab, self.api), _signals.static(self.lab))


@pytest.fixture(scope="session")
def experiments(lab: Lab, api: Api) -> Experiments:
    """Experiments as the API lists them."""
    return Experiments(lab, api)
