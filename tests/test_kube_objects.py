"""The typed Kubernetes view: from_dict on realistic API JSON, and missing fields kept apart from zero."""

from __future__ import annotations

from typing import Any

import pytest

from labcheck.errors import NotConfigured
from labcheck.probes.kube_objects import (
    ContainerStatus,
    Event,
    Node,
    Pod,
    Termination,
    events_for,
    owned_by,
    parse_selector,
    revision_of,
    selector_text,
)
from labcheck.timefmt import parse_time

NOW = "2026-01-15T10:30:00Z"
T0 = parse_time(NOW)
assert T0 is not None


def crash_looping_pod() -> dict[str, Any]:
    """What the API returns for a pod whose app container is in CrashLoopBackOff."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "api-7d9f-abcde", "namespace": "llm-research",
                     "labels": {"app": "llm-research-api", "tier": "web"}},
        "spec": {
            "nodeName": "node-a",
            "initContainers": [{"name": "migrate", "image": "api:v1"}],
            "containers": [{"name": "api", "image": "api:v1",
                            "resources": {"limits": {"memory": "2Gi", "cpu": "1"},
                                          "requests": {"memory": "1Gi", "cpu": "500m"}}},
                           {"name": "sidecar", "image": "proxy:v2", "resources": {"limits": {"cpu": "100m"}}}],
        },
        "status": {
            "phase": "Running",
            "startTime": "2026-01-15T10:00:00Z",
            "conditions": [{"type": "Initialized", "status": "True"},
                           {"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
            "initContainerStatuses": [{"name": "migrate", "ready": True, "restartCount": 0,
                                       "state": {"terminated": {"reason": "Completed", "exitCode": 0,
                                                                "startedAt": "2026-01-15T10:00:01Z",
                                                                "finishedAt": "2026-01-15T10:00:05Z"}}}],
            "containerStatuses": [
                {"name": "api", "ready": False, "restartCount": 7,
                 "state": {"waiting": {"reason": "CrashLoopBackOff",
                                       "message": "back-off 40s restarting failed container"}},
                 "lastState": {"terminated": {"reason": "Error", "exitCode": 1,
                                              "startedAt": "2026-01-15T10:29:00Z",
                                              "finishedAt": "2026-01-15T10:29:10Z"}}},
                {"name": "sidecar", "ready": True, "restartCount": 0,
                 "state": {"running": {"startedAt": "2026-01-15T10:00:06Z"}}, "lastState": {}},
            ],
        },
    }


def test_pod_from_dict_reads_containers_and_statuses() -> None:
    pod = Pod.from_dict(crash_looping_pod())
    assert (pod.name, pod.node_name, pod.phase) == ("api-7d9f-abcde", "node-a", "Running")
    assert pod.start_time == T0 - 1800
    assert pod.labels == {"app": "llm-research-api", "tier": "web"}
    assert not pod.ready and pod.ready_condition is not None and pod.ready_condition.reason == "ContainersNotReady"
    assert [(c.name, c.init) for c in pod.containers] == [("migrate", True), ("api", False), ("sidecar", False)]
    assert [cs.name for cs in pod.statuses] == ["migrate", "api", "sidecar"]  # init containers can crash-loop too

    api = pod.status_of("api")
    assert api is not None
    assert (api.state, api.waiting_reason, api.restart_count) == ("waiting", "CrashLoopBackOff", 7)
    assert api.stuck and api.crash_looping and not api.cannot_start
    assert api.terminated is None and api.previous is not None
    assert api.last_termination_reason == "Error" and api.last_finished_at == T0 - 50
    assert api.last_lifetime_s == 10 and api.previous_finished_at == T0 - 50

    limits = pod.container("api")
    assert limits is not None and (limits.limit("memory"), limits.request("memory")) == ("2Gi", "1Gi")
    sidecar = pod.container("sidecar")
    assert sidecar is not None and sidecar.missing_limits == ["memory"]
    assert pod.raw["metadata"]["namespace"] == "llm-research"  # evidence quotes the API's own JSON


def test_pod_describe_is_one_line_per_pod() -> None:
    text = Pod.from_dict(crash_looping_pod()).describe()
    assert text.startswith("pod api-7d9f-abcde: phase Running; Ready=False (ContainersNotReady); node node-a; ")
    assert ("api: waiting CrashLoopBackOff (back-off 40s restarting failed container), not ready, restarts 7, "
            "last termination Error (exit code 1) finished 2026-01-15T10:29:10Z") in text
    assert "migrate: terminated Completed (exit code 0) finished 2026-01-15T10:00:05Z, ready, restarts 0" in text
    assert "sidecar: running since 2026-01-15T10:00:06Z, ready, restarts 0" in text


def test_missing_fields_stay_none_not_zero_or_empty() -> None:
    pod = Pod.from_dict({"metadata": {}, "spec": {}, "status": {"containerStatuses": [{"name": "api"}]}})
    assert pod.name == "?" and pod.node_name is None and pod.phase is None and pod.start_time is None
    assert pod.ready_condition is None and not pod.ready  # no Ready condition: never counted as ready
    assert "Ready=unknown" in pod.describe() and "node unscheduled" in pod.describe()
    cs = pod.statuses[0]
    assert cs.state is None and cs.waiting_reason is None and not cs.stuck
    assert cs.last_termination is None and cs.last_termination_reason is None
    assert cs.last_finished_at is None and cs.last_lifetime_s is None
    assert cs.describe_last_termination() == "no previous termination"
    assert cs.describe() == "api: state unknown, not ready, restarts 0"


def test_termination_without_times_has_no_lifetime() -> None:
    term = Termination.from_dict({"reason": "OOMKilled", "exitCode": 137, "signal": 9})
    assert term is not None and term.finished is None and term.lifetime_s is None
    assert term.describe() == "OOMKilled (exit code 137, signal 9) finished at an unknown time"
    assert Termination.from_dict({}) is None and Termination.from_dict(None) is None
    # A missing exit code is None, never 0 (0 would read as a clean exit).
    blank = Termination.from_dict({"finishedAt": "2026-01-15T10:29:10Z"})
    assert blank is not None and blank.exit_code is None and blank.describe().startswith("terminated (exit code None)")


def test_current_termination_wins_over_the_previous_one() -> None:
    cs = ContainerStatus.from_dict({
        "name": "api", "restartCount": 2,
        "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137, "finishedAt": "2026-01-15T10:29:50Z"}},
        "lastState": {"terminated": {"reason": "Error", "exitCode": 1, "finishedAt": "2026-01-15T10:20:00Z"}},
    })
    assert cs.last_termination_reason == "OOMKilled" and cs.last_finished_at == T0 - 10
    assert cs.previous_finished_at == T0 - 600


def test_unhealthy_pod() -> None:
    pod = Pod.from_dict(crash_looping_pod())
    assert pod.unhealthy(T0 - 3600)  # not Ready
    ready = crash_looping_pod()
    ready["status"]["conditions"][1] = {"type": "Ready", "status": "True"}
    ready["status"]["containerStatuses"] = [ready["status"]["containerStatuses"][1]]
    assert not Pod.from_dict(ready).unhealthy(T0 - 3600)


def _started(count: int, first: str, last: str) -> dict[str, Any]:
    return {"type": "Normal", "reason": "Started", "message": "Started container api", "count": count,
            "firstTimestamp": first, "lastTimestamp": last,
            "involvedObject": {"kind": "Pod", "name": "api-7d9f-abcde", "fieldPath": "spec.containers{api}"}}


def test_restarts_within_counts_only_the_window() -> None:
    pod = Pod.from_dict(crash_looping_pod())
    api = pod.status_of("api")
    assert api is not None
    # 7 starts, evenly over the last 70 minutes: 3 in the last 30 minutes (the event is prorated),
    # less the container's first start, since the pod itself started at the cutoff.
    events = [Event.from_dict(_started(7, "2026-01-15T09:20:00Z", "2026-01-15T10:30:00Z"))]
    assert pod.restarts_within(api, events, T0 - 1800) == 2
    assert pod.restarts_within(api, events, T0 - 1799) == 3  # the pod started before this window
    # No Started event in the window: the previous instance ended in it, so at least one restart.
    assert pod.restarts_within(api, [], T0 - 1800) == 1
    assert pod.restarts_within(api, [], T0 - 10) == 0
    never = pod.status_of("sidecar")
    assert never is not None and pod.restarts_within(never, events, T0 - 1800) == 0


def test_node_problems() -> None:
    healthy = Node.from_dict({"metadata": {"name": "node-a"}, "status": {"conditions": [
        {"type": "Ready", "status": "True"}, {"type": "MemoryPressure", "status": "False"}]}})
    assert healthy.name == "node-a" and healthy.problems == []
    sick = Node.from_dict({"metadata": {"name": "node-b"}, "status": {"conditions": [
        {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting"},
        {"type": "MemoryPressure", "status": "True", "reason": "KubeletHasInsufficientMemory"}]}})
    assert sick.problems == ["Ready=Unknown (NodeStatusUnknown: Kubelet stopped posting)",
                             "MemoryPressure=True (KubeletHasInsufficientMemory)"]
    # A node that reports no conditions is not healthy by default.
    assert Node.from_dict({"metadata": {"name": "node-c"}}).problems == ["Ready=unknown"]


def test_event_old_style_and_series_style() -> None:
    old = Event.from_dict({"type": "Warning", "reason": "BackOff", "message": "Back-off restarting failed container",
                           "count": 5, "firstTimestamp": "2026-01-15T10:00:00Z", "lastTimestamp": NOW,
                           "involvedObject": {"kind": "Pod", "name": "api-1"}})
    assert (old.first, old.last, old.count) == (T0 - 1800, T0, 5)
    assert old.line() == f"{NOW} Warning BackOff pod/api-1 (x5): Back-off restarting failed container"
    series = Event.from_dict({"type": "Warning", "reason": "Unhealthy", "eventTime": "2026-01-15T10:10:00.000000Z",
                              "series": {"count": 3, "lastObservedTime": "2026-01-15T10:20:00.000000Z"},
                              "involvedObject": {"kind": "Pod", "name": "api-2"}})
    assert (series.first, series.last, series.count) == (T0 - 1200, T0 - 600, 3)
    bare = Event.from_dict({"metadata": {"creationTimestamp": NOW}})
    assert (bare.first, bare.last, bare.count, bare.when) == (T0, T0, 1, "?")
    assert bare.type is None and bare.kind is None
    assert events_for([series, old, bare], "Pod", "api-1") == [old]
    assert [e.name for e in events_for([old, series], "Pod", "api-2")] == ["api-2"]


def test_selectors() -> None:
    tests = parse_selector("app=llm-research-api,tier in (web, api),!canary,env!=dev")
    assert all(t({"app": "llm-research-api", "tier": "web"}) for t in tests)
    assert not all(t({"app": "llm-research-api", "tier": "web", "canary": "1"}) for t in tests)
    assert not all(t({"app": "llm-research-api", "tier": "batch"}) for t in tests)
    with pytest.raises(NotConfigured):
        parse_selector("app in web")
    with pytest.raises(NotConfigured):
        parse_selector(" ")
    assert selector_text({"matchLabels": {"b": "2", "a": "1"},
                          "matchExpressions": [{"key": "t", "operator": "NotIn", "values": ["x", "y"]},
                                               {"key": "c", "operator": "DoesNotExist"}]}) == "a=1,b=2,t notin (x,y),!c"


def test_revision_and_owner() -> None:
    rs = {"metadata": {"name": "api-7d9f", "annotations": {"deployment.kubernetes.io/revision": "4"},
                       "ownerReferences": [{"kind": "Deployment", "name": "llm-research-api"}]}}
    assert revision_of(rs) == 4 and owned_by(rs, "Deployment", "llm-research-api")
    assert revision_of({"metadata": {"annotations": {"deployment.kubernetes.io/revision": "x"}}}) is None
    assert revision_of({}) is None and not owned_by({}, "Deployment", "llm-research-api")
