"""Read-only, proven from the target's side (issue 7, part 3).

Our own sandbox runs PostgreSQL with ``log_statement=all`` (``app=%a`` in the log prefix); the
Kubernetes stand-in and the S3 gateway log every request they serve; and the HTTP targets (the
API and its docs, Prometheus, the Pushgateway, CloudWatch) sit behind a recording reverse proxy
of this module, configured through a profile that is the sandbox's own settings with those URLs
swapped. Two full runs (healthy, then with faults so that evidence is collected and the replica
query runs) are then read back from those logs: nothing but reads.

Then the write canary, explicitly enabled: its objects are gone afterwards, also when it fails
halfway (the answer to its PUT is lost after the object was stored, its read-back answers 503, or
reads back other bytes), which a tampering proxy in front of the S3 gateway arranges.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from ownbox import clean_env, own_sandbox

REPO = Path(__file__).resolve().parents[2]
SANDBOX_DIR = Path("/tmp/lc-ro")
PORT_OFFSET = 1200
CANARY_PREFIX = "labcheck-canary/"
KUBE_USER_AGENT = "labcheck (kubernetes-client/python)"

State = dict[str, Any]


# --- a recording (and, on request, tampering) reverse proxy ----------------------------------

HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
               "host", "content-length"}
DROP = "drop"  # a tamper answer: forward the request, then close the connection without answering


@dataclass
class Seen:
    method: str
    path: str
    user_agent: str
    operation: str  # CloudWatch: the API operation (in the path, X-Amz-Target or Action=)
    status: int | None = None
    at: float = field(default_factory=time.time)


Tamper = Callable[[Seen], "tuple[int, bytes] | str | Callable[[bytes], bytes] | None"]


class Recorder:
    """Forwards every request to `upstream` and records it; `tamper` may answer instead."""

    def __init__(self, upstream: str, tamper: Tamper | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.tamper = tamper
        self.seen: list[Seen] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _any(self) -> None:
                body = self._body()
                seen = Seen(self.command, self.path, self.headers.get("User-Agent", ""),
                            _operation(self.path, self.headers.get("X-Amz-Target", ""), body))
                recorder.seen.append(seen)
                action = recorder.tamper(seen) if recorder.tamper else None
                if isinstance(action, tuple):
                    status, payload = action
                    seen.status = status
                    self._answer(status, [("Content-Type", "application/xml")], payload, len(payload))
                    return
                status, headers, payload = recorder.forward(self.command, self.path, self.headers.items(), body)
                seen.status = status
                if action == DROP:  # the target did it; the client never hears
                    self.close_connection = True
                    return
                if callable(action):
                    payload = action(payload)
                length = next((int(v) for k, v in headers if k.lower() == "content-length"), len(payload))
                self._answer(status, headers, payload, length if self.command == "HEAD" else len(payload))

            def _answer(self, status: int, headers: list[tuple[str, str]], payload: bytes, length: int) -> None:
                self.send_response_only(status)
                for key, value in headers:
                    if key.lower() not in HOP_HEADERS:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _any  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def forward(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=30)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", f"{self.upstream_host}:{self.upstream_port}")
            for key, value in headers:
                if key.lower() not in HOP_HEADERS:
                    conn.putheader(key, value)
            if body or method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _operation(path: str, target: str, body: bytes) -> str:
    """The AWS operation of a request: smithy-rpc-v2-cbor path, awsJson X-Amz-Target, or query Action=."""
    match = re.search(r"/operation/([A-Za-z]+)", path)
    if match:
        return match.group(1)
    if target:
        return target.rsplit(".", 1)[-1]
    if body[:7] == b"Action=" or b"&Action=" in body:
        return parse_qs(body.decode(errors="replace")).get("Action", [""])[0]
    return ""


# --- the sandbox, the runs and the logs ------------------------------------------------------


def _superuser(state: State) -> Any:
    import psycopg

    parts = urlsplit(state["settings"]["database_url"])
    return psycopg.connect(host=parts.hostname, port=parts.port, dbname=parts.path.lstrip("/"), user="postgres",
                           password=state["secrets"]["postgres_password"], connect_timeout=3, autocommit=True,
                           application_name="labcheck-tests")


@pytest.fixture(scope="module")
def box() -> Iterator[State]:
    with own_sandbox(SANDBOX_DIR, PORT_OFFSET, log_statements=True) as state:
        # The sandbox's labcheck role defaults to read-only transactions; take that away, so that
        # what is proven below is labcheck's own doing, as it must be against a role we do not control.
        with _superuser(state) as conn:
            conn.execute("ALTER ROLE labcheck RESET default_transaction_read_only")
        yield state


def write_profile(path: Path, settings: dict[str, Any], **overrides: Any) -> Path:
    """The sandbox's settings as a profile (TOML), with some targets swapped."""
    values = {**settings, **overrides}
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()
                            if isinstance(value, str | int | float)))
    return path


def run_checks(reports: Path, profile: Path, *extra: str, expect_rc: tuple[int, ...] = (0, 1)) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--reports-dir={reports}",
           "--profile", str(profile), *extra]
    if not any(a.startswith("checks") for a in extra):
        cmd.append("checks")
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode in expect_rc and "INTERNALERROR" not in out, out[-4000:]
    triage: dict[str, Any] = json.loads((reports / "triage.json").read_text())
    return triage


class Logs:
    """The sandbox's request and statement logs, read from a mark on."""

    FILES = {"postgres": "logs/postgres.log", "kube": "kube-requests.jsonl", "s3": "s3-requests.jsonl"}

    def __init__(self) -> None:
        self.marks = {name: self._size(name) for name in self.FILES}
        self.frozen: dict[str, str] = {}

    def _path(self, name: str) -> Path:
        return SANDBOX_DIR / self.FILES[name]

    def _size(self, name: str) -> int:
        path = self._path(name)
        return path.stat().st_size if path.exists() else 0

    def text(self, name: str) -> str:
        if name in self.frozen:
            return self.frozen[name]
        with open(self._path(name), "rb") as fh:
            fh.seek(self.marks[name])
            return fh.read().decode(errors="replace")

    def freeze(self) -> None:
        """Keep what was logged so far: later tests (a write probe, the canary) do not count."""
        self.frozen = {name: self.text(name) for name in self.FILES}

    def jsonl(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text(name).splitlines() if line.strip()]


_PG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[(?P<pid>\d+)\] app=(?P<app>\S*) "
                        r"user=(?P<user>\S*) (?P<level>[A-Z]+\d?):  (?P<message>.*)$")


@dataclass
class Statement:
    pid: int
    app: str
    user: str
    text: str


def pg_records(log: str) -> list[tuple[str, Statement]]:
    """(level, record) for every log record; a record's continuation lines are joined to it."""
    records: list[tuple[str, Statement]] = []
    for line in log.splitlines():
        match = _PG_RECORD.match(line)
        if match:
            records.append((match["level"], Statement(int(match["pid"]), match["app"], match["user"], match["message"])))
        elif records:
            records[-1][1].text += "\n" + line
    return records


def statements(log: str) -> list[Statement]:
    """The statements PostgreSQL logged (simple and extended protocol)."""
    out = []
    for level, record in pg_records(log):
        match = re.match(r"(?:statement|execute [^:]*):\s?(.*)", record.text, re.S) if level == "LOG" else None
        if match:
            out.append(Statement(record.pid, record.app, record.user, match.group(1)))
    return out


READ_STARTS = {"", "SELECT", "SHOW", "SET", "RESET", "BEGIN", "START", "COMMIT", "END", "ROLLBACK", "WITH", "VALUES",
               "EXPLAIN"}
# Anywhere outside literals and quoted identifiers: writes, DDL, privileges, maintenance, locks,
# and `FOR UPDATE`/`FOR SHARE` (row locks), `EXPLAIN ANALYZE` (it executes).
WRITE_WORDS = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE|UPSERT|CREATE|ALTER|DROP|TRUNCATE|COPY|GRANT|REVOKE|VACUUM|"
                         r"ANALYZE|CLUSTER|REINDEX|REFRESH|LOCK|CALL|DO|NOTIFY|PREPARE\s+TRANSACTION|SECURITY|"
                         r"SHARE|COMMENT|IMPORT|SECURITY\s+LABEL|LOAD)\b")
WRITE_FUNCTIONS = re.compile(r"\b(pg_terminate_backend|pg_cancel_backend|pg_reload_conf|pg_rotate_logfile|"
                             r"pg_switch_wal|pg_create_\w+|pg_drop_\w+|pg_advisory\w*lock\w*|nextval|setval|lo_\w+|"
                             r"dblink\w*|pg_file_write|pg_stat_reset\w*|pg_promote)\s*\(", re.I)
UNDO_READ_ONLY = re.compile(r"READ\s+WRITE|transaction_read_only\s*(=|TO)\s*'?(off|false|0|no)\b", re.I)


def _strip(sql: str) -> str:
    """The statement without comments, literals and quoted identifiers, upper-cased."""
    sql = re.sub(r"--[^\n]*|/\*.*?\*/", " ", sql, flags=re.S)
    sql = re.sub(r"\$(\w*)\$.*?\$\1\$|[EeBbXxNn]?'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"", " ? ", sql, flags=re.S)
    return sql.upper()


def write_problem(sql: str) -> str | None:
    """Why a statement is not a read, or None when it is one."""
    stripped = _strip(sql)
    first = (re.findall(r"[A-Z_]+", stripped) or [""])[0]
    if first not in READ_STARTS:
        return f"starts with {first}"
    if match := WRITE_WORDS.search(stripped):
        return f"contains {match.group(1)}"
    if match := WRITE_FUNCTIONS.search(sql):
        return f"calls {match.group(1)}()"
    if match := UNDO_READ_ONLY.search(sql):
        return f"undoes read-only ({match.group(0)})"
    return None


def test_the_read_check_itself() -> None:
    # The classifier is what the proofs below stand on: it must see a write wherever one hides.
    reads = ["SELECT 1", "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "SHOW max_connections", "",
             "SELECT 'DELETE FROM t' AS q, \"update\" FROM pg_stat_activity -- DROP TABLE x",
             "WITH a AS (SELECT 1) SELECT * FROM a", "SELECT n_tup_upd, n_tup_del FROM pg_stat_user_tables"]
    writes = ["INSERT INTO t VALUES (1)", "with x as (delete from t returning *) select * from x",
              "SELECT * FROM t FOR UPDATE", "SELECT pg_terminate_backend(42)", "select pg_cancel_backend (1)",
              "COPY t FROM '/tmp/x'", "CREATE TEMP TABLE x (i int)", "SET default_transaction_read_only = off",
              "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", "EXPLAIN ANALYZE DELETE FROM t",
              "SELECT nextval('s')", "GRANT ALL ON t TO x", "TRUNCATE t", "LOCK TABLE t"]
    assert [s for s in reads if write_problem(s)] == []
    assert [s for s in writes if not write_problem(s)] == []


@dataclass
class FullRuns:
    logs: Logs
    proxies: dict[str, Recorder]
    triages: list[dict[str, Any]]
    window: tuple[float, float]


@pytest.fixture(scope="module")
def full_runs(box: State, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FullRuns]:
    """Two full runs, writes canaries not enabled: the sandbox healthy, then faulted."""
    from labcheck.sandbox import manager

    tmp = tmp_path_factory.mktemp("read-only")
    s = box["settings"]
    proxies = {"api": Recorder(s["api_url"]), "prometheus": Recorder(s["prometheus_url"]),
               "pushgateway": Recorder(s["pushgateway_url"]), "cloudwatch": Recorder(s["cloudwatch_endpoint"])}
    profile = write_profile(tmp / "profile.toml", s, api_url=proxies["api"].url, docs_url=f"{proxies['api'].url}/docs",
                            prometheus_url=proxies["prometheus"].url, pushgateway_url=proxies["pushgateway"].url,
                            cloudwatch_endpoint=proxies["cloudwatch"].url)
    manager.heal(dir=SANDBOX_DIR)
    logs = Logs()
    started = time.time()
    triages = []
    try:
        triages.append(run_checks(tmp / "healthy", profile))
        for name in ("crash-loop", "error-rate", "long-query", "idle-in-transaction", "node-not-ready"):
            manager.fault(name, dir=SANDBOX_DIR)
        # The primary as the replica too: the replication query runs. Evidence is collected for
        # the failing checks (pod logs, events, rollout history).
        triages.append(run_checks(tmp / "faulted", profile, "--set", f"replica_url={s['database_url']}",
                                  "--set", "db_long_query_s=1", "--set", "db_idle_in_tx_max_s=1"))
    finally:
        manager.heal(dir=SANDBOX_DIR)
        logs.freeze()
    faulted = triages[1]
    assert faulted["severity"] is not None and any((tmp / "faulted" / "evidence").rglob("logs_*")), faulted["checks"]
    yield FullRuns(logs, proxies, triages, (started, time.time()))
    for proxy in proxies.values():
        proxy.close()


def test_postgres_sees_only_reads_from_labcheck(full_runs: FullRuns) -> None:
    log = full_runs.logs.text("postgres")
    ours = [st for st in statements(log) if st.app == "labcheck" or st.user == "labcheck"]
    problems = [f"[{st.pid}] {why}: {st.text[:300]}" for st in ours if (why := write_problem(st.text))]
    assert not problems, "\n".join(problems)
    # Every labcheck session made itself read-only before anything else (the role does not).
    first: dict[int, str] = {}
    for st in ours:
        first.setdefault(st.pid, " ".join(st.text.split()))
    assert first and set(first.values()) == {"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"}, first
    # Not a vacuous pass: the snapshot, the settings and the replica query were all among them.
    joined = "\n".join(st.text for st in ours)
    for fragment in ("FROM pg_stat_activity", "current_setting('max_connections')", "pg_is_in_recovery()"):
        assert fragment in joined, f"{fragment} not among labcheck's {len(ours)} statements"
    refused = [r.text for level, r in pg_records(log) if level == "ERROR" and r.app == "labcheck"
               and "read-only transaction" in r.text]
    assert not refused, refused
    print(f"postgres: {len(ours)} statements from {len(first)} labcheck sessions, all reads")


def test_labcheck_session_refuses_writes(box: State) -> None:
    # The probe's own session, against a role that is not read-only: labcheck makes it so.
    # (tests/checks/test_database.py::test_session_is_read_only_and_bounded checks its bounds.)
    from labcheck import config
    from labcheck.components.database import Database
    from labcheck.errors import ProbeBadResponse
    from labcheck.evidence import Redactor
    from labcheck.lab import Lab

    with _superuser(box) as conn:
        role = conn.execute("SELECT rolconfig FROM pg_roles WHERE rolname = 'labcheck'").fetchone()
    assert role == (None,), role
    settings = config.load(cli={"database_url": (box["settings"]["database_url"], "test")}, environ={},
                           use_sandbox=False)
    lab = Lab(settings, redactor=Redactor(settings.secrets))
    try:
        session = Database(lab).session()
        shown = session.run(lambda c: c.execute(
            "SELECT current_setting('transaction_read_only'), setting FROM pg_settings"
            " WHERE name = 'default_transaction_read_only'").fetchone(), "settings")
        assert shown == ("on", "on"), shown
        for write in ("CREATE TABLE labcheck_write_probe (x int)", "INSERT INTO experiments (name) VALUES ('x')",
                      "DELETE FROM experiments"):
            with pytest.raises(ProbeBadResponse, match="ReadOnlySqlTransaction|read-only"):
                session.run(lambda c, sql=write: c.execute(sql), "a write")
    finally:
        lab.close()


def test_kubernetes_sees_only_get_list_watch(full_runs: FullRuns) -> None:
    requests = full_runs.logs.jsonl("kube")
    ours = [r for r in requests if r["user_agent"] == KUBE_USER_AGENT]
    others = [r for r in requests if r["user_agent"] != KUBE_USER_AGENT]
    assert not others, f"requests from something else during the runs: {others[:5]}"
    bad = [r for r in ours if r["method"] != "GET" or r["verb"] not in ("get", "list", "watch")]
    assert not bad, bad
    verbs = {r["verb"] for r in ours}
    assert "list" in verbs and any("/log" in r["path"] for r in ours), "pods listed and logs read"
    print(f"kubernetes: {len(ours)} requests from labcheck, verbs {sorted(verbs)}")


def test_http_targets_see_only_get_and_head(full_runs: FullRuns) -> None:
    counts = {}
    for name in ("api", "prometheus", "pushgateway"):
        seen = full_runs.proxies[name].seen
        bad = [(s.method, s.path, s.user_agent) for s in seen if s.method not in ("GET", "HEAD")]
        assert not bad, f"{name}: {bad}"
        counts[name] = len(seen)
    assert counts["api"] > 0 and counts["prometheus"] > 0, counts
    assert {s.path.split("?")[0] for s in full_runs.proxies["api"].seen} >= {"/health", "/docs"}
    # CloudWatch's protocols send every call, reads included, as a POST: the operation must be a read.
    calls = full_runs.proxies["cloudwatch"].seen
    assert calls, "CloudWatch was asked for the S3 request metrics"
    bad_calls = [(s.method, s.operation) for s in calls if not re.match(r"(Get|List|Describe)[A-Z]", s.operation)]
    assert not bad_calls, bad_calls
    counts["cloudwatch"] = len(calls)
    print(f"http: requests seen per target {counts}; CloudWatch operations {sorted({s.operation for s in calls})}")


def _is_labcheck_s3(entry: dict[str, Any]) -> bool:
    return "labcheck" in entry["user_agent"].split()


def test_s3_sees_only_head_get_list(full_runs: FullRuns) -> None:
    requests = full_runs.logs.jsonl("s3")
    ours = [r for r in requests if _is_labcheck_s3(r)]
    assert ours, "labcheck's requests are in the gateway's log"
    bad = [(r["method"], r["path"], r["query"]) for r in ours if r["method"] not in ("GET", "HEAD")]
    assert not bad, bad
    assert not [r for r in ours if CANARY_PREFIX in r["path"]]
    listed = [r for r in ours if r["method"] == "GET" and "list-type=2" in r["query"]]
    assert listed, "the bucket was listed"
    print(f"s3: {len(ours)} requests from labcheck ({len(listed)} lists), "
          f"{len(requests) - len(ours)} from the platform API")


# --- the write canary, explicitly enabled ----------------------------------------------------


def canary_objects(state: State) -> list[str]:
    """Objects under labcheck-canary/, read from moto itself (behind the gateway and any proxy)."""
    import boto3

    s = state["settings"]
    client = boto3.client("s3", endpoint_url=state["services"]["moto"]["url"], region_name=s["aws_region"],
                          aws_access_key_id=s["aws_access_key_id"], aws_secret_access_key=s["aws_secret_access_key"])
    listing = client.list_objects_v2(Bucket=s["s3_bucket"], Prefix=CANARY_PREFIX)
    return [o["Key"] for o in listing.get("Contents", [])]


def test_write_canary_cleans_up(box: State, tmp_path: Path) -> None:
    from labcheck.sandbox import manager

    s = box["settings"]
    api = Recorder(s["api_url"])
    try:
        profile = write_profile(tmp_path / "profile.toml", s, api_url=api.url, docs_url=f"{api.url}/docs",
                                canary_writes=True)
        manager.heal(dir=SANDBOX_DIR)
        logs = Logs()
        triage = run_checks(tmp_path / "reports", profile)
    finally:
        api.close()
    outcomes = {c["nodeid"].split("::")[1]: c["outcome"] for c in triage["checks"]}
    assert outcomes["check_write_canary"] == "passed", outcomes
    ours = [r for r in logs.jsonl("s3") if _is_labcheck_s3(r)]
    writes = [(r["method"], r["path"]) for r in ours if r["method"] not in ("GET", "HEAD")]
    keys = {path.split(CANARY_PREFIX, 1)[1] for _, path in writes if CANARY_PREFIX in path}
    assert len(keys) == 1 and sorted(m for m, _ in writes) == ["DELETE", "PUT"], writes
    assert canary_objects(box) == []
    # The experiment canary is the one write to the API: a dry run.
    api_writes = [(x.method, x.path) for x in api.seen if x.method not in ("GET", "HEAD")]
    assert [m for m, p in api_writes if not (m == "POST" and p == "/experiments?dry_run=true")] == [], api_writes
    print(f"write canary: S3 {writes}; API {api_writes}")


def _canary_get(seen: Seen) -> bool:
    return seen.method == "GET" and CANARY_PREFIX in seen.path


SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")
HALFWAY: dict[str, tuple[Tamper, str]] = {
    # The object is stored, but the answer never reaches labcheck (it retries once, then gives up).
    "put-answer-lost": (lambda s: DROP if s.method == "PUT" and CANARY_PREFIX in s.path else None, "put failed"),
    # Stored; reading it back answers 503 SlowDown (on the retry too).
    "get-503": (lambda s: (503, SLOW_DOWN) if _canary_get(s) else None, "get failed"),
    # Stored; reading it back returns other bytes.
    "get-corrupt": (lambda s: (lambda body: body[::-1]) if _canary_get(s) else None, "differ from"),
}


@pytest.mark.parametrize("how", sorted(HALFWAY))
def test_write_canary_failing_halfway_leaves_nothing(box: State, tmp_path: Path, how: str) -> None:
    tamper, words = HALFWAY[how]
    s = box["settings"]
    proxy = Recorder(s["s3_endpoint"], tamper)
    try:
        profile = write_profile(tmp_path / "profile.toml", s, s3_endpoint=proxy.url, canary_writes=True)
        triage = run_checks(tmp_path / "reports", profile, "checks/storage.py", "-k", "write_canary")
    finally:
        proxy.close()
    (check,) = triage["checks"]
    assert check["outcome"] == "failed" and words in check["message"], check
    canary = [x for x in proxy.seen if CANARY_PREFIX in x.path]
    # The object was stored (the target answered the PUT with 200), then deleted (204).
    assert any(x.method == "PUT" and x.status == 200 for x in canary), canary
    assert canary[-1].method == "DELETE" and canary[-1].status == 204, canary
    assert len({x.path for x in canary}) == 1, canary
    assert canary_objects(box) == []
    print(f"{how}: {[(x.method, x.status) for x in canary]}")
