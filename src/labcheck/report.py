"""`labcheck report`: the Allure HTML report, built offline with Allure 3 from npm (no Java).

Allure 3 is the npm package ``allure``, pinned in ``node/package.json``; install it with
``npm ci --prefix node`` (it lands in ``node/node_modules/.bin/allure``). Set ``LABCHECK_ALLURE``
to use another Allure 3 executable.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

ALLURE_ENV = "LABCHECK_ALLURE"
INSTALL_HINT = "install it with: npm ci --prefix node (in the labcheck repository)"
NODE_DIR = "node"


class ReportError(Exception):
    """The report could not be built; the message says why and what to do."""


def _candidates() -> list[Path]:
    here = Path(__file__).resolve()
    bases = [Path.cwd(), *Path.cwd().parents, *here.parents]
    seen: list[Path] = []
    for base in bases:
        path = base / NODE_DIR / "node_modules" / ".bin" / "allure"
        if path not in seen:
            seen.append(path)
    return seen


def _major(command: list[str]) -> int | None:
    try:
        proc = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "NO_COLOR": "1"})
    except (OSError, subprocess.SubprocessError):
        return None
    text = (proc.stdout + proc.stderr).strip().splitlines()
    for line in text:
        head = line.strip().split(".")[0]
        if head.isdigit():
            return int(head)
    return None


def find_allure() -> list[str]:
    """The Allure 3 command: $LABCHECK_ALLURE, node/node_modules/.bin/allure, or an `allure` 3 on PATH."""
    configured = os.environ.get(ALLURE_ENV)
    if configured:
        if not shutil.which(configured) and not Path(configured).is_file():
            raise ReportError(f"{ALLURE_ENV}={configured}: no such executable")
        return [configured]
    if not shutil.which("node"):
        raise ReportError(f"node is not installed (Allure 3 runs on Node.js 20+; apt-get install nodejs npm), then {INSTALL_HINT}")
    for path in _candidates():
        if path.is_file() and os.access(path, os.X_OK):
            return [str(path)]
    on_path = shutil.which("allure")
    if on_path and _major([on_path]) == 3:
        return [on_path]
    raise ReportError(f"Allure 3 is not installed; {INSTALL_HINT}")


def allure_config(results: Path, output: Path, *, name: str, single_file: bool, history: Path | None,
                  history_limit: int | None) -> dict[str, Any]:
    """The allurerc.json for this report; categories come from the results' categories.json."""
    config: dict[str, Any] = {
        "name": name,
        "output": str(output),
        "plugins": {"awesome": {"options": {"singleFile": single_file, "reportName": name,
                                            "groupBy": ["parentSuite", "suite", "subSuite"]}}},
    }
    categories = results / "categories.json"
    if categories.is_file():
        try:
            rules = json.loads(categories.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ReportError(f"{categories}: not valid JSON: {exc}") from None
        if isinstance(rules, list) and rules:
            config["categories"] = {"rules": rules}
    if history is not None:
        config["historyPath"] = str(history)
        if history_limit:
            config["historyLimit"] = history_limit
    return config


def build_report(results: Path, output: Path, *, history: Path | None = None, single_file: bool = True,
                 name: str = "labcheck triage", history_limit: int | None = None,
                 timeout: float = 600) -> Path:
    """Build the report from ``results`` into ``output``; return the page to open."""
    results = results.resolve()
    output = output.resolve()
    if not results.is_dir() or not any(results.glob("*-result.json")):
        raise ReportError(f"{results}: no Allure results there (run the checks first: pytest checks)")
    allure = find_allure()
    if history is not None:
        history = history.resolve()
        history.parent.mkdir(parents=True, exist_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="labcheck-report-") as tmp:
        rc = Path(tmp) / "allurerc.json"
        rc.write_text(json.dumps(allure_config(results, output, name=name, single_file=single_file,
                                               history=history, history_limit=history_limit), indent=2))
        env = {**os.environ, "NO_COLOR": "1", "ALLURE_AGENT_STATE_DIR": str(Path(tmp) / "agent")}
        try:
            proc = subprocess.run([*allure, "generate", "--config", str(rc), "--output", str(output), str(results)],
                                  cwd=tmp, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise ReportError(f"allure generate did not finish within {timeout:g} s") from None
        except OSError as exc:
            raise ReportError(f"cannot run {allure[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise ReportError(f"allure generate exited {proc.returncode}: {tail}")
    page = output / "index.html"
    if not page.is_file():
        raise ReportError(f"allure generate wrote no {page}")
    for html in output.glob("*.html"):
        strip_analytics(html)
    return page


_ANALYTICS = re.compile(
    r"""<script async src="https://www\.googletagmanager\.com/[^"]*"></script>\s*<script>\s*window\.dataLayer.*?</script>""",
    re.S)


def strip_analytics(page: Path) -> None:
    """Remove the analytics tag Allure 3 puts in every page: the report stays offline and private."""
    text = page.read_text(encoding="utf-8")
    cleaned = _ANALYTICS.sub("", text)
    if cleaned != text:
        page.write_text(cleaned, encoding="utf-8")


# --- the `labcheck report` command -----------------------------------------------------------


def add_report_command(subparsers: Any) -> None:
    """`labcheck report`: build the Allure HTML report from reports/allure-results."""
    p = subparsers.add_parser("report", help="build the Allure HTML report (offline, Allure 3 from npm)",
                              description=add_report_command.__doc__)
    p.add_argument("--results", default=None, metavar="DIR",
                   help="Allure results directory (default: <reports>/allure-results)")
    p.add_argument("--reports-dir", default=None, metavar="DIR",
                   help="reports directory (default: $LABCHECK_REPORTS_DIR or reports)")
    p.add_argument("--output", "-o", default=None, metavar="DIR",
                   help="where the report goes (default: <reports>/allure-report)")
    p.add_argument("--history", default=None, metavar="FILE",
                   help="Allure history file (JSON lines) read and extended, so runs show trends")
    p.add_argument("--history-limit", type=int, default=None, metavar="N", help="keep at most N runs of history")
    p.add_argument("--name", default="labcheck triage", help="report name")
    p.add_argument("--multi-file", action="store_true", help="write a directory of files, not one index.html")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from labcheck.errors import UsageError

    reports = Path(args.reports_dir or os.environ.get("LABCHECK_REPORTS_DIR") or "reports")
    results = Path(args.results) if args.results else reports / "allure-results"
    output = Path(args.output) if args.output else reports / "allure-report"
    try:
        page = build_report(results, output, history=Path(args.history) if args.history else None,
                            single_file=not args.multi_file, name=args.name, history_limit=args.history_limit)
    except ReportError as exc:
        raise UsageError(str(exc)) from None
    print(f"report: {page}")
    if args.history:
        print(f"history: {Path(args.history).resolve()}")
    return 0
