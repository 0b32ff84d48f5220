"""The sandbox API's own log file, served as its pods' logs: each line in one running API pod's log.

The API process writes access and error lines to a file (sandbox/api/applog.py); a Service would
have sent each request to one of the deployment's pods, so each line goes to one running API pod,
picked by a hash of the line. The file is read incrementally; its last ``KEEP_S`` seconds are served.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass
from datetime import datetime

TAIL_BYTES = 16 * 1024 * 1024  # read at most this much of the file at once (its tail)
# The API's own lines are served for the last minute only: the sandbox compresses time (its log
# windows are 20 s), and a busy API's 30 minutes would make every failing check's log evidence
# megabytes. The stand-in's own lines (startup, planted secrets) still reach back 30 minutes.
KEEP_S = 60.0


@dataclass
class _Parsed:
    inode: int
    offset: int  # bytes of the file consumed (whole lines only)
    lines: list[tuple[float, str]]


_cache: dict[str, _Parsed] = {}


def _when(line: str, last: float) -> float:
    """The time at the start of an application line; a line without one (a traceback) keeps the last."""
    head = line.split(" ", 1)[0]
    if not head[:4].isdigit():
        return last
    try:
        return datetime.fromisoformat(head.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return last


def read(path: str) -> list[tuple[float, str]]:
    """The (time, text) lines of the last ``KEEP_S``; none when the file does not exist (yet).

    Parsed incrementally: each call reads only what was appended since the last one.
    """
    try:
        st = os.stat(path)
    except OSError:
        return []
    known = _cache.get(path)
    if known is None or known.inode != st.st_ino or st.st_size < known.offset:
        known = _Parsed(st.st_ino, max(0, st.st_size - TAIL_BYTES), [])
        _cache[path] = known
        skip_first = known.offset > 0  # the seek cut the first line
    else:
        skip_first = False
    if st.st_size > known.offset:
        with open(path, "rb") as fh:
            fh.seek(known.offset)
            data = fh.read(min(st.st_size - known.offset, TAIL_BYTES))
        whole = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next call
        known.offset += len(whole)
        raw = whole.decode("utf-8", errors="replace").splitlines()
        if skip_first and raw:
            raw = raw[1:]
        last = known.lines[-1][0] if known.lines else 0.0
        for line in raw:
            last = _when(line, last)
            if last:
                known.lines.append((last, line))
    cutoff = time.time() - KEEP_S - 5.0
    if known.lines and known.lines[0][0] < cutoff:
        known.lines = [x for x in known.lines if x[0] >= cutoff]
    return known.lines


def lines_for(path: str, pod: str, pods: list[str], lo: float, hi: float) -> list[tuple[float, str]]:
    """The lines between ``lo`` and ``hi`` that the Service sent to ``pod``, one of the running ``pods``."""
    if pod not in pods:
        return []
    index = pods.index(pod)
    lo = max(lo, hi - KEEP_S)
    return [(t, text) for t, text in read(path)
            if lo <= t <= hi and zlib.crc32(text.encode()) % len(pods) == index]
