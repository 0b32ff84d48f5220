"""The platform API as the checks see it: health, readiness, and its Prometheus signals."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from labcheck.errors import NoData, NotConfigured, ProbeBadResponse, ProbeError
from labcheck.lab import Lab
from labcheck.probes import http, prometheus


@dataclass(frozen=True)
class Attempt:
    """A request that may have failed: the failure itself is the observation."""

    url: str
    result: http.HttpResult | None
    error: ProbeError | None

    @property
    def answered(self) -> bool:
        return self.result is not None

    def describe(self) -> str:
        if self.result is not None:
            return f"HTTP {self.result.status} in {self.result.elapsed_s:.3f} s"
        return f"no answer ({self.error.reason if self.error else 'unknown'})"


@dataclass(frozen=True)
class Rates:
    """Per-endpoint request and 5xx rates over the window."""

    window: str
    errors: dict[str, float]
    totals: dict[str, float]

    @property
    def overall(self) -> float:
        total = sum(self.totals.values())
        if total <= 0:
            raise NoData(f"no API requests in the last {self.window}", target="Prometheus")
        return sum(self.errors.values()) / total

    def ratios(self) -> dict[str, float]:
        return {p: self.errors.get(p, 0.0) / t for p, t in self.totals.items() if t > 0}

    def worst(self, n: int = 5) -> list[tuple[str, float]]:
        return sorted(self.ratios().items(), key=lambda kv: kv[1], reverse=True)[:n]


class Api:
    """Facts about the platform API, each fetched once per run."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    @property
    def base(self) -> str:
        url = self.lab.settings.api_url
        if not url:
            raise NotConfigured("api_url is not configured", target="platform API")
        return str(url)

    def url(self, path: str) -> str:
        return self.base + path

    def attempt(self, path: str, *, token: str | None = None) -> Attempt:
        """GET a path once per run; a failure to answer is returned, not raised."""
        url = self.url(path)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        key = f"GET {url}" + (" (with token)" if token else "")
        try:
            return Attempt(url, http.get(self.lab, url, headers=headers, key=key), None)
        except ProbeError as exc:
            return Attempt(url, None, exc)

    def get(self, path: str, *, token: str | None = None) -> http.HttpResult:
        """GET a path once per run; no answer is UNKNOWN for whoever asked."""
        attempt = self.attempt(path, token=token)
        if attempt.error is not None:
            raise attempt.error
        assert attempt.result is not None
        return attempt.result

    # What ``prefetch`` can start: the facts behind health(), readiness(), rates() and p95_by_path().
    FACTS = ("health", "readiness", "rates", "p95")

    def prefetch(self, facts: Collection[str] = FACTS) -> None:
        """Start, in the background, the facts the selected checks read (``FACTS`` names them)."""
        if self.lab.settings.api_url:
            for fact, path in (("health", "/health"), ("readiness", "/health/ready")):
                if fact in facts:
                    http.start(self.lab, self.url(path))
        if self.lab.settings.prometheus_url:
            if "rates" in facts:
                prometheus.start(self.lab, *self._rate_queries())
            if "p95" in facts:
                prometheus.start(self.lab, self._p95_query())

    def _rate_queries(self) -> tuple[str, str]:
        w = self.lab.settings.window
        return (f'sum by (path) (rate(http_requests_total{{status=~"5.."}}[{w}]))',
                f"sum by (path) (rate(http_requests_total[{w}]))")

    def _p95_query(self) -> str:
        w = self.lab.settings.window
        return f"histogram_quantile(0.95, sum by (path, le) (rate(http_request_duration_seconds_bucket[{w}])))"

    def health(self) -> Attempt:
        return self.attempt("/health")

    def readiness(self) -> dict[str, Any]:
        """The components map of /health/ready."""
        result = self.get("/health/ready")
        doc = result.json()
        components = doc.get("components") if isinstance(doc, dict) else None
        if not isinstance(components, dict):
            raise ProbeBadResponse(f"HTTP {result.status} without a 'components' object", target=result.url)
        return components

    def rates(self) -> Rates:
        """5xx and total request rates by endpoint, from Prometheus."""
        w = self.lab.settings.window
        err_q, all_q = self._rate_queries()
        prometheus.start(self.lab, err_q, all_q)
        totals = prometheus.require(prometheus.query(self.lab, all_q), all_q, what="http_requests_total")
        errors = prometheus.query(self.lab, err_q)
        return Rates(window=w, errors=prometheus.by_label(errors, "path"),
                     totals=prometheus.by_label(totals, "path"))

    def p95_by_path(self) -> dict[str, float]:
        """p95 latency by endpoint over the window, from the duration histogram."""
        q = self._p95_query()
        samples = prometheus.require(prometheus.query(self.lab, q), q, what="http_request_duration_seconds")
        return prometheus.by_label(samples, "path")
