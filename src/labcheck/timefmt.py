"""Time at the floor: one duration parser, one timestamp parser, and the formats the outputs use.

Two ISO forms stay, because two outputs already promise them: ``iso_z`` (``...Z``) in the gate's
JSON, ``iso_utc`` (``...+00:00``) in triage.json.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

MINUTE = 60.0

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def duration_s(text: str, *, bare_seconds: bool = False) -> float:
    """Seconds in a Prometheus duration (``15s``, ``5m``, ``1m30s``, ``2d``).

    With ``bare_seconds``, a plain number is seconds too (``90``). Raises ValueError naming the
    text when it is no such duration, or not above zero.
    """
    value = str(text).strip()
    seconds: float | None = None
    if bare_seconds:
        try:
            seconds = float(value)
        except ValueError:
            seconds = None
    if seconds is None:
        parts = _PART.findall(value)
        if parts and "".join(n + u for n, u in parts) == value:
            seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    if seconds is None or math.isnan(seconds) or math.isinf(seconds) or seconds <= 0:
        raise ValueError(f"not a duration such as 30s, 5m or 1h: {value!r}")
    return seconds


def parse_time(value: Any) -> float | None:
    """Epoch seconds of an RFC 3339 / ISO-8601 time (no zone means UTC); None when absent or unreadable."""
    if isinstance(value, datetime):
        stamp = value
    elif isinstance(value, str) and value:
        try:
            stamp = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def parse_timestamp(value: Any) -> float:
    """Epoch seconds from ISO-8601 (``2026-01-15T10:30:00Z``) or epoch seconds; ValueError otherwise."""
    text = value if isinstance(value, datetime) else str(value).strip()
    if isinstance(text, str):
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if math.isnan(number) or math.isinf(number) or number <= 0:
                raise ValueError(f"not a valid epoch time: {text!r}")
            return number
    stamp = parse_time(text)
    if stamp is None:
        raise ValueError(f"not an ISO-8601 time or epoch seconds: {text!r}")
    return stamp


def iso_utc(ts: float) -> str:
    """``2026-01-15T10:30:00+00:00`` (triage.json)."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")


def iso_z(ts: float) -> str:
    """``2026-01-15T10:30:00Z`` (the gate's JSON)."""
    return iso_utc(ts).replace("+00:00", "Z")


def clock(ts: float, *, date: bool = False) -> str:
    """``10:30:00``, or ``2026-01-15 10:30:00 UTC`` with the date."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC" if date else "%H:%M:%S")


def hhmm(iso: str) -> str:
    """``10:30 UTC`` of an ISO time."""
    return datetime.fromisoformat(iso).strftime("%H:%M UTC")


def hms(seconds: float) -> str:
    """``4:05`` or ``1:04:05``."""
    whole = max(int(round(seconds)), 0)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def minutes_text(seconds: float) -> str:
    """``1 minute``, ``2.5 minutes``."""
    minutes = seconds / MINUTE
    text = f"{minutes:g}" if minutes == int(minutes) else f"{minutes:.1f}"
    return f"{text} minute" + ("" if minutes == 1 else "s")


def human_age(seconds: float | None) -> str:
    """``95 s``, ``12 min``, ``5.0 h``, ``3.2 d``."""
    if seconds is None:
        return "unknown age"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def ago(seconds: Any) -> str:
    """``95 s ago``, ``12 min ago``; ``recently`` when the age is not a number."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        return "recently"
    return f"{human_age(value)} ago"
