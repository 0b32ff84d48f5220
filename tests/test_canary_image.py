"""deploy/Dockerfile without Docker: its steps, repeated on this machine in a clean virtualenv.

Docker cannot build images where labcheck is developed. So this test reads the Dockerfile, lays
out its COPY steps in a temporary directory standing for the image's filesystem, creates a clean
virtualenv (``python -m venv``, no system site-packages) standing for the base image's Python,
runs the Dockerfile's ``pip install`` there, and runs the image's CMD against the sandbox with
``/reports`` mapped to a temporary directory. The RUN step that creates the non-root user
(groupadd/useradd/chown) is checked but not executed: it would change this machine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
USER_SETUP = ("groupadd", "useradd", "mkdir", "chown")
# Only for speed here: the image disables pip's cache, a test run may reuse it.
NOT_APPLIED_ENV = {"PIP_NO_CACHE_DIR"}


@dataclass
class Dockerfile:
    """The instructions of a Dockerfile, in order, with continuations joined."""

    steps: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        out = cls()
        logical = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not logical and (not line or line.startswith("#")):
                continue
            if line.endswith("\\"):
                logical += line[:-1] + " "
                continue
            logical += line
            word, _, rest = logical.partition(" ")
            out.steps.append((word.upper(), rest.strip()))
            logical = ""
        return out

    def all(self, word: str) -> list[str]:
        return [rest for w, rest in self.steps if w == word]

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for rest in self.all("ENV"):
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
        return env

    def cmd(self) -> list[str]:
        [cmd] = self.all("CMD")
        return list(json.loads(cmd))  # exec form: no shell in between


def test_dockerfile_is_slim_python_311_non_root_with_a_reports_volume() -> None:
    df = Dockerfile.read(DOCKERFILE)
    assert df.steps[0] == ("FROM", "python:3.11-slim")
    [user] = df.all("USER")
    assert user.split(":")[0] not in ("root", "0")
    assert df.steps.index(("USER", user)) > max(i for i, (w, _) in enumerate(df.steps) if w == "RUN")
    assert json.loads(df.all("VOLUME")[0]) == ["/reports"]
    cmd = df.cmd()
    assert cmd[:3] == ["python", "-m", "pytest"] and "--reports-dir=/reports" in cmd and cmd[-1] == "checks"
    copied = {shlex.split(rest)[0] for rest in df.all("COPY")}
    assert {"src/", "checks/", "scenarios/", "pyproject.toml"} <= copied
    for rest in df.all("RUN"):
        first = shlex.split(rest)[0]
        assert first in USER_SETUP or rest.startswith("python -m pip install "), rest


def layout(df: Dockerfile, root: Path) -> Path:
    """Apply WORKDIR and COPY under root; return the working directory."""
    workdir = root
    for word, rest in df.steps:
        if word == "WORKDIR":
            workdir = root / rest.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif word == "COPY":
            *sources, dest = shlex.split(rest)
            target = workdir / dest if not dest.startswith("/") else root / dest.lstrip("/")
            for source in sources:
                src = REPO / source
                if src.is_dir():
                    shutil.copytree(src, target, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                elif dest.endswith("/") or dest in (".", "./"):
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target / src.name)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target)
    return workdir


def image_env(df: Dockerfile, venv: Path, reports: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k.startswith(("LABCHECK_SANDBOX", "PIP_", "SSL_", "HOME"))}
    keep.update({k: v.replace("/reports", str(reports)) for k, v in df.env().items() if k not in NOT_APPLIED_ENV})
    keep["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    keep["VIRTUAL_ENV"] = str(venv)
    return keep


@pytest.mark.timeout(1200)
def test_dockerfile_steps_and_cmd_work_in_a_clean_virtualenv(sandbox: Any, tmp_path: Path) -> None:
    df = Dockerfile.read(DOCKERFILE)
    root, venv, reports = tmp_path / "image", tmp_path / "venv", tmp_path / "reports"
    reports.mkdir()
    workdir = layout(df, root)
    assert (workdir / "pyproject.toml").exists() and (workdir / "checks" / "api_gateway.py").exists()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = image_env(df, venv, reports)
    for rest in df.all("RUN"):
        argv = shlex.split(rest)
        if argv[0] in USER_SETUP:
            continue  # creates the non-root user in the image; not on this machine
        assert argv[0] == "python"
        proc = subprocess.run([str(venv / "bin" / "python"), *argv[1:]], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=1000)
        assert proc.returncode == 0, f"RUN {rest}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    # The image's labcheck is the installed package, not this checkout.
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import labcheck; print(labcheck.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert str(venv) in where.stdout, where.stdout + where.stderr

    cmd = [a.replace("/reports", str(reports)) for a in df.cmd()]
    assert cmd[0] == "python"
    proc = subprocess.run([str(venv / "bin" / "python"), *cmd[1:]], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1, 6), proc.stdout[-4000:] + proc.stderr[-2000:]
    triage = json.loads((reports / "triage.json").read_text())
    assert triage["target"].startswith("sandbox"), triage["target"]
    assert triage["counts"]["passed"] > 10, triage["counts"]
    assert (reports / "incident.md").exists() and any((reports / "allure-results").glob("*-result.json"))
    assert "labcheck target: sandbox" in proc.stdout
    # The CronJob's canary command (deploy/README.md) in the same environment: the canary profile
    # turns the write canaries on, and the outcome goes to the sandbox's Pushgateway.
    readme = (REPO / "deploy" / "README.md").read_text()
    [canary] = [b.strip() for b in re.findall(r"```\n(.*?)```", readme, flags=re.S) if "--push-metrics=" in b]
    argv = [a.replace("/reports", str(reports / "canary")).replace("$(LABCHECK_PUSHGATEWAY_URL)",
                                                                   sandbox.settings["pushgateway_url"])
            for a in shlex.split(canary)]
    proc = subprocess.run([str(venv / "bin" / "python"), *argv[1:]], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1, 6), proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"labcheck: metrics pushed to {sandbox.settings['pushgateway_url']}" in proc.stdout
    outcomes = {c["nodeid"]: c["outcome"] for c in json.loads((reports / "canary" / "triage.json").read_text())["checks"]}
    assert outcomes["checks/storage.py::check_write_canary"] in ("passed", "failed")  # it ran: writes are on
    assert "checks/canary.py::check_experiment_dry_run_submission" in outcomes


# --- the experiment dry-run canary (checks/canary.py) against the sandbox ----------------------


def experiment_count(sandbox: Any) -> int:
    import httpx

    s = sandbox.settings
    answer = httpx.get(f"{s['api_url']}/experiments", headers={"Authorization": f"Bearer {s['test_token']}"},
                       timeout=10)
    assert answer.status_code == 200, answer.text
    return len(answer.json()["experiments"])


DRY_RUN = "checks/canary.py::check_experiment_dry_run_submission"


def test_dry_run_canary_passes_and_creates_nothing(healed: Any) -> None:
    before = experiment_count(healed)
    run = healed.run_checks("-m", "writes", "checks/canary.py")
    assert run.returncode == 0, run.stdout[-3000:]
    check = run.check(DRY_RUN)
    assert check["outcome"] == "passed" and check["severity"] == "SEV-2" and check["component"] == "experiments"
    assert check["observed"][0]["observed"].startswith("HTTP 200")
    assert experiment_count(healed) == before


def test_dry_run_canary_is_off_without_opting_in(healed: Any) -> None:
    run = healed.run_checks("checks/canary.py")
    assert run.returncode == 5  # deselected: it writes, and nobody asked for writes
    run = healed.run_checks("-m", "writes", "checks/canary.py", "--set=canary_writes=false")
    assert run.outcome(DRY_RUN) == "passed"  # -m writes is asking


def test_dry_run_canary_fails_when_submissions_fail(healed: Any) -> None:
    healed.fault("error-rate", share=1.0)
    run = healed.run_checks("-m", "writes", "checks/canary.py")
    assert run.returncode == 1, run.stdout[-3000:]
    check = run.check(DRY_RUN)
    assert check["outcome"] == "failed"
    assert "POST " in check["message"] and "HTTP 500" in check["message"]


@pytest.mark.parametrize("status, body, outcome, text", [
    (404, {"detail": "Not Found"}, "unknown", "the API offers no dry-run endpoint: HTTP 404"),
    (405, {"detail": "Method Not Allowed"}, "unknown", "the API offers no dry-run endpoint: HTTP 405"),
    (201, {"id": 7, "name": "x", "state": "queued"}, "failed", "ignored dry_run=true and may have created an "
                                                               "experiment (id 7): delete it"),
    (422, {"dry_run": True, "valid": False, "errors": ["name"]}, "failed", "HTTP 422"),
    (200, {"dry_run": True, "valid": False, "errors": ["quota"]}, "failed", "known-good submission was rejected"),
    (401, {"error": "unauthorized"}, "unknown", "the test token was refused"),
])
def test_dry_run_answers_are_judged(pytester: pytest.Pytester, status: int, body: dict[str, Any], outcome: str,
                                    text: str) -> None:
    from standin import unsigned_jwt

    token = unsigned_jwt()
    seen = _dry_run_against(pytester, status, body, token)
    [check] = json.loads((pytester.path / "reports" / "triage.json").read_text())["checks"]
    assert check["outcome"] == outcome and text in (check["message"] or ""), check
    assert seen == [f"/experiments?dry_run=true Bearer {token}"]


@pytest.mark.parametrize("expired, text", [
    (True, "labcheck's test token expired at "),
    (False, "test_token is not a JWT"),
])
def test_dry_run_is_not_sent_with_an_unusable_token(pytester: pytest.Pytester, expired: bool, text: str) -> None:
    import time

    from standin import unsigned_jwt

    token = unsigned_jwt(exp=int(time.time()) - 3600) if expired else "t0ken-for-tests"
    seen = _dry_run_against(pytester, 200, {"dry_run": True, "valid": True}, token)
    [check] = json.loads((pytester.path / "reports" / "triage.json").read_text())["checks"]
    assert check["outcome"] == "unknown" and text in (check["message"] or ""), check  # labcheck's own, like auth
    assert seen == []  # never POSTed
    for out in (pytester.path / "reports").rglob("*"):
        if out.is_file():
            assert token not in out.read_text(errors="replace"), out


def _dry_run_against(pytester: pytest.Pytester, status: int, body: dict[str, Any], token: str) -> list[str]:
    """Run checks/canary.py against a stand-in API answering ``status``/``body``; the requests it saw."""
    import http.server
    import threading

    seen: list[str] = []

    class Api(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("content-length") or 0))
            seen.append(f"{self.path} {self.headers.get('authorization')}")
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pytester.path.joinpath("checks").mkdir()
        shutil.copy(REPO / "checks" / "canary.py", pytester.path / "checks" / "canary.py")
        pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "--no-sandbox", f"--scenarios-dir={REPO / 'scenarios'}",
            f"--reports-dir={pytester.path / 'reports'}", f"--api-url=http://127.0.0.1:{server.server_address[1]}",
            f"--set=test_token={token}", "--set=canary_writes=true", "checks")
    finally:
        server.shutdown()
        server.server_close()
    return seen
