"""The API gateway: health, readiness and its Prometheus signals; the ``api`` fixture and ``api_endpoint``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

from labcheck.components import _signals, parameter
from labcheck.components._bodies import Readiness, read_readiness
from labcheck.config import Settings
from labcheck.errors import NoData, NotConfigured, ProbeBadResponse
from labcheck.lab import Lab
from labcheck.prefetch import component, fact
from labcheck.probes import http, prometheus


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


@dataclass(frozen=True)
class Unrecognised(http.Attempt):
    """The target answered, but not with the answer this kind of target gives: a bare 200 is not health.

    ``result`` stays None, so a check that asks for an answer fails; ``seen`` keeps what came back.
    """

    seen: http.HttpResult | None = None

    def describe(self) -> str:
        if self.seen is None or self.error is None:
            return super().describe()
        snippet = " ".join(self.seen.text[:80].split())
        return f"{self.error.reason} (in {self.seen.elapsed_s:.3f} s): {snippet!r}"


def identify(attempt: http.Attempt, expected: str, mismatch: Callable[[http.HttpResult], str | None]) -> http.Attempt:
    """The attempt when its HTTP 200 is the target's own answer (``mismatch`` returns None), else ``Unrecognised``.

    ``mismatch`` says why not ("" when the kind of answer says it all); ``expected`` names the answer.
    """
    seen = attempt.result
    if seen is None or seen.status != 200:
        return attempt  # no answer, or a status the check already judges
    why = mismatch(seen)
    if why is None:
        return attempt
    kind = seen.headers.get("content-type", "no content type").split(";")[0].strip()
    reason = f"HTTP {seen.status} {kind}, not {expected}" + (f" ({why})" if why else "")
    return Unrecognised(attempt.url, None, ProbeBadResponse(reason, target=attempt.url), seen=seen)


def health_mismatch(seen: http.HttpResult) -> str | None:
    """Why an HTTP 200 from /health is not the platform API's health body; None when it is."""
    try:
        doc = seen.json()
    except ProbeBadResponse:
        return "the body is not JSON"
    status = doc.get("status") if isinstance(doc, dict) else None
    if status == "ok":
        return None
    return f"the body says status {status!r}" if isinstance(doc, dict) else "the body is not a JSON object"


def p95_query(window: str) -> str:
    """PromQL for the p95 latency by endpoint over ``window``, from the duration histogram."""
    return f"histogram_quantile(0.95, sum by (path, le) (rate(http_request_duration_seconds_bucket[{window}])))"


@component("api")
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

    @fact(None)
    def url(self, path: str) -> str:
        return self.base + path

    @fact(None)  # a path of the check's own: fetched when asked
    def attempt(self, path: str, *, token: str | None = None) -> http.Attempt:
        """GET a path once per run; a failure to answer is returned, not raised."""
        url = self.url(path)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return http.attempt(self.lab, url, headers=headers, key=f"GET {url}" + (" (with token)" if token else ""))

    @fact(None)
    def get(self, path: str, *, token: str | None = None) -> http.HttpResult:
        """GET a path once per run; no answer is UNKNOWN for whoever asked."""
        attempt = self.attempt(path, token=token)
        if attempt.error is not None:
            raise attempt.error
        assert attempt.result is not None
        return attempt.result

    def _start_path(self, path: str) -> None:
        if self.lab.settings.api_url:
            http.start(self.lab, self.url(path))

    def _start_queries(self, *queries: str) -> None:
        if self.lab.settings.prometheus_url:
            prometheus.start(self.lab, *queries)

    def _rate_queries(self) -> tuple[str, str]:
        w = self.lab.settings.window
        return (f'sum by (path) (rate(http_requests_total{{status=~"5.."}}[{w}]))',
                f"sum by (path) (rate(http_requests_total[{w}]))")

    def _p95_query(self) -> str:
        return p95_query(str(self.lab.settings.window))

    @fact(lambda api, uses: api._start_path("/health"))
    def health(self) -> http.Attempt:
        """GET /health: an answer counts only when it is the API's JSON health body."""
        return identify(self.attempt("/health"), 'the API\'s health answer {"status": "ok"}', health_mismatch)

    def _readiness_path(self) -> str:
        return _signals.static(self.lab).readiness_path

    @fact(lambda api, uses: api._start_path(api._readiness_path()))
    def readiness(self) -> Readiness:
        """The readiness endpoint's answer read through the signal map (``readiness_*``); never raises
        for the endpoint's own failure: ``Readiness.judge`` says FAILED or UNKNOWN per component."""
        return read_readiness(self.attempt(self._readiness_path()), _signals.static(self.lab))

    @fact(lambda api, uses: api._start_queries(*api._rate_queries()))
    def rates(self) -> Rates:
        """5xx and total request rates by endpoint, from Prometheus."""
        w = self.lab.settings.window
        err_q, all_q = self._rate_queries()
        prometheus.start(self.lab, err_q, all_q)
        totals = prometheus.require(prometheus.query(self.lab, all_q), all_q, what="http_requests_total")
        errors = prometheus.query(self.lab, err_q)
        return Rates(window=w, errors=prometheus.by_label(errors, "path"),
                     totals=prometheus.by_label(totals, "path"))

    @fact(lambda api, uses: api._start_queries(api._p95_query()))
    def p95_by_path(self) -> dict[str, float]:
        """p95 latency by endpoint over the window, from the duration histogram."""
        q = self._p95_query()
        samples = prometheus.require(prometheus.query(self.lab, q), q, what="http_request_duration_seconds")
        return prometheus.by_label(samples, "path")


@pytest.fixture(scope="session")
def api(lab: Lab) -> Api:
    """The platform API: health, readiness, and its Prometheus signals."""
    return Api(lab)


@parameter("api_endpoint")
def _api_endpoints(metafunc: pytest.Metafunc, settings: Settings) -> Sequence[str]:
    return list(settings.api_endpoints)
