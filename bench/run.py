"""Benchmarks, run by hand: time to verdict, outage bound, footprint and scaling, side by side with the playbook's script.

    python bench/run.py [--runs 5] [--write]

Brings up its own sandbox (port offset 900, directory /tmp/labcheck-bench), prints one table of
figures, goals and whether each is met, and with --write saves it to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = "/tmp/labcheck-bench"
OFFSET = 900


def timed(cmd: list[str], env: dict[str, str], *, cap: float = 300) -> tuple[float, int, bool]:
    """Wall time of one command; (seconds, exit code, hit the cap)."""
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=cap)
        return time.monotonic() - started, proc.returncode, False
    except subprocess.TimeoutExpired:
        return cap, -1, True


def median_of(cmd: list[str], env: dict[str, str], runs: int, *, cap: float = 300) -> tuple[float, list[int]]:
    times, codes = [], []
    for _ in range(runs):
        seconds, code, _ = timed(cmd, env, cap=cap)
        times.append(seconds)
        codes.append(code)
    return statistics.median(times), codes


class Hang:
    """A listener that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)


def pytest_cmd(*args: str, reports: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--reports-dir={reports}", *args]


def outage_env(base: dict[str, str], tmp: Path) -> dict[str, str]:
    hangs = {name: Hang() for name in ("api", "prometheus", "kube", "s3", "postgres")}
    kubeconfig = tmp / "kubeconfig-outage"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: outage\n"
        f"clusters: [{{name: outage, cluster: {{server: 'http://127.0.0.1:{hangs['kube'].port}'}}}}]\n"
        "users: [{name: outage, user: {token: not-a-real-token}}]\n"
        "contexts: [{name: outage, context: {cluster: outage, user: outage, namespace: llm-research}}]\n")
    env = {k: v for k, v in base.items() if not k.startswith("LABCHECK_") or k == "LABCHECK_SANDBOX_DIR"}
    env.update({
        "LABCHECK_API_URL": f"http://127.0.0.1:{hangs['api'].port}",
        "LABCHECK_DOCS_URL": f"http://127.0.0.1:{hangs['api'].port}/docs",
        "LABCHECK_PROMETHEUS_URL": f"http://127.0.0.1:{hangs['prometheus'].port}",
        "LABCHECK_S3_ENDPOINT": f"http://127.0.0.1:{hangs['s3'].port}",
        "LABCHECK_CLOUDWATCH_ENDPOINT": f"http://127.0.0.1:{hangs['s3'].port}",
        "LABCHECK_S3_BUCKET": "llm-research-datasets",
        "LABCHECK_AWS_ACCESS_KEY_ID": "bench",
        "LABCHECK_AWS_SECRET_ACCESS_KEY": "bench-secret",
        "LABCHECK_DATABASE_URL": f"postgresql://labcheck:bench@127.0.0.1:{hangs['postgres'].port}/llm_research",
        "LABCHECK_TEST_TOKEN": "bench-token",
        "KUBECONFIG": str(kubeconfig),
        "API_URL": f"http://127.0.0.1:{hangs['api'].port}",
        "PROMETHEUS_URL": f"http://127.0.0.1:{hangs['prometheus'].port}",
    })
    env.pop("LABCHECK_SANDBOX_DIR", None)
    return env


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
            timed(pytest_cmd("checks", reports=reports), env)
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


def picture_cost(env: dict[str, str], reports: str, runs: int, box: Path) -> dict[str, float]:
    """A failing run's metrics picture (issue 14): its own seconds, as triage.json records them, and the
    run's wall time with and without it (metrics_picture=false), under a 50% error-rate fault."""
    from labcheck.sandbox import manager

    cmd = pytest_cmd("-m", "sev1 or sev2", "checks", reports=reports)
    manager.fault("error-rate", {"share": 0.5}, dir=box)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the fault shows in the 5xx ratio
            timed(cmd, env)
            triage = json.loads((Path(reports) / "triage.json").read_text())
            if any(c["outcome"] == "failed" and "error_ratio" in c["nodeid"] for c in triage["checks"]):
                break
        drawn, imports, walls = [], [], []
        for _ in range(runs):
            seconds, _, _ = timed(cmd, env)
            walls.append(seconds)
            entry = json.loads((Path(reports) / "triage.json").read_text()).get("picture") or {}
            if entry.get("path"):
                drawn.append(float(entry["seconds"]))
                imports.append(float(entry.get("import_s") or 0.0))
        off, _ = median_of(cmd, {**env, "LABCHECK_METRICS_PICTURE": "false"}, runs)
    finally:
        manager.heal(dir=box)
    return {"median": statistics.median(drawn) if drawn else float("nan"), "max": max(drawn, default=float("nan")),
            "drawn": len(drawn), "runs": runs, "wall": statistics.median(walls), "wall_off": off,
            "import": statistics.median(imports) if imports else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="also write bench/RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "src"))
    from labcheck.sandbox import manager

    os.environ["LABCHECK_SANDBOX_DIR"] = BENCH_DIR
    print(f"bringing up the benchmark sandbox in {BENCH_DIR} (port offset {OFFSET}) ...", flush=True)
    state = manager.up(dir=Path(BENCH_DIR), port_offset=OFFSET)
    manager.heal(dir=Path(BENCH_DIR))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABCHECK_")}
    env["LABCHECK_SANDBOX_DIR"] = BENCH_DIR
    tmp = Path(tempfile.mkdtemp(prefix="labcheck-bench-"))
    reports = str(tmp / "reports")
    timeout = 5.0
    rows: list[tuple[str, str, str, bool | None]] = []

    def row(name: str, value: str, goal: str, met: bool | None) -> None:
        rows.append((name, value, goal, met))
        mark = "n/a" if met is None else ("met" if met else "NOT met")
        print(f"  {name:<52} {value:<22} {goal:<24} {mark}", flush=True)

    try:
        timed(pytest_cmd("checks", reports=reports), env)  # warm caches: imports, Prometheus data
        sev1, _ = median_of(pytest_cmd("-m", "sev1", "checks", reports=reports), env, args.runs)
        row("1. pytest -m sev1, healthy sandbox (median)", f"{sev1:.2f} s", "<= 2.0 s", sev1 <= 2.0)
        full, codes = median_of(pytest_cmd("checks", reports=reports), env, args.runs)
        row("2. full suite, healthy sandbox (median)", f"{full:.2f} s (exit {max(codes)})", "<= 4.0 s", full <= 4.0)
        full_n2, _ = median_of(pytest_cmd("-n", "2", "checks", reports=reports), env, max(3, args.runs // 2))
        row("2b. full suite with -n 2 (median)", f"{full_n2:.2f} s", "not slower than -n 0", full_n2 <= full * 1.05)

        outage = outage_env(env, tmp)
        out_t, out_codes = median_of(pytest_cmd("checks", reports=str(tmp / "outage")), outage, 3, cap=120)
        verdict = json.loads((tmp / "outage" / "triage.json").read_text())
        counts = verdict.get("counts", {})
        row("3. full suite, total outage (median of 3)", f"{out_t:.2f} s", f"<= {timeout + 2:g} s", out_t <= timeout + 2)
        row("   outage verdict", f"{counts.get('failed', '?')} failed, {counts.get('unknown', '?')} unknown, "
            f"{counts.get('passed', '?')} passed", "0 passed, written", counts.get("passed") == 0)

        collect, _ = median_of(pytest_cmd("--collect-only", "checks", reports=reports), env, args.runs)
        row("4. pytest --collect-only -q checks (median)", f"{collect:.2f} s", "<= 0.8 s", collect <= 0.8)

        settings = state["settings"]
        base_env = {**env, "API_URL": settings["api_url"], "PROMETHEUS_URL": settings["prometheus_url"],
                    "KUBECONFIG": settings["kubeconfig"]}
        script = ["bash", str(REPO / "bench" / "incident-assessment.sh")]
        base_t, _ = median_of(script, base_env, args.runs, cap=120)
        row("5. playbook incident-assessment.sh, healthy (median)", f"{base_t:.2f} s", "(baseline)", None)
        base_out, _, capped = timed(script, outage, cap=120)
        row("5. playbook incident-assessment.sh, outage", f"{base_out:.1f} s" + (" (hit the cap)" if capped else ""),
            "(baseline, capped 120 s)", None)

        fp = footprint(state, env, reports)
        row("6. database connections opened by one run",
            str(fp["db_connections_opened"]), "1 per process",
            fp["db_connections_opened"] == 1)
        row("6. Prometheus queries sent by one run", f"{fp['prom_queries']} ({fp['prom_distinct']} distinct)",
            "each distinct query once", fp["prom_queries"] == fp["prom_distinct"])

        many = ",".join(["/experiments", "/datasets"] + [f"/api/v{i}/things" for i in range(18)])
        scaled_env = {**env, "LABCHECK_API_ENDPOINTS": many}
        scaled, _ = median_of(pytest_cmd("checks", reports=reports), scaled_env, args.runs)
        growth = (scaled - full) / full
        row("7. full suite with 10x API endpoints (median)", f"{scaled:.2f} s ({growth:+.0%})", "< +30%", growth < 0.30)

        pic = picture_cost(env, reports, args.runs, Path(BENCH_DIR))
        row("8. metrics picture of a failing run (median, max)", f"{pic['median']:.2f} s, {pic['max']:.2f} s "
            f"({pic['drawn']:g}/{pic['runs']:g} drawn)", "<= 1.5 s", pic["max"] <= 1.5)
        row("   matplotlib import, in the background from the first failure (median)", f"{pic['import']:.2f} s",
            "(overlaps the checks)", None)
        row("   failing run's wall time, picture on / off (median)", f"{pic['wall']:.2f} s / {pic['wall_off']:.2f} s",
            "(the picture's cost to the run)", None)
    finally:
        if not args.keep:
            manager.down(dir=Path(BENCH_DIR))

    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
               f"load average {os.getloadavg()[0]:.1f} at the end")
    lines = ["# labcheck benchmarks\n", f"Machine: {machine}. Runs per figure: {args.runs}. "
             f"Probe timeout {timeout:g} s.\n", "| figure | value | goal | met |", "|---|---|---|---|"]
    for name, value, goal, met in rows:
        lines.append(f"| {name.strip()} | {value} | {goal} | {'n/a' if met is None else ('yes' if met else 'no')} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.write:
        (REPO / "bench" / "RESULTS.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
