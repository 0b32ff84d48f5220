"""The HTTP app: the apiserver's routes (read-only, with watch and pods/log) and the admin API."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from labcheck.sandbox.kube import faults, metrics, rbac
from labcheck.sandbox.kube.logs import pod_log
from labcheck.sandbox.kube.model import (
    CLIENT_USER,
    Cluster,
    KubeConfig,
    Obj,
    content_rv,
    parse_ts,
    ts_ms,
    ts_nano,
)
from labcheck.sandbox.kube.objects import snapshot
from labcheck.sandbox.kube.resources import (
    RESOURCES,
    Query,
    RequestInfo,
    ResourceDef,
    discovery,
    field_matcher,
    label_matcher,
    query_param,
    request_info,
    truthy,
)
from labcheck.sandbox.kube.tables import to_table
from labcheck.sandbox.serve import admin_key_ok, fault_params

log = logging.getLogger("labcheck.sandbox.kube")

HEALTH_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


class RequestLog:
    """Every non-admin request, in memory and appended to a JSON-lines file."""

    def __init__(self, path: str | None, keep: int = 20000) -> None:
        self.entries: list[Obj] = []
        self.keep = keep
        self._fh = None
        if path:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._fh = os.fdopen(fd, "a", encoding="utf-8", buffering=1)

    def add(self, entry: Obj) -> None:
        self.entries.append(entry)
        if len(self.entries) > self.keep:
            del self.entries[: len(self.entries) - self.keep]
        if self._fh is not None:
            self._fh.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# --------------------------------------------------------------------------- answers


def _json(obj: object, status: int = 200) -> JSONResponse:
    return JSONResponse(obj, status_code=status)


def _status(code: int, reason: str, message: str, details: Obj | None = None) -> JSONResponse:
    """A failure as the apiserver answers it: a v1 Status object with the HTTP code."""
    out: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        out["details"] = details
    return _json(out, code)


def _not_found(rd: ResourceDef, name: str) -> JSONResponse:
    details: Obj = {"name": name, "kind": rd.name}
    if rd.group:
        details["group"] = rd.group
    qualified = f"{rd.name}.{rd.group}" if rd.group else rd.name
    return _status(404, "NotFound", f'{qualified} "{name}" not found', details)


def _no_such_path() -> JSONResponse:
    return _status(404, "NotFound", "the server could not find the requested resource", {})


def _bad_request(message: str) -> JSONResponse:
    return _status(400, "BadRequest", message)


def _forbidden(info: RequestInfo, path: str) -> JSONResponse:
    if info.is_resource:
        res = info.full_resource
        scope = f'in the namespace "{info.namespace}"' if info.namespace else "at the cluster scope"
        msg = f'{res} is forbidden: User "{CLIENT_USER}" cannot {info.verb} resource "{res}" in API group "{info.group}" {scope}'
        details: Obj = {
            "kind": info.resource,
            **({"name": info.name} if info.name else {}),
            **({"group": info.group} if info.group else {}),
        }
    else:
        msg = f'forbidden: User "{CLIENT_USER}" cannot {info.verb} path "{path}"'
        details = {}
    return _status(403, "Forbidden", msg, details)


def _in_scope(objs: list[Obj], rd: ResourceDef, info: RequestInfo) -> list[Obj]:
    """The objects a request's namespace covers (all of them for a cluster-wide request)."""
    if rd.namespaced and info.namespace:
        return [o for o in objs if o["metadata"].get("namespace") == info.namespace]
    return objs


def _event_line(kind: str, obj: Obj) -> bytes:
    return (json.dumps({"type": kind, "object": obj}, separators=(",", ":")) + "\n").encode()


# --------------------------------------------------------------------------- the app


def create_app(cfg: KubeConfig, cluster: Cluster | None = None) -> Starlette:
    cluster = cluster or Cluster(cfg)
    reqlog = RequestLog(cfg.requests_log)

    def token_ok(request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        scheme, _, tok = auth.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            tok.strip().encode(), cfg.token.encode()
        )

    async def admin(request: Request) -> Response:
        if not admin_key_ok(request, cfg.admin_key):
            return _json({"error": "missing or wrong X-Admin-Key"}, 403)
        rest = request.path_params["rest"].strip("/")
        method = request.method
        if rest == "faults":
            if method == "GET":
                return _json(faults.describe_faults(cluster))
            if method == "DELETE":
                return _json({"healed": faults.heal(cluster)})
        elif rest.startswith("faults/"):
            name = rest.split("/", 1)[1]
            if name not in faults.FAULTS:
                return _json(
                    {"error": f"unknown fault {name!r}", "available": sorted(faults.FAULTS)}, 404
                )
            if method == "POST":
                try:
                    fault = faults.inject(cluster, name, await fault_params(request))
                except ValueError as exc:
                    return _json({"error": str(exc)}, 400)
                log.info("fault %s injected", name)
                active = faults.describe_faults(cluster)["active"]
                return _json({"fault": name, **active[fault.name]})
            if method == "DELETE":
                return _json({"healed": faults.heal(cluster, name)})
        elif rest == "requests":
            if method == "GET":
                return _json({"count": len(reqlog.entries), "requests": reqlog.entries})
            if method == "DELETE":
                n = len(reqlog.entries)
                reqlog.entries.clear()
                return _json({"cleared": n})
        else:
            return _json({"error": "not found"}, 404)
        return _json({"error": f"method {method} not allowed here"}, 405)

    async def kube(request: Request) -> Response:
        path = request.url.path
        query = parse_qs(request.url.query, keep_blank_values=True)
        info = request_info(request.method, path, query)
        try:
            response = await dispatch(request, info, path, query)
        except Exception:  # answer like an apiserver would, and keep serving
            log.exception("internal error serving %s %s", request.method, path)
            response = _status(
                500,
                "InternalError",
                "an error on the server has prevented the request from succeeding",
            )
        reqlog.add(
            {
                "ts": ts_ms(time.time()),
                "method": request.method,
                "path": path,
                "query": request.url.query,
                "verb": info.verb,
                "resource": info.full_resource,
                "api_group": info.group,
                "namespace": info.namespace,
                "name": info.name,
                "status": response.status_code,
                "user_agent": request.headers.get("user-agent", ""),
            }
        )
        return response

    async def dispatch(request: Request, info: RequestInfo, path: str, query: Query) -> Response:
        if path in HEALTH_PATHS and request.method == "GET":
            return PlainTextResponse("ok")
        if not token_ok(request) or "unauthorized" in cluster.faults:
            return _status(401, "Unauthorized", "Unauthorized")
        if "forbidden" in cluster.faults:
            return _forbidden(info, path)
        if path.rstrip("/") == SSAR_PATH and request.method == "POST":
            # A question, not a write: answered from deploy/rbac.yaml's rules (sandbox/kube/rbac.py).
            try:
                body = json.loads(await request.body() or b"{}")
            except ValueError:
                return _bad_request("the body is not JSON")
            if not isinstance(body, dict):
                return _bad_request("the body is not a SelfSubjectAccessReview")
            return _json(rbac.review(body, cfg.namespace), 201)
        if request.method != "GET":
            return _status(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
                {},
            )
        if path.startswith(f"/apis/{metrics.GROUP}/") or path.rstrip("/") == f"/apis/{metrics.GROUP}":
            return serve_metrics(info, path, query)
        if not info.is_resource:
            doc = discovery(path, f"{cfg.host}:{cfg.port}")
            if doc is not None and path.rstrip("/") == "/apis" and metrics.ABSENT_FAULT not in cluster.faults:
                doc["groups"].append(metrics.group_doc())  # the APIService metrics-server registers
            return _no_such_path() if doc is None else _json(doc)
        return serve_resource(request, info, query)

    def serve_metrics(info: RequestInfo, path: str, query: Query) -> Response:
        """PodMetrics (get, list, labelSelector), or 404 everywhere as without metrics-server."""
        if metrics.ABSENT_FAULT in cluster.faults:
            return _no_such_path()
        p = path.rstrip("/")
        if p == f"/apis/{metrics.GROUP}":
            return _json(metrics.group_doc())
        if p == f"/apis/{metrics.GROUP}/{metrics.VERSION}":
            return _json(metrics.resource_list())
        if (info.version != metrics.VERSION or info.resource != "pods" or info.subresource
                or info.verb not in ("get", "list")):
            return _no_such_path()
        snap = snapshot(cluster)
        labels = {o["metadata"]["name"]: o["metadata"].get("labels") or {} for o in snap.objects["pods"]}
        items = [i for i in metrics.pod_metrics(snap, labels)
                 if not info.namespace or i["metadata"]["namespace"] == info.namespace]
        if info.name:
            items = [i for i in items if i["metadata"]["name"] == info.name]
            if info.verb == "get":
                if not items:
                    return _status(404, "NotFound", f'podmetrics.{metrics.GROUP} "{info.name}" not found',
                                   {"name": info.name, "group": metrics.GROUP, "kind": "pods"})
                return _json(metrics.single(items[0]))
        if sel := query_param(query, "labelSelector"):
            try:
                match = label_matcher(sel)
            except ValueError as exc:
                return _bad_request(str(exc))
            items = [i for i in items if match(i)]
        return _json(metrics.listing(items))

    def serve_resource(request: Request, info: RequestInfo, query: Query) -> Response:
        rd = RESOURCES.get((info.group, info.resource))
        if rd is None or info.version != "v1":
            return _no_such_path()
        if info.subresource:
            if info.full_resource == "pods/log" and info.name and not info.watch_prefix:
                return serve_log(info, query)
            return _no_such_path()
        if not rd.namespaced and info.namespace and info.resource != "namespaces":
            return _no_such_path()
        snap = snapshot(cluster)
        objs = _in_scope(snap.objects[rd.name], rd, info)
        want_table = "as=table" in request.headers.get("accept", "").lower().replace(" ", "")
        include = query_param(query, "includeObject", "Metadata")
        if info.name and info.verb == "get":
            found = next((o for o in objs if o["metadata"]["name"] == info.name), None)
            if found is None:
                return _not_found(rd, info.name)
            if want_table:
                rv = found["metadata"]["resourceVersion"]
                return _json(to_table(rd.name, [found], snap.now, include, rv))
            return _json(found)
        try:
            matchers = []
            if sel := query_param(query, "labelSelector"):
                matchers.append(label_matcher(sel))
            if fsel := query_param(query, "fieldSelector"):
                matchers.append(field_matcher(fsel))
        except ValueError as exc:
            return _bad_request(str(exc))

        def select(items: list[Obj]) -> list[Obj]:
            return [o for o in items if all(m(o) for m in matchers)]

        if info.verb == "watch":
            return watch(rd, info, select, query, want_table, include)
        items = select(objs)
        list_rv = content_rv("".join(o["metadata"]["resourceVersion"] for o in items))
        if want_table:
            return _json(to_table(rd.name, items, snap.now, include, list_rv))
        bare = []
        for o in items:
            o = dict(o)
            o.pop("kind", None)
            o.pop("apiVersion", None)
            bare.append(o)
        return _json(
            {
                "kind": f"{rd.kind}List",
                "apiVersion": rd.api_version,
                "metadata": {"resourceVersion": list_rv},
                "items": bare,
            }
        )

    def watch(
        rd: ResourceDef,
        info: RequestInfo,
        select: Callable[[list[Obj]], list[Obj]],
        query: Query,
        want_table: bool,
        include: str,
    ) -> Response:
        """Stream changes until timeoutSeconds (default 30, at most 300).

        Without resourceVersion (or with "0") the stream starts with an ADDED event per object;
        with one (a client resuming after its list) only later changes are sent.
        """
        replay = query_param(query, "resourceVersion") in ("", "0")
        try:
            timeout = float(query_param(query, "timeoutSeconds", "30") or 30)
        except ValueError:
            return _bad_request("timeoutSeconds must be an integer")
        timeout = max(0.0, min(timeout, 300.0))

        def current() -> dict[str, Obj]:
            objs = _in_scope(snapshot(cluster).objects[rd.name], rd, info)
            if info.name:
                objs = [o for o in objs if o["metadata"]["name"] == info.name]
            return {
                f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}": o
                for o in select(objs)
            }

        first = [True]

        def line(kind: str, obj: Obj) -> bytes:
            if want_table:  # kubectl get -w: one-row Tables, column definitions only once
                table = to_table(rd.name, [obj], time.time(), include, "")
                table["metadata"] = {"resourceVersion": obj["metadata"]["resourceVersion"]}
                if not first[0]:
                    table["columnDefinitions"] = []
                first[0] = False
                obj = table
            return _event_line(kind, obj)

        async def stream() -> AsyncIterator[bytes]:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            seen = current()
            if replay:
                for o in seen.values():
                    yield line("ADDED", o)
            while (left := deadline - loop.time()) > 0:
                await asyncio.sleep(min(1.0, left))
                now_objs = current()
                for key, o in now_objs.items():
                    old = seen.get(key)
                    if old is None:
                        yield line("ADDED", o)
                    elif old["metadata"]["resourceVersion"] != o["metadata"]["resourceVersion"]:
                        yield line("MODIFIED", o)
                for key in seen.keys() - now_objs.keys():
                    yield line("DELETED", seen[key])
                seen = now_objs

        return StreamingResponse(stream(), media_type="application/json")

    def serve_log(info: RequestInfo, query: Query) -> Response:
        snap = snapshot(cluster)
        pod = (
            next((p for p in snap.pods if p.name == info.name), None)
            if info.namespace == cfg.namespace
            else None
        )
        if pod is None:
            return _not_found(RESOURCES[("", "pods")], info.name)

        def q(key: str) -> str:
            return query_param(query, key)

        container = q("container") or pod.app.container
        if container != pod.app.container:
            return _bad_request(f"container {container} is not valid for pod {pod.name}")
        previous = truthy(q("previous"))
        if previous and pod.previous is None:
            return _bad_request(
                f'previous terminated container "{container}" in pod "{pod.name}" not found'
            )
        try:
            since_s = int(q("sinceSeconds")) if q("sinceSeconds") else None
            tail = int(q("tailLines")) if q("tailLines") else None
            limit = int(q("limitBytes")) if q("limitBytes") else None
            since_t = parse_ts(q("sinceTime")) if q("sinceTime") else None
        except ValueError as exc:
            return _bad_request(f"invalid log options: {exc}")
        if (
            (since_s is not None and since_s < 1)
            or (tail is not None and tail < 0)
            or (limit is not None and limit < 1)
        ):
            return _bad_request(
                "sinceSeconds and limitBytes must be positive, tailLines non-negative"
            )
        lines = pod_log(cfg, snap, pod, previous=previous)
        if since_s is not None:
            lines = [x for x in lines if x[0] >= snap.now - since_s]
        elif since_t is not None:
            lines = [x for x in lines if x[0] >= since_t]
        if tail is not None:
            lines = lines[-tail:] if tail else []
        stamp = truthy(q("timestamps"))
        body = "".join(
            f"{ts_nano(t)} {text}\n" if stamp else f"{text}\n" for t, text in lines
        ).encode()
        if limit is not None:
            body = body[:limit]
        return Response(body, media_type="text/plain")

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            reqlog.close()

    app = Starlette(
        routes=[
            Route("/admin/{rest:path}", admin, methods=methods),
            Route("/{rest:path}", kube, methods=methods),
        ],
        lifespan=lifespan,
    )
    app.state.cluster = cluster
    app.state.reqlog = reqlog
    return app
