"""``expect``: one fact about the platform, asserted with a complete message.

Only ``expect`` fails a check: it raises ``ExpectFailure``, which the outcomes recognise. Any other
exception, a bare ``AssertionError`` inside a probe or component included, means the check could
not check (UNKNOWN). A check may say which condition it observed (``condition=...`` or
``expect.condition(...)``): the condition, not the static scenario marker, picks the scenario.
"""

from __future__ import annotations

from typing import Any

import pytest

from labcheck.errors import Unknown
from labcheck.lab import Lab
from labcheck.markers import check_meta
from labcheck.scenarios import Catalogue, Scenario
from labcheck.verdict.conditions import scenario_for

NOT_TRIED = "not tried:"


class ExpectFailure(AssertionError):
    """The platform is unhealthy: what ``expect`` raises, and the only exception that FAILS a check."""


class Expect:
    """Asserts one fact about the platform with a complete message, and keeps the observed value.

    ``evidence`` is recorded when the fact does not hold; a callable is called then, and only then.
    """

    def __init__(self, item: pytest.Item, lab: Lab, catalogue: Catalogue) -> None:
        self.item = item
        self.lab = lab
        self.catalogue = catalogue
        meta = check_meta(item)
        self.marker_scenario: str | None = meta["scenario"]
        self.scenario: Scenario | None = catalogue.get(meta["scenario"])
        self.observed_condition: str | None = None

    def __call__(self, ok: bool, *, target: str, observed: Any, threshold: Any,
                 detail: str = "", evidence: Any = None, condition: str | None = None) -> None:
        __tracebackhide__ = True
        self.item.user_properties.append(("labcheck_observed", {"target": target, "observed": str(observed),
                                                                "threshold": str(threshold)}))
        if ok:
            return
        if NOT_TRIED in str(observed):
            # The target timed out earlier in this run and was not asked again: nothing was observed.
            raise Unknown(f"{target}: {observed}")
        if condition is not None:
            self.condition(condition)
        if callable(evidence):  # evidence that costs something to build is built for a failure only
            evidence = evidence()
        if evidence is not None:
            self.record("failure", evidence)
        where = f"scenario {self.scenario.id} ({self.scenario.title})" if self.scenario else "no playbook scenario"
        if self.observed_condition:
            where = f"condition {self.observed_condition}; {where}"
        message = f"{target}: observed {observed}; threshold {threshold}; {where}"
        if detail:
            message += f"\n{detail}"
        raise ExpectFailure(message)

    def condition(self, name: str) -> None:
        """Report the condition this check observed (e.g. ``db_refusing_connections``).

        The condition picks the scenario (its catalogue entry) in place of the check's marker, and
        becomes a fact (``name = true``) that steps and escalation rules read.
        """
        self.observed_condition = name
        scenario_id = scenario_for(name, self.catalogue, self.marker_scenario)
        self.scenario = self.catalogue.get(scenario_id)
        self.item.user_properties.append(("labcheck_condition", name))

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
