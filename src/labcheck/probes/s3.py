"""S3 transport: the S3 and CloudWatch clients, failures classified, and the bounded calls components make.

boto3 is imported inside functions only, so collection and ``--collect-only`` never touch it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from labcheck.errors import (
    NotConfigured,
    ProbeAuthError,
    ProbeBadResponse,
    ProbeError,
    ProbeTimeout,
    ProbeUnreachable,
)

if TYPE_CHECKING:
    from labcheck.lab import Lab

# max_attempts is botocore's *retry* count: one retry, two attempts in all.
RETRIES = {"max_attempts": 1, "mode": "standard"}
ATTEMPTS = 2


def bucket_name(lab: Lab) -> str:
    """The configured bucket (``s3_bucket``)."""
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


SERVICES = ("s3", "cloudwatch")


class _Aws:
    """The run's one boto3 session, shared by its clients, and the lock they are built under.

    One session loads botocore's data once for both clients (a second session costs as much again);
    a session is not safe to build clients from in two threads at once, hence the lock.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self.lock = threading.Lock()


def _session(lab: Lab) -> _Aws:
    import boto3

    s = lab.settings
    session = boto3.session.Session(
        aws_access_key_id=s.aws_access_key_id or None,
        aws_secret_access_key=s.aws_secret_access_key or None,
        region_name=s.aws_region,
    )
    _known_services(session)
    return _Aws(session)


def _known_services(session: Any) -> None:
    """Tell botocore's loader which services exist, so that it does not list its data directory to find out.

    Before loading a model the loader checks that the service exists by listing every service it
    ships (some 400 directories, listed and stat'ed, per model type): a tenth of a second of CPU
    that every probe thread of the run waits on. We only ever ask for ``SERVICES``. The answer goes
    into the loader's own per-instance cache; should botocore change that cache, nothing breaks: the
    directory is listed as before.
    """
    try:
        loader = session._session.get_component("data_loader")
        cache = loader._cache
    except Exception:  # noqa: BLE001 - only the shortcut is lost
        return
    if isinstance(cache, dict):
        for type_name in ("service-2", "endpoint-rule-set-1"):
            cache.setdefault(("list_available_services", type_name), list(SERVICES))


def _no_retry_after_timeout(caught_exception: BaseException | None = None, **_: Any) -> bool | None:
    """``needs-retry`` handler, ahead of botocore's own: a request that timed out is not sent again.

    A hung endpoint then costs one timeout, not one per attempt; throttling, 5xx answers and
    dropped connections keep their one retry. (False is an answer, so botocore's handler is overruled.)
    """
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

    return False if isinstance(caught_exception, ConnectTimeoutError | ReadTimeoutError) else None


def _client(lab: Lab, service: str, endpoint: str | None) -> Any:
    aws = lab.client("aws session", lambda: _session(lab))
    with aws.lock:
        client = aws.session.client(service, endpoint_url=endpoint or None, config=_boto_config(lab))
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


class BucketMissing(ProbeBadResponse):
    """The bucket does not exist (HTTP 404 NoSuchBucket)."""


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
    if failure.kind == "missing":
        return BucketMissing(failure.describe(), target=target)
    return ProbeBadResponse(failure.describe(), target=target)


def boto_errors() -> tuple[type[BaseException], ...]:
    """What a boto3 call raises for a failure of S3 or of the way to it."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError)


def answered(exc: BaseException) -> bool:
    """Whether S3 answered the failed request (an HTTP error), rather than leaving it without an answer."""
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError)


def s3_origin(lab: Lab) -> str:
    return str(lab.settings.s3_endpoint or f"aws-s3:{lab.settings.aws_region}")


def cloudwatch_origin(lab: Lab) -> str:
    return str(lab.settings.cloudwatch_endpoint or f"aws-cloudwatch:{lab.settings.aws_region}")


# --- calls -----------------------------------------------------------------------------------


def head(lab: Lab, bucket: str) -> tuple[Failure | None, float]:
    """HeadBucket once: S3's failure classified (None when it answers) and the request's seconds.

    Failures on our side raise; a request that timed out also tells the lab the endpoint is not answering.
    """
    from botocore import exceptions as bx

    client = s3_client(lab)
    started = time.monotonic()
    try:
        client.head_bucket(Bucket=bucket)
    except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
        raise _raise_for(exc, f"S3 bucket {bucket}", lab) from None
    except boto_errors() as exc:
        failure = classify(exc, _timeouts(lab))
        if failure.kind == "error" and not isinstance(exc, bx.ClientError):
            raise _raise_for(exc, f"S3 bucket {bucket}", lab) from None  # our side (config, client): UNKNOWN
        if failure.code == "timeout":  # returned, not raised: tell the lab the endpoint is not answering
            lab.mark_dead(s3_origin(lab), failure.describe())
        return failure, time.monotonic() - started
    return None, time.monotonic() - started


def list_usage(lab: Lab, bucket: str, limit: int, within_s: float) -> tuple[int, int, str | None]:
    """Sum object sizes over a bounded paginated listing: (bytes, objects, why it stopped early)."""
    try:
        return _list_usage(lab, bucket, limit, within_s)
    except boto_errors() as exc:
        raise _raise_for(exc, f"S3 bucket {bucket}", lab) from None


def _list_usage(lab: Lab, bucket: str, limit: int, within_s: float) -> tuple[int, int, str | None]:
    deadline = time.monotonic() + within_s
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
            return total, count, f"listing took longer than {within_s:g} s ({count} objects so far)"
    return total, count, None


STORAGE_TYPES = ("StandardStorage", "IntelligentTieringFAStorage", "IntelligentTieringIAStorage",
                 "StandardIAStorage", "OneZoneIAStorage", "GlacierStorage", "DeepArchiveStorage")


def bucket_size(lab: Lab, bucket: str, seconds: float = 2 * 86400) -> tuple[float, datetime] | None:
    """The latest BucketSizeBytes (S3 publishes it daily) of the last ``seconds``, summed over storage types.

    One call. One-minute periods over two days stay within get_metric_data's limits and keep the
    latest datapoint apart from older ones, whatever the publishing interval.
    """
    try:
        return _bucket_size(lab, bucket, seconds)
    except boto_errors() as exc:
        raise _raise_for(exc, f"CloudWatch {lab.settings.cloudwatch_endpoint or 'AWS'}", lab) from None


def _bucket_size(lab: Lab, bucket: str, seconds: float) -> tuple[float, datetime] | None:
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
    answer = client.get_metric_data(MetricDataQueries=queries, StartTime=end - timedelta(seconds=seconds), EndTime=end,
                                    ScanBy="TimestampDescending")
    latest: list[tuple[datetime, float]] = []
    for result in answer.get("MetricDataResults", []):
        points = list(zip(result.get("Timestamps", []), result.get("Values", []), strict=False))
        if points:
            latest.append(max(points, key=lambda p: p[0]))
    if not latest:
        return None
    return sum(float(v) for _, v in latest), min(ts for ts, _ in latest)


def request_metric(lab: Lab, bucket: str, metric: str, *, filter_id: str, seconds: int,
                   target: str) -> list[dict[str, Any]]:
    """The per-period Sum of an AWS/S3 request metric over the last ``seconds``, oldest first."""
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
    except boto_errors() as exc:
        raise _raise_for(exc, target, lab) from None
    return sorted(answer.get("Datapoints", []), key=lambda p: p["Timestamp"])
