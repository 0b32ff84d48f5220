"""Fixtures for labcheck's own tests: pytester, and the live sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    """One `pytest checks` run against the sandbox, and what it wrote."""

    returncode: int
    stdout: str
    stderr: str
    reports: Path

    @property
    def triage(self) -> dict[str, Any]:
        return json.loads((self.reports / "triage.json").read_text())

    def outcome(self, nodeid_part: str) -> str:
        """The outcome of the single check whose node id contains the text."""
        found = [c for c in self.triage["checks"] if nodeid_part in c["nodeid"]]
        assert len(found) == 1, f"{nodeid_part!r} matched {[c['nodeid'] for c in found]}"
        return str(found[0]["outcome"])

    def check(self, nodeid_part: str) -> dict[str, Any]:
        found = [c for c in self.triage["checks"] if nodeid_part in c["nodeid"]]
        assert len(found) == 1, f"{nodeid_part!r} matched {[c['nodeid'] for c in found]}"
        return found[0]

    def scenario_ids(self) -> set[str]:
        return {s["id"] for s in self.triage["scenarios"]}


class Sandbox:
    """The running sandbox: its state, fault injection, and check runs against it."""

    def __init__(self, state: dict[str, Any], tmp: Path) -> None:
        self.state = state
        self.tmp = tmp
        self.runs = 0

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.state["settings"])

    def fault(self, name: str, **params: Any) -> None:
        from labcheck.sandbox import manager

        manager.fault(name, params)

    def heal(self) -> None:
        from labcheck.sandbox import manager

        manager.heal()

    def run_checks(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
        """Run `pytest checks` in a subprocess, with its own reports directory."""
        self.runs += 1
        reports = self.tmp / f"run{self.runs}"
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--reports-dir={reports}",
               *args]
        if not any(a.startswith("checks") for a in args):
            cmd.append("checks")
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
        return Run(proc.returncode, proc.stdout, proc.stderr, reports)

    def quiet(self, deadline_s: float = 90) -> None:
        """Wait until the API's request signals are healthy again: a fault healed a moment ago
        lingers in the sandbox's 10 s rate window (a 401 burst, a slow minute) for a few scrapes."""
        self.wait_for(lambda r: r.triage["severity"] is None, "checks/api_gateway.py", "checks/auth.py",
                      deadline_s=deadline_s, what="a quiet platform")

    def wait_for(self, predicate: Callable[[Run], bool], *args: str, deadline_s: float = 60,
                 what: str = "condition") -> Run:
        """Run the checks until the predicate holds, or fail at the deadline."""
        end = time.monotonic() + deadline_s
        last: Run | None = None
        while True:
            last = self.run_checks(*args)
            if (last.reports / "triage.json").exists() and predicate(last):
                return last
            if time.monotonic() > end:
                tail = last.stdout[-3000:]
                raise AssertionError(f"{what} not reached within {deadline_s:g} s; last run:\n{tail}")


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """The live sandbox: reused when already up (CI starts it), else started and stopped here."""
    from labcheck.sandbox import manager

    state = manager.load_state()
    started_here = False
    if not state or not all(s.get("alive", True) for s in manager.status().get("services", {}).values()):
        offset = int(os.environ.get("LABCHECK_SANDBOX_PORT_OFFSET", "0"))
        state = manager.up(port_offset=offset)
        started_here = True
    box = Sandbox(state, tmp_path_factory.mktemp("sandbox-runs"))
    box.heal()
    yield box
    box.heal()
    if started_here:
        manager.down()


@pytest.fixture
def healed(sandbox: Sandbox) -> Iterator[Sandbox]:
    """A sandbox that is healed again after the test, whatever the test injected."""
    yield sandbox
    sandbox.heal()
