"""The cluster's objects at an instant: pods, deployments, replicasets, events, secrets, ..."""

from __future__ import annotations

import base64
import hashlib
import math
import time

from labcheck.sandbox.kube import nodes
from labcheck.sandbox.kube.events import container_events, event, object_ref, pod_ref
from labcheck.sandbox.kube.faults import apply_pod_faults
from labcheck.sandbox.kube.model import (
    API,
    APPS,
    DAY,
    HOUR,
    NODES,
    SECRET_NAME,
    WORKERS,
    AppSpec,
    Cluster,
    Fault,
    Obj,
    PodModel,
    Revision,
    Run,
    Snapshot,
    container_id,
    object_meta,
    parse_ts,
    safe_suffix,
    ts,
    uid_for,
    with_rv,
)


def revisions(cluster: Cluster, app: AppSpec) -> list[Revision]:
    """An app's rollout history, oldest first (recent-rollout adds one to the API's)."""
    out = [
        Revision(
            i + 1,
            f"{app.repo}:{tag}",
            cluster.boot - age,
            cause,
            safe_suffix(f"{app.name}:{tag}", 10),
        )
        for i, (tag, age, cause) in enumerate(app.revisions)
    ]
    rollout = cluster.faults.get("recent-rollout")
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


def snapshot(cluster: Cluster, now: float | None = None) -> Snapshot:
    """Every object of the cluster at ``now``: the baseline, changed by the faults active then."""
    now = time.time() if now is None else now
    faults = {n: f for n, f in cluster.faults.items() if f.since <= now}
    ns = cluster.cfg.namespace
    events: list[Obj] = []
    pods: list[PodModel] = []
    deployments: list[Obj] = []
    replicasets: list[Obj] = []
    node_objs = [nodes.node(cluster, name, now, faults, events) for name in NODES]

    for app in cluster.apps.values():
        revs = revisions(cluster, app)
        current = revs[-1]
        dep_uid = uid_for("deployment", app.name)
        app_pods = [_pod(cluster, app, current, i) for i in range(app.replicas)]
        apply_pod_faults(app, app_pods, now, faults, events, ns)
        pods.extend(app_pods)
        for rev in revs:
            replicasets.append(_replicaset(cluster, app, rev, rev is current, dep_uid, app_pods))
        deployments.append(_deployment(cluster, app, revs, app_pods))
        _rollout_events(ns, app, revs, dep_uid, app_pods, events)

    pod_objs = [_pod_obj(cluster, p) for p in pods]
    events = [e for e in events if parse_ts(e["lastTimestamp"]) <= now]
    events.sort(key=lambda e: (e["lastTimestamp"], e["metadata"]["name"]))
    objects = {
        "pods": pod_objs,
        "deployments": deployments,
        "replicasets": replicasets,
        "nodes": node_objs,
        "events": events,
        "secrets": [_secret(cluster, faults)],
        "namespaces": [
            _namespace(cluster, n)
            for n in ("default", "kube-node-lease", "kube-public", "kube-system", ns)
        ],
        "leases": [nodes.lease(cluster, n, now) for n in NODES],
    }
    for objs in objects.values():
        for o in objs:
            with_rv(o)
        # The apiserver lists in storage-key order: namespace, then name.
        objs.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
    return Snapshot(now, ns, pods, objects, faults)


# --------------------------------------------------------------------------- shared pieces


def _controller_ref(kind: str, name: str, uid: str) -> Obj:
    """An ownerReference from an object to the controller that manages it."""
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _pod_created(rev: Revision, i: int) -> float:
    """A rollout creates the i-th pod of a revision 12 s after the one before."""
    return rev.created + 5 + 12 * i


# --------------------------------------------------------------------------- namespaces


def _namespace(cluster: Cluster, name: str) -> Obj:
    meta = object_meta("namespace", name, cluster.boot - 200 * DAY)
    meta["labels"] = {"kubernetes.io/metadata.name": name}
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": meta,
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


# --------------------------------------------------------------------------- pods


def _pod(cluster: Cluster, app: AppSpec, rev: Revision, i: int) -> PodModel:
    rs = rev.rs_name(app.name)
    name = f"{rs}-{safe_suffix(f'{rs}/{i}', 5)}"
    created = _pod_created(rev, i)
    node = app.nodes[i % len(app.nodes)]
    node_idx = NODES.index(node)
    # Ten pods per app and /16 (more with `up --endpoints`): the first ten keep their addresses.
    ip = f"10.{244 + i // 10}.{node_idx + 1}.{20 + 10 * list(APPS).index(app.name) + i % 10}"
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
        current=Run(started=started, container_id=container_id(name, 0)),
        previous=None,
        container_ready_since=started + 6,
    )
    if app.name == WORKERS and i == 1:
        # Restarted 40 times long ago (an OOM storm 30 days back), healthy since.
        finished = cluster.boot - 30 * DAY
        pod.restart_count = 40
        pod.previous = Run(
            started=finished - 6 * HOUR,
            finished=finished,
            reason="OOMKilled",
            exit_code=137,
            kind="oom",
            container_id=container_id(name, 39),
        )
        pod.current = Run(started=finished + 2, container_id=container_id(name, 40))
        pod.container_ready_since = finished + 9
    return pod


def _container(app: AppSpec, image: str) -> Obj:
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


def _pod_spec(app: AppSpec, image: str, node: str | None = None) -> Obj:
    """A pod spec as in a template; with a node, as admission and the scheduler leave a pod's."""
    bound: Obj = {"serviceAccount": "llm-research", "nodeName": node} if node else {}
    spec: Obj = {
        "containers": [_container(app, image)],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "llm-research",
        **bound,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
        "schedulerName": "default-scheduler",
    }
    if node:
        spec["tolerations"] = [
            {
                "key": f"node.kubernetes.io/{taint}",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            }
            for taint in ("not-ready", "unreachable")
        ]
        spec.update(priority=0, enableServiceLinks=True, preemptionPolicy="PreemptLowerPriority")
    return spec


def _pod_obj(cluster: Cluster, p: PodModel) -> Obj:
    app = p.app
    rs = p.revision.rs_name(app.name)
    meta = object_meta("pod", p.name, p.created, cluster.cfg.namespace)
    meta["generateName"] = f"{rs}-"
    meta["labels"] = {"app": app.name, "pod-template-hash": p.revision.rs_hash}
    meta["ownerReferences"] = [_controller_ref("ReplicaSet", rs, uid_for("replicaset", rs))]
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
    cid = p.current.container_id if p.current else (p.previous.container_id if p.previous else "")
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
    node_ip = nodes.node_ip(p.node)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": _pod_spec(app, p.revision.image, p.node),
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


# --------------------------------------------------------------------------- workloads


def _template(app: AppSpec, image: str, labels: dict[str, str], cause: str | None) -> Obj:
    meta: Obj = {"labels": labels}
    if cause:
        meta["annotations"] = {"kubernetes.io/change-cause": cause}
    return {"metadata": meta, "spec": _pod_spec(app, image)}


def _replicaset(
    cluster: Cluster,
    app: AppSpec,
    rev: Revision,
    is_current: bool,
    dep_uid: str,
    pods: list[PodModel],
) -> Obj:
    name = rev.rs_name(app.name)
    labels = {"app": app.name, "pod-template-hash": rev.rs_hash}
    meta = object_meta("replicaset", name, rev.created, cluster.cfg.namespace)
    meta["labels"] = dict(labels)
    meta["annotations"] = {
        "deployment.kubernetes.io/desired-replicas": str(app.replicas),
        "deployment.kubernetes.io/max-replicas": str(app.replicas + 1),
        "deployment.kubernetes.io/revision": str(rev.number),
        "kubernetes.io/change-cause": rev.change_cause,
    }
    meta["ownerReferences"] = [_controller_ref("Deployment", app.name, dep_uid)]
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
            "template": _template(app, rev.image, dict(labels), rev.change_cause),
        },
        "status": status,
    }


def _deployment(cluster: Cluster, app: AppSpec, revs: list[Revision], pods: list[PodModel]) -> Obj:
    current = revs[-1]
    meta = object_meta(
        "deployment", app.name, cluster.boot - app.created_ago, cluster.cfg.namespace
    )
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
    rolled = _pod_created(current, app.replicas - 1) + 9  # last new pod became ready
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
            "template": _template(app, current.image, dict(labels), current.change_cause),
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
    ns: str,
    app: AppSpec,
    revs: list[Revision],
    dep_uid: str,
    pods: list[PodModel],
    events: list[Obj],
) -> None:
    """The events of the latest rollout: replica sets scaled, pods scheduled and started."""
    current = revs[-1]
    dep_ref = object_ref("Deployment", app.name, dep_uid, namespace=ns, api_version="apps/v1")
    new_rs = current.rs_name(app.name)
    old_rs = revs[-2].rs_name(app.name) if len(revs) > 1 else None
    for i, p in enumerate(pods):
        events.append(
            event(
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
                event(
                    dep_ref,
                    "ScalingReplicaSet",
                    f"Scaled down replica set {old_rs} to {left} from {left + 1}",
                    first=p.created + 9,
                    component="deployment-controller",
                )
            )
        events.append(
            event(
                pod_ref(p, ns),
                "Scheduled",
                f"Successfully assigned {ns}/{p.name} to {p.node}",
                first=p.created,
                component="default-scheduler",
            )
        )
        events += container_events(
            p, ns, {"Pulled": 1, "Created": 2, "Started": 3}, first=p.created
        )


# --------------------------------------------------------------------------- secrets


def _secret(cluster: Cluster, faults: dict[str, Fault]) -> Obj:
    cfg = cluster.cfg
    rotated = faults.get("auth-secret-rotated")
    jwt = str(rotated.params["new_secret"]) if rotated is not None else cfg.jwt_secret
    db_password = cfg.planted.get("db_password", "sandbox-db-password")
    meta = object_meta("secret", SECRET_NAME, cluster.boot - 180 * DAY, cluster.cfg.namespace)
    meta["labels"] = {"app": API}
    if rotated is not None:
        meta["annotations"] = {"llm-research.io/rotated-at": ts(rotated.since)}
    database_url = (
        f"postgresql://llm_research:{db_password}@postgres.{cfg.namespace}.svc:5432/llm_research"
    )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "data": {
            "DATABASE_URL": _b64(database_url),
            "JWT_SECRET": _b64(jwt),
            "S3_ACCESS_KEY": _b64("AKIASANDBOX7EXAMPLE0"),
        },
    }


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()
