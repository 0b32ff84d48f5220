"""The sandbox's PostgreSQL: initdb, pg_ctl start and stop, the database and its roles."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from labcheck.sandbox.processes import Starter, open_log, pid_alive, poll
from labcheck.sandbox.state import HOST, SandboxError, one_line, write_private

__all__ = ["APP_ROLE", "DB_NAME", "LABCHECK_ROLE", "start_postgres", "stop_postgres"]


DB_NAME = "llm_research"
APP_ROLE = "llm_app"
LABCHECK_ROLE = "labcheck"
PG_SUPERUSER = "postgres"


def pg_bindir() -> Path:
    """The directory of initdb and pg_ctl: $LABCHECK_PG_BINDIR, PATH, or the newest installed."""
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


def pg_ids() -> tuple[int, int] | None:
    """(uid, gid) of the postgres OS user when we run as root, else None."""
    runas = _pg_runas()
    return (runas["user"], runas["group"]) if runas else None


def check_traversable(path: Path, uid: int, gid: int) -> None:
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
    with open_log(d, log_name) as log:
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
            raise SandboxError(f"cannot run {argv[0]}: {one_line(exc)}") from None


def postmaster_pid(pgdata: Path) -> int | None:
    """The PID postgres wrote into pgdata/postmaster.pid, if any."""
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


def start_postgres(st: Starter, port: int, sec: dict[str, str], log_statements: bool) -> None:
    d = st.d
    bindir = pg_bindir()
    pgdata = d / "pgdata"
    ids = pg_ids()
    if pgdata.exists():
        shutil.rmtree(pgdata)
    pgdata.mkdir(mode=0o700)
    pwfile = d / ".pg-superuser-password"
    write_private(pwfile, sec["postgres_password"] + "\n")
    server_log = d / "logs" / "postgres.log"
    open_log(d, "postgres").close()
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
        lambda: postmaster_pid(pgdata),
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
            f"creating the database and roles failed: {one_line(exc)}; see {server_log}"
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


def stop_postgres(d: Path, pid: int | None) -> None:
    """Ask PostgreSQL for a fast shutdown (pg_ctl as postgres, else SIGINT to the postmaster)."""
    pgdata = d / "pgdata"
    pid = pid or postmaster_pid(pgdata)
    if not pid_alive(pid, "postgres"):
        return
    sent = False
    if (pgdata / "postmaster.pid").exists():
        with contextlib.suppress(SandboxError):
            bindir = pg_bindir()
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


def dsn(user: str, password: str, port: int) -> str:
    """A DSN for user on the sandbox database (the password URL-quoted)."""
    return f"postgresql://{user}:{quote(password, safe='')}@{HOST}:{port}/{DB_NAME}"
