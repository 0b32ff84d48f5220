"""Tests for the sandbox's Kubernetes API stand-in (labcheck.sandbox.kube), run as a real process."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from labcheck.sandbox.kube import request_info, write_kubeconfig

NS = "llm-research"
API = "llm-research-api"
WORKERS = "experiment-workers"
T = 5  # _request_timeout for every kubernetes client call
KUBECTL = "/usr/bin/kubectl"
ALL_KUBE_FAULTS = [
    "crash-loop",
    "oom-killed",
    "node-not-ready",
    "recent-rollout",
    "workers-unavailable",
    "auth-secret-rotated",
]


@dataclass
class Standin:
    url: str
    token: str
    admin_key: str
    settings: dict[str, Any]
    kubeconfig: Path
    requests_log: Path
    stderr_log: Path
    verify: ssl.SSLContext | bool
    proc: subprocess.Popen[bytes]

    def client(self, *, token: str | None = "default", **headers: str) -> httpx.Client:
        hdrs = dict(headers)
        tok = self.token if token == "default" else token
        if tok is not None:
            hdrs["Authorization"] = f"Bearer {tok}"
        return httpx.Client(base_url=self.url, verify=self.verify, headers=hdrs, timeout=5)

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            verify=self.verify,
            headers={"X-Admin-Key": self.admin_key},
            timeout=5,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(tmp: Path, *, tls: bool) -> Standin:
    port = _free_port()
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "admin_key": "admin-key-for-tests",
        "token": "token-for-tests",
        "namespace": NS,
        "jwt_secret": "jwt-secret-for-tests",
        "requests_log": str(tmp / "kube-requests.jsonl"),
        "planted": {"db_password": "planted-db-pw-42", "bearer": "planted-bearer-77"},
        "api_log": str(tmp / "api-app.log"),  # written by test_api_log_lines_are_the_api_pods_logs
    }
    if tls:
        settings["tls_cert"] = str(tmp / "kube-tls.crt")
        settings["tls_key"] = str(tmp / "kube-tls.key")
    cfg = tmp / "kube.json"
    fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(settings, fh)
    stderr_log = tmp / "kube.log"
    with open(stderr_log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "labcheck.sandbox.kube", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    verify: ssl.SSLContext | bool = True
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            pytest.fail(f"stand-in exited with {proc.returncode}:\n{stderr_log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"stand-in not ready in time:\n{stderr_log.read_text()}")
        if tls and isinstance(verify, bool) and Path(settings["tls_cert"]).exists():
            with contextlib.suppress(ssl.SSLError, OSError):
                verify = ssl.create_default_context(cafile=settings["tls_cert"])
        if not tls or not isinstance(verify, bool):
            try:
                if httpx.get(url + "/readyz", verify=verify, timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
        time.sleep(0.05)  # poll interval, bounded by the deadline above
    kubeconfig = tmp / "kubeconfig"
    write_kubeconfig(
        kubeconfig,
        server_url=url,
        token=settings["token"],
        ca_file=settings["tls_cert"] if tls else None,
    )
    return Standin(
        url=url,
        token=settings["token"],
        admin_key=settings["admin_key"],
        settings=settings,
        kubeconfig=kubeconfig,
        requests_log=tmp / "kube-requests.jsonl",
        stderr_log=stderr_log,
        verify=verify,
        proc=proc,
    )


def _stop(standin: Standin) -> int:
    proc = standin.proc
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
            pytest.fail("stand-in ignored SIGTERM")
    return int(proc.returncode)


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    standin = _start(tmp_path_factory.mktemp("kube"), tls=True)
    yield standin
    assert _stop(standin) == 0, standin.stderr_log.read_text()


@pytest.fixture(autouse=True)
def _heal_after(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "kube" in request.fixturenames:
        standin: Standin = request.getfixturevalue("kube")
        with standin.admin() as a:
            assert a.delete("/admin/faults").status_code == 200


@pytest.fixture(scope="module")
def http(kube: Standin) -> Iterator[httpx.Client]:
    with kube.client() as c:
        yield c


@pytest.fixture
def fault(kube: Standin) -> Iterator[Callable[..., dict[str, Any]]]:
    with kube.admin() as a:

        def inject(name: str, **params: Any) -> dict[str, Any]:
            r = a.post(f"/admin/faults/{name}", json=params)
            assert r.status_code == 200, r.text
            return dict(r.json())

        yield inject


@dataclass
class Apis:
    core: k8s.CoreV1Api
    apps: k8s.AppsV1Api
    raw: k8s.ApiClient


@pytest.fixture(scope="module")
def apis(kube: Standin) -> Iterator[Apis]:
    raw = k8s_config.new_client_from_config(config_file=str(kube.kubeconfig))
    yield Apis(k8s.CoreV1Api(raw), k8s.AppsV1Api(raw), raw)
    raw.close()


def _age(t: datetime) -> float:
    return time.time() - t.timestamp()


def _pods(apis: Apis, app: str) -> list[Any]:
    return list(
        apis.core.list_namespaced_pod(NS, label_selector=f"app={app}", _request_timeout=T).items
    )


def _cond(conds: list[Any], ctype: str) -> Any:
    return next(c for c in conds if c.type == ctype)


def _kubectl(kube: Standin, *args: str) -> str:
    if not Path(KUBECTL).exists():
        pytest.skip("kubectl not installed")
    cache = kube.kubeconfig.parent / "kubectl-cache"  # not ~/.kube/cache
    res = subprocess.run(
        [KUBECTL, "--kubeconfig", str(kube.kubeconfig), "--cache-dir", str(cache), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, f"kubectl {' '.join(args)}:\n{res.stderr}"
    return res.stdout


# --------------------------------------------------------------------------- discovery and auth


def test_discovery(http: httpx.Client) -> None:
    assert http.get("/version").json()["gitVersion"].startswith("v1.")
    assert http.get("/api").json()["versions"] == ["v1"]
    core = {r["name"] for r in http.get("/api/v1").json()["resources"]}
    assert {"pods", "pods/log", "events", "nodes", "secrets", "namespaces"} <= core
    groups = http.get("/apis").json()
    assert groups["kind"] == "APIGroupList"
    assert "apps" in {g["name"] for g in groups["groups"]}
    apps = {r["name"]: r for r in http.get("/apis/apps/v1").json()["resources"]}
    assert {"deployments", "replicasets"} <= set(apps)
    assert "deploy" in apps["deployments"]["shortNames"]
    assert http.get("/openapi/v2").status_code == 404


def test_requests_without_valid_token_get_401(kube: Standin) -> None:
    for token in (None, "wrong-token"):
        with kube.client(token=token) as c:
            for path in ("/api/v1/namespaces/llm-research/pods", "/version", "/api"):
                r = c.get(path)
                assert r.status_code == 401
                assert r.json()["kind"] == "Status"
                assert r.json()["reason"] == "Unauthorized"


def test_admin_needs_key_and_validates(kube: Standin) -> None:
    with kube.client() as c:  # a bearer token is not an admin key
        assert c.post("/admin/faults/crash-loop").status_code == 403
        assert c.get("/admin/requests").status_code == 403
    with kube.admin() as a:
        assert a.post("/admin/faults/no-such-fault").status_code == 404
        assert a.post("/admin/faults/crash-loop", json={"bogus": 1}).status_code == 400
        assert a.post("/admin/faults/crash-loop", json={"interval": "x"}).status_code == 400
        listing = a.get("/admin/faults").json()
        assert listing["active"] == {}
        assert {"crash-loop", "forbidden", "unauthorized"} <= set(listing["available"])


def test_forbidden_and_unauthorized_faults(kube: Standin, fault: Callable[..., Any]) -> None:
    fault("forbidden")
    with kube.client() as c:
        r = c.get("/api/v1/namespaces/llm-research/pods")
        assert r.status_code == 403
        body = r.json()
        assert (body["kind"], body["reason"], body["code"]) == ("Status", "Forbidden", 403)
        assert 'cannot list resource "pods"' in body["message"]
        assert c.get("/apis/apps/v1/namespaces/llm-research/deployments/x").status_code == 403
        assert c.get("/api").status_code == 403
    with kube.admin() as a:  # admin endpoints are not subject to the faults
        assert a.delete("/admin/faults/forbidden").json() == {"healed": ["forbidden"]}
    fault("unauthorized")
    with kube.client() as c:
        assert c.get("/api/v1/nodes").status_code == 401
    with kube.admin() as a:
        a.delete("/admin/faults")
    with kube.client() as c:
        assert c.get("/api/v1/nodes").status_code == 200


# --------------------------------------------------------------------------- the official client


@pytest.mark.parametrize("faults", [[], ALL_KUBE_FAULTS], ids=["healthy", "all-faults"])
def test_client_deserialises_every_kind(
    apis: Apis, fault: Callable[..., Any], faults: list[str]
) -> None:
    for name in faults:
        fault(name)
    core, apps = apis.core, apis.apps
    pods = core.list_namespaced_pod(NS, _request_timeout=T).items
    assert len(pods) == 5
    for p in pods:
        core.read_namespaced_pod(p.metadata.name, NS, _request_timeout=T)
        core.read_namespaced_pod_log(p.metadata.name, NS, tail_lines=2, _request_timeout=T)
    assert len(core.list_pod_for_all_namespaces(_request_timeout=T).items) == 5
    for n in core.list_node(_request_timeout=T).items:
        core.read_node(n.metadata.name, _request_timeout=T)
    assert core.list_namespaced_event(NS, _request_timeout=T).items
    assert core.list_event_for_all_namespaces(_request_timeout=T).items
    core.read_namespaced_secret("llm-research-secrets", NS, _request_timeout=T)
    core.list_namespaced_secret(NS, _request_timeout=T)
    assert NS in {n.metadata.name for n in core.list_namespace(_request_timeout=T).items}
    core.read_namespace(NS, _request_timeout=T)
    for d in apps.list_namespaced_deployment(NS, _request_timeout=T).items:
        apps.read_namespaced_deployment(d.metadata.name, NS, _request_timeout=T)
    for rs in apps.list_namespaced_replica_set(NS, _request_timeout=T).items:
        apps.read_namespaced_replica_set(rs.metadata.name, NS, _request_timeout=T)
    apps.list_deployment_for_all_namespaces(_request_timeout=T)
    k8s.CoordinationV1Api(apis.raw).list_namespaced_lease("kube-node-lease", _request_timeout=T)
    assert k8s.VersionApi(apis.raw).get_code(_request_timeout=T).major == "1"
    k8s.CoreApi(apis.raw).get_api_versions(_request_timeout=T)
    k8s.ApisApi(apis.raw).get_api_versions(_request_timeout=T)
    core.get_api_resources(_request_timeout=T)
    apps.get_api_resources(_request_timeout=T)


def test_healthy_objects(apis: Apis, kube: Standin) -> None:
    core, apps = apis.core, apis.apps
    dep = apps.read_namespaced_deployment(API, NS, _request_timeout=T)
    assert dep.spec.replicas == 3 and dep.status.available_replicas == 3
    assert dep.metadata.labels["app"] == API
    assert dep.metadata.annotations["deployment.kubernetes.io/revision"] == "3"
    workers = apps.read_namespaced_deployment(WORKERS, NS, _request_timeout=T)
    assert workers.spec.replicas == 2 and workers.status.available_replicas == 2

    rss = apps.list_namespaced_replica_set(
        NS, label_selector=f"app={API}", _request_timeout=T
    ).items
    by_rev = {int(r.metadata.annotations["deployment.kubernetes.io/revision"]): r for r in rss}
    assert sorted(by_rev) == [1, 2, 3]
    images = {rev: r.spec.template.spec.containers[0].image for rev, r in by_rev.items()}
    assert images[3] == "registry.example/llm-research-api:v1.4.0"
    assert len(set(images.values())) == 3
    assert by_rev[1].spec.replicas == 0 and by_rev[2].spec.replicas == 0
    assert by_rev[3].spec.replicas == 3
    assert 1.9 * 86400 < _age(by_rev[3].metadata.creation_timestamp) < 2.1 * 86400
    for r in rss:
        (owner,) = r.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid) == ("Deployment", API, dep.metadata.uid)

    pods = core.list_namespaced_pod(NS, _request_timeout=T).items
    rs_uids = {r.metadata.name: r.metadata.uid for r in rss}
    nodes_used = set()
    for p in pods:
        assert p.status.phase == "Running"
        assert _cond(p.status.conditions, "Ready").status == "True"
        (cs,) = p.status.container_statuses
        assert cs.ready and cs.state.running is not None
        (c,) = p.spec.containers
        assert c.resources.limits["memory"] and c.resources.limits["cpu"]
        assert c.resources.requests["memory"] and c.resources.requests["cpu"]
        (owner,) = p.metadata.owner_references
        assert owner.kind == "ReplicaSet"
        if p.metadata.labels["app"] == API:
            assert rs_uids[owner.name] == owner.uid
            assert c.resources.limits == {"cpu": "1", "memory": "2Gi"}
        nodes_used.add(p.spec.node_name)
    assert nodes_used == {"node-a", "node-b"}
    veteran = [p for p in pods if p.status.container_statuses[0].restart_count == 40]
    assert len(veteran) == 1
    term = veteran[0].status.container_statuses[0].last_state.terminated
    assert 29 * 86400 < _age(term.finished_at) < 31 * 86400

    for n in core.list_node(_request_timeout=T).items:
        conds = {c.type: c.status for c in n.status.conditions}
        assert conds == {
            "Ready": "True",
            "MemoryPressure": "False",
            "DiskPressure": "False",
            "PIDPressure": "False",
        }
        assert n.status.capacity["memory"] and n.status.allocatable["cpu"]
        assert n.status.node_info.kubelet_version.startswith("v1.")

    events = core.list_namespaced_event(NS, _request_timeout=T).items
    assert events and {e.type for e in events} == {"Normal"}
    assert all(e.last_timestamp is not None for e in events)

    secret = core.read_namespaced_secret("llm-research-secrets", NS, _request_timeout=T)
    assert {"JWT_SECRET", "DATABASE_URL", "S3_ACCESS_KEY"} <= set(secret.data)
    assert base64.b64decode(secret.data["JWT_SECRET"]).decode() == kube.settings["jwt_secret"]


def test_selectors(http: httpx.Client) -> None:
    base = "/api/v1/namespaces/llm-research/pods"

    def names(**params: str) -> list[str]:
        r = http.get(base, params=params)
        assert r.status_code == 200, r.text
        return [p["metadata"]["name"] for p in r.json()["items"]]

    assert len(names(labelSelector="app=experiment-workers")) == 2
    assert len(names(labelSelector="app==llm-research-api")) == 3
    assert len(names(labelSelector="app!=llm-research-api")) == 2
    assert len(names(labelSelector="app in (llm-research-api,experiment-workers)")) == 5
    assert names(labelSelector="app=nope") == []
    on_b = names(fieldSelector="spec.nodeName=node-b")
    assert len(on_b) == 2
    assert len(names(fieldSelector="spec.nodeName=node-b,status.phase!=Failed")) == 2
    assert http.get(base, params={"labelSelector": "app in (x"}).status_code == 400
    assert http.get("/api/v1/namespaces/other/pods").json()["items"] == []
    missing = http.get(f"{base}/no-such-pod")
    assert missing.status_code == 404 and missing.json()["reason"] == "NotFound"


def test_pod_logs(apis: Apis, http: httpx.Client, kube: Standin) -> None:
    planted = kube.settings["planted"]
    (api_pod, *_) = _pods(apis, API)
    name = api_pod.metadata.name
    path = f"/api/v1/namespaces/llm-research/pods/{name}/log"
    text = http.get(path).text
    lines = text.splitlines()
    assert len(lines) > 50
    assert sum(f"db connect password={planted['db_password']}" in ln for ln in lines) == 1
    assert sum(f"Authorization: Bearer {planted['bearer']}" in ln for ln in lines) == 1
    assert sum(f"JWT_SECRET={kube.settings['jwt_secret']}" in ln for ln in lines) == 1
    stamps = [datetime.fromisoformat(ln.split(" ", 1)[0]) for ln in lines]
    assert all(-5 < _age(t) <= 30 * 60 + 5 for t in stamps)

    assert len(http.get(path, params={"tailLines": 3}).text.splitlines()) == 3
    assert len(http.get(path, params={"limitBytes": 40}).content) == 40
    recent = http.get(path, params={"sinceSeconds": 120}).text.splitlines()
    assert 0 < len(recent) < len(lines)
    stamped = http.get(path, params={"timestamps": "true", "tailLines": 1}).text
    assert stamped.split(" ", 1)[0].endswith("Z") and len(stamped.split(" ", 1)[0]) == 30
    prev = http.get(path, params={"previous": "true"})
    assert prev.status_code == 400 and "previous terminated container" in prev.json()["message"]
    assert http.get(path, params={"container": "nope"}).status_code == 400

    veteran = next(p for p in _pods(apis, WORKERS) if p.status.container_statuses[0].restart_count)
    old = apis.core.read_namespaced_pod_log(
        veteran.metadata.name, NS, previous=True, _request_timeout=T
    )
    first_stamp = datetime.fromisoformat(old.splitlines()[0].split(" ", 1)[0])
    assert _age(first_stamp) > 29 * 86400


def test_api_log_lines_are_the_api_pods_logs(apis: Apis, http: httpx.Client, kube: Standin) -> None:
    """The sandbox API's own log file: each line of its last minute in exactly one running API pod's log."""
    now = time.time()

    def stamp(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

    marks = [f"probe-{i:03d}" for i in range(60)]
    with open(kube.settings["api_log"], "a", encoding="utf-8") as fh:
        for i, mark in enumerate(marks):
            fh.write(f'{stamp(now - 48 + 0.8 * i)} INFO  [uvicorn.access] 10.9.0.{i} - "GET /{mark} HTTP/1.1" 401 1.0ms\n')
        fh.write(f"{stamp(now - 5000)} INFO  [uvicorn.access] too old for the 30 minutes\n")
        fh.write(f"{stamp(now)} INFO  [uvicorn.access] being written")  # no newline yet: not served
    logs = {p.metadata.name: http.get(f"/api/v1/namespaces/{NS}/pods/{p.metadata.name}/log").text
            for p in _pods(apis, API)}
    seen = [mark for text in logs.values() for mark in marks if f"/{mark} " in text]
    assert sorted(seen) == marks  # each line once, in one pod
    assert sum(1 for text in logs.values() if "probe-" in text) >= 2  # spread over the pods
    assert not any("too old" in t or "being written" in t for t in logs.values())
    name, text = next((n, t) for n, t in logs.items() if "probe-" in t)
    path = f"/api/v1/namespaces/{NS}/pods/{name}/log"
    ours = [ln for ln in text.splitlines() if "probe-" in ln]
    assert ours == sorted(ours)  # merged in time order with the stand-in's own lines
    recent = http.get(path, params={"sinceSeconds": 30, "timestamps": "true"}).text
    stamped = [ln for ln in recent.splitlines() if "probe-" in ln]
    assert stamped and all(int(ln.split("probe-")[1][:3]) >= 22 for ln in stamped), stamped
    assert all(len(ln.split(" ", 1)[0]) == 30 and ln.split(" ", 2)[1].endswith("Z") for ln in stamped)
    workers = [p.metadata.name for p in _pods(apis, WORKERS)]
    assert not any("probe-" in http.get(f"/api/v1/namespaces/{NS}/pods/{w}/log").text for w in workers)


# --------------------------------------------------------------------------- faults


def test_crash_loop(apis: Apis, kube: Standin, fault: Callable[..., Any]) -> None:
    before = _pods(apis, API)
    fault("crash-loop", interval=0.25)

    def crashing() -> Any:
        return next(p for p in _pods(apis, API) if not p.status.container_statuses[0].ready)

    pod = crashing()
    cs = pod.status.container_statuses[0]
    assert cs.state.waiting.reason == "CrashLoopBackOff"
    assert cs.state.running is None
    term = cs.last_state.terminated
    assert (term.reason, term.exit_code) == ("Error", 1)
    assert _age(term.finished_at) < 5
    assert _cond(pod.status.conditions, "Ready").status == "False"
    first = cs.restart_count
    assert first > before[0].status.container_statuses[0].restart_count
    deadline = time.monotonic() + 5
    while crashing().status.container_statuses[0].restart_count <= first:
        assert time.monotonic() < deadline, "restartCount did not rise"
        time.sleep(0.1)

    dep = apis.apps.read_namespaced_deployment(API, NS, _request_timeout=T)
    assert dep.status.available_replicas == 2 and dep.status.unavailable_replicas == 1
    backoff = [
        e
        for e in apis.core.list_namespaced_event(NS, _request_timeout=T).items
        if e.reason == "BackOff" and e.involved_object.name == pod.metadata.name
    ]
    assert backoff and backoff[0].type == "Warning"
    assert "Back-off restarting failed container" in backoff[0].message
    prev = apis.core.read_namespaced_pod_log(
        pod.metadata.name, NS, previous=True, _request_timeout=T
    )
    assert "Application startup failed" in prev
    if Path(KUBECTL).exists():
        assert "CrashLoopBackOff" in _kubectl(kube, "get", "pods", "-n", NS, "-l", f"app={API}")

    with kube.admin() as a:
        a.delete("/admin/faults")
    after = _pods(apis, API)
    assert [p.to_dict() for p in after] == [p.to_dict() for p in before]


def test_fault_started_ago_backdates(apis: Apis, fault: Callable[..., Any]) -> None:
    fault("crash-loop", interval=10, started_ago=95)
    counts = sorted(p.status.container_statuses[0].restart_count for p in _pods(apis, API))
    assert counts == [0, 0, 10]


def test_oom_killed(apis: Apis, fault: Callable[..., Any]) -> None:
    fault("oom-killed")
    pods = _pods(apis, API)
    oom = [p for p in pods if p.status.container_statuses[0].last_state.terminated]
    assert len(oom) == 1
    cs = oom[0].status.container_statuses[0]
    term = cs.last_state.terminated
    assert (term.reason, term.exit_code) == ("OOMKilled", 137)
    assert _age(term.finished_at) < 60
    assert cs.restart_count == 1 and cs.ready and cs.state.running is not None
    warnings = [
        e
        for e in apis.core.list_event_for_all_namespaces(_request_timeout=T).items
        if e.type == "Warning"
    ]
    assert {"OOMKilling", "Unhealthy"} <= {e.reason for e in warnings}


def test_node_not_ready(apis: Apis, fault: Callable[..., Any]) -> None:
    fault("node-not-ready")
    node_b = apis.core.read_node("node-b", _request_timeout=T)
    ready = _cond(node_b.status.conditions, "Ready")
    assert (ready.status, ready.reason) == ("False", "KubeletNotReady")
    assert _cond(node_b.status.conditions, "MemoryPressure").status == "True"
    node_a = apis.core.read_node("node-a", _request_timeout=T)
    assert _cond(node_a.status.conditions, "Ready").status == "True"
    events = apis.core.list_event_for_all_namespaces(
        field_selector="involvedObject.kind=Node,involvedObject.name=node-b", _request_timeout=T
    ).items
    assert any(e.reason == "NodeNotReady" and e.type == "Warning" for e in events)
    on_b = apis.core.list_namespaced_pod(
        NS, field_selector="spec.nodeName=node-b", _request_timeout=T
    ).items
    assert on_b and all(_cond(p.status.conditions, "Ready").status == "False" for p in on_b)


def test_recent_rollout(apis: Apis, kube: Standin, fault: Callable[..., Any]) -> None:
    fault("recent-rollout", image="registry.example/llm-research-api:v1.5.0")
    dep = apis.apps.read_namespaced_deployment(API, NS, _request_timeout=T)
    assert dep.metadata.annotations["deployment.kubernetes.io/revision"] == "4"
    assert dep.spec.template.spec.containers[0].image == "registry.example/llm-research-api:v1.5.0"
    rss = apis.apps.list_namespaced_replica_set(
        NS, label_selector=f"app={API}", _request_timeout=T
    ).items
    by_rev = {int(r.metadata.annotations["deployment.kubernetes.io/revision"]): r for r in rss}
    assert sorted(by_rev) == [1, 2, 3, 4]
    assert 55 <= _age(by_rev[4].metadata.creation_timestamp) <= 70
    assert by_rev[3].spec.replicas == 0 and by_rev[4].spec.replicas == 3
    owners = {p.metadata.owner_references[0].name for p in _pods(apis, API)}
    assert owners == {by_rev[4].metadata.name}
    if Path(KUBECTL).exists():
        history = _kubectl(kube, "rollout", "history", f"deployment/{API}", "-n", NS)
        assert [ln.split()[0] for ln in history.splitlines()[2:] if ln.strip()] == list("1234")
    with kube.admin() as a:
        a.delete("/admin/faults")
    dep = apis.apps.read_namespaced_deployment(API, NS, _request_timeout=T)
    assert dep.metadata.annotations["deployment.kubernetes.io/revision"] == "3"


def test_workers_unavailable(apis: Apis, fault: Callable[..., Any]) -> None:
    fault("workers-unavailable")
    dep = apis.apps.read_namespaced_deployment(WORKERS, NS, _request_timeout=T)
    assert not dep.status.available_replicas and dep.status.unavailable_replicas == 2
    assert _cond(dep.status.conditions, "Available").status == "False"
    for p in _pods(apis, WORKERS):
        assert _cond(p.status.conditions, "Ready").status == "False"
    api = apis.apps.read_namespaced_deployment(API, NS, _request_timeout=T)
    assert api.status.available_replicas == 3


def test_auth_secret_rotated(apis: Apis, kube: Standin, fault: Callable[..., Any]) -> None:
    fault("auth-secret-rotated", new_secret="rotated-secret-123")

    def jwt() -> str:
        s = apis.core.read_namespaced_secret("llm-research-secrets", NS, _request_timeout=T)
        return base64.b64decode(s.data["JWT_SECRET"]).decode()

    assert jwt() == "rotated-secret-123"
    with kube.admin() as a:
        faults = a.get("/admin/faults").json()["active"]
        assert faults["auth-secret-rotated"]["params"]["new_secret"] == "<redacted>"
        a.delete("/admin/faults")
    assert jwt() == kube.settings["jwt_secret"]


# --------------------------------------------------------------------------- read-only + request log


def test_read_only_and_request_log(kube: Standin, http: httpx.Client) -> None:
    with kube.admin() as a:
        a.delete("/admin/requests")
    pods = "/api/v1/namespaces/llm-research/pods"
    name = http.get(pods).json()["items"][0]["metadata"]["name"]
    http.get(f"{pods}/{name}")
    http.get(f"{pods}/{name}/log", params={"tailLines": 1})
    http.get("/apis/apps/v1/namespaces/llm-research/deployments")
    http.get("/api/v1/nodes/node-a")
    with http.stream("GET", pods, params={"watch": "true", "timeoutSeconds": "5"}) as r:
        first = json.loads(next(r.iter_lines()))
        assert first["type"] == "ADDED" and first["object"]["kind"] == "Pod"
    created = http.post(pods, json={"metadata": {"name": "x"}})
    assert created.status_code == 405
    assert created.json()["reason"] == "MethodNotAllowed"
    assert http.delete(f"{pods}/{name}").status_code == 405
    assert (
        http.patch("/apis/apps/v1/namespaces/llm-research/deployments/llm-research-api").status_code
        == 405
    )
    with kube.admin() as a:
        entries = a.get("/admin/requests").json()["requests"]
    got = [
        (
            e["method"],
            e["verb"],
            e["resource"],
            e["api_group"],
            e["namespace"],
            e["name"],
            e["status"],
        )
        for e in entries
    ]
    assert got == [
        ("GET", "list", "pods", "", NS, "", 200),
        ("GET", "get", "pods", "", NS, name, 200),
        ("GET", "get", "pods/log", "", NS, name, 200),
        ("GET", "list", "deployments", "apps", NS, "", 200),
        ("GET", "get", "nodes", "", "", "node-a", 200),
        ("GET", "watch", "pods", "", NS, "", 200),
        ("POST", "create", "pods", "", NS, "", 405),
        ("DELETE", "delete", "pods", "", NS, name, 405),
        ("PATCH", "patch", "deployments", "apps", NS, API, 405),
    ]
    assert all({"ts", "path"} <= set(e) for e in entries)
    on_disk = [json.loads(ln) for ln in kube.requests_log.read_text().splitlines()]
    assert on_disk[-len(entries) :] == entries
    assert os.stat(kube.requests_log).st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("method", "path", "query", "verb", "resource", "group", "ns", "name"),
    [
        ("GET", "/api/v1/namespaces/ns1/pods", {}, "list", "pods", "", "ns1", ""),
        ("GET", "/api/v1/namespaces/ns1/pods", {"watch": ["1"]}, "watch", "pods", "", "ns1", ""),
        ("GET", "/api/v1/watch/namespaces/ns1/pods", {}, "watch", "pods", "", "ns1", ""),
        ("GET", "/api/v1/namespaces/ns1/pods/p", {}, "get", "pods", "", "ns1", "p"),
        ("GET", "/api/v1/namespaces/ns1/pods/p/log", {}, "get", "pods/log", "", "ns1", "p"),
        ("GET", "/api/v1/namespaces/ns1", {}, "get", "namespaces", "", "ns1", "ns1"),
        ("GET", "/api/v1/events", {}, "list", "events", "", "", ""),
        (
            "GET",
            "/apis/apps/v1/namespaces/ns1/deployments/d",
            {},
            "get",
            "deployments",
            "apps",
            "ns1",
            "d",
        ),
        (
            "POST",
            "/apis/apps/v1/namespaces/ns1/deployments",
            {},
            "create",
            "deployments",
            "apps",
            "ns1",
            "",
        ),
        ("PUT", "/api/v1/nodes/n", {}, "update", "nodes", "", "", "n"),
        ("DELETE", "/api/v1/namespaces/ns1/pods", {}, "deletecollection", "pods", "", "ns1", ""),
        ("GET", "/api/v1", {}, "get", "", "", "", ""),
        ("GET", "/version", {}, "get", "", "", "", ""),
    ],
)
def test_request_info_verbs(
    method: str,
    path: str,
    query: dict[str, list[str]],
    verb: str,
    resource: str,
    group: str,
    ns: str,
    name: str,
) -> None:
    info = request_info(method, path, query)
    assert (info.verb, info.full_resource, info.group, info.namespace, info.name) == (
        verb,
        resource,
        group,
        ns,
        name,
    )


# --------------------------------------------------------------------------- kubectl


def test_kubectl(kube: Standin, apis: Apis) -> None:
    out = _kubectl(kube, "get", "pods,deploy", "-n", NS)
    assert "deployment.apps/llm-research-api" in out and "3/3" in out
    assert out.count("Running") == 5
    assert "40 (30d ago)" in out
    nodes = _kubectl(kube, "get", "nodes")
    assert nodes.count(" Ready ") == 2
    pod = _pods(apis, API)[0].metadata.name
    described = _kubectl(kube, "describe", "pod", pod, "-n", NS)
    assert "Limits:" in described and "memory:  2Gi" in described
    history = _kubectl(kube, "rollout", "history", f"deployment/{API}", "-n", NS)
    assert "REVISION" in history and "release v1.4.0" in history
    logs = _kubectl(kube, "logs", pod, "-n", NS, "--tail=5")
    assert len(logs.splitlines()) == 5
    events = _kubectl(kube, "get", "events", "-n", NS, "--sort-by=.lastTimestamp")
    assert "Scheduled" in events
    jwt = _kubectl(
        kube, "get", "secret", "llm-research-secrets", "-n", NS, "-o", "jsonpath={.data.JWT_SECRET}"
    )
    assert base64.b64decode(jwt).decode() == kube.settings["jwt_secret"]


# --------------------------------------------------------------------------- plain HTTP mode


def test_plain_http_mode_and_kubeconfig(tmp_path: Path) -> None:
    standin = _start(tmp_path, tls=False)
    try:
        assert standin.url.startswith("http://")
        assert os.stat(standin.kubeconfig).st_mode & 0o777 == 0o600
        raw = k8s_config.new_client_from_config(config_file=str(standin.kubeconfig))
        try:
            pods = k8s.CoreV1Api(raw).list_namespaced_pod(NS, _request_timeout=T).items
            assert len(pods) == 5
        finally:
            raw.close()
        with standin.client(token=None) as c:
            assert c.get("/api/v1/nodes").status_code == 401
    finally:
        assert _stop(standin) == 0
