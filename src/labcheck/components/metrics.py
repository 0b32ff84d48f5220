"""Prometheus itself: ready, its targets up, its samples fresh; the ``prom`` fixture and ``series_name``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from labcheck import signals
from labcheck.components import _signals, parameter
from labcheck.components.api_gateway import identify
from labcheck.config import Settings
from labcheck.errors import NoData, NotConfigured, ProbeBadResponse
from labcheck.lab import Lab
from labcheck.prefetch import component, fact
from labcheck.probes import http, prometheus
from labcheck.timefmt import duration_s


def prom_duration_s(text: str) -> float | None:
    """Seconds in a Prometheus duration such as ``15s`` or ``1m30s``; None when unreadable."""
    try:
        return duration_s(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class ScrapeTarget:
    """One active scrape target, as Prometheus reports it."""

    job: str
    instance: str
    health: str
    last_error: str
    last_scrape: str
    interval_s: float | None
    scrape_url: str

    @property
    def name(self) -> str:
        return f"{self.job}/{self.instance}"


@dataclass(frozen=True)
class Freshness:
    """Age of the last ``up`` sample of one target against its scrape interval."""

    target: ScrapeTarget
    age_s: float | None
    limit_s: float

    @property
    def fresh(self) -> bool:
        return self.age_s is not None and self.age_s <= self.limit_s


UP_AGE = "time() - timestamp(up)"  # seconds since each target's last `up` sample

# What Prometheus answers on /-/ready when ready ("Prometheus Server is Ready." since 2.x, "Prometheus
# is Ready." before); a server that words it otherwise counts when its query API answers as Prometheus's does.
READY_TEXT = re.compile(r"Prometheus (?:Server )?is Ready\.?")
IDENTITY_QUERY = "vector(1)"


def _is_query_answer(attempt: http.Attempt) -> bool:
    """Whether a query answer is Prometheus's own: HTTP 200 with JSON status "success"."""
    if attempt.result is None or attempt.result.status != 200:
        return False
    try:
        doc = attempt.result.json()
    except ProbeBadResponse:
        return False
    return isinstance(doc, dict) and doc.get("status") == "success"


@component("prom")
class PrometheusStatus:
    """Prometheus as a component: ready, its targets up, its samples fresh, the series present."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    @property
    def base(self) -> str:
        url = self.lab.settings.prometheus_url
        if not url:
            raise NotConfigured("prometheus_url is not configured", target="Prometheus")
        return str(url)

    @property
    def _ready_url(self) -> str:
        return f"{self.base}/-/ready"

    @property
    def _targets_url(self) -> str:
        return f"{self.base}/api/v1/targets?state=active"

    def _start_get(self, *urls: str) -> None:
        if self.lab.settings.prometheus_url:
            for url in urls:
                http.start(self.lab, url)

    def _series_query(self, m: signals.SignalMap) -> str:
        names = [m.duration + "_bucket", *m.pool_names().values()]
        pattern = "|".join(re.escape(n) for n in names).replace("\\", "\\\\")  # PromQL string escapes
        inner = ",".join(x for x in (m.selector, f'__name__=~"{pattern}"') if x)
        return f"count by (__name__, {m.endpoint_label}) ({{{inner}}})"

    @fact(lambda prom, uses: prom._start_get(prom._ready_url))
    def ready(self) -> http.Attempt:
        """GET /-/ready; no answer is returned as the observation, and so is an answer not Prometheus's."""

        def mismatch(seen: http.HttpResult) -> str | None:
            if READY_TEXT.fullmatch(seen.text.strip()):
                return None
            # Not the ready text: Prometheus's own query answer still identifies it (a compatible server).
            query = http.attempt(self.lab, f"{self.base}/api/v1/query?query={IDENTITY_QUERY}")
            return None if _is_query_answer(query) else ""

        return identify(http.attempt(self.lab, self._ready_url), "Prometheus's ready answer", mismatch)

    @fact(lambda prom, uses: prom._start_get(prom._targets_url))
    def targets(self) -> list[ScrapeTarget]:
        """Active scrape targets from /api/v1/targets (UNKNOWN when Prometheus cannot say)."""
        url = self._targets_url
        result = http.get(self.lab, url)
        if result.status != 200:
            raise ProbeBadResponse(f"HTTP {result.status}", target=url)
        doc = result.json()
        data = doc.get("data") if isinstance(doc, dict) else None
        active = data.get("activeTargets") if isinstance(data, dict) else None
        if not isinstance(active, list):
            raise ProbeBadResponse("answer has no data.activeTargets", target=url)
        if not active:
            raise NoData("Prometheus has no active scrape targets", target=url)
        out = []
        for t in active:
            labels = t.get("labels") or {}
            discovered = t.get("discoveredLabels") or {}
            interval = t.get("scrapeInterval") or discovered.get("__scrape_interval__") or ""
            out.append(ScrapeTarget(
                job=str(labels.get("job", t.get("scrapePool", "?"))),
                instance=str(labels.get("instance", discovered.get("__address__", "?"))),
                health=str(t.get("health", "unknown")),
                last_error=str(t.get("lastError") or ""),
                last_scrape=str(t.get("lastScrape") or ""),
                interval_s=prom_duration_s(str(interval)),
                scrape_url=str(t.get("scrapeUrl") or ""),
            ))
        return out

    def _start_freshness(self) -> None:
        self._start_get(self._targets_url)
        if self.lab.settings.prometheus_url:
            prometheus.start(self.lab, UP_AGE)

    @fact(lambda prom, uses: prom._start_freshness())
    def freshness(self) -> list[Freshness]:
        """Per target: seconds since its last ``up`` sample, against factor x its scrape interval."""
        expr = UP_AGE
        prometheus.start(self.lab, expr)
        targets = self.targets()
        ages = {(s.labels.get("job", ""), s.labels.get("instance", "")): s.value
                for s in prometheus.query(self.lab, expr)}
        factor = float(self.lab.settings.scrape_stale_factor)
        out = []
        for t in targets:
            if t.interval_s is None:
                raise NoData(f"Prometheus does not report the scrape interval of {t.name}", target="Prometheus")
            out.append(Freshness(t, ages.get((t.job, t.instance)), factor * t.interval_s))
        return out

    @fact(lambda prom, uses: _signals.start_queries(prom.lab, "signal series", lambda m: [prom._series_query(m)]))
    def signal_series(self, role: str) -> str:
        """What Prometheus holds of one role of the signal map, with the labels the checks need.

        Returns a description of what was found; missing instrumentation is UNKNOWN (NoData) naming
        the metrics and labels looked for, never a failure: the application may not expose it.
        """
        m = _signals.resolved(self.lab)  # the request counter's labels are verified by detection
        if role == "requests":
            _signals.verify(self.lab, m, f"looked for {m.requests} with labels {m.endpoint_label}, {m.status_label}")
            return _signals.shape(self.lab).seen(m.requests)
        expr = self._series_query(m)
        found: dict[str, set[str]] = {}
        for sample in prometheus.query(self.lab, expr):
            found.setdefault(sample.labels.get("__name__", ""), set()).add(
                "labelled" if sample.labels.get(m.endpoint_label) else "unlabelled")
        if role == "duration":
            name = m.duration + "_bucket"
            if "labelled" not in found.get(name, set()):
                how = "has no series" if name not in found else f"has no label {m.endpoint_label}"
                raise NoData(f"looked for {name} with label {m.endpoint_label}: {name} {how}", target="Prometheus")
            return f"{name} by {m.endpoint_label}"
        pool = m.pool_names()
        needed = [pool[k] for k in ("connections", "max", "waiters")]
        absent = [n for n in needed if n not in found]
        if absent:
            raise NoData(f"looked for the pool gauges {', '.join(needed)}: {', '.join(absent)} "
                         "not in Prometheus (the pool check reads the API's /metrics instead)", target="Prometheus")
        return ", ".join(n for n in pool.values() if n in found)


@pytest.fixture(scope="session")
def prom(lab: Lab) -> PrometheusStatus:
    """Prometheus as a component: readiness, scrape targets, freshness, the series others need."""
    return PrometheusStatus(lab)


# The roles of the signal map that other checks read from Prometheus (the names come from the map).
SIGNAL_ROLES = ("requests", "duration", "pool")


@parameter("signal_role")
def _signal_roles(metafunc: pytest.Metafunc, settings: Settings) -> Sequence[str]:
    return list(SIGNAL_ROLES)
