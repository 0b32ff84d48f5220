"""Opt-in checks: a marker whose checks are deselected unless the run asks for them.

The write canaries (``writes``) and the history checks (``history``) run only when ``-m`` names
their marker (and not as ``not <marker>``) or when configuration turns them on.
"""

from __future__ import annotations

import re

import pytest


def markexpr_names(config: pytest.Config, marker: str) -> bool:
    """Whether ``-m`` asks for ``marker``: it names it, and not as ``not <marker>``."""
    markexpr = str(getattr(config.option, "markexpr", "") or "")
    return bool(re.search(rf"\b{marker}\b", markexpr)) and not re.search(rf"\bnot\s+{marker}\b", markexpr)


def deselect_marked(config: pytest.Config, items: list[pytest.Item], marker: str) -> None:
    """Deselect the checks carrying ``marker`` (reported as deselected, as ``-m`` would)."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        (drop if item.get_closest_marker(marker) is not None else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
