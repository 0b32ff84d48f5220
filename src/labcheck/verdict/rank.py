"""Cause-first ranking: failing checks grouped into findings, split into causes and symptoms with the reason why.

The component dependency graph and the scenarios' ``causes`` (both data in ``scenarios/``) say
which finding explains which.
"""

from __future__ import annotations

import re
from dataclasses import replace

from labcheck.config import KEYS, Settings
from labcheck.scenarios import Catalogue
from labcheck.verdict.conditions import LOCK_SCENARIO, UNREACHABLE_SCENARIO
from labcheck.verdict.model import CheckResult, Finding, Rollout

# The failing components a deployment's rollout can explain: the API is the gateway and checks
# the tokens; the workers run the experiments. (A check parametrised by a deployment names it.)
API_COMPONENTS = frozenset({"api_gateway", "auth"})
WORKER_COMPONENTS = frozenset({"experiments"})
API_GATEWAY = "api_gateway"
MINOR_CAUSE_LEVEL = 2  # a finding of SEV-3/4 explains only findings of its own severity or lower


def _concerned(rollout: Rollout, failed: list[CheckResult], settings: Settings | None) -> list[str]:
    """The failing components that the rolled-out deployment runs (or whose checks name it)."""
    def name(key: str) -> str:
        return str(getattr(settings, key, None) or KEYS[key].default)

    serves = {name("api_deployment"): API_COMPONENTS, name("workers_deployment"): WORKER_COMPONENTS}
    deployment = rollout.deployment
    return sorted({str(c.component) for c in failed if c.component in serves.get(str(deployment), ())
                   or f"[{deployment}]" in c.nodeid})


def _via_api(check: CheckResult, settings: Settings | None) -> bool:
    """Whether a check failed only with server errors (or timeouts) from the API's user-facing endpoints.

    Such a check sees its component through the API gateway: when the gateway itself is failing,
    its failure is the gateway's symptom, not evidence against the component. Health, readiness and
    metrics endpoints are the API's reports about its dependencies, so they do not count; nor does a
    client error such as a rejected token (HTTP 401), which is the component's own answer.
    """
    api_url = getattr(settings, "values", {}).get("api_url") if settings is not None else None
    endpoints = set(getattr(settings, "values", {}).get("api_endpoints") or ()) if settings is not None else set()
    if not api_url or not endpoints:
        return False
    texts = [str(o.get("target", "")) for o in check.observed]
    first = (check.message or "").split("\n")[0]
    if not re.search(r"HTTP 5\d\d|time[sd]? ?out", first, re.I):
        return False
    texts.append(first)
    paths = [m.group(1) or "/" for text in texts
             for m in re.finditer(re.escape(api_url.rstrip("/")) + r"(/[^\s?#;:,]*)?", text)]
    return bool(paths) and all(path.rstrip("/") in endpoints for path in paths)


def _findings(failed: list[CheckResult], catalogue: Catalogue, settings: Settings | None = None) -> list[Finding]:
    """Failing checks grouped by (component, scenario)."""
    groups: dict[tuple[str, str | None], Finding] = {}
    for check in sorted(failed, key=lambda c: (c.level or 9, c.nodeid)):
        key = (check.component or "?", check.scenario)
        group = groups.get(key)
        if group is None:
            sc = catalogue.get(check.scenario)
            label = f"{check.scenario} ({key[0]})" if check.scenario else f"{key[0]} (no playbook scenario)"
            group = Finding(label=label, scenario=check.scenario, title=sc.title if sc else None,
                            component=key[0], severity=check.severity, level=check.level or 9,
                            check=check.nodeid, checks=[], via=API_GATEWAY)
        group.checks.append(check.nodeid)
        if key[0] == API_GATEWAY or not _via_api(check, settings):
            group = replace(group, via=None)
        groups[key] = group
    return list(groups.values())


def _explains(a: Finding, b: Finding, catalogue: Catalogue) -> str | None:
    """Why finding ``a`` explains finding ``b`` (None when it does not)."""
    if a is b:
        return None
    if b.via and b.via == a.component:
        return (f"{b.label} was seen only as server errors from the API's endpoints, and the "
                f"{a.component} itself is failing")
    if a.via and a.via == b.component:
        return None  # seen only through b's interface: it cannot be b's cause
    if a.scenario == LOCK_SCENARIO and b.component == a.component and b.scenario != a.scenario:
        # An observed lock holder: the sessions waiting on it keep their connections and their queries
        # run long, so pool saturation, idle transactions and slow queries there follow from it.
        return f"sessions waiting on the lock holder keep their connections and queries waiting ({b.label})"
    if a.scenario == UNREACHABLE_SCENARIO and b.component == a.component and b.scenario != a.scenario:
        # The primary refuses or does not answer: the application's pool fills with requests waiting
        # for connections it cannot open, so pool saturation there follows from it (not a second cause).
        return f"requests wait for connections the unreachable primary does not give ({b.label})"
    if a.level > max(b.level, MINOR_CAUSE_LEVEL):
        # A limited-impact condition (SEV-3/4) does not explain a worse one elsewhere.
        return None
    effect = bool(a.scenario and b.scenario and (b.scenario in catalogue.explained_by(a.scenario)
                                                 or a.scenario == b.scenario))
    up = catalogue.severity.upstream(b.component)
    if a.component != b.component and a.component in up:
        # The graph says who can affect whom; a failure mode of its own (a crash loop, an auth
        # failure) is explained by a dependency only where the catalogue lists it as an effect.
        if not b.scenario or catalogue.is_symptom(b.scenario) or effect:
            path = up[a.component]
            via = f" (via {' -> '.join(path[1:-1])})" if len(path) > 2 else ""
            return f"{b.component} depends on {a.component}{via}"
    if effect and a.scenario != b.scenario:
        return f"the catalogue lists {b.scenario} among the effects of {a.scenario}"
    return None


def _dependencies(f: Finding, findings: list[Finding], catalogue: Catalogue) -> str:
    """What a cause's failing dependencies say about it."""
    up = catalogue.severity.upstream(f.component)
    failing_up = [g for g in findings if g.component in up]
    if not up:
        return "it depends on no other component"
    if not failing_up:
        return "none of its dependencies failed"
    if all(g.via == f.component for g in failing_up):
        return f"its failing dependencies ({', '.join(g.label for g in failing_up)}) were seen only through it"
    return f"its failing dependencies ({', '.join(g.label for g in failing_up)}) do not explain it"


def rank(failed: list[CheckResult], catalogue: Catalogue,
         settings: Settings | None = None) -> tuple[list[Finding], list[Finding]]:
    """Split failing checks into causes and symptoms, cause-first, each with the reason why."""
    findings = _findings(failed, catalogue, settings)
    edges: dict[int, dict[int, str]] = {i: {} for i in range(len(findings))}
    for i, a in enumerate(findings):
        for j, b in enumerate(findings):
            reason = _explains(a, b, catalogue)
            if reason and not _explains(b, a, catalogue):  # mutual explanations cancel out
                edges[i][j] = reason
    explained = {j for i in edges for j in edges[i]}
    cause_ids = [i for i in range(len(findings)) if i not in explained]
    cause_ids.sort(key=lambda i: (-len(edges[i]), findings[i].level,
                                  len(catalogue.severity.upstream(findings[i].component)), findings[i].label))
    causes = []
    for i in cause_ids:
        f = findings[i]
        effects = [findings[j].label for j in edges[i]]
        deps = _dependencies(f, findings, catalogue)
        if effects:
            why = (f"ranked as a cause: {f.component} failed and {deps}; it explains "
                   + "; ".join(f"{findings[j].label} ({edges[i][j]})" for j in edges[i]))
        elif len(cause_ids) > 1:
            why = f"{f.component} failed and {deps}; it explains no other failure (an independent problem)"
        else:
            why = f"the only failing finding; {deps}"
        causes.append(replace(f, explains=effects, why=why))
    order = {findings[i].label: n for n, i in enumerate(cause_ids)}
    symptoms = []
    for j in sorted(explained, key=lambda j: (findings[j].level, findings[j].label)):
        by = [i for i in range(len(findings)) if j in edges[i]]
        by.sort(key=lambda i: (order.get(findings[i].label, len(order)), findings[i].level))
        first = by[0]
        symptoms.append(replace(findings[j], caused_by=[findings[i].label for i in by],
                                why=f"symptom of {findings[first].label}: {edges[first][j]}"))
    symptoms.sort(key=lambda s: (min(order.get(c, len(order)) for c in s.caused_by), s.level, s.label))
    return causes, symptoms
