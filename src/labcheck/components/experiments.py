"""Experiment execution as the API reports it: the ``experiments`` fixture and the list's expected shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from labcheck.components.api_gateway import Api
from labcheck.components.auth import start_with_test_token, with_test_token
from labcheck.lab import Lab
from labcheck.prefetch import component, fact
from labcheck.probes import http
from labcheck.timefmt import parse_time

EXPERIMENT_FIELDS = ("id", "name", "state", "started_at")


@component("experiments", make=lambda lab: Experiments(lab, Api(lab)))
class Experiments:
    """Experiment execution as the API reports it."""

    def __init__(self, lab: Lab, api: Api) -> None:
        self.lab = lab
        self.api = api

    @fact(lambda experiments, uses: start_with_test_token(experiments.lab, experiments.api))
    def listing(self) -> http.Attempt:
        """GET /experiments with the test token (the same request the auth check makes)."""
        return with_test_token(self.lab, self.api)


def experiments_shape_problems(doc: Any) -> list[str]:
    """What is wrong with a /experiments body (empty when it has the expected shape)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("experiments"), list):
        return ["the body is not an object with an 'experiments' list"]
    problems = []
    for i, item in enumerate(doc["experiments"]):
        if not isinstance(item, dict):
            problems.append(f"experiments[{i}] is not an object")
            continue
        missing = [f for f in EXPERIMENT_FIELDS if f not in item]
        if missing:
            problems.append(f"experiments[{i}] lacks {', '.join(missing)}")
    return problems[:10]


@pytest.fixture(scope="session")
def experiments(lab: Lab, api: Api) -> Experiments:
    """Experiments as the API lists them."""
    return Experiments(lab, api)


def progress_age_s(experiment: Mapping[str, Any], now: float) -> float | None:
    """Seconds since an experiment last showed progress (``updated_at``, else ``started_at``); None when
    neither is a readable time."""
    stamp = parse_time(experiment.get("updated_at") or experiment.get("started_at"))
    return None if stamp is None else now - stamp
