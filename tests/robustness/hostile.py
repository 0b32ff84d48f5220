"""Small hostile servers on loopback: hanging, trickling, garbage, resetting and self-signed TLS."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

Handler = Callable[[socket.socket], None]


class Server:
    """A TCP server on 127.0.0.1 that runs one handler per connection, in daemon threads."""

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None, accept: bool = True) -> None:
        self.handler = handler
        self.tls = tls
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        # accept=False: a full backlog that never completes the handshake for new clients.
        self.sock.listen(0 if not accept else 64)
        self.port = self.sock.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        if accept:
            threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.handler(conn)
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        for conn in self._conns:
            try:
                conn.close()
            except OSError:
                pass
        self.sock.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def respond(status: int, body: bytes, content_type: str = "application/json", *, extra: bytes = b"") -> Handler:
    """A keep-alive server that answers every request the same way."""

    def handler(conn: socket.socket) -> None:
        while True:
            if not read_request(conn):
                return
            head = (f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\n").encode() + extra + b"\r\n"
            conn.sendall(head + body)

    return handler


def hang(conn: socket.socket) -> None:
    """Accept, read the request, never answer."""
    read_request(conn)
    threading.Event().wait(3600)


def trickle(conn: socket.socket) -> None:
    """Answer one byte per second."""
    read_request(conn)
    message = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b"{" * 100
    stop = threading.Event()
    for byte in message:
        conn.sendall(bytes([byte]))
        if stop.wait(1.0):
            return


def reset_mid_response(conn: socket.socket) -> None:
    """Send headers and part of the body, then reset the connection."""
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"status\":")
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()


def huge_body(size: int) -> Handler:
    """A 200 with a body of `size` bytes, streamed in chunks."""

    def handler(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode())
        chunk = b"x" * 65536
        sent = 0
        while sent < size:
            conn.sendall(chunk[: min(len(chunk), size - sent)])
            sent += len(chunk)

    return handler


def self_signed_context(directory: Path) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def closed_port() -> int:
    """A loopback port with nothing listening."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)
