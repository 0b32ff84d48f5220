"""Incident severity, probable cause, next steps and the incident documents (re-exports only).

``model`` holds the dataclasses, ``rank`` the cause-first ranking, ``build`` the verdict
(triage.json's dict), ``render`` the terminal summary, triage.json and incident.md, ``comms`` the
status update and the status page.
"""

from __future__ import annotations

from labcheck.verdict.build import _fill, blind_spots_fail, build, empty_verdict
from labcheck.verdict.comms import phase, status_page_markdown, status_update_markdown
from labcheck.verdict.model import (
    BUSINESS_ORDER,
    SCHEMA_FILE,
    SCHEMA_VERSION,
    CheckResult,
    Finding,
    GateEvidence,
    sev_name,
)
from labcheck.verdict.rank import API_COMPONENTS, WORKER_COMPONENTS, rank
from labcheck.verdict.render import (
    incident_markdown,
    resolution_markdown,
    summary_lines,
    write,
    write_usage_error,
)

__all__ = [
    "API_COMPONENTS",
    "BUSINESS_ORDER",
    "SCHEMA_FILE",
    "SCHEMA_VERSION",
    "WORKER_COMPONENTS",
    "CheckResult",
    "Finding",
    "GateEvidence",
    "_fill",
    "blind_spots_fail",
    "build",
    "empty_verdict",
    "incident_markdown",
    "phase",
    "rank",
    "resolution_markdown",
    "sev_name",
    "status_page_markdown",
    "status_update_markdown",
    "summary_lines",
    "write",
    "write_usage_error",
]
