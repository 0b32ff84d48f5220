"""A check's outcome: FAILED on an assertion, UNKNOWN on anything else; and the run's triage.

``Outcomes`` turns a check that could not check into UNKNOWN, ``UnknownReports`` builds those
reports cheaply, ``Triage`` collects every result and writes the verdict.
"""

from __future__ import annotations

import linecache
import os
import time
from collections.abc import Generator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from labcheck import allure_results, signals, verdict
from labcheck.errors import Unknown
from labcheck.evidence import Redactor
from labcheck.expect import ExpectFailure
from labcheck.markers import check_meta, is_check
from labcheck.session import (
    catalogue_key,
    get_lab,
    lab_key,
    redactor_key,
    reports_dir,
    settings_key,
    started_key,
)


def _unknown_reason(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    exc = excinfo.value
    if isinstance(exc, Unknown):
        return str(exc)
    return f"could not check: {type(exc).__name__}: {exc}"


def redact_exception(excinfo: pytest.ExceptionInfo[BaseException], redact: Redactor) -> None:
    exc = excinfo.value
    if exc.args and any(isinstance(a, str) for a in exc.args):
        exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
    if isinstance(exc, Unknown):
        exc.reason = redact(exc.reason)


# The report of a check's call phase, as the plugin leaves it (FAILED, or turned into UNKNOWN), for
# fixtures that act on the outcome at teardown (a failing check's evidence).
call_report_key = pytest.StashKey[pytest.TestReport]()

# What a check raises when it judged the platform (or was skipped or stopped); anything else
# means it could not check: UNKNOWN. Only ``expect`` judges: a bare AssertionError raised inside a
# probe or a component is a bug or a surprise there, not an observation of the platform.
NOT_UNKNOWN = (ExpectFailure, pytest.fail.Exception, pytest.skip.Exception, KeyboardInterrupt)


def _is_unknown(item: pytest.Item, call: pytest.CallInfo[None]) -> bool:
    return call.excinfo is not None and is_check(item) and not call.excinfo.errisinstance(NOT_UNKNOWN)


class UnknownReports:
    """An UNKNOWN's report, built without pytest's traceback formatting.

    pytest parses the module of every traceback entry it prints to find the statement (0.3-0.5 s
    over an outage run's 54 UNKNOWNs), and the plugin then replaces that text with the reason
    anyway. Allure keeps a short trace: the check's own line and the exception.
    """

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport | None:
        if not _is_unknown(item, call) or call.when == "collect":
            return None
        excinfo = call.excinfo
        assert excinfo is not None
        lines = []
        tb = _own_entry(excinfo, item)
        if tb is not None:
            code = tb.tb_frame.f_code
            lines.append(f"{code.co_filename}:{tb.tb_lineno}: in {code.co_name}")
            source = linecache.getline(code.co_filename, tb.tb_lineno).strip()
            if source:
                lines.append(f"    {source}")
        lines.append(f"E   {excinfo.exconly()}")
        sections = [(f"Captured {key} {phase}", content)
                    for phase, key, content in getattr(item, "_report_sections", ())]
        when = call.when
        return pytest.TestReport(item.nodeid, item.location, dict.fromkeys(item.keywords, 1), "failed",
                                 "\n".join(lines), when, sections, call.duration, call.start, call.stop,
                                 user_properties=item.user_properties)


def _own_entry(excinfo: pytest.ExceptionInfo[BaseException], item: pytest.Item) -> TracebackType | None:
    """The check's own (last) traceback entry, else the innermost one."""
    own: TracebackType | None = None
    last: TracebackType | None = None
    tb: TracebackType | None = excinfo.tb
    path = os.fspath(item.path)
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            own = tb
        last, tb = tb, tb.tb_next
    return own or last


def redact_repr(obj: Any, redact: Redactor, depth: int) -> Any:
    """Redact every string inside pytest's structured failure repr, keeping its structure."""
    if depth > 12:
        return obj
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, list):
        return [redact_repr(x, redact, depth + 1) for x in obj]
    if isinstance(obj, tuple):
        return tuple(redact_repr(x, redact, depth + 1) for x in obj)
    if isinstance(obj, dict):
        return {k: redact_repr(v, redact, depth + 1) for k, v in obj.items()}
    if type(obj).__module__.startswith("_pytest") and hasattr(obj, "__dict__"):
        for name, value in vars(obj).items():
            if isinstance(value, str | list | tuple | dict) or hasattr(value, "__dict__"):
                object.__setattr__(obj, name, redact_repr(value, redact, depth + 1))
    return obj


class Outcomes:
    """Outermost makereport wrapper: a check that could not check is UNKNOWN, not failed.

    It runs after Allure's listener, which files a non-assertion exception as "broken" but a bare
    AssertionError as "failed"; this files every UNKNOWN as "broken", so Allure agrees with
    triage.json. pytest itself then sees a skip with category "unknown".
    """

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
        report: pytest.TestReport = yield
        if not is_check(item):
            return report
        if call.when == "setup":
            report.user_properties.append(("labcheck_meta", check_meta(item)))
        self._unknown(item, call, report)
        if call.when == "call":
            item.stash[call_report_key] = report  # final: a fixture's teardown reads whether the check failed
        return report

    @staticmethod
    def _unknown(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
        """Turn a failed report whose exception is not a judgement into UNKNOWN (a skip), in place."""
        excinfo = call.excinfo
        if excinfo is None or not report.failed or excinfo.errisinstance(NOT_UNKNOWN):
            return
        earlier = item.stash.get(call_report_key, None)
        if call.when == "teardown" and earlier is not None and earlier.failed:
            return  # the check failed: that finding stands, a teardown surprise does not blind it
        allure_results.mark_broken(item.config, message=excinfo.exconly(), trace=report.longreprtext)
        reason = _unknown_reason(excinfo)
        redact = item.config.stash.get(redactor_key, None)
        if redact is not None:
            reason = redact(reason)
        _, lineno, _ = item.location
        report.outcome = "skipped"
        report.longrepr = (str(item.path), (lineno or 0) + 1, f"UNKNOWN: {reason}")
        report.user_properties.append(("labcheck_unknown", reason))


class Triage:
    """Collects every check's result (on the controller under xdist) and writes the verdict."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results: dict[str, dict[str, Any]] = {}
        self.verdict: dict[str, Any] | None = None
        self.expected: dict[str, dict[str, Any]] = {}
        self.error: str | None = None
        self.picture_line: str | None = None
        self._ahead: Any = None  # picture.Ahead, started at the first failure
        self._ahead_tried = False

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.expected.update({i.nodeid: check_meta(i) for i in session.items if is_check(i)})

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        for nodeid in ids:
            # Checks only, as without xdist: labcheck's own tests under -n are no triage.
            if nodeid.rpartition("::")[2].startswith("check_"):
                self.expected.setdefault(nodeid, {"component": None, "severity": None, "scenario": None})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props: dict[str, Any] = dict(report.user_properties)
        if "labcheck_meta" not in props and report.nodeid not in self.results:
            return
        entry = self.results.setdefault(report.nodeid, {"nodeid": report.nodeid, "outcome": "passed",
                                                         "duration_s": 0.0, "message": None, "observed": []})
        if "labcheck_meta" in props:
            entry.update(props["labcheck_meta"])
        if report.when == "teardown":
            entry["_done"] = True
        entry["duration_s"] = round(entry["duration_s"] + report.duration, 3)
        value: Any
        for name, value in report.user_properties:
            if name == "labcheck_observed" and value not in entry["observed"]:
                entry["observed"].append(value)
            elif name == "labcheck_fact":
                entry.setdefault("facts", {})[value[0]] = value[1]
            elif name == "labcheck_condition":
                entry["condition"] = value
        if "labcheck_unknown" in props:
            # A finding stands: a teardown that could not finish after the check failed does not
            # turn the failure into a blind spot.
            if entry["outcome"] != "failed":
                entry["outcome"] = "unknown"
                entry["message"] = props["labcheck_unknown"]
        elif report.failed and entry["outcome"] not in ("failed", "unknown"):
            entry["outcome"] = "failed"
            entry["message"] = _failure_text(report)
            self._picture_ahead()
        elif report.skipped and entry["outcome"] == "passed":
            entry["outcome"] = "skipped"
            entry["message"] = report.longrepr[2] if isinstance(report.longrepr, tuple) else None

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        config = self.config
        if config.option.collectonly:
            return
        interrupted = session.exitstatus == pytest.ExitCode.INTERRUPTED
        for entry in self.results.values():
            if not entry.pop("_done", False) and entry["outcome"] == "passed":
                entry.update(outcome="unknown", message="interrupted before this check finished")
        for nodeid, meta in self.expected.items():
            if nodeid not in self.results:
                reason = "interrupted before this check finished" if interrupted else "not run in this session"
                self.results[nodeid] = {"nodeid": nodeid, "outcome": "unknown", "message": reason,
                                        "duration_s": 0.0, "observed": [], **meta}
        if not self.results:
            return
        try:
            self.verdict = verdict.build(
                list(self.results.values()),
                catalogue=config.stash[catalogue_key],
                settings=config.stash[settings_key],
                started_at=config.stash[started_key],
                finished_at=time.time(),
                signals=signals.note(lab.peek(signals.RUN_KEY) if (lab := config.stash.get(lab_key, None)) else None,
                                     str(config.stash[settings_key].signals)),
            )
            self._picture(interrupted)
            verdict.write(reports_dir(config), self.verdict, config.stash[redactor_key])
        except Exception as exc:  # noqa: BLE001 - a bug in the verdict must not cost the run its results
            self.error = f"labcheck could not build the verdict: {type(exc).__name__}: {exc}"
            verdict.write_usage_error(reports_dir(config), self.error, checks=list(self.results.values()),
                                      redact=config.stash[redactor_key])
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
            return
        mode = config.getoption("labcheck_fail_unknown")
        if session.exitstatus == 0 and verdict.blind_spots_fail(self.verdict, mode):
            session.exitstatus = EXIT_BLIND_SPOTS

    def _not_drawn(self) -> str | None:
        """Why this run draws no picture (None when it does)."""
        if not self.config.stash[settings_key].metrics_picture:
            return "not drawn: metrics_picture is off"
        if (self.config.getoption("markexpr", "") or "").strip() == "sev1":
            # The on-call's first command stays fast (issue 14); a full run draws it.
            return "not drawn: a -m sev1 triage draws none (run without -m sev1 for the picture)"
        return None

    def _worst_failed(self) -> str | None:
        """The worst severity failed so far: the verdict's severity, if no worse check fails later."""
        levels = [e["severity"] for e in self.results.values()
                  if e["outcome"] == "failed" and isinstance(e.get("severity"), int) and e["severity"]]
        return f"SEV-{min(levels)}" if levels else None

    def _picture_ahead(self) -> None:
        """A check failed, so the run ends with a picture: start it now, in the background (issue 16:
        its queries, import and drawing overlap the checks still waiting for their answers)."""
        severity = self._worst_failed()
        if self._ahead is not None:
            if severity:
                self._ahead.expect(severity)
            return
        if self._ahead_tried or severity is None or self._not_drawn():
            return
        self._ahead_tried = True
        from labcheck import picture

        try:
            self._ahead = picture.Ahead(get_lab(self.config), severity=severity,
                                        run_at=self.config.stash[started_key])
        except Exception:  # noqa: BLE001 - the picture is then drawn at the end, as without a head start
            self._ahead = None

    def _picture(self, interrupted: bool) -> None:
        """A failing run's metrics picture, named in triage.json; what stops it is one summary line."""
        assert self.verdict is not None
        if not self.verdict.get("severity"):
            return
        config = self.config
        reports = reports_dir(config)
        if (why := self._not_drawn()) is not None:
            entry: dict[str, Any] = {"path": None, "note": why}
        elif interrupted:
            entry = {"path": None, "note": "not drawn: the run was interrupted"}
        else:
            allure_dir = getattr(config.option, "allure_report_dir", None)
            try:
                from labcheck import picture

                lab = get_lab(config)
                severity, where = str(self.verdict["severity"]), Path(allure_dir) if allure_dir else None
                if self._ahead is not None:
                    entry = self._ahead.finish(severity=severity, reports=reports, allure_dir=where,
                                               wait_s=max(lab.budget, picture.BUDGET_S))
                else:
                    entry = picture.draw(lab, severity=severity, run_at=config.stash[started_key], reports=reports,
                                         allure_dir=where)
            except Exception as exc:  # noqa: BLE001 - a picture that cannot be drawn costs the run nothing else
                entry = {"path": None, "note": f"not drawn: {type(exc).__name__}: {exc}"}
        self.verdict["picture"] = entry
        self.picture_line = _picture_line(entry, reports)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.error:
            terminalreporter.write_line(self.config.stash[redactor_key](f"ERROR: {self.error}"), red=True)
        if self.verdict is None:
            return
        redact = self.config.stash[redactor_key]
        terminalreporter.write_sep("=", "labcheck triage", bold=True)
        for line in verdict.summary_lines(self.verdict):
            terminalreporter.write_line(redact(line))
        if self.picture_line:
            terminalreporter.write_line(redact(self.picture_line))


def _picture_line(entry: dict[str, Any], reports: Path) -> str:
    """The picture's one line in the terminal summary: where it is and what it cost, or why not."""
    if not entry.get("path"):
        return f"Metrics picture: {entry.get('note') or 'not drawn'}"
    gaps = [p["name"] for p in entry.get("panels", ()) if not p["points"]]
    over = f", over its {entry['budget_s']:g} s budget" if entry["seconds"] > entry["budget_s"] else ""
    if entry.get("import_s") is not None:
        over += f"; importing matplotlib took {entry['import_s']:.2f} s, from the first failure on"
    return (f"Metrics picture: {reports / entry['path']} (last 30 min, drawn in {entry['seconds']:.2f} s{over})"
            + (f"; no data for {', '.join(gaps)}" if gaps else ""))


def _failure_text(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        text = str(crash.message)
    else:
        text = str(report.longrepr)
    for prefix in ("labcheck.expect.ExpectFailure: ", "ExpectFailure: ", "AssertionError: "):
        text = text.removeprefix(prefix)
    return text.split("\nassert ")[0].strip()


EXIT_BLIND_SPOTS = 6
