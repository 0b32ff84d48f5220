"""How bench/run.py measures: wall time and peak RSS of one command, medians with the load average, the
import floor of the client libraries a run loads, and the stand-ins for an outage."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The client libraries a run may load, each as the floor imports it.
CLIENTS = {"httpx": "httpx", "psycopg": "psycopg", "boto3": "boto3", "kubernetes": "kubernetes.client"}
CLIENTS_PROBE = '''
import json, os, sys
def pytest_unconfigure(config):
    with open(os.environ["LABCHECK_BENCH_CLIENTS"], "w") as fh:
        json.dump(sorted(m for m in {names!r} if m in sys.modules), fh)
'''


@dataclass
class Once:
    """One command: wall seconds, exit code, whether it hit the cap, its peak RSS (MiB), its output."""

    seconds: float
    code: int
    capped: bool
    rss_mib: float
    output: str = ""


@dataclass
class Series:
    """Several runs of one command, with the 1-minute load average before and after them."""

    runs: list[Once]
    load: tuple[float, float]
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def rss(self) -> float:
        return max(r.rss_mib for r in self.runs)

    @property
    def codes(self) -> list[int]:
        return [r.code for r in self.runs]

    def load_text(self) -> str:
        return f"load {self.load[0]:.1f}->{self.load[1]:.1f}"

    def spread(self) -> str:
        times = sorted(r.seconds for r in self.runs)
        return f"{times[0]:.2f}-{times[-1]:.2f}" if len(times) > 1 else f"{times[0]:.2f}"


def load1() -> float:
    return os.getloadavg()[0]


# Started through /usr/bin/time, which forks it from a small process: Linux carries a process's peak RSS
# across exec, so a command started straight from this (large) process would report ours as its own.
TIME = "/usr/bin/time"


def once(cmd: list[str], env: dict[str, str], *, cap: float = 300, keep_output: bool = False) -> Once:
    """Run ``cmd``; its wall time and its own peak RSS."""
    out = tempfile.TemporaryFile() if keep_output else subprocess.DEVNULL
    rss_file = tempfile.NamedTemporaryFile(prefix="labcheck-bench-rss-", delete=False)
    rss_file.close()
    started = time.monotonic()
    proc = subprocess.Popen([TIME, "-q", "-o", rss_file.name, "-f", "%M", *cmd], cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT if keep_output else subprocess.DEVNULL, start_new_session=True)
    deadline = started + cap
    capped = False
    while True:
        pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)  # /usr/bin/time and the command it started
            _, status, _ = os.wait4(proc.pid, 0)
            capped = True
            break
        time.sleep(0.005)  # polling our own child, under the cap
    seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = ""
    if keep_output and not isinstance(out, int):
        out.seek(0)
        text = out.read().decode("utf-8", errors="replace")
        out.close()
    try:
        rss_kib = float(Path(rss_file.name).read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        rss_kib = float("nan")
    Path(rss_file.name).unlink(missing_ok=True)
    return Once(cap if capped else seconds, -1 if capped else proc.returncode, capped, rss_kib / 1024, text)


def series(cmd: list[str], env: dict[str, str], runs: int, *, cap: float = 300) -> Series:
    before = load1()
    done = [once(cmd, env, cap=cap) for _ in range(runs)]
    return Series(done, (before, load1()))


def side_by_side(*cmds: list[str], env: dict[str, str], runs: int) -> tuple[Series, ...]:
    """Each command in turn, ``runs`` times each: a load that comes and goes weighs on all alike."""
    before = load1()
    got: list[list[Once]] = [[] for _ in cmds]
    for _ in range(runs):
        for done, cmd in zip(got, cmds, strict=True):
            done.append(once(cmd, env))
    after = load1()
    return tuple(Series(done, (before, after)) for done in got)


def pytest_cmd(*args: str, reports: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--reports-dir={reports}", *args]


def floor_cmd(clients: list[str]) -> list[str]:
    """The import floor: pytest and the client libraries a run loads, imported and nothing else."""
    return [sys.executable, "-c", "import " + ", ".join(["pytest", *(CLIENTS[c] for c in clients)])]


def pytest_floor_cmd(clients: list[str], tests: int, tmp: Path, reports: str) -> list[str]:
    """What pytest itself costs a run of ``tests`` checks: as many empty tests, the same options and
    plugins (this tree's pyproject.toml; allure-pytest writing its results), the same client libraries
    imported, and labcheck's plugin left out."""
    suite = tmp / f"pytest-floor-{tests}-{'-'.join(clients) or 'none'}"
    suite.mkdir(exist_ok=True)
    (suite / "conftest.py").write_text("import " + ", ".join(["pytest", *(CLIENTS[c] for c in clients)]) + "\n")
    (suite / "test_empty.py").write_text("".join(f"def test_{i}():\n    pass\n\n\n" for i in range(tests)))
    return [sys.executable, "-m", "pytest", "-q", "-c", str(REPO / "pyproject.toml"), f"--rootdir={suite}",
            "-p", "no:labcheck", f"--alluredir={reports}-pytest-floor", str(suite)]


def clients_loaded(args: list[str], env: dict[str, str], tmp: Path) -> list[str]:
    """Which client libraries a pytest run with ``args`` imports (a plugin reads sys.modules at the end)."""
    plugin_dir = tmp / "clients-probe"
    plugin_dir.mkdir(exist_ok=True)
    (plugin_dir / "labcheck_bench_clients.py").write_text(CLIENTS_PROBE.format(names=tuple(CLIENTS)))
    out = tmp / "clients.json"
    out.unlink(missing_ok=True)
    probe_env = {**env, "PYTHONPATH": os.pathsep.join([str(plugin_dir), env.get("PYTHONPATH", "")]),
                 "LABCHECK_BENCH_CLIENTS": str(out)}
    once([*args[:3], "-p", "labcheck_bench_clients", *args[3:]], probe_env)
    return list(json.loads(out.read_text())) if out.exists() else ["?"]


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


def outage_env(base: dict[str, str], tmp: Path) -> dict[str, str]:
    hangs = {name: Hang() for name in ("api", "prometheus", "kube", "s3", "postgres")}
    kubeconfig = tmp / "kubeconfig-outage"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: outage\n"
        f"clusters: [{{name: outage, cluster: {{server: 'http://127.0.0.1:{hangs['kube'].port}'}}}}]\n"
        "users: [{name: outage, user: {token: not-a-real-token}}]\n"
        "contexts: [{name: outage, context: {cluster: outage, user: outage, namespace: llm-research}}]\n")
    env = {k: v for k, v in base.items() if not k.startswith("LABCHECK_")}
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
    return env
