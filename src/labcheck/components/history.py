"""API history: did the 5xx ratio and p95 latency stay under their thresholds in every minute?

The gate's question after a mitigation is "has the service been stable since?", and Prometheus
already holds the answer: one range query per signal, one point per minute, each point the worst
value of the signal (computed over the configured rate ``window``) within that minute. Nobody has
to sit out the playbook's 15 minutes when they have already passed.

These checks are opt-in: they run when ``history_window`` is set (``labcheck gate`` sets it) or when
``-m`` names ``history``; otherwise they are deselected, because during an incident the current
value is what triage needs, not the last quarter of an hour. The ``history`` fixture is built here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from labcheck import signals
from labcheck.components import _signals
from labcheck.errors import NoData, NotConfigured
from labcheck.lab import Lab
from labcheck.markers import DEFAULT_WINDOW, history_window
from labcheck.prefetch import component, fact
from labcheck.probes import prometheus
from labcheck.timefmt import MINUTE, clock, duration_s, minutes_text

# The checks this module serves, by function name (the gate reads their outcome from triage.json).
CHECK_NAMES = ("check_error_ratio_history_below_sev2", "check_p95_latency_history_below_threshold")
NOT_YET = "not yet {minutes} of evidence"


@dataclass(frozen=True)
class Minute:
    """One minute of history: its end, the signal's worst value in it, and where (e.g. the path)."""

    end: float
    value: float
    where: str = ""

    @property
    def label(self) -> str:
        start = clock(self.end - MINUTE, date=True).removesuffix(" UTC")
        return f"{start}-{clock(self.end)} UTC"


@dataclass(frozen=True)
class History:
    """A signal, minute by minute, over the evidence window."""

    what: str
    expr: str
    wanted_s: float
    evidence_start: float
    now: float
    since: float | None
    rate_window: str
    ends: tuple[float, ...]
    minutes: tuple[Minute, ...] = field(default=())
    # Set when the histogram's largest finite bucket is at or under the threshold: a quantile can
    # never read above that bucket, so a minute that reaches it (p95 in +Inf) is over, and a window
    # that never does cannot be judged (UNKNOWN, ``unjudgeable`` says why), never a pass.
    ceiling: float | None = None
    unjudgeable: str = ""

    @property
    def missing(self) -> list[float]:
        have = {round(m.end, 3) for m in self.minutes}
        return [end for end in self.ends if round(end, 3) not in have]

    def over(self, limit: float) -> list[Minute]:
        return [m for m in self.minutes
                if m.value > limit or (self.ceiling is not None and m.value >= self.ceiling)]

    def worst(self) -> Minute | None:
        return max(self.minutes, key=lambda m: m.value, default=None)

    def span(self) -> str:
        """Where the evidence comes from, for the check's target text."""
        base = f"{self.what} per minute (rate window {self.rate_window})"
        if self.since is not None:
            return f"{base} since the mitigation at {clock(self.since, date=True)}"
        return f"{base} over the last {minutes_text(self.wanted_s)}"

    def require_complete(self) -> None:
        """Raise NoData unless every minute of the wanted window has a value (not yet, or gaps), and the
        signal can show a value over the threshold at all."""
        if self.ceiling is not None:
            raise NoData(self.unjudgeable, target="Prometheus")
        missing = set(self.missing)
        leading = 0
        for end in self.ends:
            if end not in missing:
                break
            leading += 1
        have = (len(self.ends) - leading) * MINUTE  # the unbroken evidence that ends now
        if have < self.wanted_s:
            not_yet = NOT_YET.format(minutes=minutes_text(self.wanted_s))
            ready = self.now + (self.wanted_s - have)
            if self.since is not None and len(self.ends) * MINUTE < self.wanted_s:
                why = (f"only {minutes_text(have)} since the mitigation at {clock(self.since, date=True)} "
                       f"(evidence starts one rate window, {self.rate_window}, after it)")
            else:
                why = f"Prometheus has {self.what} data for the last {minutes_text(have)} only"
            raise NoData(f"{not_yet}: {why}; complete at {clock(ready, date=True)}", target="Prometheus")
        if missing:
            gaps = [end for end in self.ends if end in missing]
            shown = ", ".join(clock(g) for g in gaps[:5])
            raise NoData(f"no {self.what} data for {len(gaps)} of {len(self.ends)} minutes "
                         f"(minutes ending {shown} UTC): cannot say every minute was under the threshold",
                         target="Prometheus")

    def evidence(self, limit: float) -> dict[str, Any]:
        return {
            "query": self.expr,
            "step_s": MINUTE,
            "since": clock(self.since, date=True) if self.since is not None else None,
            "evidence_start": clock(self.evidence_start, date=True),
            "end": clock(self.now, date=True),
            "threshold": limit,
            "minutes": [{"minute": m.label, "value": m.value, "where": m.where} for m in self.minutes],
            "missing": [clock(end, date=True) for end in self.missing],
        }


# Nothing is started ahead: each range query ends at the fixture's own "now", known only when it is built.
@component("history", make=lambda lab: HistorySignals(
    lab, window=str(lab.settings.history_window or DEFAULT_WINDOW), since=lab.settings.history_since))
class HistorySignals:
    """The API's 5xx ratio and p95 latency, minute by minute, from Prometheus range queries."""

    def __init__(self, lab: Lab, *, window: str, since: float | None, now: float | None = None) -> None:
        self.lab = lab
        self.window = window
        self.wanted_s = duration_s(window)
        self.since = since
        self.now = round(now if now is not None else time.time(), 3)

    @property
    def rate_window(self) -> str:
        return str(self.lab.settings.window)

    def _resolution(self) -> str:
        return f"{int(min(max(self.lab.settings.window_s, 1.0), MINUTE))}s"

    @fact(None)
    def ends(self) -> tuple[float, ...]:
        """The minute ends evaluated: whole minutes back from now, none reaching before the evidence start."""
        if self.since is None:
            count = int(math.ceil(self.wanted_s / MINUTE - 1e-9))
        else:
            count = int(math.floor((self.now - self.evidence_start()) / MINUTE + 1e-9))
        return tuple(self.now - MINUTE * k for k in range(count - 1, -1, -1))

    @fact(None)
    def evidence_start(self) -> float:
        if self.since is None:
            return self.now - self.wanted_s
        # A minute right after the mitigation still has pre-mitigation requests in its rate window.
        return self.since + self.lab.settings.window_s

    def _series(self, what: str, expr: str, endpoint_label: str) -> History:
        ends = self.ends()
        minutes: dict[float, Minute] = {}
        if ends:
            matrix = prometheus.query_range(self.lab, expr, start=ends[0], end=ends[-1], step=MINUTE)
            for series in matrix:
                where = series["labels"].get(endpoint_label, "")
                for ts, value in series["values"]:
                    key = round(ts, 3)
                    if key not in minutes or value > minutes[key].value:
                        minutes[key] = Minute(end=ts, value=value, where=where)
        return History(what=what, expr=expr, wanted_s=self.wanted_s, evidence_start=self.evidence_start(),
                       now=self.now, since=self.since, rate_window=self.rate_window, ends=ends,
                       minutes=tuple(sorted(minutes.values(), key=lambda m: m.end)))

    @fact(None)
    def error_ratio(self) -> History:
        """The overall 5xx ratio; each minute's value is its worst ``window`` ratio."""
        m = _signals.resolved(self.lab)
        expr = f"max_over_time(({error_ratio_query(m, self.rate_window)})[1m:{self._resolution()}])"
        return self._series("API 5xx ratio", expr, m.endpoint_label)

    @fact(None)
    def p95_latency(self) -> History:
        """p95 latency by endpoint; each minute's value is the worst endpoint's worst p95.

        One more instant query reads the histogram's buckets: when the largest finite one is at or
        under p95_latency_s, no minute can read over it (see ``History.ceiling``).
        """
        m = _signals.resolved(self.lab)
        expr = f"max_over_time(({p95_query(m, self.rate_window)})[1m:{self._resolution()}])"
        found = self._series("API p95 latency", expr, m.endpoint_label)
        limit = float(self.lab.settings.p95_latency_s)
        top = largest_finite_bucket(prometheus.query(self.lab, bucket_query(m)))
        if top is None or top > limit:
            return found
        beyond = f"p95 in the +Inf bucket, above the largest bucket {top:g} s"
        minutes = tuple(replace(x, where=f"{x.where or 'all endpoints'} ({beyond})") if x.value >= top else x
                        for x in found.minutes)
        why = (f"{m.duration} buckets end at {top:g} s; p95 against {limit:g} s cannot be judged "
               f"(no minute reached the +Inf bucket; query {bucket_query(m)})")
        return replace(found, minutes=minutes, ceiling=top, unjudgeable=why)


def bucket_query(m: signals.SignalMap) -> str:
    """The duration histogram's bucket bounds (one series per ``le``)."""
    return f"count by (le) ({m.series(m.duration + '_bucket')})"


def largest_finite_bucket(samples: list[prometheus.Sample]) -> float | None:
    bounds = []
    for s in samples:
        try:
            bound = float(s.labels.get("le", ""))
        except ValueError:
            continue
        if math.isfinite(bound):
            bounds.append(bound)
    return max(bounds, default=None)


def error_ratio_query(m: signals.SignalMap, window: str) -> str:
    """The overall 5xx ratio over ``window``, counting only request series that carry the endpoint and
    status labels: with none, the denominator is empty and so is the ratio (no data, never 0%)."""
    labelled = m.labelled()
    errors = m.series(m.requests, m.status_is("5"), *labelled)
    total = m.series(m.requests, *labelled)
    return f"(sum(rate({errors}[{window}])) or vector(0)) / sum(rate({total}[{window}]))"


def p95_query(m: signals.SignalMap, window: str) -> str:
    """The p95 latency by endpoint over ``window``, from the map's duration histogram."""
    buckets = m.series(m.duration + "_bucket")
    return f"histogram_quantile(0.95, sum by ({m.endpoint_label}, le) (rate({buckets}[{window}])))"


@pytest.fixture(scope="session")
def history(pytestconfig: pytest.Config, lab: Lab) -> HistorySignals:
    """The API's signals minute by minute over ``history_window`` (or since ``history_since``)."""
    window = history_window(pytestconfig, lab.settings)
    if window is None:
        raise NotConfigured("history_window is not set: history checks run under labcheck gate",
                            target="Prometheus")
    return HistorySignals(lab, window=window, since=lab.settings.history_since)
