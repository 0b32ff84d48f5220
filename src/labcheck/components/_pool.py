"""The API's database pool gauges, per pod: read from Prometheus's answer, or from one /metrics page.

No I/O. The gauges' names come from the signal map (``pool_connections``, ``pool_max``,
``pool_idle``, ``pool_waiters``). Through Prometheus each pod's pool is judged on its own and the
worst is reported: a pool saturated on one pod is saturated, whatever the sum says. Missing gauges
are missing instrumentation, UNKNOWN naming the metrics looked for, never an incident.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from labcheck import signals
from labcheck.errors import NoData, ProbeBadResponse

REQUIRED = ("connections", "max", "waiters")  # idle is optional: not every pool says
POD_LABELS = ("pod", "kubernetes_pod_name", "instance")


@dataclass(frozen=True)
class PoolStats:
    """One pod's pool (or the one replica /metrics answered for)."""

    where: str
    connections: float
    max_connections: float
    waiters: float
    idle: float | None

    @property
    def in_use(self) -> float:
        """Connections checked out: open minus idle, where the pool says how many are idle."""
        return self.connections - (self.idle or 0.0)

    @property
    def saturated(self) -> bool:
        # A pool that grew to its maximum but still has idle connections serves the next
        # request at once; it is saturated when requests wait or every connection is in use.
        return self.waiters > 0 or self.in_use >= self.max_connections

    @property
    def load(self) -> float:
        return self.in_use / self.max_connections if self.max_connections > 0 else math.inf

    def describe(self) -> str:
        idle = "" if self.idle is None else f" ({self.in_use:g} in use, {self.idle:g} idle)"
        return (f"{self.connections:g} of {self.max_connections:g} pool connections open{idle}, "
                f"{self.waiters:g} waiter(s)")


@dataclass(frozen=True)
class Pools:
    """Every pod's pool as one source saw it; the check judges the worst."""

    source: str  # "Prometheus ... (query ...)" or "GET .../metrics"
    names: dict[str, str]  # role -> gauge name
    pools: tuple[PoolStats, ...]
    samples: dict[str, Any] = field(default_factory=dict)  # evidence: every pod's gauges

    @property
    def url(self) -> str:
        return self.source

    @property
    def worst(self) -> PoolStats:
        return max(self.pools, key=lambda p: (p.saturated, p.waiters > 0, p.load, p.waiters))

    @property
    def saturated(self) -> bool:
        return any(p.saturated for p in self.pools)

    @property
    def threshold(self) -> str:
        n = self.names
        return f"on every pod: {n['waiters']} = 0 and connections in use < {n['max']}"

    def describe(self) -> str:
        worst = self.worst
        if len(self.pools) == 1:
            return f"{worst.describe()} on {worst.where}"
        hot = sum(p.saturated for p in self.pools)
        return (f"{worst.describe()} on {worst.where} (the worst of {len(self.pools)} pods; "
                f"{hot} saturated)")


def _judge(source: str, m: signals.SignalMap, per: Mapping[str, Mapping[str, float]],
           samples: dict[str, Any]) -> Pools:
    """Pools from each pod's gauges (role -> value); UNKNOWN where a pod cannot be judged."""
    names = m.pool_names()
    looked_for = ", ".join(names[r] for r in (*REQUIRED, "idle"))
    if not per:
        raise NoData(f"no pool gauges: looked for {looked_for} (set signals.pool_* to the API's names)",
                     target=source)
    pools, lacking = [], {}
    for where, values in sorted(per.items()):
        missing = [names[r] for r in REQUIRED if r not in values]
        if missing:
            lacking[where] = missing
            continue
        pools.append(PoolStats(where, values["connections"], values["max"], values["waiters"], values.get("idle")))
    found = Pools(source, names, tuple(pools), samples)
    if lacking and not found.saturated:
        # A pod we cannot read may be the saturated one: no pass without every pod's evidence.
        text = "; ".join(f"{w} lacks {', '.join(miss)}" for w, miss in list(lacking.items())[:5])
        raise NoData(f"pool gauges incomplete: {text} (looked for {looked_for}; set signals.pool_*)", target=source)
    return found


def pool_query(m: signals.SignalMap) -> str:
    """One query for every pool gauge, summed per pod (a pod may hold several pools)."""
    pattern = "|".join(dict.fromkeys(m.pool_names().values()))
    inner = ",".join(x for x in (f'__name__=~"{pattern}"', m.selector) if x)
    return f"sum by (__name__, {', '.join(POD_LABELS)}) ({{{inner}}})"


def pod_of(labels: Mapping[str, str]) -> str:
    for label in POD_LABELS:
        if labels.get(label):
            return f"{label} {labels[label]}"
    return "(no pod or instance label)"


def from_prometheus(source: str, m: signals.SignalMap, series: Iterable[tuple[Mapping[str, str], float]]) -> Pools:
    """Pools from the answer to ``pool_query``: (labels, value) per series."""
    role_of = {name: role for role, name in m.pool_names().items()}
    per: dict[str, dict[str, float]] = {}
    samples: dict[str, Any] = {}
    for labels, value in series:
        role = role_of.get(labels.get("__name__", ""))
        if role is None:
            continue
        where = pod_of(labels)
        per.setdefault(where, {})[role] = value
        samples.setdefault(where, {})[labels["__name__"]] = value
    return _judge(source, m, per, samples)


def parse_pool_metrics(text: str, url: str, m: signals.SignalMap | None = None) -> Pools:
    """The pool gauges from one Prometheus exposition (one replica: whichever answered ``url``)."""
    from prometheus_client.parser import text_string_to_metric_families

    m = m or signals.SignalMap()
    role_of = {name: role for role, name in m.pool_names().items()}
    values: dict[str, float] = {}
    samples: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                role = role_of.get(sample.name)
                if role is None:
                    continue
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
                if not math.isnan(sample.value):
                    values[role] = values.get(role, 0.0) + sample.value
    except ValueError as exc:
        raise ProbeBadResponse(f"/metrics is not a Prometheus exposition ({str(exc)[:120]})", target=url) from None
    return _judge(f"GET {url}", m, {url: values} if values else {}, {url: samples})
