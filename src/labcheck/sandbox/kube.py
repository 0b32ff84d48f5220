"""Kubernetes API stand-in for the labcheck sandbox: a read-only, fault-injectable fake apiserver."""

# Why not kmock (evaluated, v0.8): it is an aiohttp test DSL meant to run inside the test's
# own event loop, storing objects as static JSON. It has no label/field selectors, no
# server-side Table printing (what `kubectl get` asks for), no pods/log, no token enforcement
# (Authorization is only a request-matching criterion), and no way to derive object state from
# the clock (restart counts that rise while a fault is active). All of that would be custom
# code on top of it, plus aiohttp as a new dependency, so this is a Starlette app instead.
# Cluster state here is a pure function of (baseline, active faults, clock): every read is
# consistent, and heal is exact.
#
# Behaviour notes:
# - Transport: plain HTTP by default. kubectl (client-go) never sends a bearer token to an
#   http:// server, so for kubectl set tls_cert/tls_key in the config (a self-signed cert is
#   created there if missing) and pass ca_file=tls_cert to write_kubeconfig.
# - Auth: every path except /healthz, /livez, /readyz needs the bearer token (401 Status);
#   /admin/* needs X-Admin-Key instead (403) and is neither logged nor affected by faults.
# - Read-only: any non-GET method answers 405 MethodNotAllowed (and is logged).
# - watch=true streams real watch events: ADDED per object (unless the client resumes with a
#   resourceVersion), then ADDED/MODIFIED/DELETED as the clock or faults change objects,
#   until timeoutSeconds (default 30, max 300). With Accept as=Table it streams Table rows.
# - Faults: crash-loop hits the first llm-research-api pod, oom-killed the second, and
#   node-not-ready node-b (its pods turn Ready=False, no eviction). Every fault takes
#   started_ago=<seconds> to backdate its start.
# - Heal drops the faults, so objects return exactly to the baseline, including after
#   recent-rollout: revision 3, two days old, and no trace of the rollout.
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import random
import re
import secrets
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from labcheck.sandbox.serve import admin_key_ok, fault_params

log = logging.getLogger("labcheck.sandbox.kube")

Obj = dict[str, Any]

K8S_VERSION = "v1.31.4"
MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
LOG_WINDOW = 30 * MINUTE  # the stand-in's logs reach back this far
LOG_STEP = 15.0  # one ordinary log line per container every LOG_STEP seconds
PLANT_PERIOD = 1800.0  # each planted secret line appears once per PLANT_PERIOD
SECRET_NAME = "llm-research-secrets"
CLIENT_USER = "system:serviceaccount:llm-research:labcheck"
API = "llm-research-api"
WORKERS = "experiment-workers"
NODES = ("node-a", "node-b")
HEALTH_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
_SAFE = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet Kubernetes uses for generated names

FAULTS: dict[str, str] = {
    "crash-loop": "an llm-research-api pod in CrashLoopBackOff, restarts rising (params: interval=10)",
    "oom-killed": "an llm-research-api container was OOMKilled (exit 137) just now",
    "node-not-ready": "node-b Ready=False (KubeletNotReady) and MemoryPressure=True",
    "recent-rollout": "llm-research-api rolled out a new revision a minute ago (params: image, change_cause)",
    "workers-unavailable": "experiment-workers pods fail readiness, 0 available",
    "auth-secret-rotated": "secret JWT_SECRET replaced (params: new_secret)",
    "forbidden": "every Kubernetes API request answers 403 Forbidden",
    "unauthorized": "every Kubernetes API request answers 401 Unauthorized",
}
# Params each fault accepts, with their types; every fault also accepts started_ago (seconds),
# which backdates the fault's start (for demos and tests that must not wait).
FAULT_PARAMS: dict[str, dict[str, type]] = {
    "crash-loop": {"interval": float},
    "recent-rollout": {"image": str, "change_cause": str},
    "auth-secret-rotated": {"new_secret": str},
}


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
        )


def write_kubeconfig(
    path: str | os.PathLike[str],
    *,
    server_url: str,
    token: str,
    namespace: str = "llm-research",
    context: str = "labcheck-sandbox",
    ca_file: str | os.PathLike[str] | None = None,
) -> None:
    """Write a kubeconfig (YAML, mode 0600, atomically) pointing at the stand-in.

    For an https server_url pass ca_file (the stand-in's tls_cert); it is embedded as
    certificate-authority-data so the kubeconfig is self-contained.
    """
    cluster: Obj = {"server": server_url}
    if ca_file is not None:
        with open(ca_file, "rb") as fh:
            cluster["certificate-authority-data"] = base64.b64encode(fh.read()).decode()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": context, "cluster": cluster}],
        "users": [{"name": context, "user": {"token": token}}],
        "contexts": [
            {
                "name": context,
                "context": {"cluster": context, "user": context, "namespace": namespace},
            }
        ],
        "current-context": context,
    }
    try:
        import yaml

        text = yaml.safe_dump(doc, sort_keys=False)
    except ImportError:  # JSON is valid YAML; kubectl and the client read it too
        text = json.dumps(doc, indent=2) + "\n"
    target = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".kubeconfig.", dir=os.path.dirname(os.path.abspath(target)))
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def ensure_tls_files(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    hosts: Iterable[str] = ("127.0.0.1", "localhost"),
) -> None:
    """Create a self-signed certificate (its own CA) for the stand-in unless both files exist."""
    cert_file, key_file = os.fspath(cert_path), os.fspath(key_path)
    if os.path.exists(cert_file) and os.path.exists(key_file):
        return
    names = list(dict.fromkeys(hosts))
    try:
        cert_pem, key_pem = _self_signed_cryptography(names)
    except ImportError:
        cert_pem, key_pem = _self_signed_openssl(names)
    _write_private(key_file, key_pem)
    _write_private(cert_file, cert_pem)


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(data)


def _self_signed_cryptography(hosts: list[str]) -> tuple[bytes, bytes]:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "labcheck-sandbox-kube")])
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _self_signed_openssl(hosts: list[str]) -> tuple[bytes, bytes]:
    import ipaddress
    import subprocess

    def san(h: str) -> str:
        try:
            ipaddress.ip_address(h)
            return f"IP:{h}"
        except ValueError:
            return f"DNS:{h}"

    with tempfile.TemporaryDirectory() as d:
        cert, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
        cmd = [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ]
        cmd += ["-nodes", "-keyout", key, "-out", cert, "-days", "365"]
        cmd += ["-subj", "/CN=labcheck-sandbox-kube"]
        cmd += ["-addext", "subjectAltName=" + ",".join(san(h) for h in hosts)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)
        with open(cert, "rb") as c, open(key, "rb") as k:
            return c.read(), k.read()


# --------------------------------------------------------------------------- small helpers


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


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def with_rv(obj: Obj) -> Obj:
    """Give an object a resourceVersion derived from its content (changes when it changes)."""
    meta = obj["metadata"]
    meta.pop("resourceVersion", None)
    digest = zlib.crc32(json.dumps(obj, sort_keys=True).encode())
    meta["resourceVersion"] = str(1_000_000 + digest % 90_000_000)
    return obj


def status_obj(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    out: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        out["details"] = details
    return out


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
    """Builds the cluster's objects from the baseline, the active faults and the clock."""

    def __init__(self, cfg: KubeConfig, boot: float | None = None) -> None:
        self.cfg = cfg
        self.boot = float(int(boot if boot is not None else time.time()))
        self.faults: dict[str, Fault] = {}

    # ---- faults

    def inject(self, name: str, params: dict[str, Any], now: float | None = None) -> Fault:
        if name not in FAULTS:
            raise KeyError(name)
        now = time.time() if now is None else now
        allowed = FAULT_PARAMS.get(name, {})
        clean: dict[str, Any] = {}
        started_ago = 0.0
        for key, value in params.items():
            if key == "started_ago":
                started_ago = _coerce(key, value, float)
                if started_ago < 0:
                    raise ValueError("started_ago must be >= 0")
                continue
            if key not in allowed:
                known = ", ".join(sorted([*allowed, "started_ago"]))
                raise ValueError(f"fault {name!r} takes no param {key!r} (known: {known})")
            clean[key] = _coerce(key, value, allowed[key])
        if name == "crash-loop":
            clean.setdefault("interval", 10.0)
            if clean["interval"] <= 0:
                raise ValueError("interval must be > 0")
        if name == "auth-secret-rotated":
            clean.setdefault("new_secret", secrets.token_urlsafe(32))
            if not clean["new_secret"]:
                raise ValueError("new_secret must not be empty")
        if name == "recent-rollout":
            clean.setdefault("image", f"{APPS[API].repo}:v1.5.0")
            tag = str(clean["image"]).rsplit(":", 1)[-1]
            clean.setdefault("change_cause", f"release {tag}")
        fault = Fault(name, float(int(now - started_ago)), clean)
        self.faults[name] = fault
        return fault

    def heal(self, name: str | None = None) -> list[str]:
        if name is None:
            healed = sorted(self.faults)
            self.faults.clear()
            return healed
        return [name] if self.faults.pop(name, None) is not None else []

    def describe_faults(self) -> Obj:
        active = {}
        for f in self.faults.values():
            shown = {k: ("<redacted>" if k == "new_secret" else v) for k, v in f.params.items()}
            active[f.name] = {"since": ts(f.since), "since_unix": f.since, "params": shown}
        return {"active": active, "available": FAULTS}

    # ---- snapshot

    def revisions(self, app: AppSpec) -> list[Revision]:
        out = [
            Revision(
                i + 1,
                f"{app.repo}:{tag}",
                self.boot - age,
                cause,
                safe_suffix(f"{app.name}:{tag}", 10),
            )
            for i, (tag, age, cause) in enumerate(app.revisions)
        ]
        rollout = self.faults.get("recent-rollout")
        if app.name == API and rollout is not None:
            image = str(rollout.params["image"])
            out.append(
                Revision(
                    len(out) + 1,
                    image,
                    rollout.since - 60,
                    str(rollout.params["change_cause"]),
                    safe_suffix(f"{app.name}:{image}:{rollout.since}", 10),
                )
            )
        return out

    def snapshot(self, now: float | None = None) -> Snapshot:
        now = time.time() if now is None else now
        faults = {n: f for n, f in self.faults.items() if f.since <= now}
        ns = self.cfg.namespace
        events: list[Obj] = []
        pods: list[PodModel] = []
        deployments: list[Obj] = []
        replicasets: list[Obj] = []
        node_objs = [self._node(name, now, faults, events) for name in NODES]

        for app in APPS.values():
            revs = self.revisions(app)
            current = revs[-1]
            dep_uid = uid_for("deployment", app.name)
            app_pods = [self._pod(app, current, i, now) for i in range(app.replicas)]
            self._apply_pod_faults(app, app_pods, now, faults, events)
            pods.extend(app_pods)
            for rev in revs:
                replicasets.append(self._replicaset(app, rev, rev is current, dep_uid, app_pods))
            deployments.append(self._deployment(app, revs, dep_uid, app_pods, now))
            self._rollout_events(app, revs, dep_uid, app_pods, events)

        pod_objs = [self._pod_obj(p, now) for p in pods]
        events = [e for e in events if parse_ts(e["lastTimestamp"]) <= now]
        events.sort(key=lambda e: (e["lastTimestamp"], e["metadata"]["name"]))
        objects = {
            "pods": pod_objs,
            "deployments": deployments,
            "replicasets": replicasets,
            "nodes": node_objs,
            "events": events,
            "secrets": [self._secret(faults)],
            "namespaces": [
                self._namespace(n)
                for n in ("default", "kube-node-lease", "kube-public", "kube-system", ns)
            ],
            "leases": [self._lease(n, now) for n in NODES],
        }
        for objs in objects.values():
            for o in objs:
                with_rv(o)
            # The apiserver lists in storage-key order: namespace, then name.
            objs.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return Snapshot(now, ns, pods, objects, faults)

    # ---- builders

    def _meta(self, kind: str, name: str, created: float, namespaced: bool = True) -> Obj:
        meta: Obj = {"name": name, "uid": uid_for(kind, name), "creationTimestamp": ts(created)}
        if namespaced:
            meta["namespace"] = self.cfg.namespace
        return meta

    def _container_events(
        self,
        involved: Obj,
        p: PodModel,
        app: AppSpec,
        offsets: dict[str, float],
        *,
        first: float,
        last: float | None = None,
        count: int = 1,
    ) -> list[Obj]:
        """The kubelet's Pulled / Created / Started events of a pod's container, ``offsets`` after
        ``first`` (and ``last``, for an event seen ``count`` times)."""
        messages = {
            "Pulled": f'Container image "{p.revision.image}" already present on machine',
            "Created": f"Created container {app.container}",
            "Started": f"Started container {app.container}",
        }
        return [
            self._event(
                involved,
                reason,
                messages[reason],
                first=first + offset,
                last=None if last is None else last + offset,
                count=count,
                host=p.node,
                field_path=f"spec.containers{{{app.container}}}",
            )
            for reason, offset in offsets.items()
        ]

    def _event(
        self,
        involved: Obj,
        reason: str,
        message: str,
        *,
        first: float,
        last: float | None = None,
        count: int = 1,
        type_: str = "Normal",
        component: str = "kubelet",
        host: str | None = None,
        field_path: str | None = None,
    ) -> Obj:
        last = first if last is None else last
        ns = involved.get("namespace") or "default"
        seed = f"{involved['uid']}:{reason}:{first}"
        name = f"{involved['name']}.{hexid(seed, 16)}"
        ref = dict(involved)
        if field_path:
            ref["fieldPath"] = field_path
        ev: Obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": name,
                "namespace": ns,
                "uid": uid_for("event", ns, name),
                "creationTimestamp": ts(first),
            },
            "involvedObject": ref,
            "reason": reason,
            "message": message,
            "source": {"component": component, **({"host": host} if host else {})},
            "firstTimestamp": ts(first),
            "lastTimestamp": ts(last),
            "count": count,
            "type": type_,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": host or "",
        }
        return ev

    def _node(self, name: str, now: float, faults: dict[str, Fault], events: list[Obj]) -> Obj:
        idx = NODES.index(name)
        created = self.boot - 120 * DAY
        heartbeat = ts(max(self.boot, math.floor(now / 10) * 10))
        ip = f"10.0.1.{11 + idx}"
        booted = created + 5
        conds = {
            "MemoryPressure": (
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
                booted,
            ),
            "DiskPressure": (
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
                booted,
            ),
            "PIDPressure": (
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
                booted,
            ),
            "Ready": ("True", "KubeletReady", "kubelet is posting ready status", booted + 10),
        }
        taints: list[Obj] = []
        ref = {"kind": "Node", "name": name, "uid": uid_for("node", name), "apiVersion": "v1"}
        fault = faults.get("node-not-ready")
        if fault is not None and name == "node-b":
            s = fault.since
            conds["MemoryPressure"] = (
                "True",
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
                s - 20,
            )
            conds["Ready"] = (
                "False",
                "KubeletNotReady",
                "PLEG is not healthy: pleg was last seen active 3m12s ago; threshold is 3m0s",
                s,
            )
            taints = [
                {
                    "key": "node.kubernetes.io/memory-pressure",
                    "effect": "NoSchedule",
                    "timeAdded": ts(s - 20),
                },
                {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule", "timeAdded": ts(s)},
            ]
            events.append(
                self._event(
                    ref,
                    "NodeHasInsufficientMemory",
                    f"Node {name} status is now: NodeHasInsufficientMemory",
                    first=s - 20,
                    host=name,
                )
            )
            events.append(
                self._event(
                    ref,
                    "NodeNotReady",
                    f"Node {name} status is now: NodeNotReady",
                    first=s,
                    type_="Warning",
                    component="node-controller",
                )
            )
        meta = self._meta("node", name, created, namespaced=False)
        meta["labels"] = {
            "beta.kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "node.kubernetes.io/instance-type": "m6i.2xlarge",
            "topology.kubernetes.io/region": "us-east-1",
            "topology.kubernetes.io/zone": f"us-east-1{'ab'[idx]}",
        }
        meta["annotations"] = {
            "node.alpha.kubernetes.io/ttl": "0",
            "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        }
        spec: Obj = {"podCIDR": f"10.244.{idx + 1}.0/24", "podCIDRs": [f"10.244.{idx + 1}.0/24"]}
        if taints:
            spec["taints"] = taints
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": meta,
            "spec": spec,
            "status": {
                "capacity": {
                    "cpu": "8",
                    "ephemeral-storage": "104845292Ki",
                    "hugepages-1Gi": "0",
                    "hugepages-2Mi": "0",
                    "memory": "32617452Ki",
                    "pods": "110",
                },
                "allocatable": {
                    "cpu": "7910m",
                    "ephemeral-storage": "95551679124",
                    "hugepages-1Gi": "0",
                    "hugepages-2Mi": "0",
                    "memory": "31566828Ki",
                    "pods": "110",
                },
                "conditions": [
                    {
                        "type": ctype,
                        "status": st,
                        "lastHeartbeatTime": heartbeat,
                        "lastTransitionTime": ts(since),
                        "reason": reason,
                        "message": msg,
                    }
                    for ctype, (st, reason, msg, since) in conds.items()
                ],
                "addresses": [
                    {"type": "InternalIP", "address": ip},
                    {"type": "Hostname", "address": name},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {
                    "machineID": hexid(f"machine:{name}", 32),
                    "systemUUID": uid_for("system", name),
                    "bootID": uid_for("boot", name),
                    "kernelVersion": "5.15.0-1064-aws",
                    "osImage": "Ubuntu 22.04.4 LTS",
                    "containerRuntimeVersion": "containerd://1.7.22",
                    "kubeletVersion": K8S_VERSION,
                    "kubeProxyVersion": K8S_VERSION,
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            },
        }

    def _pod(self, app: AppSpec, rev: Revision, i: int, now: float) -> PodModel:
        rs = rev.rs_name(app.name)
        name = f"{rs}-{safe_suffix(f'{rs}/{i}', 5)}"
        created = rev.created + 5 + 12 * i
        node = app.nodes[i % len(app.nodes)]
        node_idx = NODES.index(node)
        ip = f"10.244.{node_idx + 1}.{20 + 10 * list(APPS).index(app.name) + i}"
        started = created + 3
        pod = PodModel(
            app=app,
            index=i,
            name=name,
            uid=uid_for("pod", name),
            revision=rev,
            node=node,
            ip=ip,
            created=created,
            restart_count=0,
            current=Run(started=started, container_id=_cid(name, 0)),
            previous=None,
            container_ready_since=started + 6,
        )
        if app.name == WORKERS and i == 1:
            # Restarted 40 times long ago (an OOM storm 30 days back), healthy since.
            finished = self.boot - 30 * DAY
            pod.restart_count = 40
            pod.previous = Run(
                started=finished - 6 * HOUR,
                finished=finished,
                reason="OOMKilled",
                exit_code=137,
                kind="oom",
                container_id=_cid(name, 39),
            )
            pod.current = Run(started=finished + 2, container_id=_cid(name, 40))
            pod.container_ready_since = finished + 9
        return pod

    def _apply_pod_faults(
        self,
        app: AppSpec,
        pods: list[PodModel],
        now: float,
        faults: dict[str, Fault],
        events: list[Obj],
    ) -> None:
        ns = self.cfg.namespace

        def ref(p: PodModel) -> Obj:
            return {
                "kind": "Pod",
                "namespace": ns,
                "name": p.name,
                "uid": p.uid,
                "apiVersion": "v1",
            }

        cpath = f"spec.containers{{{app.container}}}"
        crash = faults.get("crash-loop")
        if app.name == API and crash is not None:
            p = pods[0]
            interval = float(crash.params["interval"])
            s = crash.since
            n = 1 + int((now - s) // interval)
            last = s + (n - 1) * interval
            assert p.current is not None
            prev_start = p.current.started if n == 1 else last - min(3.0, interval / 2)
            p.previous = Run(
                prev_start, last, "Error", 1, "crash", _cid(p.name, p.restart_count + n - 1)
            )
            p.restart_count += n
            p.current = None
            backoff = min(interval * 2 ** (n - 1), 300.0)
            p.waiting_reason = "CrashLoopBackOff"
            p.waiting_message = (
                f"back-off {_go_duration(backoff)} restarting failed container={app.container} "
                f"pod={p.name}_{ns}({p.uid})"
            )
            p.container_ready = False
            p.container_ready_since = s
            events += self._container_events(
                ref(p), p, app, {"Pulled": 0.5, "Created": 0.6, "Started": 0.7}, first=s, last=last, count=n
            )
            events.append(
                self._event(
                    ref(p),
                    "BackOff",
                    "Back-off restarting failed container "
                    f"{app.container} in pod {p.name}_{ns}({p.uid})",
                    first=s + 1,
                    last=min(now, last + 1),
                    count=n,
                    type_="Warning",
                    host=p.node,
                    field_path=cpath,
                )
            )

        oom = faults.get("oom-killed")
        if app.name == API and oom is not None:
            p = pods[1]
            s = oom.since
            if p.current is not None:
                p.previous = Run(
                    p.current.started, s - 5, "OOMKilled", 137, "oom", p.current.container_id
                )
                p.restart_count += 1
                p.current = Run(started=s - 3, container_id=_cid(p.name, p.restart_count))
                p.container_ready_since = s - 1
            node_ref = {
                "kind": "Node",
                "name": p.node,
                "uid": uid_for("node", p.node),
                "apiVersion": "v1",
            }
            events.append(
                self._event(
                    node_ref,
                    "OOMKilling",
                    f"Memory cgroup out of memory: Killed process 4187 (python) total-vm:3512308kB, "
                    f"anon-rss:2094212kB, file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:4876kB "
                    f"oom_score_adj:937 (pod {p.name}, container {app.container})",
                    first=s - 5,
                    type_="Warning",
                    component="kernel-monitor",
                    host=p.node,
                )
            )
            events.append(
                self._event(
                    ref(p),
                    "Unhealthy",
                    f'Readiness probe failed: Get "http://{p.ip}:{app.port}{app.probe_path}": '
                    "dial tcp: connect: connection refused",
                    first=s - 4,
                    type_="Warning",
                    host=p.node,
                    field_path=cpath,
                )
            )
            events += self._container_events(ref(p), p, app, {"Pulled": -4, "Started": -3}, first=s)

        workers = faults.get("workers-unavailable")
        if app.name == WORKERS and workers is not None:
            s = workers.since
            n = 1 + int((now - s) // 10)
            for p in pods:
                p.container_ready = False
                p.container_ready_since = s
                events.append(
                    self._event(
                        ref(p),
                        "Unhealthy",
                        "Readiness probe failed: HTTP probe failed with statuscode: 503",
                        first=s,
                        last=s + (n - 1) * 10,
                        count=n,
                        type_="Warning",
                        host=p.node,
                        field_path=cpath,
                    )
                )

        nnr = faults.get("node-not-ready")
        if nnr is not None:
            for p in pods:
                if p.node == "node-b":
                    p.pod_ready_override = (False, nnr.since, "NodeNotReady")
                    events.append(
                        self._event(
                            ref(p),
                            "NodeNotReady",
                            "Node is not ready",
                            # At the fault's own instant: events stamped later are not listed
                            # until then, and a run right after the fault must see it.
                            first=nnr.since,
                            type_="Warning",
                            component="node-controller",
                        )
                    )

    def _container(self, app: AppSpec, image: str) -> Obj:
        http_get: Obj = {"path": app.probe_path, "port": "http", "scheme": "HTTP"}
        probe: Obj = {
            "httpGet": http_get,
            "initialDelaySeconds": 5,
            "timeoutSeconds": 1,
            "periodSeconds": 10,
            "successThreshold": 1,
            "failureThreshold": 3,
        }
        return {
            "name": app.container,
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"name": "http", "containerPort": app.port, "protocol": "TCP"}],
            "envFrom": [{"secretRef": {"name": SECRET_NAME}}],
            "env": [
                {"name": "LOG_LEVEL", "value": "info"},
                {"name": "PORT", "value": str(app.port)},
            ],
            "resources": {"limits": dict(app.limits), "requests": dict(app.requests)},
            "readinessProbe": probe,
            "livenessProbe": {
                **probe,
                "httpGet": {**http_get, "path": "/health" if app.name == API else "/livez"},
                "initialDelaySeconds": 15,
            },
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
        }

    def _pod_obj(self, p: PodModel, now: float) -> Obj:
        app = p.app
        meta = self._meta("pod", p.name, p.created)
        meta["generateName"] = f"{p.revision.rs_name(app.name)}-"
        meta["labels"] = {"app": app.name, "pod-template-hash": p.revision.rs_hash}
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": p.revision.rs_name(app.name),
                "uid": uid_for("replicaset", p.revision.rs_name(app.name)),
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        state: Obj
        if p.current is None:
            state = {"waiting": {"reason": p.waiting_reason, "message": p.waiting_message}}
        else:
            state = {"running": {"startedAt": ts(p.current.started)}}
        last_state: Obj = {}
        if p.previous is not None:
            pr = p.previous
            assert pr.finished is not None
            last_state = {
                "terminated": {
                    "exitCode": pr.exit_code,
                    "reason": pr.reason,
                    "startedAt": ts(pr.started),
                    "finishedAt": ts(pr.finished),
                    "containerID": pr.container_id,
                }
            }
        cid = (
            p.current.container_id if p.current else (p.previous.container_id if p.previous else "")
        )
        digest = hashlib.sha256(p.revision.image.encode()).hexdigest()
        cstatus = {
            "name": app.container,
            "state": state,
            "lastState": last_state,
            "ready": p.container_ready,
            "restartCount": p.restart_count,
            "image": p.revision.image,
            "imageID": f"{p.revision.image.rsplit(':', 1)[0]}@sha256:{digest}",
            "containerID": cid,
            "started": p.current is not None,
        }
        ready, ready_since = p.pod_ready
        cready_status = "True" if p.container_ready else "False"
        not_ready_msg = f"containers with unready status: [{app.container}]"
        conds: list[Obj] = [
            {
                "type": "PodReadyToStartContainers",
                "status": "True",
                "lastTransitionTime": ts(p.created + 2),
            },
            {"type": "Initialized", "status": "True", "lastTransitionTime": ts(p.created)},
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "lastTransitionTime": ts(ready_since),
                **(
                    {}
                    if ready
                    else {
                        "reason": "ContainersNotReady" if not p.container_ready else "NodeNotReady",
                        "message": not_ready_msg if not p.container_ready else "Node is not ready",
                    }
                ),
            },
            {
                "type": "ContainersReady",
                "status": cready_status,
                "lastTransitionTime": ts(p.container_ready_since),
                **(
                    {}
                    if p.container_ready
                    else {"reason": "ContainersNotReady", "message": not_ready_msg}
                ),
            },
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": ts(p.created)},
        ]
        for c in conds:
            c["lastProbeTime"] = None
        node_ip = f"10.0.1.{11 + NODES.index(p.node)}"
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {
                "containers": [self._container(app, p.revision.image)],
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": 30,
                "dnsPolicy": "ClusterFirst",
                "serviceAccountName": "llm-research",
                "serviceAccount": "llm-research",
                "nodeName": p.node,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
                "schedulerName": "default-scheduler",
                "tolerations": [
                    {
                        "key": "node.kubernetes.io/not-ready",
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": 300,
                    },
                    {
                        "key": "node.kubernetes.io/unreachable",
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": 300,
                    },
                ],
                "priority": 0,
                "enableServiceLinks": True,
                "preemptionPolicy": "PreemptLowerPriority",
            },
            "status": {
                "phase": "Running",
                "conditions": conds,
                "hostIP": node_ip,
                "hostIPs": [{"ip": node_ip}],
                "podIP": p.ip,
                "podIPs": [{"ip": p.ip}],
                "startTime": ts(p.created),
                "containerStatuses": [cstatus],
                "qosClass": "Burstable",
            },
        }

    def _template(self, app: AppSpec, image: str, labels: dict[str, str], cause: str | None) -> Obj:
        meta: Obj = {"labels": labels}
        if cause:
            meta["annotations"] = {"kubernetes.io/change-cause": cause}
        return {
            "metadata": meta,
            "spec": {
                "containers": [self._container(app, image)],
                "restartPolicy": "Always",
                "terminationGracePeriodSeconds": 30,
                "dnsPolicy": "ClusterFirst",
                "serviceAccountName": "llm-research",
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
                "schedulerName": "default-scheduler",
            },
        }

    def _replicaset(
        self, app: AppSpec, rev: Revision, is_current: bool, dep_uid: str, pods: list[PodModel]
    ) -> Obj:
        name = rev.rs_name(app.name)
        labels = {"app": app.name, "pod-template-hash": rev.rs_hash}
        meta = self._meta("replicaset", name, rev.created)
        meta["labels"] = dict(labels)
        meta["annotations"] = {
            "deployment.kubernetes.io/desired-replicas": str(app.replicas),
            "deployment.kubernetes.io/max-replicas": str(app.replicas + 1),
            "deployment.kubernetes.io/revision": str(rev.number),
            "kubernetes.io/change-cause": rev.change_cause,
        }
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": app.name,
                "uid": dep_uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        meta["generation"] = 2 if not is_current else 1
        replicas = app.replicas if is_current else 0
        status: Obj = {"replicas": replicas, "observedGeneration": meta["generation"]}
        if is_current:
            ready = sum(1 for p in pods if p.pod_ready[0])
            status.update(
                {
                    "fullyLabeledReplicas": len(pods),
                    "readyReplicas": ready,
                    "availableReplicas": ready,
                }
            )
        return {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": meta,
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": dict(labels)},
                "template": self._template(app, rev.image, dict(labels), rev.change_cause),
            },
            "status": status,
        }

    def _deployment(
        self, app: AppSpec, revs: list[Revision], dep_uid: str, pods: list[PodModel], now: float
    ) -> Obj:
        current = revs[-1]
        meta = self._meta("deployment", app.name, self.boot - app.created_ago)
        meta["labels"] = {"app": app.name}
        meta["annotations"] = {
            "deployment.kubernetes.io/revision": str(current.number),
            "kubernetes.io/change-cause": current.change_cause,
        }
        meta["generation"] = current.number
        ready_times = [p.pod_ready for p in pods]
        available = sum(1 for ok, _ in ready_times if ok)
        max_unavailable = math.floor(app.replicas * 0.25)
        is_available = available >= app.replicas - max_unavailable
        if is_available:
            avail_since = max(since for _, since in ready_times)
            avail_cond = (
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
                avail_since,
            )
        else:
            since = max(since for ok, since in ready_times if not ok)
            avail_cond = (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
                since,
            )
        rolled = current.created + 5 + 12 * (app.replicas - 1) + 9  # last new pod became ready
        status: Obj = {
            "observedGeneration": current.number,
            "replicas": len(pods),
            "updatedReplicas": len(pods),
            "readyReplicas": available,
            "availableReplicas": available,
            "conditions": [
                {
                    "type": "Available",
                    "status": avail_cond[0],
                    "lastUpdateTime": ts(avail_cond[3]),
                    "lastTransitionTime": ts(avail_cond[3]),
                    "reason": avail_cond[1],
                    "message": avail_cond[2],
                },
                {
                    "type": "Progressing",
                    "status": "True",
                    "lastUpdateTime": ts(rolled),
                    "lastTransitionTime": ts(current.created),
                    "reason": "NewReplicaSetAvailable",
                    "message": f'ReplicaSet "{current.rs_name(app.name)}" has successfully progressed.',
                },
            ],
        }
        if available < app.replicas:
            status["unavailableReplicas"] = app.replicas - available
        if available == 0:
            del status["readyReplicas"]
            del status["availableReplicas"]
        labels = {"app": app.name}
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": app.replicas,
                "selector": {"matchLabels": dict(labels)},
                "template": self._template(app, current.image, dict(labels), current.change_cause),
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
                },
                "minReadySeconds": 0,
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600,
            },
            "status": status,
        }

    def _rollout_events(
        self,
        app: AppSpec,
        revs: list[Revision],
        dep_uid: str,
        pods: list[PodModel],
        events: list[Obj],
    ) -> None:
        ns = self.cfg.namespace
        current = revs[-1]
        dep_ref = {
            "kind": "Deployment",
            "namespace": ns,
            "name": app.name,
            "uid": dep_uid,
            "apiVersion": "apps/v1",
        }
        new_rs = current.rs_name(app.name)
        old_rs = revs[-2].rs_name(app.name) if len(revs) > 1 else None
        for i, p in enumerate(pods):
            events.append(
                self._event(
                    dep_ref,
                    "ScalingReplicaSet",
                    f"Scaled up replica set {new_rs} to {i + 1}",
                    first=p.created - 1,
                    component="deployment-controller",
                )
            )
            if old_rs is not None:
                left = app.replicas - i - 1
                events.append(
                    self._event(
                        dep_ref,
                        "ScalingReplicaSet",
                        f"Scaled down replica set {old_rs} to {left} from {left + 1}",
                        first=p.created + 9,
                        component="deployment-controller",
                    )
                )
            pref = {
                "kind": "Pod",
                "namespace": ns,
                "name": p.name,
                "uid": p.uid,
                "apiVersion": "v1",
            }
            events.append(
                self._event(
                    pref,
                    "Scheduled",
                    f"Successfully assigned {ns}/{p.name} to {p.node}",
                    first=p.created,
                    component="default-scheduler",
                )
            )
            events += self._container_events(
                pref, p, app, {"Pulled": 1, "Created": 2, "Started": 3}, first=p.created
            )

    def _secret(self, faults: dict[str, Fault]) -> Obj:
        rotated = faults.get("auth-secret-rotated")
        jwt = str(rotated.params["new_secret"]) if rotated is not None else self.cfg.jwt_secret
        db_password = self.cfg.planted.get("db_password", "sandbox-db-password")
        meta = self._meta("secret", SECRET_NAME, self.boot - 180 * DAY)
        meta["labels"] = {"app": API}
        if rotated is not None:
            meta["annotations"] = {"llm-research.io/rotated-at": ts(rotated.since)}
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": "Opaque",
            "data": {
                "DATABASE_URL": b64(
                    f"postgresql://llm_research:{db_password}@postgres.{self.cfg.namespace}.svc:5432/llm_research"
                ),
                "JWT_SECRET": b64(jwt),
                "S3_ACCESS_KEY": b64("AKIASANDBOX7EXAMPLE0"),
            },
        }

    def _lease(self, node: str, now: float) -> Obj:
        """The kubelet's heartbeat lease (kube-node-lease); it renews every 10 s."""
        renew = math.floor(now / 10) * 10
        meta: Obj = {
            "name": node,
            "namespace": "kube-node-lease",
            "uid": uid_for("lease", node),
            "creationTimestamp": ts(self.boot - 120 * DAY),
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid_for("node", node)}
            ],
        }
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": node,
                "leaseDurationSeconds": 40,
                "renewTime": datetime.fromtimestamp(renew, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
        }

    def _namespace(self, name: str) -> Obj:
        meta = self._meta("namespace", name, self.boot - 200 * DAY, namespaced=False)
        meta["labels"] = {"kubernetes.io/metadata.name": name}
        return {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": meta,
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }

    # ---- logs

    def pod_log(self, snap: Snapshot, pod: PodModel, *, previous: bool) -> list[tuple[float, str]]:
        """The lines (time, text) of the current or previous container instance."""
        if previous:
            run = pod.previous
        else:
            run = pod.current or pod.previous  # a waiting container shows its last instance
        assert run is not None
        end = run.finished if run.finished is not None else snap.now
        lo = max(run.started, end - LOG_WINDOW)
        out: list[tuple[float, str]] = []
        is_api = pod.app.name == API
        planted = self.cfg.planted
        db_pw = planted.get("db_password", "sandbox-db-password")
        bearer = planted.get("bearer", "sandbox-bearer-token")
        if run.started >= lo:
            span = (end - run.started) if run.kind == "crash" else 3.0
            step = min(0.2, span / 12)  # a crash-looping run can be very short
            lines = _startup_lines(pod.app, run.started, self.cfg.jwt_secret, db_pw, step)
            out.extend(lines)
        first_slot = math.ceil(lo / LOG_STEP)
        last_slot = math.floor(end / LOG_STEP)
        rotated = snap.faults.get("auth-secret-rotated")
        workers_down = snap.faults.get("workers-unavailable")
        for slot in range(first_slot, last_slot + 1):
            t = slot * LOG_STEP
            if t <= run.started + 2:
                continue
            rng = random.Random(f"{pod.name}:{slot}")
            t += rng.random() * 2
            if t > end:
                continue
            out.append((t, _api_line(rng, t) if is_api else _worker_line(rng)))
            if is_api and rotated is not None and t >= rotated.since:
                client = f"10.244.0.{rng.randint(2, 9)}:{rng.randint(30000, 60000)}"
                out.append(
                    (
                        t + 0.1,
                        "WARNING [llm_research.auth] jwt verification failed: Signature verification failed path=/experiments",
                    )
                )
                out.append(
                    (t + 0.2, f'INFO  [uvicorn.access] {client} - "GET /experiments HTTP/1.1" 401')
                )
            if not is_api and workers_down is not None and t >= workers_down.since:
                out.append(
                    (
                        t + 0.3,
                        "ERROR [worker.queue] queue broker unreachable: redis://queue.llm-research.svc:6379 (Connection refused); reporting not ready",
                    )
                )
        for offset, text in (
            (
                137.0,
                f"INFO  [llm_research.db] db connect password={db_pw} host=postgres.llm-research.svc port=5432 dbname=llm_research",
            ),
            (
                611.0,
                f"DEBUG [llm_research.registry] outbound request headers: Authorization: Bearer {bearer}",
            ),
            (
                1249.0,
                f"INFO  [llm_research.config] settings reloaded: JWT_SECRET={self.cfg.jwt_secret} JWT_ALGORITHM=HS256",
            ),
        ):
            t = math.floor((end - offset) / PLANT_PERIOD) * PLANT_PERIOD + offset
            if lo <= t <= end and t > run.started + 2:
                out.append((t, text))
        if run.kind == "crash" and run.finished is not None:
            f = run.finished
            tb = min(0.4, (f - run.started) / 4)
            out.extend(
                [
                    (f - tb, "ERROR [uvicorn.error] Traceback (most recent call last):"),
                    (f - tb, '  File "/app/llm_research/api/main.py", line 88, in lifespan'),
                    (f - tb, "    registry = ModelRegistry.from_env()"),
                    (f - tb, '  File "/app/llm_research/registry.py", line 41, in from_env'),
                    (f - tb, '    url = os.environ["MODEL_REGISTRY_URL"]'),
                    (f - tb, "KeyError: 'MODEL_REGISTRY_URL'"),
                    (f - tb / 2, "ERROR [uvicorn.error] Application startup failed. Exiting."),
                ]
            )
        if run.kind == "oom" and run.finished is not None:
            f = run.finished
            limit = pod.app.limits["memory"]
            out.append(
                (
                    f - 20,
                    f"WARNING [llm_research.memory] rss=1.87GiB limit={limit} (93%) while loading tokenizer cache",
                )
            )
            out.append(
                (
                    f - 6,
                    f"WARNING [llm_research.memory] rss=1.98GiB limit={limit} (99%) while loading tokenizer cache",
                )
            )
        out.sort(key=lambda x: x[0])
        # Application lines carry the app's own timestamp; traceback lines do not.
        return [
            (t, f"{ts_ms(t)} {text}" if text[:5].rstrip() in _LEVELS else text)
            for t, text in out
            if lo <= t <= end + 0.5
        ]


_LEVELS = frozenset({"DEBUG", "INFO", "WARNI", "ERROR", "FATAL"})


def _cid(pod_name: str, n: int) -> str:
    return "containerd://" + hashlib.sha256(f"{pod_name}:{n}".encode()).hexdigest()


def _go_duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"


def _coerce(key: str, value: Any, typ: type) -> Any:
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"param {key!r} must be a number")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"param {key!r} must be a number") from None
    if not isinstance(value, str):
        raise ValueError(f"param {key!r} must be a string")
    return value


def _startup_lines(
    app: AppSpec, t: float, jwt: str, db_pw: str, step: float = 0.2
) -> list[tuple[float, str]]:
    if app.name == API:
        lines = [
            "INFO  [uvicorn.error] Started server process [1]",
            "INFO  [uvicorn.error] Waiting for application startup.",
            f"INFO  [llm_research.config] settings loaded from environment: JWT_SECRET={jwt} JWT_ALGORITHM=HS256",
            f"INFO  [llm_research.db] db connect password={db_pw} host=postgres.llm-research.svc port=5432 dbname=llm_research",
            "INFO  [llm_research.storage] s3 bucket llm-research-datasets reachable (region us-east-1)",
            "INFO  [uvicorn.error] Application startup complete.",
            f"INFO  [uvicorn.error] Uvicorn running on http://0.0.0.0:{app.port} (Press CTRL+C to quit)",
        ]
    else:
        lines = [
            "INFO  [worker] experiment-workers starting (concurrency=2, gpu=none)",
            f"INFO  [llm_research.config] settings loaded from environment: JWT_SECRET={jwt}",
            f"INFO  [llm_research.db] db connect password={db_pw} host=postgres.llm-research.svc port=5432 dbname=llm_research",
            "INFO  [worker.queue] connected to redis://queue.llm-research.svc:6379",
            f"INFO  [worker] health server listening on :{app.port}",
        ]
    return [(t + step * i, line) for i, line in enumerate(lines)]


def _api_line(rng: random.Random, t: float) -> str:
    client = f"10.244.{rng.randint(1, 2)}.{rng.randint(2, 250)}:{rng.randint(30000, 60000)}"
    pick = rng.random()
    if pick < 0.3:
        return f'INFO  [uvicorn.access] 10.244.0.1:{rng.randint(30000, 60000)} - "GET /health/ready HTTP/1.1" 200'
    if pick < 0.5:
        return f'INFO  [uvicorn.access] {client} - "GET /experiments?limit=20 HTTP/1.1" 200'
    if pick < 0.6:
        return f'INFO  [uvicorn.access] {client} - "POST /experiments HTTP/1.1" 201'
    if pick < 0.7:
        return f'INFO  [uvicorn.access] {client} - "GET /datasets HTTP/1.1" 200'
    if pick < 0.8:
        key = f"datasets/ds-{rng.randint(100, 999)}/manifest.json"
        return f"INFO  [llm_research.storage] s3 get_object bucket=llm-research-datasets key={key} status=200 duration_ms={rng.randint(8, 90)}"
    if pick < 0.9:
        return f"INFO  [llm_research.db] pool status size=20 checked_out={rng.randint(1, 6)} overflow=0 waiting=0"
    return f"DEBUG [llm_research.auth] jwt verified sub=user-{rng.randint(1, 60)} exp_in={rng.randint(60, 3600)}s"


def _worker_line(rng: random.Random) -> str:
    exp = f"exp-{rng.randint(1000, 1099)}"
    pick = rng.random()
    if pick < 0.6:
        step = rng.randint(100, 20000)
        return f"INFO  [worker] experiment {exp} step {step}/20000 loss={rng.uniform(0.8, 3.2):.4f} lr=3.0e-04"
    if pick < 0.75:
        return f"INFO  [worker.checkpoint] saved checkpoint s3://llm-research-datasets/checkpoints/{exp}/step-{rng.randint(1, 40) * 500}.pt in {rng.uniform(2, 12):.1f}s"
    if pick < 0.9:
        return f"INFO  [worker.queue] polled queue: {rng.randint(0, 6)} pending, {rng.randint(0, 2)} leased"
    return f"INFO  [llm_research.db] pool status size=5 checked_out={rng.randint(0, 3)} overflow=0 waiting=0"


# --------------------------------------------------------------------------- selectors

_LABEL_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_SET_TERM = re.compile(rf"^\s*({_LABEL_KEY})\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_TERM = re.compile(rf"^\s*({_LABEL_KEY})\s*(==|!=|=)\s*([-A-Za-z0-9_.]*)\s*$")
_EXISTS_TERM = re.compile(rf"^\s*(!?)\s*({_LABEL_KEY})\s*$")


def _split_top(s: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def label_matcher(selector: str) -> Callable[[Obj], bool]:
    """Parse a label selector (equality and set-based); raises ValueError when invalid."""
    reqs: list[tuple[str, str, frozenset[str]]] = []  # (key, op, values)
    for term in _split_top(selector):
        if m := _SET_TERM.match(term):
            vals = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append((m.group(1), m.group(2), vals))
        elif m := _EQ_TERM.match(term):
            op = "notin" if m.group(2) == "!=" else "in"
            reqs.append((m.group(1), op, frozenset({m.group(3)})))
        elif m := _EXISTS_TERM.match(term):
            reqs.append((m.group(2), "!exists" if m.group(1) else "exists", frozenset()))
        else:
            raise ValueError(f"unable to parse requirement: {term.strip()!r}")

    def match(obj: Obj) -> bool:
        labels: dict[str, str] = obj["metadata"].get("labels") or {}
        for key, op, vals in reqs:
            ok = {
                "in": key in labels and labels[key] in vals,
                "notin": labels.get(key) not in vals,
                "exists": key in labels,
                "!exists": key not in labels,
            }[op]
            if not ok:
                return False
        return True

    return match


def _dotted(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return str(cur).lower()
    return str(cur)


def field_matcher(selector: str) -> Callable[[Obj], bool]:
    """Field selectors: `path=value`, `path==value`, `path!=value` terms on dotted paths."""
    reqs: list[tuple[str, bool, str]] = []  # (path, equal?, value)
    for term in (t.strip() for t in selector.split(",")):
        if not term:
            continue
        m = re.match(r"^([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*)$", term)
        if not m:
            raise ValueError(f"invalid field selector: {term!r}")
        reqs.append((m.group(1), m.group(2) != "!=", m.group(3)))

    def match(obj: Obj) -> bool:
        return all((_dotted(obj, path) == val) == equal for path, equal, val in reqs)

    return match


# --------------------------------------------------------------------------- request info


@dataclass(frozen=True)
class RequestInfo:
    """What the apiserver's RequestInfoFactory derives from a request (verb, resource, ...)."""

    is_resource: bool
    verb: str
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    watch_prefix: bool = False

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


_METHOD_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}


def request_info(method: str, path: str, query: dict[str, list[str]]) -> RequestInfo:
    parts = [p for p in path.strip("/").split("/") if p] if path.strip("/") else []
    plain = RequestInfo(False, method.lower())
    if not parts or parts[0] not in ("api", "apis"):
        return plain
    if parts[0] == "api":
        if len(parts) < 2:
            return plain
        group, version, rest = "", parts[1], parts[2:]
    else:
        if len(parts) < 3:
            return plain
        group, version, rest = parts[1], parts[2], parts[3:]
    if not rest:
        return plain
    verb = _METHOD_VERBS.get(method.upper(), method.lower())
    watch_prefix = False
    if rest[0] == "watch":
        rest = rest[1:]
        watch_prefix = True
        if verb == "get":
            verb = "watch"
        if not rest:
            return plain
    namespace = ""
    if rest[0] == "namespaces":
        if len(rest) > 1:
            namespace = rest[1]
            if len(rest) > 2 and rest[2] not in ("status", "finalize"):
                rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) >= 2 else ""
    sub = rest[2] if len(rest) >= 3 else ""
    if not name and verb == "get":
        verb = "watch" if _truthy(query.get("watch", [""])[-1]) else "list"
        fs = query.get("fieldSelector", [""])[-1]
        m = re.fullmatch(r"metadata\.name==?([-a-z0-9.]+)", fs.strip())
        if m:
            name = m.group(1)
    if not name and verb == "delete":
        verb = "deletecollection"
    return RequestInfo(True, verb, group, version, namespace, resource, sub, name, watch_prefix)


def _truthy(v: str) -> bool:
    return v.lower() in ("1", "true", "t", "yes")


# --------------------------------------------------------------------------- API surface


@dataclass(frozen=True)
class ResourceDef:
    group: str
    name: str
    kind: str
    namespaced: bool
    short: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    singular: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/v1" if self.group else "v1"


RESOURCES: dict[tuple[str, str], ResourceDef] = {
    ("", "pods"): ResourceDef("", "pods", "Pod", True, ("po",), ("all",), "pod"),
    ("", "events"): ResourceDef("", "events", "Event", True, ("ev",), (), "event"),
    ("", "nodes"): ResourceDef("", "nodes", "Node", False, ("no",), (), "node"),
    ("", "secrets"): ResourceDef("", "secrets", "Secret", True, (), (), "secret"),
    ("", "namespaces"): ResourceDef("", "namespaces", "Namespace", False, ("ns",), (), "namespace"),
    ("apps", "deployments"): ResourceDef(
        "apps", "deployments", "Deployment", True, ("deploy",), ("all",), "deployment"
    ),
    ("apps", "replicasets"): ResourceDef(
        "apps", "replicasets", "ReplicaSet", True, ("rs",), ("all",), "replicaset"
    ),
    ("coordination.k8s.io", "leases"): ResourceDef(
        "coordination.k8s.io", "leases", "Lease", True, (), (), "lease"
    ),
}
GROUPS = ("apps", "coordination.k8s.io")
READ_VERBS = ["get", "list", "watch"]


def resource_list(group: str) -> Obj:
    res: list[Obj] = []
    for (g, _), d in RESOURCES.items():
        if g != group:
            continue
        res.append(
            {
                "name": d.name,
                "singularName": d.singular,
                "namespaced": d.namespaced,
                "kind": d.kind,
                "verbs": READ_VERBS,
                **({"shortNames": list(d.short)} if d.short else {}),
                **({"categories": list(d.categories)} if d.categories else {}),
            }
        )
        if d.name == "pods":
            res.append(
                {
                    "name": "pods/log",
                    "singularName": "",
                    "namespaced": True,
                    "kind": "Pod",
                    "verbs": ["get"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/v1" if group else "v1",
        "resources": res,
    }


def version_info() -> Obj:
    return {
        "major": "1",
        "minor": K8S_VERSION.split(".")[1],
        "gitVersion": K8S_VERSION,
        "gitCommit": "a78aa47129b8539636eb86a9d00e31b2720fe06b",
        "gitTreeState": "clean",
        "buildDate": "2024-12-10T18:44:20Z",
        "goVersion": "go1.22.9",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def _api_group(name: str) -> Obj:
    gv = {"groupVersion": f"{name}/v1", "version": "v1"}
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": [gv],
        "preferredVersion": gv,
    }


# --------------------------------------------------------------------------- tables (kubectl get)


def _col(name: str, typ: str = "string", priority: int = 0, fmt: str = "", desc: str = "") -> Obj:
    return {
        "name": name,
        "type": typ,
        "format": fmt,
        "description": desc or name,
        "priority": priority,
    }


def _age(obj: Obj, now: float) -> str:
    created = obj["metadata"].get("creationTimestamp")
    return human_duration(now - parse_ts(created)) if created else "<unknown>"


def _pod_cells(o: Obj, now: float) -> list[Any]:
    st = o["status"]
    statuses = st.get("containerStatuses") or []
    reason = st.get("reason") or st.get("phase", "Unknown")
    restarts, last_restart = 0, None
    ready = 0
    for cs in statuses:
        restarts += cs["restartCount"]
        term = (cs.get("lastState") or {}).get("terminated")
        if term and term.get("finishedAt"):
            t = parse_ts(term["finishedAt"])
            last_restart = t if last_restart is None else max(last_restart, t)
        state = cs.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated", {}).get("reason"):
            reason = state["terminated"]["reason"]
        if cs.get("ready") and "running" in state:
            ready += 1
    restarts_s = str(restarts)
    if last_restart is not None and restarts:
        restarts_s = f"{restarts} ({human_duration(now - last_restart)} ago)"
    return [
        o["metadata"]["name"],
        f"{ready}/{len(o['spec']['containers'])}",
        reason,
        restarts_s,
        _age(o, now),
        st.get("podIP") or "<none>",
        o["spec"].get("nodeName") or "<none>",
        "<none>",
        "<none>",
    ]


def _workload_extra(o: Obj) -> list[Any]:
    cs = o["spec"]["template"]["spec"]["containers"]
    sel = ",".join(f"{k}={v}" for k, v in o["spec"]["selector"].get("matchLabels", {}).items())
    return [",".join(c["name"] for c in cs), ",".join(c["image"] for c in cs), sel]


def _node_cells(o: Obj, now: float) -> list[Any]:
    ready = next((c for c in o["status"]["conditions"] if c["type"] == "Ready"), None)
    status = "Ready" if ready and ready["status"] == "True" else "NotReady"
    if o["spec"].get("unschedulable"):
        status += ",SchedulingDisabled"
    roles = sorted(
        k.split("/", 1)[1]
        for k in o["metadata"].get("labels", {})
        if k.startswith("node-role.kubernetes.io/")
    )
    addrs = {a["type"]: a["address"] for a in o["status"].get("addresses", [])}
    info = o["status"]["nodeInfo"]
    return [
        o["metadata"]["name"],
        status,
        ",".join(roles) or "<none>",
        _age(o, now),
        info["kubeletVersion"],
        addrs.get("InternalIP", "<none>"),
        addrs.get("ExternalIP", "<none>"),
        info["osImage"],
        info["kernelVersion"],
        info["containerRuntimeVersion"],
    ]


def _event_cells(o: Obj, now: float) -> list[Any]:
    first, last = parse_ts(o["firstTimestamp"]), parse_ts(o["lastTimestamp"])
    seen = human_duration(now - last)
    if o.get("count", 1) > 1:
        seen = f"{seen} (x{o['count']} over {human_duration(now - first)})"
    inv = o["involvedObject"]
    src = o.get("source", {})
    return [
        seen,
        o.get("type", ""),
        o.get("reason", ""),
        f"{inv['kind'].lower()}/{inv['name']}",
        inv.get("fieldPath", ""),
        ", ".join(x for x in (src.get("component", ""), src.get("host", "")) if x),
        o.get("message", ""),
        human_duration(now - first),
        o.get("count", 1),
        o["metadata"]["name"],
    ]


TABLES: dict[str, tuple[list[Obj], Callable[[Obj, float], list[Any]]]] = {
    "pods": (
        [
            _col("Name", fmt="name"),
            _col("Ready"),
            _col("Status"),
            _col("Restarts"),
            _col("Age"),
            _col("IP", priority=1),
            _col("Node", priority=1),
            _col("Nominated Node", priority=1),
            _col("Readiness Gates", priority=1),
        ],
        _pod_cells,
    ),
    "deployments": (
        [
            _col("Name", fmt="name"),
            _col("Ready"),
            _col("Up-to-date", "integer"),
            _col("Available", "integer"),
            _col("Age"),
            _col("Containers", priority=1),
            _col("Images", priority=1),
            _col("Selector", priority=1),
        ],
        lambda o, now: [
            o["metadata"]["name"],
            f"{o['status'].get('readyReplicas', 0)}/{o['spec']['replicas']}",
            o["status"].get("updatedReplicas", 0),
            o["status"].get("availableReplicas", 0),
            _age(o, now),
            *_workload_extra(o),
        ],
    ),
    "replicasets": (
        [
            _col("Name", fmt="name"),
            _col("Desired", "integer"),
            _col("Current", "integer"),
            _col("Ready", "integer"),
            _col("Age"),
            _col("Containers", priority=1),
            _col("Images", priority=1),
            _col("Selector", priority=1),
        ],
        lambda o, now: [
            o["metadata"]["name"],
            o["spec"]["replicas"],
            o["status"]["replicas"],
            o["status"].get("readyReplicas", 0),
            _age(o, now),
            *_workload_extra(o),
        ],
    ),
    "nodes": (
        [
            _col("Name", fmt="name"),
            _col("Status"),
            _col("Roles"),
            _col("Age"),
            _col("Version"),
            _col("Internal-IP", priority=1),
            _col("External-IP", priority=1),
            _col("OS-Image", priority=1),
            _col("Kernel-Version", priority=1),
            _col("Container-Runtime", priority=1),
        ],
        _node_cells,
    ),
    "events": (
        [
            _col("Last Seen"),
            _col("Type"),
            _col("Reason"),
            _col("Object"),
            _col("Subobject", priority=1),
            _col("Source", priority=1),
            _col("Message"),
            _col("First Seen", priority=1),
            _col("Count", "integer", 1),
            _col("Name", priority=1),
        ],
        _event_cells,
    ),
    "secrets": (
        [_col("Name", fmt="name"), _col("Type"), _col("Data", "integer"), _col("Age")],
        lambda o, now: [
            o["metadata"]["name"],
            o.get("type", ""),
            len(o.get("data") or {}),
            _age(o, now),
        ],
    ),
    "namespaces": (
        [_col("Name", fmt="name"), _col("Status"), _col("Age")],
        lambda o, now: [o["metadata"]["name"], o["status"]["phase"], _age(o, now)],
    ),
    "leases": (
        [_col("Name", fmt="name"), _col("Holder"), _col("Age")],
        lambda o, now: [o["metadata"]["name"], o["spec"].get("holderIdentity", ""), _age(o, now)],
    ),
}


def to_table(
    resource: str, objs: list[Obj], rd: ResourceDef, now: float, include: str, rv: str
) -> Obj:
    cols, cells = TABLES[resource]
    rows = []
    for o in objs:
        row: Obj = {"cells": cells(o, now)}
        if include == "Object":
            row["object"] = o
        elif include != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": o["metadata"],
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": cols,
        "rows": rows,
    }


# --------------------------------------------------------------------------- HTTP app


class RequestLog:
    """Every non-admin request, in memory and appended to a JSON-lines file."""

    def __init__(self, path: str | None, keep: int = 20000) -> None:
        self.entries: list[Obj] = []
        self.keep = keep
        self._fh = None
        if path:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._fh = os.fdopen(fd, "a", encoding="utf-8", buffering=1)

    def add(self, entry: Obj) -> None:
        self.entries.append(entry)
        if len(self.entries) > self.keep:
            del self.entries[: len(self.entries) - self.keep]
        if self._fh is not None:
            self._fh.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _json(obj: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(obj, status_code=status)


def _not_found(rd: ResourceDef, name: str) -> JSONResponse:
    details: Obj = {"name": name, "kind": rd.name}
    if rd.group:
        details["group"] = rd.group
    qualified = f"{rd.name}.{rd.group}" if rd.group else rd.name
    return _json(status_obj(404, "NotFound", f'{qualified} "{name}" not found', details), 404)


def _no_such_path() -> JSONResponse:
    return _json(
        status_obj(404, "NotFound", "the server could not find the requested resource", {}), 404
    )


def _bad_request(message: str) -> JSONResponse:
    return _json(status_obj(400, "BadRequest", message), 400)


def _forbidden(info: RequestInfo, path: str) -> JSONResponse:
    if info.is_resource:
        res = info.full_resource
        scope = f'in the namespace "{info.namespace}"' if info.namespace else "at the cluster scope"
        msg = f'{res} is forbidden: User "{CLIENT_USER}" cannot {info.verb} resource "{res}" in API group "{info.group}" {scope}'
        details: Obj = {
            "kind": info.resource,
            **({"name": info.name} if info.name else {}),
            **({"group": info.group} if info.group else {}),
        }
    else:
        msg = f'forbidden: User "{CLIENT_USER}" cannot {info.verb} path "{path}"'
        details = {}
    return _json(status_obj(403, "Forbidden", msg, details), 403)


def _unauthorized() -> JSONResponse:
    return _json(status_obj(401, "Unauthorized", "Unauthorized"), 401)


def create_app(cfg: KubeConfig, cluster: Cluster | None = None) -> Starlette:
    cluster = cluster or Cluster(cfg)
    reqlog = RequestLog(cfg.requests_log)

    def token_ok(request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        scheme, _, tok = auth.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            tok.strip().encode(), cfg.token.encode()
        )

    async def admin(request: Request) -> Response:
        if not admin_key_ok(request, cfg.admin_key):
            return _json({"error": "missing or wrong X-Admin-Key"}, 403)
        rest = request.path_params["rest"].strip("/")
        method = request.method
        if rest == "faults":
            if method == "GET":
                return _json(cluster.describe_faults())
            if method == "DELETE":
                return _json({"healed": cluster.heal()})
        elif rest.startswith("faults/"):
            name = rest.split("/", 1)[1]
            if name not in FAULTS:
                return _json({"error": f"unknown fault {name!r}", "available": sorted(FAULTS)}, 404)
            if method == "POST":
                try:
                    fault = cluster.inject(name, await fault_params(request))
                except ValueError as exc:
                    return _json({"error": str(exc)}, 400)
                log.info("fault %s injected", name)
                return _json({"fault": name, **cluster.describe_faults()["active"][fault.name]})
            if method == "DELETE":
                return _json({"healed": cluster.heal(name)})
        elif rest == "requests":
            if method == "GET":
                return _json({"count": len(reqlog.entries), "requests": reqlog.entries})
            if method == "DELETE":
                n = len(reqlog.entries)
                reqlog.entries.clear()
                return _json({"cleared": n})
        else:
            return _json({"error": "not found"}, 404)
        return _json({"error": f"method {method} not allowed here"}, 405)

    async def kube(request: Request) -> Response:
        path = request.url.path
        query = parse_qs(request.url.query, keep_blank_values=True)
        info = request_info(request.method, path, query)
        try:
            response = await dispatch(request, info, path, query)
        except Exception:  # answer like an apiserver would, and keep serving
            log.exception("internal error serving %s %s", request.method, path)
            response = _json(
                status_obj(
                    500,
                    "InternalError",
                    "an error on the server has prevented the request from succeeding",
                ),
                500,
            )
        reqlog.add(
            {
                "ts": ts_ms(time.time()),
                "method": request.method,
                "path": path,
                "query": request.url.query,
                "verb": info.verb,
                "resource": info.full_resource,
                "api_group": info.group,
                "namespace": info.namespace,
                "name": info.name,
                "status": response.status_code,
                "user_agent": request.headers.get("user-agent", ""),
            }
        )
        return response

    async def dispatch(
        request: Request, info: RequestInfo, path: str, query: dict[str, list[str]]
    ) -> Response:
        if path in HEALTH_PATHS and request.method == "GET":
            return PlainTextResponse("ok")
        if not token_ok(request) or "unauthorized" in cluster.faults:
            return _unauthorized()
        if "forbidden" in cluster.faults:
            return _forbidden(info, path)
        if request.method != "GET":
            return _json(
                status_obj(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                    {},
                ),
                405,
            )
        if not info.is_resource:
            return discovery(path)
        return serve_resource(request, info, query)

    def discovery(path: str) -> Response:
        p = path.rstrip("/") or "/"
        host = f"{cfg.host}:{cfg.port}"
        if p == "/version":
            return _json(version_info())
        if p == "/api":
            return _json(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": host}
                    ],
                }
            )
        if p == "/api/v1":
            return _json(resource_list(""))
        if p == "/apis":
            groups = [_api_group(g) for g in GROUPS]
            return _json({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        for g in GROUPS:
            if p == f"/apis/{g}":
                return _json(_api_group(g))
            if p == f"/apis/{g}/v1":
                return _json(resource_list(g))
        if p == "/":
            paths = [
                "/api",
                "/api/v1",
                "/apis",
                *(f"/apis/{g}" for g in GROUPS),
                *(f"/apis/{g}/v1" for g in GROUPS),
                "/healthz",
                "/livez",
                "/readyz",
                "/version",
            ]
            return _json({"paths": paths})
        return _no_such_path()

    def serve_resource(
        request: Request, info: RequestInfo, query: dict[str, list[str]]
    ) -> Response:
        rd = RESOURCES.get((info.group, info.resource))
        if rd is None or info.version != "v1":
            return _no_such_path()
        if info.subresource:
            if info.full_resource == "pods/log" and info.name and not info.watch_prefix:
                return pod_log(info, query)
            return _no_such_path()
        if not rd.namespaced and info.namespace and info.resource != "namespaces":
            return _no_such_path()
        snap = cluster.snapshot()
        objs = snap.objects[rd.name]
        if rd.namespaced and info.namespace:
            objs = [o for o in objs if o["metadata"].get("namespace") == info.namespace]
        want_table = "as=table" in request.headers.get("accept", "").lower().replace(" ", "")
        include = query.get("includeObject", ["Metadata"])[-1]
        if info.name and info.verb == "get":
            found = next((o for o in objs if o["metadata"]["name"] == info.name), None)
            if found is None:
                return _not_found(rd, info.name)
            if want_table:
                return _json(
                    to_table(
                        rd.name,
                        [found],
                        rd,
                        snap.now,
                        include,
                        found["metadata"]["resourceVersion"],
                    )
                )
            return _json(found)
        try:
            matchers = []
            if sel := query.get("labelSelector", [""])[-1]:
                matchers.append(label_matcher(sel))
            if fsel := query.get("fieldSelector", [""])[-1]:
                matchers.append(field_matcher(fsel))
        except ValueError as exc:
            return _bad_request(str(exc))

        def select(items: list[Obj]) -> list[Obj]:
            return [o for o in items if all(m(o) for m in matchers)]

        if info.verb == "watch":
            return watch(rd, info, select, query, want_table, include)
        items = select(objs)
        list_rv = str(
            1_000_000
            + zlib.crc32("".join(o["metadata"]["resourceVersion"] for o in items).encode())
            % 90_000_000
        )
        if want_table:
            return _json(to_table(rd.name, items, rd, snap.now, include, list_rv))
        bare = []
        for o in items:
            o = dict(o)
            o.pop("kind", None)
            o.pop("apiVersion", None)
            bare.append(o)
        return _json(
            {
                "kind": f"{rd.kind}List",
                "apiVersion": rd.api_version,
                "metadata": {"resourceVersion": list_rv},
                "items": bare,
            }
        )

    def watch(
        rd: ResourceDef,
        info: RequestInfo,
        select: Callable[[list[Obj]], list[Obj]],
        query: dict[str, list[str]],
        want_table: bool,
        include: str,
    ) -> Response:
        """Stream changes until timeoutSeconds (default 30, at most 300).

        Without resourceVersion (or with "0") the stream starts with an ADDED event per object;
        with one (a client resuming after its list) only later changes are sent.
        """
        replay = query.get("resourceVersion", [""])[-1] in ("", "0")
        try:
            timeout = float(query.get("timeoutSeconds", ["30"])[-1] or 30)
        except ValueError:
            return _bad_request("timeoutSeconds must be an integer")
        timeout = max(0.0, min(timeout, 300.0))

        def current() -> dict[str, Obj]:
            objs = cluster.snapshot().objects[rd.name]
            if rd.namespaced and info.namespace:
                objs = [o for o in objs if o["metadata"].get("namespace") == info.namespace]
            if info.name:
                objs = [o for o in objs if o["metadata"]["name"] == info.name]
            return {
                f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}": o
                for o in select(objs)
            }

        first = [True]

        def line(kind: str, obj: Obj) -> bytes:
            if want_table:  # kubectl get -w: one-row Tables, column definitions only once
                table = to_table(rd.name, [obj], rd, time.time(), include, "")
                table["metadata"] = {"resourceVersion": obj["metadata"]["resourceVersion"]}
                if not first[0]:
                    table["columnDefinitions"] = []
                first[0] = False
                obj = table
            return _event_line(kind, obj)

        async def stream() -> AsyncIterator[bytes]:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            seen = current()
            if replay:
                for o in seen.values():
                    yield line("ADDED", o)
            while (left := deadline - loop.time()) > 0:
                await asyncio.sleep(min(1.0, left))
                now_objs = current()
                for key, o in now_objs.items():
                    old = seen.get(key)
                    if old is None:
                        yield line("ADDED", o)
                    elif old["metadata"]["resourceVersion"] != o["metadata"]["resourceVersion"]:
                        yield line("MODIFIED", o)
                for key in seen.keys() - now_objs.keys():
                    yield line("DELETED", seen[key])
                seen = now_objs

        return StreamingResponse(stream(), media_type="application/json")

    def pod_log(info: RequestInfo, query: dict[str, list[str]]) -> Response:
        snap = cluster.snapshot()
        pod = (
            next((p for p in snap.pods if p.name == info.name), None)
            if info.namespace == cfg.namespace
            else None
        )
        if pod is None:
            return _not_found(RESOURCES[("", "pods")], info.name)

        def q(key: str) -> str:
            return query.get(key, [""])[-1]

        container = q("container") or pod.app.container
        if container != pod.app.container:
            return _bad_request(f"container {container} is not valid for pod {pod.name}")
        previous = _truthy(q("previous"))
        if previous and pod.previous is None:
            return _bad_request(
                f'previous terminated container "{container}" in pod "{pod.name}" not found'
            )
        try:
            since_s = int(q("sinceSeconds")) if q("sinceSeconds") else None
            tail = int(q("tailLines")) if q("tailLines") else None
            limit = int(q("limitBytes")) if q("limitBytes") else None
            since_t = parse_ts(q("sinceTime")) if q("sinceTime") else None
        except ValueError as exc:
            return _bad_request(f"invalid log options: {exc}")
        if (
            (since_s is not None and since_s < 1)
            or (tail is not None and tail < 0)
            or (limit is not None and limit < 1)
        ):
            return _bad_request(
                "sinceSeconds and limitBytes must be positive, tailLines non-negative"
            )
        lines = cluster.pod_log(snap, pod, previous=previous)
        if since_s is not None:
            lines = [x for x in lines if x[0] >= snap.now - since_s]
        elif since_t is not None:
            lines = [x for x in lines if x[0] >= since_t]
        if tail is not None:
            lines = lines[-tail:] if tail else []
        stamp = _truthy(q("timestamps"))
        body = "".join(
            f"{ts_nano(t)} {text}\n" if stamp else f"{text}\n" for t, text in lines
        ).encode()
        if limit is not None:
            body = body[:limit]
        return Response(body, media_type="text/plain")

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            reqlog.close()

    app = Starlette(
        routes=[
            Route("/admin/{rest:path}", admin, methods=methods),
            Route("/{rest:path}", kube, methods=methods),
        ],
        lifespan=lifespan,
    )
    app.state.cluster = cluster
    app.state.reqlog = reqlog
    return app


def _event_line(kind: str, obj: Obj) -> bytes:
    return (json.dumps({"type": kind, "object": obj}, separators=(",", ":")) + "\n").encode()


# --------------------------------------------------------------------------- entry point


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labcheck.sandbox.kube", description=__doc__)
    parser.add_argument(
        "--config", required=True, help="JSON settings file written by the sandbox manager"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = KubeConfig.load(args.config)
    except (OSError, ValueError) as exc:
        print(f"kube stand-in: bad config: {exc}", file=sys.stderr)
        return 2
    if os.stat(args.config).st_mode & 0o077:
        log.warning(
            "%s is readable by group/others; it holds secrets (want mode 0600)", args.config
        )

    from labcheck.sandbox.serve import serve

    tls: dict[str, Any] = {}
    if cfg.tls_cert and cfg.tls_key:
        ensure_tls_files(cfg.tls_cert, cfg.tls_key, ("127.0.0.1", "localhost", cfg.host))
        tls = {"ssl_certfile": cfg.tls_cert, "ssl_keyfile": cfg.tls_key}
    log.info(
        "Kubernetes API stand-in on %s://%s:%d (namespace %s)",
        cfg.scheme,
        cfg.host,
        cfg.port,
        cfg.namespace,
    )
    return serve(create_app(cfg), host=cfg.host, port=cfg.port, graceful_s=2, **tls)


if __name__ == "__main__":
    sys.exit(main())
