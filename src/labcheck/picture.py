"""The metrics picture of a failing run: the playbook's metrics snapshot (Phase 2 Step 5), drawn.

The last 30 minutes of the API's request rate, 5xx ratio and p95 latency, each one bounded range
query read through the signal map, drawn as one PNG (``picture_draw``) with the thresholds and the
run's time, written to ``reports/evidence/metrics.png`` with its data beside it, attached to the
Allure results and named in triage.json. The controller starts it in the background at the run's
first failing check (``Ahead``), while the other checks still wait for their answers, and writes
it once the verdict is built; the whole picture is bounded (``BUDGET_S``), and anything that stops
it is one line in the summary, never a failed run.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labcheck import allure_results, picture_draw, signals
from labcheck.components import _signals
from labcheck.evidence import mask_dsn
from labcheck.lab import Lab
from labcheck.picture_draw import NotInstalled, Panel, render
from labcheck.probes import prometheus
from labcheck.timefmt import clock, iso_utc

SPAN_S = 1800.0  # the playbook's "last 30 minutes"
POINTS = 180  # points per panel: a 10 s step over 30 minutes
BUDGET_S = 1.5  # the whole picture: queries, drawing, writing
QUERY_S = 1.0  # the range queries must have answered this long after the picture started
FILE = "metrics.png"
DATA = "metrics.json"
ATTACHMENT = "metrics picture (last 30 min)"


def rate_query(m: signals.SignalMap, window: str) -> str:
    """Requests per second, all of them."""
    return f"sum(rate({m.series(m.requests)}[{window}]))"


def ratio_query(m: signals.SignalMap, window: str) -> str:
    """The 5xx share of the requests that carry the endpoint and status labels; 0 when there are
    requests and no 5xx, nothing (a gap) when there are no requests."""
    labelled = m.labelled()
    return (f"(sum(rate({m.series(m.requests, *labelled, m.status_is('5'))}[{window}])) or vector(0))"
            f" / sum(rate({m.series(m.requests, *labelled)}[{window}]))")


def p95_query(m: signals.SignalMap, window: str) -> str:
    """The worst endpoint's p95, as the p95 check reads it (above the largest bucket it is +Inf: a gap)."""
    ep = m.endpoint_label
    buckets = m.series(m.duration + "_bucket", m.labelled()[0])
    return f"max(histogram_quantile(0.95, sum by ({ep}, le) (rate({buckets}[{window}]))))"


# name -> (title, unit, query, whether the 5xx-ratio evidence rule applies)
PANELS: dict[str, tuple[str, str, Callable[[signals.SignalMap, str], str], bool]] = {
    "rate": ("API request rate", "requests/s", rate_query, False),
    "ratio": ("API 5xx ratio", "5xx ratio", ratio_query, True),
    "p95": ("API p95 latency (worst endpoint)", "p95 (s)", p95_query, False),
}


def thresholds(name: str, settings: Any) -> tuple[tuple[str, float], ...]:
    """The lines drawn on a panel, from the settings the checks judge by."""
    if name == "ratio":
        return ((f"SEV-2: error_ratio_sev2 {settings.error_ratio_sev2:.0%}", float(settings.error_ratio_sev2)),
                (f"SEV-1 (API unavailable): error_ratio_sev1 {settings.error_ratio_sev1:.0%}",
                 float(settings.error_ratio_sev1)))
    if name == "p95":
        return ((f"p95_latency_s {settings.p95_latency_s:g} s", float(settings.p95_latency_s)),)
    return ()


def _series(lab: Lab, name: str, start: float, end: float, step: float) -> tuple[str, list[tuple[float, float]]]:
    """One panel's query and points (in a background thread: the caller bounds the wait)."""
    m = _signals.resolved(lab)
    _, _, make, needs_labels = PANELS[name]
    if needs_labels:
        _signals.verify(lab, m, "the 5xx ratio picture")  # else an absent numerator would draw as 0%
    expr = make(m, str(lab.settings.window))
    merged: dict[float, float] = {}
    for series in prometheus.query_range(lab, expr, start=start, end=end, step=step):
        for ts, value in series["values"]:
            merged[ts] = max(value, merged.get(ts, value))
    return expr, sorted(merged.items())


def _wait(future: Future[Any], until: float) -> tuple[Any, str | None]:
    try:
        return future.result(timeout=max(until - time.monotonic(), 0.0)), None
    except FutureTimeout:
        return None, f"no answer within {QUERY_S:g} s"
    except Exception as exc:  # noqa: BLE001 - any failure is this panel's gap, never the run's
        return None, str(exc) or type(exc).__name__


def draw(lab: Lab, *, severity: str, run_at: float, reports: Path, allure_dir: Path | None,
         now: float | None = None) -> dict[str, Any]:
    """Draw, write and attach the picture; return triage.json's ``picture`` (``path`` None, and
    ``note`` saying why, when it was not drawn). Raises nothing a caller must handle but bugs."""
    began = time.monotonic()
    prepared = _prepare(lab, began, time.time() if now is None else now)
    if isinstance(prepared, dict):
        return prepared
    return _finish(prepared, _png(prepared, severity, run_at), reports, allure_dir, began)


@dataclass
class _Prepared:
    """Everything the picture shows but its title's severity: the panels' data and the footer."""

    lab: Lab
    entry: dict[str, Any]
    panels: list[Panel]
    start: float
    end: float
    step: float
    footer: str
    pngs: dict[str, bytes] = field(default_factory=dict)  # title -> the picture drawn with it
    work_s: float = 0.0  # seconds spent on the picture so far (not waiting for the verdict)


def _title(prepared: _Prepared, severity: str) -> str:
    return prepared.lab.redact(f"labcheck {severity}: the API over the last 30 minutes, to "
                               f"{clock(prepared.end, date=True)}")


def _prepare(lab: Lab, began: float, end: float) -> _Prepared | dict[str, Any]:
    """The range queries (bounded by QUERY_S from ``began``) and the matplotlib import; a dict is a
    picture that will not be drawn, with its note."""
    start, step = end - SPAN_S, max(SPAN_S / POINTS, 1.0)
    entry: dict[str, Any] = {"path": None, "data": None, "allure_attachment": None, "note": None,
                             "seconds": None, "budget_s": BUDGET_S, "start": iso_utc(start), "end": iso_utc(end),
                             "step_s": step, "rate_window": str(lab.settings.window), "panels": []}
    if not lab.settings.prometheus_url:
        return _done(entry, began, "not drawn: prometheus_url is not configured")
    if lab.deadline is not None and time.monotonic() >= lab.deadline:
        return _done(entry, began, "not drawn: the triage deadline was reached")
    if not picture_draw.installed():
        return _done(entry, began, f"not drawn: {picture_draw.MISSING}")
    futures = {name: lab.start(f"picture {name} {end:.0f}", functools.partial(_series, lab, name, start, end, step))
               for name in PANELS}
    importing = time.monotonic()
    picture_draw.load()  # while the queries are out: importing matplotlib is most of the cost
    imported_s = time.monotonic() - importing  # reported apart (import_s), as when it was warmed ahead
    panels = []
    for name, future in futures.items():
        got, note = _wait(future, began + QUERY_S)
        expr, points = got if got is not None else ("", [])
        title, unit, _, _ = PANELS[name]
        if got is not None and not points:
            note = "no series in the last 30 minutes"
        panels.append(Panel(lab.redact(title), unit, lab.redact(expr), tuple(points),
                            thresholds(name, lab.settings), lab.redact(note) if note else None,
                            percent=name == "ratio"))
        entry["panels"].append({"name": name, "query": panels[-1].query or None, "points": len(points),
                                "note": panels[-1].note})
    if not any(p.points for p in panels):
        return _done(entry, began, "not drawn: no data for any panel (" + "; ".join(
            f"{p.title}: {p.note}" for p in panels) + ")")
    detected = signals.note(lab.peek(signals.RUN_KEY), str(lab.settings.signals))
    footer = (f"target {lab.settings.target}; Prometheus {mask_dsn(str(lab.settings.prometheus_url))}; "
              f"step {step:g} s, rate window {lab.settings.window}; grey: no data\nsignal map {detected}")
    footer = "\n".join(line[:230] for line in lab.redact(footer).splitlines())
    return _Prepared(lab, entry, panels, start, end, step, footer, work_s=time.monotonic() - began - imported_s)


def _png(prepared: _Prepared, severity: str, run_at: float) -> bytes | str:
    """The picture with ``severity`` in its title (drawn once per title), or why it cannot be drawn."""
    title = _title(prepared, severity)
    if title not in prepared.pngs:
        began = time.monotonic()
        try:
            prepared.pngs[title] = render(prepared.panels, title=title, footer=prepared.footer, start=prepared.start,
                                          end=prepared.end, step=prepared.step, run_at=run_at)
        except NotInstalled as exc:
            return f"not drawn: {exc}"
        finally:
            prepared.work_s += time.monotonic() - began
    return prepared.pngs[title]


def _finish(prepared: _Prepared, png: bytes | str, reports: Path, allure_dir: Path | None,
            began: float) -> dict[str, Any]:
    """Write the picture and its data, attach it; triage.json's entry."""
    entry, panels, lab = prepared.entry, prepared.panels, prepared.lab
    if isinstance(png, str):
        return _done(entry, began, png)
    if lab.evidence is not None:
        path = lab.evidence.record_picture(FILE, png)
        data = lab.evidence.record_run(DATA, {"start": entry["start"], "end": entry["end"], "step_s": prepared.step,
                                               "panels": [{"title": p.title, "query": p.query, "note": p.note,
                                                           "points": [list(x) for x in p.points]} for p in panels]})
    else:  # a lab without a recorder records nothing: the picture is no exception
        return _done(entry, began, "not drawn: this run records no evidence")
    entry["path"] = str(path.relative_to(reports)) if path.is_relative_to(reports) else str(path)
    entry["data"] = str(data.relative_to(reports)) if data.is_relative_to(reports) else str(data)
    if allure_dir is not None:
        entry["allure_attachment"] = allure_results.attach_run_picture(allure_dir, png, name=ATTACHMENT)
    return _done(entry, began, None)


class Ahead:
    """The picture of a run that has a failing check, started as soon as it has one (issue 16).

    The queries, the matplotlib import and the drawing run in a background thread while the other
    checks still wait for their answers; the title names the worst severity failed so far
    (``expect``), which is the verdict's unless a worse check fails later, when ``finish`` draws it
    once more. ``finish`` waits for the thread at most ``wait_s`` and writes what it drew.
    """

    def __init__(self, lab: Lab, *, severity: str, run_at: float) -> None:
        self.lab, self.run_at = lab, run_at
        self._severity = severity
        self._lock = threading.Lock()
        self._began = time.monotonic()
        self._end = time.time()
        self._prepared: _Prepared | dict[str, Any] | None = None
        self._error: str | None = None
        self._thread = threading.Thread(target=self._work, name="labcheck:metrics picture", daemon=True)
        self._thread.start()

    def expect(self, severity: str) -> None:
        """The worst severity failed so far: the title to draw ahead."""
        with self._lock:
            self._severity = severity

    def _work(self) -> None:
        try:
            prepared = _prepare(self.lab, self._began, self._end)
            self._prepared = prepared
            while isinstance(prepared, _Prepared):
                with self._lock:
                    severity = self._severity
                _png(prepared, severity, self.run_at)
                with self._lock:
                    if self._severity == severity:
                        return
        except Exception as exc:  # noqa: BLE001 - reported by finish() as the picture's note
            self._error = f"not drawn: {type(exc).__name__}: {exc}"

    def finish(self, *, severity: str, reports: Path, allure_dir: Path | None, wait_s: float) -> dict[str, Any]:
        """triage.json's ``picture``: the picture drawn ahead (or drawn now, for a worse severity)."""
        self.expect(severity)
        self._thread.join(timeout=wait_s)
        if self._thread.is_alive():
            return {"path": None, "note": f"not drawn: not finished {wait_s:g} s after the checks ended"}
        if self._error is not None:
            return {"path": None, "note": self._error}
        prepared = self._prepared
        assert prepared is not None
        if isinstance(prepared, dict):
            return prepared
        began = time.monotonic() - prepared.work_s  # the entry's seconds: the picture's own work
        png = _png(prepared, severity, self.run_at)
        return _finish(prepared, png, reports, allure_dir, began)


def _done(entry: dict[str, Any], began: float, note: str | None) -> dict[str, Any]:
    entry["note"] = note
    entry["seconds"] = round(time.monotonic() - began, 3)
    entry["import_s"] = picture_draw.import_seconds()
    return entry

