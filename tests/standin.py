"""A small HTTP server on loopback answering GETs from a function, for replies the sandbox does not
give (an open API, an odd body shape, an empty Prometheus).

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
                status, body = answer(parts.path, parts.query)
                payload, kind = body if isinstance(body, tuple) else (json.dumps(body).encode(), "application/json")
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Date", formatdate(usegmt=True))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
