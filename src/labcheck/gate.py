"""`labcheck gate`: the playbook's Phase 3 ("verify resolution, monitor error rates for 15 minutes") for CI/CD.

A thin command over pytest: each round is one ``pytest -m "sev1 or sev2"`` subprocess, with the
history checks switched on (``history_window``, ``history_since``) and every argument the gate does
not know passed through to pytest. The gate reads each round's triage.json and decides:

- a failed check (including a minute of history over its threshold) fails the gate (exit 1);
- a sev1 check that could not check fails it as a blind spot (exit 6), as ``--fail-on-unknown sev1``
  does for a plain run; so does a history check without enough evidence ("not yet 15 minutes of
  evidence"): a gate that cannot see 15 good minutes must not say the incident is resolved. In a
  soak only the last round's history counts for that, since evidence grows while the soak runs.
  ``--fail-on-unknown none`` lets both pass;
- otherwise it passes (exit 0) and fills in the playbook's "Incident Resolved" template.

Exit codes 2 (gate usage), 3 (pytest internal error), 4 (configuration) and 5 (no check selected)
end the gate at once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labcheck import verdict
from labcheck.markers import DEFAULT_WINDOW
from labcheck.timefmt import duration_s, hms, iso_z, parse_timestamp

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_BLIND = 6
MARKERS = "sev1 or sev2"

DEFAULT_INTERVAL = "30s"
HISTORY_CHECKS = ("check_error_ratio_history_below_sev2", "check_p95_latency_history_below_threshold")

_PROM_DURATION = re.compile(r"^\d+(s|m|h|d)$")


class GateUsageError(Exception):
    """A bad gate option; the message names it (exit 2)."""


def parse_duration(text: str, option: str) -> float:
    """Seconds in ``30s``, ``15m``, ``1h`` or a plain number of seconds."""
    try:
        return duration_s(text, bare_seconds=True)
    except ValueError:
        raise GateUsageError(f"{option}: not a duration such as 30s, 15m or 1h: {text!r}") from None


# --- options ---------------------------------------------------------------------------------


@dataclass
class GateOptions:
    """What the gate was asked to do (parsed and validated)."""

    since: float | None = None
    window: str = DEFAULT_WINDOW
    history: bool = True
    soak_s: float | None = None
    interval_s: float = 30.0
    fail_fast: bool = True
    fail_on_unknown: str = "sev1"
    reports: Path = field(default_factory=lambda: Path("reports"))
    pytest_args: list[str] = field(default_factory=list)


class _PassThrough(argparse.ArgumentParser):
    """The gate's parser: what it does not know is pytest's, kept in order in ``pytest_args``."""

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        items = list(sys.argv[1:] if args is None else args)
        forwarded: list[str] = []
        if "--" in items:  # everything after -- is pytest's, even what looks like a gate option
            cut = items.index("--")
            items, forwarded = items[:cut], items[cut + 1:]
        ns, extra = super().parse_known_args(items, namespace)
        ns.pytest_args = [*extra, *forwarded]
        return ns, []


def add_arguments(subparsers: Any) -> None:
    """`labcheck gate`: the post-mitigation gate (sev1 + sev2 checks, history, optional soak)."""
    gate = subparsers.add_parser(
        "gate", help="verify resolution after a fix or rollback (sev1+sev2 checks, 15 minutes of history)",
        description=__doc__.split("\n\n")[0] if __doc__ else None, allow_abbrev=False,
        usage="labcheck gate [--since TS] [--window 15m] [--soak 15m --interval 30s] "
              "[--fail-fast|--fail-at-end] [pytest args...]",
        epilog="Arguments the gate does not know go to pytest (e.g. --profile, --set KEY=VALUE, -x, "
               "--push-metrics URL); after `--` everything does.")
    gate.__class__ = type("GateParser", (_PassThrough, type(gate)), {})  # keep cli's one-line errors
    gate.add_argument("--since", metavar="TS",
                      help="mitigation time (ISO-8601 or epoch seconds): history starts there")
    gate.add_argument("--window", default=DEFAULT_WINDOW, metavar="DURATION",
                      help="minutes of history that must be under the thresholds (default 15m)")
    gate.add_argument("--no-history", action="store_true", help="skip the Prometheus history checks")
    gate.add_argument("--soak", metavar="DURATION", help="repeat the checks for this long, e.g. 15m")
    gate.add_argument("--interval", default=DEFAULT_INTERVAL, metavar="DURATION",
                      help="time between soak rounds, start to start (default 30s)")
    mode = gate.add_mutually_exclusive_group()
    mode.add_argument("--fail-fast", dest="fail_fast", action="store_true", default=True,
                      help="stop the soak at the first round that fails the gate (default)")
    mode.add_argument("--fail-at-end", dest="fail_fast", action="store_false",
                      help="run every soak round, then decide")
    gate.add_argument("--fail-on-unknown", default="sev1", choices=("none", "sev1", "any"),
                      help="blind spots that fail the gate (default sev1; history without enough "
                           "evidence counts unless none)")
    gate.add_argument("--reports-dir", default=None, metavar="DIR",
                      help="reports directory (default $LABCHECK_REPORTS_DIR or reports)")
    gate.set_defaults(func=cmd_gate)


def options_from(args: argparse.Namespace) -> GateOptions:
    """Validate the parsed options (one-line errors naming the option)."""
    since = None
    if args.since is not None:
        try:
            since = parse_timestamp(args.since)
        except ValueError as exc:
            raise GateUsageError(f"--since: {exc}") from None
        if since > time.time() + 60:
            raise GateUsageError(f"--since: {iso_z(since)} is in the future")
    if not _PROM_DURATION.match(args.window or ""):
        raise GateUsageError(f"--window: not a duration such as 15m or 900s: {args.window!r}")
    soak = parse_duration(args.soak, "--soak") if args.soak else None
    interval = parse_duration(args.interval, "--interval")
    pytest_args = list(args.pytest_args or [])
    reports = Path(args.reports_dir or os.environ.get("LABCHECK_REPORTS_DIR") or "reports")
    return GateOptions(since=since, window=args.window, history=not args.no_history, soak_s=soak,
                       interval_s=interval, fail_fast=args.fail_fast, fail_on_unknown=args.fail_on_unknown,
                       reports=reports, pytest_args=pytest_args)


def cmd_gate(args: argparse.Namespace) -> int:
    from labcheck.errors import UsageError

    try:
        options = options_from(args)
    except GateUsageError as exc:
        raise UsageError(str(exc)) from None
    _terminate_as_interrupt()
    return Gate(options).run()


def _terminate_as_interrupt() -> None:
    """SIGTERM (a cancelled CI job) ends the gate like Ctrl-C: gate.json still says what ran."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


# --- rounds ----------------------------------------------------------------------------------


@dataclass
class Round:
    """One pytest run of the gate and what its triage.json said."""

    index: int
    started_at: float
    offset_s: float
    exit_code: int = -1
    duration_s: float = 0.0
    status: str = "error"  # green | red | blind | error
    reasons: list[str] = field(default_factory=list)
    severity: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    failed: list[dict[str, str]] = field(default_factory=list)
    blind: list[dict[str, str]] = field(default_factory=list)
    history: list[dict[str, str]] = field(default_factory=list)
    reports: str = "."
    triage: dict[str, Any] | None = field(default=None, repr=False)

    def doc(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("triage")
        out["started_at"] = iso_z(self.started_at)
        return out


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _is_history(nodeid: str) -> bool:
    return any(nodeid.endswith(f"::{name}") for name in HISTORY_CHECKS)


def classify(rnd: Round, triage: dict[str, Any] | None, *, final: bool, fail_on_unknown: str) -> None:
    """Set a round's status from its exit code and triage.json.

    green: nothing failed and no blind spot that counts; red: a check failed; blind: a blind spot
    that counts (sev1 UNKNOWN, or history without enough evidence in the final round); error: the
    run itself did not work (configuration, nothing selected, internal error).
    """
    rnd.triage = triage
    rnd.reasons = []
    if triage is None or "checks" not in triage or triage.get("error"):
        rnd.status = "error"
        why = (triage or {}).get("error") or "no triage.json was written"
        rnd.reasons.append(f"pytest exited {rnd.exit_code}: {_first_line(why)}")
        return
    checks = triage["checks"]
    rnd.severity = triage.get("severity")
    rnd.counts = dict(triage.get("counts") or {})
    rnd.failed = [{"nodeid": c["nodeid"], "severity": c.get("severity") or "", "message": _first_line(c.get("message"))}
                  for c in checks if c["outcome"] == "failed"]
    rnd.history = [{"nodeid": c["nodeid"], "outcome": c["outcome"],
                    "message": _first_line(c.get("message")) or "; ".join(
                        f"{o['target']}: {o['observed']}" for o in c.get("observed") or [])}
                   for c in checks if _is_history(c["nodeid"])]
    unknown = [c for c in checks if c["outcome"] == "unknown"]
    counted = []
    for c in unknown:
        if _is_history(c["nodeid"]):
            if final and fail_on_unknown != "none":
                counted.append(c)
        elif fail_on_unknown == "any" or (fail_on_unknown == "sev1" and c.get("severity") == "SEV-1"):
            counted.append(c)
    rnd.blind = [{"nodeid": c["nodeid"], "severity": c.get("severity") or "", "reason": _first_line(c.get("message"))}
                 for c in counted]
    if rnd.failed or rnd.exit_code == EXIT_FAILED:
        rnd.status = "red"
        rnd.reasons += [f"FAILED {f['nodeid']}: {f['message']}" for f in rnd.failed]
    elif rnd.exit_code not in (0, EXIT_BLIND):
        rnd.status = "error"
        rnd.reasons.append(f"pytest exited {rnd.exit_code}")
    elif rnd.blind:
        rnd.status = "blind"
        rnd.reasons += [f"UNKNOWN {b['nodeid']}: {b['reason']}" for b in rnd.blind]
    else:
        rnd.status = "green"


Runner = Callable[[list[str], Path | None], int]


def run_pytest(cmd: list[str], output: Path | None) -> int:
    """Run one round; its output goes to the terminal, or to a file during a soak."""
    if output is None:
        return subprocess.run(cmd, check=False).returncode
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as fh:
        return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode


# --- the gate --------------------------------------------------------------------------------


class Gate:
    """Runs the rounds, decides, and writes gate.json, triage.json and the resolution document."""

    def __init__(self, options: GateOptions, *, runner: Runner = run_pytest,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, out: Callable[[str], None] | None = None) -> None:
        self.options = options
        self.runner = runner
        self.clock = clock
        self.wall = wall
        self.sleep = sleep
        self.out = out or (lambda line: print(line, flush=True))
        self.rounds: list[Round] = []
        self.started_at = 0.0

    @property
    def soak(self) -> bool:
        return self.options.soak_s is not None

    def command(self, reports: Path) -> list[str]:
        o = self.options
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
        if not any(a == "-m" or (a.startswith("-m") and not a.startswith("--")) for a in o.pytest_args):
            cmd += ["-m", MARKERS]
        # One token per option: pytest takes a separate argument naming an existing directory
        # (the reports directory) for a path, and would pick its rootdir from it.
        cmd += [f"--fail-on-unknown={o.fail_on_unknown}", f"--reports-dir={reports}"]
        if o.history:
            cmd += [f"--set=history_window={o.window}"]
            if o.since is not None:
                cmd += [f"--set=history_since={o.since:.3f}"]
        if self.soak and not any(a.startswith("--alluredir") for a in o.pytest_args):
            # Every round adds to one Allure results directory: one report covering all rounds.
            cmd += [f"--alluredir={o.reports / 'allure-results'}"]
        return cmd + o.pytest_args

    def run(self) -> int:
        o = self.options
        o.reports.mkdir(parents=True, exist_ok=True)
        self.started_at = self.wall()
        if not self.soak:
            self._one_round(1, 0.0, o.reports, output=None, final=True)
            return self.finish()
        shutil.rmtree(o.reports / "rounds", ignore_errors=True)
        if not any(a.startswith("--alluredir") for a in o.pytest_args):
            shutil.rmtree(o.reports / "allure-results", ignore_errors=True)
        soak, interval = float(o.soak_s or 0), o.interval_s
        mode = "fail-fast" if o.fail_fast else "fail-at-end"
        self.out(f"gate: soak {hms(soak)} every {hms(interval)} ({mode}); reports in {o.reports}")
        t0 = self.clock()
        index = 0
        try:
            while True:
                scheduled = index * interval  # rounds at 0, interval, ... up to and including the soak's end
                if scheduled > soak + 1e-9 or self.clock() - t0 > soak + 1e-9:
                    break
                wait = t0 + scheduled - self.clock()
                if wait > 0:
                    self.sleep(wait)
                index += 1
                offset = self.clock() - t0
                rnd = self._one_round(index, offset, o.reports / "rounds" / f"{index:03d}",
                                      output=o.reports / "rounds" / f"{index:03d}" / "output.txt",
                                      final=False)
                self._progress(rnd, self.clock() - t0, soak)
                if rnd.status == "error" or (o.fail_fast and rnd.status in ("red", "blind")):
                    break
        except KeyboardInterrupt:
            self.out("gate: interrupted; writing the reports of the rounds so far")
            self.finish(interrupted=True)
            raise
        if self.rounds:  # the last round is the one whose history must be complete
            last = self.rounds[-1]
            classify(last, last.triage, final=True, fail_on_unknown=o.fail_on_unknown)
        return self.finish()

    def _one_round(self, index: int, offset: float, reports: Path, *, output: Path | None, final: bool) -> Round:
        rnd = Round(index=index, started_at=self.wall(), offset_s=round(offset, 3),
                    reports=os.path.relpath(reports, self.options.reports))
        started = self.clock()
        triage_file = reports / "triage.json"
        stale = triage_file.stat().st_mtime if triage_file.exists() else None
        rnd.exit_code = self.runner(self.command(reports), output)
        rnd.duration_s = round(self.clock() - started, 3)
        triage: dict[str, Any] | None = None
        if triage_file.exists() and (stale is None or triage_file.stat().st_mtime != stale):
            try:
                triage = json.loads(triage_file.read_text())
            except (OSError, ValueError) as exc:
                triage = {"error": f"{triage_file} cannot be read: {exc}"}
        classify(rnd, triage, final=final, fail_on_unknown=self.options.fail_on_unknown)
        self.rounds.append(rnd)
        return rnd

    def _progress(self, rnd: Round, elapsed: float, soak: float) -> None:
        red = [r for r in self.rounds if r.status == "red"]
        failing = sorted({f["nodeid"] for r in red for f in r.failed})
        remaining = max(soak - elapsed, 0.0)
        pending = " (history pending)" if rnd.status == "green" and any(
            h["outcome"] == "unknown" for h in rnd.history) else ""
        self.out(f"gate: round {rnd.index} {rnd.status.upper()}{pending} (exit {rnd.exit_code}, "
                 f"{rnd.duration_s:.1f} s) | elapsed {hms(elapsed)}, remaining {hms(remaining)} | "
                 f"failures so far: {len(red)} round(s)" + (f", {', '.join(failing)}" if failing else ""))
        for reason in rnd.reasons[:6]:
            self.out(f"    {reason}")

    # --- the decision and the reports ---------------------------------------------------------

    def decision(self) -> tuple[str, int, list[str]]:
        statuses = [r.status for r in self.rounds]
        reasons = [f"round {r.index}: {why}" for r in self.rounds for why in r.reasons if r.status != "green"]
        if not self.rounds:
            return "error", 2, ["no round ran"]
        errors = [r for r in self.rounds if r.status == "error"]
        if "red" in statuses:
            return "failed", EXIT_FAILED, reasons
        if errors:
            code = errors[0].exit_code
            return "error", code if code > 1 else 3, reasons
        if "blind" in statuses:
            return "blind", EXIT_BLIND, reasons
        return "passed", EXIT_PASSED, []

    def _chosen(self) -> Round | None:
        """The round whose triage stands for the gate: the first that failed it, else the last."""
        for rnd in self.rounds:
            if rnd.status != "green" and rnd.triage is not None:
                return rnd
        return next((r for r in reversed(self.rounds) if r.triage is not None), None)

    def finish(self, *, interrupted: bool = False) -> int:
        o = self.options
        finished = self.wall()
        result, code, reasons = self.decision()
        if interrupted:
            result, code = "interrupted", 130
        chosen = self._chosen()
        if self.soak and chosen is not None:
            for name in ("triage.json", "incident.md", verdict.comms.STATUS_UPDATE, verdict.comms.STATUS_PAGE):
                src = o.reports / chosen.reports / name
                if src.exists():
                    shutil.copyfile(src, o.reports / name)
        doc = {
            "gate": result,
            "exit_code": code,
            "reasons": reasons,
            "started_at": iso_z(self.started_at),
            "finished_at": iso_z(finished),
            "duration_s": round(finished - self.started_at, 3),
            "since": iso_z(o.since) if o.since is not None else None,
            "history_window": o.window if o.history else None,
            "fail_on_unknown": o.fail_on_unknown,
            "soak": {"duration_s": o.soak_s, "interval_s": o.interval_s,
                     "mode": "fail-fast" if o.fail_fast else "fail-at-end"} if self.soak else None,
            "triage_round": chosen.index if chosen else None,
            "rounds": [r.doc() for r in self.rounds],
            "checks": self._per_check(),
        }
        _write(o.reports / "gate.json", json.dumps(doc, indent=2) + "\n")
        if result == "passed" and chosen is not None and chosen.triage is not None:
            _write(o.reports / "incident.md", resolution_markdown(doc, chosen.triage, since=o.since,
                                                                  finished=finished))
        self._summary(result, code, reasons)
        return code

    def _per_check(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for rnd in self.rounds:
            for c in (rnd.triage or {}).get("checks", []):
                entry = out.setdefault(c["nodeid"], {"severity": c.get("severity"), "outcomes": {},
                                                     "first_failed_round": None})
                entry["outcomes"][c["outcome"]] = entry["outcomes"].get(c["outcome"], 0) + 1
                if c["outcome"] == "failed" and entry["first_failed_round"] is None:
                    entry["first_failed_round"] = rnd.index
        return out

    def _summary(self, result: str, code: int, reasons: list[str]) -> None:
        rounds = len(self.rounds)
        what = f"{rounds} round{'s' if rounds != 1 else ''}" if self.soak else "1 run"
        if result == "passed":
            self.out(f"gate: PASSED ({what}); resolution written to {self.options.reports / 'incident.md'}")
        else:
            self.out(f"gate: {result.upper()} ({what}, exit {code}); see {self.options.reports / 'gate.json'}")
            for reason in reasons[:10]:
                self.out(f"  {reason}")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def resolution_markdown(gate: dict[str, Any], triage: dict[str, Any], *, since: float | None,
                        finished: float) -> str:
    """The playbook's "Incident Resolved" template, filled in from the gate and its triage."""
    soak = gate.get("soak")
    return verdict.resolution_markdown(triage, gate=verdict.GateEvidence(
        finished=finished, since=since, history_window=gate.get("history_window"),
        soak_rounds=len(gate["rounds"]) if soak else None, soak_s=soak["duration_s"] if soak else None))
