"""HTTP probe: bounded GET/HEAD requests whose failures name their target."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from labcheck.errors import ProbeBadResponse, ProbeError, ProbeTimeout

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
    # httpx is imported on the first request, never at collection: --collect-only loads no client library.
    from labcheck.probes import _httpx

    client = lab.client("http", lambda: _httpx.client(lab))
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
    except _httpx.HTTPError as exc:
        raise _httpx.classify(exc, url, lab) from None


def _job(lab: Lab, url: str, headers: dict[str, str] | None, key: str | None) -> tuple[str, Any]:
    return key or f"GET {url}", lambda: request(lab, url, headers=headers)


def start(lab: Lab, url: str, *, headers: dict[str, str] | None = None, key: str | None = None) -> None:
    """Start a GET in the background so that later ``get`` calls find it under way.

    httpx is imported here, by the caller (the prefetch, when collection ends), before the first
    request's thread starts: else that import shares the interpreter with the client imports of
    every other probe's thread and each request leaves only once all of them are done (0.4 s on
    two cores, which a slow API then adds to its own latency: issue 16).
    """
    from labcheck.lab import origin_of
    from labcheck.probes import _httpx  # noqa: F401 - the import is the point

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
