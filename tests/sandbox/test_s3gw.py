"""The sandbox S3 gateway on real processes: moto behind it, boto3 in front of it."""

from __future__ import annotations

import io
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import _procs
import httpx
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

BUCKET = "llm-research-datasets"
AWS = {
    "aws_region": "us-east-1",
    "aws_access_key_id": "AKIATEST",
    "aws_secret_access_key": "x" * 40,
}
REQUEST_DIMENSIONS = [
    {"Name": "BucketName", "Value": BUCKET},
    {"Name": "FilterId", "Value": "EntireBucket"},
]


@dataclass
class Gateway:
    """A gateway in front of moto, and clients for both."""

    url: str
    moto_url: str
    admin_key: str
    requests_log: Path
    s3: Any
    cloudwatch: Any

    @property
    def admin(self) -> dict[str, str]:
        return {"X-Admin-Key": self.admin_key}

    def fault(self, name: str, **params: Any) -> None:
        resp = httpx.post(f"{self.url}/admin/faults/{name}", json=params, headers=self.admin)
        assert resp.status_code == 200, resp.text

    def heal(self) -> None:
        resp = httpx.delete(f"{self.url}/admin/faults", headers=self.admin)
        assert resp.status_code == 200, resp.text

    def request_sum(self, metric: str) -> float:
        """Sum over the last hour of one of the request metrics, as CloudWatch answers it."""
        now = datetime.now(UTC)
        answer = self.cloudwatch.get_metric_statistics(
            Namespace="AWS/S3",
            MetricName=metric,
            Dimensions=REQUEST_DIMENSIONS,
            StartTime=now - timedelta(hours=1),
            EndTime=now + timedelta(minutes=1),
            Period=60,
            Statistics=["Sum"],
        )
        return float(sum(p["Sum"] for p in answer["Datapoints"]))

    def datapoints(self, metric: str, dimensions: list[dict[str, str]]) -> list[dict[str, Any]]:
        """Per-second datapoints of the last 30 s."""
        now = datetime.now(UTC)
        answer = self.cloudwatch.get_metric_statistics(
            Namespace="AWS/S3",
            MetricName=metric,
            Dimensions=dimensions,
            StartTime=now - timedelta(seconds=30),
            EndTime=now + timedelta(seconds=5),
            Period=1,
            Statistics=["Maximum"],
        )
        return list(answer["Datapoints"])


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log_dir = tmp_path_factory.mktemp("s3gw")
    procs: list[_procs.Proc] = []
    with _procs.stopping(procs):
        moto, moto_url = _procs.start_moto(log_dir, wait=False)
        procs.append(moto)
        port = _procs.free_port()
        url = f"http://127.0.0.1:{port}"
        admin_key = secrets.token_urlsafe(16)
        requests_log = log_dir / "s3-requests.jsonl"
        gateway = _procs.start_module(
            "s3gw",
            "labcheck.sandbox.s3gw",
            {
                "host": "127.0.0.1",
                "port": port,
                "upstream": moto_url,
                "admin_key": admin_key,
                "bucket": BUCKET,
                "cloudwatch_endpoint": moto_url,
                **AWS,
                "requests_log": str(requests_log),
                "metrics_interval": 1,
                "size_interval": 1,
            },
            log_dir,
        )
        procs.append(gateway)
        _procs.wait_http(moto, moto_url + "/moto-api/", 60)
        _procs.wait_http(gateway, url + "/")
        creds = (AWS["aws_region"], AWS["aws_access_key_id"], AWS["aws_secret_access_key"])
        s3 = _procs.s3_client(url, *creds)
        s3.create_bucket(Bucket=BUCKET)
        yield Gateway(
            url=url,
            moto_url=moto_url,
            admin_key=admin_key,
            requests_log=requests_log,
            s3=s3,
            cloudwatch=_procs.cloudwatch_client(moto_url, *creds),
        )


@pytest.fixture(autouse=True)
def _healed(gw: Gateway) -> Iterator[None]:
    yield
    gw.heal()


def test_boto3_works_through_the_gateway(gw: Gateway) -> None:
    s3 = gw.s3
    key = "datasets/with space+plus/ä.jsonl"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b'{"a": 1}\n' * 100)
    assert s3.head_bucket(Bucket=BUCKET)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == 900
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b'{"a": 1}\n' * 100
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="datasets/")["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [(key, 900)]
    # Multipart (upload_fileobj splits above 8 MiB): ?uploads, ?partNumber=, ?uploadId=
    s3.upload_fileobj(io.BytesIO(bytes(9 * 1024 * 1024)), BUCKET, "big.bin")
    assert s3.head_object(Bucket=BUCKET, Key="big.bin")["ContentLength"] == 9 * 1024 * 1024
    s3.delete_object(Bucket=BUCKET, Key=key)
    s3.delete_object(Bucket=BUCKET, Key="big.bin")
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=BUCKET, Key="missing")
    assert err.value.response["Error"]["Code"] == "NoSuchKey"


def test_requests_are_logged(gw: Gateway) -> None:
    gw.s3.list_objects_v2(Bucket=BUCKET, Prefix="logged/")
    answer = httpx.get(f"{gw.url}/admin/requests", headers=gw.admin)
    assert answer.status_code == 200
    entries = answer.json()["requests"]
    last = entries[-1]
    assert (last["method"], last["path"], last["status"]) == ("GET", f"/{BUCKET}", 200)
    assert "prefix=logged%2F" in last["query"]
    assert {"ts", "method", "path", "query", "status"} <= set(last)
    assert any(e["method"] == "PUT" for e in entries)
    lines = [json.loads(line) for line in gw.requests_log.read_text().splitlines()]
    assert lines[-1] == last
    since = httpx.get(f"{gw.url}/admin/requests", params={"since": last["ts"]}, headers=gw.admin)
    assert since.json()["requests"][0]["ts"] >= last["ts"]
    assert not any(e["path"].startswith("/admin") for e in entries)


def test_admin_needs_the_key(gw: Gateway) -> None:
    assert httpx.post(f"{gw.url}/admin/faults/s3-outage").status_code == 403
    assert httpx.delete(f"{gw.url}/admin/faults", headers={"X-Admin-Key": "no"}).status_code == 403
    assert httpx.get(f"{gw.url}/admin/requests").status_code == 403
    unknown = httpx.post(f"{gw.url}/admin/faults/latency", headers=gw.admin)
    assert unknown.status_code == 404
    bad = httpx.post(f"{gw.url}/admin/faults/s3-outage", json={"mode": "500"}, headers=gw.admin)
    assert bad.status_code == 400


def test_outage_answers_slowdown_and_cloudwatch_counts_5xx(gw: Gateway) -> None:
    _procs.wait_for(lambda: gw.request_sum("AllRequests") > 0, 10, "AllRequests datapoints", 0.2)
    before = gw.request_sum("5xxErrors")
    gw.fault("s3-outage")
    assert httpx.get(f"{gw.url}/admin/faults", headers=gw.admin).json()["active"] == {
        "s3-outage": {"mode": "503"}
    }
    for _ in range(3):
        with pytest.raises(ClientError) as err:
            gw.s3.list_objects_v2(Bucket=BUCKET)
        assert err.value.response["Error"]["Code"] == "SlowDown"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    with pytest.raises(ClientError) as err:
        gw.s3.head_bucket(Bucket=BUCKET)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    _procs.wait_for(lambda: gw.request_sum("5xxErrors") >= before + 4, 10, "5xxErrors to rise", 0.2)
    gw.heal()
    assert gw.s3.list_objects_v2(Bucket=BUCKET)["ResponseMetadata"]["HTTPStatusCode"] == 200


@pytest.mark.parametrize(
    ("fault", "params", "code"),
    [
        ("s3-outage", {"mode": "403"}, "AccessDenied"),
        ("s3-forbidden", {}, "AccessDenied"),
        ("s3-outage", {"mode": "404"}, "NoSuchBucket"),
        ("s3-missing", {}, "NoSuchBucket"),
    ],
)
def test_client_error_modes_count_4xx(
    gw: Gateway, fault: str, params: dict[str, str], code: str
) -> None:
    before = gw.request_sum("4xxErrors")
    gw.fault(fault, **params)
    with pytest.raises(ClientError) as err:
        gw.s3.list_objects_v2(Bucket=BUCKET)
    assert err.value.response["Error"]["Code"] == code
    _procs.wait_for(lambda: gw.request_sum("4xxErrors") > before, 10, "4xxErrors to rise", 0.2)
    gw.heal()
    gw.s3.list_objects_v2(Bucket=BUCKET)


def test_reset_mode_drops_connections(gw: Gateway) -> None:
    gw.fault("s3-outage", mode="reset")
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        gw.s3.list_objects_v2(Bucket=BUCKET)
    # The admin endpoints still answer while S3 requests are dropped.
    gw.heal()
    gw.s3.list_objects_v2(Bucket=BUCKET)


def test_bucket_size_metric_follows_the_objects(gw: Gateway) -> None:
    size_dims = [
        {"Name": "BucketName", "Value": BUCKET},
        {"Name": "StorageType", "Value": "StandardStorage"},
    ]
    gw.s3.put_object(Bucket=BUCKET, Key="datasets/sized.bin", Body=bytes(123_457))

    def latest_size() -> float | None:
        points = sorted(gw.datapoints("BucketSizeBytes", size_dims), key=lambda p: p["Timestamp"])
        return points[-1]["Maximum"] if points else None

    _procs.wait_for(lambda: latest_size() == 123_457, 10, "BucketSizeBytes == 123457", 0.2)
    gw.s3.delete_object(Bucket=BUCKET, Key="datasets/sized.bin")
