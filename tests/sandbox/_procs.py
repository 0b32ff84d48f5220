"""Helpers for tests that run sandbox services as real processes on free loopback ports."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

PG_BIN = Path(os.environ.get("LABCHECK_PG_BIN", "/usr/lib/postgresql/15/bin"))
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - the service may not be up yet
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def http_ok(url: str, status: int = 200) -> Callable[[], bool]:
    def probe() -> bool:
        return httpx.get(url, timeout=1.0).status_code == status

    return probe


@dataclass
class Proc:
    """A started process, its log file, and how it must be stopped."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop by PID: stop_signal, then SIGKILL after `timeout`. Returns the exit code."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start(
    name: str,
    args: list[str],
    log_dir: Path,
    *,
    user: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stop_signal: int = signal.SIGTERM,
) -> Proc:
    """Start `args` with stdout and stderr to log_dir/name.log."""
    log_path = log_dir / f"{name}.log"
    log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    try:
        popen = subprocess.Popen(
            args,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            user=user,
            group=user,
            extra_groups=[] if user else None,
            start_new_session=True,
        )
    finally:
        log_file.close()
    return Proc(name, popen, log_path, stop_signal)


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write a JSON config readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    return path


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster run as the `postgres` OS user."""

    root: Path
    port: int
    superuser_password: str
    max_connections: int = 40
    proc: Proc | None = None
    _user: str | None = field(default=None, repr=False)

    @classmethod
    def init(cls, max_connections: int = 40, port: int | None = None) -> Postgres:
        # Not under pytest's 0700 tmp dirs: the postgres user must reach the data dir.
        root = Path(tempfile.mkdtemp(prefix="labcheck-test-pg-", dir="/tmp"))
        user = "postgres" if os.geteuid() == 0 else None
        password = secrets.token_hex(16)
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        if user:
            shutil.chown(root, user, user)
            shutil.chown(pwfile, user, user)
        pg = cls(root, port or free_port(), password, max_connections, _user=user)
        subprocess.run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(root / "data"),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=root,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
        pwfile.unlink()
        return pg

    def start(self) -> Proc:
        self.proc = start(
            "postgres",
            [
                str(PG_BIN / "postgres"),
                "-D",
                str(self.root / "data"),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"port={self.port}",
                "-c",
                "unix_socket_directories=",
                "-c",
                f"max_connections={self.max_connections}",
                "-c",
                "fsync=off",
            ],
            self.root,
            user=self._user,
            cwd=self.root,
            stop_signal=signal.SIGINT,  # fast shutdown; SIGTERM would wait for clients
        )
        wait_for(self._accepts, 30, "postgres to accept connections")
        return self.proc

    def _accepts(self) -> bool:
        import psycopg

        if self.proc is not None and not self.proc.alive():
            raise RuntimeError(f"postgres exited:\n{self.proc.log_tail()}")
        with psycopg.connect(self.dsn("postgres", self.superuser_password), connect_timeout=1):
            return True

    def dsn(self, user: str, password: str, dbname: str = "postgres") -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{dbname}"

    def superuser_dsn(self, dbname: str = "postgres") -> str:
        return self.dsn("postgres", self.superuser_password, dbname)

    def create_app_db(self, role: str, password: str, dbname: str) -> str:
        """Create a login role and a database it owns; returns the role's DSN."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.superuser_dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(dbname), sql.Identifier(role)
                )
            )
        return self.dsn(role, password, dbname)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=15)
        shutil.rmtree(self.root, ignore_errors=True)


def start_moto(log_dir: Path, wait: bool = True) -> tuple[Proc, str]:
    """moto's server (S3 and CloudWatch); returns the process and its URL."""
    port = free_port()
    proc = start(
        "moto",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        log_dir,
    )
    url = f"http://127.0.0.1:{port}"
    if wait:
        wait_http(proc, url + "/moto-api/", 60)
    return proc, url


def wait_http(proc: Proc, url: str, timeout: float = 30) -> None:
    """Wait until `url` answers 200, failing early if `proc` exits."""
    wait_for(alive_and(proc, http_ok(url)), timeout, f"{proc.name} at {url}")


def start_module(
    name: str, module: str, config: dict[str, Any], log_dir: Path, ready_url: str | None = None
) -> Proc:
    """Start `python -m module --config <json>`, waiting for `ready_url` to answer 200."""
    cfg = write_config(log_dir / f"{name}.json", config)
    proc = start(name, [sys.executable, "-m", module, "--config", str(cfg)], log_dir)
    if ready_url:
        wait_http(proc, ready_url)
    return proc


def alive_and(proc: Proc, probe: Callable[[], bool]) -> Callable[[], bool]:
    def checked() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        return probe()

    return checked


def stop_all(procs: list[Proc], timeout: float = 10.0) -> None:
    """Signal every process first, then wait for each (SIGKILL after `timeout`)."""
    for proc in procs:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, proc.stop_signal)
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.stop(timeout)


@contextlib.contextmanager
def stopping(procs: list[Proc]) -> Iterator[list[Proc]]:
    """Stop every process in `procs` on exit."""
    try:
        yield procs
    finally:
        stop_all(procs)


def s3_client(endpoint: str, region: str, key_id: str, secret: str, attempts: int = 1) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=2,
            read_timeout=10,
            retries={"total_max_attempts": attempts, "mode": "standard"},
        ),
    )


def cloudwatch_client(endpoint: str, region: str, key_id: str, secret: str) -> Any:
    import boto3

    return boto3.session.Session().client(
        "cloudwatch",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )
