"""The one home of time parsing and formatting."""

from __future__ import annotations

import pytest

from labcheck import timefmt


@pytest.mark.parametrize(("text", "seconds"), [
    ("15s", 15.0), ("5m", 300.0), ("1m30s", 90.0), ("500ms", 0.5), ("2d", 172800.0), ("1.5h", 5400.0),
])
def test_durations_are_read(text: str, seconds: float) -> None:
    assert timefmt.duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5x", "0s", "-1m", "15 minutes", "m5"])
def test_bad_durations_name_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        timefmt.duration_s(text)


def test_bare_seconds_only_where_asked() -> None:
    assert timefmt.duration_s("90", bare_seconds=True) == 90.0
    with pytest.raises(ValueError):
        timefmt.duration_s("0", bare_seconds=True)


def test_both_iso_forms_and_timestamps_round_trip() -> None:
    ts = 1768473000.0
    assert timefmt.iso_utc(ts) == "2026-01-15T10:30:00+00:00"
    assert timefmt.iso_z(ts) == "2026-01-15T10:30:00Z"
    for text in ("2026-01-15T10:30:00Z", "2026-01-15T10:30:00", "2026-01-15T12:30:00+02:00", "1768473000"):
        assert timefmt.parse_timestamp(text) == ts
    assert timefmt.parse_time("not a time") is None and timefmt.parse_time(None) is None
    with pytest.raises(ValueError, match="not an ISO-8601 time"):
        timefmt.parse_timestamp("yesterday")


def test_ages_and_clocks() -> None:
    assert timefmt.human_age(95) == "95 s" and timefmt.human_age(720) == "12 min"
    assert timefmt.ago(7200) == "2.0 h ago" and timefmt.ago(None) == "recently"
    assert timefmt.hms(65) == "1:05" and timefmt.hms(3725) == "1:02:05"
    assert timefmt.minutes_text(60) == "1 minute" and timefmt.minutes_text(150) == "2.5 minutes"
    assert timefmt.clock(1768473000.0) == "10:30:00"
    assert timefmt.hhmm("2026-01-15T10:30:00+00:00") == "10:30 UTC"
