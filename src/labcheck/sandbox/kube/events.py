"""Events and the object references they point at: what the kubelet and the controllers report."""

from __future__ import annotations

from labcheck.sandbox.kube.model import Obj, PodModel, hexid, ts, uid_for


def object_ref(
    kind: str, name: str, uid: str, *, namespace: str | None = None, api_version: str = "v1"
) -> Obj:
    """An ObjectReference (an event's involvedObject)."""
    ref: Obj = {"kind": kind}
    if namespace is not None:
        ref["namespace"] = namespace
    ref.update({"name": name, "uid": uid, "apiVersion": api_version})
    return ref


def pod_ref(p: PodModel, namespace: str) -> Obj:
    return object_ref("Pod", p.name, p.uid, namespace=namespace)


def node_ref(name: str) -> Obj:
    return object_ref("Node", name, uid_for("node", name))


def event(
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
    """A core/v1 Event about ``involved``, seen ``count`` times from ``first`` to ``last``."""
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


def container_event(
    p: PodModel,
    namespace: str,
    reason: str,
    message: str,
    *,
    first: float,
    last: float | None = None,
    count: int = 1,
    type_: str = "Normal",
) -> Obj:
    """The kubelet's event about a pod's container (on the pod's node, fieldPath the container)."""
    return event(
        pod_ref(p, namespace),
        reason,
        message,
        first=first,
        last=last,
        count=count,
        type_=type_,
        host=p.node,
        field_path=f"spec.containers{{{p.app.container}}}",
    )


def container_events(
    p: PodModel,
    namespace: str,
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
        "Created": f"Created container {p.app.container}",
        "Started": f"Started container {p.app.container}",
    }
    return [
        container_event(
            p,
            namespace,
            reason,
            messages[reason],
            first=first + offset,
            last=None if last is None else last + offset,
            count=count,
        )
        for reason, offset in offsets.items()
    ]
