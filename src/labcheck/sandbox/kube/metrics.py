"""The metrics API (metrics.k8s.io/v1beta1): PodMetrics as metrics-server serves them to ``kubectl top pods``.

Usage is a function of the pod, the clock and the faults, like everything else in the stand-in:
a small steady load on each running container, moved to a share of its limit by cpu-saturation or
memory-saturation, and the whole API gone (404, as without metrics-server) under metrics-server-absent.
Quantities are written the way metrics-server writes them: CPU in nanocores (``251234567n``),
memory in kibibytes (``634880Ki``).
"""

from __future__ import annotations

import math
from fractions import Fraction

from labcheck.sandbox.kube.model import API, Obj, PodModel, Snapshot, ts

GROUP = "metrics.k8s.io"
VERSION = "v1beta1"
RESOLUTION_S = 15  # metrics-server's --metric-resolution: a sample covers this window
# Steady usage per app, as a share of the container's limit: (cpu, memory).
BASELINE = {API: (0.22, 0.31)}
OTHER_BASELINE = (0.35, 0.40)
ABSENT_FAULT = "metrics-server-absent"
SATURATION_FAULTS = {"cpu": "cpu-saturation", "memory": "memory-saturation"}


def _limit(text: str) -> Fraction:
    """The stand-in's own limits only ("1", "4", "2Gi", "8Gi"): whole cores or Gi."""
    return Fraction(int(text[:-2])) * 2**30 if text.endswith("Gi") else Fraction(int(text))


def _usage(snap: Snapshot, pod: PodModel, kind: str) -> Fraction:
    """One container's usage of ``kind``: its baseline share of the limit (with a slow wobble per
    pod), or the saturation fault's share on the API's pods."""
    limit = _limit(pod.app.limits[kind])
    share = BASELINE.get(pod.app.name, OTHER_BASELINE)[0 if kind == "cpu" else 1]
    fault = snap.faults.get(SATURATION_FAULTS[kind])
    if fault is not None and pod.app.name == API:
        share = float(fault.params["share"])
    else:
        share *= 1 + 0.1 * math.sin(snap.now / 60 + pod.index)  # +-10%: a real load is never flat
    return limit * Fraction(share).limit_denominator(10**6)


def pod_metrics(snap: Snapshot, labels: dict[str, dict[str, str]]) -> list[Obj]:
    """One PodMetrics per running pod of the namespace (a waiting container has no sample)."""
    stamp = ts(snap.now - snap.now % RESOLUTION_S)
    out = []
    for pod in snap.pods:
        if pod.current is None:
            continue
        cpu = _usage(snap, pod, "cpu")
        memory = _usage(snap, pod, "memory")
        out.append({
            "metadata": {"name": pod.name, "namespace": snap.namespace, "creationTimestamp": ts(snap.now),
                         "labels": labels.get(pod.name, {})},
            "timestamp": stamp,
            "window": f"{RESOLUTION_S}s",
            "containers": [{"name": pod.app.container,
                            "usage": {"cpu": f"{int(cpu * 10**9)}n", "memory": f"{int(memory / 1024)}Ki"}}],
        })
    return out


def listing(items: list[Obj]) -> Obj:
    return {"kind": "PodMetricsList", "apiVersion": f"{GROUP}/{VERSION}",
            "metadata": {"resourceVersion": ""}, "items": items}


def single(item: Obj) -> Obj:
    return {"kind": "PodMetrics", "apiVersion": f"{GROUP}/{VERSION}", **item}


def group_doc() -> Obj:
    gv = {"groupVersion": f"{GROUP}/{VERSION}", "version": VERSION}
    return {"kind": "APIGroup", "apiVersion": "v1", "name": GROUP, "versions": [gv], "preferredVersion": gv}


def resource_list() -> Obj:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{GROUP}/{VERSION}",
            "resources": [{"name": "pods", "singularName": "", "namespaced": True, "kind": "PodMetrics",
                           "verbs": ["get", "list"]}]}
