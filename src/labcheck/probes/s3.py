"""S3 probe: bucket reachability, usage, CloudWatch request metrics and the opt-in write canary.

boto3 is imported inside functions only, so collection and ``--collect-only`` never touch it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from labcheck.errors import (
    NoData,
    NotConfigured,
    ProbeAuthError,
    ProbeBadResponse,
    ProbeError,
    ProbeTimeout,
    ProbeUnreachable,
)

if TYPE_CHECKING:
    from labcheck.lab import Lab

CANARY_PREFIX = "labcheck-canary/"
# max_attempts is botocore's *retry* count: one retry, two attempts in all.
RETRIES = {"max_attempts": 1, "mode": "standard"}
ATTEMPTS = 2

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


def _settings_bucket(lab: Lab) -> str:
    bucket = lab.settings.s3_bucket
    if not bucket:
        raise NotConfigured("s3_bucket is not configured", target="S3")
    return str(bucket)


def call_budget(lab: Lab, calls: int = 1) -> float:
    """How long ``calls`` S3 requests may take, each with its retry, plus a margin."""
    s = lab.settings
    return calls * ATTEMPTS * (s.connect_s + s.read_s) + 2.0


def _boto_config(lab: Lab) -> Any:
    from botocore.config import Config

    s = lab.settings
    return Config(
        connect_timeout=s.connect_s,
        read_timeout=s.read_s,
        retries=dict(RETRIES),
        # Path-style for S3-compatible endpoints (s3_endpoint); AWS itself picks its own style.
        s3={"addressing_style": "path" if s.s3_endpoint else "auto"},
        # S3-compatible endpoints (MinIO, moto, Ceph) may not know the newer default checksums.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        user_agent_extra="labcheck",
    )


def _session(lab: Lab) -> Any:
    import boto3

    s = lab.settings
    return boto3.session.Session(
        aws_access_key_id=s.aws_access_key_id or None,
        aws_secret_access_key=s.aws_secret_access_key or None,
        region_name=s.aws_region,
    )


def _no_retry_after_timeout(caught_exception: BaseException | None = None, **_: Any) -> bool | None:
    """``needs-retry`` handler, ahead of botocore's own: a request that timed out is not sent again.

    A hung endpoint then costs one timeout, not one per attempt; throttling, 5xx answers and
    dropped connections keep their one retry. (False is an answer, so botocore's handler is overruled.)
    """
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

    return False if isinstance(caught_exception, ConnectTimeoutError | ReadTimeoutError) else None


def _client(lab: Lab, service: str, endpoint: str | None) -> Any:
    client = _session(lab).client(service, endpoint_url=endpoint or None, config=_boto_config(lab))
    client.meta.events.register_first(f"needs-retry.{client.meta.service_model.service_id.hyphenize()}",
                                      _no_retry_after_timeout)
    return client


def s3_client(lab: Lab) -> Any:
    """The S3 client, built once per run (path-style, bounded timeouts, one retry but not after a timeout)."""
    return lab.client("s3", lambda: _client(lab, "s3", lab.settings.s3_endpoint))


def cloudwatch_client(lab: Lab) -> Any:
    """The CloudWatch client (a separate endpoint), built once per run."""
    return lab.client("cloudwatch", lambda: _client(lab, "cloudwatch", lab.settings.cloudwatch_endpoint))


def endpoint_name(lab: Lab) -> str:
    return str(lab.settings.s3_endpoint or f"AWS S3 ({lab.settings.aws_region})")


# --- errors ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A failed S3 request, classified."""

    kind: str
    status: int | None
    code: str | None
    message: str

    def describe(self) -> str:
        if self.code == "timeout" and self.message.startswith("timed out after"):
            return self.message
        what = f"HTTP {self.status}" if self.status else "no answer"
        if self.code and self.code != str(self.status):
            what += f" {self.code}"
        return f"{what} ({self.message})" if self.message else what


def classify(exc: BaseException, timeouts: tuple[float, float] | None = None) -> Failure:
    """Sort a botocore exception into the playbook's causes (``timeouts``: connect and read, to name them)."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {}) or {}
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(err.get("Code") or status or "")
        message = str(err.get("Message") or "")[:200]
        if status == 403 or code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            kind = "forbidden"
        elif status == 404 or code in ("NoSuchBucket", "404"):
            kind = "missing"
        elif (status or 0) >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError", "503"):
            kind = "outage"
        else:
            kind = "error"
        return Failure(kind, status, code, message)
    if isinstance(exc, bx.ConnectTimeoutError | bx.ReadTimeoutError):
        if timeouts is None:
            return Failure("network", None, "timeout", str(exc)[:200])
        connect = isinstance(exc, bx.ConnectTimeoutError)
        waited = f"{timeouts[0]:g} s connecting" if connect else f"{timeouts[1]:g} s waiting for a response"
        endpoint = str(getattr(exc, "kwargs", {}).get("endpoint_url") or "")
        return Failure("network", None, "timeout", f"timed out after {waited}" + (f" from {endpoint}" if endpoint else ""))
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionClosedError | bx.ProxyConnectionError
                  | bx.SSLError | bx.HTTPClientError):
        return Failure("network", None, type(exc).__name__, str(exc)[:200])
    return Failure("error", None, type(exc).__name__, str(exc)[:200])


def _timeouts(lab: Lab) -> tuple[float, float]:
    return lab.settings.connect_s, lab.settings.read_s


def _raise_for(exc: BaseException, target: str, lab: Lab | None = None) -> ProbeError:
    """A failure that stops a read-only probe: UNKNOWN with the reason."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return ProbeAuthError("no AWS credentials (set aws_access_key_id/aws_secret_access_key or the boto3 chain)",
                              target=target)
    failure = classify(exc, _timeouts(lab) if lab is not None else None)
    if failure.kind == "forbidden":
        return ProbeAuthError(failure.describe(), target=target)
    if failure.kind == "network":
        if failure.code == "timeout":
            return ProbeTimeout(failure.describe(), target=target)
        return ProbeUnreachable(failure.describe(), target=target)
    return ProbeBadResponse(failure.describe(), target=target)


def _boto_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError)


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


def _s3_origin(lab: Lab) -> str:
    return str(lab.settings.s3_endpoint or f"aws-s3:{lab.settings.aws_region}")


def _cloudwatch_origin(lab: Lab) -> str:
    return str(lab.settings.cloudwatch_endpoint or f"aws-cloudwatch:{lab.settings.aws_region}")


def _head_bucket_job(lab: Lab) -> tuple[str, Any]:
    bucket = _settings_bucket(lab)
    endpoint = endpoint_name(lab)

    def fetch() -> Reach:
        from botocore import exceptions as bx

        client = s3_client(lab)
        started = time.monotonic()
        try:
            client.head_bucket(Bucket=bucket)
        except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
            raise _raise_for(exc, f"S3 bucket {bucket}", lab) from None
        except _boto_errors() as exc:
            failure = classify(exc, _timeouts(lab))
            if failure.kind == "error" and not isinstance(exc, bx.ClientError):
                raise _raise_for(exc, f"S3 bucket {bucket}", lab) from None  # our side (config, client): UNKNOWN
            if failure.code == "timeout":  # returned, not raised: tell the lab the endpoint is not answering
                lab.mark_dead(_s3_origin(lab), failure.describe())
            return Reach(bucket, endpoint, failure.kind, time.monotonic() - started, failure)
        return Reach(bucket, endpoint, "ok", time.monotonic() - started)

    return f"s3 head_bucket {bucket}", fetch


def start(lab: Lab, facts: Collection[str] = ("head_bucket",), *, metrics: Iterable[str] = ()) -> None:
    """Start in the background what the selected checks read: head_bucket, usage, CloudWatch ``metrics``."""
    if not lab.settings.s3_bucket:
        return
    if "head_bucket" in facts:
        lab.start(*_head_bucket_job(lab), origin=_s3_origin(lab))
    if "usage" in facts:
        usage_key, usage_fetch, _, _ = _usage_job(lab)
        lab.start(usage_key, usage_fetch, origin=_s3_origin(lab))
    for metric in metrics:
        errors_key, errors_fetch, _ = _errors_job(lab, metric)
        lab.start(errors_key, errors_fetch, origin=_cloudwatch_origin(lab))


def head_bucket(lab: Lab) -> Reach:
    """Is the bucket reachable? Fetched once per run; never raises for S3's own failures."""
    key, fetch = _head_bucket_job(lab)
    bucket = _settings_bucket(lab)
    try:
        reach: Reach = lab.fact(key, fetch, target=f"S3 bucket {bucket}", budget=call_budget(lab),
                                origin=_s3_origin(lab))
        return reach
    except ProbeTimeout as exc:
        # Our own bound ran out while S3 was still not answering: that is a network failure too.
        return Reach(bucket, endpoint_name(lab), "network", call_budget(lab),
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


def _list_usage(lab: Lab, bucket: str, limit: int, deadline: float) -> tuple[int, int, str | None]:
    """Sum object sizes over a bounded paginated listing: (bytes, objects, why it stopped early)."""
    client = s3_client(lab)
    paginator = client.get_paginator("list_objects_v2")
    total = count = 0
    page_size = max(1, min(1000, limit))
    for page in paginator.paginate(Bucket=bucket, PaginationConfig={"PageSize": page_size}):
        for obj in page.get("Contents", []) or []:
            total += int(obj.get("Size", 0))
            count += 1
        if not page.get("IsTruncated"):
            return total, count, None
        if count >= limit:
            return total, count, f"more than {limit} objects (s3_list_max_objects)"
        if time.monotonic() > deadline:
            return total, count, f"listing took longer than {lab.budget * 2:g} s ({count} objects so far)"
    return total, count, None


STORAGE_TYPES = ("StandardStorage", "IntelligentTieringFAStorage", "IntelligentTieringIAStorage",
                 "StandardIAStorage", "OneZoneIAStorage", "GlacierStorage", "DeepArchiveStorage")


def _cloudwatch_size(lab: Lab, bucket: str) -> tuple[float, datetime] | None:
    """The latest BucketSizeBytes (S3 publishes it daily), summed over storage types, in one call.

    One-minute periods over two days stay within get_metric_data's limits and keep the latest
    datapoint apart from older ones, whatever the publishing interval.
    """
    client = cloudwatch_client(lab)
    end = datetime.now(UTC)
    queries = [
        {"Id": f"s{i}", "ReturnData": True,
         "MetricStat": {"Metric": {"Namespace": "AWS/S3", "MetricName": "BucketSizeBytes",
                                   "Dimensions": [{"Name": "BucketName", "Value": bucket},
                                                  {"Name": "StorageType", "Value": storage_type}]},
                        "Period": 60, "Stat": "Average"}}
        for i, storage_type in enumerate(STORAGE_TYPES)
    ]
    answer = client.get_metric_data(MetricDataQueries=queries, StartTime=end - timedelta(days=2), EndTime=end,
                                    ScanBy="TimestampDescending")
    latest: list[tuple[datetime, float]] = []
    for result in answer.get("MetricDataResults", []):
        points = list(zip(result.get("Timestamps", []), result.get("Values", []), strict=False))
        if points:
            latest.append(max(points, key=lambda p: p[0]))
    if not latest:
        return None
    return sum(float(v) for _, v in latest), min(ts for ts, _ in latest)


def usage(lab: Lab) -> Usage:
    """Bucket usage: an exact bounded listing, else CloudWatch BucketSizeBytes."""
    key, fetch, target, budget = _usage_job(lab)
    usage_: Usage = lab.fact(key, fetch, target=target, budget=budget, origin=_s3_origin(lab))
    return usage_


def _usage_job(lab: Lab) -> tuple[str, Callable[[], Usage], str, float]:
    bucket = _settings_bucket(lab)
    target = f"S3 bucket {bucket}"
    limit = int(lab.settings.s3_list_max_objects)

    def fetch() -> Usage:
        notes: list[str] = []
        listing_error: ProbeError | None = None
        if limit > 0:
            try:
                total, count, stopped = _list_usage(lab, bucket, limit, time.monotonic() + lab.budget * 2)
                if stopped is None:
                    return Usage(bucket, total, count, "list_objects_v2 (sum of object sizes)")
                notes.append(f"listing stopped: {stopped}")
            except _boto_errors() as exc:
                listing_error = _raise_for(exc, target, lab)
                notes.append(f"listing failed: {listing_error.reason}")
        try:
            size = _cloudwatch_size(lab, bucket)
        except _boto_errors() as exc:
            cw_error = _raise_for(exc, f"CloudWatch {lab.settings.cloudwatch_endpoint or 'AWS'}", lab)
            raise type(listing_error or cw_error)(
                "; ".join([*notes, f"CloudWatch BucketSizeBytes failed: {cw_error.reason}"]), target=target
            ) from None
        if size is None:
            if listing_error is not None:
                raise type(listing_error)("; ".join([*notes, "CloudWatch has no BucketSizeBytes datapoint"
                                                     " in the last 2 days"]), target=target)
            raise NoData("; ".join([*notes, "CloudWatch has no BucketSizeBytes datapoint in the last 2 days"]),
                         target=target)
        value, ts = size
        return Usage(bucket, int(value), None, f"CloudWatch BucketSizeBytes at {ts.isoformat(timespec='seconds')}",
                     tuple(notes))

    # The listing stops itself after 2 probe budgets; then one page in flight and one CloudWatch call.
    return f"s3 usage {bucket}", fetch, target, lab.budget * 2 + call_budget(lab, calls=2)


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
    count: ErrorCount = lab.fact(key, fetch, target=target, budget=call_budget(lab), origin=_cloudwatch_origin(lab))
    return count


def _errors_job(lab: Lab, metric: str) -> tuple[str, Callable[[], ErrorCount], str]:
    from labcheck.timefmt import duration_s

    bucket = _settings_bucket(lab)
    window = str(lab.settings.s3_error_window)
    seconds = max(60, int(duration_s(window)))
    filter_id = str(lab.settings.s3_metrics_filter_id)
    target = f"CloudWatch AWS/S3 {metric} for {bucket}"

    def fetch() -> ErrorCount:
        client = cloudwatch_client(lab)
        end = datetime.now(UTC)
        start = end - timedelta(seconds=seconds)
        period = 60 * max(1, -(-seconds // (1440 * 60)))  # whole minutes, at most 1440 datapoints
        try:
            answer = client.get_metric_statistics(
                Namespace="AWS/S3", MetricName=metric,
                Dimensions=[{"Name": "BucketName", "Value": bucket}, {"Name": "FilterId", "Value": filter_id}],
                StartTime=start, EndTime=end, Period=period, Statistics=["Sum"],
            )
        except _boto_errors() as exc:
            raise _raise_for(exc, target, lab) from None
        points = sorted(answer.get("Datapoints", []), key=lambda p: p["Timestamp"])
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

    @property
    def ok(self) -> bool:
        return self.failure is None and not self.left_behind

    def describe(self) -> str:
        done = ", ".join(f"{s['step']} {s['result']}" for s in self.steps)
        return done or "nothing done"


def run_canary(client: Any, bucket: str, *, prefix: str = CANARY_PREFIX, size: int = 64) -> CanaryResult:
    """Put, get, compare and delete one small object; the delete runs whatever happened before."""
    from botocore.exceptions import ClientError

    key = f"{prefix}{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(6)}.txt"
    body = secrets.token_hex(size // 2).encode()
    result = CanaryResult(bucket, key)
    errors = _boto_errors()

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
            may_exist = not isinstance(exc, ClientError)
            raise
        may_exist = True
        got = step("get", lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read())
        same = got == body
        result.steps.append({"step": "compare", "result": "ok" if same else "mismatch"})
        if not same:
            result.failure = f"read back {len(got)} bytes that differ from the {len(body)} bytes written"
    except errors as exc:
        result.failure = f"{result.steps[-1]['step']} failed: {classify(exc).describe()}"
    finally:
        try:
            step("delete", lambda: client.delete_object(Bucket=bucket, Key=key))
        except errors as exc:
            result.left_behind = may_exist
            if result.failure is None:
                result.failure = f"delete failed: {classify(exc).describe()}"
    return result


def canary(lab: Lab) -> CanaryResult:
    """Run the write canary once per run, bounded (put, get, delete: three requests).

    When the bound runs out the canary counts as failed (writes that do not complete are the
    condition it looks for); its thread still deletes the object when the requests return.
    """
    bucket = _settings_bucket(lab)
    budget = call_budget(lab, calls=3)
    try:
        return lab.fact(f"s3 canary {bucket}", lambda: run_canary(s3_client(lab), bucket),
                        target=f"S3 bucket {bucket}", budget=budget, origin=_s3_origin(lab))
    except ProbeTimeout as exc:
        return CanaryResult(bucket, f"{CANARY_PREFIX}...", failure=exc.reason)
