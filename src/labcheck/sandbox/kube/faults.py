"""The stand-in's faults: which there are, injecting and healing them, and what they do to pods."""

from __future__ import annotations

import secrets
import time
from typing import Any

from labcheck.sandbox.kube.events import container_event, container_events, event, node_ref, pod_ref
from labcheck.sandbox.kube.model import (
    API,
    APPS,
    WORKERS,
    AppSpec,
    Cluster,
    Fault,
    Obj,
    PodModel,
    Run,
    container_id,
    ts,
)

FAULTS: dict[str, str] = {
    "crash-loop": "an llm-research-api pod in CrashLoopBackOff, restarts rising (params: interval=10)",
    "oom-killed": "an llm-research-api container was OOMKilled (exit 137) just now",
    "node-not-ready": "node-b Ready=False (KubeletNotReady) and MemoryPressure=True",
    "recent-rollout": "llm-research-api rolled out a new revision a minute ago (params: image, change_cause)",
    "workers-unavailable": "experiment-workers pods fail readiness, 0 available",
    "auth-secret-rotated": "secret JWT_SECRET replaced (params: new_secret)",
    "cpu-saturation": "the llm-research-api containers use that share of their CPU limit in PodMetrics "
                      "(params: share=0.97)",
    "memory-saturation": "the llm-research-api containers use that share of their memory limit in PodMetrics "
                         "(params: share=0.95)",
    "metrics-server-absent": "the metrics API (metrics.k8s.io) answers 404, as without metrics-server",
    "forbidden": "every Kubernetes API request answers 403 Forbidden",
    "unauthorized": "every Kubernetes API request answers 401 Unauthorized",
}
# Params each fault accepts, with their types; every fault also accepts started_ago (seconds),
# which backdates the fault's start (for demos and tests that must not wait).
FAULT_PARAMS: dict[str, dict[str, type]] = {
    "crash-loop": {"interval": float},
    "recent-rollout": {"image": str, "change_cause": str},
    "auth-secret-rotated": {"new_secret": str},
    "cpu-saturation": {"share": float},
    "memory-saturation": {"share": float},
}
SATURATION_SHARES = {"cpu-saturation": 0.97, "memory-saturation": 0.95}


def inject(cluster: Cluster, name: str, params: dict[str, Any], now: float | None = None) -> Fault:
    """Start a fault (KeyError: no such fault; ValueError: a bad param)."""
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
    if name in SATURATION_SHARES:
        clean.setdefault("share", SATURATION_SHARES[name])
        if not 0 < clean["share"] <= 2:
            raise ValueError("share must be above 0 and at most 2 (a share of the limit)")
    if name == "auth-secret-rotated":
        clean.setdefault("new_secret", secrets.token_urlsafe(32))
        if not clean["new_secret"]:
            raise ValueError("new_secret must not be empty")
    if name == "recent-rollout":
        clean.setdefault("image", f"{APPS[API].repo}:v1.5.0")
        tag = str(clean["image"]).rsplit(":", 1)[-1]
        clean.setdefault("change_cause", f"release {tag}")
    fault = Fault(name, float(int(now - started_ago)), clean)
    cluster.faults[name] = fault
    return fault


def heal(cluster: Cluster, name: str | None = None) -> list[str]:
    """End one fault, or all of them; returns the names healed."""
    if name is None:
        healed = sorted(cluster.faults)
        cluster.faults.clear()
        return healed
    return [name] if cluster.faults.pop(name, None) is not None else []


def describe_faults(cluster: Cluster) -> Obj:
    active = {}
    for f in cluster.faults.values():
        shown = {k: ("<redacted>" if k == "new_secret" else v) for k, v in f.params.items()}
        active[f.name] = {"since": ts(f.since), "since_unix": f.since, "params": shown}
    return {"active": active, "available": FAULTS}


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


def _go_duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"


def apply_pod_faults(
    app: AppSpec,
    pods: list[PodModel],
    now: float,
    faults: dict[str, Fault],
    events: list[Obj],
    ns: str,
) -> None:
    """Change an app's pods (in place) as the active faults have, and add the events they caused."""
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
            prev_start, last, "Error", 1, "crash", container_id(p.name, p.restart_count + n - 1)
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
        events += container_events(
            p, ns, {"Pulled": 0.5, "Created": 0.6, "Started": 0.7}, first=s, last=last, count=n
        )
        events.append(
            container_event(
                p,
                ns,
                "BackOff",
                "Back-off restarting failed container "
                f"{app.container} in pod {p.name}_{ns}({p.uid})",
                first=s + 1,
                last=min(now, last + 1),
                count=n,
                type_="Warning",
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
            p.current = Run(started=s - 3, container_id=container_id(p.name, p.restart_count))
            p.container_ready_since = s - 1
        events.append(
            event(
                node_ref(p.node),
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
            container_event(
                p,
                ns,
                "Unhealthy",
                f'Readiness probe failed: Get "http://{p.ip}:{app.port}{app.probe_path}": '
                "dial tcp: connect: connection refused",
                first=s - 4,
                type_="Warning",
            )
        )
        events += container_events(p, ns, {"Pulled": -4, "Started": -3}, first=s)

    workers = faults.get("workers-unavailable")
    if app.name == WORKERS and workers is not None:
        s = workers.since
        n = 1 + int((now - s) // 10)
        for p in pods:
            p.container_ready = False
            p.container_ready_since = s
            events.append(
                container_event(
                    p,
                    ns,
                    "Unhealthy",
                    "Readiness probe failed: HTTP probe failed with statuscode: 503",
                    first=s,
                    last=s + (n - 1) * 10,
                    count=n,
                    type_="Warning",
                )
            )

    nnr = faults.get("node-not-ready")
    if nnr is not None:
        for p in pods:
            if p.node == "node-b":
                p.pod_ready_override = (False, nnr.since, "NodeNotReady")
                events.append(
                    event(
                        pod_ref(p, ns),
                        "NodeNotReady",
                        "Node is not ready",
                        # At the fault's own instant: events stamped later are not listed
                        # until then, and a run right after the fault must see it.
                        first=nnr.since,
                        type_="Warning",
                        component="node-controller",
                    )
                )
