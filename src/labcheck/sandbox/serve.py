"""Run one sandbox ASGI app with uvicorn: loopback, no access log, a clean exit status on SIGTERM."""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from starlette.requests import Request

T = TypeVar("T")


def parse_args(service: str, description: str | None, argv: list[str] | None,
               *, quiet: Iterable[tuple[str, int]] = ()) -> argparse.Namespace:
    """The sandbox processes' command line (``--config FILE [--log-level L]``), with logging set up."""
    parser = argparse.ArgumentParser(prog=f"python -m labcheck.sandbox.{service}", description=description)
    parser.add_argument("--config", required=True, help=f"path to {service}.json")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, level in (("httpx", logging.WARNING), *quiet):
        logging.getLogger(name).setLevel(level)
    return args


def load_config(cls: type[T], path: str | Path, log: logging.Logger) -> T:
    """A service's dataclass configuration from its JSON file; unknown keys are logged and passed over."""
    data = json.loads(Path(path).read_text())
    known = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    unknown = sorted(set(data) - known)
    if unknown:
        log.warning("ignoring unknown config keys: %s", ", ".join(unknown))
    return cls(**{k: v for k, v in data.items() if k in known})


def admin_key_ok(request: Request, admin_key: str) -> bool:
    """Whether a request to an admin endpoint carries the sandbox's key (X-Admin-Key), in constant time."""
    given = request.headers.get("x-admin-key", "")
    return bool(given) and hmac.compare_digest(given.encode(), admin_key.encode())


async def fault_params(request: Request) -> dict[str, Any]:
    """A fault's parameters: the JSON object in the body, or none for an empty body.

    Raises ValueError for anything else, which the admin endpoints answer with HTTP 400.
    """
    raw = await request.body()
    try:
        params = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        params = None
    if not isinstance(params, dict):
        raise ValueError("body must be a JSON object")
    return params


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve(app: Any, *, host: str, port: int, log_level: str = "info", graceful_s: int = 5,
          **options: Any) -> int:
    """Serve until SIGTERM or SIGINT; exit 0 after the graceful shutdown.

    uvicorn captures SIGTERM/SIGINT while it runs and re-raises the signal once it has shut down,
    which would end the process by that signal; the handlers installed here turn it into exit 0.
    """
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=graceful_s, **options)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    uvicorn.Server(config).run()
    return 0
