"""What makes a check: its markers, the collection rule, its metadata, and the opt-in marks.

A check is a ``check_*`` function with exactly one severity marker and one component marker, and
a scenario marker where the playbook has a scenario. Opt-in marks (``writes``, ``history``)
deselect their checks unless the run asks for them.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from labcheck.config import Settings
from labcheck.scenarios import Catalogue
from labcheck.session import catalogue_key

SEVERITIES = ("sev1", "sev2", "sev3", "sev4")
SEVERITY_HELP = {
    "sev1": "SEV-1 condition: service unavailable (API down, DB primary unreachable, auth rejects valid tokens, data loss)",
    "sev2": "SEV-2 condition: functionality significantly impaired (>10% errors, p95 > 2 s, major feature broken)",
    "sev3": "SEV-3 condition: limited impact (single endpoint, minor degradation, metrics collection)",
    "sev4": "SEV-4 condition: cosmetic or hygiene issue",
}

# Opt-in marks: the help line, and the setting that turns them on besides ``-m <mark>``.
OPT_IN_HELP = {
    "writes": "an opt-in canary that writes to the target and cleans up after itself; runs only with "
              "-m writes or canary_writes=true.",
    "history": "a check over the last minutes of Prometheus history; runs only when history_window is "
               "set (labcheck gate) or -m names it.",
}
DEFAULT_WINDOW = "15m"


def is_check(item: pytest.Item) -> bool:
    """A check is a ``check_*`` function; labcheck's own ``test_*`` tests are not."""
    return str(getattr(item, "originalname", item.name)).startswith("check_")


def components(catalogue: Catalogue | None) -> tuple[str, ...]:
    """The platform's components: the rows of the catalogue's impact table, the one list of them."""
    return tuple(catalogue.severity.impact) if catalogue is not None else ()


def component_marker_lines(catalogue: Catalogue) -> list[str]:
    return [f"{name}: component marker: {row.name} (impact matrix: {row.severity})."
            for name, row in catalogue.severity.impact.items()]


def marker_problems(item: pytest.Item, catalogue: Catalogue | None) -> list[str]:
    """What is wrong with a check's markers (empty when it is well marked)."""
    names = [m.name for m in item.iter_markers()]
    problems = []
    known = components(catalogue)
    sev = [n for n in names if n in SEVERITIES]
    comp = [n for n in names if n in known]
    if len(set(sev)) != 1:
        problems.append(f"needs exactly one severity marker (sev1..sev4), has {sorted(set(sev)) or 'none'}")
    if len(set(comp)) != 1:
        problems.append(f"needs exactly one component marker ({', '.join(known)}), has {sorted(set(comp)) or 'none'}")
    for mark in item.iter_markers("scenario"):
        scenario_id = mark.args[0] if mark.args else None
        if catalogue is not None and scenario_id not in catalogue.scenarios:
            problems.append(f"scenario({scenario_id!r}) is not in the catalogue ({', '.join(sorted(catalogue.scenarios))})")
    return problems


def check_meta(item: pytest.Item) -> dict[str, Any]:
    """Component, severity and scenario of a check, from its markers."""
    names = [m.name for m in item.iter_markers()]
    known = components(item.config.stash.get(catalogue_key, None))
    severity = next((n for n in names if n in SEVERITIES), None)
    component = next((n for n in names if n in known), None)
    mark = item.get_closest_marker("scenario")
    return {
        "component": component,
        "severity": int(severity[3]) if severity else None,
        "scenario": mark.args[0] if mark and mark.args else None,
    }



def markexpr_names(config: pytest.Config, marker: str) -> bool:
    """Whether ``-m`` asks for ``marker``: it names it, and not as ``not <marker>``."""
    markexpr = str(getattr(config.option, "markexpr", "") or "")
    return bool(re.search(rf"\b{marker}\b", markexpr)) and not re.search(rf"\bnot\s+{marker}\b", markexpr)


def history_window(config: pytest.Config, settings: Settings | None) -> str | None:
    """The look-back when this run asked for history checks, else None."""
    if settings is not None and settings.history_window:
        return str(settings.history_window)
    if markexpr_names(config, "history"):
        return DEFAULT_WINDOW
    return None


def writes_enabled(config: pytest.Config, settings: Settings | None) -> bool:
    """Writers run only when asked: ``-m writes`` (or any -m naming it) or ``canary_writes=true``."""
    return markexpr_names(config, "writes") or bool(settings is not None and settings.canary_writes)


def opted_in(config: pytest.Config, marker: str, settings: Settings | None) -> bool:
    """Whether the run asked for the checks of one opt-in mark."""
    if marker == "history":
        return history_window(config, settings) is not None
    return writes_enabled(config, settings)


def deselect_opt_in(config: pytest.Config, items: list[pytest.Item], settings: Settings | None) -> None:
    """Deselect the checks of every opt-in mark the run did not ask for (reported as ``-m`` would)."""
    off = [mark for mark in OPT_IN_HELP if not opted_in(config, mark, settings)]
    if not off:
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        (drop if any(item.get_closest_marker(m) is not None for m in off) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep

