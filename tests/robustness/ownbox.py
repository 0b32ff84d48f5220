"""A robustness module's own sandbox, and an environment that names no other target.

Each module runs its own sandbox (own directory, own ports) so that faults it injects never reach
another module's runs, and starts its runs with no LABCHECK_*, AWS_* or playbook-alias variables
of the developer's, so that nothing but that sandbox is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

ALIASES = {"DATABASE_URL", "TEST_TOKEN", "S3_BUCKET", "KUBECONFIG", "API_URL", "PROMETHEUS_URL"}


@contextmanager
def own_sandbox(directory: Path, port_offset: int, **options: Any) -> Iterator[dict[str, Any]]:
    """Bring up (and heal) a sandbox of the module's own; stop it, whatever happened."""
    from labcheck.sandbox import manager

    state = manager.up(dir=directory, port_offset=port_offset, timeout=120, **options)
    try:
        manager.heal(dir=directory)
        yield state
    finally:
        manager.down(dir=directory)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any labcheck target or credential, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LABCHECK_", "AWS_")) and k not in ALIASES and k != "PYTEST_XDIST_WORKER"}
    env.update(extra)
    return env


@dataclass
class Run:
    proc: subprocess.CompletedProcess[str]
    elapsed: float
    reports: Path

    @property
    def output(self) -> str:
        return self.proc.stdout + self.proc.stderr

    @property
    def triage(self) -> dict[str, Any]:
        return json.loads((self.reports / "triage.json").read_text())

    def checks(self) -> dict[str, dict[str, Any]]:
        return {c["nodeid"]: c for c in self.triage["checks"]}


def run_checks(reports: Path, env: dict[str, str], *args: str, timeout: float = 150) -> Run:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--reports-dir={reports}", *args]
    if not any(a.startswith("checks") for a in args):
        cmd.append("checks")
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return Run(proc, time.monotonic() - started, reports)


def assert_written(run: Run) -> dict[str, Any]:
    """Exit 0 or 1, no traceback, triage.json and Allure results written."""
    out = run.output
    assert "Traceback" not in out and "INTERNALERROR" not in out, out[-4000:]
    assert run.proc.returncode in (0, 1), out[-4000:]
    assert (run.reports / "triage.json").is_file(), out[-4000:]
    assert any((run.reports / "allure-results").glob("*-result.json")), "Allure results written"
    return run.triage
