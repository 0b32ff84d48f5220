"""Experiment execution: is the list served, is any experiment stuck? (Whether the workers are there is
checked per deployment in checks/kubernetes.py, with the experiments component and its severities.)"""

from __future__ import annotations

import time

import pytest

from labcheck.components.experiments import experiments_shape_problems, progress_age_s
from labcheck.errors import NoData, ProbeBadResponse


def _listing(experiments):
    """The /experiments answer when it can be judged; UNKNOWN when another component is at fault."""
    attempt = experiments.listing()
    if attempt.result is None:
        assert attempt.error is not None
        raise attempt.error  # the API does not answer: the API gateway checks own that
    if attempt.result.status in (401, 403):
        raise NoData(f"HTTP {attempt.result.status}: the test token was refused (see the auth checks)",
                     target=attempt.url)
    return attempt


@pytest.mark.sev2
@pytest.mark.experiments
def check_experiments_list_answers(experiments, expect):
    # Users cannot see or manage their experiments when the list fails: a major feature (SEV-2).
    attempt = _listing(experiments)
    result = attempt.result
    problems = [] if result.status == 200 else [f"HTTP {result.status}"]
    if result.status == 200:
        try:
            problems = experiments_shape_problems(result.json())
        except ProbeBadResponse as exc:
            problems = [exc.reason]
    expect(not problems, target=f"GET {attempt.url}", observed="; ".join(problems) or attempt.describe(),
           threshold="HTTP 200 with {experiments: [{id, name, state, started_at}, ...]}",
           evidence=result.exchange())


@pytest.mark.sev3
@pytest.mark.experiments
def check_no_experiment_stuck(experiments, settings, expect):
    # One stuck experiment hurts its owner and holds a worker slot, the platform keeps working:
    # limited impact (SEV-3). Stuck means `running` without progress (updated_at, else started_at)
    # for longer than experiment_stuck_s; long runs that keep reporting progress are fine.
    attempt = _listing(experiments)
    if attempt.result.status != 200:
        raise NoData(f"HTTP {attempt.result.status}: no experiment list to inspect", target=attempt.url)
    doc = attempt.result.json()
    problems = experiments_shape_problems(doc)
    if problems:
        raise ProbeBadResponse("; ".join(problems), target=attempt.url)
    now = time.time()
    limit = settings.experiment_stuck_s
    running = [e for e in doc["experiments"] if e.get("state") == "running"]
    stuck = []
    for e in running:
        age = progress_age_s(e, now)
        if age is None:
            raise ProbeBadResponse(f"experiment {e.get('id')} has no readable updated_at/started_at",
                                   target=attempt.url)
        if age > limit:
            stuck.append((age, e))
    stuck.sort(key=lambda pair: pair[0], reverse=True)
    expect(not stuck, target=f"running experiments listed by GET {attempt.url}",
           observed=f"{len(stuck)} of {len(running)} running experiments without progress for longer than "
                    f"{limit:g} s", threshold="none",
           detail="; ".join(f"id {e.get('id')} {e.get('name')!r}: {age / 3600:.1f} h since "
                            f"{'last update' if e.get('updated_at') else 'start'}" for age, e in stuck[:10]),
           evidence=[e for _, e in stuck])
