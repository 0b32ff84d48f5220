"""The httpx side of the HTTP probe: the run's client and how its failures are named.

Imported on a run's first request (``http._send``), never at collection.
"""

from __future__ import annotations

import ssl
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from labcheck import errors
from labcheck.errors import ProbeError

# Optional packages that httpx and httpcore import at module level when they are installed, and that
# a run never uses: httpx's command-line interface (click), httpcore's async backends (trio, anyio;
# the run's client is synchronous). They are installed beside us by the sandbox's own dependencies;
# loaded, they cost a run 3.5 MiB of its peak RSS (issue 16).
UNUSED_OPTIONAL = ("trio", "anyio", "click")


@contextmanager
def _hidden(names: tuple[str, ...]) -> Iterator[None]:
    """Make ``import NAME`` fail inside the block, for each name not imported yet (a None entry in
    ``sys.modules``: Python's own way to say a module is absent). Any other import is unaffected."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


with _hidden(UNUSED_OPTIONAL):
    import httpcore  # noqa: F401 - imported here so that its optional imports find nothing
    import httpx

if TYPE_CHECKING:
    from labcheck.lab import Lab

HTTPError = httpx.HTTPError


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


def _timeout(lab: Lab) -> httpx.Timeout:
    s = lab.settings
    return httpx.Timeout(connect=s.connect_s, read=s.read_s, write=s.read_s, pool=s.connect_s)


# No cap on connections per origin or in all: each request is a fact, started once per run, so
# the facts bound how many are open; a pool limit could only make one request wait for another
# (under a slow API, a whole latency each). Keep-alive stays bounded.
LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=16)


def client(lab: Lab) -> httpx.Client:
    limits = LIMITS
    return httpx.Client(
        timeout=_timeout(lab),
        follow_redirects=False,
        # Every https:// URL goes through the verifying transport mounted below; the default
        # transport only ever carries plain http://, where there is nothing to verify.
        verify=False,
        mounts={"https://": _LazyTLS(limits)},
        trust_env=False,
        limits=limits,
        headers={"User-Agent": "labcheck"},
    )


def api_client(lab: Lab, *, verify: ssl.SSLContext | bool, proxy: str | None, headers: dict[str, str]) -> httpx.Client:
    """A client for another API than the platform's (Kubernetes): the same timeouts and pool, its own TLS
    and credentials; proxies from the environment unless ``proxy`` is given; no redirects, no retries."""
    return httpx.Client(timeout=_timeout(lab), verify=verify, proxy=proxy, follow_redirects=False, limits=LIMITS,
                        headers=headers)


def classify(exc: Exception, url: str, lab: Lab) -> ProbeError:
    s = lab.settings
    text = str(exc)
    if isinstance(exc, httpx.ConnectTimeout):
        return errors.ProbeTimeout(f"timed out after {s.connect_s:g} s connecting", target=url)
    if isinstance(exc, httpx.TimeoutException):
        return errors.ProbeTimeout(f"timed out after {s.read_s:g} s waiting for a response", target=url)
    if isinstance(exc, httpx.ConnectError):
        cause = exc.__context__ or exc.__cause__
        lowered = text.lower()
        if isinstance(cause, ssl.SSLError) or "certificate" in lowered or "ssl" in lowered:
            return errors.ProbeTLSError(f"TLS certificate not trusted ({text[:120]})", target=url)
        if "refused" in lowered:
            return errors.ProbeRefused("connection refused", target=url)
        if "name or service not known" in lowered or "name resolution" in lowered or "nodename" in lowered:
            return errors.ProbeUnreachable("DNS name does not resolve", target=url)
        return errors.ProbeUnreachable(f"cannot connect ({text[:120]})", target=url)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return errors.ProbeBadResponse(f"connection closed mid-response ({text[:120] or type(exc).__name__})", target=url)
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return errors.ProbeUnreachable(f"invalid URL ({text[:120]})", target=url)
    return errors.ProbeBadResponse(f"{type(exc).__name__}: {text[:160]}", target=url)
