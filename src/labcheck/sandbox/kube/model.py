"""The stand-in's model: settings, the workloads it runs, the cluster state, time and id helpers."""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
import zlib
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]

K8S_VERSION = "v1.31.4"
HOUR = 3600.0
DAY = 86400.0
SECRET_NAME = "llm-research-secrets"
CLIENT_USER = "system:serviceaccount:llm-research:labcheck"
API = "llm-research-api"
WORKERS = "experiment-workers"
NODES = ("node-a", "node-b")
_SAFE = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet Kubernetes uses for generated names


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class KubeConfig:
    """The stand-in's settings, read from the JSON file the sandbox manager writes."""

    admin_key: str
    token: str
    jwt_secret: str
    host: str = "127.0.0.1"
    port: int = 18443
    namespace: str = "llm-research"
    requests_log: str | None = None
    planted: dict[str, str] = field(default_factory=dict)
    tls_cert: str | None = None  # both set: serve HTTPS (created self-signed if missing)
    tls_key: str | None = None
    api_log: str | None = None  # the sandbox API's log file, served as the API pods' logs
    endpoints: int = 1  # `up --endpoints N`: N times the API's pods

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert and self.tls_key else "http"

    @classmethod
    def load(cls, path: str) -> KubeConfig:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object")
        missing = [k for k in ("admin_key", "token", "jwt_secret") if not raw.get(k)]
        if missing:
            raise ValueError(f"{path}: missing {', '.join(missing)}")
        planted = raw.get("planted") or {}
        return cls(
            admin_key=str(raw["admin_key"]),
            token=str(raw["token"]),
            jwt_secret=str(raw["jwt_secret"]),
            host=str(raw.get("host", "127.0.0.1")),
            port=int(raw.get("port", 18443)),
            namespace=str(raw.get("namespace", "llm-research")),
            requests_log=raw.get("requests_log") or None,
            planted={str(k): str(v) for k, v in planted.items()},
            tls_cert=raw.get("tls_cert") or None,
            tls_key=raw.get("tls_key") or None,
            api_log=raw.get("api_log") or None,
            endpoints=max(1, int(raw.get("endpoints", 1))),
        )


# --------------------------------------------------------------------------- time and id helpers


def ts(t: float) -> str:
    """RFC 3339 with seconds, as Kubernetes serialises metav1.Time."""
    return datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ts_ms(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def ts_nano(t: float) -> str:
    """RFC 3339 with nanoseconds, as the kubelet prefixes log lines (timestamps=true)."""
    whole = math.floor(t)
    nanos = int(round((t - whole) * 1e9)) % 1_000_000_000
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def parse_ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = s // 3600
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{h // 24}d{h % 24}h" if h % 24 else f"{h // 24}d"
    if h < 24 * 365 * 2:
        return f"{h // 24}d"
    if h < 24 * 365 * 8:
        y, d = h // (24 * 365), (h // 24) % 365
        return f"{y}y{d}d" if d else f"{y}y"
    return f"{h // (24 * 365)}y"


def uid_for(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "labcheck-sandbox/" + "/".join(parts)))


def safe_suffix(seed: str, n: int) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(_SAFE[b % len(_SAFE)] for b in digest[:n])


def hexid(seed: str, n: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:n]


def container_id(pod_name: str, n: int) -> str:
    """The runtime's id of a pod's n-th container instance."""
    return "containerd://" + hashlib.sha256(f"{pod_name}:{n}".encode()).hexdigest()


def object_meta(kind: str, name: str, created: float, namespace: str | None = None) -> Obj:
    """An object's metadata: name, a uid derived from kind and name, creation time, namespace."""
    meta: Obj = {"name": name, "uid": uid_for(kind, name), "creationTimestamp": ts(created)}
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


def content_rv(content: str) -> str:
    """A resourceVersion derived from content: it changes when the content does."""
    return str(1_000_000 + zlib.crc32(content.encode()) % 90_000_000)


def with_rv(obj: Obj) -> Obj:
    """Give an object a resourceVersion derived from its content (changes when it changes)."""
    meta = obj["metadata"]
    meta.pop("resourceVersion", None)
    meta["resourceVersion"] = content_rv(json.dumps(obj, sort_keys=True))
    return obj


# --------------------------------------------------------------------------- the cluster model


@dataclass(frozen=True)
class AppSpec:
    name: str
    container: str
    repo: str
    port: int
    probe_path: str
    replicas: int
    limits: dict[str, str]
    requests: dict[str, str]
    revisions: tuple[tuple[str, float, str], ...]  # (tag, age at boot, change-cause)
    nodes: tuple[str, ...]
    created_ago: float


APPS: dict[str, AppSpec] = {
    API: AppSpec(
        name=API,
        container="api",
        repo="registry.example/llm-research-api",
        port=8080,
        probe_path="/health/ready",
        replicas=3,
        limits={"cpu": "1", "memory": "2Gi"},
        requests={"cpu": "500m", "memory": "1Gi"},
        revisions=(
            ("v1.2.0", 61 * DAY, "release v1.2.0"),
            ("v1.3.1", 23 * DAY, "release v1.3.1: dataset pagination"),
            ("v1.4.0", 2 * DAY, "release v1.4.0: experiment scheduler v2"),
        ),
        nodes=("node-a", "node-b", "node-a"),
        created_ago=180 * DAY,
    ),
    WORKERS: AppSpec(
        name=WORKERS,
        container="worker",
        repo="registry.example/experiment-workers",
        port=9090,
        probe_path="/healthz",
        replicas=2,
        limits={"cpu": "4", "memory": "8Gi"},
        requests={"cpu": "2", "memory": "4Gi"},
        revisions=(
            ("v2.6.0", 75 * DAY, "release v2.6.0"),
            ("v2.7.3", 45 * DAY, "release v2.7.3: checkpoint streaming"),
        ),
        nodes=("node-a", "node-b"),
        created_ago=180 * DAY,
    ),
}


@dataclass(frozen=True)
class Revision:
    number: int
    image: str
    created: float
    change_cause: str
    rs_hash: str

    def rs_name(self, app: str) -> str:
        return f"{app}-{self.rs_hash}"


@dataclass
class Run:
    """One instance of a container (the kubelet's unit of logs and restarts)."""

    started: float
    finished: float | None = None
    reason: str = ""
    exit_code: int = 0
    kind: str = "normal"  # normal | crash | oom
    container_id: str = ""


@dataclass
class PodModel:
    app: AppSpec
    index: int
    name: str
    uid: str
    revision: Revision
    node: str
    ip: str
    created: float
    restart_count: int
    current: Run | None  # None while waiting (CrashLoopBackOff)
    previous: Run | None
    waiting_reason: str = ""
    waiting_message: str = ""
    container_ready: bool = True
    container_ready_since: float = 0.0
    pod_ready_override: tuple[bool, float, str] | None = None  # node controller's verdict

    @property
    def pod_ready(self) -> tuple[bool, float]:
        if self.pod_ready_override is not None and self.container_ready:
            return self.pod_ready_override[0], self.pod_ready_override[1]
        return self.container_ready, self.container_ready_since


@dataclass(frozen=True)
class Fault:
    name: str
    since: float
    params: dict[str, Any]


@dataclass
class Snapshot:
    now: float
    namespace: str
    pods: list[PodModel]
    objects: dict[str, list[Obj]]  # resource -> objects (all namespaces)
    faults: dict[str, Fault]


class Cluster:
    """The cluster's state: its settings, its boot instant (the baseline's clock), its faults.

    Everything else derives from it: objects.snapshot() builds the objects, faults.inject() and
    faults.heal() change the faults, logs.pod_log() writes a container's log.
    """

    def __init__(self, cfg: KubeConfig, boot: float | None = None) -> None:
        self.cfg = cfg
        # The apps it runs: the API scaled with its endpoint sets (N times the pods, N times their series).
        api = APPS[API]
        self.apps = {**APPS, API: replace(api, replicas=api.replicas * cfg.endpoints)}
        self.boot = float(int(boot if boot is not None else time.time()))
        self.faults: dict[str, Fault] = {}
