"""The run's signal map: the preset the configuration names, or the one ``auto`` detects.

Detection is one bounded Prometheus query (``signals.detection_query``), sent once per run and only
when a check reads a request metric. The fields no exporter sets (readiness, experiments, pool)
need no query: ``static``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

from labcheck import signals
from labcheck.errors import NoData, Unknown
from labcheck.lab import Lab
from labcheck.probes import prometheus

KEY = signals.RUN_KEY


def _fields(lab: Lab) -> dict[str, str]:
    return signals.overrides(lab.settings.values)


def _query(lab: Lab) -> str:
    return signals.detection_query(_fields(lab))


def _auto(lab: Lab) -> bool:
    return bool(lab.settings.signals == signals.AUTO)


def static(lab: Lab) -> signals.SignalMap:
    """The map's fields that do not depend on the exporter, with the configured ones on top."""
    preset = "playbook" if _auto(lab) else str(lab.settings.signals)
    return signals.chosen(preset, lab.settings.values)


def start(lab: Lab) -> None:
    """Start the detection query in the background: it detects ``auto``'s map, and is the evidence
    that the live series carry what any map needs (``verify``)."""
    if lab.settings.prometheus_url:
        prometheus.start(lab, _query(lab))
        if _auto(lab):
            lab.start(KEY, lambda: _resolve(lab), origin=None)


def start_queries(lab: Lab, what: str, queries: Callable[[signals.SignalMap], Sequence[str]]) -> None:
    """Start the queries a map gives: now for a named preset, right after detection under ``auto``."""
    if not lab.settings.prometheus_url:
        return
    start(lab)

    def send() -> None:
        with contextlib.suppress(Unknown):  # no map: the reader reports why
            prometheus.start(lab, *queries(resolved(lab)))

    if _auto(lab):
        lab.start(f"start after detection: {what}", send)
    else:
        send()


def shape(lab: Lab) -> signals.Shape:
    """The live request counters' labels and status values (the detection query, once per run)."""
    return signals.Shape.of(s.labels for s in prometheus.query(lab, _query(lab)))


def _resolve(lab: Lab) -> signals.Detected:
    if not _auto(lab):
        m = static(lab)
        return signals.Detected(m, m.why)
    return signals.detect(shape(lab), _fields(lab))


def resolved(lab: Lab) -> signals.SignalMap:
    """The request metrics' map; UNKNOWN naming what was seen when ``auto`` finds no preset that fits."""
    detected: signals.Detected = lab.fact(KEY, lambda: _resolve(lab), target="Prometheus")
    if detected.map is None:
        raise NoData(detected.reason, target="Prometheus")
    return detected.map


def verify(lab: Lab, m: signals.SignalMap, what: str) -> None:
    """UNKNOWN unless the live request counter carries the map's labels, its status written as the map
    reads it (codes or classes): else an empty numerator would read as 0%."""
    seen = shape(lab)
    missing = seen.missing(m)
    if missing:
        raise NoData(f"{what}: {seen.seen(m.requests)}; {', '.join(missing)} (signal map {m.name})",
                     target="Prometheus")
    form = seen.status_form(m.requests, m.status_label)
    if form != m.status_match:
        values = ", ".join(sorted(seen.values.get((m.requests, m.status_label), frozenset()))[:8])
        how = {"code": "exact codes", "class": "classes such as 5xx", None: "neither codes nor classes"}[form]
        raise NoData(f"{what}: {m.requests} writes {m.status_label} as {how} ({values}); the signal map "
                     f"{m.name} reads {m.status_match} (set signals.status_match)", target="Prometheus")


def require_requests(lab: Lab, m: signals.SignalMap, samples: list[prometheus.Sample], what: str,
                     when: str = "") -> list[prometheus.Sample]:
    """The request-rate samples once ``verify`` holds and there are any; else UNKNOWN saying why."""
    verify(lab, m, what)
    if samples:
        return samples
    raise NoData(f"{what}: no requests counted by {m.requests} in the last {lab.settings.window}{when}",
                 target="Prometheus")
