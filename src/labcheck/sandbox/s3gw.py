"""The sandbox S3 gateway: a logging reverse proxy in front of moto with outage faults and CloudWatch metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import boto3
import httpx
from botocore.config import Config as BotoConfig
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from labcheck.sandbox.serve import admin_key_ok, fault_params, load_config, parse_args, serve

log = logging.getLogger("labcheck.sandbox.s3gw")

# Headers that describe one hop, not the message; never forwarded.
HOP_HEADERS = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"expect",
}
PROXY_METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"]
HTTP_METHODS = tuple(m.encode() + b" " for m in PROXY_METHODS)
MODES = {"503", "403", "404", "reset"}
ALIASES = {"s3-forbidden": "403", "s3-missing": "404", "s3-reset": "reset"}
ERRORS = {
    "503": ("SlowDown", "Please reduce your request rate."),
    "403": ("AccessDenied", "Access Denied"),
    "404": ("NoSuchBucket", "The specified bucket does not exist"),
}


@dataclass
class GatewaySettings:
    """The gateway's configuration, read from s3gw.json."""

    admin_key: str
    upstream: str = "http://127.0.0.1:18901"
    host: str = "127.0.0.1"
    port: int = 18900
    bucket: str = "llm-research-datasets"
    cloudwatch_endpoint: str = "http://127.0.0.1:18901"
    aws_region: str = "us-east-1"
    aws_access_key_id: str = "testing"
    aws_secret_access_key: str = "testing"
    requests_log: str = ""
    metrics_interval: float = 5.0
    size_interval: float = 10.0
    upstream_timeout: float = 30.0

    @classmethod
    def load(cls, path: str | Path) -> GatewaySettings:
        return load_config(cls, path, log)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Gateway:
    """State of one gateway process: the fault, the request log and the request counters."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.mode: str | None = None
        self.log: deque[dict[str, Any]] = deque(maxlen=50_000)
        self.counts = {"AllRequests": 0, "4xxErrors": 0, "5xxErrors": 0}
        self.tasks: list[asyncio.Task[Any]] = []
        self._log_file = (
            open(settings.requests_log, "a", buffering=1) if settings.requests_log else None
        )
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.upstream_timeout, connect=2.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            follow_redirects=False,
        )
        creds = {
            "region_name": settings.aws_region,
            "aws_access_key_id": settings.aws_access_key_id,
            "aws_secret_access_key": settings.aws_secret_access_key,
        }
        cfg = BotoConfig(
            connect_timeout=2,
            read_timeout=10,
            retries={"total_max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path"},
        )
        self.cloudwatch = boto3.session.Session().client(
            "cloudwatch", endpoint_url=settings.cloudwatch_endpoint, config=cfg, **creds
        )
        # Bucket size is read from the upstream directly: it is not an S3 request of a client.
        self.s3_upstream = boto3.session.Session().client(
            "s3", endpoint_url=settings.upstream, config=cfg, **creds
        )

    def record(self, method: str, path: str, query: str, status: int, user_agent: str) -> None:
        entry = {
            "ts": _now_iso(),
            "method": method,
            "path": path,
            "query": query,
            "status": status,
            "user_agent": user_agent,
        }
        self.log.append(entry)
        if self._log_file is not None:
            try:
                self._log_file.write(json.dumps(entry) + "\n")
            except OSError as exc:
                log.warning("cannot write request log: %s", exc)
        bucket = f"/{self.settings.bucket}"
        if path != bucket and not path.startswith(bucket + "/"):
            return  # S3 request metrics are per bucket; e.g. ListBuckets is not counted
        self.counts["AllRequests"] += 1
        if 400 <= status < 500:
            self.counts["4xxErrors"] += 1
        elif status >= 500:
            self.counts["5xxErrors"] += 1

    def close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # -- CloudWatch -----------------------------------------------------------------

    def _dimensions(self) -> list[dict[str, str]]:
        return [
            {"Name": "BucketName", "Value": self.settings.bucket},
            {"Name": "FilterId", "Value": "EntireBucket"},
        ]

    async def push_request_metrics(self) -> None:
        """Every metrics_interval: the request counts since the last push, zeros included."""
        while True:
            await asyncio.sleep(self.settings.metrics_interval)
            counts, self.counts = self.counts, {k: 0 for k in self.counts}
            now = datetime.now(UTC)
            data = [
                {
                    "MetricName": name,
                    "Dimensions": self._dimensions(),
                    "Timestamp": now,
                    "Value": float(value),
                    "Unit": "Count",
                }
                for name, value in counts.items()
            ]
            try:
                await asyncio.to_thread(
                    self.cloudwatch.put_metric_data, Namespace="AWS/S3", MetricData=data
                )
            except Exception as exc:  # noqa: BLE001 - keep the counts for the next push
                log.warning("put_metric_data failed: %s", exc)
                for name, value in counts.items():
                    self.counts[name] += value

    async def push_storage_metrics(self) -> None:
        """Every size_interval: BucketSizeBytes and NumberOfObjects, like S3's daily metrics."""
        while True:
            try:
                await asyncio.to_thread(self._put_storage_metrics)
            except Exception as exc:  # noqa: BLE001
                log.info("storage metrics skipped: %s", exc)
            await asyncio.sleep(self.settings.size_interval)

    def _put_storage_metrics(self) -> None:
        bucket = self.settings.bucket
        total = count = 0
        for page in self.s3_upstream.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                total += int(obj["Size"])
                count += 1
        now = datetime.now(UTC)
        self.cloudwatch.put_metric_data(
            Namespace="AWS/S3",
            MetricData=[
                {
                    "MetricName": "BucketSizeBytes",
                    "Dimensions": [
                        {"Name": "BucketName", "Value": bucket},
                        {"Name": "StorageType", "Value": "StandardStorage"},
                    ],
                    "Timestamp": now,
                    "Value": float(total),
                    "Unit": "Bytes",
                },
                {
                    "MetricName": "NumberOfObjects",
                    "Dimensions": [
                        {"Name": "BucketName", "Value": bucket},
                        {"Name": "StorageType", "Value": "AllStorageTypes"},
                    ],
                    "Timestamp": now,
                    "Value": float(count),
                    "Unit": "Count",
                },
            ],
        )

    # -- proxying -------------------------------------------------------------------

    def error_response(self, mode: str, path: str, method: str) -> Response:
        code, message = ERRORS[mode]
        request_id = secrets.token_hex(8).upper()
        extra = f"<BucketName>{escape(self.settings.bucket)}</BucketName>" if mode == "404" else ""
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>{extra}"
            f"<Resource>{escape(path)}</Resource><RequestId>{request_id}</RequestId>"
            f"<HostId>{secrets.token_hex(16)}</HostId></Error>"
        ).encode()
        headers = {
            "x-amz-request-id": request_id,
            "content-type": "application/xml",
            "date": formatdate(usegmt=True),
        }
        if mode == "503":
            headers["retry-after"] = "1"
        return Response(b"" if method == "HEAD" else body, status_code=int(mode), headers=headers)

    async def proxy(self, request: Request) -> Response:
        scope = request.scope
        method = request.method
        path = scope["path"]
        raw_path = scope.get("raw_path") or path.encode()
        query = scope.get("query_string", b"").decode("latin-1")
        user_agent = request.headers.get("user-agent", "")
        mode = self.mode
        # Read the body even when answering an error: an unread PUT body would be parsed as the
        # next request on the kept-alive connection.
        body = await request.body()
        if mode in ERRORS:
            self.record(method, path, query, int(mode), user_agent)
            return self.error_response(mode, path, method)
        headers = [
            (k, v)
            for k, v in scope["headers"]
            if k.lower() not in HOP_HEADERS and k.lower() not in (b"host", b"content-length")
        ]
        url = self.settings.upstream.rstrip("/") + raw_path.decode("latin-1")
        if query:
            url += "?" + query
        try:
            upstream_request = self.client.build_request(method, url, headers=headers, content=body)
            upstream = await self.client.send(upstream_request, stream=True)
            try:
                content = b"".join([chunk async for chunk in upstream.aiter_raw()])
            finally:
                await upstream.aclose()
        except httpx.HTTPError as exc:
            log.warning("upstream %s %s failed: %s", method, path, exc)
            self.record(method, path, query, 502, user_agent)
            body_xml = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>BadGateway</Code>'
                f"<Message>{escape(str(exc))}</Message></Error>"
            )
            return Response(body_xml, status_code=502, media_type="application/xml")
        self.record(method, path, query, upstream.status_code, user_agent)
        response = Response(content, status_code=upstream.status_code)
        raw_headers = [
            (k.lower(), v) for k, v in upstream.headers.raw if k.lower() not in HOP_HEADERS
        ]
        if not any(k == b"content-length" for k, _ in raw_headers) and method != "HEAD":
            raw_headers.append((b"content-length", str(len(content)).encode()))
        if not any(k == b"date" for k, _ in raw_headers):
            raw_headers.append((b"date", formatdate(usegmt=True).encode()))
        response.raw_headers = raw_headers
        return response

    def reset_wanted(self, data: bytes) -> tuple[str, str] | None:
        """The request line of `data` when the reset fault should drop its connection."""
        if self.mode != "reset" or not data.startswith(HTTP_METHODS):
            return None
        line = data.split(b"\r\n", 1)[0].split(b" ")
        if len(line) < 2 or line[1].startswith(b"/admin"):
            return None
        return line[0].decode("latin-1"), line[1].decode("latin-1")


class ResettingH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with connections reset (RST) while the reset fault is active."""

    gateway: Gateway | None = None

    def data_received(self, data: bytes) -> None:
        gateway = type(self).gateway
        wanted = gateway.reset_wanted(data) if gateway is not None else None
        if gateway is not None and wanted is not None:
            method, target = wanted
            path, _, query = target.partition("?")
            gateway.record(method, path, query, 0, "")
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
            return
        super().data_received(data)


def create_app(settings: GatewaySettings) -> Starlette:
    """The gateway as an ASGI application."""
    gateway = Gateway(settings)
    ResettingH11Protocol.gateway = gateway

    def denied(request: Request) -> Response | None:
        if admin_key_ok(request, settings.admin_key):
            return None
        return JSONResponse({"error": "forbidden"}, status_code=403)

    async def admin_fault(request: Request) -> Response:
        if (resp := denied(request)) is not None:
            return resp
        name = request.path_params["name"]
        try:
            params = await fault_params(request)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if name in ALIASES:
            mode = ALIASES[name]
        elif name == "s3-outage":
            mode = str(params.get("mode", "503"))
        else:
            known = ["s3-outage", *ALIASES]
            return JSONResponse(
                {"error": f"unknown fault {name!r}", "known": known}, status_code=404
            )
        if mode not in MODES:
            return JSONResponse({"error": f"mode must be one of {sorted(MODES)}"}, status_code=400)
        gateway.mode = mode
        log.warning("fault s3-outage applied: mode=%s", mode)
        return JSONResponse({"fault": "s3-outage", "params": {"mode": mode}})

    async def admin_faults(request: Request) -> Response:
        if (resp := denied(request)) is not None:
            return resp
        if request.method == "DELETE":
            healed = ["s3-outage"] if gateway.mode else []
            gateway.mode = None
            log.warning("faults healed")
            return JSONResponse({"healed": healed, "errors": {}})
        active = {"s3-outage": {"mode": gateway.mode}} if gateway.mode else {}
        return JSONResponse({"active": active, "known": ["s3-outage", *ALIASES]})

    async def admin_requests(request: Request) -> Response:
        if (resp := denied(request)) is not None:
            return resp
        since = request.query_params.get("since")
        entries = list(gateway.log)
        if since:
            try:
                cutoff = datetime.fromtimestamp(float(since), UTC).isoformat(
                    timespec="milliseconds"
                )
                cutoff = cutoff.replace("+00:00", "Z")
            except ValueError:
                cutoff = since
            entries = [e for e in entries if e["ts"] >= cutoff]
        return JSONResponse({"requests": entries})

    async def proxy(request: Request) -> Response:
        return await gateway.proxy(request)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway.tasks = [
            asyncio.create_task(gateway.push_request_metrics()),
            asyncio.create_task(gateway.push_storage_metrics()),
        ]
        try:
            yield
        finally:
            for task in gateway.tasks:
                task.cancel()
            await asyncio.gather(*gateway.tasks, return_exceptions=True)
            await gateway.client.aclose()
            gateway.close()

    routes = [
        Route("/admin/faults/{name}", admin_fault, methods=["POST"]),
        Route("/admin/faults", admin_faults, methods=["GET", "DELETE"]),
        Route("/admin/requests", admin_requests, methods=["GET"]),
        Route("/{path:path}", proxy, methods=PROXY_METHODS),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gateway
    return app


def main(argv: list[str] | None = None) -> int:
    args = parse_args("s3gw", __doc__, argv, quiet=(("botocore", logging.WARNING),))
    settings = GatewaySettings.load(args.config)
    app = create_app(settings)
    return serve(app, host=settings.host, port=settings.port, log_level=args.log_level,
                 http=ResettingH11Protocol, server_header=False, date_header=False)


if __name__ == "__main__":
    raise SystemExit(main())
