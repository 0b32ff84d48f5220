"""Dataset storage: is the bucket reachable, below its quota, free of errors, and served by the API?"""

from __future__ import annotations

import pytest


@pytest.mark.sev2
@pytest.mark.storage
@pytest.mark.scenario("storage-failure")
def check_bucket_reachable(s3, expect):
    # Dataset uploads and downloads fail while the bucket cannot be reached: SEV-2 (major feature).
    reach = s3.reach()
    for name, value in reach.facts.items():
        expect.fact(name, value)
    expect(reach.ok, target=f"HeadBucket {reach.bucket} at {reach.endpoint}", observed=reach.describe(),
           threshold="HTTP 200", detail=reach.advice(), evidence=reach.evidence())


def _usage_against_quota(s3):
    quota, source = s3.quota()
    usage = s3.usage()
    return usage, quota, source, usage.bytes / quota


def _usage_text(usage, quota, ratio):
    where = f", {usage.objects} objects" if usage.objects is not None else f", {usage.source}"
    return f"{usage.bytes / 2**30:.2f} GiB of {quota / 2**30:.2f} GiB ({ratio:.1%}{where})"


@pytest.mark.sev2
@pytest.mark.storage
@pytest.mark.scenario("storage-failure")
def check_bucket_below_quota(s3, expect):
    # At or over the quota, uploads fail: a major feature broken (SEV-2).
    usage, quota, source, ratio = _usage_against_quota(s3)
    if ratio >= 1.0:
        expect.fact("quota_exceeded", True)
    expect(ratio < 1.0, target=f"S3 bucket {usage.bucket} usage", observed=_usage_text(usage, quota, ratio),
           threshold=f"< the quota of {int(quota)} bytes (from {source})", detail=f"usage from {usage.source}",
           evidence={"usage": vars(usage), "quota_bytes": quota, "quota_from": source})


@pytest.mark.sev3
@pytest.mark.storage
@pytest.mark.scenario("storage-failure")
def check_bucket_usage_below_quota_ratio(s3, settings, expect):
    # Close to the quota nothing fails yet (SEV-3): clean up or raise the quota before it does.
    usage, quota, source, ratio = _usage_against_quota(s3)
    limit = settings.s3_quota_ratio
    expect.fact("quota_exceeded", ratio >= limit)
    expect(ratio < limit, target=f"S3 bucket {usage.bucket} usage", observed=_usage_text(usage, quota, ratio),
           threshold=f"< {limit:.0%} of the quota (from {source})", detail=f"usage from {usage.source}" + (
               f" ({'; '.join(usage.notes)})" if usage.notes else ""),
           evidence={"usage": vars(usage), "quota_bytes": quota, "quota_from": source})


@pytest.mark.sev3
@pytest.mark.storage
@pytest.mark.scenario("storage-failure")
@pytest.mark.parametrize("metric", ["4xxErrors", "5xxErrors"])
def check_s3_request_errors(s3, settings, metric, expect):
    # Errors the bucket answered over the last hour: degraded storage, limited impact (SEV-3);
    # an outright outage fails the SEV-2 reachability check.
    count = s3.request_errors(metric)
    limit = settings.s3_error_threshold
    worst = sorted((p for p in count.datapoints if p["sum"] > 0), key=lambda p: p["sum"], reverse=True)[:5]
    expect(count.total <= limit, target=f"CloudWatch AWS/S3 {metric} for {count.bucket} over {count.window}",
           observed=f"{count.total:g}", threshold=f"<= {limit}",
           detail="busiest periods: " + (", ".join(f"{p['timestamp']} {p['sum']:g}" for p in worst) or "none"),
           evidence={"metric": metric, "window": count.window, "datapoints": count.datapoints})


@pytest.mark.sev2
@pytest.mark.storage
@pytest.mark.scenario("storage-failure")
def check_datasets_endpoint_answers(api, expect):
    # /datasets is how users list and fetch datasets; when it fails that feature is broken (SEV-2).
    attempt = api.attempt("/datasets")
    if attempt.result is None and api.health().result is None:
        # The API answers nothing, /health included: that is the API gateway's finding (its health
        # check fails), not storage's. A /datasets that hangs while /health answers fails below.
        assert attempt.error is not None
        raise attempt.error
    ok = attempt.result is not None and attempt.result.status == 200
    detail = ""
    if attempt.result is not None and attempt.result.status != 200:
        detail = attempt.result.text[:300]
    expect(ok, target=f"GET {attempt.url}", observed=attempt.describe(), threshold="HTTP 200", detail=detail,
           evidence=attempt.result.exchange() if attempt.result else None)


@pytest.mark.sev2
@pytest.mark.storage
@pytest.mark.scenario("storage-failure")
@pytest.mark.writes
def check_write_canary(s3, canary_enabled, expect):
    # Opt-in (-m writes or canary_writes=true): uploads that fail are a broken major feature (SEV-2).
    if not canary_enabled:
        pytest.skip("write canary is off: it writes to the bucket; enable with -m writes or --set canary_writes=true")
    result = s3.canary()
    observed = result.failure or "put, get, compare and delete ok"
    if result.left_behind:
        observed += f"; canary object {result.key} may be left behind: delete it"
    expect(result.ok, target=f"write canary s3://{result.bucket}/{result.key}", observed=observed,
           threshold="put, get, identical content, delete", detail=result.describe(),
           evidence={"bucket": result.bucket, "key": result.key, "steps": result.steps})
