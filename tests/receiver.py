"""A webhook receiver on loopback that records every request's body: for notification tests.

``Receiver(statuses=[500, 202])`` answers the first request 500, then 202 from then on;
``Receiver(hang=True)`` reads the request and never answers until closed; ``Receiver(trickle=True)``
answers 200 with a body it sends one byte at a time, every 0.2 s (no read timeout ever fires);
``Receiver(statuses=[500], delay=1.0)`` answers each request a second late. Unlike ``standin.StandIn``
(which answers GETs from a function and drops bodies), it keeps what it was sent.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


class Receiver:
    def __init__(self, *, statuses: list[int] | None = None, hang: bool = False, trickle: bool = False,
                 delay: float = 0.0) -> None:
        self.requests: list[Received] = []
        self._statuses = list(statuses or [200])
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.requests.append(Received(self.command, self.path, dict(self.headers.items()), raw))
                if hang:
                    receiver._released.wait(60)
                    return
                if trickle:
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    while not receiver._released.wait(0.2):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                    return
                if delay:
                    receiver._released.wait(delay)
                status = receiver._statuses.pop(0) if len(receiver._statuses) > 1 else receiver._statuses[0]
                reply = json.dumps({"status": "success" if status < 300 else "error"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[Any]:
        return [r.json for r in self.requests]

    def close(self) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()
