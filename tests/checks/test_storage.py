"""The dataset storage checks: S3 failure classification and the write canary, then the live sandbox."""

from __future__ import annotations

from typing import Any

import pytest

from labcheck.components import storage as s3

CHECKS = "checks/storage.py"
DEFAULT_QUOTA = 1073741824  # the sandbox API's default quota_bytes
ALL_CHECKS = ("check_bucket_reachable", "check_bucket_below_quota", "check_bucket_usage_below_quota_ratio",
              "check_s3_request_errors[4xxErrors]", "check_s3_request_errors[5xxErrors]",
              "check_datasets_endpoint_answers", "check_write_canary")


# --- without the sandbox ---------------------------------------------------------------------


def _client_error(status: int, code: str, op: str = "HeadBucket") -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "m"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, op)


@pytest.mark.parametrize(("exc", "kind"), [
    (lambda: _client_error(403, "403"), "forbidden"),
    (lambda: _client_error(403, "AccessDenied"), "forbidden"),
    (lambda: _client_error(404, "NoSuchBucket"), "missing"),
    (lambda: _client_error(503, "SlowDown"), "outage"),
    (lambda: _client_error(500, "InternalError"), "outage"),
    (lambda: _client_error(301, "PermanentRedirect"), "error"),
    (lambda: __import__("botocore.exceptions").exceptions.EndpointConnectionError(endpoint_url="http://x"), "network"),
    (lambda: __import__("botocore.exceptions").exceptions.ConnectTimeoutError(endpoint_url="http://x"), "network"),
    (lambda: __import__("botocore.exceptions").exceptions.ReadTimeoutError(endpoint_url="http://x"), "network"),
    (lambda: __import__("botocore.exceptions").exceptions.ConnectionClosedError(endpoint_url="http://x"), "network"),
])
def test_s3_failures_are_told_apart(exc: Any, kind: str) -> None:
    assert s3.classify(exc()).kind == kind


@pytest.mark.parametrize(("kind", "facts"), [
    ("ok", {"permissions": False, "network_issue": False, "aws_outage": False}),
    ("forbidden", {"permissions": True, "network_issue": False, "aws_outage": False}),
    ("network", {"network_issue": True, "permissions": False}),
    ("outage", {"aws_outage": True, "network_issue": False, "permissions": False}),
])
def test_reachability_establishes_the_scenario_conditions(kind: str, facts: dict[str, bool]) -> None:
    assert s3.Reach("b", "e", kind, 0.1).facts == facts


class FakeS3:
    """An in-memory bucket whose operations can be made to fail."""

    def __init__(self, fail: dict[str, Exception] | None = None) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail = fail or {}
        self.calls: list[str] = []

    def _maybe_fail(self, op: str) -> None:
        self.calls.append(op)
        if op in self.fail:
            raise self.fail[op]

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **_: Any) -> None:  # noqa: N803
        self._maybe_fail("put")
        self.objects[Key] = Body

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        self._maybe_fail("get")
        body = self.objects[Key]

        class Body:
            @staticmethod
            def read() -> bytes:
                return body if "corrupt" not in self.fail else body[::-1] + b"x"

        return {"Body": Body()}

    def delete_object(self, *, Bucket: str, Key: str) -> None:  # noqa: N803
        self._maybe_fail("delete")
        self.objects.pop(Key, None)


def test_canary_round_trip_leaves_nothing() -> None:
    client = FakeS3()
    result = s3.run_canary(client, "b")
    assert result.ok, result.failure
    assert client.calls == ["put", "get", "delete"]
    assert result.key.startswith("labcheck-canary/")
    assert client.objects == {}


@pytest.mark.parametrize("failing", ["get", "corrupt"])
def test_canary_deletes_its_object_when_a_later_step_fails(failing: str) -> None:
    client = FakeS3({failing: _client_error(503, "SlowDown", "GetObject")})
    result = s3.run_canary(client, "b")
    assert not result.ok
    assert client.calls[-1] == "delete"
    assert client.objects == {}
    assert not result.left_behind


def test_canary_reports_an_object_it_could_not_delete() -> None:
    client = FakeS3({"delete": _client_error(503, "SlowDown", "DeleteObject")})
    result = s3.run_canary(client, "b")
    assert not result.ok and result.left_behind
    assert "delete failed" in (result.failure or "")


def test_canary_after_a_refused_put_has_nothing_to_leave() -> None:
    client = FakeS3({"put": _client_error(403, "AccessDenied", "PutObject"),
                     "delete": _client_error(403, "AccessDenied", "DeleteObject")})
    result = s3.run_canary(client, "b")
    assert result.failure and result.failure.startswith("put failed: HTTP 403")
    assert result.failure_kind == "forbidden"  # the facade applies the reach check's 403 rule to it
    assert not result.left_behind
    assert client.calls == ["put", "delete"]


def test_canary_is_deselected_unless_asked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_w="""
        import pytest

        @pytest.mark.sev2
        @pytest.mark.storage
        @pytest.mark.writes
        def check_writer(canary_enabled):
            assert canary_enabled

        @pytest.mark.sev4
        @pytest.mark.docs
        def check_reader():
            pass
    """)
    base = ("-p", "no:cacheprovider", "--no-sandbox", "-o", "python_functions=check_*",
            "--reports-dir", str(pytester.path / "r"), "test_w.py")
    pytester.runpytest_subprocess(*base).assert_outcomes(passed=1, deselected=1)
    pytester.runpytest_subprocess(*base, "-m", "writes").assert_outcomes(passed=1, deselected=1)
    pytester.runpytest_subprocess(*base, "--set", "canary_writes=true").assert_outcomes(passed=2)
    pytester.runpytest_subprocess(*base, "-m", "not writes").assert_outcomes(passed=1, deselected=1)


# --- against the live sandbox ----------------------------------------------------------------


def _args(*extra: str) -> tuple[str, ...]:
    return (CHECKS, *extra)


def _quota(sandbox: Any) -> int:
    return int(sandbox.settings.get("s3_quota_bytes") or DEFAULT_QUOTA)


def _explicit_targets(sandbox: Any, *keys: str) -> tuple[str, ...]:
    """Sandbox settings as explicit --set targets: the sandbox state (and its quota) is then ignored."""
    out: list[str] = []
    for key in keys:
        out += ["--set", f"{key}={sandbox.settings[key]}"]
    return tuple(out)


def _canary_objects(sandbox: Any) -> list[str]:
    """Objects under labcheck-canary/, read from moto directly (not through the faulty gateway)."""
    import boto3

    s = sandbox.settings
    client = boto3.client("s3", endpoint_url=sandbox.state["services"]["moto"]["url"],
                          aws_access_key_id=s["aws_access_key_id"],
                          aws_secret_access_key=s["aws_secret_access_key"], region_name=s["aws_region"])
    listing = client.list_objects_v2(Bucket=s["s3_bucket"], Prefix=s3.CANARY_PREFIX)
    return [o["Key"] for o in listing.get("Contents", [])]


def test_healthy_sandbox_passes_every_storage_check(healed: Any) -> None:
    # Errors from earlier outage tests stay in CloudWatch for the playbook's hour: look back 1 minute.
    run = healed.wait_for(lambda r: all(r.outcome(c) == "passed" for c in ALL_CHECKS),
                          *_args("--set", "canary_writes=true", "--set", "s3_error_window=1m"),
                          deadline_s=150, what="every storage check passing")
    assert run.check("check_bucket_reachable")["facts"] == {"permissions": False, "network_issue": False,
                                                            "aws_outage": False}
    assert run.check("check_bucket_usage_below_quota_ratio")["facts"] == {"quota_exceeded": False}
    assert _canary_objects(healed) == []


def test_write_canary_does_not_run_by_default(healed: Any) -> None:
    run = healed.run_checks(*_args())
    assert not [c for c in run.triage["checks"] if "check_write_canary" in c["nodeid"]]
    assert "deselected" in run.stdout


def test_quota_is_unknown_without_a_quota(healed: Any) -> None:
    run = healed.run_checks(CHECKS, "-k", "quota", *_explicit_targets(healed, "prometheus_url"),
                            "--set", "s3_quota_series=no_such_series")
    for name in ("check_bucket_below_quota", "check_bucket_usage_below_quota_ratio"):
        assert run.outcome(name) == "unknown"
        assert "s3_quota_bytes is not configured and Prometheus has no no_such_series" in run.check(name)["message"]


def test_quota_falls_back_to_the_applications_gauge(healed: Any) -> None:
    run = healed.run_checks(CHECKS, "-k", "ratio", *_explicit_targets(
        healed, "prometheus_url", "s3_bucket", "s3_endpoint", "aws_region", "aws_access_key_id",
        "aws_secret_access_key"))
    check = run.check("check_bucket_usage_below_quota_ratio")
    assert check["outcome"] == "passed"
    assert "from Prometheus storage_quota_bytes" in check["observed"][0]["threshold"]


def test_configured_quota_wins_over_the_gauge(healed: Any) -> None:
    quota = _quota(healed)
    run = healed.run_checks(CHECKS, "-k", "ratio", "--set", f"s3_quota_bytes={quota // 2}")
    observed = run.check("check_bucket_usage_below_quota_ratio")["observed"][0]
    assert f"{quota / 2 / 2**30:.2f} GiB" in observed["observed"]
    assert "from s3_quota_bytes (command line --set s3_quota_bytes)" in observed["threshold"]


@pytest.mark.parametrize(("mode", "fact", "words"), [
    ("503", "aws_outage", "AWS outage"),
    ("403", "permissions", "IAM roles"),
    ("404", None, "does not exist"),
    ("reset", "network_issue", "VPC endpoints"),
])
def test_s3_outage_fails_reachability_with_its_cause(healed: Any, mode: str, fact: str | None,
                                                     words: str) -> None:
    healed.fault("s3-outage", mode=mode)
    metric = {"503": "5xxErrors", "403": "4xxErrors", "404": "4xxErrors"}.get(mode)
    wanted = ["check_bucket_reachable", "check_datasets_endpoint_answers", "check_write_canary"]
    if metric:
        wanted.append(f"check_s3_request_errors[{metric}]")
    run = healed.wait_for(lambda r: all(r.outcome(c) == "failed" for c in wanted),
                          *_args("--set", "canary_writes=true"), deadline_s=60,
                          what=f"storage checks failing under s3-outage mode={mode}")
    assert "storage-failure" in run.scenario_ids()
    assert run.triage["probable_cause"]["scenario"] == "storage-failure"
    reach = run.check("check_bucket_reachable")
    assert words in reach["message"]
    if fact:
        assert reach["facts"][fact] is True
        assert any(step.get("when") == fact for step in run.triage["next_steps"])
    assert _canary_objects(healed) == []


def test_quota_full_fails_the_quota_checks(healed: Any) -> None:
    healed.fault("quota-full")  # fills the bucket to 95% of its quota
    run = healed.wait_for(lambda r: r.outcome("check_bucket_usage_below_quota_ratio") == "failed",
                          *_args("-k", "quota"), deadline_s=60, what="quota ratio check failing")
    assert run.outcome("check_bucket_below_quota") == "passed"  # 95% is not over the quota yet
    assert "storage-failure" in run.scenario_ids()
    assert run.triage["facts"]["quota_exceeded"] is True
    assert any(step.get("when") == "quota_exceeded" and step["condition"] == "true"
               for step in run.triage["next_steps"])
    # Over the quota (the same bucket against a smaller quota): uploads fail, SEV-2.
    over = healed.run_checks(CHECKS, "-k", "quota", "--set", f"s3_quota_bytes={int(_quota(healed) * 0.9)}")
    assert over.outcome("check_bucket_below_quota") == "failed"
    assert over.triage["severity"] == "SEV-2"


# --- labcheck's own access, and no stale pass ------------------------------------------------

TARGET_KEYS = ("api_url", "prometheus_url", "s3_endpoint", "cloudwatch_endpoint", "aws_region",
               "aws_access_key_id", "aws_secret_access_key")


def _clients(sandbox: Any) -> tuple[Any, Any]:
    import boto3

    s = sandbox.settings
    kw = {"aws_access_key_id": s["aws_access_key_id"], "aws_secret_access_key": s["aws_secret_access_key"],
          "region_name": s["aws_region"]}
    return (boto3.client("s3", endpoint_url=s["s3_endpoint"], **kw),
            boto3.client("cloudwatch", endpoint_url=s["cloudwatch_endpoint"], **kw))


def _size_reading(cloudwatch: Any, bucket: str, value: float, age_s: float) -> None:
    from datetime import UTC, datetime, timedelta

    cloudwatch.put_metric_data(Namespace="AWS/S3", MetricData=[{
        "MetricName": "BucketSizeBytes", "Value": value, "Unit": "Bytes",
        "Timestamp": datetime.now(UTC) - timedelta(seconds=age_s),
        "Dimensions": [{"Name": "BucketName", "Value": bucket}, {"Name": "StorageType", "Value": "StandardStorage"}]}])


def test_a_deleted_bucket_never_passes_the_quota_checks_on_an_older_reading(healed: Any) -> None:
    import secrets

    bucket = f"labcheck-deleted-{secrets.token_hex(4)}"
    s3_client, cloudwatch = _clients(healed)
    # The bucket existed and CloudWatch measured it; then it was deleted.
    s3_client.create_bucket(Bucket=bucket)
    s3_client.put_object(Bucket=bucket, Key="d.bin", Body=b"0" * 1000)
    _size_reading(cloudwatch, bucket, 1000.0, 60)
    s3_client.delete_object(Bucket=bucket, Key="d.bin")
    s3_client.delete_bucket(Bucket=bucket)
    run = healed.run_checks(CHECKS, "-k", "reachable or quota", "--s3-bucket", bucket,
                            "--set", f"s3_quota_bytes={_quota(healed)}", *_explicit_targets(healed, *TARGET_KEYS))
    assert run.outcome("check_bucket_reachable") == "failed"
    for name in ("check_bucket_below_quota", "check_bucket_usage_below_quota_ratio"):
        check = run.check(name)
        assert check["outcome"] == "unknown", check
        assert "HTTP 404" in check["message"] and "CloudWatch BucketSizeBytes from" in check["message"]
        assert "cannot count" in check["message"]


def test_a_size_reading_older_than_its_window_is_unknown(healed: Any) -> None:
    import secrets

    bucket = f"labcheck-old-reading-{secrets.token_hex(4)}"
    s3_client, cloudwatch = _clients(healed)
    s3_client.create_bucket(Bucket=bucket)
    try:
        _size_reading(cloudwatch, bucket, 1000.0, 3 * 3600)  # three hours old
        base = (CHECKS, "-k", "quota", "--s3-bucket", bucket, "--set", "s3_list_max_objects=0",
                "--set", f"s3_quota_bytes={_quota(healed)}", *_explicit_targets(healed, *TARGET_KEYS))
        fresh_enough = healed.run_checks(*base)  # within the default 2d
        assert fresh_enough.outcome("check_bucket_below_quota") == "passed"
        stale = healed.run_checks(*base, "--set", "s3_size_max_age=1h")
        for name in ("check_bucket_below_quota", "check_bucket_usage_below_quota_ratio"):
            check = stale.check(name)
            assert check["outcome"] == "unknown" and "s3_size_max_age" in check["message"], check
    finally:
        s3_client.delete_bucket(Bucket=bucket)


ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                 b"<Message>Access Denied</Message></Error>", "application/xml")


def test_access_denied_to_labcheck_alone_is_unknown(healed: Any) -> None:
    from standin import StandIn

    refusing = StandIn(lambda path, query: (403, ACCESS_DENIED))  # S3 refuses labcheck's credentials
    try:
        keys = [k for k in TARGET_KEYS if k != "s3_endpoint"]
        run = healed.run_checks(CHECKS, "-k", "reachable", "--s3-bucket", healed.settings["s3_bucket"],
                                "--set", f"s3_endpoint={refusing.url}", *_explicit_targets(healed, *keys))
    finally:
        refusing.close()
    reach = run.check("check_bucket_reachable")
    assert reach["outcome"] == "unknown", reach
    assert "labcheck's own credentials" in reach["message"] and "reports storage status 'ok'" in reach["message"]
    assert run.triage["severity"] is None


@pytest.mark.parametrize(("platform_storage", "outcome", "text"), [
    ("ok", "unknown", "labcheck's own credentials"),
    ("error", "failed", "put failed: HTTP 403"),
])
def test_access_denied_in_the_write_canary_follows_the_reach_rule(healed: Any, platform_storage: str, outcome: str,
                                                                   text: str) -> None:
    from standin import StandIn

    refusing = StandIn(lambda path, query: (403, ACCESS_DENIED))  # S3 refuses every write of labcheck's
    # The platform's readiness: the sandbox API's (storage ok), or one that reports storage failing too.
    api = StandIn(lambda path, query: (200, {"status": "degraded", "components": {
        "storage": {"status": platform_storage, "detail": "AccessDenied"}}}))
    try:
        keys = [k for k in TARGET_KEYS if k not in ("s3_endpoint", "api_url")]
        run = healed.run_checks(CHECKS, "-m", "writes", "-k", "write_canary",
                                "--s3-bucket", healed.settings["s3_bucket"], "--set", f"s3_endpoint={refusing.url}",
                                "--set", f"api_url={api.url if platform_storage != 'ok' else healed.settings['api_url']}",
                                *_explicit_targets(healed, *keys))
    finally:
        refusing.close()
        api.close()
    check = run.check("check_write_canary")
    assert check["outcome"] == outcome, check
    assert text in (check["message"] or ""), check
    if outcome == "unknown":
        assert "reports storage status 'ok'" in check["message"] and run.triage["severity"] is None
    else:
        assert run.triage["severity"] == "SEV-2" and run.triage["probable_cause"]["scenario"] == "storage-failure"
