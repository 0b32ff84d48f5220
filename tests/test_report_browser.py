"""`labcheck report`: Allure 3 from npm builds one offline HTML file, keeps history, and renders in Chromium.

Needs Node.js 20+ with ``npm ci --prefix node`` (Allure 3) and Debian's ``chromium``; the tests that
need them skip, saying so, when they are missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from labcheck import report

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "scenarios"


def allure_or_skip() -> list[str]:
    try:
        return report.find_allure()
    except report.ReportError as exc:
        pytest.skip(f"Allure 3 is not available: {exc}")


def chromium_or_skip() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


def labcheck(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys\nfrom labcheck.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def browse(page: Path, fragment: str, tmp: Path, *, screenshot: Path | None = None) -> str:
    """The visible text of the page after its JavaScript ran (headless Chromium, virtual time)."""
    chromium = chromium_or_skip()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-extensions",
             f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=15000", "--window-size=1400,1100"]
    url = page.as_uri() + (f"#/{fragment}" if fragment else "")
    if screenshot is not None:
        subprocess.run([chromium, *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=180,
                       check=True)
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=180,
                         check=True).stdout
    dom = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", " ", dom, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", dom)
    return re.sub(r"\s+", " ", text).replace("&gt;", ">").replace("&lt;", "<").replace("&amp;", "&")


def test_the_report_config_carries_categories_single_file_and_history(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "categories.json").write_text(json.dumps([{"name": "A [a]", "matchedStatuses": ["failed"],
                                                          "messageRegex": ".*"}]))
    config = report.allure_config(results, tmp_path / "out", name="n", single_file=True,
                                  history=tmp_path / "h.jsonl", history_limit=30)
    assert config["plugins"]["awesome"]["options"]["singleFile"] is True
    assert config["categories"] == {"rules": [{"name": "A [a]", "matchedStatuses": ["failed"], "messageRegex": ".*"}]}
    assert config["historyPath"] == str(tmp_path / "h.jsonl") and config["historyLimit"] == 30
    assert "historyPath" not in report.allure_config(results, tmp_path, name="n", single_file=False, history=None,
                                                     history_limit=None)


def test_report_without_results_is_a_one_line_usage_error(tmp_path: Path) -> None:
    proc = labcheck("report", "--results", str(tmp_path / "none"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no Allure results there" in proc.stderr


RESULT_CHECKS = """\
import pytest

@pytest.mark.sev2
@pytest.mark.storage
@pytest.mark.scenario("storage-failure")
def check_bucket(expect):
    expect(False, target="s3://datasets", observed="HTTP 503 SlowDown", threshold="HTTP 200",
           evidence={"status": 503, "code": "SlowDown"})
"""


def test_labcheck_report_builds_one_offline_file_and_keeps_history(pytester: pytest.Pytester) -> None:
    allure_or_skip()
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_s3.py").write_text(RESULT_CHECKS)
    reports = pytester.path / "reports"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--no-sandbox", f"--scenarios-dir={SCENARIOS}",
                                           f"--reports-dir={reports}", "checks")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    history = pytester.path / "history" / "allure-history.jsonl"
    for n in (1, 2):
        proc = labcheck("report", "--reports-dir", str(reports), "--history", str(history), cwd=pytester.path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"report: {reports / 'allure-report' / 'index.html'}")
        assert len(history.read_text().splitlines()) == n, "one history entry per build"
    out = reports / "allure-report"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [], "single file: no asset directories"
    page = (out / "index.html").read_text()
    assert len(page) > 500_000, "the app and its data are inlined"
    assert [v["name"] for v in json.loads((out / "test-results.json").read_text())["byId"].values()] == ["check_bucket"]
    assert not re.search(r"""<script[^>]+src=["']https?://""", page), "no script from the network"


def _result_id(report_dir: Path, name: str) -> str:
    by_id: dict[str, Any] = json.loads((report_dir / "test-results.json").read_text())["byId"]
    return next(k for k, v in by_id.items() if v["name"] == name)


@pytest.mark.timeout(900)
def test_a_faulted_sandbox_run_renders_in_a_real_browser(healed: Any, tmp_path: Path) -> None:
    allure_or_skip()
    chromium_or_skip()
    healed.fault("db-pool-leak")
    run = healed.wait_for(
        lambda r: r.outcome("check_readiness_reports_component_ok[db]") == "failed",
        "checks/api_gateway.py", "checks/database.py", deadline_s=120, what="readiness[db] failing")
    out = tmp_path / "report"
    page = report.build_report(run.reports / "allure-results", out, history=tmp_path / "history.jsonl")

    overview = browse(page, "", tmp_path, screenshot=tmp_path / "overview.png")
    assert "check_readiness_reports_component_ok[db]" in overview
    assert re.search(r"Failed \d+ Broken \d+ Passed \d+", overview), overview[:500]

    categories = browse(page, "categories", tmp_path, screenshot=tmp_path / "categories.png")
    assert "Database Connection Exhaustion [db-connection-exhaustion]" in categories
    assert "UNKNOWN / blind spot (could not check)" in categories or run.triage["counts"]["unknown"] == 0

    test_id = _result_id(out, "check_readiness_reports_component_ok[db]")
    shot = tmp_path / "failing-check.png"
    detail = browse(page, test_id, tmp_path, screenshot=shot)
    assert "check_readiness_reports_component_ok[db]" in detail
    assert "Category: Database Connection Exhaustion [db-connection-exhaustion]" in detail
    assert re.search(r"failure application/json \d+ B", detail), "the evidence attachment is listed"
    assert "Playbook: Database Connection Exhaustion" in detail
    assert shot.stat().st_size > 20_000, "a real screenshot, not a blank page"
    print(f"screenshots: {tmp_path}", file=sys.stderr)
    keep = os.environ.get("LABCHECK_KEEP_SCREENSHOT")
    if keep:  # a copy to look at after the run
        shutil.copy(shot, keep)


@pytest.mark.timeout(900)
def test_the_metrics_picture_is_in_the_report_and_on_the_failing_checks_page(healed: Any, tmp_path: Path) -> None:
    """Issue 14 part 3: the PNG is inlined in the one HTML file, and Chromium lists it on the run's
    Global Attachments tab and in the failing check's teardown."""
    import base64

    allure_or_skip()
    chromium_or_skip()
    healed.fault("error-rate", share=0.5)
    run = healed.wait_for(lambda r: r.outcome("check_error_ratio_below_sev2") == "failed",
                          "checks/api_gateway.py", deadline_s=120, what="the 5xx ratio check failing")
    picture = run.triage["picture"]
    assert picture["path"], picture
    out = tmp_path / "report"
    page = report.build_report(run.reports / "allure-results", out)
    png = (run.reports / picture["path"]).read_bytes()
    assert base64.b64encode(png).decode()[:4000] in page.read_text(), "the PNG is inlined in the report"

    tab = browse(page, "globalAttachments", tmp_path, screenshot=tmp_path / "global-attachments.png")
    assert "Global Attachments 1" in tab and "metrics picture (last 30 min) image/png" in tab, tab[:800]
    detail = browse(page, _result_id(out, "check_error_ratio_below_sev2"), tmp_path)
    assert "Tear down" in detail and "metrics picture (last 30 min)" in detail, detail[:2000]
