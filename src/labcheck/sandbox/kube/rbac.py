"""What labcheck's service account may do: deploy/rbac.yaml as data, for SelfSubjectAccessReview.

The stand-in serves every read to a valid token; this table is what a real cluster with the
manifest would allow, and what ``labcheck doctor`` asks about. tests/test_doctor.py keeps it equal
to the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

from labcheck.sandbox.kube.model import Obj

READ = ("get", "list", "watch")


@dataclass(frozen=True)
class Grant:
    """One rule of a Role (``namespaced``) or ClusterRole."""

    namespaced: bool
    group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    names: tuple[str, ...] = ()


def grants(secret_name: str = "llm-research-secrets") -> tuple[Grant, ...]:
    """The rules of deploy/rbac.yaml: the Role labcheck-read and the ClusterRole labcheck-nodes-read."""
    return (
        Grant(True, "", ("pods", "pods/log", "events"), READ),
        Grant(True, "apps", ("deployments", "replicasets"), READ),
        Grant(True, "metrics.k8s.io", ("pods",), ("get", "list")),
        Grant(True, "", ("secrets",), ("get",), (secret_name,)),
        Grant(False, "", ("nodes",), ("get", "list", "watch")),
    )


def allowed(attrs: Obj, namespace: str, rules: tuple[Grant, ...]) -> bool:
    """Whether ``resourceAttributes`` of a review fall under one of the rules."""
    resource = str(attrs.get("resource", ""))
    if attrs.get("subresource"):
        resource = f"{resource}/{attrs['subresource']}"
    for rule in rules:
        if rule.namespaced and attrs.get("namespace") != namespace:
            continue
        if (str(attrs.get("group", "")) == rule.group and resource in rule.resources
                and str(attrs.get("verb", "")) in rule.verbs
                and (not rule.names or attrs.get("name") in rule.names)):
            return True
    return False


def review(body: Obj, namespace: str) -> Obj:
    """The answer to a SelfSubjectAccessReview body: its spec, and a status with ``allowed``."""
    spec = body.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    attrs = spec.get("resourceAttributes")
    ok = isinstance(attrs, dict) and bool(attrs) and allowed(attrs, namespace, grants())
    status: Obj = {"allowed": ok}
    if not ok:
        status["reason"] = "no RBAC rule of labcheck's service account allows it"
    return {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}
