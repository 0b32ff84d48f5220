"""Where the sandbox lives: its directory, state file, ports, lock, private files and secrets.

The core (labcheck.config) reads a running sandbox through this module only, so it imports
nothing heavy and nothing of labcheck.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_PORTS",
    "HOST",
    "SERVICES",
    "STATE_VERSION",
    "SandboxError",
    "load_state",
    "ports",
    "sandbox_dir",
    "state_path",
]


STATE_VERSION = 1
SERVICES = ("postgres", "moto", "s3gw", "kube", "api", "prometheus", "pushgateway")
DEFAULT_PORTS: dict[str, int] = {
    "api": 18080,
    "prometheus": 18090,
    "pushgateway": 18091,
    "postgres": 18432,
    "moto": 18901,
    "s3gw": 18900,
    "kube": 18443,
}
HOST = "127.0.0.1"


class SandboxError(RuntimeError):
    """A sandbox operation failed; the message is one line saying what and where to look."""


def sandbox_dir() -> Path:
    """The sandbox directory: $LABCHECK_SANDBOX_DIR or ${TMPDIR:-/tmp}/labcheck-sandbox-<uid>."""
    override = os.environ.get("LABCHECK_SANDBOX_DIR")
    if override:
        return Path(override).expanduser().absolute()
    base = os.environ.get("TMPDIR") or "/tmp"
    return Path(base).absolute() / f"labcheck-sandbox-{os.getuid()}"


def resolve_dir(dir: str | os.PathLike[str] | None) -> Path:
    """dir made absolute, or the default sandbox directory when dir is None."""
    return Path(dir).expanduser().absolute() if dir is not None else sandbox_dir()


def state_path(d: Path) -> Path:
    """The state file of the sandbox in d."""
    return d / "state.json"


def load_state(dir: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The parsed state.json of the sandbox, or None when there is none (or it is unreadable)."""
    path = state_path(resolve_dir(dir))
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SandboxError(f"cannot read {path}: {one_line(exc)}") from None
    return data if isinstance(data, dict) else None


def ports(port_offset: int = 0) -> dict[str, int]:
    """The port of every service: README default + offset, or LABCHECK_SANDBOX_PORT_<SERVICE>."""
    result = {}
    for name, default in DEFAULT_PORTS.items():
        env_name = f"LABCHECK_SANDBOX_PORT_{name.upper()}"
        raw = os.environ.get(env_name)
        if raw:
            try:
                result[name] = int(raw)
            except ValueError:
                raise SandboxError(f"{env_name}={raw!r} is not a port number") from None
        else:
            result[name] = default + port_offset
    for name, port in result.items():
        if not 0 < port < 65536:
            raise SandboxError(f"port {port} for {name} is out of range (check --port-offset)")
    if len(set(result.values())) != len(result):
        raise SandboxError(f"two services would share a port: {result}")
    return result


def write_private(path: Path, text: str) -> None:
    """Write text to path atomically with mode 0600."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", closefd=False) as fh:
            fh.write(text)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_private(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def locked(d: Path) -> Iterator[None]:
    """Hold an exclusive lock on the sandbox directory (one up/down/fault at a time)."""
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def one_line(exc: BaseException | str, limit: int = 300) -> str:
    """exc as one line of at most limit characters, for an error message."""
    text = " ".join(str(exc).split())
    if isinstance(exc, BaseException) and not text:
        text = type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def new_secrets() -> dict[str, str]:
    """Fresh passwords, keys and tokens for one `up`."""
    return {
        "admin_key": secrets.token_urlsafe(24),
        "jwt_secret": secrets.token_urlsafe(32),
        "app_db_password": secrets.token_urlsafe(18),
        "postgres_password": secrets.token_urlsafe(18),
        "labcheck_db_password": secrets.token_urlsafe(18),
        "kube_token": secrets.token_urlsafe(32),
        "aws_access_key_id": "AKIA" + secrets.token_hex(8).upper(),
        "aws_secret_access_key": secrets.token_urlsafe(30),
    }


def new_state(d: Path, sec: dict[str, str]) -> dict[str, Any]:
    """The state.json of a sandbox about to start: no service yet, the secrets fault/heal need."""
    kept = ("admin_key", "jwt_secret", "app_db_password", "postgres_password",
            "labcheck_db_password", "kube_token")
    return {
        "version": STATE_VERSION,
        "dir": str(d),
        "services": {},
        "settings": {},
        "secrets": {name: sec[name] for name in kept},
    }


def kube_ca(d: Path) -> str:
    """The CA file of the Kubernetes stand-in in sandbox dir d.

    The stand-in serves HTTPS with its own CA: kubectl sends a bearer token only over TLS."""
    return str(d / "kube-tls.crt")
