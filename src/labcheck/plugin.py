"""pytest hooks only: options, markers, activation, collection, prefetch, outcomes and the triage.

The plugin is a global pytest entry point, so it stays inert in a run that does not use labcheck:
until a labcheck option is given, a LABCHECK_* variable is set, the run collects a ``checks``
directory, or a collected item carries a labcheck marker, it validates nothing and writes nothing.
Run state lives in ``session``, markers in ``markers``, outcomes in ``outcomes``, ``expect`` in
``expect``; every module of ``labcheck.components`` is registered as a plugin (fixtures, parameters).
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import shutil
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from labcheck import allure_results, components, snapshots, verdict
from labcheck import config as cfg
from labcheck.errors import CatalogueError, ConfigError
from labcheck.evidence import RedactingLogFilter
from labcheck.expect import expect  # fixture
from labcheck.markers import (
    OPT_IN_HELP,
    SEVERITIES,
    SEVERITY_HELP,
    check_meta,
    component_marker_lines,
    deselect_opt_in,
    is_check,
    marker_problems,
)
from labcheck.outcomes import (
    NOT_UNKNOWN,
    Outcomes,
    Triage,
    UnknownReports,
    redact_exception,
    redact_repr,
)
from labcheck.session import (  # fixtures
    CONFIG_OPTIONS,
    activate,
    catalogue,
    catalogue_key,
    get_lab,
    is_active,
    lab,
    redactor_key,
    reports_dir,
    settings,
    settings_key,
    started_key,
)

# One plugin module per platform component: its fixture, its parameters, its facade.
pytest_plugins = components.modules()

__all__ = ["NOT_UNKNOWN", "catalogue", "check_meta", "expect", "lab", "marker_problems", "settings"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("labcheck", "labcheck: platform health checks and triage")
    group.addoption("--profile", dest="labcheck_profile", action="append", default=None, metavar="FILE",
                    help="TOML profile with targets and thresholds (env LABCHECK_PROFILE). One per run; "
                         "'labcheck watch' takes several.")
    group.addoption("--set", dest="labcheck_set", action="append", default=[], metavar="KEY=VALUE",
                    help="Set one configuration key, e.g. --set window=10m. Overrides env and profile.")
    for flag, key in CONFIG_OPTIONS.items():
        group.addoption(flag, dest=f"labcheck_{key}", default=None, metavar="VALUE", help=cfg.KEYS[key].help + ".")
    group.addoption("--reports-dir", dest="labcheck_reports", default=None, metavar="DIR",
                    help="Where triage.json, incident.md, evidence and allure-results go (default: reports).")
    group.addoption("--scenarios-dir", dest="labcheck_scenarios", default=None, metavar="DIR",
                    help="Scenario catalogue directory (default: <rootdir>/scenarios).")
    group.addoption("--triage-deadline", dest="labcheck_deadline", type=float, default=None, metavar="SECONDS",
                    help="After this many seconds, remaining checks report UNKNOWN (deadline reached).")
    group.addoption("--fail-on-unknown", dest="labcheck_fail_unknown", default="none",
                    choices=("none", "sev1", "any"),
                    help="Exit 6 when no check failed but checks of this severity were UNKNOWN (blind spots).")
    group.addoption("--no-sandbox", dest="labcheck_no_sandbox", action="store_true",
                    help="Never fall back to a running sandbox when no target is configured.")
    group.addoption("--push-metrics", dest="labcheck_push_metrics", default=None, metavar="URL",
                    help="Push the outcome to this Prometheus Pushgateway (job labcheck); a failed push "
                         "changes neither the verdict nor the exit code.")


def _freeze_gc_at_exit() -> None:
    """At interpreter exit, after the atexit handlers, skip the final full garbage collection.

    With the client libraries loaded, that collection took 0.2-0.5 s after the run had ended and
    the reports were written (measured: 0.23 s -> 0.03 s). ``gc.freeze`` runs only at exit, so a
    process that calls pytest.main() and goes on collects its garbage as before.
    """
    atexit.unregister(gc.freeze)  # once per process, however many times pytest configures
    atexit.register(gc.freeze)


def _asked_for(config: pytest.Config) -> bool:
    """Whether this run says it uses labcheck before anything is collected."""
    for dest in ("labcheck_profile", "labcheck_reports", "labcheck_scenarios", "labcheck_deadline",
                 "labcheck_push_metrics", *(f"labcheck_{key}" for key in CONFIG_OPTIONS.values())):
        if config.getoption(dest, None) is not None:
            return True
    if config.getoption("labcheck_set", None) or config.getoption("labcheck_no_sandbox", False):
        return True
    if config.getoption("labcheck_fail_unknown", "none") != "none":
        return True
    if any(name.startswith("LABCHECK_") for name in list(os.environ)):
        return True
    return _runs_checks(config)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for name in SEVERITIES:
        config.addinivalue_line("markers", f"{name}: {SEVERITY_HELP[name]}.")
    config.addinivalue_line("markers", "scenario(id): the playbook scenario a failure points to, e.g. scenario('high-error-rate').")
    for name, help_text in OPT_IN_HELP.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")
    components.add_markers(config)
    config.stash[started_key] = time.time()
    if _asked_for(config):
        _activate(config)


def _activate(config: pytest.Config) -> None:
    """Load settings and catalogue, register the run's plugins. A bad input is one usage line (exit 4)."""
    if is_active(config):
        return
    snapshots.install()
    _freeze_gc_at_exit()
    # Checks are `check_*` functions in `checks/<component>.py` modules, wherever the suite lives.
    for ini, pattern in (("python_functions", "check_*"), ("python_files", "checks/[a-z]*.py")):
        if pattern not in config.getini(ini):
            config.addinivalue_line(ini, pattern)
    out = reports_dir(config)
    try:
        activate(config)
        components.check_named(config.stash[catalogue_key])
    except (ConfigError, CatalogueError) as exc:
        if not _is_worker(config):
            verdict.write_usage_error(out, str(exc))
            allure_results.write_usage_error(out / "allure-results", str(exc))
        raise pytest.UsageError(str(exc)) from None
    for line in component_marker_lines(config.stash[catalogue_key]):
        config.addinivalue_line("markers", line)
    _configure_allure(config, out)
    config.pluginmanager.register(Outcomes(), "labcheck-outcomes")
    config.pluginmanager.register(UnknownReports(), "labcheck-unknown-reports")
    _terminate_as_interrupt(config)
    if not _is_worker(config):
        config.pluginmanager.register(Triage(config), "labcheck-triage")
        if config.getoption("labcheck_push_metrics") and not config.option.collectonly:
            from labcheck.push import PushMetrics

            config.pluginmanager.register(PushMetrics(config, config.getoption("labcheck_push_metrics")),
                                          "labcheck-push")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Log records pass the redactor before pytest shows them live, writes them to --log-file or
    captures them: they reach the terminal and the log file without passing a report. Allure's
    result files are written in the background from here on (``allure_writer``)."""
    config = session.config
    redact = config.stash.get(redactor_key, None)
    if redact is not None and not config.option.collectonly:
        from labcheck import allure_writer

        done = allure_writer.install()  # allure-pytest's result files, written off the run's thread
        if done is not None:
            config.add_cleanup(done)
    logging_plugin = config.pluginmanager.get_plugin("logging-plugin")
    if redact is None or logging_plugin is None:
        return
    log_filter = RedactingLogFilter(redact)
    for name in ("log_cli_handler", "log_file_handler", "caplog_handler", "report_handler"):
        handler = getattr(logging_plugin, name, None)
        if isinstance(handler, logging.Handler):
            handler.addFilter(log_filter)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Every Allure result is on disk when the session has ended: an xdist worker tells the
    controller it is done right after this hook, and the controller then reads them back."""
    if is_active(session.config):
        from labcheck import allure_writer

        allure_writer.flush()


def _terminate_as_interrupt(config: pytest.Config) -> None:
    """SIGTERM (a CI timeout, `timeout`) ends the run like Ctrl-C: the verdict is still written."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    def restore() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, interrupt)
    config.add_cleanup(restore)


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


# --- Allure ----------------------------------------------------------------------------------


def _configure_allure(config: pytest.Config, out: Path) -> None:
    """Default --alluredir to <reports>/allure-results (fresh each run) and register the extras writer."""
    if not hasattr(config.option, "allure_report_dir"):
        return  # allure-pytest is not installed or disabled (-p no:allure_pytest)
    if hasattr(config.option, "attach_capture"):
        config.option.attach_capture = False  # captured output is not evidence: it skips the redactor
    if config.option.collectonly:
        return
    if not config.option.allure_report_dir and _runs_checks(config):
        config.option.allure_report_dir = str(out / "allure-results")
        if not _is_worker(config):
            # Our own default directory holds this run's results only, like triage.json beside it.
            _clear_aside(Path(config.option.allure_report_dir))
    if config.option.allure_report_dir and not _is_worker(config):
        config.pluginmanager.register(AllureExtras(config), "labcheck-allure")


def _clear_aside(path: Path) -> None:
    """Empty ``path`` at once: the last run's results are moved aside and deleted in the background.

    A few hundred files to unlink (40 ms on two busy cores) that would otherwise hold up collection
    and so every request (issue 16). What a run stopped before it was deleted goes with the next one.
    """
    leftovers = list(path.parent.glob(f".{path.name}.old-*"))
    if path.exists():
        aside = path.with_name(f".{path.name}.old-{os.getpid()}")
        try:
            path.rename(aside)
            leftovers.append(aside)
        except OSError:
            shutil.rmtree(path, ignore_errors=True)
    def delete() -> None:
        for old in leftovers:
            shutil.rmtree(old, ignore_errors=True)

    if leftovers:
        threading.Thread(target=delete, name="labcheck:old allure results", daemon=True).start()


def _runs_checks(config: pytest.Config) -> bool:
    """Whether this run is a check run (`pytest checks`), not, say, labcheck's own tests."""
    return any("checks" in Path(str(arg).split("::")[0]).parts for arg in config.args)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Activate on a labcheck marker; deselect the opt-in marks not asked for; Allure labels from markers."""
    if not is_active(config):
        if not any(item.get_closest_marker(name) for item in items for name in SEVERITIES):
            return
        try:
            _activate(config)
        except pytest.UsageError as exc:
            pytest.exit(str(exc), returncode=pytest.ExitCode.USAGE_ERROR)
    deselect_opt_in(config, items, config.stash[settings_key])
    if config.pluginmanager.get_plugin("allure_listener") is None:
        return
    catalogue = config.stash[catalogue_key]
    for item in items:
        if is_check(item):
            for mark in allure_results.marks(check_meta(item), catalogue):
                item.add_marker(mark)


class AllureExtras:
    """Writes categories.json, environment.properties and executor.json (the controller only)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        allure_results.start_git_commit(Path(self.config.rootpath))  # for environment.properties

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        config = self.config
        try:
            allure_results.write_extras(Path(config.option.allure_report_dir),
                                        catalogue=config.stash[catalogue_key], settings=config.stash[settings_key],
                                        suite_dir=Path(config.rootpath), redact=config.stash[redactor_key])
        except OSError as exc:
            terminal = config.pluginmanager.get_plugin("terminalreporter")
            if terminal is not None:
                terminal.write_line(f"labcheck: cannot write the Allure extras: {exc}", yellow=True)


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash.get(settings_key, None)
    if settings is None:
        return []
    redact = config.stash[redactor_key]
    return [f"labcheck target: {redact(settings.describe())}",
            f"labcheck timeouts: connect {settings.connect_s:g} s, read {settings.read_s:g} s, window {settings.window}",
            f"labcheck signals: {settings.signals}" + (" (detected from the live series when a check first reads "
                                                       "a request metric; the summary names the result)"
                                                       if settings.signals == "auto" else "")]


# --- collection rule -------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> Generator[None, Any, Any]:
    result = yield
    if not is_active(collector.config):
        return result
    items = result if isinstance(result, list) else [result] if result is not None else []
    catalogue = collector.config.stash.get(catalogue_key, None)
    for item in items:
        if isinstance(item, pytest.Item) and is_check(item):
            problems = marker_problems(item, catalogue)
            if problems:
                raise collector.CollectError(f"check {item.nodeid}: " + "; ".join(problems))
    return result


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize the parameters components declare (``api_endpoint``, ``deployment``, ...)."""
    settings = metafunc.config.stash.get(settings_key, None)
    if settings is not None:
        components.parametrize(metafunc, settings)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the facts the selected checks read, all at once, as soon as collection is done."""
    config = session.config
    if config.option.collectonly or not is_active(config):
        return
    from labcheck import prefetch

    uses = prefetch.uses_of(session.items, is_check)
    if uses:
        prefetch.start(get_lab(config), uses)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if is_check(item) and is_active(item.config):
        get_lab(item.config).check_deadline()


# --- results ---------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Innermost: redact the exception and the report before any reporter (Allure included) reads them."""
    redact = item.config.stash.get(redactor_key, None)
    if redact is not None and call.excinfo is not None:
        redact_exception(call.excinfo, redact)
    report: pytest.TestReport = yield
    if redact is not None and report.longrepr is not None and not isinstance(report.longrepr, tuple):
        if isinstance(report.longrepr, str):
            report.longrepr = redact(report.longrepr)
        else:
            redact_repr(report.longrepr, redact, 0)
    if redact is not None:
        report.sections = [(title, redact(body)) for title, body in report.sections]
    return report




def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    if report.skipped and any(name == "labcheck_unknown" for name, _ in report.user_properties):
        return "unknown", "U", ("UNKNOWN", {"yellow": True})
    return None


