"""Prometheus itself: ready, its targets up, its samples fresh; the ``prom`` fixture and ``series_name``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from labcheck.components import parameter
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

    def _start_queries(self, *exprs: str) -> None:
        if self.lab.settings.prometheus_url:
            prometheus.start(self.lab, *exprs)

    def _series_query(self) -> str:
        names = list(self.lab.settings.app_series)
        pattern = "|".join(re.escape(n) for n in names).replace("\\", "\\\\")  # PromQL string escapes
        return 'count by (__name__) ({__name__=~"' + pattern + '"})'

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
        self._start_queries(UP_AGE)

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

    @fact(lambda prom, uses: prom._start_queries(prom._series_query()))
    def series_present(self) -> dict[str, int]:
        """How many series of each name in ``app_series`` Prometheus holds now (one query per run)."""
        names = list(self.lab.settings.app_series)
        expr = self._series_query()
        counts = {s.labels.get("__name__", ""): int(s.value) for s in prometheus.query(self.lab, expr)}
        return {n: counts.get(n, 0) for n in names}


@pytest.fixture(scope="session")
def prom(lab: Lab) -> PrometheusStatus:
    """Prometheus as a component: readiness, scrape targets, freshness, the series others need."""
    return PrometheusStatus(lab)


@parameter("series_name")
def _series_names(metafunc: pytest.Metafunc, settings: Settings) -> Sequence[str]:
    return list(settings.app_series)
