"""Kubernetes: are the platform's pods ready and stable, its nodes healthy, its rollouts known?"""

from __future__ import annotations

import pytest

from labcheck.errors import NoData

# Severities follow the workload a condition hits. @pytest.mark.workload(api=..., workers=...) gives
# one test id per deployment (api_deployment, workers_deployment); the API pods carry the
# api_gateway component (impact matrix: SEV-1, every user), the experiment workers the experiments
# component (SEV-2, active experiments), so the same condition is one level lower on the workers.


STARTUP_S = 60.0  # a container that dies sooner after starting failed at startup


def _lines(items, limit=10):
    shown = list(items)
    more = f"\n  ... and {len(shown) - limit} more" if len(shown) > limit else ""
    return "\n".join(f"  {line}" for line in shown[:limit]) + more


@pytest.mark.workload(api="sev1", workers="sev2")
@pytest.mark.scenario("pod-crash-loop")
def check_deployment_has_a_ready_pod(kube, deployment, expect):
    # No Ready pod means no endpoint behind the Service: the API is down for everyone (SEV-1);
    # for the workers, no experiment executes (SEV-2).
    pods = kube.pods_for(deployment)
    ready = [p for p in pods if p.ready]
    expect(bool(ready), target=pods.target, observed=f"{len(ready)} of {len(pods)} pods Ready",
           threshold="at least 1 pod Ready",
           detail=("pods:\n" + _lines(p.describe() for p in pods)) if pods
           else "no pod matches the selector")


@pytest.mark.workload(api="sev2", workers="sev3")
@pytest.mark.scenario("pod-crash-loop")
def check_every_pod_is_ready(kube, deployment, expect):
    # Some pods not Ready: the rest still serve, but with less capacity and with requests dropped
    # while pods flap; the playbook's "service degradation" (SEV-2 for the API). A worker short
    # slows experiments without stopping them (SEV-3).
    pods = kube.pods_for(deployment, required=True, note="the sev1/sev2 ready-pod check judges that")
    not_ready = [p for p in pods if not p.ready]
    expect(not not_ready, target=pods.target, observed=f"{len(not_ready)} of {len(pods)} pods not Ready",
           threshold="every pod Ready", detail="not Ready:\n" + _lines(p.describe() for p in not_ready))


@pytest.mark.workload(api="sev2", workers="sev3")
@pytest.mark.scenario("pod-crash-loop")
def check_no_container_crash_looping(kube, deployment, expect):
    # A container in CrashLoopBackOff (or unable to pull its image or read its config) is a pod
    # out of service that will not come back by itself: SEV-2 on the API (degradation; all pods
    # down is the sev1 ready-pod check), SEV-3 on the workers.
    pods = kube.pods_for(deployment, required=True)
    stuck = [(p, cs) for p in pods for cs in p.statuses if cs.stuck]
    reasons = sorted({str(cs.waiting_reason) for _, cs in stuck})
    # Facts for the scenario's advice. "If panic/crash: rollback" unless the container was
    # OOM-killed (that advice is the OOM check's); "if startup failure: check configs, secrets,
    # dependencies" when it cannot start (image, config) or dies within STARTUP_S of starting.
    looping = [cs for _, cs in stuck if cs.crash_looping and cs.last_termination_reason != "OOMKilled"]
    expect.fact("crash", bool(looping))
    expect.fact("startup_failure", any(cs.cannot_start for _, cs in stuck)
                or any((cs.last_lifetime_s or STARTUP_S) < STARTUP_S for cs in looping))
    lines = [f"pod {pod.name} container {cs.name}: waiting {cs.waiting_reason}, restarts {cs.restart_count}, "
             f"last termination {cs.describe_last_termination()}" for pod, cs in stuck]
    expect(not stuck, target=pods.target,
           observed=f"{len(stuck)} container(s) waiting in {', '.join(reasons)}" if stuck else "no container stuck",
           threshold="no container waiting in CrashLoopBackOff, ImagePullBackOff or CreateContainerConfigError",
           detail=_lines(lines))


@pytest.mark.workload(api="sev2", workers="sev3")
@pytest.mark.scenario("pod-crash-loop")
def check_no_recent_oom_kill(kube, deployment, settings, expect):
    # An OOM kill drops every request in flight on that pod and recurs under the same load until
    # the limit is raised: SEV-2 on the API. On a worker it kills one experiment run (SEV-3).
    pods = kube.pods_for(deployment, required=True)
    window = float(settings.restart_window_s)
    now = kube.now()
    kills = [(pod, cs, cs.last_termination) for pod in pods for cs in pod.statuses
             if cs.last_termination_reason == "OOMKilled" and cs.last_finished_at is not None
             and cs.last_finished_at >= now - window]
    expect.fact("oom_killed", bool(kills))
    lines = []
    for pod, cs, term in kills:
        spec = pod.container(cs.name)
        limit, request = (spec.limit("memory"), spec.request("memory")) if spec else (None, None)
        lines.append(f"pod {pod.name} container {cs.name}: OOMKilled (exit code "
                     f"{term.exit_code}) at {term.finished_at} ({term.age_text(now)} ago); "
                     f"memory limit {limit or 'none'}, request {request or 'none'}; "
                     f"restarts {cs.restart_count}")
    expect(not kills, target=f"{pods.target}, last {window:g} s",
           observed=f"{len(kills)} container(s) OOMKilled" if kills else "no OOM kill",
           threshold="no container OOMKilled within the window",
           detail=_lines(lines) + ("\nmitigation: increase the memory limit above the current one" if kills else ""))


@pytest.mark.workload(api="sev3", workers="sev3")
@pytest.mark.scenario("pod-crash-loop")
def check_restarts_within_window(kube, deployment, settings, expect):
    # Frequent restarts take one pod out of service at a time and come back: limited impact
    # (SEV-3). Counted as a rate within restart_window_s, never lifetime totals: a pod that
    # restarted 40 times last month and not since is healthy.
    pods = kube.pods_for(deployment, required=True)
    window, limit = float(settings.restart_window_s), int(settings.restart_max)
    events = kube.events()
    cutoff = kube.now() - window
    counts = sorted(((p.restarts_within(cs, events, cutoff), p, cs) for p in pods for cs in p.statuses),
                    key=lambda c: c[0], reverse=True)
    if not counts:
        raise NoData("the pods report no container statuses", target=pods.target)
    worst, pod, cs = counts[0]
    over = [c for c in counts if c[0] > limit]
    expect(not over, target=f"container restarts of deployment/{deployment}, last {window:g} s",
           observed=f"at most {worst} restart(s) ({pod.name}/{cs.name})",
           threshold=f"<= {limit} per container within {window:g} s",
           detail=_lines(f"pod {p.name} container {c.name}: {n} restart(s) in the window, "
                         f"{c.restart_count} in its lifetime; last termination "
                         f"{c.describe_last_termination()}" for n, p, c in over))


@pytest.mark.workload(api="sev4", workers="sev4")
def check_containers_declare_limits(kube, deployment, expect):
    # Hygiene (SEV-4): without limits a leak starves its node's neighbours instead of being
    # OOM-killed on its own, and the OOM check cannot quote a limit to raise.
    pods = kube.pods_for(deployment, required=True)
    missing = {}
    for pod in pods:
        for container in pod.containers:
            if container.missing_limits:
                missing.setdefault(str(container.name), (pod.name, container.missing_limits))
    expect(not missing, target=pods.target,
           observed=f"{len(missing)} container(s) without limits" if missing else "every container has limits",
           threshold="memory and CPU limits on every container",
           detail=_lines(f"container {c} (e.g. pod {p}): no {' or '.join(lacks)} limit"
                         for c, (p, lacks) in sorted(missing.items())))


@pytest.mark.sev2
@pytest.mark.kubernetes
@pytest.mark.scenario("pod-crash-loop")
def check_nodes_ready_without_pressure(kube, expect):
    # A NotReady or pressured node takes its pods out of service (and evicts them after the
    # toleration), the other nodes keep serving: major degradation (SEV-2). Every node down shows
    # as the sev1 ready-pod check.
    nodes = kube.nodes()
    if not nodes:
        raise NoData("the cluster lists no nodes", target=kube.target)
    bad = {n.name: n.problems for n in nodes if n.problems}
    expect.fact("node_issue", bool(bad))
    lines = []
    for name, problems in sorted(bad.items()):
        pods = ", ".join(p.name for p in kube.pods_on(name)) or "none"
        lines.append(f"node {name}: {'; '.join(problems)}; pods in {kube.namespace} on it: {pods}")
    if bad:
        lines.append("mitigation: drain and replace the node: kubectl drain <node> --ignore-daemonsets "
                     "--delete-emptydir-data")
    expect(not bad, target=f"nodes of the cluster ({len(nodes)})",
           observed=f"{len(bad)} of {len(nodes)} nodes unhealthy: {', '.join(sorted(bad))}" if bad
           else f"{len(nodes)} nodes Ready",
           threshold="Ready=True and no MemoryPressure, DiskPressure or PIDPressure", detail=_lines(lines))


def _status_line(st):
    return (f"{st['available']} of {st['desired']} available (ready {st['ready']}, updated {st['updated']}, "
            f"revision {st['revision']})")


def _conditions(st):
    return _lines(f"{kind}={c.get('status')} {c.get('reason') or ''}: {c.get('message') or ''}"
                  for kind, c in sorted(st["conditions"].items()))


@pytest.mark.workload(api="sev1", workers="sev2")
@pytest.mark.scenario("pod-crash-loop")
def check_deployment_has_available_replicas(kube, deployment, expect):
    # No available replica: the API is down (SEV-1); nothing runs experiments (SEV-2).
    st = kube.deployment_status(deployment)
    expect(st["available"] >= 1, target=f"deployment/{deployment} in namespace {kube.namespace}",
           observed=_status_line(st), threshold="at least 1 available replica", detail=_conditions(st))


@pytest.mark.workload(api="sev2", workers="sev3")
@pytest.mark.scenario("pod-crash-loop")
def check_deployment_has_desired_replicas_available(kube, deployment, expect):
    # Fewer available replicas than desired: reduced capacity while serving (SEV-2 on the API,
    # SEV-3 on the workers, where queued experiments only wait longer).
    st = kube.deployment_status(deployment)
    expect(st["available"] >= st["desired"], target=f"deployment/{deployment} in namespace {kube.namespace}",
           observed=_status_line(st), threshold=f"{st['desired']} available (the desired replicas)",
           detail=_conditions(st))


def _rollout_gaps(current, history):
    """What the rollout history lacks for the running revision (``current``; None: the newest)."""
    if not history:
        return ["no replicaset of the deployment carries a revision: the rollout history is empty"]
    number = current if current is not None else history[-1].number
    found = [r for r in history if r.number == number]
    if not found:
        return [f"the deployment runs revision {number}, which no replicaset records "
                f"(recorded: {', '.join(str(r.number) for r in history)})"]
    gaps = []
    if not any(found[0].images):
        gaps.append(f"revision {number} names no container image")
    if found[0].created is None:
        gaps.append(f"revision {number} has no creation time")
    return gaps


@pytest.mark.workload(api="sev4", workers="sev4")
def check_recent_rollout_is_recorded(kube, deployment, settings, expect):
    # The playbook's "check if recent deployment" step (kubectl rollout history) and its first
    # mitigation ("if recent deployment -> rollback") need the running revision in the history,
    # with its image and when it rolled out. A history that lacks it FAILS: the listing was read,
    # so the gap is the platform's, and an operator could neither tell a recent rollout nor roll it
    # back. SEV-4: no user is hurt by it. A rollout younger than rollout_window_s is recorded as a
    # fact; when sev1/sev2 checks fail in the same run, the verdict names it as a suspect.
    gaps = _rollout_gaps(kube.deployment_status(deployment)["revision"], kube.rollout_history(deployment))
    window = float(settings.rollout_window_s)
    observed = "; ".join(gaps)
    if not gaps:
        rollout = kube.latest_rollout(deployment)
        recent = rollout.age_s is not None and rollout.age_s < window
        expect.fact("recent_deployment", recent)
        if recent:
            expect.fact("recent_rollout", rollout.fact())
        observed = (f"revision {rollout.revision} ({rollout.image}) rolled out {rollout.age_text} ago"
                    + (" (recent)" if recent else ""))
    expect(not gaps, target=f"rollout history of deployment/{deployment} in namespace {kube.namespace}",
           observed=observed,
           threshold="the running revision recorded with its image and rollout time "
                     f"(a rollout younger than {window:g} s is a suspect when sev1/sev2 checks fail)",
           detail="without it the playbook's 'recent deployment?' question has no answer and "
                  "`kubectl rollout undo` has no known revision to go back to" if gaps else "")
