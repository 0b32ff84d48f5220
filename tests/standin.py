"""A small HTTP server on loopback answering requests from a function, for replies the sandbox does not
give (an open API, an odd body shape, an empty Prometheus, an S3 that refuses; HEAD/PUT/... answer as GET).

``answer(path, query)`` returns ``(status, body)``: a JSON-able body, or ``(bytes, content type)``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

Answer = Callable[[str, str], tuple[int, Any]]


class StandIn:
    def __init__(self, answer: Answer) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                if length:  # another method's body: read, so the connection stays usable
                    self.rfile.read(length)
                status, body = answer(parts.path, parts.query)
                payload, kind = body if isinstance(body, tuple) else (json.dumps(body).encode(), "application/json")
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(payload)))
                self.send_header("Date", formatdate(usegmt=True))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            # Other methods get the same answer (an S3 stand-in is asked HEAD, PUT, DELETE).
            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def unsigned_jwt(**claims: Any) -> str:
    """A JWT-shaped token valid for an hour (labcheck reads exp locally); stand-ins do not verify it."""
    import base64
    import time

    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")

    return ".".join([part({"alg": "HS256", "typ": "JWT"}),
                     part({"sub": "labcheck", "exp": int(time.time()) + 3600, **claims}), "c2lnbmF0dXJl"])
