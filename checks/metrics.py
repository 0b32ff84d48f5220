"""Metrics collection: is Prometheus ready, scraping every target, fresh, and holding what the checks read?"""

from __future__ import annotations

import pytest

from labcheck.errors import NoData

# Which checks read each role of the signal map: while it is missing they report UNKNOWN (no data).
DEPENDENTS = {
    "requests": "API 5xx ratio checks (api_gateway), 401/403 ratio (auth)",
    "duration": "API p95 latency (api_gateway)",
    "pool": "connection pool saturation through Prometheus (database; it falls back to the API's /metrics)",
}

# Losing metrics collection blinds monitoring, users are not affected: SEV-3 (impact matrix).


@pytest.mark.sev3
@pytest.mark.metrics
def check_prometheus_ready(prom, expect):
    # Prometheus not answering *is* the condition here (like the API's /health), so it fails;
    # the checks that read Prometheus report UNKNOWN instead.
    attempt = prom.ready()  # an HTTP 200 that is not Prometheus's answer comes back with no result
    ok = attempt.result is not None and attempt.result.status == 200
    # Something else answering at the URL (an HTML page, a proxy) is not Prometheus down: the
    # operator fixes where prometheus_url points, not the server. Both facts are told, so the
    # steps of the other case are ruled out rather than left "unknown".
    misidentified = not ok and getattr(attempt, "seen", None) is not None
    if not ok:
        expect.fact("prometheus_down", not misidentified)
        expect.fact("prometheus_misidentified", misidentified)
    expect(ok, target=f"GET {attempt.url}", observed=attempt.describe(),
           threshold="HTTP 200 with Prometheus's ready answer ('Prometheus Server is Ready.')",
           detail="while Prometheus cannot be read, every check that reads it is a blind spot",
           condition="prometheus_misidentified" if misidentified else "prometheus_down",
           evidence=attempt.result.exchange() if attempt.result else None)


@pytest.mark.sev3
@pytest.mark.metrics
def check_scrape_targets_up(prom, expect):
    targets = prom.targets()
    down = [t for t in targets if t.health != "up"]
    expect(not down, target=f"Prometheus scrape targets ({len(targets)} active)",
           observed=f"{len(down)} not up: " + ", ".join(t.name for t in down) if down else "all up",
           threshold="every target up",
           detail="; ".join(f"{t.name} ({t.scrape_url}) {t.health}: {t.last_error or 'no error reported'}"
                            for t in down),
           evidence=[vars(t) for t in down])


@pytest.mark.sev3
@pytest.mark.metrics
def check_scrapes_fresh(prom, settings, expect):
    rows = prom.freshness()
    stale = [f for f in rows if not f.fresh]
    expect(not stale, target=f"age of the last `up` sample of {len(rows)} scrape targets",
           observed=", ".join(f"{f.target.name} " + (f"{f.age_s:.1f} s" if f.age_s is not None else "no sample")
                              for f in stale) or "all fresh",
           threshold=f"<= {settings.scrape_stale_factor:g} x each target's scrape interval",
           detail="; ".join(f"{f.target.name}: limit {f.limit_s:g} s, last scrape {f.target.last_scrape}"
                            for f in stale),
           evidence=[{"target": f.target.name, "age_s": f.age_s, "limit_s": f.limit_s} for f in rows])


@pytest.mark.sev3
@pytest.mark.metrics
def check_app_exposes_series(prom, signal_role, expect):
    # Missing instrumentation is a blind spot, not an incident: the getter reports it UNKNOWN, naming
    # what it looked for. A pass needs the series *and* the labels the other checks read.
    try:
        found = prom.signal_series(signal_role)
    except NoData as exc:
        raise NoData(f"{exc.reason}; {DEPENDENTS[signal_role]} report UNKNOWN until it is exposed",
                     target=exc.target) from None
    expect(bool(found), target=f"the {signal_role} signals in Prometheus", observed=found,
           threshold="series with the labels the signal map names")
