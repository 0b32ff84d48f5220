"""The sandbox's services: configs, startup steps, readiness, S3 seed, token, kubeconfig."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from labcheck.sandbox.flavours import (
    DEFAULT_FLAVOR,
    REQUEST_COUNTER,
    SHAPE_DEFAULTS,
    endpoint_paths,
    traffic_rps,
)
from labcheck.sandbox.postgres import APP_ROLE, LABCHECK_ROLE, dsn
from labcheck.sandbox.processes import Starter, pid_alive
from labcheck.sandbox.state import (
    HOST,
    SERVICES,
    SandboxError,
    kube_ca,
    new_secrets,
    one_line,
    write_json,
)

__all__ = ["BUCKET", "NAMESPACE", "Plan", "healthy", "tls_verify"]

# The dataset bucket's quota: small enough that the quota-full fault fills it in seconds.
QUOTA_BYTES = 256 * 1024 * 1024
BUCKET = "llm-research-datasets"
NAMESPACE = "llm-research"
REGION = "us-east-1"
WINDOW = "10s"
TEST_TOKEN_SUBJECT = "labcheck-smoke"
TEST_TOKEN_LIFETIME_S = 30 * 24 * 3600


_PROBE_TIMEOUT = httpx.Timeout(3.0, connect=1.0)

Say = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """What one `up` decides before it starts anything: where each service listens, the secrets."""

    d: Path
    ports: dict[str, int]
    url: dict[str, str]
    sec: dict[str, str]
    test_token: str
    # The exporter library that instruments the API, and its bodies' shape (sandbox/flavours.py).
    flavor: str = DEFAULT_FLAVOR
    shape: dict[str, Any] = field(default_factory=lambda: dict(SHAPE_DEFAULTS))
    endpoints: int = 1  # endpoint sets of the API (`up --endpoints N`): N x the routes, pods and series

    @classmethod
    def new(cls, d: Path, ports: dict[str, int], flavor: str = DEFAULT_FLAVOR,
            shape: dict[str, Any] | None = None, endpoints: int = 1) -> Plan:
        """Fresh secrets and the kube stand-in's TLS files for a sandbox in d on ports."""
        sec = new_secrets()
        url = {name: f"http://{HOST}:{port}" for name, port in ports.items()}
        url["kube"] = f"https://{HOST}:{ports['kube']}"
        from labcheck.sandbox.kube import ensure_tls_files

        ensure_tls_files(kube_ca(d), d / "kube-tls.key")
        return cls(d, ports, url, sec, _make_token(sec["jwt_secret"]), flavor,
                   dict(shape or SHAPE_DEFAULTS), max(1, endpoints))

    @property
    def kubeconfig(self) -> Path:
        return self.d / "kubeconfig"

    def db_url(self, role: str) -> str:
        """The DSN of role (APP_ROLE or LABCHECK_ROLE) on the sandbox database."""
        password = self.sec["app_db_password" if role == APP_ROLE else "labcheck_db_password"]
        return dsn(role, password, self.ports["postgres"])


# ---------------------------------------------------------------- configs


def write_configs(plan: Plan) -> None:
    """<service>.json for api, s3gw and kube: what `python -m labcheck.sandbox.<service>` reads."""
    d, p, url, sec, test_token = plan.d, plan.ports, plan.url, plan.sec, plan.test_token
    app_dsn = plan.db_url(APP_ROLE)
    aws = {
        "aws_region": REGION,
        "aws_access_key_id": sec["aws_access_key_id"],
        "aws_secret_access_key": sec["aws_secret_access_key"],
    }
    configs = {
        "api": {
            "host": HOST,
            "port": p["api"],
            "dsn": app_dsn,
            # Opened in full at start, as production pools usually are: ten triage runs at once
            # on two cores must not see the pool still growing one connection at a time.
            "pool_min": 10,
            "pool_max": 10,
            "s3_endpoint": url["s3gw"],
            "cloudwatch_endpoint": url["moto"],
            "bucket": BUCKET,
            **aws,
            "jwt_secret": sec["jwt_secret"],
            "admin_key": sec["admin_key"],
            "quota_bytes": QUOTA_BYTES,
            "traffic_rps": traffic_rps(plan.endpoints),
            "endpoints": plan.endpoints,
            "state_dir": str(d),
            "flavor": plan.flavor,
            **plan.shape,
            "app_log": str(d / "logs" / "api-app.log"),
        },
        "s3gw": {
            "host": HOST,
            "port": p["s3gw"],
            "upstream": url["moto"],
            "admin_key": sec["admin_key"],
            "bucket": BUCKET,
            "cloudwatch_endpoint": url["moto"],
            **aws,
            "requests_log": str(d / "s3-requests.jsonl"),
        },
        "kube": {
            "host": HOST,
            "port": p["kube"],
            "admin_key": sec["admin_key"],
            "token": sec["kube_token"],
            "namespace": NAMESPACE,
            "jwt_secret": sec["jwt_secret"],
            "requests_log": str(d / "kube-requests.jsonl"),
            "tls_cert": kube_ca(d),
            "tls_key": str(d / "kube-tls.key"),
            "planted": {"db_password": sec["app_db_password"], "bearer": test_token},
            "api_log": str(d / "logs" / "api-app.log"),
            "endpoints": plan.endpoints,
        },
    }
    for name, cfg in configs.items():
        write_json(d / f"{name}.json", cfg)


def settings(plan: Plan) -> dict[str, Any]:
    """The suite's configuration for this sandbox (state.json's "settings")."""
    url, sec = plan.url, plan.sec
    return {
        "api_url": url["api"],
        "prometheus_url": url["prometheus"],
        "pushgateway_url": url["pushgateway"],
        "database_url": plan.db_url(LABCHECK_ROLE),
        "s3_bucket": BUCKET,
        "s3_endpoint": url["s3gw"],
        "cloudwatch_endpoint": url["moto"],
        "aws_region": REGION,
        "aws_access_key_id": sec["aws_access_key_id"],
        "aws_secret_access_key": sec["aws_secret_access_key"],
        "kubeconfig": str(plan.kubeconfig),
        "namespace": NAMESPACE,
        "test_token": plan.test_token,
        "docs_url": f"{url['api']}/docs",
        "window": WINDOW,
        "s3_quota_bytes": QUOTA_BYTES,
        # Time is compressed in the sandbox: S3 error history is judged over a minute, not an hour.
        "s3_error_window": "1m",
        # ... and the log windows of the log-pattern checks (the read itself still reaches 30 minutes back).
        "log_error_window_s": 20,
        "log_storage_window_s": 20,
        "log_auth_window_s": 20,
        # Every data route, checked one by one: with `up --endpoints N`, all 2N of them.
        **({"api_endpoints": endpoint_paths(plan.endpoints)} if plan.endpoints > 1 else {}),
    }


# ---------------------------------------------------------------- startup steps


def start_moto(st: Starter, plan: Plan, say: Say) -> None:
    """moto, with the bucket and a few datasets."""
    url = plan.url["moto"]
    say(f"moto on {url}")
    st.spawn(
        "moto",
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(plan.ports["moto"])],
        url=url,
    )
    st.wait("moto", lambda: _http_answers(f"{url}/moto-api/"), "moto to answer")
    try:
        _seed_s3(url, plan.sec)
    except Exception as exc:
        raise SandboxError(
            f"seeding bucket {BUCKET} in moto failed: {one_line(exc)}; see {st.log('moto')}"
        ) from None


def start_servers(st: Starter, plan: Plan, say: Say) -> None:
    """s3gw and kube (independent), then the API once both are ready."""
    url, state = plan.url, st.state
    for name in ("s3gw", "kube", "api"):
        if name == "api":
            st.wait("s3gw", lambda: _ready(state, "s3gw"), "s3gw HEAD on the bucket")
            st.wait("kube", lambda: _ready(state, "kube"), "kube GET /version")
        say(f"{name} on {url[name]}")
        addr = {"url": url[name]}
        if name == "kube":
            addr["kubeconfig"] = str(plan.kubeconfig)
        st.spawn(
            name,
            [
                sys.executable,
                "-m",
                f"labcheck.sandbox.{name}",
                "--config",
                str(plan.d / f"{name}.json"),
            ],
            **addr,
        )
    _write_kubeconfig(plan.kubeconfig, url["kube"], plan.sec["kube_token"])
    st.wait("api", lambda: _ready(state, "api"), "api GET /health")


def start_prometheus(st: Starter, plan: Plan, say: Say, prom_bin: str, pushgw_bin: str) -> None:
    """Prometheus and the Pushgateway; returns once the API's traffic can be queried."""
    d, p, url, state = plan.d, plan.ports, plan.url, st.state
    prom_dir = d / "prometheus"
    if prom_dir.exists():
        shutil.rmtree(prom_dir)
    (prom_dir / "data").mkdir(parents=True)
    (prom_dir / "prometheus.yml").write_text(_prometheus_config(d, p))
    say(f"prometheus on {url['prometheus']}, pushgateway on {url['pushgateway']}")
    st.spawn(
        "prometheus",
        [
            prom_bin,
            f"--config.file={prom_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={prom_dir / 'data'}",
            f"--web.listen-address={HOST}:{p['prometheus']}",
        ],
        url=url["prometheus"],
    )
    st.spawn(
        "pushgateway",
        [pushgw_bin, f"--web.listen-address={HOST}:{p['pushgateway']}"],
        url=url["pushgateway"],
    )
    st.wait("pushgateway", lambda: _ready(state, "pushgateway"), "pushgateway /-/ready")
    st.wait("prometheus", lambda: _ready(state, "prometheus"), "prometheus /-/ready")
    st.wait(
        "prometheus",
        lambda: _prom_has(url["prometheus"], 'up{job="api"}', want="1"),
        'prometheus first scrape of the api (up{job="api"} == 1)',
    )
    # Up means ready to triage: the suite's rate queries need two scrapes of the API's
    # traffic inside the window, else a first run reports them UNKNOWN ("no data").
    rate = f"sum(rate({REQUEST_COUNTER[plan.flavor]}[{WINDOW}]))"
    st.wait("prometheus", lambda: _prom_has(url["prometheus"], rate), f"prometheus has {rate}")


def _seed_s3(moto_url: str, sec: dict[str, str]) -> None:
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name=REGION,
        aws_access_key_id=sec["aws_access_key_id"],
        aws_secret_access_key=sec["aws_secret_access_key"],
        config=Config(
            connect_timeout=2,
            read_timeout=10,
            retries={"max_attempts": 2},
            s3={"addressing_style": "path"},
        ),
    )
    s3.create_bucket(Bucket=BUCKET)
    # The same datasets the API would seed into an empty bucket (labcheck.sandbox.api).
    rows = "\n".join(
        json.dumps({"instruction": f"Summarise paragraph {i}.", "output": "..."}) for i in range(60)
    )
    jsonl = rows + "\n"
    objects = {
        "datasets/alpaca-cleaned/train.jsonl": jsonl,
        "datasets/alpaca-cleaned/README.md": "# alpaca-cleaned\nInstruction tuning set.\n",
        "datasets/mmlu/test.jsonl": jsonl[: len(jsonl) // 2],
    }
    for key, body in objects.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode())


def _make_token(jwt_secret: str) -> str:
    import jwt

    now = int(time.time())
    payload = {"sub": TEST_TOKEN_SUBJECT, "iat": now, "exp": now + TEST_TOKEN_LIFETIME_S}
    token = jwt.encode(payload, jwt_secret, algorithm="HS256")
    return token if isinstance(token, str) else token.decode()


def _write_kubeconfig(path: Path, server_url: str, token: str) -> None:
    from labcheck.sandbox.kube import write_kubeconfig

    write_kubeconfig(path, server_url=server_url, token=token, namespace=NAMESPACE,
                     ca_file=kube_ca(path.parent))
    os.chmod(path, 0o600)


def _prometheus_config(d: Path, p: dict[str, int]) -> str:
    def job(name: str, port: int, honor: bool = False) -> str:
        lines = [f"  - job_name: {name}"]
        if honor:
            lines.append("    honor_labels: true")
        lines += ["    static_configs:", f'      - targets: ["{HOST}:{port}"]']
        return "\n".join(lines)

    return (
        "# Written by labcheck sandbox up; regenerated on every start.\n"
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        f"  query_log_file: {json.dumps(str(d / 'prometheus' / 'query.log'))}\n"
        "scrape_configs:\n"
        f"{job('api', p['api'])}\n"
        f"{job('pushgateway', p['pushgateway'], honor=True)}\n"
        f"{job('prometheus', p['prometheus'])}\n"
    )


# ---------------------------------------------------------------- readiness


def tls_verify(state: dict[str, Any], name: str) -> ssl.SSLContext | bool:
    """How to verify service name's TLS: the kube stand-in's own CA, else the default."""
    if name == "kube":
        return ssl.create_default_context(cafile=kube_ca(Path(state["dir"])))
    return True


def _tcp_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=1.0):
        return True


def _http_ok(method: str, url: str, headers: dict[str, str] | None = None,
             verify: ssl.SSLContext | bool = True) -> bool:
    resp = httpx.request(method, url, headers=headers, timeout=_PROBE_TIMEOUT, verify=verify)
    return resp.status_code == 200


def _http_answers(url: str) -> bool:
    resp = httpx.get(url, timeout=_PROBE_TIMEOUT)
    return resp.status_code < 500


def _prom_has(prom_url: str, expr: str, want: str | None = None) -> bool:
    """Whether an instant query answers with a series (whose value is ``want``, when given)."""
    resp = httpx.get(f"{prom_url}/api/v1/query", params={"query": expr}, timeout=_PROBE_TIMEOUT)
    if resp.status_code != 200:
        return False
    result = resp.json().get("data", {}).get("result", [])
    return any(want is None or item.get("value", [None, None])[1] == want for item in result)


def _ready(state: dict[str, Any], name: str) -> bool:
    """One readiness probe of one service of a running sandbox (no waiting)."""
    svc = state.get("services", {}).get(name) or {}
    settings = state.get("settings", {})
    sec = state.get("secrets", {})
    try:
        if name == "postgres":
            return _tcp_open(svc["address"])
        url = svc["url"]
        if name == "api":
            return _http_ok("GET", f"{url}/health")
        if name in ("prometheus", "pushgateway"):
            return _http_ok("GET", f"{url}/-/ready")
        if name == "moto":
            return _http_answers(f"{url}/moto-api/")
        if name == "s3gw":
            return _http_ok("HEAD", f"{url}/{settings.get('s3_bucket', BUCKET)}")
        if name == "kube":
            token = sec.get("kube_token", "")
            return _http_ok("GET", f"{url}/version", {"Authorization": f"Bearer {token}"},
                            verify=tls_verify(state, name))
    except (OSError, httpx.HTTPError, KeyError, ValueError):
        return False
    return False


def _serving(state: dict[str, Any], name: str) -> bool:
    """The service answers on its port at all: any HTTP status counts, so an injected fault
    (s3-outage's 503, kube's unauthorized) does not make a running sandbox look broken."""
    svc = state.get("services", {}).get(name) or {}
    try:
        if "url" in svc:
            httpx.request("HEAD" if name == "s3gw" else "GET", svc["url"], timeout=_PROBE_TIMEOUT,
                          verify=tls_verify(state, name))
            return True
        return _tcp_open(svc["address"])
    except (OSError, httpx.HTTPError, KeyError, ValueError):
        return False


def healthy(state: dict[str, Any]) -> bool:
    """Every service recorded, settings written, every PID ours and alive and serving."""
    services = state.get("services", {})
    if set(services) != set(SERVICES) or not state.get("settings"):
        return False
    return all(
        pid_alive(services[name].get("pid"), name) and _serving(state, name) for name in SERVICES
    )
