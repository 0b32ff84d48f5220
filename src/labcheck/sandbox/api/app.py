"""The sandbox API as an ASGI app: routes for experiments, datasets, health, docs, metrics and faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import formatdate

import jwt
import psycopg
from botocore.exceptions import BotoCoreError, ClientError
from psycopg_pool import PoolTimeout
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labcheck.sandbox.api import applog
from labcheck.sandbox.api.applog import AccessLog, auth_log, client_of, storage_log, subject_of
from labcheck.sandbox.api.faults import Faults
from labcheck.sandbox.api.instrument import instrument
from labcheck.sandbox.api.platform import Platform
from labcheck.sandbox.api.settings import ApiSettings, first_line, log
from labcheck.sandbox.flavours import READINESS_COMPONENTS, endpoint_paths
from labcheck.sandbox.serve import admin_key_ok, fault_params

REALM = "llm-research"
# Routes counted in the playbook flavour's http_requests_total; /metrics and /admin are not.
UNCOUNTED_PREFIXES = ("/metrics", "/admin")


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Instrumentation:
    """ASGI middleware: the Date header by the API's (maybe skewed) clock, and in the `playbook`
    flavour the request metrics by route template (other flavours leave those to a library)."""

    def __init__(self, app: ASGIApp, platform: Platform, routes: list[Route]) -> None:
        self.app = app
        self.platform = platform
        self.routes = routes

    def _label(self, scope: Scope) -> str | None:
        path = scope.get("path", "")
        if any(path == p or path.startswith(p + "/") for p in UNCOUNTED_PREFIXES):
            return None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.path
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        m = self.platform.metrics
        label = self._label(scope) if m.requests is not None else None
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                date = formatdate(self.platform.auth.now(), usegmt=True).encode()
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"date"]
                headers.append((b"date", date))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if label is not None and m.requests is not None and m.duration is not None:
                m.requests.labels(path=label, status=str(status)).inc()
                m.duration.labels(path=label).observe(time.perf_counter() - start)


DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LLM Research Lab API</title></head>
<body>
<h1>LLM Research Lab API</h1>
<p>The platform API for experiments and datasets.</p>
<ul>
<li><code>GET /health</code>: liveness</li>
<li><code>GET /health/ready</code>: readiness of db, storage and auth</li>
<li><code>GET /experiments</code>: experiments (Bearer JWT, HS256)</li>
<li><code>GET /datasets</code>: objects in the datasets bucket</li>
<li><code>GET /metrics</code>: Prometheus metrics</li>
</ul>
</body></html>
"""


def create_app(settings: ApiSettings) -> Starlette:
    """The API as an ASGI application."""
    applog.setup(settings.app_log)
    platform = Platform(settings)
    faults = Faults(platform)

    def auth_failed(request: Request, reason: str, token: str = "") -> None:
        auth_log.warning("auth failure: %s sub=%s client=%s path=%s", reason,
                        subject_of(token) if token else "-", client_of(request.scope), request.url.path)

    def unauthorized(detail: str | None) -> JSONResponse:
        challenge = f'Bearer realm="{REALM}"'
        if detail:
            challenge += f', error="invalid_token", error_description="{detail}"'
        body = {"error": "unauthorized", "detail": detail or "missing bearer token"}
        return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": challenge})

    def token_denied(request: Request) -> Response | None:
        """401 unless the request carries a valid bearer token (None when it does)."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            auth_failed(request, "missing bearer token")
            return unauthorized(None)
        token = token.strip()
        try:
            platform.auth.verify_token(token)
        except jwt.ExpiredSignatureError:
            detail = "token expired"
        except jwt.ImmatureSignatureError:
            detail = "token not yet valid"
        except jwt.InvalidSignatureError:
            detail = "token invalid"
            auth_failed(request, "jwt signature verification failed", token)
            return unauthorized(detail)
        except jwt.PyJWTError:
            detail = "token invalid"
        else:
            return None
        auth_failed(request, f"jwt {detail}", token)
        return unauthorized(detail)

    def admin_denied(request: Request) -> Response | None:
        if admin_key_ok(request, settings.admin_key):
            return None
        return JSONResponse({"error": "forbidden"}, status_code=403)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        (db_ok, db_detail), (st_ok, st_detail) = await asyncio.gather(
            platform.db.check(), platform.storage.check()
        )
        auth_ok, auth_detail = platform.auth.check()
        name = dict(zip(READINESS_COMPONENTS, settings.readiness_names, strict=True))
        components = {
            name["db"]: {"status": "ok" if db_ok else "error", "detail": db_detail},
            name["storage"]: {"status": "ok" if st_ok else "error", "detail": st_detail},
            name["auth"]: {"status": "ok" if auth_ok else "error", "detail": auth_detail},
        }
        all_ok = db_ok and st_ok and auth_ok
        body = {"status": "ok" if all_ok else "degraded", settings.readiness_components: components}
        return JSONResponse(body, status_code=200 if all_ok else 503)

    async def experiments(request: Request) -> Response:
        if (injected := await faults.inject(request)) is not None:
            return injected
        if (denied := token_denied(request)) is not None:
            return denied
        if platform.db.pool is None:
            body = {"error": "database unavailable", "detail": platform.db.error}
            return JSONResponse(body, status_code=503)
        try:
            async with platform.db.pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT id, name, state, started_at, updated_at FROM experiments ORDER BY id"
                )
                rows = await cur.fetchall()
        except PoolTimeout:
            body = {"error": "database unavailable", "detail": "pool timeout"}
            return JSONResponse(body, status_code=503)
        except psycopg.Error as exc:
            body = {"error": "database error", "detail": first_line(exc)}
            return JSONResponse(body, status_code=503)
        if settings.experiments_shape == "items":
            items = [
                {"id": r[0], "name": r[1], "status": r[2], "created_at": _iso(r[3] or r[4])}
                for r in rows
            ]
            return JSONResponse({"items": items})
        experiments = [
            {
                "id": r[0],
                "name": r[1],
                "state": r[2],
                "started_at": _iso(r[3]),
                "updated_at": _iso(r[4]),
            }
            for r in rows
        ]
        return JSONResponse({"experiments": experiments})

    async def submit_experiment(request: Request) -> Response:
        """POST /experiments?dry_run=true: validate a submission, schedule nothing (issue 8's canary)."""
        if (injected := await faults.inject(request)) is not None:
            return injected
        if (denied := token_denied(request)) is not None:
            return denied
        if request.query_params.get("dry_run", "").lower() not in ("1", "true", "yes"):
            return JSONResponse({"error": "the sandbox accepts dry-run submissions only (?dry_run=true)"},
                                status_code=501)
        try:
            spec = json.loads(await request.body() or b"null")
        except json.JSONDecodeError:
            spec = None
        errors = []
        if not isinstance(spec, dict):
            errors.append("body must be a JSON object")
        elif not isinstance(spec.get("name"), str) or not spec["name"].strip():
            errors.append("name: a non-empty string is required")
        if errors:
            return JSONResponse({"dry_run": True, "valid": False, "errors": errors}, status_code=422)
        if platform.db.pool is None:
            return JSONResponse({"error": "database unavailable", "detail": platform.db.error}, status_code=503)
        try:  # a real submission needs the database: so does its dry run
            async with platform.db.pool.connection() as conn:
                await conn.execute("SELECT 1")
        except PoolTimeout:
            return JSONResponse({"error": "database unavailable", "detail": "pool timeout"}, status_code=503)
        except psycopg.Error as exc:
            return JSONResponse({"error": "database error", "detail": first_line(exc)}, status_code=503)
        return JSONResponse({"dry_run": True, "valid": True,
                             "experiment": {"name": spec["name"], "state": "queued", "id": None}})

    async def datasets(request: Request) -> Response:
        if (injected := await faults.inject(request)) is not None:
            return injected
        try:
            objects = await run_in_threadpool(platform.storage.list_objects)
        except (ClientError, BotoCoreError) as exc:
            code = exc.response.get("Error", {}).get("Code", "-") if isinstance(exc, ClientError) else "-"
            storage_log.error("s3 list_objects_v2 failed: bucket=%s region=%s aws_error_code=%s %s", settings.bucket,
                          settings.aws_region, code, first_line(exc))
            body = {"error": "storage unavailable", "detail": first_line(exc)}
            return JSONResponse(body, status_code=503)
        items = [{"key": o["Key"], "size": int(o["Size"])} for o in objects]
        total = sum(i["size"] for i in items)
        listing = {"datasets": items, "total_bytes": total, "quota_bytes": settings.quota_bytes}
        return JSONResponse(listing)

    async def docs(request: Request) -> Response:
        if "docs-down" in faults.active:
            return HTMLResponse("<h1>503 Service Unavailable</h1>", status_code=503)
        seconds = faults.param("latency", "seconds", 0.0)
        if seconds > 0:
            await asyncio.sleep(seconds)
        return HTMLResponse(DOCS_HTML)

    async def admin_fault(request: Request) -> Response:
        if (denied := admin_denied(request)) is not None:
            return denied
        name = request.path_params["name"]
        try:
            params = await fault_params(request)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        try:
            result = await faults.apply_fault(name, params)
        except KeyError:
            known = sorted(faults.handlers())
            return JSONResponse(
                {"error": f"unknown fault {name!r}", "known": known}, status_code=404
            )
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": f"bad parameters: {exc}"}, status_code=400)
        except Exception as exc:  # noqa: BLE001
            log.exception("fault %s failed", name)
            return JSONResponse({"error": first_line(exc)}, status_code=500)
        return JSONResponse(result)

    async def admin_faults(request: Request) -> Response:
        if (denied := admin_denied(request)) is not None:
            return denied
        if request.method == "DELETE":
            return JSONResponse(await faults.heal_all())
        return JSONResponse({"active": faults.active, "known": sorted(faults.handlers())})

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/experiments", submit_experiment, methods=["POST"]),
        *(Route(path, experiments if path.endswith("/experiments") else datasets, methods=["GET"])
          for path in endpoint_paths(settings.endpoints)),
        Route("/docs", docs, methods=["GET"]),
        Route("/admin/faults/{name}", admin_fault, methods=["POST"]),
        Route("/admin/faults", admin_faults, methods=["GET", "DELETE"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        platform.start()
        try:
            yield
        finally:
            tasks = list(platform.tasks)
            if faults.filler_cleanup is not None:
                tasks.append(faults.filler_cleanup)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await faults.release_all()
            await platform.db.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.platform = platform
    app.state.faults = faults
    app.add_middleware(Instrumentation, platform=platform, routes=routes)
    app.add_middleware(AccessLog)  # outside the Date header's middleware: it logs the final status
    # The flavour's library middleware (outermost: it sees every answer) and /metrics.
    instrument(app, settings.flavor, platform.metrics.registry)
    return app
