"""The API gateway: health, readiness and its Prometheus signals; the ``api`` fixture and ``api_endpoint``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from labcheck import signals
from labcheck.components import _signals, parameter
from labcheck.components._bodies import Readiness, read_readiness
from labcheck.config import Settings
from labcheck.errors import NoData, NotConfigured, ProbeBadResponse
from labcheck.lab import Lab
from labcheck.prefetch import Use, component, fact
from labcheck.probes import http, prometheus


@dataclass(frozen=True)
class Rates:
    """Per-endpoint request and 5xx rates over the window."""

    window: str
    errors: dict[str, float]
    totals: dict[str, float]
    signals: signals.SignalMap = field(default_factory=signals.SignalMap)

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


@dataclass(frozen=True)
class Quantile:
    """A quantile read from histogram buckets, with the bucket it falls in: the evidence for a verdict.

    ``value`` is Prometheus's estimate (linear within the bucket); ``lower``/``upper`` bound the true
    quantile. In the +Inf bucket the quantile is only known to exceed the largest finite bucket.
    """

    value: float
    lower: float
    upper: float
    largest: float

    @property
    def beyond_buckets(self) -> bool:
        return math.isinf(self.upper)

    def judge(self, limit: float) -> bool | None:
        """True (at or under ``limit``), False (over), None (the buckets cannot tell)."""
        if self.beyond_buckets:
            return False if self.largest >= limit else None
        if self.upper <= limit:
            return True
        if self.lower >= limit:
            return False
        return self.value <= limit  # the bucket straddles the limit: Prometheus's own estimate

    def describe(self) -> str:
        if self.beyond_buckets:
            return f"> {self.largest:g} s (above the largest bucket)"
        return f"{self.value:.2f} s"


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> Quantile | None:
    """``histogram_quantile`` over (le, cumulative rate) pairs; None without requests or a +Inf bucket."""
    rows = sorted(buckets)
    if not rows or not math.isinf(rows[-1][0]) or len(rows) < 2:
        return None
    cumulative, top = [], 0.0
    for le, count in rows:
        top = max(top, count)  # rates of cumulative buckets can dip by rounding: keep them monotonic
        cumulative.append((le, top))
    total = cumulative[-1][1]
    if total <= 0:
        return None
    largest = cumulative[-2][0]
    rank = q * total
    lower_le, lower_count = 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if math.isinf(le):
                return Quantile(largest, largest, le, largest)
            if le <= 0:
                return Quantile(le, le, le, largest)
            width = count - lower_count
            value = lower_le + (le - lower_le) * ((rank - lower_count) / width if width > 0 else 1.0)
            return Quantile(value, lower_le, le, largest)
        lower_le, lower_count = le, count
    return None


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

    @fact(lambda api, uses: api._start_paths(uses))  # the paths the checks name: api.attempt("/datasets")
    def attempt(self, path: str, *, token: str | None = None) -> http.Attempt:
        """GET a path once per run; a failure to answer is returned, not raised."""
        url = self.url(path)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return http.attempt(self.lab, url, headers=headers, key=f"GET {url}" + (" (with token)" if token else ""))

    @fact(lambda api, uses: api._start_paths(uses))
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

    def _start_paths(self, uses: Sequence[Use]) -> None:
        """Start, without a token, each path a selected check passes as a literal to ``attempt``/``get``;
        a path the check builds at run time is fetched when asked."""
        for path in dict.fromkeys(p for use in uses for p in use.literal_args("attempt", "get")):
            if path.startswith("/"):
                self._start_path(path)

    def _rate_queries(self, m: signals.SignalMap) -> tuple[str, str]:
        w, ep = self.lab.settings.window, m.endpoint_label
        labelled = m.labelled()
        return (f"sum by ({ep}) (rate({m.series(m.requests, *labelled, m.status_is('5'))}[{w}]))",
                f"sum by ({ep}) (rate({m.series(m.requests, *labelled)}[{w}]))")

    def _bucket_query(self, m: signals.SignalMap) -> str:
        ep = m.endpoint_label
        series = m.series(m.duration + "_bucket", m.labelled()[0])
        return f"sum by ({ep}, le) (rate({series}[{self.lab.settings.window}]))"

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

    @fact(lambda api, uses: _signals.start_queries(api.lab, "API rates", api._rate_queries))
    def rates(self) -> Rates:
        """5xx and total request rates by endpoint, from Prometheus, through the signal map.

        Only series that carry the endpoint and status labels count: a ratio needs both, and an empty
        numerator means 0% only when the denominator is there (else UNKNOWN naming what was seen).
        """
        m = _signals.resolved(self.lab)
        err_q, all_q = self._rate_queries(m)
        prometheus.start(self.lab, err_q, all_q)
        totals = _signals.require_requests(self.lab, m, prometheus.query(self.lab, all_q), "API request rates")
        errors = prometheus.query(self.lab, err_q)
        ep = m.endpoint_label
        return Rates(window=self.lab.settings.window, errors=prometheus.by_label(errors, ep),
                     totals=prometheus.by_label(totals, ep), signals=m)

    @fact(lambda api, uses: _signals.start_queries(api.lab, "API p95", lambda m: [api._bucket_query(m)]))
    def p95_by_path(self) -> dict[str, Quantile]:
        """p95 latency by endpoint over the window, read from the duration histogram's buckets."""
        m = _signals.resolved(self.lab)
        q = self._bucket_query(m)
        samples = prometheus.require(prometheus.query(self.lab, q), q,
                                     what=f"{m.duration}_bucket with label {m.endpoint_label} (signal map {m.name})")
        buckets: dict[str, list[tuple[float, float]]] = {}
        for s in samples:
            try:
                le = float(s.labels.get("le", ""))
            except ValueError:
                continue
            buckets.setdefault(s.labels.get(m.endpoint_label, ""), []).append((le, s.value))
        out = {path: got for path, rows in buckets.items() if (got := quantile(0.95, rows)) is not None}
        if not out:
            raise NoData(f"no requests in {m.duration}_bucket over the last {self.lab.settings.window} "
                         "(or no +Inf bucket)", target="Prometheus")
        return out


@pytest.fixture(scope="session")
def api(lab: Lab) -> Api:
    """The platform API: health, readiness, and its Prometheus signals."""
    return Api(lab)


@parameter("api_endpoint")
def _api_endpoints(metafunc: pytest.Metafunc, settings: Settings) -> Sequence[str]:
    return list(settings.api_endpoints)
