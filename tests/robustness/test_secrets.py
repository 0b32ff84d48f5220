"""Secrets never leak: known secrets planted in the sandbox, faults that make checks record evidence,
and every byte the runs write scanned for them (issue 7, part 2).

One test with a list that grows: when the platform (or the sandbox) gains a secret, add a line to
PLANTED. The scan looks for each value, its first 8 characters, its URL-encoded form and its
base64 forms, in the raw bytes of every output and inside every base64 blob they embed (the
single-file HTML report carries its data base64-encoded, so a raw scan alone would see nothing).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from ownbox import clean_env, own_sandbox

REPO = Path(__file__).resolve().parents[2]
SANDBOX_DIR = Path("/tmp/lc-sec")
PORT_OFFSET = 1100

State = dict[str, Any]

# (what it is and where the sandbox plants it, how to read it from state.json)
PLANTED: list[tuple[str, Callable[[State], str | None]]] = [
    ("labcheck's database password (inside database_url)",
     lambda st: st["secrets"]["labcheck_db_password"]),
    ("the application's database password (DATABASE_URL in the Kubernetes secret; `password=` in pod logs)",
     lambda st: st["secrets"]["app_db_password"]),
    ("the PostgreSQL superuser password", lambda st: st["secrets"]["postgres_password"]),
    ("the JWT secret (JWT_SECRET in the Kubernetes secret; `JWT_SECRET=` in pod logs)",
     lambda st: st["secrets"]["jwt_secret"]),
    ("the rotated JWT secret (the Kubernetes secret under auth-secret-rotated)",
     lambda st: st["secrets"].get("rotated_jwt_secret")),
    ("the test bearer token (test_token; `Authorization: Bearer` in pod logs)",
     lambda st: st["settings"]["test_token"]),
    ("the AWS secret key (aws_secret_access_key)", lambda st: st["settings"]["aws_secret_access_key"]),
    ("the AWS access key id (aws_access_key_id, configured as a secret)",
     lambda st: st["settings"]["aws_access_key_id"]),
    ("the sandbox admin key", lambda st: st["secrets"]["admin_key"]),
    ("the Kubernetes API token (in the kubeconfig)", lambda st: st["secrets"]["kube_token"]),
    ("S3_ACCESS_KEY in the stand-in's Kubernetes secret", lambda st: "AKIASANDBOX7EXAMPLE0"),
]

# Faults that make checks fail and record evidence: API errors, a crash loop (pod logs with the
# startup lines), a node NotReady (logs of long-running pods, with the periodic planted lines),
# a leaking pool, an S3 outage and a rotated JWT secret (the test token is refused). The error lines
# surge, so the log-pattern checks attach the matching lines of the API pods' logs too.
FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("error-rate", {}),
    ("crash-loop", {}),
    ("node-not-ready", {}),
    ("db-pool-leak", {}),
    ("s3-outage", {}),
    ("auth-secret-rotated", {}),
]

# Checks that must have failed (and so recorded evidence) before the outputs count as covered.
MUST_FAIL = ("check_error_ratio_below_sev2", "check_test_token_accepted", "check_bucket_reachable",
             "check_no_container_crash_looping[llm-research-api]", "check_nodes_ready_without_pressure",
             "check_connection_headroom_below_sev2", "check_error_lines_below_surge")
# The planted lines of the pod logs, as the redactor leaves them: proof that they were collected.
MASKED_IN_EVIDENCE = ("password=***", "Authorization: Bearer ***", "JWT_SECRET=***")

# The noisiest output pytest can give: every summary, locals in tracebacks, full diffs, DEBUG logs
# live on the terminal, in the report sections and in a log file, and a JUnit XML report.
NOISY = ("-rA", "-l", "-vv", "--log-level=DEBUG", "--log-cli-level=DEBUG", "--log-file-level=DEBUG")


@pytest.fixture(scope="module")
def box() -> Iterator[State]:
    with own_sandbox(SANDBOX_DIR, PORT_OFFSET) as state:
        yield state


def _env() -> dict[str, str]:
    """Our environment without any labcheck configuration, pointed at our own sandbox."""
    return clean_env(LABCHECK_SANDBOX_DIR=str(SANDBOX_DIR))


class Outputs:
    """Everything the runs wrote: their stdout and stderr, and their reports directories."""

    def __init__(self) -> None:
        self.streams: dict[str, bytes] = {}
        self.dirs: list[Path] = []

    def run(self, name: str, cmd: list[str], reports: Path | None = None, timeout: float = 180
            ) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, timeout=timeout)
        self.streams[f"{name} stdout"] = proc.stdout
        self.streams[f"{name} stderr"] = proc.stderr
        if reports is not None:
            self.dirs.append(reports)
        return proc

    def files(self) -> dict[str, bytes]:
        out = dict(self.streams)
        for directory in self.dirs:
            for path in sorted(directory.rglob("*")):
                if path.is_file():
                    out[str(path)] = path.read_bytes()
        return out


def run_checks(outputs: Outputs, reports: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *NOISY,
           f"--log-file={reports / 'pytest-debug.log'}", f"--junitxml={reports / 'junit.xml'}",
           f"--reports-dir={reports}", *extra, "checks"]
    proc = outputs.run(reports.name, cmd, reports)
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 1, out[-4000:]
    assert "INTERNALERROR" not in out, out[-4000:]
    return proc


def covered(reports: Path) -> list[str]:
    """What is still missing for this run to count: failing checks, masked planted lines."""
    triage = json.loads((reports / "triage.json").read_text())
    failed = {c["nodeid"].split("::", 1)[1] for c in triage["checks"] if c["outcome"] == "failed"}
    missing = [f"{name} failed" for name in MUST_FAIL if name not in failed]
    evidence = "\n".join(p.read_text(errors="replace") for p in (reports / "evidence").rglob("*") if p.is_file())
    missing += [f"{text!r} in evidence" for text in MASKED_IN_EVIDENCE if text not in evidence]
    return missing


# --- the scan --------------------------------------------------------------------------------


def forms(value: str) -> dict[bytes, str]:
    """The byte strings that would betray a secret: itself, its first 8 characters, encodings."""
    out = {value.encode(): "value", value[:8].encode(): "first 8 characters"}
    quoted = quote(value, safe="")
    if quoted != value:
        out[quoted.encode()] = "URL-encoded"
    raw = value.encode()
    for shift in range(3):  # base64 at each alignment: the characters that depend on the secret only
        encoded = base64.b64encode(b"\0" * shift + raw)
        core = encoded[-(-shift * 4 // 3):(shift + len(raw)) * 4 // 3]
        out[core] = "base64"
        out[core.translate(bytes.maketrans(b"+/", b"-_"))] = "base64url"
    return out


_B64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{16,}={0,2}")


def decoded_blobs(data: bytes) -> bytes:
    """Every base64 run in data, decoded (the HTML report embeds its data files this way)."""
    parts = []
    for match in _B64_RUN.finditer(data):
        text = match.group(0).rstrip(b"=")
        text += b"=" * (-len(text) % 4)
        for alt in (None, b"-_"):
            try:
                parts.append(base64.b64decode(text, altchars=alt, validate=True))
                break
            except (binascii.Error, ValueError):
                continue
    return b"\n".join(parts)


def find_leaks(blobs: dict[str, bytes], needles: dict[bytes, tuple[str, str]]) -> list[str]:
    leaks = []
    for where, data in blobs.items():
        for layer, content in (("", data), (" (inside a base64 blob)", decoded_blobs(data))):
            for needle, (secret, form) in needles.items():
                at = content.find(needle)
                if at < 0:
                    continue
                context = content[max(0, at - 100):at + len(needle) + 40].replace(needle, b"<SECRET>")
                leaks.append(f"{secret}, {form}: {where}{layer} at byte {at}: ...{context.decode(errors='replace')}...")
    return leaks


# --- the test --------------------------------------------------------------------------------


@pytest.mark.timeout(280)
def test_no_planted_secret_in_any_output(box: State, tmp_path: Path) -> None:
    from labcheck import report
    from labcheck.sandbox import manager

    manager.heal(dir=SANDBOX_DIR)
    outputs = Outputs()
    try:
        for name, params in FAULTS:
            manager.fault(name, params, dir=SANDBOX_DIR)
        state = manager.load_state(SANDBOX_DIR) or box  # auth-secret-rotated added its new secret
        planted = {what: value for what, get in PLANTED if (value := get(state))}
        assert len(planted) == len(PLANTED), sorted(set(w for w, _ in PLANTED) - set(planted))

        # Faults reach Prometheus within its 10 s window, and under error-rate a request may meet
        # a 500 instead of the refusal: run until every wanted failure shows, alone and under xdist
        # (workers redact, the controller writes the reports). Every run's output is scanned.
        deadline = time.monotonic() + 120
        runs: list[Path] = []
        for mode, extra in (("run", ()), ("xdist", ("-n", "2"))):
            while True:
                reports = tmp_path / f"{mode}{len(runs) + 1}"
                runs.append(reports)
                run_checks(outputs, reports, *extra)
                missing = covered(reports)
                if not missing:
                    break
                assert time.monotonic() < deadline, f"{mode}: not covered after {len(runs)} runs: {missing}"
            if mode == "run":
                last = reports  # the covered plain run: its reports become the HTML report

        # The HTML report (Allure 3 from npm), when it is installed here.
        html = None
        try:
            report.find_allure()
        except report.ReportError as exc:
            print(f"no HTML report scanned: {exc}")
        else:
            code = "import sys\nfrom labcheck.cli import main\nsys.exit(main(sys.argv[1:]))"
            proc = outputs.run("labcheck report", [sys.executable, "-c", code, "report", "--reports-dir", str(last)])
            assert proc.returncode == 0, proc.stderr.decode(errors="replace")
            html = last / "allure-report" / "index.html"
            assert html.is_file()
            # The evidence is in the report, base64-encoded: the decoding layer of the scan sees it.
            assert b"JWT_SECRET=***" in decoded_blobs(html.read_bytes())
    finally:
        manager.heal(dir=SANDBOX_DIR)

    blobs = outputs.files()
    assert all(str(r / "junit.xml") in blobs for r in runs)
    assert any("/evidence/" in name for name in blobs) and any("/allure-results/" in name for name in blobs)
    needles = {needle: (what, form) for what, value in planted.items() for needle, form in forms(value).items()}
    # The scan itself finds what it looks for: a secret inside base64 inside a JSON string.
    sample = b'{"data": "' + base64.b64encode(b'{"k": "' + next(iter(planted.values())).encode() + b'"}') + b'"}'
    assert find_leaks({"self-check": sample}, needles)
    leaks = find_leaks(blobs, needles)
    total = sum(len(b) for b in blobs.values())
    print(f"scanned {len(blobs)} outputs of {len(runs)} runs"
          f"{' and the HTML report' if html else ''}: {total} bytes, {len(planted)} secrets, {len(needles)} forms")
    assert not leaks, f"{len(leaks)} leak(s):\n" + "\n".join(leaks[:40])
