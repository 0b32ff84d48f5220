"""HTTP probe: bounded GET/HEAD requests whose failures name their target."""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx

from labcheck.errors import (
    ProbeBadResponse,
    ProbeError,
    ProbeRefused,
    ProbeTimeout,
    ProbeTLSError,
    ProbeUnreachable,
)

if TYPE_CHECKING:
    from labcheck.lab import Lab

READ_ONLY_METHODS = ("GET", "HEAD")


@dataclass(frozen=True)
class HttpResult:
    """One HTTP exchange, already read (bounded)."""

    method: str
    url: str
    status: int
    elapsed_s: float
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    truncated: bool = False

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON, or UNKNOWN naming what came back instead."""
        if self.truncated:
            raise ProbeBadResponse(f"body larger than the {len(self.body)} bytes we read", target=self.url)
        try:
            return json.loads(self.body)
        except ValueError:
            kind = self.headers.get("content-type", "unknown content type")
            snippet = self.text[:80].replace("\n", " ")
            raise ProbeBadResponse(
                f"HTTP {self.status} with a body that is not JSON ({kind}): {snippet!r}", target=self.url
            ) from None

    def date_skew_s(self, now: float) -> float | None:
        """Server Date header minus local time, in seconds."""
        date = self.headers.get("date")
        if not date:
            return None
        try:
            return parsedate_to_datetime(date).timestamp() - now
        except (TypeError, ValueError):
            return None

    def exchange(self) -> dict[str, Any]:
        """The exchange as evidence (headers and the start of the body)."""
        return {
            "request": f"{self.method} {self.url}",
            "status": self.status,
            "elapsed_s": round(self.elapsed_s, 3),
            "headers": self.headers,
            "body": self.text[:4000],
            "truncated": self.truncated,
        }


class _LazyTLS(httpx.BaseTransport):
    """The https:// transport, built on first use.

    A verifying transport loads the CA bundle when it is built: 0.15 s alone and 0.5 s on two
    cores while every probe starts at once, which a run against plain-http targets paid before its
    first request left. Built once, under a lock, by whichever request needs it first.
    """

    def __init__(self, limits: httpx.Limits) -> None:
        self._limits = limits
        self._lock = threading.Lock()
        self._transport: httpx.HTTPTransport | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            if self._transport is None:
                self._transport = httpx.HTTPTransport(verify=True, limits=self._limits)
            transport = self._transport
        return transport.handle_request(request)

    def close(self) -> None:
        with self._lock:
            if self._transport is not None:
                self._transport.close()


def _client(lab: Lab) -> httpx.Client:
    s = lab.settings
    timeout = httpx.Timeout(connect=s.connect_s, read=s.read_s, write=s.read_s, pool=s.connect_s)
    # No cap on connections per origin or in all: each request is a fact, started once per run, so
    # the facts bound how many are open; a pool limit could only make one request wait for another
    # (under a slow API, a whole latency each). Keep-alive stays bounded.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=16)
    return httpx.Client(
        timeout=timeout,
        follow_redirects=False,
        # Every https:// URL goes through the verifying transport mounted below; the default
        # transport only ever carries plain http://, where there is nothing to verify.
        verify=False,
        mounts={"https://": _LazyTLS(limits)},
        trust_env=False,
        limits=limits,
        headers={"User-Agent": "labcheck"},
    )


def _classify(exc: Exception, url: str, lab: Lab) -> ProbeError:
    s = lab.settings
    text = str(exc)
    if isinstance(exc, httpx.ConnectTimeout):
        return ProbeTimeout(f"timed out after {s.connect_s:g} s connecting", target=url)
    if isinstance(exc, httpx.TimeoutException):
        return ProbeTimeout(f"timed out after {s.read_s:g} s waiting for a response", target=url)
    if isinstance(exc, httpx.ConnectError):
        cause = exc.__context__ or exc.__cause__
        lowered = text.lower()
        if isinstance(cause, ssl.SSLError) or "certificate" in lowered or "ssl" in lowered:
            return ProbeTLSError(f"TLS certificate not trusted ({text[:120]})", target=url)
        if "refused" in lowered:
            return ProbeRefused("connection refused", target=url)
        if "name or service not known" in lowered or "name resolution" in lowered or "nodename" in lowered:
            return ProbeUnreachable("DNS name does not resolve", target=url)
        return ProbeUnreachable(f"cannot connect ({text[:120]})", target=url)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return ProbeBadResponse(f"connection closed mid-response ({text[:120] or type(exc).__name__})", target=url)
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return ProbeUnreachable(f"invalid URL ({text[:120]})", target=url)
    return ProbeBadResponse(f"{type(exc).__name__}: {text[:160]}", target=url)


def request(lab: Lab, url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> HttpResult:
    """Send one read-only request, read at most max_body_bytes, within the probe bound."""
    if method not in READ_ONLY_METHODS:
        raise ValueError(f"labcheck is read-only: {method} is not allowed")
    return _send(lab, method, url, headers=headers or {})


def post(lab: Lab, url: str, body: Any, *, headers: dict[str, str] | None = None) -> HttpResult:
    """POST ``body`` as JSON, once: the one write labcheck sends (the opt-in experiment canary)."""
    return _send(lab, "POST", url, headers={"Content-Type": "application/json", **(headers or {})},
                 content=json.dumps(body).encode())


def _send(lab: Lab, method: str, url: str, *, headers: dict[str, str], content: bytes | None = None) -> HttpResult:
    """One exchange on the run's client, reading at most max_body_bytes, within the probe bound."""
    client = lab.client("http", lambda: _client(lab))
    limit = int(lab.settings.max_body_bytes)
    deadline = time.monotonic() + lab.budget - 0.5
    started = time.monotonic()
    try:
        with client.stream(method, url, headers=headers, content=content) as response:
            chunks: list[bytes] = []
            size = 0
            truncated = False
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    truncated = True
                    break
                if time.monotonic() > deadline:
                    raise ProbeTimeout(
                        f"body still arriving after {lab.budget - 0.5:g} s (trickling)", target=url
                    )
            body = b"".join(chunks)[:limit]
            return HttpResult(
                method=method,
                url=url,
                status=response.status_code,
                elapsed_s=time.monotonic() - started,
                headers={k.lower(): v for k, v in response.headers.items()},
                body=body,
                truncated=truncated,
            )
    except ProbeError:
        raise
    except httpx.HTTPError as exc:
        raise _classify(exc, url, lab) from None


def _job(lab: Lab, url: str, headers: dict[str, str] | None, key: str | None) -> tuple[str, Any]:
    return key or f"GET {url}", lambda: request(lab, url, headers=headers)


def start(lab: Lab, url: str, *, headers: dict[str, str] | None = None, key: str | None = None) -> None:
    """Start a GET in the background so that later ``get`` calls find it under way."""
    from labcheck.lab import origin_of

    lab.start(*_job(lab, url, headers, key), origin=origin_of(url))


def get(lab: Lab, url: str, *, headers: dict[str, str] | None = None, key: str | None = None) -> HttpResult:
    """GET a URL once per run (shared by every check that asks)."""
    fact_key, fn = _job(lab, url, headers, key)
    result: HttpResult = lab.fact(fact_key, fn, target=url)
    return result


@dataclass(frozen=True)
class Attempt:
    """A request that may have failed: the failure itself is the observation."""

    url: str
    result: HttpResult | None
    error: ProbeError | None

    @property
    def answered(self) -> bool:
        return self.result is not None

    def describe(self) -> str:
        if self.result is not None:
            return f"HTTP {self.result.status} in {self.result.elapsed_s:.3f} s"
        return f"no answer ({self.error.reason if self.error else 'unknown'})"


def attempt(lab: Lab, url: str, *, headers: dict[str, str] | None = None, key: str | None = None) -> Attempt:
    """GET once per run; a failure to answer is returned as the observation, not raised."""
    try:
        return Attempt(url, get(lab, url, headers=headers, key=key), None)
    except ProbeError as exc:
        return Attempt(url, None, exc)
