"""The sandbox platform API's test stack: its processes' configs and what tests need to reach them."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _procs
import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from labcheck.sandbox.api import sign_token

APP_ROLE = "llm_app"
DB_NAME = "llm_research"
BUCKET = "llm-research-datasets"
POOL_MAX = 10
MAX_CONNECTIONS = 40
QUOTA = 32 * 1024 * 1024
AWS = {
    "aws_region": "us-east-1",
    "aws_access_key_id": "AKIATEST",
    "aws_secret_access_key": "x" * 40,
}


@dataclass
class Stack:
    """The processes of one test module, and what the tests need to reach them."""

    api_url: str
    s3gw_url: str
    moto_url: str
    admin_key: str
    jwt_secret: str
    pg: _procs.Postgres
    app_dsn: str
    api_config: dict[str, Any]
    log_dir: Path
    client: httpx.Client
    # What /health/ready and /health answered before PostgreSQL was up (test_platform_api).
    early_ready: tuple[int, dict[str, Any]] = (0, {})
    early_health: int = 0

    @property
    def admin(self) -> dict[str, str]:
        return {"X-Admin-Key": self.admin_key}

    def token(self, secret: str | None = None, ttl: int = 600) -> dict[str, str]:
        return {"Authorization": f"Bearer {sign_token(secret or self.jwt_secret, ttl_seconds=ttl)}"}

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, **kw)

    def fault(self, name: str, **params: Any) -> dict[str, Any]:
        resp = self.client.post(
            f"/admin/faults/{name}", json=params, headers=self.admin, timeout=60
        )
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def heal(self) -> dict[str, Any]:
        resp = self.client.delete("/admin/faults", headers=self.admin, timeout=60)
        assert resp.status_code == 200, resp.text
        httpx.delete(f"{self.s3gw_url}/admin/faults", headers=self.admin, timeout=10)
        return dict(resp.json())

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        """A query as the superuser, on a connection of its own."""
        with psycopg.connect(self.pg.superuser_dsn(DB_NAME), autocommit=True) as conn:
            return conn.execute(query, args or None).fetchall()

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = self.get("/metrics").text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out


def metric(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class Services:
    """moto and the S3 gateway (started, not yet waited for), the admin key, and PostgreSQL once
    the caller has started it: what `services()` stops at exit."""

    log_dir: Path
    admin_key: str
    procs: list[_procs.Proc]
    storage: list[_procs.Proc]
    moto_url: str
    s3gw_url: str
    pg: _procs.Postgres | None = None
    dsn: str = ""  # the application role's DSN, once created

    def wait_storage(self) -> None:
        wait_storage(self.storage, self.moto_url, self.s3gw_url)


@contextlib.contextmanager
def services(log_dir: Path) -> Iterator[Services]:
    """Start moto and the S3 gateway; at exit stop them, what was added to `procs`, and `pg`."""
    procs: list[_procs.Proc] = []
    run: Services | None = None
    try:
        with _procs.stopping(procs):
            admin_key = secrets.token_urlsafe(16)
            storage, moto_url, s3gw_url = start_storage(log_dir, admin_key)
            procs.extend(storage)
            run = Services(log_dir, admin_key, procs, storage, moto_url, s3gw_url)
            yield run
    finally:
        if run is not None and run.pg is not None:
            run.pg.stop()


def start_storage(log_dir: Path, admin_key: str) -> tuple[list[_procs.Proc], str, str]:
    """moto and the S3 gateway in front of it, not waited for: (processes, moto URL, s3gw URL)."""
    moto, moto_url = _procs.start_moto(log_dir, wait=False)
    s3gw_port = _procs.free_port()
    s3gw_url = f"http://127.0.0.1:{s3gw_port}"
    s3gw = _procs.start_module(
        "s3gw",
        "labcheck.sandbox.s3gw",
        {
            "host": "127.0.0.1",
            "port": s3gw_port,
            "upstream": moto_url,
            "admin_key": admin_key,
            "bucket": BUCKET,
            "cloudwatch_endpoint": moto_url,
            **AWS,
            "requests_log": str(log_dir / "s3-requests.jsonl"),
        },
        log_dir,
    )
    return [moto, s3gw], moto_url, s3gw_url


def wait_storage(procs: list[_procs.Proc], moto_url: str, s3gw_url: str) -> None:
    moto, s3gw = procs
    _procs.wait_http(moto, moto_url + "/moto-api/")
    _procs.wait_http(s3gw, s3gw_url + "/")


def api_config(
    *, port: int, dsn: str, moto_url: str, s3gw_url: str, jwt_secret: str, admin_key: str,
    log_dir: Path, **extra: Any,
) -> dict[str, Any]:
    """api.json for an API on port against those services (extra: flavor, shapes, ...)."""
    return {
        "host": "127.0.0.1",
        "port": port,
        "dsn": dsn,
        "pool_min": 2,
        "pool_max": POOL_MAX,
        "pool_timeout": 1.0,
        "s3_endpoint": s3gw_url,
        "cloudwatch_endpoint": moto_url,
        "bucket": BUCKET,
        **AWS,
        "jwt_secret": jwt_secret,
        "admin_key": admin_key,
        "quota_bytes": QUOTA,
        "traffic_rps": 20,
        "state_dir": str(log_dir),
        "app_log": str(log_dir / "api-app.log"),
        **extra,
    }


def new_secret() -> str:
    return secrets.token_urlsafe(32)
