"""Draw the metrics picture: one PNG of stacked panels, with matplotlib's Agg backend.

matplotlib is imported here only, inside ``render``: a run that draws no picture never loads it
(it is the optional extra ``labcheck[picture]``). This module reads nothing and knows no metric:
``picture`` hands it panels whose text is already redacted.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from labcheck.timefmt import clock

WIDTH_PX, HEIGHT_PX, DPI = 1200, 900, 100
GAP = "#d9d9d9"  # no data: a grey band, never a line at zero
THRESHOLD_COLOURS = ("#d62728", "#ff7f0e", "#9467bd")
LINE = "#1f77b4"
RUN = "#2ca02c"


class NotInstalled(Exception):
    """matplotlib is not installed: the run says so in one line and draws nothing."""


@dataclass(frozen=True)
class Panel:
    """One signal over the span: its points, thresholds to draw and why data is missing (if it is)."""

    title: str
    unit: str  # the y axis, and the line's legend entry
    query: str
    points: tuple[tuple[float, float], ...]
    thresholds: tuple[tuple[str, float], ...] = ()
    note: str | None = None  # why there is no data at all (the query failed, no series)
    percent: bool = False


def gaps(points: Sequence[tuple[float, float]], start: float, end: float, step: float) -> list[tuple[float, float]]:
    """The stretches of [start, end] with no point: before the first, after the last, and holes of
    more than one and a half steps between two."""
    if not points:
        return [(start, end)]
    out = []
    slack = 1.5 * step
    if points[0][0] - start > slack:
        out.append((start, points[0][0]))
    for (a, _), (b, _) in zip(points, points[1:], strict=False):
        if b - a > slack:
            out.append((a, b))
    if end - points[-1][0] > slack:
        out.append((points[-1][0], end))
    return out


def broken(points: Sequence[tuple[float, float]], step: float) -> tuple[list[float], list[float]]:
    """x and y with a NaN in each hole, so the line stops there instead of bridging it."""
    xs: list[float] = []
    ys: list[float] = []
    for i, (x, y) in enumerate(points):
        if i and x - points[i - 1][0] > 1.5 * step:
            xs.append(math.nan)
            ys.append(math.nan)
        xs.append(x)
        ys.append(y)
    return xs, ys


IMPORTED: dict[str, float | None] = {"seconds": None}
_LOCK = threading.Lock()
MISSING = "matplotlib is not installed (pip install 'labcheck[picture]')"


def installed() -> bool:
    """Whether matplotlib can be imported, without importing it."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def load() -> None:
    """Import matplotlib's Agg canvas and Figure; NotInstalled when it is missing.

    The figure is drawn on an explicit Agg canvas, never through pyplot: no display is looked for,
    and the backend of a process that uses matplotlib for its own purposes is left alone.
    """
    began = time.monotonic()
    try:
        import matplotlib.backends.backend_agg  # noqa: F401 - the import is the work
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise NotInstalled(MISSING) from None
    with _LOCK:
        if IMPORTED["seconds"] is None:  # the first, which did the work (a second one waited for it)
            IMPORTED["seconds"] = round(time.monotonic() - began, 3)


def import_seconds() -> float | None:
    """What importing matplotlib took in this process (in the background when the picture started ahead)."""
    return IMPORTED["seconds"]


def render(panels: Sequence[Panel], *, title: str, footer: str, start: float, end: float, step: float,
           run_at: float) -> bytes:
    """The picture as PNG bytes: one panel per signal, thresholds dashed, gaps grey, the run marked."""
    load()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def minutes(ts: float) -> float:
        return (ts - end) / 60.0

    fig = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    fig.text(0.01, 0.005, footer, fontsize=7, color="#555555", ha="left", va="bottom")
    for ax, panel in zip(axes, panels, strict=True):
        ax.set_title(panel.title, fontsize=10, loc="left")
        ax.text(1.0, 1.01, panel.query if len(panel.query) <= 150 else panel.query[:147] + "...",
                transform=ax.transAxes, fontsize=6, color="#777777", ha="right", va="bottom")
        scale = 100.0 if panel.percent else 1.0
        for a, b in gaps(panel.points, start, end, step):
            ax.axvspan(minutes(a), minutes(b), color=GAP, alpha=0.6, lw=0)
            if b - a >= 0.08 * (end - start):
                ax.text((minutes(a) + minutes(b)) / 2, 0.5, "no data", transform=ax.get_xaxis_transform(),
                        ha="center", va="center", fontsize=9, color="#555555")
        if panel.points:
            xs, ys = broken(panel.points, step)
            ax.plot([minutes(x) for x in xs], [y * scale for y in ys], color=LINE, lw=1.6, label=panel.unit)
        else:
            ax.text(0.5, 0.25, f"no data: {panel.note or 'no series'}"[:160], transform=ax.transAxes,
                    ha="center", va="center", fontsize=8, color="#b22222")
        for (label, value), colour in zip(panel.thresholds, THRESHOLD_COLOURS, strict=False):
            ax.axhline(value * scale, color=colour, ls="--", lw=1.2, label=label)
        ax.axvline(minutes(run_at), color=RUN, lw=1.5, label=f"this run ({clock(run_at)})")
        top = max([y * scale for _, y in panel.points] + [v * scale for _, v in panel.thresholds] + [0.0])
        ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
        ax.set_ylabel(f"{panel.unit} (%)" if panel.percent else panel.unit, fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize=7, framealpha=0.8)
    ticks = [t * 300.0 for t in range(math.ceil(start / 300), math.floor(end / 300) + 1)]  # every 5 min
    axes[-1].set_xticks([minutes(t) for t in ticks])
    axes[-1].set_xticklabels([clock(t)[:5] for t in ticks], fontsize=8)
    axes[-1].set_xlim(minutes(start), minutes(end))
    axes[-1].set_xlabel("time (UTC)", fontsize=8)
    # Fixed margins: tight_layout would draw the figure once more to measure it (0.3 s).
    fig.subplots_adjust(left=0.07, right=0.99, top=0.92, bottom=0.09, hspace=0.32)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
