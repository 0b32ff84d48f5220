"""Log patterns: do the API pods' logs show an error surge, S3 failures, or a brute-force attack on auth?"""

from __future__ import annotations

import pytest

from labcheck.components.logs import FAILURE, shown, top_share
from labcheck.errors import NoData

# One read of the API pods' logs serves every check here (and the Kubernetes evidence); each check
# picks its scenario's window out of it by the kubelet's timestamps. Severities follow the signal
# each one backs: an error surge is the high-error-rate scenario's (SEV-2, like the 5xx ratio over
# 10%), S3 failures the storage scenario's (Dataset Storage, SEV-2/3: SEV-3 when the bucket checks
# see it answer), a brute-force attack the auth scenario's 401/403 spike (SEV-2); the attack is
# also what makes "Data breach suspected" an escalation (the brute_force condition).


def _short(rate, target):
    """A rate under its limit, from reads that fall short of the window, cannot pass."""
    if rate.short:
        raise NoData(f"{rate.text()} under the limit, but the reads stop before the present: "
                     + "; ".join(rate.short), target=target)


def _judge_rate(logs, pattern, window_s, limit, least, expect, *, what, also=None):
    """Fail when the pattern's lines per minute in the window are over the limit, and there are at least
    ``least`` of them (fewer is a blip); the lines are the evidence."""
    rate = logs.rate(pattern, window_s, also=also)
    target = f"{what} in the {logs.target}"
    ok = rate.per_min <= limit or rate.count < least
    if ok:
        _short(rate, target)
    newest = logs.matching(pattern, window_s, also=also)[-3:]
    expect(ok, target=target, observed=rate.text(),
           threshold=f"<= {limit:g} lines/min (or fewer than {least} lines)",
           detail="newest:\n" + "\n".join(f"  {ln.pod}: {ln.text[:300]}" for ln in newest),
           evidence=lambda: logs.evidence(pattern, window_s, also=also))


@pytest.mark.sev2
@pytest.mark.api_gateway
@pytest.mark.scenario("high-error-rate")
def check_error_lines_below_surge(api_logs, settings, expect):
    # Scenario 1: kubectl logs --since=10m | grep -i "error\|panic\|fatal", as a rate across the pods.
    _judge_rate(api_logs.read(), "error/panic/fatal", settings.log_error_window_s,
                float(settings.log_error_lines_per_min), int(settings.log_lines_min), expect,
                what="error/panic/fatal lines")


@pytest.mark.sev3
@pytest.mark.storage
@pytest.mark.scenario("storage-failure")
def check_no_s3_errors_in_logs(api_logs, settings, expect):
    # Scenario 5: kubectl logs --since=30m | grep -i "s3\|aws"; the grep also finds every successful
    # S3 call, so only the lines that read as failures count.
    _judge_rate(api_logs.read(), "s3/aws", settings.log_storage_window_s, float(settings.log_s3_errors_per_min),
                int(settings.log_lines_min), expect, what="s3/aws lines reporting a failure", also=FAILURE)


@pytest.mark.sev2
@pytest.mark.auth
@pytest.mark.scenario("auth-failure")
def check_no_brute_force(api_logs, settings, expect):
    # Scenario 6: "If DDoS/brute force: enable additional rate limiting". Many 401s from few client
    # addresses (access lines), or authentication failures for few subjects, is the brute_force
    # condition: it keeps that step and raises "Data breach suspected". Logs that name neither who
    # sent the 401s nor for whom cannot rule it out: UNKNOWN.
    logs = api_logs.read()
    src = logs.sources(settings.log_auth_window_s)
    few, share, least = int(settings.brute_force_sources), float(settings.brute_force_share), \
        int(settings.brute_force_min_401)
    addresses, by_address = top_share(src.addresses, few)
    subjects, by_subject = top_share(src.subjects, few)
    failures = sum(src.subjects.values())
    from_few = src.refused >= least and by_address >= share
    for_few = failures >= least and by_subject >= share
    target = f"401s and authentication failures in the {logs.target}, last {src.window_s:g} s"
    observed = (f"{src.refused} HTTP 401 of {src.access_lines} access lines; top {few} client address(es) "
                f"{shown(addresses)} = {by_address:.0%}; {failures} auth failure(s) naming a subject, top {few} "
                f"{shown(subjects)} = {by_subject:.0%}")
    if not (from_few or for_few):
        if src.access_lines == 0:
            raise NoData("the logs carry no access line (client address and status) to count 401s by address"
                         + (f"; {failures} auth failure(s) name a subject" if failures
                            else ", and no authentication failure names a subject")
                         + ": brute force cannot be ruled out", target=target)
        _short(logs.rate("401/403/auth/jwt", settings.log_auth_window_s), target)
    expect.fact("brute_force", from_few or for_few)
    expect(not (from_few or for_few), target=target, observed=observed,
           threshold=f"not >= {least} 401s with >= {share:.0%} from <= {few} addresses or for <= {few} subjects",
           detail=("brute force from few addresses: " if from_few else "brute force against few subjects: ")
           + "enable additional rate limiting, block the sources, and treat it as a suspected breach",
           condition="brute_force",
           evidence=lambda: logs.evidence("401/403/auth/jwt", settings.log_auth_window_s))
