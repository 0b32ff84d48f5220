"""The sandbox API's configuration (api.json), its name and logger: the bottom of the package."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from labcheck.sandbox.serve import load_config

# One logger for the whole API, named as when it was a single module.
log = logging.getLogger("labcheck.sandbox.api")

APP_NAME = "llm-research-api"


@dataclass
class ApiSettings:
    """The API's configuration, read from api.json."""

    dsn: str
    jwt_secret: str
    admin_key: str
    host: str = "127.0.0.1"
    port: int = 18080
    pool_min: int = 2
    pool_max: int = 10
    pool_timeout: float = 2.0
    statement_timeout_ms: int = 5000
    lock_timeout_ms: int = 3000
    s3_endpoint: str = "http://127.0.0.1:18900"
    cloudwatch_endpoint: str = "http://127.0.0.1:18901"
    bucket: str = "llm-research-datasets"
    aws_region: str = "us-east-1"
    aws_access_key_id: str = "testing"
    aws_secret_access_key: str = "testing"
    quota_bytes: int = 1024**3
    traffic_rps: float = 20.0
    traffic_concurrency: int = 0
    endpoints: int = 1  # endpoint sets: /experiments and /datasets, then under /s1 ... (flavours.endpoint_paths)
    state_dir: str = ""
    grant_select_to: list[str] = field(default_factory=list)
    # Which exporter library instruments the API (labcheck.sandbox.flavours.FLAVORS) and the
    # shape of its bodies (flavours.SHAPE_DEFAULTS).
    flavor: str = "playbook"
    readiness_components: str = "components"
    readiness_names: list[str] = field(default_factory=lambda: ["db", "auth", "storage"])
    experiments_shape: str = "experiments"
    # Where the API writes its access and error lines (applog.py); the Kubernetes stand-in serves
    # them as the API pods' logs. Empty: not written.
    app_log: str = ""

    @classmethod
    def load(cls, path: str | Path) -> ApiSettings:
        return load_config(cls, path, log)


def first_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
