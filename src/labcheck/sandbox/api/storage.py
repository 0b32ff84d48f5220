"""The sandbox API's S3 side: the datasets bucket, its seed, its probe and the quota fillers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError
from starlette.concurrency import run_in_threadpool

from labcheck.sandbox.api.settings import ApiSettings, first_line, log

FILLER_PREFIX = "datasets/filler-"
FILLER_CHUNK = 64 * 1024 * 1024


class Storage:
    """Two S3 clients on the datasets bucket: one for requests, one quick one for readiness."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.ready = False
        self.s3 = self._client(
            connect_timeout=2,
            read_timeout=30,
            retries={"total_max_attempts": 2, "mode": "standard"},
            max_pool_connections=32,
        )
        self.s3_probe = self._client(
            connect_timeout=1,
            read_timeout=2,
            retries={"total_max_attempts": 1, "mode": "standard"},
        )

    def _client(self, **timeouts: Any) -> Any:
        """An S3 client on the configured endpoint: path-style, checksums only when required."""
        s = self.settings
        return boto3.session.Session().client(
            "s3",
            config=BotoConfig(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                **timeouts,
            ),
            endpoint_url=s.s3_endpoint,
            region_name=s.aws_region,
            aws_access_key_id=s.aws_access_key_id,
            aws_secret_access_key=s.aws_secret_access_key,
        )

    async def bootstrap(self) -> None:
        """Create the bucket and a few datasets if the bucket is missing or empty."""
        while True:
            try:
                await run_in_threadpool(self._ensure_bucket)
                self.ready = True
                return
            except Exception as exc:  # noqa: BLE001
                log.info("storage not ready yet: %s", first_line(exc))
                await asyncio.sleep(1.0)

    def _ensure_bucket(self) -> None:
        bucket = self.settings.bucket
        try:
            self.s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
            with contextlib.suppress(ClientError):
                self.s3.create_bucket(Bucket=bucket)
        listing = self.s3.list_objects_v2(Bucket=bucket, MaxKeys=1)
        if listing.get("KeyCount", 0) == 0:
            for key, body in _seed_datasets():
                self.s3.put_object(Bucket=bucket, Key=key, Body=body)

    async def check(self) -> tuple[bool, str]:
        def probe() -> None:
            self.s3_probe.head_bucket(Bucket=self.settings.bucket)

        try:
            await asyncio.wait_for(run_in_threadpool(probe), 4.0)
            return True, f"head_bucket {self.settings.bucket} ok"
        except ClientError as exc:
            err = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return False, f"head_bucket failed: HTTP {status} {err.get('Code', '')}".strip()
        except TimeoutError:
            return False, "head_bucket timeout"
        except Exception as exc:  # noqa: BLE001
            return False, f"head_bucket failed: {first_line(exc)}"

    def list_objects(self, prefix: str = "") -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.settings.bucket, Prefix=prefix):
            out.extend(page.get("Contents", []))
        return out

    def fill_bucket(self, fraction: float) -> dict[str, Any]:
        """Fillers of zeros up to `fraction` of the quota: one upload, then server-side copies."""
        bucket = self.settings.bucket
        quota = self.settings.quota_bytes
        used = sum(int(o["Size"]) for o in self.list_objects())
        needed = max(0, math.ceil(fraction * quota) - used)
        count = math.ceil(needed / FILLER_CHUNK)
        size = needed // count if count else 0
        keys = [f"{FILLER_PREFIX}{i:04d}.bin" for i in range(count)]
        if keys:
            self.s3.put_object(Bucket=bucket, Key=keys[0], Body=bytes(size))
        source = {"Bucket": bucket, "Key": keys[0]} if keys else {}
        for key in keys[1:]:  # server-side copies: no bytes through the gateway
            self.s3.copy_object(Bucket=bucket, Key=key, CopySource=source)
        rest = needed - size * count
        if rest:
            keys.append(f"{FILLER_PREFIX}{count:04d}.bin")
            self.s3.put_object(Bucket=bucket, Key=keys[-1], Body=bytes(rest))
        return {
            "quota_bytes": quota,
            "used_bytes": used + needed,
            "uploaded_bytes": needed,
            "objects": len(keys),
        }

    def delete_fillers(self) -> None:
        for obj in self.list_objects(prefix=FILLER_PREFIX):
            self.s3.delete_object(Bucket=self.settings.bucket, Key=obj["Key"])


def _seed_datasets() -> list[tuple[str, bytes]]:
    rows = [
        json.dumps({"instruction": f"Summarise paragraph {i}.", "output": "..."}) for i in range(60)
    ]
    jsonl = ("\n".join(rows) + "\n").encode()
    return [
        ("datasets/alpaca-cleaned/train.jsonl", jsonl),
        ("datasets/alpaca-cleaned/README.md", b"# alpaca-cleaned\nInstruction tuning set.\n"),
        ("datasets/mmlu/test.jsonl", jsonl[: len(jsonl) // 2]),
    ]
