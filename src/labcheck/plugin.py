"""pytest hooks: options, markers, the collection rule, UNKNOWN results and the triage summary."""

from __future__ import annotations

import atexit
import gc
import linecache
import logging
import os
import shutil
import time
from collections.abc import Generator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from labcheck import allure_results, snapshots, verdict
from labcheck import config as cfg
from labcheck.errors import CatalogueError, ConfigError, Unknown
from labcheck.evidence import Evidence, RedactingLogFilter, Redactor
from labcheck.lab import Lab
from labcheck.scenarios import Catalogue, load_catalogue

SEVERITIES = ("sev1", "sev2", "sev3", "sev4")
COMPONENTS = ("api_gateway", "database", "auth", "experiments", "storage", "metrics", "kubernetes", "docs")
SEVERITY_HELP = {
    "sev1": "SEV-1 condition: service unavailable (API down, DB primary unreachable, auth rejects valid tokens, data loss)",
    "sev2": "SEV-2 condition: functionality significantly impaired (>10% errors, p95 > 2 s, major feature broken)",
    "sev3": "SEV-3 condition: limited impact (single endpoint, minor degradation, metrics collection)",
    "sev4": "SEV-4 condition: cosmetic or hygiene issue",
}
COMPONENT_HELP = {
    "api_gateway": "API Gateway (impact matrix: SEV-1)",
    "database": "Database primary (impact matrix: SEV-1)",
    "auth": "Authentication (impact matrix: SEV-1)",
    "experiments": "Experiment execution (impact matrix: SEV-2)",
    "storage": "Dataset storage (impact matrix: SEV-2/3)",
    "metrics": "Metrics collection (impact matrix: SEV-3)",
    "kubernetes": "Kubernetes cluster: nodes and workloads",
    "docs": "Documentation (impact matrix: SEV-4)",
}
CONFIG_OPTIONS = {
    "--api-url": "api_url",
    "--prometheus-url": "prometheus_url",
    "--database-url": "database_url",
    "--s3-bucket": "s3_bucket",
    "--kubeconfig": "kubeconfig",
    "--kube-context": "kube_context",
    "--namespace": "namespace",
    "--probe-timeout": "timeout",
}

# Fixture modules, one per backend; each imports its client library only when a check asks.
pytest_plugins = [
    "labcheck.fixtures.api",
    "labcheck.fixtures.database",
    "labcheck.fixtures.kube",
    "labcheck.fixtures.storage",
    "labcheck.fixtures.platform",
    "labcheck.history",
    "labcheck.canary",
]

settings_key = pytest.StashKey[cfg.Settings]()
catalogue_key = pytest.StashKey[Catalogue]()
redactor_key = pytest.StashKey[Redactor]()
started_key = pytest.StashKey[float]()
lab_key = pytest.StashKey[Lab]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("labcheck", "labcheck: platform health checks and triage")
    group.addoption("--profile", dest="labcheck_profile", default=None, metavar="FILE",
                    help="TOML profile with targets and thresholds (env LABCHECK_PROFILE).")
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


def reports_dir(config: pytest.Config) -> Path:
    value = config.getoption("labcheck_reports") or os.environ.get("LABCHECK_REPORTS_DIR") or "reports"
    path = Path(value)
    return path if path.is_absolute() else Path(config.invocation_params.dir) / path


def _cli_values(config: pytest.Config) -> dict[str, tuple[Any, str]]:
    values = cfg.parse_assignments(config.getoption("labcheck_set") or [], "command line --set")
    for flag, key in CONFIG_OPTIONS.items():
        value = config.getoption(f"labcheck_{key}")
        if value is not None:
            values[key] = (value, f"command line {flag}")
    return values


def _scenarios_dir(config: pytest.Config) -> Path:
    value = config.getoption("labcheck_scenarios") or os.environ.get("LABCHECK_SCENARIOS_DIR")
    if value:
        return Path(value)
    for base in (Path(config.rootpath), Path(config.invocation_params.dir), Path(__file__).parents[2]):
        if (base / "scenarios").is_dir():
            return base / "scenarios"
    return Path(config.rootpath) / "scenarios"


def _freeze_gc_at_exit() -> None:
    """At interpreter exit, after the atexit handlers, skip the final full garbage collection.

    With the client libraries loaded, that collection took 0.2-0.5 s after the run had ended and
    the reports were written (measured: 0.23 s -> 0.03 s). ``gc.freeze`` runs only at exit, so a
    process that calls pytest.main() and goes on collects its garbage as before.
    """
    atexit.unregister(gc.freeze)  # once per process, however many times pytest configures
    atexit.register(gc.freeze)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    snapshots.install()
    _freeze_gc_at_exit()
    for name in SEVERITIES:
        config.addinivalue_line("markers", f"{name}: {SEVERITY_HELP[name]}.")
    for name in COMPONENTS:
        config.addinivalue_line("markers", f"{name}: component marker: {COMPONENT_HELP[name]}.")
    config.addinivalue_line("markers", "scenario(id): the playbook scenario a failure points to, e.g. scenario('high-error-rate').")
    config.addinivalue_line("markers", "writes: an opt-in canary that writes to the target and cleans up after itself.")
    # Checks are `check_*` functions in `checks/<component>.py` modules, wherever the suite lives.
    for ini, pattern in (("python_functions", "check_*"), ("python_files", "checks/[a-z]*.py")):
        if pattern not in config.getini(ini):
            config.addinivalue_line(ini, pattern)

    config.stash[started_key] = time.time()
    out = reports_dir(config)
    try:
        settings = cfg.load(cli=_cli_values(config), profile=config.getoption("labcheck_profile"),
                            use_sandbox=not config.getoption("labcheck_no_sandbox"))
        catalogue = load_catalogue(_scenarios_dir(config))
    except (ConfigError, CatalogueError) as exc:
        if not _is_worker(config):
            verdict.write_usage_error(out, str(exc))
            allure_results.write_usage_error(out / "allure-results", str(exc))
        raise pytest.UsageError(str(exc)) from None
    config.stash[settings_key] = settings
    config.stash[catalogue_key] = catalogue
    config.stash[redactor_key] = Redactor(settings.secrets)
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
    captures them: they reach the terminal and the log file without passing a report."""
    config = session.config
    redact = config.stash.get(redactor_key, None)
    logging_plugin = config.pluginmanager.get_plugin("logging-plugin")
    if redact is None or logging_plugin is None:
        return
    log_filter = RedactingLogFilter(redact)
    for name in ("log_cli_handler", "log_file_handler", "caplog_handler", "report_handler"):
        handler = getattr(logging_plugin, name, None)
        if isinstance(handler, logging.Handler):
            handler.addFilter(log_filter)


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
            shutil.rmtree(config.option.allure_report_dir, ignore_errors=True)
    if config.option.allure_report_dir and not _is_worker(config):
        config.pluginmanager.register(AllureExtras(config), "labcheck-allure")


def _runs_checks(config: pytest.Config) -> bool:
    """Whether this run is a check run (`pytest checks`), not, say, labcheck's own tests."""
    return any("checks" in Path(str(arg).split("::")[0]).parts for arg in config.args)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Allure labels from the markers: severity, feature = component, story = scenario title, playbook link."""
    if config.pluginmanager.get_plugin("allure_listener") is None:
        return
    catalogue = config.stash.get(catalogue_key, None)
    if catalogue is None:
        return
    for item in items:
        if _is_check(item):
            for mark in allure_results.marks(check_meta(item), catalogue):
                item.add_marker(mark)


class AllureExtras:
    """Writes categories.json, environment.properties and executor.json (the controller only)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

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
            f"labcheck timeouts: connect {settings.connect_s:g} s, read {settings.read_s:g} s, window {settings.window}"]


# --- collection rule -------------------------------------------------------------------------


def _is_check(item: pytest.Item) -> bool:
    """A check is a ``check_*`` function; labcheck's own ``test_*`` tests are not."""
    return str(getattr(item, "originalname", item.name)).startswith("check_")


def marker_problems(item: pytest.Item, catalogue: Catalogue | None) -> list[str]:
    """What is wrong with a check's markers (empty when it is well marked)."""
    names = [m.name for m in item.iter_markers()]
    problems = []
    sev = [n for n in names if n in SEVERITIES]
    comp = [n for n in names if n in COMPONENTS]
    if len(set(sev)) != 1:
        problems.append(f"needs exactly one severity marker (sev1..sev4), has {sorted(set(sev)) or 'none'}")
    if len(set(comp)) != 1:
        problems.append(f"needs exactly one component marker ({', '.join(COMPONENTS)}), has {sorted(set(comp)) or 'none'}")
    for mark in item.iter_markers("scenario"):
        scenario_id = mark.args[0] if mark.args else None
        if catalogue is not None and scenario_id not in catalogue.scenarios:
            problems.append(f"scenario({scenario_id!r}) is not in the catalogue ({', '.join(sorted(catalogue.scenarios))})")
    return problems


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> Generator[None, Any, Any]:
    result = yield
    items = result if isinstance(result, list) else [result] if result is not None else []
    catalogue = collector.config.stash.get(catalogue_key, None)
    for item in items:
        if isinstance(item, pytest.Item) and _is_check(item):
            problems = marker_problems(item, catalogue)
            if problems:
                raise collector.CollectError(f"check {item.nodeid}: " + "; ".join(problems))
    return result


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the probes the selected checks need, all at once, as soon as collection is done."""
    config = session.config
    if config.option.collectonly or settings_key not in config.stash:
        return
    from labcheck.lab import PREFETCH, Use, reads

    uses: dict[str, list[Use]] = {}
    for item in session.items:
        fn = getattr(item, "function", None)
        if not _is_check(item) or not callable(fn):
            continue
        # The fixtures the check asks for itself: a fixture's own dependencies are its prefetcher's business.
        wanted = [n for n in _argnames(fn) if n in PREFETCH]
        if not wanted:
            continue
        use = Use(check=str(getattr(item, "originalname", item.name)),
                  reads=reads(fn),
                  params=dict(getattr(getattr(item, "callspec", None), "params", {})))
        for name in wanted:
            uses.setdefault(name, []).append(use)
    if not uses:
        return
    lab = get_lab(config)
    for name in sorted(uses):
        try:
            PREFETCH[name](lab, uses[name])
        except Exception:  # noqa: BLE001 - a failed prefetch is seen again, as UNKNOWN, by the check
            pass


def _argnames(fn: Any) -> list[str]:
    import inspect

    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _is_check(item) and settings_key in item.config.stash:
        get_lab(item.config).check_deadline()


def check_meta(item: pytest.Item) -> dict[str, Any]:
    """Component, severity and scenario of a check, from its markers."""
    names = [m.name for m in item.iter_markers()]
    severity = next((n for n in names if n in SEVERITIES), None)
    component = next((n for n in names if n in COMPONENTS), None)
    mark = item.get_closest_marker("scenario")
    return {
        "component": component,
        "severity": int(severity[3]) if severity else None,
        "scenario": mark.args[0] if mark and mark.args else None,
    }


# --- fixtures --------------------------------------------------------------------------------


def get_lab(config: pytest.Config) -> Lab:
    lab = config.stash.get(lab_key, None)
    if lab is None:
        redactor = config.stash[redactor_key]
        lab = Lab(config.stash[settings_key], redactor=redactor,
                  evidence=Evidence(reports_dir(config) / "evidence", redactor))
        deadline = config.getoption("labcheck_deadline")
        if deadline:
            lab.deadline = time.monotonic() - (time.time() - config.stash[started_key]) + deadline
        config.stash[lab_key] = lab
        config.add_cleanup(lab.close)
    return lab


@pytest.fixture(scope="session")
def lab(pytestconfig: pytest.Config) -> Lab:
    """The run's shared, fetch-once view of the platform."""
    return get_lab(pytestconfig)


@pytest.fixture(scope="session")
def settings(pytestconfig: pytest.Config) -> cfg.Settings:
    """The effective configuration (targets and thresholds)."""
    return pytestconfig.stash[settings_key]


@pytest.fixture(scope="session")
def catalogue(pytestconfig: pytest.Config) -> Catalogue:
    """The playbook scenario catalogue."""
    return pytestconfig.stash[catalogue_key]


class Expect:
    """Asserts one fact about the platform with a complete message, and keeps the observed value."""

    def __init__(self, item: pytest.Item, lab: Lab, catalogue: Catalogue) -> None:
        self.item = item
        self.lab = lab
        meta = check_meta(item)
        self.scenario = catalogue.get(meta["scenario"])

    def __call__(self, ok: bool, *, target: str, observed: Any, threshold: Any,
                 detail: str = "", evidence: Any = None) -> None:
        __tracebackhide__ = True
        self.item.user_properties.append(("labcheck_observed", {"target": target, "observed": str(observed),
                                                                "threshold": str(threshold)}))
        if ok:
            return
        if evidence is not None:
            self.record("failure", evidence)
        where = f"scenario {self.scenario.id} ({self.scenario.title})" if self.scenario else "no playbook scenario"
        message = f"{target}: observed {observed}; threshold {threshold}; {where}"
        if detail:
            message += f"\n{detail}"
        raise AssertionError(message)

    def fact(self, name: str, value: Any) -> None:
        """Tell the verdict a condition this check established (e.g. oom_killed=False)."""
        self.item.user_properties.append(("labcheck_fact", (name, value)))

    def record(self, name: str, body: Any) -> None:
        """Attach evidence through the single redacting recorder."""
        self.lab.record(self.item.nodeid, name, body)


@pytest.fixture
def expect(request: pytest.FixtureRequest, lab: Lab, catalogue: Catalogue) -> Expect:
    """``expect(ok, target=..., observed=..., threshold=...)``: one fact, one complete message."""
    return Expect(request.node, lab, catalogue)


# --- results ---------------------------------------------------------------------------------


def _unknown_reason(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    exc = excinfo.value
    if isinstance(exc, Unknown):
        return str(exc)
    return f"could not check: {type(exc).__name__}: {exc}"


def _redact_exception(excinfo: pytest.ExceptionInfo[BaseException], redact: Redactor) -> None:
    exc = excinfo.value
    if exc.args and any(isinstance(a, str) for a in exc.args):
        exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
    if isinstance(exc, Unknown):
        exc.reason = redact(exc.reason)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Innermost: redact the exception and the report before any reporter (Allure included) reads them."""
    redact = item.config.stash.get(redactor_key, None)
    if redact is not None and call.excinfo is not None:
        _redact_exception(call.excinfo, redact)
    report: pytest.TestReport = yield
    if redact is not None and report.longrepr is not None and not isinstance(report.longrepr, tuple):
        if isinstance(report.longrepr, str):
            report.longrepr = redact(report.longrepr)
        else:
            _redact_repr(report.longrepr, redact, 0)
    if redact is not None:
        report.sections = [(title, redact(body)) for title, body in report.sections]
    return report


# What a check raises when it judged the platform (or was skipped or stopped); anything else
# means it could not check: UNKNOWN.
NOT_UNKNOWN = (AssertionError, pytest.fail.Exception, pytest.skip.Exception, KeyboardInterrupt)


def _is_unknown(item: pytest.Item, call: pytest.CallInfo[None]) -> bool:
    return call.excinfo is not None and _is_check(item) and not call.excinfo.errisinstance(NOT_UNKNOWN)


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


def _redact_repr(obj: Any, redact: Redactor, depth: int) -> Any:
    """Redact every string inside pytest's structured failure repr, keeping its structure."""
    if depth > 12:
        return obj
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, list):
        return [_redact_repr(x, redact, depth + 1) for x in obj]
    if isinstance(obj, tuple):
        return tuple(_redact_repr(x, redact, depth + 1) for x in obj)
    if isinstance(obj, dict):
        return {k: _redact_repr(v, redact, depth + 1) for k, v in obj.items()}
    if type(obj).__module__.startswith("_pytest") and hasattr(obj, "__dict__"):
        for name, value in vars(obj).items():
            if isinstance(value, str | list | tuple | dict) or hasattr(value, "__dict__"):
                object.__setattr__(obj, name, _redact_repr(value, redact, depth + 1))
    return obj


class Outcomes:
    """Outermost makereport wrapper: a check that could not check is UNKNOWN, not failed.

    It runs after Allure's listener, which has already filed the non-assertion
    exception as "broken"; pytest itself then sees a skip with category "unknown".
    """

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
        report: pytest.TestReport = yield
        if not _is_check(item):
            return report
        if call.when == "setup":
            report.user_properties.append(("labcheck_meta", check_meta(item)))
        excinfo = call.excinfo
        if excinfo is None or not report.failed or excinfo.errisinstance(NOT_UNKNOWN):
            return report
        reason = _unknown_reason(excinfo)
        redact = item.config.stash.get(redactor_key, None)
        if redact is not None:
            reason = redact(reason)
        _, lineno, _ = item.location
        report.outcome = "skipped"
        report.longrepr = (str(item.path), (lineno or 0) + 1, f"UNKNOWN: {reason}")
        report.user_properties.append(("labcheck_unknown", reason))
        return report


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    if report.skipped and any(name == "labcheck_unknown" for name, _ in report.user_properties):
        return "unknown", "U", ("UNKNOWN", {"yellow": True})
    return None


class Triage:
    """Collects every check's result (on the controller under xdist) and writes the verdict."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results: dict[str, dict[str, Any]] = {}
        self.verdict: dict[str, Any] | None = None
        self.expected: dict[str, dict[str, Any]] = {}
        self.error: str | None = None

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.expected.update({i.nodeid: check_meta(i) for i in session.items if _is_check(i)})

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
        if "labcheck_unknown" in props:
            entry["outcome"] = "unknown"
            entry["message"] = props["labcheck_unknown"]
        elif report.failed and entry["outcome"] != "unknown":
            entry["outcome"] = "failed"
            entry["message"] = _failure_text(report)
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
            )
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

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.error:
            terminalreporter.write_line(self.config.stash[redactor_key](f"ERROR: {self.error}"), red=True)
        if self.verdict is None:
            return
        redact = self.config.stash[redactor_key]
        terminalreporter.write_sep("=", "labcheck triage", bold=True)
        for line in verdict.summary_lines(self.verdict):
            terminalreporter.write_line(redact(line))


def _failure_text(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        text = str(crash.message)
    else:
        text = str(report.longrepr)
    return text.removeprefix("AssertionError: ").split("\nassert ")[0].strip()


EXIT_BLIND_SPOTS = 6


__all__ = ["Expect", "check_meta", "marker_problems"]
