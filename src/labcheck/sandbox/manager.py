"""Start, inspect, fault and stop the local sandbox platform described in README.md."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

import httpx

from labcheck.evidence import mask_dsn

__all__ = [
    "ALL_FAULTS",
    "DEFAULT_PORTS",
    "FAULT_TARGETS",
    "SERVICES",
    "SandboxError",
    "down",
    "fault",
    "heal",
    "load_state",
    "mask_dsn",
    "ports",
    "sandbox_dir",
    "status",
    "up",
]

T = TypeVar("T")

STATE_VERSION = 1
# The dataset bucket's quota: small enough that the quota-full fault fills it in seconds.
QUOTA_BYTES = 256 * 1024 * 1024

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
BUCKET = "llm-research-datasets"
NAMESPACE = "llm-research"
DB_NAME = "llm_research"
APP_ROLE = "llm_app"
LABCHECK_ROLE = "labcheck"
PG_SUPERUSER = "postgres"
REGION = "us-east-1"
WINDOW = "10s"
TEST_TOKEN_SUBJECT = "labcheck-smoke"
TEST_TOKEN_LIFETIME_S = 30 * 24 * 3600

API_FAULTS = (
    "error-rate",
    "latency",
    "db-pool-leak",
    "long-query",
    "blocking-lock",
    "idle-in-transaction",
    "quota-full",
    "clock-skew",
    "stuck-experiment",
    "docs-down",
)
KUBE_FAULTS = (
    "crash-loop",
    "oom-killed",
    "node-not-ready",
    "recent-rollout",
    "workers-unavailable",
    "forbidden",
    "unauthorized",
)
FAULT_TARGETS: dict[str, tuple[str, ...]] = {
    **{name: ("api",) for name in API_FAULTS},
    **{name: ("kube",) for name in KUBE_FAULTS},
    # s3-outage (param mode: 503, 403, 404 or reset) and the gateway's aliases for its modes.
    **{name: ("s3gw",) for name in ("s3-outage", "s3-forbidden", "s3-missing", "s3-reset")},
    "auth-secret-rotated": ("api", "kube"),
}
ALL_FAULTS = tuple(sorted(FAULT_TARGETS))

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
_PROBE_TIMEOUT = httpx.Timeout(3.0, connect=1.0)
# quota-full uploads ~1 GiB into moto: about a minute on a busy machine.
_ADMIN_TIMEOUT = httpx.Timeout(120.0, connect=3.0)
_POLL_INTERVAL = 0.1
_STOP_DEADLINE_S = 10.0


class SandboxError(RuntimeError):
    """A sandbox operation failed; the message is one line saying what and where to look."""


# ---------------------------------------------------------------- paths, state, ports


def sandbox_dir() -> Path:
    """The sandbox directory: $LABCHECK_SANDBOX_DIR or ${TMPDIR:-/tmp}/labcheck-sandbox-<uid>."""
    override = os.environ.get("LABCHECK_SANDBOX_DIR")
    if override:
        return Path(override).expanduser().absolute()
    base = os.environ.get("TMPDIR") or "/tmp"
    return Path(base).absolute() / f"labcheck-sandbox-{os.getuid()}"


def _resolve_dir(dir: str | os.PathLike[str] | None) -> Path:
    return Path(dir).expanduser().absolute() if dir is not None else sandbox_dir()


def _state_path(d: Path) -> Path:
    return d / "state.json"


def load_state(dir: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The parsed state.json of the sandbox, or None when there is none (or it is unreadable)."""
    path = _state_path(_resolve_dir(dir))
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SandboxError(f"cannot read {path}: {_one_line(exc)}") from None
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


def _write_private(path: Path, text: str) -> None:
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


def _write_json(path: Path, data: Any) -> None:
    _write_private(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    """Hold an exclusive lock on the sandbox directory (one up/down/fault at a time)."""
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _one_line(exc: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, BaseException) and not text:
        text = type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- processes and ports


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
            detail = f" (last error: {_one_line(last_error, 160)})" if last_error else ""
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


def _port_free(port: int) -> bool:
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


def _dir_mode() -> int:
    """Mode of the sandbox dir and logs/: the postgres user must traverse them when we are root."""
    return 0o711 if os.geteuid() == 0 else 0o700


def _open_log(d: Path, name: str) -> IO[bytes]:
    """logs/<name>.log, truncated, mode 0600: handed to a child, closed by the caller."""
    logs = d / "logs"
    logs.mkdir(mode=_dir_mode(), exist_ok=True)
    fd = os.open(logs / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(fd, "wb")


class _Starter:
    """Starts the services of one `up`, recording every PID in state.json as soon as it exists."""

    def __init__(self, d: Path, state: dict[str, Any], deadline: float) -> None:
        self.d = d
        self.state = state
        self.deadline = deadline
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def log(self, name: str) -> Path:
        return self.d / "logs" / f"{name}.log"

    def save(self) -> None:
        _write_json(_state_path(self.d), self.state)

    def record(self, name: str, pid: int, **addr: str) -> None:
        self.state["services"][name] = {"pid": pid, **addr}
        self.save()

    def spawn(self, name: str, argv: list[str], **addr: str) -> subprocess.Popen[bytes]:
        with _open_log(self.d, name) as log:
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
                raise SandboxError(f"cannot start {name} ({argv[0]}): {_one_line(exc)}") from None
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


# ---------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> Path:
    override = os.environ.get("LABCHECK_PG_BINDIR")
    candidates = [Path(override)] if override else []
    found = shutil.which("pg_ctl")
    if found and not override:
        candidates.append(Path(found).resolve().parent)
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versions)
    for cand in candidates:
        if (cand / "pg_ctl").is_file() and (cand / "initdb").is_file():
            return cand
    raise SandboxError(
        "PostgreSQL server binaries not found (install postgresql-15 or set LABCHECK_PG_BINDIR)"
    )


def _pg_runas() -> dict[str, Any]:
    """subprocess kwargs to run PostgreSQL tools as the postgres OS user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise SandboxError(
            "running as root needs a 'postgres' OS user for PostgreSQL (initdb refuses root)"
        ) from None
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _pg_ids() -> tuple[int, int] | None:
    runas = _pg_runas()
    return (runas["user"], runas["group"]) if runas else None


def _check_traversable(path: Path, uid: int, gid: int) -> None:
    """Fail clearly if the postgres user cannot reach path (a 0700 parent, say)."""
    for parent in [path, *path.parents]:
        try:
            st = parent.stat()
        except OSError:
            continue
        if st.st_uid == uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            raise SandboxError(
                f"PostgreSQL runs as the postgres user, which cannot enter {parent} "
                f"(mode {st.st_mode & 0o777:04o}); use a sandbox dir under /tmp"
            )


def _pg_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}


def _run_pg_tool(
    d: Path, argv: list[str], log_name: str, timeout: float
) -> subprocess.CompletedProcess[bytes]:
    with _open_log(d, log_name) as log:
        try:
            return subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=d,
                env=_pg_env(),
                timeout=max(timeout, 1.0),
                start_new_session=True,
                check=False,
                **_pg_runas(),
            )
        except subprocess.TimeoutExpired:
            raise SandboxError(
                f"{Path(argv[0]).name} timed out; see {d / 'logs' / (log_name + '.log')}"
            ) from None
        except OSError as exc:
            raise SandboxError(f"cannot run {argv[0]}: {_one_line(exc)}") from None


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        first = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def _pg_connect(port: int, user: str, password: str, dbname: str) -> Any:
    import psycopg

    return psycopg.connect(
        host=HOST,
        port=port,
        user=user,
        password=password,
        dbname=dbname,
        connect_timeout=3,
        autocommit=True,
        application_name="labcheck-sandbox",
    )


def _start_postgres(st: _Starter, port: int, sec: dict[str, str], log_statements: bool) -> None:
    d = st.d
    bindir = _pg_bindir()
    pgdata = d / "pgdata"
    ids = _pg_ids()
    if pgdata.exists():
        shutil.rmtree(pgdata)
    pgdata.mkdir(mode=0o700)
    pwfile = d / ".pg-superuser-password"
    _write_private(pwfile, sec["postgres_password"] + "\n")
    server_log = d / "logs" / "postgres.log"
    _open_log(d, "postgres").close()
    if ids:
        for path in (pgdata, pwfile, server_log):
            os.chown(path, *ids)
    try:
        res = _run_pg_tool(
            d,
            [
                str(bindir / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                PG_SUPERUSER,
                "-A",
                "scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ],
            "initdb",
            st.deadline - time.monotonic(),
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if res.returncode != 0:
        raise SandboxError(f"initdb failed (exit {res.returncode}); see {st.log('initdb')}")

    opts = (
        f"-p {port} -c listen_addresses={HOST} -c unix_socket_directories='' "
        "-c max_connections=40 -c superuser_reserved_connections=3"
    )
    if log_statements:
        opts += " -c log_statement=all -c log_line_prefix='%m [%p] app=%a user=%u '"
    res = _run_pg_tool(
        d,
        [
            str(bindir / "pg_ctl"),
            "start",
            "-W",
            "-D",
            str(pgdata),
            "-l",
            str(server_log),
            "-o",
            opts,
        ],
        "pg_ctl",
        st.deadline - time.monotonic(),
    )
    if res.returncode != 0:
        raise SandboxError(
            f"pg_ctl start failed (exit {res.returncode}); see {st.log('pg_ctl')} and {server_log}"
        )
    pid = poll(
        lambda: _postmaster_pid(pgdata),
        deadline=st.deadline,
        what="postgres to write postmaster.pid",
        log=server_log,
    )
    st.record("postgres", pid, address=f"{HOST}:{port}")

    def connect() -> bool:
        if not pid_alive(pid, "postgres"):
            raise SandboxError(f"postgres exited during startup; see {server_log}")
        with _pg_connect(port, PG_SUPERUSER, sec["postgres_password"], "postgres"):
            return True

    poll(connect, deadline=st.deadline, what="postgres to accept connections", log=server_log)
    try:
        _create_roles(port, sec)
    except SandboxError:
        raise
    except Exception as exc:
        raise SandboxError(
            f"creating the database and roles failed: {_one_line(exc)}; see {server_log}"
        ) from None


def _create_roles(port: int, sec: dict[str, str]) -> None:
    from psycopg import sql

    with _pg_connect(port, PG_SUPERUSER, sec["postgres_password"], "postgres") as conn:
        # Keep role passwords out of the statement log even with --log-statements; they are
        # also sent already SCRAM-hashed, never in clear text.
        conn.execute("SET log_statement = 'none'")

        def scram(password: str, role: str) -> str:
            raw = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
            return bytes(raw).decode()

        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(APP_ROLE), sql.Literal(scram(sec["app_db_password"], APP_ROLE))
            )
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(DB_NAME), sql.Identifier(APP_ROLE)
            )
        )
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(LABCHECK_ROLE),
                sql.Literal(scram(sec["labcheck_db_password"], LABCHECK_ROLE)),
            )
        )
        conn.execute(
            sql.SQL("GRANT pg_monitor, pg_read_all_data TO {}").format(
                sql.Identifier(LABCHECK_ROLE)
            )
        )
        conn.execute(
            sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(
                sql.Identifier(LABCHECK_ROLE)
            )
        )
        conn.execute(
            sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(DB_NAME))
        )
        conn.execute(
            sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(DB_NAME), sql.Identifier(APP_ROLE)
            )
        )
    # Both roles must be able to log in with the DSNs we hand out.
    for role, password in (
        (APP_ROLE, sec["app_db_password"]),
        (LABCHECK_ROLE, sec["labcheck_db_password"]),
    ):
        with _pg_connect(port, role, password, DB_NAME) as conn:
            conn.execute("SELECT 1")


def _stop_postgres(d: Path, pid: int | None) -> None:
    """Ask PostgreSQL for a fast shutdown (pg_ctl as postgres, else SIGINT to the postmaster)."""
    pgdata = d / "pgdata"
    pid = pid or _postmaster_pid(pgdata)
    if not pid_alive(pid, "postgres"):
        return
    sent = False
    if (pgdata / "postmaster.pid").exists():
        with contextlib.suppress(SandboxError):
            bindir = _pg_bindir()
            res = _run_pg_tool(
                d,
                [str(bindir / "pg_ctl"), "stop", "-W", "-m", "fast", "-D", str(pgdata)],
                "pg_ctl-stop",
                10.0,
            )
            sent = res.returncode == 0
    if not sent and pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGINT)


# ---------------------------------------------------------------- HTTP probes


def _http_ok(method: str, url: str, headers: dict[str, str] | None = None,
             verify: ssl.SSLContext | bool = True) -> bool:
    resp = httpx.request(method, url, headers=headers, timeout=_PROBE_TIMEOUT, verify=verify)
    return resp.status_code == 200


def _http_answers(url: str) -> bool:
    resp = httpx.get(url, timeout=_PROBE_TIMEOUT)
    return resp.status_code < 500


def _prom_has(prom_url: str, expr: str, want: str | None = None) -> bool:
    """Whether an instant query answers with a series (whose value is ``want``, when given)."""
    resp = httpx.get(f"{prom_url}/api/v1/query", params={"query": expr}, timeout=_PROBE_TIMEOUT)
    if resp.status_code != 200:
        return False
    result = resp.json().get("data", {}).get("result", [])
    return any(want is None or item.get("value", [None, None])[1] == want for item in result)


def _ready(state: dict[str, Any], name: str) -> bool:
    """One readiness probe of one service of a running sandbox (no waiting)."""
    svc = state.get("services", {}).get(name) or {}
    settings = state.get("settings", {})
    sec = state.get("secrets", {})
    try:
        if name == "postgres":
            host, _, port = svc["address"].rpartition(":")
            with socket.create_connection((host, int(port)), timeout=1.0):
                return True
        url = svc["url"]
        if name == "api":
            return _http_ok("GET", f"{url}/health")
        if name in ("prometheus", "pushgateway"):
            return _http_ok("GET", f"{url}/-/ready")
        if name == "moto":
            return _http_answers(f"{url}/moto-api/")
        if name == "s3gw":
            return _http_ok("HEAD", f"{url}/{settings.get('s3_bucket', BUCKET)}")
        if name == "kube":
            token = sec.get("kube_token", "")
            return _http_ok("GET", f"{url}/version", {"Authorization": f"Bearer {token}"},
                            verify=ssl.create_default_context(cafile=_kube_ca(Path(state["dir"]))))
    except (OSError, httpx.HTTPError, KeyError, ValueError):
        return False
    return False


# ---------------------------------------------------------------- the other services


def _seed_s3(moto_url: str, sec: dict[str, str]) -> None:
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name=REGION,
        aws_access_key_id=sec["aws_access_key_id"],
        aws_secret_access_key=sec["aws_secret_access_key"],
        config=Config(
            connect_timeout=2,
            read_timeout=10,
            retries={"max_attempts": 2},
            s3={"addressing_style": "path"},
        ),
    )
    s3.create_bucket(Bucket=BUCKET)
    # The same datasets the API would seed into an empty bucket (labcheck.sandbox.api).
    rows = "\n".join(
        json.dumps({"instruction": f"Summarise paragraph {i}.", "output": "..."}) for i in range(60)
    )
    jsonl = rows + "\n"
    objects = {
        "datasets/alpaca-cleaned/train.jsonl": jsonl,
        "datasets/alpaca-cleaned/README.md": "# alpaca-cleaned\nInstruction tuning set.\n",
        "datasets/mmlu/test.jsonl": jsonl[: len(jsonl) // 2],
    }
    for key, body in objects.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode())


def _make_token(jwt_secret: str) -> str:
    import jwt

    now = int(time.time())
    payload = {"sub": TEST_TOKEN_SUBJECT, "iat": now, "exp": now + TEST_TOKEN_LIFETIME_S}
    token = jwt.encode(payload, jwt_secret, algorithm="HS256")
    return token if isinstance(token, str) else token.decode()


def _kube_ca(d: Path) -> str:
    """The stand-in serves HTTPS with its own CA: kubectl sends a bearer token only over TLS."""
    return str(d / "kube-tls.crt")


def _write_kubeconfig(path: Path, server_url: str, token: str) -> None:
    from labcheck.sandbox.kube import write_kubeconfig

    write_kubeconfig(path, server_url=server_url, token=token, namespace=NAMESPACE,
                     ca_file=_kube_ca(path.parent))
    os.chmod(path, 0o600)


def _prometheus_config(d: Path, p: dict[str, int]) -> str:
    def job(name: str, port: int, honor: bool = False) -> str:
        lines = [f"  - job_name: {name}"]
        if honor:
            lines.append("    honor_labels: true")
        lines += ["    static_configs:", f'      - targets: ["{HOST}:{port}"]']
        return "\n".join(lines)

    return (
        "# Written by labcheck sandbox up; regenerated on every start.\n"
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        f"  query_log_file: {json.dumps(str(d / 'prometheus' / 'query.log'))}\n"
        "scrape_configs:\n"
        f"{job('api', p['api'])}\n"
        f"{job('pushgateway', p['pushgateway'], honor=True)}\n"
        f"{job('prometheus', p['prometheus'])}\n"
    )


def _binary(path: str, package: str) -> str:
    if Path(path).is_file() and os.access(path, os.X_OK):
        return path
    found = shutil.which(Path(path).name)
    if found:
        return found
    raise SandboxError(f"{path} not found: apt-get install {package}")


# ---------------------------------------------------------------- up


def _new_secrets() -> dict[str, str]:
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


def _dsn(user: str, password: str, port: int) -> str:
    return f"postgresql://{user}:{quote(password, safe='')}@{HOST}:{port}/{DB_NAME}"


def _serving(state: dict[str, Any], name: str) -> bool:
    """The service answers on its port at all: any HTTP status counts, so an injected fault
    (s3-outage's 503, kube's unauthorized) does not make a running sandbox look broken."""
    svc = state.get("services", {}).get(name) or {}
    try:
        if "url" in svc:
            verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=_kube_ca(Path(state["dir"])))
                                             if name == "kube" else True)
            httpx.request("HEAD" if name == "s3gw" else "GET", svc["url"], timeout=_PROBE_TIMEOUT,
                          verify=verify)
            return True
        host, _, port = svc["address"].rpartition(":")
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except (OSError, httpx.HTTPError, KeyError, ValueError):
        return False


def _healthy(state: dict[str, Any]) -> bool:
    """Every service recorded, settings written, every PID ours and alive and serving."""
    services = state.get("services", {})
    if set(services) != set(SERVICES) or not state.get("settings"):
        return False
    return all(
        pid_alive(services[name].get("pid"), name) and _serving(state, name) for name in SERVICES
    )


def up(
    *,
    dir: str | os.PathLike[str] | None = None,
    port_offset: int = 0,
    log_statements: bool = False,
    timeout: float = 90,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Bring the whole sandbox up (or find it already up) and return its state.

    Idempotent: a sandbox whose recorded processes are all alive and ready is returned as is
    (whatever port_offset says); a partial one is torn down first and started clean.
    """
    d = _resolve_dir(dir)
    say = progress or (lambda _msg: None)
    with _locked(d):
        try:
            existing = load_state(d)
        except SandboxError:  # unreadable: nothing to trust, start clean
            _state_path(d).unlink(missing_ok=True)
            existing = None
        if existing is not None:
            if _healthy(existing):
                say("sandbox already up")
                return existing
            say("sandbox partially up: stopping the leftovers first")
            _down_unlocked(d, existing)
        elif pid_alive(_postmaster_pid(d / "pgdata"), "postgres"):
            _down_unlocked(d, None)
        return _up_unlocked(d, port_offset, log_statements, timeout, say)


def _up_unlocked(
    d: Path,
    port_offset: int,
    log_statements: bool,
    timeout: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    prom_bin = _binary("/usr/bin/prometheus", "prometheus")
    pushgw_bin = _binary("/usr/bin/prometheus-pushgateway", "prometheus-pushgateway")
    _pg_bindir()
    p = ports(port_offset)
    busy = [f"{name}={port}" for name, port in p.items() if not _port_free(port)]
    if busy:
        raise SandboxError(
            f"ports already in use: {', '.join(busy)} (another sandbox? try --port-offset)"
        )

    # 1. directory, secrets, service configs
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, _dir_mode())
    (d / "logs").mkdir(exist_ok=True)
    os.chmod(d / "logs", _dir_mode())
    pg_ids = _pg_ids()
    if pg_ids:
        _check_traversable(d, *pg_ids)
    sec = _new_secrets()
    url = {name: f"http://{HOST}:{port}" for name, port in p.items()}
    url["kube"] = f"https://{HOST}:{p['kube']}"
    from labcheck.sandbox.kube import ensure_tls_files

    ensure_tls_files(_kube_ca(d), d / "kube-tls.key")
    kubeconfig = d / "kubeconfig"
    test_token = _make_token(sec["jwt_secret"])
    app_dsn = _dsn(APP_ROLE, sec["app_db_password"], p["postgres"])
    labcheck_dsn = _dsn(LABCHECK_ROLE, sec["labcheck_db_password"], p["postgres"])
    aws = {
        "aws_region": REGION,
        "aws_access_key_id": sec["aws_access_key_id"],
        "aws_secret_access_key": sec["aws_secret_access_key"],
    }
    configs = {
        "api": {
            "host": HOST,
            "port": p["api"],
            "dsn": app_dsn,
            # Opened in full at start, as production pools usually are: ten triage runs at once
            # on two cores must not see the pool still growing one connection at a time.
            "pool_min": 10,
            "pool_max": 10,
            "s3_endpoint": url["s3gw"],
            "cloudwatch_endpoint": url["moto"],
            "bucket": BUCKET,
            **aws,
            "jwt_secret": sec["jwt_secret"],
            "admin_key": sec["admin_key"],
            "quota_bytes": QUOTA_BYTES,
            "traffic_rps": 20,
            "state_dir": str(d),
        },
        "s3gw": {
            "host": HOST,
            "port": p["s3gw"],
            "upstream": url["moto"],
            "admin_key": sec["admin_key"],
            "bucket": BUCKET,
            "cloudwatch_endpoint": url["moto"],
            **aws,
            "requests_log": str(d / "s3-requests.jsonl"),
        },
        "kube": {
            "host": HOST,
            "port": p["kube"],
            "admin_key": sec["admin_key"],
            "token": sec["kube_token"],
            "namespace": NAMESPACE,
            "jwt_secret": sec["jwt_secret"],
            "requests_log": str(d / "kube-requests.jsonl"),
            "tls_cert": _kube_ca(d),
            "tls_key": str(d / "kube-tls.key"),
            "planted": {"db_password": sec["app_db_password"], "bearer": test_token},
        },
    }
    for name, cfg in configs.items():
        _write_json(d / f"{name}.json", cfg)

    state: dict[str, Any] = {
        "version": STATE_VERSION,
        "dir": str(d),
        "services": {},
        "settings": {},
        "secrets": {
            "admin_key": sec["admin_key"],
            "jwt_secret": sec["jwt_secret"],
            "app_db_password": sec["app_db_password"],
            "postgres_password": sec["postgres_password"],
            "labcheck_db_password": sec["labcheck_db_password"],
            "kube_token": sec["kube_token"],
        },
    }
    st = _Starter(d, state, deadline)
    st.save()
    try:
        # 2. PostgreSQL
        say(f"postgres on {HOST}:{p['postgres']}")
        _start_postgres(st, p["postgres"], sec, log_statements)

        # 3. moto, with the bucket and a few datasets
        say(f"moto on {url['moto']}")
        st.spawn(
            "moto",
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(p["moto"])],
            url=url["moto"],
        )
        st.wait("moto", lambda: _http_answers(f"{url['moto']}/moto-api/"), "moto to answer")
        try:
            _seed_s3(url["moto"], sec)
        except Exception as exc:
            raise SandboxError(
                f"seeding bucket {BUCKET} in moto failed: {_one_line(exc)}; see {st.log('moto')}"
            ) from None

        # 4. s3gw and kube (independent), then the API
        for name in ("s3gw", "kube", "api"):
            if name == "api":
                st.wait("s3gw", lambda: _ready(state, "s3gw"), "s3gw HEAD on the bucket")
                st.wait("kube", lambda: _ready(state, "kube"), "kube GET /version")
            say(f"{name} on {url[name]}")
            addr = {"url": url[name]}
            if name == "kube":
                addr["kubeconfig"] = str(kubeconfig)
            st.spawn(
                name,
                [
                    sys.executable,
                    "-m",
                    f"labcheck.sandbox.{name}",
                    "--config",
                    str(d / f"{name}.json"),
                ],
                **addr,
            )
        _write_kubeconfig(kubeconfig, url["kube"], sec["kube_token"])
        st.wait("api", lambda: _ready(state, "api"), "api GET /health")

        # 5./6. Prometheus and the Pushgateway
        prom_dir = d / "prometheus"
        if prom_dir.exists():
            shutil.rmtree(prom_dir)
        (prom_dir / "data").mkdir(parents=True)
        (prom_dir / "prometheus.yml").write_text(_prometheus_config(d, p))
        say(f"prometheus on {url['prometheus']}, pushgateway on {url['pushgateway']}")
        st.spawn(
            "prometheus",
            [
                prom_bin,
                f"--config.file={prom_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={prom_dir / 'data'}",
                f"--web.listen-address={HOST}:{p['prometheus']}",
            ],
            url=url["prometheus"],
        )
        st.spawn(
            "pushgateway",
            [pushgw_bin, f"--web.listen-address={HOST}:{p['pushgateway']}"],
            url=url["pushgateway"],
        )
        st.wait("pushgateway", lambda: _ready(state, "pushgateway"), "pushgateway /-/ready")
        st.wait("prometheus", lambda: _ready(state, "prometheus"), "prometheus /-/ready")
        st.wait(
            "prometheus",
            lambda: _prom_has(url["prometheus"], 'up{job="api"}', want="1"),
            'prometheus first scrape of the api (up{job="api"} == 1)',
        )
        # Up means ready to triage: the suite's rate queries need two scrapes of the API's
        # traffic inside the window, else a first run reports them UNKNOWN ("no data").
        rate = f"sum(rate(http_requests_total[{WINDOW}]))"
        st.wait("prometheus", lambda: _prom_has(url["prometheus"], rate), f"prometheus has {rate}")

        # 7./8. settings: the suite's configuration for this sandbox
        state["settings"] = {
            "api_url": url["api"],
            "prometheus_url": url["prometheus"],
            "pushgateway_url": url["pushgateway"],
            "database_url": labcheck_dsn,
            "s3_bucket": BUCKET,
            "s3_endpoint": url["s3gw"],
            "cloudwatch_endpoint": url["moto"],
            "aws_region": REGION,
            "aws_access_key_id": sec["aws_access_key_id"],
            "aws_secret_access_key": sec["aws_secret_access_key"],
            "kubeconfig": str(kubeconfig),
            "namespace": NAMESPACE,
            "test_token": test_token,
            "docs_url": f"{url['api']}/docs",
            "window": WINDOW,
            "s3_quota_bytes": QUOTA_BYTES,
            # Time is compressed in the sandbox: S3 error history is judged over a minute, not an hour.
            "s3_error_window": "1m",
        }
        st.save()
    except BaseException as exc:
        say("startup failed: stopping what was started")
        with contextlib.suppress(Exception):
            _down_unlocked(d, state)
        if isinstance(exc, SandboxError):
            raise
        if isinstance(exc, Exception):
            raise SandboxError(f"sandbox up failed: {_one_line(exc)}") from None
        raise
    return state


# ---------------------------------------------------------------- down


def _service_ports(state: dict[str, Any] | None) -> dict[str, int]:
    result: dict[str, int] = {}
    for name, svc in (state or {}).get("services", {}).items():
        addr = svc.get("address") or svc.get("url", "")
        tail = addr.rsplit(":", 1)[-1].split("/", 1)[0]
        if tail.isdigit():
            result[name] = int(tail)
    return result


def down(*, dir: str | os.PathLike[str] | None = None) -> None:
    """Stop every recorded process, wait until its ports are closed, remove state.json.

    Idempotent: with nothing running it does nothing. Logs are kept.
    """
    d = _resolve_dir(dir)
    if not d.exists():
        return
    with _locked(d):
        try:
            state = load_state(d)
        except SandboxError:  # unreadable: stop what pgdata/postmaster.pid still names
            state = None
        _down_unlocked(d, state)


def _down_unlocked(d: Path, state: dict[str, Any] | None) -> None:
    services = dict((state or {}).get("services", {}))
    pgdata_pid = _postmaster_pid(d / "pgdata")
    if "postgres" not in services and pid_alive(pgdata_pid, "postgres"):
        services["postgres"] = {"pid": pgdata_pid}
    targets = {
        name: svc["pid"]
        for name, svc in services.items()
        if isinstance(svc.get("pid"), int) and pid_alive(svc["pid"], name)
    }
    for name, pid in targets.items():
        if name == "postgres":
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    if "postgres" in targets:
        _stop_postgres(d, targets["postgres"])

    def all_gone() -> bool:
        return not any(pid_alive(pid, name) for name, pid in targets.items())

    try:
        poll(all_gone, deadline=time.monotonic() + _STOP_DEADLINE_S, what="processes to exit")
    except SandboxError:
        for name, pid in targets.items():
            if pid_alive(pid, name):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        poll(all_gone, deadline=time.monotonic() + 5.0, what="killed processes to exit")

    sandbox_ports = _service_ports(state)
    try:
        poll(
            lambda: not any(port_listening(port) for port in sandbox_ports.values()),
            deadline=time.monotonic() + _STOP_DEADLINE_S,
            what="the sandbox ports to close",
        )
    except SandboxError:
        pass  # reported below, port by port
    finally:
        _state_path(d).unlink(missing_ok=True)
    still = [f"{n}={p}" for n, p in sandbox_ports.items() if port_listening(p)]
    if still:
        raise SandboxError(f"processes stopped but ports still listening: {', '.join(still)}")


# ---------------------------------------------------------------- status


def status(dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """What runs where, with no secret in it (the DSN's password is masked)."""
    d = _resolve_dir(dir)
    state = load_state(d)
    if state is None:
        return {"dir": str(d), "running": False, "complete": False, "services": {}}
    services = {}
    for name in SERVICES:
        svc = state.get("services", {}).get(name)
        if svc is None:
            continue
        entry = {"pid": svc.get("pid"), "alive": pid_alive(svc.get("pid"), name)}
        for key in ("url", "address", "kubeconfig"):
            if key in svc:
                entry[key] = svc[key]
        services[name] = entry
    settings = state.get("settings", {})
    complete = set(services) == set(SERVICES) and bool(settings)
    return {
        "dir": str(d),
        "running": complete and all(s["alive"] for s in services.values()),
        "complete": complete,
        "services": services,
        "api_url": settings.get("api_url"),
        "docs_url": settings.get("docs_url"),
        "prometheus_url": settings.get("prometheus_url"),
        "pushgateway_url": settings.get("pushgateway_url"),
        "database_url": mask_dsn(settings.get("database_url", "")) or None,
        "s3_endpoint": settings.get("s3_endpoint"),
        "s3_bucket": settings.get("s3_bucket"),
        "cloudwatch_endpoint": settings.get("cloudwatch_endpoint"),
        "kubeconfig": settings.get("kubeconfig"),
        "namespace": settings.get("namespace"),
        "window": settings.get("window"),
    }


# ---------------------------------------------------------------- faults


def _require_running(d: Path) -> dict[str, Any]:
    state = load_state(d)
    if state is None or not state.get("settings"):
        raise SandboxError(f"no sandbox is up in {d} (run: labcheck sandbox up)")
    return state


def _admin(state: dict[str, Any], service: str, method: str, path: str, body: Any = None) -> Any:
    svc = state.get("services", {}).get(service) or {}
    base = svc.get("url")
    if not base:
        raise SandboxError(f"state.json has no url for {service}")
    url = f"{base}{path}"
    headers = {"X-Admin-Key": state.get("secrets", {}).get("admin_key", "")}
    try:
        verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=_kube_ca(Path(state["dir"])))
                                         if service == "kube" else True)
        with httpx.Client(timeout=_ADMIN_TIMEOUT, verify=verify) as client:
            resp = client.request(method, url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise SandboxError(
            f"{method} {url} failed: {type(exc).__name__}: {_one_line(exc, 160)}"
        ) from None
    if resp.status_code >= 400:
        raise SandboxError(
            f"{method} {url} answered {resp.status_code}: {_one_line(resp.text, 200)}"
        )
    if not resp.content:
        return None
    try:
        return resp.json()
    except ValueError:
        return resp.text


def parse_param_value(raw: str) -> Any:
    """A --param value: int, float, true/false, or the string itself."""
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def fault(
    name: str, params: dict[str, Any] | None = None, *, dir: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Inject fault `name` (README's table) with params; returns each service's answer."""
    if name not in FAULT_TARGETS:
        raise ValueError(f"unknown fault {name!r}; valid faults: {', '.join(ALL_FAULTS)}")
    params = dict(params or {})
    d = _resolve_dir(dir)
    _require_running(d)
    with _locked(d):
        state = _require_running(d)
        answers: dict[str, Any] = {}
        if name == "auth-secret-rotated":
            new_secret = secrets.token_urlsafe(32)
            for service in FAULT_TARGETS[name]:
                answers[service] = _admin(
                    state,
                    service,
                    "POST",
                    f"/admin/faults/{name}",
                    {**params, "new_secret": new_secret},
                )
            state.setdefault("secrets", {})["rotated_jwt_secret"] = new_secret
            _write_json(_state_path(d), state)
            return answers
        for service in FAULT_TARGETS[name]:
            answers[service] = _admin(state, service, "POST", f"/admin/faults/{name}", params)
        return answers


def heal(*, dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Clear every fault on api, kube and s3gw; returns each service's answer."""
    d = _resolve_dir(dir)
    _require_running(d)
    with _locked(d):
        state = _require_running(d)
        answers: dict[str, Any] = {}
        errors: list[str] = []
        for service in ("s3gw", "kube", "api"):  # storage first: the API's heal deletes quota filler
            try:
                answers[service] = _admin(state, service, "DELETE", "/admin/faults")
            except SandboxError as exc:
                errors.append(str(exc))
        if state.get("secrets", {}).pop("rotated_jwt_secret", None) is not None:
            _write_json(_state_path(d), state)
        if errors:
            raise SandboxError("heal incomplete: " + "; ".join(errors))
        return answers
