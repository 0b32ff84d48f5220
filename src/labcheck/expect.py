"""``expect``: one fact about the platform, asserted with a complete message."""

from __future__ import annotations

from typing import Any

import pytest

from labcheck.lab import Lab
from labcheck.markers import check_meta
from labcheck.scenarios import Catalogue


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
