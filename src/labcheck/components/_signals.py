"""The run's signal map: the preset the configuration names, or the one ``auto`` detects.

Detection is one bounded Prometheus query (``signals.detection_query``), sent once per run and only
when a check reads a request metric. The fields no exporter sets (readiness, experiments, pool)
need no query: ``static``.
"""

from __future__ import annotations

from labcheck import signals
from labcheck.errors import NoData
from labcheck.lab import Lab
from labcheck.probes import prometheus

KEY = "signal map"


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
    """Start detecting the map in the background (a named preset needs no query)."""
    if lab.settings.prometheus_url and _auto(lab):
        prometheus.start(lab, _query(lab))
        lab.start(KEY, lambda: _resolve(lab), origin=None)


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


def require_requests(lab: Lab, m: signals.SignalMap, samples: list[prometheus.Sample], what: str,
                     when: str = "") -> list[prometheus.Sample]:
    """The request-rate samples when there are any; else UNKNOWN naming what the live series lack."""
    if samples:
        return samples
    seen = shape(lab)
    missing = seen.missing(m)
    if missing:
        raise NoData(f"{what}: {seen.seen(m.requests)}; {', '.join(missing)} (signal map {m.name})",
                     target="Prometheus")
    raise NoData(f"{what}: no requests counted by {m.requests} in the last {lab.settings.window}{when}",
                 target="Prometheus")


def note(lab: Lab | None, settings_preset: str) -> str:
    """Which map this run used and why, for the report (what ``auto`` found, if it was asked)."""
    detected = lab.peek(KEY) if lab is not None else None
    if isinstance(detected, signals.Detected):
        return detected.map.describe() if detected.map is not None else detected.reason
    if settings_preset == signals.AUTO:
        return "auto: not detected (no check read a request metric)"
    return f"{settings_preset}: set in the configuration"
