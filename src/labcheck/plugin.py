"""pytest hooks: options, markers, the collection rule, UNKNOWN results and the triage summary."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Generator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from labcheck import config as cfg
from labcheck import verdict
from labcheck.errors import CatalogueError, ConfigError, Unknown
from labcheck.evidence import Evidence, Redactor
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


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
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
        raise pytest.UsageError(str(exc)) from None
    config.stash[settings_key] = settings
    config.stash[catalogue_key] = catalogue
    config.stash[redactor_key] = Redactor(settings.secrets)
    if hasattr(config.option, "allure_report_dir") and not config.option.allure_report_dir \
            and not config.option.collectonly:
        config.option.allure_report_dir = str(out / "allure-results")
    if hasattr(config.option, "attach_capture"):
        config.option.attach_capture = False  # captured output is not evidence: it skips the redactor
    config.pluginmanager.register(Outcomes(), "labcheck-outcomes")
    if not _is_worker(config):
        config.pluginmanager.register(Triage(config), "labcheck-triage")


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash.get(settings_key, None)
    if settings is None:
        return []
    redact = config.stash[redactor_key]
    return [f"labcheck target: {redact(settings.describe())}",
            f"labcheck timeouts: connect {settings.connect_s:g} s, read {settings.read_s:g} s, window {settings.window}"]


# --- collection rule -------------------------------------------------------------------------


def _is_check(item: pytest.Item) -> bool:
    return item.name.startswith("check_") or "checks" in Path(str(item.path)).parts[-3:-1]


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
        text = str(report.longrepr)
        cleaned = redact(text)
        if cleaned != text:
            report.longrepr = cleaned
    if redact is not None:
        report.sections = [(title, redact(body)) for title, body in report.sections]
    return report


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
        if excinfo is None or not report.failed or excinfo.errisinstance(
                (AssertionError, pytest.fail.Exception, KeyboardInterrupt)):
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

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if "labcheck_meta" not in props and report.nodeid not in self.results:
            return
        entry = self.results.setdefault(report.nodeid, {"nodeid": report.nodeid, "outcome": "passed",
                                                         "duration_s": 0.0, "message": None, "observed": []})
        if "labcheck_meta" in props:
            entry.update(props["labcheck_meta"])
        entry["duration_s"] = round(entry["duration_s"] + report.duration, 3)
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
        if not self.results or config.option.collectonly:
            return
        self.verdict = verdict.build(
            list(self.results.values()),
            catalogue=config.stash[catalogue_key],
            settings=config.stash[settings_key],
            started_at=config.stash[started_key],
            finished_at=time.time(),
        )
        verdict.write(reports_dir(config), self.verdict, config.stash[redactor_key])
        mode = config.getoption("labcheck_fail_unknown")
        if session.exitstatus == 0 and verdict.blind_spots_fail(self.verdict, mode):
            session.exitstatus = EXIT_BLIND_SPOTS

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
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


def now_iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(ts if ts is not None else time.time(), tz=UTC).isoformat(timespec="seconds")


__all__ = ["Expect", "check_meta", "json", "marker_problems", "now_iso"]
