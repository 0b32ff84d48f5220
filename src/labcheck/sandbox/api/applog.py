"""The API's application log, as its pods' stdout carries it: access lines and error lines, in a file.

One line per request (``[uvicorn.access]``: client address, method, path, status, duration; the
client is the first X-Forwarded-For hop when a proxy sent one, as uvicorn's ``proxy_headers`` do),
and the application's own warnings and errors: failed requests, S3 errors, authentication failures
with their reason and the token's subject when one can be read. The Kubernetes stand-in serves this
file as the API pods' logs (sandbox/kube/logs.py).
"""

from __future__ import annotations

import logging
import os
import re
import time
from datetime import UTC, datetime

import jwt
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Not under "uvicorn": uvicorn's logging setup resets the children of its loggers. Lines of the
# access logger are written as uvicorn's ("[uvicorn.access]").
ROOT = "llm_research"
root_log = logging.getLogger(ROOT)
access_log = logging.getLogger(f"{ROOT}.access")
api_log = logging.getLogger(f"{ROOT}.api")
auth_log = logging.getLogger(f"{ROOT}.auth")
storage_log = logging.getLogger(f"{ROOT}.storage")
_SUBJECT = re.compile(r"[^A-Za-z0-9_.@:\-]")


class _Formatter(logging.Formatter):
    """``2026-11-30T09:30:00.123Z INFO  [uvicorn.access] ...``: the app's own timestamp, in UTC."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        name = "uvicorn.access" if record.name == access_log.name else record.name
        return f"{stamp} {record.levelname:<5} [{name}] {record.getMessage()}"


def setup(path: str) -> None:
    """Write the API's log lines to ``path`` (nowhere when empty); they never reach stderr."""
    handler: logging.Handler = logging.NullHandler()
    if path:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))  # private, like the other logs
        handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_Formatter())
    for old in list(root_log.handlers):
        root_log.removeHandler(old)
        old.close()
    root_log.addHandler(handler)
    root_log.setLevel(logging.INFO)
    root_log.propagate = False


def client_of(scope: Scope) -> str:
    """The client's address: the first X-Forwarded-For hop when present, else the socket's peer."""
    for key, value in scope.get("headers") or ():
        if key == b"x-forwarded-for":
            first = str(value.decode("latin-1")).split(",")[0].strip()
            if first:
                return first
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def subject_of(token: str) -> str:
    """The ``sub`` claim of a token, unverified (only to name who failed), or ``-`` when unreadable."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return "-"
    sub = claims.get("sub") if isinstance(claims, dict) else None
    if sub is None:
        return "-"
    return _SUBJECT.sub("", str(sub))[:64] or "-"


class AccessLog:
    """ASGI middleware: one access line per HTTP request, with the final status and the duration."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            path = scope.get("path", "")
            query = scope.get("query_string", b"").decode("latin-1")
            target = f"{path}?{query}" if query else path
            ms = (time.perf_counter() - start) * 1000
            access_log.info('%s - "%s %s HTTP/%s" %d %.1fms', client_of(scope), scope.get("method", "-"), target,
                            scope.get("http_version", "1.1"), status, ms)
