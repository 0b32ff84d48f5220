"""Server-side printing: the Tables `kubectl get` shows, with the columns of kubectl's printers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labcheck.sandbox.kube.model import Obj, human_duration, parse_ts


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


def to_table(resource: str, objs: list[Obj], now: float, include: str, rv: str) -> Obj:
    """A meta.k8s.io/v1 Table of the objects, as `kubectl get` asks for (Accept: as=Table)."""
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
