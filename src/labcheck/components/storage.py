"""Dataset storage (S3): reachability, usage against the quota, request errors and the write canary.

The ``s3`` fixture and the opt-in rule of the write canary (``canary_enabled``) live here too.
boto3 stays behind ``labcheck.probes.s3``, imported there inside functions only.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from labcheck import config
from labcheck.components.api_gateway import Api
from labcheck.config import Settings
from labcheck.errors import NoData, NotConfigured, ProbeAuthError, ProbeError, ProbeTimeout, Unknown
from labcheck.lab import Lab
from labcheck.markers import writes_enabled
from labcheck.prefetch import Use, component, fact
from labcheck.probes import prometheus
from labcheck.probes import s3 as s3_probe
from labcheck.probes.s3 import Failure, classify
from labcheck.timefmt import duration_s

CANARY_PREFIX = "labcheck-canary/"

config.declare(config.Key(
    "s3_size_max_age", config.PARSERS["duration"], "2d",
    "Oldest CloudWatch BucketSizeBytes datapoint the quota checks may judge (S3 publishes it daily)"))

# What a failed head_bucket means, and where the playbook says to look.
KINDS = {
    "ok": "reachable",
    "forbidden": "access denied (HTTP 403): verify the IAM roles and the bucket policy",
    "missing": "bucket does not exist (HTTP 404): check the bucket name and whether it was deleted",
    "network": "network failure: check VPC endpoints, security groups and DNS",
    "outage": "S3 is failing or throttling (HTTP 5xx / SlowDown): possible AWS outage, enable degraded mode",
    "error": "unexpected S3 answer: check aws_region and s3_endpoint",
}
# The storage-failure scenario's conditions each kind establishes (True) or rules out (False).
FACTS: dict[str, dict[str, bool]] = {
    "ok": {"permissions": False, "network_issue": False, "aws_outage": False},
    "forbidden": {"permissions": True, "network_issue": False, "aws_outage": False},
    "missing": {"network_issue": False, "aws_outage": False},
    "network": {"network_issue": True, "permissions": False},
    "outage": {"aws_outage": True, "network_issue": False, "permissions": False},
    "error": {"network_issue": False},
}


# --- reachability ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reach:
    """head_bucket: the failure to answer is itself the observation."""

    bucket: str
    endpoint: str
    kind: str
    elapsed_s: float
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    @property
    def facts(self) -> dict[str, bool]:
        return FACTS[self.kind]

    def describe(self) -> str:
        if self.failure is None:
            return f"head_bucket answered in {self.elapsed_s:.3f} s"
        if self.failure.describe().startswith("timed out after"):
            return self.failure.describe()  # it says how long already
        return f"{self.failure.describe()} after {self.elapsed_s:.3f} s"

    def advice(self) -> str:
        return KINDS[self.kind]

    def evidence(self) -> dict[str, Any]:
        return {"request": f"HeadBucket {self.bucket}", "endpoint": self.endpoint, "kind": self.kind,
                "status": self.failure.status if self.failure else 200,
                "code": self.failure.code if self.failure else None,
                "message": self.failure.message if self.failure else None,
                "elapsed_s": round(self.elapsed_s, 3)}


def _head_bucket_job(lab: Lab) -> tuple[str, Callable[[], Reach]]:
    bucket = s3_probe.bucket_name(lab)
    endpoint = s3_probe.endpoint_name(lab)

    def fetch() -> Reach:
        failure, elapsed_s = s3_probe.head(lab, bucket)
        return Reach(bucket, endpoint, failure.kind if failure else "ok", elapsed_s, failure)

    return f"s3 head_bucket {bucket}", fetch


def head_bucket(lab: Lab) -> Reach:
    """Is the bucket reachable? Fetched once per run; never raises for S3's own failures."""
    key, fetch = _head_bucket_job(lab)
    bucket = s3_probe.bucket_name(lab)
    budget = s3_probe.call_budget(lab)
    try:
        return lab.fact(key, fetch, target=f"S3 bucket {bucket}", budget=budget, origin=s3_probe.s3_origin(lab))
    except ProbeTimeout as exc:
        # Our own bound ran out while S3 was still not answering: that is a network failure too.
        return Reach(bucket, s3_probe.endpoint_name(lab), "network", budget,
                     Failure("network", None, "timeout", exc.reason))


# --- usage -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """How many bytes the bucket holds, and how we know."""

    bucket: str
    bytes: int
    objects: int | None
    source: str
    notes: tuple[str, ...] = ()


def usage(lab: Lab) -> Usage:
    """Bucket usage: an exact bounded listing, else CloudWatch BucketSizeBytes."""
    key, fetch, target, budget = _usage_job(lab)
    return lab.fact(key, fetch, target=target, budget=budget, origin=s3_probe.s3_origin(lab))


def _missing_contradiction(lab: Lab, bucket: str, target: str, fresher: str) -> NoData:
    """UNKNOWN for usage when this run saw the bucket missing: an older CloudWatch reading cannot count."""
    try:
        size = s3_probe.bucket_size(lab, bucket, duration_s(str(lab.settings.s3_size_max_age)))
    except ProbeError:
        size = None
    older = (f"CloudWatch BucketSizeBytes from {size[1].isoformat(timespec='seconds')} predates it and"
             if size else "no reading")
    return NoData(f"{fresher} in this run: {older} cannot count as the bucket's usage "
                  "(bucket deleted? see check_bucket_reachable)", target=target)


def _usage_job(lab: Lab) -> tuple[str, Callable[[], Usage], str, float]:
    bucket = s3_probe.bucket_name(lab)
    target = f"S3 bucket {bucket}"
    limit = int(lab.settings.s3_list_max_objects)
    max_age = str(lab.settings.s3_size_max_age)
    max_age_s = duration_s(max_age)

    def fetch() -> Usage:
        notes: list[str] = []
        listing_error: ProbeError | None = None
        if limit > 0:
            try:
                total, count, stopped = s3_probe.list_usage(lab, bucket, limit, lab.budget * 2)
                if stopped is None:
                    return Usage(bucket, total, count, "list_objects_v2 (sum of object sizes)")
                notes.append(f"listing stopped: {stopped}")
            except ProbeError as exc:
                listing_error = exc
                notes.append(f"listing failed: {listing_error.reason}")
        if isinstance(listing_error, s3_probe.BucketMissing):
            raise _missing_contradiction(lab, bucket, target, f"the bucket listing answered {listing_error.reason}")
        try:
            size = s3_probe.bucket_size(lab, bucket, max_age_s)
        except ProbeError as cw_error:
            raise type(listing_error or cw_error)(
                "; ".join([*notes, f"CloudWatch BucketSizeBytes failed: {cw_error.reason}"]), target=target
            ) from None
        if size is None:
            none = f"CloudWatch has no BucketSizeBytes datapoint in the last {max_age} (s3_size_max_age)"
            if listing_error is not None:
                raise type(listing_error)("; ".join([*notes, none]), target=target)
            raise NoData("; ".join([*notes, none]), target=target)
        value, ts = size
        age_s = time.time() - ts.timestamp()
        if age_s > max_age_s:  # a stale reading cannot pass: the bucket may have changed since
            raise NoData("; ".join([*notes, f"CloudWatch BucketSizeBytes is from {ts.isoformat(timespec='seconds')}, "
                                    f"{age_s / 3600:.1f} h old: older than s3_size_max_age ({max_age})"]),
                         target=target)
        return Usage(bucket, int(value), None, f"CloudWatch BucketSizeBytes at {ts.isoformat(timespec='seconds')}",
                     tuple(notes))

    # The listing stops itself after 2 probe budgets; then one page in flight and one CloudWatch call.
    return f"s3 usage {bucket}", fetch, target, lab.budget * 2 + s3_probe.call_budget(lab, calls=2)


# --- CloudWatch request metrics --------------------------------------------------------------


@dataclass(frozen=True)
class ErrorCount:
    """Sum of one S3 request metric over a look-back window."""

    bucket: str
    metric: str
    window: str
    total: float
    datapoints: list[dict[str, Any]] = field(repr=False)


def request_errors(lab: Lab, metric: str) -> ErrorCount:
    """CloudWatch ``4xxErrors`` or ``5xxErrors`` for the bucket over ``s3_error_window``."""
    key, fetch, target = _errors_job(lab, metric)
    return lab.fact(key, fetch, target=target, budget=s3_probe.call_budget(lab),
                    origin=s3_probe.cloudwatch_origin(lab))


def _errors_job(lab: Lab, metric: str) -> tuple[str, Callable[[], ErrorCount], str]:
    from labcheck.timefmt import duration_s

    bucket = s3_probe.bucket_name(lab)
    window = str(lab.settings.s3_error_window)
    seconds = max(60, int(duration_s(window)))
    filter_id = str(lab.settings.s3_metrics_filter_id)
    target = f"CloudWatch AWS/S3 {metric} for {bucket}"

    def fetch() -> ErrorCount:
        points = s3_probe.request_metric(lab, bucket, metric, filter_id=filter_id, seconds=seconds, target=target)
        if not points:
            raise NoData(f"no datapoints in the last {window} (are S3 request metrics enabled with "
                         f"FilterId={filter_id}? see s3_metrics_filter_id)", target=target)
        rows = [{"timestamp": p["Timestamp"].isoformat(timespec="seconds"), "sum": float(p.get("Sum", 0.0))}
                for p in points]
        return ErrorCount(bucket, metric, window, sum(r["sum"] for r in rows), rows)

    return f"cloudwatch {metric} {bucket} {window}", fetch, target


# --- write canary ----------------------------------------------------------------------------


@dataclass
class CanaryResult:
    """What the write canary did, step by step."""

    bucket: str
    key: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None
    left_behind: bool = False
    failure_kind: str | None = None  # the KINDS name of the S3 answer that failed it ("forbidden", ...)

    @property
    def ok(self) -> bool:
        return self.failure is None and not self.left_behind

    def describe(self) -> str:
        done = ", ".join(f"{s['step']} {s['result']}" for s in self.steps)
        return done or "nothing done"


def run_canary(client: Any, bucket: str, *, prefix: str = CANARY_PREFIX, size: int = 64) -> CanaryResult:
    """Put, get, compare and delete one small object; the delete runs whatever happened before."""
    key = f"{prefix}{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(6)}.txt"
    body = secrets.token_hex(size // 2).encode()
    result = CanaryResult(bucket, key)
    errors = s3_probe.boto_errors()

    def step(name: str, fn: Any) -> Any:
        started = time.monotonic()
        try:
            value = fn()
        except errors as exc:
            result.steps.append({"step": name, "result": classify(exc).describe(),
                                 "elapsed_s": round(time.monotonic() - started, 3)})
            raise
        result.steps.append({"step": name, "result": "ok", "elapsed_s": round(time.monotonic() - started, 3)})
        return value

    # Whether the object may exist: after a put that succeeded, or one that got no definite answer.
    may_exist = False
    try:
        try:
            step("put", lambda: client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="text/plain"))
        except errors as exc:
            may_exist = not s3_probe.answered(exc)
            raise
        may_exist = True
        got = step("get", lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read())
        same = got == body
        result.steps.append({"step": "compare", "result": "ok" if same else "mismatch"})
        if not same:
            result.failure = f"read back {len(got)} bytes that differ from the {len(body)} bytes written"
    except errors as exc:
        result.failure = f"{result.steps[-1]['step']} failed: {classify(exc).describe()}"
        result.failure_kind = classify(exc).kind
    finally:
        try:
            step("delete", lambda: client.delete_object(Bucket=bucket, Key=key))
        except errors as exc:
            result.left_behind = may_exist
            if result.failure is None:
                result.failure = f"delete failed: {classify(exc).describe()}"
                result.failure_kind = classify(exc).kind
    return result


def canary(lab: Lab) -> CanaryResult:
    """Run the write canary once per run, bounded (put, get, delete: three requests).

    When the bound runs out the canary counts as failed (writes that do not complete are the
    condition it looks for); its thread still deletes the object when the requests return.
    """
    bucket = s3_probe.bucket_name(lab)
    budget = s3_probe.call_budget(lab, calls=3)
    try:
        return lab.fact(f"s3 canary {bucket}", lambda: run_canary(s3_probe.s3_client(lab), bucket),
                        target=f"S3 bucket {bucket}", budget=budget, origin=s3_probe.s3_origin(lab))
    except ProbeTimeout as exc:
        return CanaryResult(bucket, f"{CANARY_PREFIX}...", failure=exc.reason)


# --- the facade ------------------------------------------------------------------------------


@component("s3")
class Storage:
    """The dataset bucket as the checks see it; every answer is fetched once per run."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    @property
    def bucket(self) -> str:
        return str(self.lab.settings.s3_bucket or "(no bucket)")

    def _start_reach(self) -> None:
        if self.lab.settings.s3_bucket:
            self.lab.start(*_head_bucket_job(self.lab), origin=s3_probe.s3_origin(self.lab))

    def _start_usage(self) -> None:
        # The checks ask usage only once they know the quota; without s3_quota_bytes it may be unknown.
        if self.lab.settings.s3_bucket and self.lab.settings.s3_quota_bytes:
            key, fetch, _, _ = _usage_job(self.lab)
            self.lab.start(key, fetch, origin=s3_probe.s3_origin(self.lab))
            self._start_reach()  # usage is judged against this run's HeadBucket

    def _start_request_errors(self, uses: Sequence[Use]) -> None:
        if not self.lab.settings.s3_bucket:
            return
        for metric in sorted({str(u.params["metric"]) for u in uses if "metric" in u.params}):
            key, fetch, _ = _errors_job(self.lab, metric)
            self.lab.start(key, fetch, origin=s3_probe.cloudwatch_origin(self.lab))

    @fact(lambda s3, uses: s3._start_reach())
    def reach(self) -> Reach:
        """head_bucket, classified (403 / 404 / network / 5xx); never raises for S3's own failures.

        A 403 is labcheck's own access (UNKNOWN) unless the platform's readiness says storage fails too.
        """
        reach = head_bucket(self.lab)
        if reach.kind == "forbidden":
            self._refused_unless_platform_fails(f"HeadBucket {reach.bucket}: {reach.describe()}")
        return reach

    def _refused_unless_platform_fails(self, what: str) -> None:
        """Raise UNKNOWN for a 403 on labcheck's credentials unless /health/ready reports storage failing."""
        try:
            judged = Api(self.lab).readiness().judge("storage")
            # Only the component's own status counts (the endpoint failing as a whole is UNKNOWN).
            failing = not judged.ok
            platform = f"the platform's readiness reports storage {judged.observed} ({judged.target})"
        except Unknown as exc:
            failing, platform = False, f"the platform's readiness could not be read ({exc.reason})"
        if failing:
            return  # the platform's own storage fails too: the 403 is the platform's (FAILED)
        raise ProbeAuthError(f"{what}: AWS access denied to labcheck's own credentials, while {platform}; "
                             "check labcheck's IAM policy and keys (aws_access_key_id), not the platform",
                             target=f"S3 bucket {self.bucket}")

    @fact(None)  # s3_quota_bytes, else one PromQL query asked when a quota check needs it
    def quota(self) -> tuple[float, str]:
        """The bucket quota in bytes and where it came from: ``s3_quota_bytes``, else the app's gauge."""
        s = self.lab.settings
        if s.s3_quota_bytes:
            return float(s.s3_quota_bytes), f"s3_quota_bytes ({s.sources['s3_quota_bytes']})"
        series = str(s.s3_quota_series)
        expr = f"max({series})"
        why = f"s3_quota_bytes is not configured and Prometheus has no {series}"
        if not s.prometheus_url:
            raise NotConfigured(f"{why} (prometheus_url is not configured)", target=f"S3 bucket {self.bucket}")
        try:
            samples = prometheus.query(self.lab, expr)
        except Unknown as exc:
            raise NotConfigured(f"{why}: {exc}", target=f"S3 bucket {self.bucket}") from None
        if not samples or samples[0].value <= 0:
            raise NotConfigured(why, target=f"S3 bucket {self.bucket}")
        return samples[0].value, f"Prometheus {series}"

    @fact(lambda s3, uses: s3._start_usage())
    def usage(self) -> Usage:
        """Bytes in the bucket: a bounded listing, else CloudWatch BucketSizeBytes.

        Never a stale pass: when this run's HeadBucket answered 404, no usage counts (UNKNOWN).
        """
        found = usage(self.lab)
        reach = head_bucket(self.lab)
        if reach.kind == "missing":
            raise NoData(f"HeadBucket answered {reach.describe()} in this run: the usage read from {found.source} "
                         "contradicts it and cannot count (bucket deleted? see check_bucket_reachable)",
                         target=f"S3 bucket {found.bucket}")
        return found

    @fact(lambda s3, uses: s3._start_request_errors(uses))  # only the metrics the selected checks ask
    def request_errors(self, metric: str) -> ErrorCount:
        """CloudWatch 4xxErrors / 5xxErrors over ``s3_error_window``."""
        return request_errors(self.lab, metric)

    @fact(None)  # it writes: never ahead of the check that opted in
    def canary(self) -> CanaryResult:
        """Put, get, compare and delete one object under ``labcheck-canary/`` (writes!).

        An AccessDenied follows the reach check's rule: labcheck's own access (UNKNOWN) unless the
        platform's readiness says storage fails too.
        """
        result = canary(self.lab)
        if result.failure_kind == "forbidden":
            left = f"; canary object {result.key} may be left behind: delete it" if result.left_behind else ""
            self._refused_unless_platform_fails(f"write canary s3://{result.bucket}: {result.failure}{left}")
        return result


@pytest.fixture(scope="session")
def s3(lab: Lab) -> Storage:
    """The dataset bucket: reachability, usage, CloudWatch request metrics, write canary."""
    return Storage(lab)


@pytest.fixture(scope="session")
def canary_enabled(pytestconfig: pytest.Config, settings: Settings) -> bool:
    """Whether this run opted in to the write canary."""
    return writes_enabled(pytestconfig, settings)
