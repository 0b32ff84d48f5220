"""The API surface: discovery documents, what a request asks for, label and field selectors."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labcheck.sandbox.kube.model import K8S_VERSION, Obj

Query = dict[str, list[str]]


def query_param(query: Query, key: str, default: str = "") -> str:
    """A query parameter's last value (as the apiserver reads repeated ones)."""
    return query.get(key, [default])[-1]


def truthy(v: str) -> bool:
    return v.lower() in ("1", "true", "t", "yes")


# --------------------------------------------------------------------------- selectors

_LABEL_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_SET_TERM = re.compile(rf"^\s*({_LABEL_KEY})\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_TERM = re.compile(rf"^\s*({_LABEL_KEY})\s*(==|!=|=)\s*([-A-Za-z0-9_.]*)\s*$")
_EXISTS_TERM = re.compile(rf"^\s*(!?)\s*({_LABEL_KEY})\s*$")


def _split_top(s: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def label_matcher(selector: str) -> Callable[[Obj], bool]:
    """Parse a label selector (equality and set-based); raises ValueError when invalid."""
    reqs: list[tuple[str, str, frozenset[str]]] = []  # (key, op, values)
    for term in _split_top(selector):
        if m := _SET_TERM.match(term):
            vals = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append((m.group(1), m.group(2), vals))
        elif m := _EQ_TERM.match(term):
            op = "notin" if m.group(2) == "!=" else "in"
            reqs.append((m.group(1), op, frozenset({m.group(3)})))
        elif m := _EXISTS_TERM.match(term):
            reqs.append((m.group(2), "!exists" if m.group(1) else "exists", frozenset()))
        else:
            raise ValueError(f"unable to parse requirement: {term.strip()!r}")

    def match(obj: Obj) -> bool:
        labels: dict[str, str] = obj["metadata"].get("labels") or {}
        for key, op, vals in reqs:
            ok = {
                "in": key in labels and labels[key] in vals,
                "notin": labels.get(key) not in vals,
                "exists": key in labels,
                "!exists": key not in labels,
            }[op]
            if not ok:
                return False
        return True

    return match


def _dotted(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return str(cur).lower()
    return str(cur)


def field_matcher(selector: str) -> Callable[[Obj], bool]:
    """Field selectors: `path=value`, `path==value`, `path!=value` terms on dotted paths."""
    reqs: list[tuple[str, bool, str]] = []  # (path, equal?, value)
    for term in (t.strip() for t in selector.split(",")):
        if not term:
            continue
        m = re.match(r"^([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*)$", term)
        if not m:
            raise ValueError(f"invalid field selector: {term!r}")
        reqs.append((m.group(1), m.group(2) != "!=", m.group(3)))

    def match(obj: Obj) -> bool:
        return all((_dotted(obj, path) == val) == equal for path, equal, val in reqs)

    return match


# --------------------------------------------------------------------------- request info


@dataclass(frozen=True)
class RequestInfo:
    """What the apiserver's RequestInfoFactory derives from a request (verb, resource, ...)."""

    is_resource: bool
    verb: str
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    watch_prefix: bool = False

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


_METHOD_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}


def request_info(method: str, path: str, query: Query) -> RequestInfo:
    parts = [p for p in path.strip("/").split("/") if p] if path.strip("/") else []
    plain = RequestInfo(False, method.lower())
    if not parts or parts[0] not in ("api", "apis"):
        return plain
    if parts[0] == "api":
        if len(parts) < 2:
            return plain
        group, version, rest = "", parts[1], parts[2:]
    else:
        if len(parts) < 3:
            return plain
        group, version, rest = parts[1], parts[2], parts[3:]
    if not rest:
        return plain
    verb = _METHOD_VERBS.get(method.upper(), method.lower())
    watch_prefix = False
    if rest[0] == "watch":
        rest = rest[1:]
        watch_prefix = True
        if verb == "get":
            verb = "watch"
        if not rest:
            return plain
    namespace = ""
    if rest[0] == "namespaces":
        if len(rest) > 1:
            namespace = rest[1]
            if len(rest) > 2 and rest[2] not in ("status", "finalize"):
                rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) >= 2 else ""
    sub = rest[2] if len(rest) >= 3 else ""
    if not name and verb == "get":
        verb = "watch" if truthy(query_param(query, "watch")) else "list"
        fs = query_param(query, "fieldSelector")
        m = re.fullmatch(r"metadata\.name==?([-a-z0-9.]+)", fs.strip())
        if m:
            name = m.group(1)
    if not name and verb == "delete":
        verb = "deletecollection"
    return RequestInfo(True, verb, group, version, namespace, resource, sub, name, watch_prefix)


# --------------------------------------------------------------------------- API surface


@dataclass(frozen=True)
class ResourceDef:
    group: str
    name: str
    kind: str
    namespaced: bool
    short: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    singular: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/v1" if self.group else "v1"


RESOURCES: dict[tuple[str, str], ResourceDef] = {
    ("", "pods"): ResourceDef("", "pods", "Pod", True, ("po",), ("all",), "pod"),
    ("", "events"): ResourceDef("", "events", "Event", True, ("ev",), (), "event"),
    ("", "nodes"): ResourceDef("", "nodes", "Node", False, ("no",), (), "node"),
    ("", "secrets"): ResourceDef("", "secrets", "Secret", True, (), (), "secret"),
    ("", "namespaces"): ResourceDef("", "namespaces", "Namespace", False, ("ns",), (), "namespace"),
    ("apps", "deployments"): ResourceDef(
        "apps", "deployments", "Deployment", True, ("deploy",), ("all",), "deployment"
    ),
    ("apps", "replicasets"): ResourceDef(
        "apps", "replicasets", "ReplicaSet", True, ("rs",), ("all",), "replicaset"
    ),
    ("coordination.k8s.io", "leases"): ResourceDef(
        "coordination.k8s.io", "leases", "Lease", True, (), (), "lease"
    ),
}
GROUPS = ("apps", "coordination.k8s.io")
READ_VERBS = ["get", "list", "watch"]


def resource_list(group: str) -> Obj:
    res: list[Obj] = []
    for (g, _), d in RESOURCES.items():
        if g != group:
            continue
        res.append(
            {
                "name": d.name,
                "singularName": d.singular,
                "namespaced": d.namespaced,
                "kind": d.kind,
                "verbs": READ_VERBS,
                **({"shortNames": list(d.short)} if d.short else {}),
                **({"categories": list(d.categories)} if d.categories else {}),
            }
        )
        if d.name == "pods":
            res.append(
                {
                    "name": "pods/log",
                    "singularName": "",
                    "namespaced": True,
                    "kind": "Pod",
                    "verbs": ["get"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/v1" if group else "v1",
        "resources": res,
    }


def version_info() -> Obj:
    return {
        "major": "1",
        "minor": K8S_VERSION.split(".")[1],
        "gitVersion": K8S_VERSION,
        "gitCommit": "a78aa47129b8539636eb86a9d00e31b2720fe06b",
        "gitTreeState": "clean",
        "buildDate": "2024-12-10T18:44:20Z",
        "goVersion": "go1.22.9",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def _api_group(name: str) -> Obj:
    gv = {"groupVersion": f"{name}/v1", "version": "v1"}
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": [gv],
        "preferredVersion": gv,
    }


def discovery(path: str, server_address: str) -> Obj | None:
    """The discovery document at a non-resource path (None: no such path)."""
    p = path.rstrip("/") or "/"
    if p == "/version":
        return version_info()
    if p == "/api":
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
            ],
        }
    if p == "/api/v1":
        return resource_list("")
    if p == "/apis":
        groups = [_api_group(g) for g in GROUPS]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    for g in GROUPS:
        if p == f"/apis/{g}":
            return _api_group(g)
        if p == f"/apis/{g}/v1":
            return resource_list(g)
    if p == "/":
        paths = [
            "/api",
            "/api/v1",
            "/apis",
            *(f"/apis/{g}" for g in GROUPS),
            *(f"/apis/{g}/v1" for g in GROUPS),
            "/healthz",
            "/livez",
            "/readyz",
            "/version",
        ]
        return {"paths": paths}
    return None
