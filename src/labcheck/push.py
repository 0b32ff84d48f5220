"""``--push-metrics URL``: the run's outcome as gauges on a Prometheus Pushgateway."""

from __future__ import annotations

import sys
from collections.abc import Generator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from labcheck.config import Settings
from labcheck.evidence import mask_dsn

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

JOB = "labcheck"
CHECK_LABELS = ("check", "component", "severity", "scenario")


def severity_level(data: Mapping[str, Any]) -> int:
    """0 when no check failed, else the incident's level (1..4)."""
    sev = data.get("severity")
    return int(str(sev).removeprefix("SEV-")) if sev else 0


def _labels(check: Mapping[str, Any]) -> dict[str, str]:
    return {
        "check": str(check["nodeid"]),
        "component": str(check.get("component") or ""),
        "severity": str(check.get("severity") or "").lower().replace("-", ""),  # "SEV-2" -> "sev2"
        "scenario": str(check.get("scenario") or ""),
    }


def build_registry(data: Mapping[str, Any]) -> CollectorRegistry:
    """The gauges for one verdict (triage.json), in a registry of their own."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    success = Gauge("labcheck_check_success", "1 when the check passed, 0 when it failed; absent when UNKNOWN.",
                    CHECK_LABELS, registry=registry)
    unknown = Gauge("labcheck_check_unknown", "1 when the check could not check (UNKNOWN), else 0.",
                    CHECK_LABELS, registry=registry)
    skipped = Gauge("labcheck_check_skipped",
                    "1 when the selected check did not run (skipped, e.g. a write canary that is off), else 0.",
                    CHECK_LABELS, registry=registry)
    duration = Gauge("labcheck_check_duration_seconds", "How long the check took.",
                     CHECK_LABELS, registry=registry)
    severity = Gauge("labcheck_incident_severity", "0 when no check failed, else the incident severity 1..4.",
                     registry=registry)
    run = Gauge("labcheck_run_duration_seconds", "How long the labcheck run took.", registry=registry)
    last = Gauge("labcheck_last_run_timestamp_seconds", "When the labcheck run finished (Unix time).",
                 registry=registry)
    for check in data.get("checks", []):
        outcome = check.get("outcome")
        labels = _labels(check)
        # Every selected check leaves a series: one that did not run shows as skipped, so an alert
        # on labcheck_check_skipped catches a check switched off unseen (UNKNOWN is pushed too).
        skipped.labels(**labels).set(0 if outcome in ("passed", "failed", "unknown") else 1)
        if outcome not in ("passed", "failed", "unknown"):
            continue
        if outcome != "unknown":
            success.labels(**labels).set(1 if outcome == "passed" else 0)
        unknown.labels(**labels).set(1 if outcome == "unknown" else 0)
        duration.labels(**labels).set(float(check.get("duration_s") or 0.0))
    severity.set(severity_level(data))
    run.set(float(data.get("duration_s") or 0.0))
    last.set(datetime.fromisoformat(str(data["finished_at"])).timestamp())
    return registry


def instance_of(settings: Settings) -> str:
    """The grouping key ``instance``: push_instance, else the API's host:port."""
    if settings.push_instance:
        return str(settings.push_instance)
    if settings.api_url:
        parts = urlsplit(str(settings.api_url))
        return parts.netloc.rpartition("@")[2] or "unconfigured"
    return "unconfigured"


def push(url: str, data: Mapping[str, Any], *, instance: str, timeout: float) -> None:
    """PUT the verdict's gauges under job "labcheck" and this instance (replacing the previous run's)."""
    from prometheus_client import push_to_gateway

    push_to_gateway(url, job=JOB, registry=build_registry(data), grouping_key={"instance": instance},
                    timeout=timeout)


def check_url(url: str) -> str:
    """The Pushgateway URL, or a usage error naming the option."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise pytest.UsageError(f"command line --push-metrics: not an http(s) URL: {mask_dsn(url)!r}")
    return url.rstrip("/")


class PushMetrics:
    """Pushes the verdict once the Triage plugin has built it (controller only)."""

    def __init__(self, config: pytest.Config, url: str) -> None:
        self.config = config
        self.url = check_url(url)
        self.line: str | None = None
        self.ok = False

    def _redact(self, text: str) -> str:
        from labcheck.session import redactor_key

        redact = self.config.stash.get(redactor_key, None)
        text = mask_dsn(text)
        return redact(text) if redact is not None else text

    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> Generator[None, Any, Any]:
        # The innermost wrapper: the Triage plugin's sessionfinish has built the verdict, and the
        # terminal reporter's summary (which prints self.line) has not run yet.
        result = yield
        self.push_verdict()
        return result

    def push_verdict(self) -> None:
        from labcheck.session import settings_key

        triage = self.config.pluginmanager.get_plugin("labcheck-triage")
        data = getattr(triage, "verdict", None)
        where = self._redact(self.url)
        if data is None:
            self.line = f"labcheck: metrics not pushed to {where}: the run has no verdict"
            return
        settings: Settings = self.config.stash[settings_key]
        try:
            push(self.url, data, instance=instance_of(settings), timeout=settings.connect_s + settings.read_s)
        except Exception as exc:  # noqa: BLE001 - a failed push never changes the verdict or exit code
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            self.line = f"labcheck: metrics not pushed to {where}: {self._redact(reason)}"
            return
        self.ok = True
        self.line = (f"labcheck: metrics pushed to {where} (job {JOB}, instance {instance_of(settings)}, "
                     f"severity {severity_level(data)})")

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.line:
            terminalreporter.write_line(self.line, red=not self.ok)
            self.line = None

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.line:  # no terminal summary ran (-p no:terminal): still say what happened
            print(self.line, file=sys.stderr)
