"""The sandbox's processes: start them with logs, wait on them, tell whether they and ports live."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from labcheck.sandbox.state import HOST, SandboxError, one_line, state_path, write_json

__all__ = ["Starter", "pid_alive", "poll", "port_listening"]


T = TypeVar("T")

# Substrings of /proc/<pid>/cmdline that identify our processes, so a recycled PID is never killed.
_CMDLINE_MARKERS = {
    "postgres": "postgres",
    "moto": "moto.server",
    "s3gw": "labcheck.sandbox.s3gw",
    "kube": "labcheck.sandbox.kube",
    "api": "labcheck.sandbox.api",
    "prometheus": "prometheus",
    "pushgateway": "pushgateway",
}
_POLL_INTERVAL = 0.1


def poll(
    check: Callable[[], T | None],
    *,
    deadline: float,
    what: str,
    log: Path | None = None,
    interval: float = _POLL_INTERVAL,
) -> T:
    """Call check until it returns a truthy value; SandboxError (naming log) at the deadline.

    Exceptions other than SandboxError raised by check count as "not yet" and the last one is
    reported on timeout; a SandboxError aborts the wait at once (e.g. the process died).
    """
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
        except SandboxError:
            raise
        except Exception as exc:  # any failure of a probe means "not ready yet"
            last_error, result = exc, None
        if result:
            return result
        now = time.monotonic()
        if now >= deadline:
            detail = f" (last error: {one_line(last_error, 160)})" if last_error else ""
            where = f"; see {log}" if log else ""
            raise SandboxError(f"timed out waiting for {what}{detail}{where}")
        time.sleep(min(interval, deadline - now))


def _reap(pid: int) -> None:
    """Collect the exit status of pid if it is our own child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int | None, service: str | None = None) -> bool:
    """True if pid runs (not a zombie) and, given service, its command line is that service's."""
    if not pid or pid <= 0:
        return False
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = stat.rsplit(")", 1)[-1].split()
    if fields and fields[0] in ("Z", "X"):
        return False
    marker = _CMDLINE_MARKERS.get(service or "")
    if marker:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            return False
        return marker.encode() in cmdline
    return True


def _listening_ports() -> set[int]:
    """Local TCP ports in LISTEN state, from /proc/net/tcp{,6}."""
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A":
                found.add(int(parts[1].rsplit(":", 1)[1], 16))
    return found


def port_listening(port: int) -> bool:
    """True if something listens on port (per /proc/net/tcp, else a connect attempt)."""
    if Path("/proc/net/tcp").exists():
        return port in _listening_ports()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def port_free(port: int) -> bool:
    """True if we could bind port and nothing listens on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return not port_listening(port)


def _child_env() -> dict[str, str]:
    """Environment for child processes: ours, with labcheck importable and no stray PG/AWS vars."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "AWS_", "LABCHECK_SANDBOX_PORT_"))
    }
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def dir_mode() -> int:
    """Mode of the sandbox dir and logs/: the postgres user must traverse them when we are root."""
    return 0o711 if os.geteuid() == 0 else 0o700


def open_log(d: Path, name: str) -> IO[bytes]:
    """logs/<name>.log, truncated, mode 0600: handed to a child, closed by the caller."""
    logs = d / "logs"
    logs.mkdir(mode=dir_mode(), exist_ok=True)
    fd = os.open(logs / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(fd, "wb")


class Starter:
    """Starts the services of one `up`, recording every PID in state.json as soon as it exists."""

    def __init__(self, d: Path, state: dict[str, Any], deadline: float) -> None:
        self.d = d
        self.state = state
        self.deadline = deadline
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def log(self, name: str) -> Path:
        return self.d / "logs" / f"{name}.log"

    def save(self) -> None:
        write_json(state_path(self.d), self.state)

    def record(self, name: str, pid: int, **addr: str) -> None:
        self.state["services"][name] = {"pid": pid, **addr}
        self.save()

    def spawn(self, name: str, argv: list[str], **addr: str) -> subprocess.Popen[bytes]:
        with open_log(self.d, name) as log:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=self.d,
                    env=_child_env(),
                )
            except OSError as exc:
                raise SandboxError(f"cannot start {name} ({argv[0]}): {one_line(exc)}") from None
        self.procs[name] = proc
        self.record(name, proc.pid, **addr)
        return proc

    def wait(self, name: str, check: Callable[[], Any], what: str) -> None:
        proc = self.procs.get(name)

        def guarded() -> Any:
            if proc is not None and proc.poll() is not None:
                raise SandboxError(
                    f"{name} exited with code {proc.returncode} during startup; see {self.log(name)}"
                )
            return check()

        poll(guarded, deadline=self.deadline, what=what, log=self.log(name))


def find_binary(path: str, package: str) -> str:
    """path if it is an executable, else its name on PATH; SandboxError naming the package."""
    if Path(path).is_file() and os.access(path, os.X_OK):
        return path
    found = shutil.which(Path(path).name)
    if found:
        return found
    raise SandboxError(f"{path} not found: apt-get install {package}")


def service_ports(state: dict[str, Any] | None) -> dict[str, int]:
    """The port of every service recorded in state (from its address or URL)."""
    result: dict[str, int] = {}
    for name, svc in (state or {}).get("services", {}).items():
        addr = svc.get("address") or svc.get("url", "")
        tail = addr.rsplit(":", 1)[-1].split("/", 1)[0]
        if tail.isdigit():
            result[name] = int(tail)
    return result
