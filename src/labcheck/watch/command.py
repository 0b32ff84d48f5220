"""`labcheck watch`: the selected checks in rounds, confirmed, one incident state, messages at each change.

Each environment (the default one, or each ``--profile``) has its own watcher in a thread: its
rounds never overlap, start ``--interval`` apart (start to start; a longer round is followed at
once by the next), and each is bounded (``rounds.py``). After every round the state is saved and
the screen redrawn. Ctrl-C (or SIGTERM) ends the rounds, discards the one running and keeps the
state. Exit codes: 0 no incident open at the end, 1 an incident still open, 4 bad input (one line),
and pytest's own code when the first round cannot run at all (2, 3, 4 or 5).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from labcheck.errors import LabcheckError, UsageError
from labcheck.timefmt import duration_s

EXIT_OK, EXIT_OPEN, EXIT_BAD_INPUT = 0, 1, 4
MIN_INTERVAL_S = 1.0
SENT_FILE = "notify-sent.json"


class BadInput(Exception):
    """A bad watch option or configuration: one line, exit 4."""


@dataclass
class Options:
    interval_s: float
    until_resolved: bool
    rule: Any
    profiles: list[str]
    notify: list[str]
    reports: Path
    deadline_s: float | None
    pytest_args: list[str] = field(default_factory=list)


def add_arguments(subparsers: Any) -> None:
    """`labcheck watch`: continuous triage (see the README's section on it)."""
    from labcheck.gate import _PassThrough

    p = subparsers.add_parser(
        "watch", help="run the checks in rounds, confirm failures, keep the incident's state and messages",
        description=(__doc__ or "").split("\n\n")[0], allow_abbrev=False,
        usage="labcheck watch [--interval 30s] [--until-resolved] [--confirm 2/3] [--recover 2] "
              "[--notify URL]... [--profile FILE]... [pytest args...]",
        epilog="Arguments watch does not know go to pytest (e.g. -m sev1, -k error_ratio, --set KEY=VALUE); "
               "after `--` everything does.")
    p.__class__ = type("WatchParser", (_PassThrough, type(p)), {})  # keep cli's one-line errors
    p.add_argument("--interval", default="30s", metavar="DURATION",
                   help="time between round starts, at least 1 s (default 30s)")
    p.add_argument("--until-resolved", action="store_true",
                   help="stop once no incident is open and every check is passing (confirmed)")
    p.add_argument("--confirm", default="2/3", metavar="K/N",
                   help="a failure counts once it held in K of the last N rounds (default 2/3)")
    p.add_argument("--recover", type=int, default=2, metavar="M",
                   help="a confirmed failure recovers after M consecutive passing rounds (default 2)")
    p.add_argument("--notify", action="append", default=[], metavar="URL",
                   help="post the declaration, updates and resolution there (repeatable)")
    p.add_argument("--profile", action="append", default=[], metavar="FILE",
                   help="an environment's TOML profile; repeat it to watch several environments")
    p.add_argument("--round-deadline", type=float, default=None, metavar="SECONDS",
                   help="pytest --triage-deadline of each round (default: the probe timeout + 10 s)")
    p.add_argument("--reports-dir", default=None, metavar="DIR",
                   help="where the state and messages go (default $LABCHECK_REPORTS_DIR or reports)")
    p.set_defaults(func=cmd_watch)


def options_from(args: argparse.Namespace) -> Options:
    from labcheck.watch.confirm import parse_rule

    try:
        interval = duration_s(args.interval, bare_seconds=True)
    except ValueError:
        raise BadInput(f"--interval: not a duration such as 2s, 30s or 1m: {args.interval!r}") from None
    if interval < MIN_INTERVAL_S:
        raise BadInput(f"--interval: {args.interval} is under {MIN_INTERVAL_S:g} s")
    try:
        rule = parse_rule(args.confirm, args.recover)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    if args.round_deadline is not None and args.round_deadline <= 0:
        raise BadInput(f"--round-deadline: must be positive, got {args.round_deadline:g}")
    reports = Path(args.reports_dir or os.environ.get("LABCHECK_REPORTS_DIR") or "reports")
    return Options(interval_s=interval, until_resolved=args.until_resolved, rule=rule, profiles=list(args.profile),
                   notify=list(args.notify), reports=reports, deadline_s=args.round_deadline,
                   pytest_args=list(args.pytest_args or []))


def cmd_watch(args: argparse.Namespace) -> int:
    try:
        options = options_from(args)
        from labcheck import notify

        try:
            targets = notify.parse_targets(options.notify)
        except (UsageError, LabcheckError) as exc:
            raise BadInput(str(exc)) from None
        envs = environments(options)
    except BadInput as exc:
        print(f"labcheck: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run(options, envs, targets)


# --- environments --------------------------------------------------------------------------


@dataclass
class Env:
    """One environment watched: its profile, its reports directory, its settings and redactor."""

    name: str
    profile: str | None
    reports: Path
    target: str
    timeout_s: float
    redact: Callable[[str], str]
    settings: Any


def _config_values(pytest_args: list[str]) -> tuple[dict[str, tuple[Any, str]], bool]:
    """The configuration given among the pytest arguments (``--set``, ``--probe-timeout``, ...)."""
    from labcheck import config
    from labcheck.session import CONFIG_OPTIONS

    assignments: list[str] = []
    values: dict[str, tuple[Any, str]] = {}
    items = iter(pytest_args)
    for item in items:
        flag, eq, value = item.partition("=")
        if flag == "--set" or flag in CONFIG_OPTIONS:
            if not eq:
                value = next(items, "")
            if flag == "--set":
                assignments.append(value)
            else:
                values[CONFIG_OPTIONS[flag]] = (value, f"command line {flag}")
    return {**config.parse_assignments(assignments, "command line --set"), **values}, "--no-sandbox" in pytest_args


def environments(options: Options) -> list[Env]:
    """Each environment's settings, loaded as its rounds will load them (a bad one is BadInput)."""
    from labcheck import components, config
    from labcheck.evidence import Redactor, redact_env_secrets

    for module in [*components.modules(), "labcheck.verdict.escalation"]:
        importlib.import_module(module)  # the keys they declare are valid in a profile
    profiles: list[str | None] = list(options.profiles) or [None]
    stems = [Path(p).stem for p in options.profiles]
    if len(set(stems)) != len(stems):
        raise BadInput(f"--profile: two profiles share a name ({', '.join(stems)}): each needs its own state")
    out = []
    for profile in profiles:
        try:
            cli, no_sandbox = _config_values(options.pytest_args)
            settings = config.load(cli=cli, profile=profile, use_sandbox=not no_sandbox)
        except LabcheckError as exc:
            raise BadInput(str(exc)) from None
        name = Path(profile).stem if profile else "default"
        reports = options.reports / name if len(profiles) > 1 else options.reports
        redact = Redactor([*settings.secrets, *redact_env_secrets()])
        out.append(Env(name=name, profile=profile, reports=reports, target=settings.target,
                       timeout_s=float(settings.values.get("timeout") or 5.0), redact=redact, settings=settings))
    return out


# --- running -------------------------------------------------------------------------------


def _lock(env: Env) -> TextIO:
    """One watcher per state file: a second one is refused (the lock goes with the process)."""
    env.reports.mkdir(parents=True, exist_ok=True)
    fh = (env.reports / ".incident-state.lock").open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise BadInput(f"{env.reports}: another labcheck watch (pid {holder}) is watching it") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def run(options: Options, envs: list[Env], targets: list[Any]) -> int:
    from labcheck import notify
    from labcheck.watch import screen
    from labcheck.watch.loop import Watcher

    out_lock = threading.Lock()
    tty = sys.stdout.isatty()

    def warn(line: str) -> None:
        with out_lock:
            print(f"labcheck: warning: {line}", file=sys.stderr, flush=True)

    try:
        locks = [_lock(env) for env in envs]
    except BadInput as exc:
        print(f"labcheck: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    watchers = [Watcher(env, options, notify.Notifier(targets, settings=env.settings, redact=env.redact,
                                                      sent_path=env.reports / SENT_FILE), warn=warn)
                for env in envs]
    stop = threading.Event()

    def redraw() -> None:
        with out_lock:
            lines = watchers[0].screen() if len(watchers) == 1 else fleet_screen(watchers, options)
            text = "\n".join(lines)
            sys.stdout.write(f"{screen.CLEAR}{text}\n" if tty else f"{'-' * 20} {time.strftime('%H:%M:%S')}\n{text}\n")
            sys.stdout.flush()

    threads = [threading.Thread(target=w.loop, args=(stop, redraw), name=f"watch-{w.env.name}", daemon=True)
               for w in watchers]
    from labcheck.gate import _terminate_as_interrupt

    _terminate_as_interrupt()  # SIGTERM ends the watcher as Ctrl-C does: the round discarded, the state kept
    for t in threads:
        t.start()
    interrupted = False
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.2)
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        for t in threads:
            t.join(30)
    for w in watchers:
        w.close()
    for fh in locks:
        with contextlib.suppress(OSError):
            fh.close()
    fatal = [(w.env.name, w.fatal) for w in watchers if w.fatal]
    for name, (_, why) in fatal:
        print(f"labcheck: error: {name}: {why}", file=sys.stderr)
    if fatal:
        return int(fatal[0][1][0])
    still_open = [w.env.name for w in watchers if w.incident_open()]
    why = "interrupted" if interrupted else "done"
    print(f"labcheck watch: {why}; " + (f"incident still open in {', '.join(still_open)}" if still_open
                                        else "no incident open") + "; state kept", file=sys.stderr)
    return EXIT_OPEN if still_open else EXIT_OK


def fleet_screen(watchers: list[Any], options: Options) -> list[str]:
    now = time.time()
    lines = [f"labcheck watch: {len(watchers)} environments | every {options.interval_s:g} s | {options.rule.text()}",
             ""]
    lines += [w.line(now) for w in watchers]
    notes = [w.env.redact(f"{w.env.name}: {n}") for w in watchers for n in w.notes]
    lines += ["", *notes[-6:], f"States: {options.reports}/<environment>/incident-state.json. Ctrl-C stops."]
    return lines

