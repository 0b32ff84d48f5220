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
#   node-not-ready node-b (its pods turn Ready=False, no eviction), cpu-saturation and
#   memory-saturation the API pods' PodMetrics, metrics-server-absent the whole metrics API (404). Every fault takes
#   started_ago=<seconds> to backdate its start.
# - Heal drops the faults, so objects return exactly to the baseline, including after
#   recent-rollout: revision 3, two days old, and no trace of the rollout.
#
# The package, from the bottom up (a module imports only modules listed before it):
#   model      settings, the workloads, the cluster's state (Cluster), time and id helpers
#   events     events and the object references they point at
#   faults     FAULTS, inject / heal, what the faults do to pods
#   logs       each container's log
#   metrics    PodMetrics (metrics.k8s.io/v1beta1), what `kubectl top pods` reads
#   resources  discovery, request_info, label and field selectors
#   tables     the Tables `kubectl get` prints
#   tls        the self-signed certificate, write_kubeconfig
#   objects    snapshot(): every object at an instant (uses faults)
#   app        the HTTP routes (uses them all); __main__ serves it
from __future__ import annotations

from labcheck.sandbox.kube.resources import request_info
from labcheck.sandbox.kube.tls import ensure_tls_files, write_kubeconfig

__all__ = ["ensure_tls_files", "request_info", "write_kubeconfig"]
