"""One round: a fresh ``pytest`` process over the selected checks, bounded in time, and its triage.json.

One interpreter per round, not one reused: a pytest session run twice in one process keeps its
module caches, plugin registrations, stash and the run's fetch-once facts, so a second round
would not be a new look at the platform. The cost of the fresh interpreter (imports and
collection, about 0.8 s of a 1.3 s round of a few checks on a 2-core machine; see the README) is
small against the interval.

Bounded: the round passes ``--triage-deadline`` (checks still running at the deadline report
UNKNOWN), and a round still running at the deadline plus the probe timeout plus ``KILL_MARGIN_S``
is killed and recorded as an error round. The next round starts only after this one ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from labcheck.watch.state import Round

KILL_MARGIN_S = 15.0  # interpreter start, collection and writing the reports, on a loaded machine
ROUND_DIR = "round"
# pytest exit codes that say the round cannot work at all (usage, configuration, nothing selected).
FATAL = {3: "pytest internal error", 4: "usage or configuration error", 5: "no check selected"}


def command(pytest_args: list[str], *, reports: Path, deadline_s: float, profile: str | None,
            incident_start: str | None) -> list[str]:
    """The round's pytest command line (one token per option, as the gate does)."""
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--reports-dir={reports}",
           f"--triage-deadline={deadline_s:g}"]
    if profile:
        cmd.append(f"--profile={profile}")
    if incident_start:
        cmd.append(f"--set=incident_start={incident_start}")
    return cmd + pytest_args


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 3.0) -> None:
    """End the round's process group: SIGTERM, then SIGKILL after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run(cmd: list[str], *, reports: Path, limit_s: float, stop: threading.Event) -> Round | None:
    """Run one round; None when ``stop`` was set while it ran (the round is discarded)."""
    reports.mkdir(parents=True, exist_ok=True)
    triage_file = reports / "triage.json"
    triage_file.unlink(missing_ok=True)  # a stale triage.json must not pass for this round's
    started, t0 = time.time(), time.monotonic()
    with (reports / "output.txt").open("wb") as out:
        # Its own session: Ctrl-C reaches the watcher only, which ends the round itself.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        killed = False
        while proc.poll() is None:
            if stop.wait(0.1):
                _stop(proc)
                return None
            if time.monotonic() - t0 > limit_s:
                _stop(proc, grace_s=1.0)
                killed = True
                break
    duration = time.monotonic() - t0
    code = proc.returncode if proc.returncode is not None else -9
    if killed:
        return Round(started, duration, code, None, f"round killed after {limit_s:g} s (its bound)")
    triage: dict[str, Any] | None = None
    error = None
    try:
        triage = json.loads(triage_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        error = f"pytest exited {code} without writing triage.json: {_last_line(reports / 'output.txt')}"
    except (OSError, ValueError) as exc:
        error = f"{triage_file} cannot be read: {exc}"
    if triage is not None and (triage.get("error") or "checks" not in triage):
        error = " ".join(str(triage.get("error") or "triage.json has no checks").split())
        triage = None
    if error and code in FATAL:
        error = f"{FATAL[code]} (pytest exit {code}): {error}"
    return Round(started, duration, code, triage, error)


def _last_line(path: Path) -> str:
    """What pytest said last (its error line), or where to look."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return f"see {path}"
    said = [line for line in lines if line]
    errors = [line for line in said if "error" in line.lower()]
    return f"{(errors or said)[-1][:300]} (see {path})" if said else f"see {path}"
