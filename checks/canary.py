"""Write canaries: can users still submit an experiment? (opt-in: it writes to the platform API)"""

from __future__ import annotations

import pytest

from labcheck.components.canary import NOT_OFFERED
from labcheck.errors import NoData, ProbeBadResponse


@pytest.mark.sev2
@pytest.mark.experiments
@pytest.mark.writes
def check_experiment_dry_run_submission(experiment_canary, canary_enabled, expect):
    # Opt-in (-m writes or canary_writes=true): when submissions fail no new experiment starts,
    # a major feature broken (SEV-2). A dry run validates the submission and schedules nothing.
    if not canary_enabled:
        pytest.skip("experiment canary is off: it POSTs to the API; enable with -m writes or --set canary_writes=true")
    sub = experiment_canary.dry_run()
    if sub.result is None:
        raise sub.error  # the API does not answer: the API gateway checks own that
    status = sub.result.status
    if status in NOT_OFFERED:
        # UNKNOWN, not skipped: a canary that cannot submit must show, in the verdict and the pushed metrics.
        raise NoData(f"the API offers no dry-run endpoint: HTTP {status}; submissions are not checked",
                     target=f"POST {sub.url}")
    if status in (401, 403):
        raise NoData(f"HTTP {status}: the test token was refused (see the auth checks)", target=sub.url)
    problems = []
    if not 200 <= status < 300:
        problems.append(f"HTTP {status}: {sub.result.text[:200]}")
    else:
        try:
            doc = sub.result.json()
        except ProbeBadResponse as exc:
            doc, problems = None, [exc.reason]
        if isinstance(doc, dict) and doc.get("dry_run") is not True:
            inner = doc.get("experiment")
            created = doc.get("id") or (inner.get("id") if isinstance(inner, dict) else None)
            problems.append("the API ignored dry_run=true and may have created an experiment"
                            + (f" (id {created}): delete it" if created else ""))
        elif isinstance(doc, dict) and doc.get("valid") is False:
            problems.append(f"a known-good submission was rejected: {doc.get('errors') or doc}")
        elif doc is not None and not isinstance(doc, dict):
            problems.append("answer is not a JSON object")
    expect(not problems, target=f"POST {sub.url}", observed="; ".join(problems) or sub.describe(),
           threshold='2xx with {"dry_run": true, "valid": true}, nothing created', evidence=sub.evidence())
