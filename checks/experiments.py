"""Experiment execution: is the list served, is any experiment stuck? (Whether the workers are there is
checked per deployment in checks/kubernetes.py, with the experiments component and its severities.)"""

from __future__ import annotations

import time

import pytest

from labcheck.errors import ProbeBadResponse


@pytest.mark.sev2
@pytest.mark.experiments
def check_experiments_list_answers(experiments, expect):
    # Users cannot see or manage their experiments when the list fails: a major feature (SEV-2).
    # FAILED is the endpoint failing (no answer, 5xx, another non-200 but 401/403); a 200 whose body
    # the signal map cannot read is UNKNOWN ("could not read"), never an incident of its own.
    listing = experiments.listing()
    if listing.failure is None:
        listing.readable()
    expect(listing.failure is None, target=listing.target, observed=listing.describe(),
           threshold=f"HTTP 200 with {listing.shape}", evidence=listing.evidence)


@pytest.mark.sev3
@pytest.mark.experiments
def check_no_experiment_stuck(experiments, settings, expect):
    # One stuck experiment hurts its owner and holds a worker slot, the platform keeps working:
    # limited impact (SEV-3). Stuck means running (experiments_running) without progress (the first
    # of experiments_times present) for longer than experiment_stuck_s; long runs that keep
    # reporting progress are fine.
    listing = experiments.listing()
    now = time.time()
    limit = settings.experiment_stuck_s
    running = listing.running()
    stuck = []
    for e in running:
        if e.progress is None:
            raise ProbeBadResponse(f"could not read: running experiment {e.id} has no readable "
                                   f"{' or '.join(listing.map.times)}", target=listing.attempt.url)
        field, stamp = e.progress
        if now - stamp > limit:
            stuck.append((now - stamp, field, e))
    stuck.sort(key=lambda found: found[0], reverse=True)
    expect(not stuck, target=f"running experiments listed by {listing.target}",
           observed=f"{len(stuck)} of {len(running)} running experiments without progress for longer than "
                    f"{limit:g} s", threshold="none",
           detail="; ".join(f"id {e.id} {e.name!r}: {age / 3600:.1f} h since {field}" for age, field, e in stuck[:10]),
           evidence=[e.raw for _, _, e in stuck])
