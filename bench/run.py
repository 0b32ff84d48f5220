"""Benchmarks, run by hand: time to verdict (healthy, slow, down), the import floor, scale, memory, and the
playbook's script side by side on every sandbox fault.

    python bench/run.py [--runs 5] [--write] [--skip-faults]

Brings up its own sandbox (port offset 900, directory /tmp/labcheck-bench; again with 10 and 50
endpoint sets for the scale figures), prints one table of figures, goals and whether each is met,
and with --write saves it to bench/RESULTS.md. Exits 1 naming each goal not met.

Every pytest run uses this tree's src/ and a bytecode cache of its own (PYTHONPYCACHEPREFIX, warmed
by a first run), as an installed package has its .pyc files: this machine sets
PYTHONDONTWRITEBYTECODE=1, and compiling every module again costs each run about 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import (  # noqa: E402 - bench/ is not a package
    REPO,
    Series,
    clients_loaded,
    floor_cmd,
    load1,
    once,
    outage_env,
    pytest_cmd,
    pytest_floor_cmd,
    series,
    side_by_side,
)

BENCH_DIR = Path("/tmp/labcheck-bench")
KEPT = "<!-- measured by hand: kept by --write -->"
OFFSET = 900
TIMEOUT = 5.0  # the probe timeout (the default)
LATENCIES = (2.5, 4.0)
SCALES = (1, 10, 50)
SETTLE_S = 15.0  # after a fault or a heal: the sandbox's rate window is 10 s, Prometheus scrapes every 2 s

# --- the playbook's script, read by fixed rules --------------------------------------------------------
#
# bench/incident-assessment.sh prints sections ("--- API Health ---", ...). Each rule reads one section
# and says whether it shows a signal; a signal counts for a fault when it is one that fault produces
# (EVIDENCE) and it did not show on the healthy sandbox. The script "shows the problem" when one does.

SECTIONS = ("API Health", "Error Rate (last 5m)", "P95 Latency (last 5m)", "Pod Status", "Recent Events",
            "Database Connections")
RECENT = re.compile(r"^\s*(\d+s|[1-9]m|[1-5]\dm)\s")  # an event's last time, within the hour


def _sections(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^--- (.*) ---$", line.strip())
        if m:
            current = m.group(1)
            out[current] = ""
        elif current:
            out[current] += line + "\n"
    return out


def _numbers(section: str, key: str) -> list[float]:
    return [float(x) for x in re.findall(rf'"{key}":\s*"?([0-9.eE+-]+)"?', section)]


def _pod_rows(section: str) -> list[list[str]]:
    return [line.split() for line in section.splitlines()[1:] if line.strip() and not line.startswith("NAME")]


RULES: dict[str, Callable[[dict[str, str]], bool]] = {
    # /health answered something other than 200, or nothing
    "api_down": lambda s: "HTTP Status: 200" not in s.get("API Health", ""),
    # /health took longer than the playbook's 2 s
    "api_slow": lambda s: any(float(x) > 2.0 for x in re.findall(r"Response Time: ([0-9.]+)s", s.get("API Health", ""))),
    # any endpoint with a 5xx rate above zero
    "errors": lambda s: any(v > 0 for v in _numbers(s.get("Error Rate (last 5m)", ""), "rate")),
    # any endpoint with p95 above 2 s
    "p95_high": lambda s: any(v > 2.0 for v in _numbers(s.get("P95 Latency (last 5m)", ""), "latency")),
    # an API pod not ready, not Running, or restarted
    "pods_unhealthy": lambda s: any(len(r) >= 4 and (r[1].split("/")[0] != r[1].split("/")[-1] or r[2] != "Running"
                                                     or r[3] != "0") for r in _pod_rows(s.get("Pod Status", ""))),
    # kubectl refused or failed
    "kube_error": lambda s: any(w in s.get("Pod Status", "") + s.get("Recent Events", "")
                                for w in ("Error from server", "error:", "Unauthorized", "Forbidden")),
    # a Warning event
    "warning_events": lambda s: " Warning " in s.get("Recent Events", ""),
    # a rollout (ScalingReplicaSet) within the hour
    "recent_rollout": lambda s: any(RECENT.match(line) and "ScalingReplicaSet" in line
                                    for line in s.get("Recent Events", "").splitlines()),
    # the pool's open connections, as the script shows them (compared with healthy below)
    "pool": lambda s: bool(re.search(r"^db_pool_connections\S* [0-9.]+", s.get("Database Connections", ""), re.M)),
}

# Which signals of the script's output would show each fault (the fault's own symptoms). A fault with
# none has no section of the script that could show it.
EVIDENCE: dict[str, set[str]] = {
    "error-rate": {"errors", "api_down"},
    "latency": {"p95_high", "api_slow"},
    "db-pool-leak": {"pool_changed", "api_down"},
    "long-query": {"pool_changed"},
    "blocking-lock": {"pool_changed"},
    "idle-in-transaction": {"pool_changed"},
    "quota-full": set(),
    "clock-skew": set(),
    "stuck-experiment": set(),
    "docs-down": set(),
    "auth-secret-rotated": {"errors", "api_down"},
    "crash-loop": {"pods_unhealthy", "warning_events"},
    "oom-killed": {"pods_unhealthy", "warning_events"},
    "node-not-ready": {"pods_unhealthy", "warning_events"},
    "recent-rollout": {"recent_rollout"},
    "workers-unavailable": {"warning_events"},
    "cpu-saturation": set(),
    "memory-saturation": set(),
    "metrics-server-absent": set(),
    "forbidden": {"kube_error"},
    "unauthorized": {"kube_error"},
    "s3-outage": {"errors"},
    "s3-forbidden": {"errors"},
    "s3-missing": {"errors"},
    "s3-reset": {"errors"},
}


def script_signals(text: str) -> tuple[set[str], str]:
    """The signals the script's output shows, and its pool line (compared with the healthy one)."""
    sections = _sections(text)
    seen = {name for name, rule in RULES.items() if rule(sections)}
    pool = " ".join(sections.get("Database Connections", "").split())
    return seen, pool


def script_verdict(fault: str, text: str, healthy: tuple[set[str], str]) -> tuple[bool, list[str]]:
    seen, pool = script_signals(text)
    if pool != healthy[1]:
        seen.add("pool_changed")
    new = sorted(seen - healthy[0] - {"pool"})
    return bool(set(new) & EVIDENCE.get(fault, set())), new


# --- the sandbox side ------------------------------------------------------------------------------------


def footprint(state: dict[str, Any], env: dict[str, str], reports: str) -> dict[str, Any]:
    """Count, from the sandbox's side, labcheck's database connections and Prometheus queries in one run."""
    import psycopg

    sec = state["secrets"]
    host, _, port = state["services"]["postgres"]["address"].rpartition(":")
    dsn = f"postgresql://postgres:{sec['postgres_password']}@{host}:{port}/llm_research"
    query_log = Path(state["dir"]) / "prometheus" / "query.log"
    before = query_log.stat().st_size if query_log.exists() else 0
    # Every connection opened, from PostgreSQL's own log (log_connections names the application):
    # sampling pg_stat_activity misses a run's one connection, which lives about 50 ms.
    server_log = Path(state["dir"]) / "logs" / "postgres.log"
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as admin:
        admin.execute("ALTER SYSTEM SET log_connections = on")
        admin.execute("SELECT pg_reload_conf()")
        log_before = server_log.stat().st_size
        try:
            once(pytest_cmd("checks", reports=reports), env)
        finally:
            admin.execute("ALTER SYSTEM RESET log_connections")
            admin.execute("SELECT pg_reload_conf()")
    with server_log.open(errors="replace") as fh:
        fh.seek(log_before)
        opened = sum(1 for line in fh if "connection authorized" in line and "application_name=labcheck" in line)
    queries: list[str] = []
    if query_log.exists():
        with query_log.open() as fh:
            fh.seek(before)
            for line in fh:
                try:
                    queries.append(json.loads(line)["params"]["query"])
                except (ValueError, KeyError):
                    continue
    return {"db_connections_opened": opened, "prom_queries": len(queries), "prom_distinct": len(set(queries))}


def triage(reports: str) -> dict[str, Any]:
    try:
        return dict(json.loads((Path(reports) / "triage.json").read_text()))
    except (OSError, ValueError):
        return {}


def checks_run(reports: str) -> int:
    """How many checks the last run in ``reports`` ran (its triage.json's counts)."""
    counts = triage(reports).get("counts", {})
    return sum(int(counts.get(k, 0)) for k in ("passed", "failed", "unknown", "skipped"))


def verdict_text(data: dict[str, Any]) -> str:
    if not data:
        return "no triage.json"
    cause = (data.get("probable_cause") or {}).get("scenario")
    counts = data.get("counts", {})
    return (f"{data.get('severity') or 'no incident'}, {cause or 'no scenario'} "
            f"({counts.get('failed', '?')} failed, {counts.get('unknown', '?')} unknown)")


def picture_cost(env: dict[str, str], reports: str, runs: int, box: Path) -> dict[str, float]:
    """A failing run's metrics picture (issue 14): its own seconds, as triage.json records them, and the
    run's wall time with and without it (metrics_picture=false), under a 50% error-rate fault."""
    from labcheck.sandbox import manager

    cmd = pytest_cmd("-m", "sev1 or sev2", "checks", reports=reports)
    manager.fault("error-rate", {"share": 0.5}, dir=box)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the fault shows in the 5xx ratio
            once(cmd, env)
            if any(c["outcome"] == "failed" and "error_ratio" in c["nodeid"] for c in triage(reports).get("checks", [])):
                break
        drawn, imports, walls = [], [], []
        for _ in range(runs):
            walls.append(once(cmd, env).seconds)
            entry = triage(reports).get("picture") or {}
            if entry.get("path"):
                drawn.append(float(entry["seconds"]))
                imports.append(float(entry.get("import_s") or 0.0))
        off = series(cmd, {**env, "LABCHECK_METRICS_PICTURE": "false"}, runs).median
    finally:
        manager.heal(dir=box)
    return {"median": statistics.median(drawn) if drawn else float("nan"), "max": max(drawn, default=float("nan")),
            "drawn": len(drawn), "runs": runs, "wall": statistics.median(walls), "wall_off": off,
            "import": statistics.median(imports) if imports else float("nan")}


NOTES = [
    "Notes (method; the figures are above):",
    "- Goal 1: the latency fault delays /experiments, /datasets and /docs on the sandbox API. Every request",
    "  a run sends starts when collection ends (the paths checks name, api.attempt(\"/datasets\"), too) and no",
    "  connection cap queues them, so a run waits for the latency once.",
    "- Goal 2: the floor is `python -c \"import pytest, <the client libraries the run loaded>\"`, with",
    "  kubernetes imported as kubernetes.client (the issue's floor); run and floor alternate, so load that",
    "  comes and goes weighs on both. A run with a kubeconfig holding its own credentials no longer loads the",
    "  kubernetes client (its probe speaks httpx), so that floor has no kubernetes in it.",
    "- pytest's own floor: as many empty tests as the run has checks, run by pytest with this tree's options",
    "  and plugins (allure-pytest writing results) and the same client libraries imported, labcheck's plugin",
    "  left out; measured in turn with the run and the import floor. What the run costs beyond it is",
    "  labcheck's own work and its waiting on the platform; what it costs beyond the import floor is pytest.",
    "- Goal 3: `sandbox up --endpoints N` serves 2N data routes, all with traffic, and 3N API pods; the",
    "  suite's settings list every route as api_endpoints, so each is judged (\"endpoints judged\").",
    "  The N = 50 sandbox sends 44.5 requests/s to itself on the same two cores.",
    "- Peak RSS is each run's own maximum resident set (/usr/bin/time %M), in MiB.",
    "- -n 2: each worker collects every check and prefetches every fact, and imports the client libraries.",
    "- Goal 4: one labcheck run 15 s after each fault; faults whose thresholds take longer to cross",
    "  (a query running or a session idle in transaction for longer than the threshold) are not yet found.",
]


# --- the table ---------------------------------------------------------------------------------------------


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, bool | None]] = []
        self.faults: list[str] = []
        self.loads: list[float] = []

    def row(self, name: str, value: str, goal: str, met: bool | None) -> None:
        self.rows.append((name, value, goal, met))
        self.loads.append(load1())
        mark = "n/a" if met is None else ("met" if met else "NOT met")
        print(f"  {name:<60} {value:<44} {goal:<26} {mark}", flush=True)

    def missed(self) -> list[str]:
        return [f"{name} ({value}; goal {goal})" for name, value, goal, met in self.rows if met is False]


def timed_row(t: Table, name: str, s: Series, goal: str, met: bool | None, extra: str = "") -> None:
    t.row(name, f"{s.median:.2f} s [{s.spread()}] {extra}{s.load_text()}", goal, met)


def bench_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABCHECK_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = f"{BENCH_DIR}-pycache"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["LABCHECK_SANDBOX_DIR"] = str(BENCH_DIR)
    return env


def near_floor(t: Table, env: dict[str, str], reports: str, tmp: Path, runs: int) -> None:
    """Goal 2: the full run, -m sev1 and --collect-only against the import floor of what each loads."""
    for label, args, limit in (("full suite", ["checks"], 1.4), ("-m sev1", ["-m", "sev1", "checks"], 1.3)):
        cmd = pytest_cmd(*args, reports=reports)
        clients = [c for c in clients_loaded(cmd, env, tmp) if c != "?"]
        tests = checks_run(reports)
        floor, pytest_floor, run = side_by_side(floor_cmd(clients), pytest_floor_cmd(clients, tests, tmp, reports),
                                                cmd, env=env, runs=runs)
        ratio = run.median / floor.median
        timed_row(t, f"2. {label}, healthy (median)", run, "<= 4.0 s" if label == "full suite" else "<= 2.0 s",
                  run.median <= (4.0 if label == "full suite" else 2.0), f"exit {max(run.codes)}; ")
        t.row(f"2. {label}: import floor (pytest, {', '.join(clients) or 'no client'})",
              f"{floor.median:.2f} s; ratio {ratio:.2f} ({floor.load_text()})", f"ratio <= {limit}", ratio <= limit)
        t.row(f"   {label}: pytest's own floor ({tests} empty tests, same plugins and clients)",
              f"{pytest_floor.median:.2f} s = {pytest_floor.median / floor.median:.2f}x the import floor; the run is "
              f"{run.median / pytest_floor.median:.2f}x it", "(what pytest costs before any check)", None)
        if label == "full suite":
            t.row("5. peak RSS of a full run (max of its runs)", f"{run.rss:.0f} MiB", "<= 90 MiB", run.rss <= 90)
            t.row("   peak RSS of its import floor", f"{floor.rss:.0f} MiB", "(the libraries alone)", None)
        else:
            t.row("2. -m sev1 loads", ", ".join(clients), "no boto3", "boto3" not in clients)
    cmd = pytest_cmd("--collect-only", "checks", reports=reports)
    clients = clients_loaded(cmd, env, tmp)
    collect = series(cmd, env, runs)
    timed_row(t, "2. pytest --collect-only checks (median)", collect, "<= 0.35 s", collect.median <= 0.35)
    t.row("2. --collect-only loads", ", ".join(clients) or "no client library", "none", not clients)


def slow_platform(t: Table, env: dict[str, str], reports: str, runs: int) -> None:
    """Goal 1: a full run under the sandbox's latency fault of L seconds, within L + 1.5 s."""
    from labcheck.sandbox import manager

    for seconds in LATENCIES:
        manager.fault("latency", {"seconds": seconds}, dir=BENCH_DIR)
        try:
            s = series(pytest_cmd("checks", reports=reports), env, runs, cap=120)
            verdict = verdict_text(triage(reports))
            timed_row(t, f"1. full suite, latency fault {seconds:g} s (median)", s, f"<= {seconds + 1.5:g} s",
                      s.median <= seconds + 1.5)
            t.row("   its verdict (last run)", verdict, "(the p95 check fails as Prometheus sees it)", None)
            if seconds == LATENCIES[0]:
                n2 = series(pytest_cmd("-n", "2", "checks", reports=reports), env, max(3, runs // 2), cap=120)
                timed_row(t, "1b. the same with -n 2 (median)", n2, "(documented)", None)
        finally:
            manager.heal(dir=BENCH_DIR)
    time.sleep(SETTLE_S)


def faults_side_by_side(t: Table, env: dict[str, str], reports: str, state: dict[str, Any]) -> None:
    """Goal 4: every sandbox fault, the playbook's script (read by RULES) against labcheck's verdict."""
    from labcheck.sandbox import manager

    settings = state["settings"]
    script_env = {**env, "API_URL": settings["api_url"], "PROMETHEUS_URL": settings["prometheus_url"],
                  "KUBECONFIG": settings["kubeconfig"]}
    script = ["bash", str(REPO / "bench" / "incident-assessment.sh")]
    healthy_run = once(script, script_env, cap=60, keep_output=True)
    healthy = script_signals(healthy_run.output)
    lines = ["| fault | script: shows the problem? (new signals) | script wall | labcheck verdict | labcheck wall |",
             "|---|---|---|---|---|"]
    check = once(pytest_cmd("checks", reports=reports), env, cap=120)
    lines.append(f"| (healthy) | signals {', '.join(sorted(healthy[0] - {'pool'})) or 'none'} | "
                 f"{healthy_run.seconds:.2f} s | {verdict_text(triage(reports))} | {check.seconds:.2f} s |")
    shown = detected = 0
    for fault in manager.ALL_FAULTS:
        manager.heal(dir=BENCH_DIR)
        time.sleep(SETTLE_S)
        load = load1()
        try:
            manager.fault(fault, {}, dir=BENCH_DIR)
            time.sleep(SETTLE_S)
            out = once(script, script_env, cap=60, keep_output=True)
            lab = once(pytest_cmd("checks", reports=reports), env, cap=120)
            data = triage(reports)
        finally:
            manager.heal(dir=BENCH_DIR)
        shows, new = script_verdict(fault, out.output, healthy)
        shown += shows
        detected += bool(data.get("severity") or (data.get("counts") or {}).get("failed"))
        capped = " (hit the 60 s cap)" if out.capped else ""
        lines.append(f"| {fault} | {'yes' if shows else 'no'} ({', '.join(new) or 'nothing new'}) | "
                     f"{out.seconds:.2f} s{capped} | {verdict_text(data)} | {lab.seconds:.2f} s (load {load:.1f}) |")
        print("  " + lines[-1], flush=True)
    t.faults = lines
    n = len(manager.ALL_FAULTS)
    t.row("4. faults the playbook's script shows (fixed rules)", f"{shown} of {n}", "(the baseline)", None)
    t.row("4. faults labcheck finds (a failed check)", f"{detected} of {n}", "(see the table)", None)


def scale(t: Table, env: dict[str, str], reports: str, runs: int) -> None:
    """Goal 3: the full run against a sandbox serving 1, 10 and 50 endpoint sets, each with traffic."""
    from labcheck.sandbox import manager

    got: dict[int, Series] = {}
    for n in SCALES:
        manager.down(dir=BENCH_DIR)
        manager.up(dir=BENCH_DIR, port_offset=OFFSET, endpoints=n)
        time.sleep(SETTLE_S)  # every route's rate in the window
        once(pytest_cmd("checks", reports=reports), env)
        s = got[n] = series(pytest_cmd("checks", reports=reports), env, runs)
        data = triage(reports)
        per = [c for c in data.get("checks", []) if "check_endpoint_error_ratio" in c["nodeid"]]
        judged = sum(c["outcome"] in ("passed", "failed") for c in per)
        growth = (s.median - got[1].median) / got[1].median
        met = growth < 0.30 if n == 10 else None
        timed_row(t, f"3. full suite, {n} endpoint set(s): {2 * n} routes, {3 * n} API pods", s,
                  "< +30% over 1" if n == 10 else "(reported)", met,
                  f"{growth:+.0%}; {judged}/{len(per)} endpoints judged; {s.rss:.0f} MiB; ")
    manager.down(dir=BENCH_DIR)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="also write bench/RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running")
    parser.add_argument("--skip-faults", action="store_true", help="leave out the fault table (about 15 minutes)")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "src"))
    from labcheck.sandbox import manager

    os.environ["LABCHECK_SANDBOX_DIR"] = str(BENCH_DIR)
    print(f"bringing up the benchmark sandbox in {BENCH_DIR} (port offset {OFFSET}) ...", flush=True)
    manager.down(dir=BENCH_DIR)
    state = manager.up(dir=BENCH_DIR, port_offset=OFFSET)
    manager.heal(dir=BENCH_DIR)
    env = bench_env()
    tmp = Path(tempfile.mkdtemp(prefix="labcheck-bench-"))
    reports = str(tmp / "reports")
    t = Table()
    started = time.monotonic()
    try:
        for _ in range(2):  # warm: the bytecode cache, the page cache, Prometheus's data
            once(pytest_cmd("checks", reports=reports), env)
            once(floor_cmd(["httpx", "psycopg", "boto3", "kubernetes"]), env)
            once(pytest_cmd("--collect-only", "checks", reports=reports), env)
        near_floor(t, env, reports, tmp, args.runs)
        n2 = series(pytest_cmd("-n", "2", "checks", reports=reports), env, max(3, args.runs // 2))
        timed_row(t, "2b. full suite with -n 2, healthy (median)", n2, "(documented)", None)
        slow_platform(t, env, reports, max(3, args.runs // 2))

        outage = outage_env(env, tmp)
        out = series(pytest_cmd("checks", reports=str(tmp / "outage")), outage, 3, cap=120)
        counts = triage(str(tmp / "outage")).get("counts", {})
        timed_row(t, "6. full suite, total outage (median of 3)", out, f"<= {TIMEOUT + 2:g} s", out.median <= TIMEOUT + 2)
        t.row("   outage verdict", f"{counts.get('failed', '?')} failed, {counts.get('unknown', '?')} unknown, "
              f"{counts.get('passed', '?')} passed", "0 passed, written", counts.get("passed") == 0)
        script = ["bash", str(REPO / "bench" / "incident-assessment.sh")]
        script_out = once(script, outage, cap=30)
        t.row("6. playbook incident-assessment.sh, outage", f"{script_out.seconds:.1f} s" +
              (" (hit the cap: it has no timeouts)" if script_out.capped else ""), "(baseline, capped 30 s)", None)

        fp = footprint(state, env, reports)
        t.row("7. database connections opened by one run", str(fp["db_connections_opened"]), "1 per process",
              fp["db_connections_opened"] == 1)
        t.row("7. Prometheus queries sent by one run", f"{fp['prom_queries']} ({fp['prom_distinct']} distinct)",
              "each distinct query once", fp["prom_queries"] == fp["prom_distinct"])

        pic = picture_cost(env, reports, args.runs, BENCH_DIR)
        t.row("8. metrics picture of a failing run (median, max)", f"{pic['median']:.2f} s, {pic['max']:.2f} s "
              f"({pic['drawn']:g}/{pic['runs']:g} drawn)", "<= 1.5 s", pic["max"] <= 1.5)
        t.row("   failing run's wall time, picture on / off (median)", f"{pic['wall']:.2f} s / {pic['wall_off']:.2f} s",
              "(the picture's cost to the run)", None)

        if not args.skip_faults:
            time.sleep(SETTLE_S)
            faults_side_by_side(t, env, reports, state)
        scale(t, env, reports, args.runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.keep:
            manager.down(dir=BENCH_DIR)

    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
               f"load average {load1():.1f} at the end, {(time.monotonic() - started) / 60:.0f} minutes in all")
    lines = ["# labcheck benchmarks\n", f"Machine: {machine}. Runs per figure: {args.runs} (3 under latency, outage "
             f"and -n 2). Probe timeout {TIMEOUT:g} s. Each time is a median, [fastest-slowest], with the 1-minute "
             "load average before->after its runs.\n", "| figure | value | goal | met |", "|---|---|---|---|"]
    for name, value, goal, met in t.rows:
        lines.append(f"| {name.strip()} | {value} | {goal} | {'n/a' if met is None else ('yes' if met else 'no')} |")
    busiest = max(t.loads, default=0.0)
    if busiest >= (os.cpu_count() or 1):
        lines += ["", f"**This run was noisy**: the 1-minute load average reached {busiest:.1f} on "
                  f"{os.cpu_count()} cores (other engineers' sandboxes and tests share the machine), so every "
                  "time above is inflated by waiting for a core; the ratios, measured side by side, less so."]
    lines += ["", *NOTES]
    if t.faults:
        lines += ["", "## Every sandbox fault: the playbook's script against labcheck", "",
                  f"Each fault injected, {SETTLE_S:g} s to show, then the script (its output read by the fixed "
                  "rules in bench/run.py: RULES, EVIDENCE) and one full labcheck run.", "", *t.faults]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    missed = t.missed()
    if args.write:
        results = REPO / "bench" / "RESULTS.md"
        # Side-by-side measurements made by hand (before/after a change) live below KEPT and stay.
        kept = results.read_text().partition(KEPT)[2] if results.exists() else ""
        results.write_text(text + (f"\n{KEPT}{kept}" if kept else ""))
    for goal in missed:
        print(f"goal not met: {goal}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
