"""Saturation: each container's CPU and memory usage against its limit (what ``kubectl top pods`` shows).

Usage comes from the Kubernetes metrics API (``metrics.k8s.io/v1beta1`` PodMetrics, served by
metrics-server: what ``kubectl top`` reads), or, where that API is absent or has no sample for the
deployment's pods, from Prometheus's cAdvisor series. Limits come from the pods' container specs,
out of the one pod list the Kubernetes component fetches per run. Neither source: NoData naming both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import pytest

from labcheck import config, quantity
from labcheck.components.kubernetes import Kube
from labcheck.errors import NoData, ProbeBadResponse, Unknown
from labcheck.lab import Lab
from labcheck.prefetch import Use, component, fact
from labcheck.probes import prometheus

config.declare(
    config.Key("cpu_limit_ratio", config.PARSERS["ratio"], 0.9,
               "A container whose CPU usage reaches this share of its CPU limit is near it (throttling). Usage: "
               "metrics.k8s.io PodMetrics (kubectl top), else the rate of Prometheus's "
               "container_cpu_usage_seconds_total over `window`; the limit: the pod spec"),
    config.Key("memory_limit_ratio", config.PARSERS["ratio"], 0.9,
               "A container whose memory usage reaches this share of its memory limit is near it (OOM kill). "
               "Usage: metrics.k8s.io PodMetrics (the working set, kubectl top), else Prometheus's "
               "container_memory_working_set_bytes; the limit: the pod spec"),
)

METRICS_API = "metrics.k8s.io PodMetrics"
# cAdvisor's per-container series (the kubelet's /metrics/cadvisor). container="" is the pod's own
# cgroup and "POD" the pause container; max, not sum, by pod and container: a cluster that scrapes
# cAdvisor twice (kubelet and cadvisor jobs) must not count a container twice.
CADVISOR = {"cpu": "container_cpu_usage_seconds_total", "memory": "container_memory_working_set_bytes"}
UNITS = {"cpu": "cores", "memory": "bytes"}
Samples = dict[tuple[str, str], Fraction]  # (pod, container) -> usage


def cadvisor_query(resource: str, namespace: str, window: str) -> str:
    """The PromQL that reads one resource's usage per pod and container from cAdvisor."""
    selector = f'{{namespace="{namespace}",container!="",container!="POD"}}'
    series = CADVISOR[resource] + selector
    inner = f"rate({series}[{window}])" if resource == "cpu" else series
    return f"max by (pod, container) ({inner})"


@dataclass(frozen=True)
class ContainerUsage:
    """One container of a selected pod: its usage and limit of one resource (cores or bytes)."""

    pod: str
    container: str
    running: bool
    usage: Fraction | None
    limit: Fraction | None

    @property
    def ratio(self) -> float | None:
        if self.usage is None or not self.limit:
            return None
        return float(self.usage / self.limit)

    def show(self, resource: str) -> str:
        fmt = quantity.show_cores if resource == "cpu" else quantity.show_bytes
        used = "no sample" if self.usage is None else fmt(self.usage)
        limit = "no limit" if not self.limit else f"limit {fmt(self.limit)}"
        ratio = "" if self.ratio is None else f" ({self.ratio:.0%})"
        return f"{self.pod}/{self.container}: {used} of {limit}{ratio}"


@dataclass(frozen=True)
class Saturation:
    """One resource of a deployment's containers, with where the usage was read and what was not."""

    deployment: str
    resource: str  # "cpu" or "memory"
    source: str  # where usage came from, e.g. "metrics.k8s.io PodMetrics (window 15s)"
    target: str
    containers: tuple[ContainerUsage, ...]
    passed_over: str = ""  # why an earlier source was not used

    @property
    def judged(self) -> list[ContainerUsage]:
        """Running containers with a limit and a usage sample: the only ones a ratio is known for."""
        return [c for c in self.containers if c.running and c.ratio is not None]

    @property
    def unlimited(self) -> list[ContainerUsage]:
        return [c for c in self.containers if c.running and not c.limit]

    @property
    def unmeasured(self) -> list[ContainerUsage]:
        """Running containers with a limit but no usage sample: could not be judged."""
        return [c for c in self.containers if c.running and c.limit and c.usage is None]

    def over(self, threshold: float) -> list[ContainerUsage]:
        return sorted((c for c in self.judged if (c.ratio or 0.0) >= threshold), key=lambda c: -(c.ratio or 0.0))

    def table(self) -> str:
        """``kubectl top pods --containers`` with the limit and the ratio beside each usage."""
        lines = [f"# {self.resource} usage of deployment/{self.deployment} from {self.source}"
                 + (f" ({self.passed_over})" if self.passed_over else ""),
                 f"{'POD':<40} {'CONTAINER':<16} {'USAGE':>10} {'LIMIT':>10} {'RATIO':>6}  STATE"]
        fmt = quantity.show_cores if self.resource == "cpu" else quantity.show_bytes
        for c in self.containers:
            lines.append(f"{c.pod:<40} {c.container:<16} {fmt(c.usage) if c.usage is not None else '-':>10} "
                         f"{fmt(c.limit) if c.limit else 'none':>10} "
                         f"{'' if c.ratio is None else f'{c.ratio:.0%}':>6}  {'running' if c.running else 'not running'}")
        return "\n".join(lines) + "\n"


def _start(usage: Usage, uses: Sequence[Use]) -> None:
    """The pod list (and the deployments, for another deployment's selector) and the PodMetrics list."""
    api = usage.lab.settings.api_deployment
    other = any(use.params.get("deployment") != api for use in uses)
    usage.kube.api.start(["pods", "podmetrics", *(["deployments"] if other else [])])


@component("usage")
class Usage:
    """Each container's usage of CPU and memory against its limit, from the metrics API or cAdvisor."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.kube = Kube(lab)

    @fact(_start)
    def cpu(self, deployment: str) -> Saturation:
        """CPU usage (cores) of the deployment's containers against their CPU limits."""
        return self._saturation(deployment, "cpu")

    @fact(_start)
    def memory(self, deployment: str) -> Saturation:
        """Memory working set (bytes) of the deployment's containers against their memory limits."""
        return self._saturation(deployment, "memory")

    def _saturation(self, deployment: str, resource: str) -> Saturation:
        pods = self.kube.pods_for(deployment, required=True)
        rows: list[tuple[str, str, bool, Fraction | None]] = []
        for pod in pods:
            for spec in (c for c in pod.containers if not c.init and c.name):
                status = pod.status_of(spec.name)
                running = pod.phase == "Running" and status is not None and status.state == "running"
                rows.append((pod.name, str(spec.name), running, _limit(spec.limit(resource), pods.target)))
        wanted = {(p, c) for p, c, running, _ in rows if running}
        failures: list[str] = []
        for name, read in ((METRICS_API, self._metrics_api), (f"Prometheus cAdvisor {CADVISOR[resource]}",
                                                               self._cadvisor)):
            try:
                source, samples = read(resource)
            except Unknown as exc:
                failures.append(f"{name}: {exc}")
                continue
            if wanted and not wanted & set(samples):
                failures.append(f"{name}: no sample for any running container of deployment/{deployment}")
                continue
            containers = tuple(ContainerUsage(p, c, running, samples.get((p, c)), limit) for p, c, running, limit
                               in rows)
            return Saturation(deployment, resource, source, pods.target, containers,
                              passed_over="; ".join(f"not used: {f}" for f in failures))
        raise NoData(f"no {resource} usage for deployment/{deployment} from either source looked for: "
                     + "; ".join(failures), target=pods.target)

    def _metrics_api(self, resource: str) -> tuple[str, Samples]:
        items = self.kube.api.items("podmetrics")
        samples: Samples = {}
        windows: set[str] = set()
        for item in items:
            pod = str((item.get("metadata") or {}).get("name") or "")
            windows.add(str(item.get("window") or "?"))
            for c in item.get("containers") or []:
                raw = ((c or {}).get("usage") or {}).get(resource)
                if raw is None:
                    continue
                try:
                    samples[(pod, str(c.get("name")))] = quantity.parse(str(raw))
                except ValueError as exc:
                    raise ProbeBadResponse(f"PodMetrics {pod} container {c.get('name')}: {exc}",
                                           target=self.kube.target) from None
        return f"{METRICS_API}, window {', '.join(sorted(windows)) or '?'}", samples

    def _cadvisor(self, resource: str) -> tuple[str, Samples]:
        s = self.lab.settings
        expr = cadvisor_query(resource, self.kube.namespace, str(s.window))
        found = prometheus.query(self.lab, expr)
        if not found:
            raise NoData(f"no series (query {expr} returned an empty vector)", target=f"Prometheus {s.prometheus_url}")
        samples: Samples = {}
        for sample in found:
            key = (sample.labels.get("pod", ""), sample.labels.get("container", ""))
            samples[key] = Fraction(sample.value)
        how = f"rate over {s.window}" if resource == "cpu" else "working set"
        return f"Prometheus cAdvisor {CADVISOR[resource]}, {how}", samples


def _limit(text: str | None, target: str) -> Fraction | None:
    if text is None:
        return None
    try:
        return quantity.parse(text)
    except ValueError as exc:
        raise NoData(f"a container limit cannot be read: {exc}", target=target) from None


@pytest.fixture(scope="session")
def usage(lab: Lab) -> Usage:
    """Each container's CPU and memory usage against its limit."""
    return Usage(lab)


