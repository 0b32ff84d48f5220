"""Nodes and their heartbeat leases (kube-node-lease)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from labcheck.sandbox.kube.events import event, node_ref
from labcheck.sandbox.kube.model import (
    DAY,
    K8S_VERSION,
    NODES,
    Cluster,
    Fault,
    Obj,
    hexid,
    object_meta,
    ts,
    uid_for,
)

NODE_AGE = 120 * DAY  # the nodes (and their leases) were created this long before boot


def node_ip(node: str) -> str:
    return f"10.0.1.{11 + NODES.index(node)}"


def _last_renewal(now: float) -> float:
    """The kubelet renews its node's status and lease every 10 s."""
    return math.floor(now / 10) * 10


def node(
    cluster: Cluster, name: str, now: float, faults: dict[str, Fault], events: list[Obj]
) -> Obj:
    """A node, Ready and without pressure unless node-not-ready hits it (and adds its events)."""
    idx = NODES.index(name)
    created = cluster.boot - NODE_AGE
    heartbeat = ts(max(cluster.boot, _last_renewal(now)))
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
            event(
                node_ref(name),
                "NodeHasInsufficientMemory",
                f"Node {name} status is now: NodeHasInsufficientMemory",
                first=s - 20,
                host=name,
            )
        )
        events.append(
            event(
                node_ref(name),
                "NodeNotReady",
                f"Node {name} status is now: NodeNotReady",
                first=s,
                type_="Warning",
                component="node-controller",
            )
        )
    meta = object_meta("node", name, created)
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
                {"type": "InternalIP", "address": node_ip(name)},
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


def lease(cluster: Cluster, name: str, now: float) -> Obj:
    """The kubelet's heartbeat lease (kube-node-lease)."""
    meta: Obj = {
        "name": name,
        "namespace": "kube-node-lease",
        "uid": uid_for("lease", name),
        "creationTimestamp": ts(cluster.boot - NODE_AGE),
        "ownerReferences": [
            {"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid_for("node", name)}
        ],
    }
    renew = datetime.fromtimestamp(_last_renewal(now), UTC)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": 40,
            "renewTime": renew.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
    }
