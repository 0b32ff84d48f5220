"""The `labcheck` command line: `labcheck sandbox up|down|status|fault|heal` (more to come)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from labcheck.errors import UsageError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line, `labcheck: error: ...`, and exit 2."""

    def error(self, message: str) -> NoReturn:
        _error(message)
        raise SystemExit(EXIT_USAGE)


def _error(message: str) -> None:
    print(f"labcheck: error: {' '.join(str(message).split())}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The labcheck parser; each subcommand sets `func`, a handler taking args, returning an int.

    Add a command by writing `add_<name>_command(subparsers)` and calling it here.
    """
    parser = _Parser(
        prog="labcheck",
        description="Health checks and incident triage for the LLM Research Lab platform.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_sandbox_command(subparsers)
    from labcheck.report import add_report_command

    add_report_command(subparsers)
    from labcheck.gate import add_arguments as add_gate_command

    add_gate_command(subparsers)
    from labcheck.doctor import add_arguments as add_doctor_command

    add_doctor_command(subparsers)
    from labcheck.watch.command import add_arguments as add_watch_command

    add_watch_command(subparsers)
    return parser


def add_sandbox_command(subparsers: Any) -> None:
    """`labcheck sandbox ...`: the local platform (see labcheck/sandbox/README.md)."""
    sandbox = subparsers.add_parser(
        "sandbox", help="run the local sandbox platform", description=add_sandbox_command.__doc__
    )
    sandbox.add_argument(
        "--dir",
        help="sandbox directory (default $LABCHECK_SANDBOX_DIR or /tmp/labcheck-sandbox-UID)",
    )
    actions = sandbox.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = actions.add_parser("up", help="start every service (idempotent)")
    p.add_argument(
        "--port-offset", type=int, default=None, metavar="N",
        help="add N to every default port (default $LABCHECK_SANDBOX_PORT_OFFSET or 0)",
    )
    p.add_argument("--dir", default=argparse.SUPPRESS, help="sandbox directory")
    p.add_argument("--log-statements", action="store_true", help="PostgreSQL logs every statement")
    p.add_argument(
        "--timeout", type=float, default=90.0, metavar="S", help="seconds to wait (default 90)"
    )
    from labcheck.sandbox.flavours import FLAVORS, SHAPE_DEFAULTS

    p.add_argument(
        "--flavor", choices=FLAVORS, default=None,
        help="the exporter library instrumenting the API (default: playbook, or what runs)",
    )
    p.add_argument(
        "--set", action="append", default=None, metavar="KEY=VALUE", dest="shape",
        help=f"a response shape option (repeatable): {', '.join(SHAPE_DEFAULTS)}",
    )
    p.add_argument(
        "--endpoints", type=int, default=None, metavar="N",
        help="endpoint sets the API serves, all with traffic: 2N routes, N x the API's pods (default 1)",
    )
    p.set_defaults(func=cmd_sandbox_up)

    p = actions.add_parser("down", help="stop every service (idempotent)")
    p.add_argument("--dir", default=argparse.SUPPRESS, help="sandbox directory")
    p.set_defaults(func=cmd_sandbox_down)

    p = actions.add_parser("status", help="what runs where")
    p.add_argument("--dir", default=argparse.SUPPRESS, help="sandbox directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_sandbox_status)

    from labcheck.sandbox.manager import ALL_FAULTS

    p = actions.add_parser(
        "fault",
        help="inject a fault (see README's faults table)",
        epilog=f"faults: {', '.join(ALL_FAULTS)}",
    )
    p.add_argument("name", metavar="NAME", help="fault name, e.g. error-rate")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="K=V",
        help="fault parameter (repeatable), e.g. --param share=0.3",
    )
    p.add_argument("--dir", default=argparse.SUPPRESS, help="sandbox directory")
    p.set_defaults(func=cmd_sandbox_fault)

    p = actions.add_parser("heal", help="clear every fault")
    p.add_argument("--dir", default=argparse.SUPPRESS, help="sandbox directory")
    p.set_defaults(func=cmd_sandbox_heal)


# ---------------------------------------------------------------- sandbox handlers


def _progress(message: str) -> None:
    print(f"labcheck: {message}", file=sys.stderr, flush=True)


def cmd_sandbox_up(args: argparse.Namespace) -> int:
    from labcheck.sandbox import manager
    from labcheck.sandbox.flavours import parse_shape

    try:
        shape = None if args.shape is None else parse_shape(args.shape)
    except manager.SandboxError as exc:
        raise UsageError(str(exc)) from None
    offset = args.port_offset
    if offset is None:  # the same variable the tests' sandbox fixture reads
        raw = os.environ.get("LABCHECK_SANDBOX_PORT_OFFSET", "").strip() or "0"
        try:
            offset = int(raw)
        except ValueError:
            raise UsageError(f"LABCHECK_SANDBOX_PORT_OFFSET must be a whole number, not {raw!r}") from None

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # so a killed `up` still stops what it started

    signal.signal(signal.SIGTERM, on_sigterm)
    started = time.monotonic()
    manager.up(
        dir=args.dir,
        port_offset=offset,
        log_statements=args.log_statements,
        timeout=args.timeout,
        progress=_progress,
        flavor=args.flavor,
        shape=shape,
        endpoints=args.endpoints,
    )
    _progress(f"sandbox up in {time.monotonic() - started:.1f}s")
    _print_status_table(manager.status(args.dir))
    return EXIT_OK


def cmd_sandbox_down(args: argparse.Namespace) -> int:
    from labcheck.sandbox import manager

    started = time.monotonic()
    was_up = manager.load_state(args.dir) is not None
    manager.down(dir=args.dir)
    if was_up:
        _progress(f"sandbox down in {time.monotonic() - started:.1f}s")
    else:
        _progress("sandbox was not up")
    return EXIT_OK


def cmd_sandbox_status(args: argparse.Namespace) -> int:
    from labcheck.sandbox import manager

    info = manager.status(args.dir)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_status_table(info)
    return EXIT_OK if info["running"] else EXIT_FAILURE


def cmd_sandbox_fault(args: argparse.Namespace) -> int:
    from labcheck.sandbox import manager

    if args.name not in manager.FAULT_TARGETS:
        raise UsageError(
            f"unknown fault {args.name!r}; valid faults: {', '.join(manager.ALL_FAULTS)}"
        )
    params: dict[str, Any] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param expects K=V, got {item!r}")
        params[key.strip()] = manager.parse_param_value(value)
    answers = manager.fault(args.name, params, dir=args.dir)
    from labcheck.evidence import mask_params

    shown = f" {json.dumps(mask_params(params))}" if params else ""  # never echo a secret parameter
    print(f"fault {args.name}{shown} injected on {', '.join(answers)}")
    return EXIT_OK


def cmd_sandbox_heal(args: argparse.Namespace) -> int:
    from labcheck.sandbox import manager

    answers = manager.heal(dir=args.dir)
    print(f"faults cleared on {', '.join(answers)}")
    return EXIT_OK


def _print_status_table(info: dict[str, Any]) -> None:
    if not info.get("services"):
        print(f"sandbox is not up (dir {info['dir']})")
        return
    rows = [("service", "pid", "alive", "address")]
    for name, svc in info["services"].items():
        addr = svc.get("url") or svc.get("address") or ""
        rows.append((name, str(svc.get("pid", "")), "yes" if svc["alive"] else "NO", addr))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
    print()
    for label, key in (
        ("API", "api_url"),
        ("Docs", "docs_url"),
        ("Prometheus", "prometheus_url"),
        ("Pushgateway", "pushgateway_url"),
        ("Database", "database_url"),
        ("S3", "s3_endpoint"),
        ("Bucket", "s3_bucket"),
        ("Kubeconfig", "kubeconfig"),
        ("Directory", "dir"),
    ):
        if info.get(key):
            print(f"{label + ':':<13}{info[key]}")
    if info.get("flavor"):
        from labcheck.sandbox.flavours import FLAVOR_LIBRARY, SHAPE_DEFAULTS

        flavor = info["flavor"]
        print(f"{'Flavour:':<13}{flavor} ({FLAVOR_LIBRARY.get(flavor, 'unknown')})")
        changed = {k: v for k, v in (info.get("shape") or {}).items() if SHAPE_DEFAULTS.get(k) != v}
        if changed:
            shown = ", ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in changed.items())
            print(f"{'Shape:':<13}{shown}")
    if not info.get("running"):
        state = "incomplete" if not info.get("complete") else "some processes are gone"
        print(f"\nsandbox is NOT healthy: {state} (run: labcheck sandbox up)")


# ---------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run labcheck with argv (default sys.argv[1:]); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already reported)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if getattr(args, "dir", None) is None and hasattr(args, "dir"):
        args.dir = None
    handler: Handler = args.func
    try:
        return handler(args)
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as exc:  # one line, never a traceback (LABCHECK_DEBUG=1 shows it)
        if os.environ.get("LABCHECK_DEBUG"):
            raise
        from labcheck.sandbox.manager import SandboxError

        if isinstance(exc, SandboxError):
            _error(str(exc))
        else:
            _error(f"{type(exc).__name__}: {exc}")
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
