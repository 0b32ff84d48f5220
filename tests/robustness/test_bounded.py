"""Bounded triage (issue 6), behaviour not timing: a total outage, the triage deadline, what -m sev1 fetches,
lazy imports and xdist.

Times are checked against bounds, never goals: a hung target costs the run about one probe timeout
(not one per check), and the run-wide deadline cuts even the waits already under way. The bounds
are measured against a baseline run on the same machine, so a loaded machine does not fail them.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hostile
import pytest
from ownbox import Run, assert_written, clean_env, own_sandbox, run_checks

from standin import unsigned_jwt

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 2  # --probe-timeout of the outage runs, seconds
DEADLINE = 2  # --triage-deadline of the deadline run, seconds
LONG_TIMEOUT = 60  # --probe-timeout of the deadline run: a wait the deadline does not cut shows plainly
SANDBOX_DIR = Path("/tmp/lc-bound")
PORT_OFFSET = 1400
HEAVY = ("kubernetes", "boto3", "botocore", "psycopg")
CLIENTS = (*HEAVY, "httpx")  # every client library: --collect-only imports none of them
TARGETS = ("api", "prometheus", "kube", "s3", "cloudwatch", "postgres")
TIMED_OUT = re.compile(r"timed out after \d+(\.\d+)? s|no complete answer within \d+ s")
# Which hung targets the checks of each module may name (the API also serves /docs and /metrics).
MODULE_TARGETS = {
    "api_gateway.py": {"api", "prometheus"},
    "auth.py": {"api", "prometheus", "kube"},
    "database.py": {"postgres", "api"},
    "docs.py": {"api"},
    "experiments.py": {"api", "kube"},
    "kubernetes.py": {"kube"},
    "logs.py": {"kube"},
    "metrics.py": {"prometheus"},
    "saturation.py": {"kube", "prometheus"},  # PodMetrics, else the cAdvisor series
    "storage.py": {"s3", "cloudwatch", "api"},
}
NOT_CONFIGURED = {"check_replication_lag"}  # no replica_url: UNKNOWN, not configured

# Records, in every pytest process (controller and xdist workers), which heavy client libraries it imported.
HEAVY_PROBE = f'''
import json, os, sys
def pytest_unconfigure(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "controller")
    path = os.path.join(os.environ["HEAVY_OUT"], "heavy-" + worker + ".json")
    with open(path, "w") as fh:
        json.dump(sorted(m for m in {CLIENTS!r} if m in sys.modules), fh)
'''


# --- running the suite ---------------------------------------------------------------------------


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: outage\n"
        f"clusters: [{{name: outage, cluster: {{server: '{server}', insecure-skip-tls-verify: true}}}}]\n"
        "users: [{name: outage, user: {token: not-a-real-token}}]\n"
        "contexts: [{name: outage, context: {cluster: outage, user: outage, namespace: llm-research}}]\n")
    return path


def target_env(tmp: Path, ports: dict[str, int], *, kube_scheme: str = "http") -> dict[str, str]:
    """Every target configured, each at its own loopback port, with credentials so nothing stops early."""
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    return clean_env(
        LABCHECK_API_URL=url["api"],
        LABCHECK_DOCS_URL=url["api"] + "/docs",
        LABCHECK_PROMETHEUS_URL=url["prometheus"],
        LABCHECK_S3_ENDPOINT=url["s3"],
        LABCHECK_CLOUDWATCH_ENDPOINT=url["cloudwatch"],
        LABCHECK_S3_BUCKET="llm-research-datasets",
        LABCHECK_S3_QUOTA_BYTES="1000000000",  # the quota is known, so usage (listing, CloudWatch) is asked
        LABCHECK_AWS_ACCESS_KEY_ID="AKIAOUTAGE",
        LABCHECK_AWS_SECRET_ACCESS_KEY="outage-secret-key",
        LABCHECK_DATABASE_URL=f"postgresql://labcheck:outage@127.0.0.1:{ports['postgres']}/llm_research",
        LABCHECK_TEST_TOKEN=unsigned_jwt(),  # JWT-shaped and unexpired: labcheck reads exp before use
        KUBECONFIG=str(kubeconfig(tmp / f"kubeconfig-{kube_scheme}",
                                  f"{kube_scheme}://127.0.0.1:{ports['kube']}")),
    )


@pytest.fixture
def hang() -> Iterator[Callable[[], hostile.Server]]:
    """Listeners that accept and never answer (PostgreSQL: never completes the handshake; https: the TLS one)."""
    servers: list[hostile.Server] = []

    def start() -> hostile.Server:
        servers.append(hostile.Server(hostile.hang))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> float:
    """Wall time of the full suite when every target refuses at once: start-up, collection and reporting,
    with nothing to wait for. The outage runs are bounded against it."""
    tmp = tmp_path_factory.mktemp("refused")
    port = hostile.closed_port()
    run = run_checks(tmp / "reports", target_env(tmp, dict.fromkeys(TARGETS, port)), "--no-sandbox",
                     "--probe-timeout", str(TIMEOUT))
    data = assert_written(run)
    assert not [c["nodeid"] for c in data["checks"] if c["outcome"] == "passed"]
    print(f"\nbaseline (every target refuses): {run.elapsed:.2f} s")
    return run.elapsed


# --- 1. total outage ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kube_scheme", ["http", "https"])
def test_total_outage_every_check_times_out_naming_its_target(
        tmp_path: Path, hang: Callable[[], hostile.Server], baseline: float, kube_scheme: str,
        record_property: Callable[[str, object], None]) -> None:
    servers = {name: hang() for name in TARGETS}
    ports = {name: s.port for name, s in servers.items()}
    run = run_checks(tmp_path / "reports", target_env(tmp_path, ports, kube_scheme=kube_scheme), "--no-sandbox",
                     "--probe-timeout", str(TIMEOUT))
    data = assert_written(run)
    checks = run.checks()
    assert len(checks) >= 50, sorted(checks)
    for nodeid, check in checks.items():
        name = nodeid.split("::")[1].split("[")[0]
        # A check that passes while every target hangs is a bug.
        assert check["outcome"] in ("unknown", "failed"), check
        message = check["message"] or ""
        assert "\n" not in message.split("; threshold")[0], check
        if name in NOT_CONFIGURED:
            assert check["outcome"] == "unknown" and "no replica configured" in message, check
            continue
        assert TIMED_OUT.search(message), check
        named = {t for t, port in ports.items() if f"127.0.0.1:{port}" in message}
        module = Path(nodeid.split("::")[0]).name
        assert named & MODULE_TARGETS[module], (check, named)
    assert data["severity"] == "SEV-1"
    # The affected checks that fail rather than go UNKNOWN: the target not answering is the condition.
    failed = {n.split("::")[1] for n, c in checks.items() if c["outcome"] == "failed"}
    assert {"check_health_answers_within_budget", "check_database_accepts_connections",
            "check_bucket_reachable"} <= failed, failed
    # A bound, not a speed goal: the probes hang concurrently and each target's first timeout fails
    # the rest of its facts at once, so the outage adds about one timeout to the refused run.
    record_property("outage_s", round(run.elapsed, 2))
    print(f"\noutage ({kube_scheme} Kubernetes API): {run.elapsed:.2f} s; baseline {baseline:.2f} s")
    assert run.elapsed < baseline + 4 * TIMEOUT, (run.elapsed, baseline)


# --- 2. the triage deadline --------------------------------------------------------------------------


def test_triage_deadline_cuts_waits_already_under_way(
        tmp_path: Path, hang: Callable[[], hostile.Server], baseline: float,
        record_property: Callable[[str, object], None]) -> None:
    servers = {name: hang() for name in TARGETS}
    env = target_env(tmp_path, {name: s.port for name, s in servers.items()}, kube_scheme="https")
    run = run_checks(tmp_path / "reports", env, "--no-sandbox", "--probe-timeout", str(LONG_TIMEOUT),
                     "--triage-deadline", str(DEADLINE), timeout=LONG_TIMEOUT * 3)
    data = assert_written(run)
    checks = run.checks()
    assert len(checks) >= 50
    # Nothing answers within the deadline: the check waiting when it passes and every check after it
    # are UNKNOWN, and the verdict still says so.
    for check in checks.values():
        assert check["outcome"] == "unknown", check
        assert check["message"] == "deadline reached before this check could finish", check
    assert data["sev1_blind"] is True
    record_property("deadline_run_s", round(run.elapsed, 2))
    print(f"\ntriage deadline {DEADLINE} s, probe timeout {LONG_TIMEOUT} s: {run.elapsed:.2f} s; "
          f"baseline {baseline:.2f} s")
    # Had any wait outlived the deadline, the run would have taken a probe timeout (60 s) at least.
    assert run.elapsed < baseline + DEADLINE + 4 * TIMEOUT, (run.elapsed, baseline)


# --- 4. lazy imports ---------------------------------------------------------------------------------


def heavy_imports(tmp: Path, env: dict[str, str], *args: str) -> tuple[Run, dict[str, list[str]]]:
    """Run pytest with a plugin that records, per process, which heavy client libraries are imported."""
    (tmp / "heavyprobe.py").write_text(HEAVY_PROBE)
    out = tmp / "heavy"
    out.mkdir()
    env = {**env, "PYTHONPATH": os.pathsep.join([str(tmp), env.get("PYTHONPATH", "")]), "HEAVY_OUT": str(out)}
    run = run_checks(tmp / "reports", env, "-p", "heavyprobe", *args)
    found = {p.stem.removeprefix("heavy-"): json.loads(p.read_text()) for p in out.glob("heavy-*.json")}
    assert "controller" in found, run.output[-3000:]
    return run, found


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["n0", "n2"])
def test_collect_only_imports_no_client_library(tmp_path: Path, xdist: list[str]) -> None:
    port = hostile.closed_port()
    env = target_env(tmp_path, dict.fromkeys(TARGETS, port))
    run, found = heavy_imports(tmp_path, env, "--no-sandbox", "--collect-only", *xdist, "checks")
    assert run.proc.returncode == 0, run.output[-3000:]
    assert "check_deployment_has_a_ready_pod" in run.proc.stdout and "check_s3_request_errors" in run.proc.stdout
    assert found == {name: [] for name in found}, found


def test_a_run_imports_a_client_library_only_for_a_configured_target(tmp_path: Path) -> None:
    # The whole suite runs with only the API and Prometheus configured: the database, Kubernetes and
    # S3 checks are UNKNOWN (not configured) without importing psycopg, kubernetes or boto3 -- even
    # the Kubernetes evidence collected for the failing API checks.
    url = f"http://127.0.0.1:{hostile.closed_port()}"
    env = clean_env(LABCHECK_API_URL=url, LABCHECK_PROMETHEUS_URL=url)
    run, found = heavy_imports(tmp_path, env, "--no-sandbox", "--probe-timeout", str(TIMEOUT), "checks")
    data = assert_written(run)
    outcomes = Counter(c["outcome"] for c in data["checks"])
    assert outcomes["failed"] >= 1 and outcomes["unknown"] >= 40, outcomes
    assert found == {"controller": ["httpx"]}, found  # the API and Prometheus are asked over HTTP


# --- prefetch starts what the facades declare ------------------------------------------------------------


# The checks' component markers are registered only in a labcheck run, not in this one.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")
def test_every_fixture_the_checks_ask_questions_of_declares_its_facts() -> None:
    # Prefetch starts what the facades declare (@component, @fact): every fixture a check asks
    # questions of is such a facade, and every public getter of it carries a declaration (the class
    # definition refuses one without). Each check names at least one getter of every facade it asks:
    # one that named none would make the prefetch start all of that facade's facts.
    from labcheck import components
    from labcheck.prefetch import COMPONENTS, FACT_ATTR, names_read

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    for module_name in components.modules():
        importlib.import_module(module_name)
    facades = {"api", "db", "db_pool", "kube", "s3", "prom", "auth_signals", "experiments", "docs_site",
               "history", "experiment_canary", "usage"}
    assert facades <= set(COMPONENTS), sorted(facades - set(COMPONENTS))
    for fixture, registered in COMPONENTS.items():
        getters = [n for n, m in inspect.getmembers(registered.cls, inspect.isfunction) if not n.startswith("_")]
        assert getters and all(hasattr(getattr(registered.cls, n), FACT_ATTR) for n in getters), fixture
    seen: Counter[str] = Counter()
    for path in sorted((REPO / "checks").glob("[a-z]*.py")):
        module = importlib.import_module(f"checks.{path.stem}")
        for name, fn in vars(module).items():
            if not name.startswith("check_") or not callable(fn):
                continue
            for fixture in (p for p in inspect.signature(fn).parameters if p in COMPONENTS):
                seen[fixture] += 1
                read = names_read(fn) & set(COMPONENTS[fixture].getters)
                assert read, f"{path.name}::{name} names no declared getter of {fixture}"
    assert facades <= set(seen), sorted(facades - set(seen))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")
def test_prefetch_starts_the_api_paths_the_checks_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # A check that names its own path (api.attempt("/datasets")) has it started with every other fact
    # when collection ends, not when the check runs: under a slow API that wait would follow the others.
    from labcheck.components.api_gateway import Api
    from labcheck.prefetch import COMPONENTS, Use, literals_read, names_read, starters
    from labcheck.probes import http

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    auth, storage = importlib.import_module("checks.auth"), importlib.import_module("checks.storage")
    started: list[str] = []
    monkeypatch.setattr(http, "start", lambda lab, url, **kw: started.append(url))
    lab: Any = type("FakeLab", (), {"settings": type("S", (), {"api_url": "http://api.test"})()})()
    uses = [Use(check=fn.__name__, names=names_read(fn), literals=literals_read(fn))
            for fn in (storage.check_datasets_endpoint_answers, auth.check_request_without_token_rejected)]
    for start, readers in starters(COMPONENTS["api"], uses):
        start(Api(lab), readers)
    # (/health too: the datasets check asks it whether the API answers at all before blaming storage.)
    assert sorted(started) == ["http://api.test/datasets", "http://api.test/experiments",
                               "http://api.test/health"], started


# --- 3 and 5. against our own sandbox ----------------------------------------------------------------


@dataclass
class Footprint:
    """What one run asked of the sandbox, counted on the sandbox's side."""

    queries: list[str]  # PromQL, from Prometheus's query log
    kube: list[dict[str, Any]]  # requests labcheck made to the Kubernetes stand-in
    s3: list[dict[str, Any]]  # requests labcheck made through the S3 gateway

    def kube_lists(self) -> Counter[str]:
        # The metrics API's pods (PodMetrics) are kept apart from the core pods, as kubectl names them.
        return Counter(f"{r['resource']}.{r['api_group']}" if str(r.get("api_group", "")).endswith(".k8s.io")
                       else r["resource"] for r in self.kube if r.get("verb") == "list")


class SandboxLogs:
    """The sandbox's request logs from a mark on: Prometheus queries, Kubernetes and S3 requests."""

    def __init__(self, state: dict[str, Any]) -> None:
        d = Path(state["dir"])
        self.files = {"prom": d / "prometheus" / "query.log", "kube": d / "kube-requests.jsonl",
                      "s3": d / "s3-requests.jsonl"}
        self.marks = {k: p.stat().st_size if p.exists() else 0 for k, p in self.files.items()}

    def _lines(self, key: str) -> list[dict[str, Any]]:
        path = self.files[key]
        if not path.exists():
            return []
        with path.open("rb") as fh:
            fh.seek(self.marks[key])
            data = fh.read().decode("utf-8", errors="replace")
        out = []
        for line in data.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def read(self) -> Footprint:
        queries = [str(e["params"]["query"]) for e in self._lines("prom") if "query" in e.get("params", {})]
        kube = [e for e in self._lines("kube") if "labcheck" in str(e.get("user_agent", ""))]
        s3 = [e for e in self._lines("s3") if str(e.get("user_agent", "")).endswith("labcheck")]
        return Footprint(queries, kube, s3)

    def wait_for(self, done: Callable[[Footprint], bool], deadline_s: float = 10) -> Footprint:
        """The footprint once ``done`` holds (the logs are written as the answers go out), or at the deadline."""
        end = time.monotonic() + deadline_s
        while True:
            found = self.read()
            if done(found) or time.monotonic() > end:
                return found
            time.sleep(0.1)  # polling a file another process appends to, under a deadline


@pytest.fixture(scope="module")
def bound_sandbox() -> Iterator[dict[str, Any]]:
    """Our own sandbox (not the shared one), stopped at the end of the module."""
    with own_sandbox(SANDBOX_DIR, PORT_OFFSET) as state:
        yield state


def sandbox_env() -> dict[str, str]:
    return clean_env(LABCHECK_SANDBOX_DIR=str(SANDBOX_DIR))


def rate_queries(window: str) -> set[str]:
    """All of Prometheus the sev1 checks read: the signal map's one detection query, then the API
    5xx-ratio queries through the map it finds (the playbook's, on the sandbox)."""
    from labcheck.signals import detection_query

    return {detection_query({}),
            f'sum by (path) (rate(http_requests_total{{path!="",status!="",status=~"5[0-9][0-9]"}}[{window}]))',
            f'sum by (path) (rate(http_requests_total{{path!="",status!=""}}[{window}]))'}


@pytest.fixture(scope="module")
def full_run(bound_sandbox: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Footprint]:
    """The whole suite, -n 0, on the healthy sandbox, with what it asked of the sandbox."""
    logs = SandboxLogs(bound_sandbox)
    run = run_checks(tmp_path_factory.mktemp("full") / "reports", sandbox_env())
    assert_written(run)
    window = bound_sandbox["settings"]["window"]
    footprint = logs.wait_for(lambda f: rate_queries(window) <= set(f.queries) and bool(f.kube))
    print(f"\nfull suite -n 0 on the sandbox: {run.elapsed:.2f} s, {len(footprint.queries)} PromQL queries "
          f"({len(set(footprint.queries))} distinct), Kubernetes lists {dict(footprint.kube_lists())}, "
          f"{len(footprint.s3)} S3 requests")
    return run, footprint


def test_sev1_runs_no_probe_only_other_checks_need(bound_sandbox: dict[str, Any], tmp_path: Path) -> None:
    logs = SandboxLogs(bound_sandbox)
    run, found = heavy_imports(tmp_path, sandbox_env(), "-m", "sev1")
    data = assert_written(run)
    assert run.proc.returncode == 0 and {c["outcome"] for c in data["checks"]} == {"passed"}, run.output[-3000:]
    # Only the clients its checks use: no sev1 check reads the bucket, so boto3 is never imported; the
    # Kubernetes checks go over httpx, and the sandbox's kubeconfig holds its own credentials, so the
    # kubernetes client is not imported either.
    assert found == {"controller": ["httpx", "psycopg"]}, found
    wanted = rate_queries(bound_sandbox["settings"]["window"])
    footprint = logs.wait_for(lambda f: wanted <= set(f.queries))
    print(f"\n-m sev1 on the sandbox: {run.elapsed:.2f} s, PromQL {Counter(footprint.queries)}, "
          f"Kubernetes {Counter((r['verb'], r['resource']) for r in footprint.kube)}, {len(footprint.s3)} S3 requests")
    # Prometheus: the detection query and the sev1 5xx-ratio queries, each once; no p95 histogram (sev2),
    # no 401/403 ratio (sev2), no freshness or series queries (sev3).
    assert Counter(footprint.queries) == Counter(wanted), footprint.queries
    # Kubernetes: the API's pods (ready-pod check), the deployments (available replicas) and the
    # platform secret; no events, nodes or replicasets (sev2..sev4 checks read those).
    assert footprint.kube_lists() == Counter({"pods": 1, "deployments": 1}), footprint.kube
    others = [(r["verb"], r["resource"]) for r in footprint.kube if r.get("verb") != "list"]
    assert others == [("get", "secrets")], others
    # S3: no sev1 check reads the bucket.
    assert footprint.s3 == [], footprint.s3


def test_full_run_sends_each_distinct_query_once(full_run: tuple[Run, Footprint]) -> None:
    run, footprint = full_run
    repeated = {q: n for q, n in Counter(footprint.queries).items() if n > 1}
    assert not repeated, repeated
    assert len(set(footprint.queries)) >= 5, footprint.queries
    lists = footprint.kube_lists()
    assert set(lists) == {"pods", "events", "nodes", "deployments", "replicasets", "pods.metrics.k8s.io"}, lists
    assert set(lists.values()) == {1}, lists
    heads = [r for r in footprint.s3 if r["method"] == "HEAD"]
    assert len(heads) == 1, footprint.s3


def test_xdist_gives_the_same_verdict_as_one_process(
        bound_sandbox: dict[str, Any], full_run: tuple[Run, Footprint], tmp_path: Path) -> None:
    single, _ = full_run
    logs = SandboxLogs(bound_sandbox)
    run = run_checks(tmp_path / "reports", sandbox_env(), "-n", "2")
    data = assert_written(run)
    one = single.triage
    nodeids = [c["nodeid"] for c in data["checks"]]
    assert len(nodeids) == len(set(nodeids)), "each check once, in the one triage.json the controller writes"
    assert [p.name for p in run.reports.rglob("triage.json")] == ["triage.json"]
    assert data["severity"] == one["severity"]
    assert {c["nodeid"]: c["outcome"] for c in data["checks"]} == {c["nodeid"]: c["outcome"] for c in one["checks"]}
    assert run.proc.returncode == single.proc.returncode
    # Each worker fetches each fact once at most: at most one query per worker.
    window = bound_sandbox["settings"]["window"]
    footprint = logs.wait_for(lambda f: rate_queries(window) <= set(f.queries))
    worst = max(Counter(footprint.queries).values(), default=0)
    print(f"\nfull suite -n 2 on the sandbox: {run.elapsed:.2f} s (-n 0: {single.elapsed:.2f} s); "
          f"{len(footprint.queries)} PromQL queries, each at most {worst} times")
    assert worst <= 2, Counter(footprint.queries)
