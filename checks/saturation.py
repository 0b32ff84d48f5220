"""Saturation: is any container of the platform near its CPU limit (throttling) or memory limit (OOM kill)?"""

from __future__ import annotations

import pytest

from labcheck.errors import NoData

# Severities from the impact matrix, one level below the condition each check foresees. A container
# at its CPU limit is throttled now: its requests slow down, a "minor performance degradation"
# (SEV-3) on the API, whose severe form (p95 over 2 s) the sev2 latency check judges; on the
# experiment workers (a SEV-2 component) throttling only stretches experiments (SEV-4). A container
# near its memory limit is about to be OOM-killed, which is SEV-2 on the API and SEV-3 on the workers
# (checks/kubernetes.py): the risk is one level lower, SEV-3 and SEV-4.
#
# A container without a limit has no ratio to judge: it is named in the result and never counted
# as passing. The check still judges the containers that do have a limit, because a missing limit
# is its own finding (check_containers_declare_limits fails on it) and must not blind this check
# for the rest. It is UNKNOWN when no running container can be judged, and when a running
# container with a limit has no usage sample (it could not be checked).


def _lines(items, limit=10):
    shown = list(items)
    more = f"\n  ... and {len(shown) - limit} more" if len(shown) > limit else ""
    return "\n".join(f"  {line}" for line in shown[:limit]) + more


def _judge(sat, threshold, expect, *, risk, mitigation):
    """Fail on the containers at or over the threshold; UNKNOWN where no ratio could be judged."""
    over = sat.over(threshold)
    judged = sat.judged
    if not over and sat.unmeasured:
        raise NoData(f"no {sat.resource} usage sample from {sat.source} for running container(s) with a "
                     f"limit: {', '.join(f'{c.pod}/{c.container}' for c in sat.unmeasured)}", target=sat.target)
    if not any(c.running for c in sat.containers):
        raise NoData(f"no container of deployment/{sat.deployment} is running: no {sat.resource} usage to judge "
                     f"(the pod checks judge why)", target=sat.target)
    if not judged:
        raise NoData(f"no running container of deployment/{sat.deployment} declares a {sat.resource} limit, "
                     f"so no usage/limit ratio can be judged (check_containers_declare_limits judges the "
                     f"missing limits)", target=sat.target)
    worst = max(judged, key=lambda c: c.ratio)
    unlimited = (f"; not judged, no {sat.resource} limit: "
                 + ", ".join(f"{c.pod}/{c.container}" for c in sat.unlimited)) if sat.unlimited else ""
    observed = (f"{len(over)} of {len(judged)} container(s) at or above {threshold:.0%} of their {sat.resource} "
                f"limit, worst {over[0].show(sat.resource)}" if over
                else f"highest {worst.show(sat.resource)}") + unlimited
    source = f"{sat.source}; {sat.passed_over}" if sat.passed_over else sat.source
    expect(not over, target=f"{sat.resource} usage of deployment/{sat.deployment} against its containers' limits "
                            f"({source})",
           observed=observed, threshold=f"below {threshold:.0%} of the {sat.resource} limit ({risk})",
           detail=(_lines(c.show(sat.resource) for c in over) + f"\nmitigation: {mitigation}") if over else "",
           evidence=sat.table())


@pytest.mark.workload(api="sev3", workers="sev4")
@pytest.mark.scenario("high-latency")
def check_cpu_below_limit(usage, deployment, settings, expect):
    # The high-latency scenario's "scale horizontally if CPU bound": cpu_bound is this check's
    # answer for the API (the deployment the scenario scales), true when a container is near its
    # CPU limit, false when none is; not set when the check cannot judge (UNKNOWN).
    sat = usage.cpu(deployment)
    threshold = float(settings.cpu_limit_ratio)
    over, judgeable = sat.over(threshold), sat.judged and not sat.unmeasured
    if deployment == settings.api_deployment and (over or judgeable):
        expect.fact("cpu_bound", bool(over))
    _judge(sat, threshold, expect, risk="throttling",
           mitigation=f"scale deployment/{deployment} horizontally, or raise its CPU limit")


@pytest.mark.workload(api="sev3", workers="sev4")
@pytest.mark.scenario("pod-crash-loop")
def check_memory_below_limit(usage, deployment, settings, expect):
    # Near the memory limit the kernel OOM-kills the container (the pod-crash-loop scenario's
    # "if OOMKilled: increase memory limits" once it happens); not a latency signal, so not the
    # high-latency scenario's.
    _judge(usage.memory(deployment), float(settings.memory_limit_ratio), expect, risk="OOM kill",
           mitigation=f"raise the memory limit of deployment/{deployment} or find what grows "
                      "(restart the pods only to buy time)")
