"""The Kubernetes checks against the live sandbox: faults, evidence, verdict, UNKNOWN and least privilege."""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBE = "checks/kubernetes.py"
API = "llm-research-api"
WORKERS = "experiment-workers"
NS = "llm-research"
# The stand-in's planted log lines (JWT_SECRET=..., password=..., Bearer ...) come out masked.
MASKED = ("JWT_SECRET=***", "password=***", "Bearer ***")

pytestmark = pytest.mark.xdist_group("sandbox-kubernetes")


# --- helpers ---------------------------------------------------------------------------------


def _state() -> dict[str, Any]:
    from labcheck.sandbox import manager

    state = manager.load_state()
    assert state, "no sandbox state"
    return state


def _outcomes(run) -> dict[str, str]:
    return {c["nodeid"].split("::", 1)[1]: c["outcome"] for c in run.triage["checks"]}


def _evidence(run, check: str) -> dict[str, str]:
    """The evidence files of one check (named as in reports/evidence/<nodeid>/): {file name: text}."""
    nodeid = run.check(check)["nodeid"]
    folder = run.reports / "evidence" / re.sub(r"[^A-Za-z0-9._\-]+", "_", nodeid).strip("_")[:150]
    assert folder.is_dir(), f"no evidence for {nodeid}: {sorted(p.name for p in (run.reports / 'evidence').glob('*'))}"
    return {p.name: p.read_text() for p in folder.iterdir()}


def _assert_redacted(run) -> str:
    """Every evidence file is free of the sandbox's secret values; returns all the text."""
    state = _state()
    secrets = [state["secrets"]["jwt_secret"], state["secrets"]["app_db_password"], state["settings"]["test_token"],
               state["secrets"]["kube_token"]]
    text = ""
    for path in (run.reports / "evidence").rglob("*"):
        if path.is_file():
            body = path.read_text(errors="replace")  # the metrics picture is a PNG: its text chunks count too
            for secret in secrets:
                assert secret not in body, f"a secret value leaked into {path}"
            text += body
    for path in (run.reports / "triage.json", run.reports / "incident.md"):
        body = path.read_text()
        assert not any(secret in body for secret in secrets), f"a secret value leaked into {path}"
    return text


def _kube_admin(method: str, path: str) -> Any:
    """The stand-in's admin API, trusting the CA its kubeconfig carries (when it serves HTTPS)."""
    state = _state()
    url = state["services"]["kube"]["url"] + path
    kubeconfig = yaml.safe_load(Path(state["settings"]["kubeconfig"]).read_text())
    ca = kubeconfig["clusters"][0]["cluster"].get("certificate-authority-data")
    verify: Any = ssl.create_default_context(cadata=base64.b64decode(ca).decode()) if ca else True
    resp = httpx.request(method, url, headers={"X-Admin-Key": state["secrets"]["admin_key"]}, timeout=5,
                         verify=verify)
    resp.raise_for_status()
    return resp.json()


def _wait_dead(pid: int, deadline_s: float = 15) -> None:
    from labcheck.sandbox import manager

    end = time.monotonic() + deadline_s
    while manager.pid_alive(pid, "kube"):
        assert time.monotonic() < end, f"kube stand-in (pid {pid}) still alive after {deadline_s:g} s"
        time.sleep(0.1)


# --- no I/O at collection ----------------------------------------------------------------------


def test_collect_only_does_not_import_the_kubernetes_client():
    code = ("import sys, pytest; pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', "
            f"{KUBE!r}]); print('IMPORTED' if any(m == 'kubernetes' or m.startswith('kubernetes.') "
            "for m in sys.modules) else 'CLEAN')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "19 tests collected" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("CLEAN"), proc.stdout[-500:]


def test_rbac_manifest_grants_reads_only():
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "rbac.yaml").read_text()) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"]
    verbs = {v for d in docs for rule in d.get("rules", []) for v in rule["verbs"]}
    assert verbs <= {"get", "list", "watch"}
    secret_rules = [r for d in docs for r in d.get("rules", []) if "secrets" in r["resources"]]
    assert secret_rules == [{"apiGroups": [""], "resources": ["secrets"],
                             "resourceNames": ["llm-research-secrets"], "verbs": ["get"]}]


# --- the sandbox -------------------------------------------------------------------------------


def test_healthy_sandbox_passes(healed):
    run = healed.wait_for(lambda r: set(_outcomes(r).values()) == {"passed"}, KUBE, "checks/api_gateway.py",
                          deadline_s=90, what="every Kubernetes and API gateway check passing")
    outcomes = _outcomes(run)
    assert len([c for c in run.triage["checks"] if c["nodeid"].startswith(KUBE)]) == 19
    for check in ("check_every_pod_is_ready", "check_no_container_crash_looping", "check_no_recent_oom_kill",
                  "check_restarts_within_window", "check_deployment_has_a_ready_pod"):
        assert outcomes[f"{check}[{API}]"] == outcomes[f"{check}[{WORKERS}]"] == "passed"
    facts = run.triage["facts"]
    assert facts["oom_killed"] is False and facts["crash"] is False and facts["node_issue"] is False
    assert facts["recent_deployment"] is False
    # 40 restarts a month ago, none since: healthy, and counted as 0 in the window.
    restarts = run.check(f"check_restarts_within_window[{WORKERS}]")["observed"][0]["observed"]
    assert restarts.startswith("at most 0 restart(s)"), restarts
    assert not (run.reports / "evidence").exists() or not any((run.reports / "evidence").rglob("*.txt"))


def test_a_run_reads_without_the_generated_api_classes(healed, tmp_path):
    # CoreV1Api and its pydantic models take over a second to import; the probe makes its GETs
    # through ApiClient itself. A run against the live stand-in passes without importing them.
    code = ("import sys, pytest; rc = pytest.main(['-q', '-p', 'no:cacheprovider', "
            f"'--reports-dir={tmp_path}', {KUBE!r}]); "
            "print('GENERATED' if any(m.startswith('kubernetes.client.api.') for m in sys.modules) else 'RAW', rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == f"RAW {pytest.ExitCode.OK}", proc.stdout[-3000:]


def test_crash_loop_fails_with_scenario_and_evidence(healed):
    healed.fault("crash-loop", started_ago=60)
    run = healed.run_checks(KUBE, "-m", "kubernetes or api_gateway")
    crash = run.check(f"check_no_container_crash_looping[{API}]")
    assert crash["outcome"] == "failed" and crash["scenario"] == "pod-crash-loop" and crash["severity"] == "SEV-2"
    for text in ("CrashLoopBackOff", "restarts", "Error (exit code 1)", "finished"):
        assert text in crash["message"], crash["message"]
    assert run.outcome(f"check_restarts_within_window[{API}]") == "failed"
    assert run.outcome(f"check_every_pod_is_ready[{API}]") == "failed"
    assert run.outcome(f"check_deployment_has_a_ready_pod[{API}]") == "passed"  # 2 of 3 still serve
    assert "pod-crash-loop" in run.scenario_ids()
    assert run.triage["facts"]["crash"] is True
    files = _evidence(run, f"check_no_container_crash_looping[{API}]")
    names = sorted(files)
    assert "pod-descriptions.json" in names and "warning-events.txt" in names
    assert f"rollout-history_{API}.txt" in names
    current = [n for n in names if n.startswith("logs_") and not n.endswith("_previous.txt")]
    previous = [n for n in names if n.endswith("_previous.txt")]
    assert current and previous, names
    assert all(files[n].strip() for n in names), {n: len(t) for n, t in files.items()}
    assert "KeyError: 'MODEL_REGISTRY_URL'" in files[previous[0]]
    assert "BackOff" in files["warning-events.txt"]
    assert "CrashLoopBackOff" in files["pod-descriptions.json"]
    text = _assert_redacted(run)
    assert "JWT_SECRET=***" in text and "password=***" in text


def test_oom_kill_fails_and_quotes_the_memory_limit(healed):
    healed.fault("oom-killed")
    run = healed.run_checks(KUBE, "-m", "kubernetes or api_gateway")
    oom = run.check(f"check_no_recent_oom_kill[{API}]")
    assert oom["outcome"] == "failed" and oom["scenario"] == "pod-crash-loop"
    assert "OOMKilled" in oom["message"] and "memory limit 2Gi, request 1Gi" in oom["message"]
    assert run.triage["facts"]["oom_killed"] is True
    mitigation = [s["step"] for sc in run.triage["scenarios"] if sc["id"] == "pod-crash-loop" for s in sc["mitigation"]]
    assert "If OOMKilled: increase memory limits" in mitigation
    files = _evidence(run, f"check_no_recent_oom_kill[{API}]")
    previous = [n for n in files if n.endswith("_previous.txt")]
    assert previous and "limit=2Gi" in files[previous[0]]
    assert all(t.strip() for t in files.values())
    text = _assert_redacted(run)
    assert all(m in text for m in MASKED), [m for m in MASKED if m not in text]


def test_node_not_ready_names_the_node_and_its_pods(healed):
    healed.fault("node-not-ready")
    run = healed.run_checks(KUBE, "-m", "kubernetes or api_gateway")
    node = run.check("check_nodes_ready_without_pressure")
    assert node["outcome"] == "failed" and node["component"] == "kubernetes" and node["severity"] == "SEV-2"
    assert node["scenario"] == "pod-crash-loop"
    assert "node-b" in node["message"] and "MemoryPressure=True" in node["message"]
    assert API in node["message"]  # the API pod scheduled on node-b is named
    assert run.triage["facts"]["node_issue"] is True
    files = _evidence(run, "check_nodes_ready_without_pressure")
    assert {"pod-descriptions.json", "warning-events.txt"} <= set(files)
    assert any(n.startswith("logs_") for n in files) and all(t.strip() for t in files.values())
    assert "NodeNotReady" in files["warning-events.txt"]
    _assert_redacted(run)


def test_workers_unavailable_fails_the_workers_deployment(healed):
    healed.fault("workers-unavailable")
    run = healed.run_checks(KUBE)
    check = run.check(f"check_deployment_has_available_replicas[{WORKERS}]")
    assert check["outcome"] == "failed" and check["component"] == "experiments" and check["severity"] == "SEV-2"
    assert run.outcome(f"check_deployment_has_available_replicas[{API}]") == "passed"
    files = _evidence(run, f"check_deployment_has_available_replicas[{WORKERS}]")
    assert f"rollout-history_{WORKERS}.txt" in files and all(t.strip() for t in files.values())


def test_recent_rollout_alone_is_information(healed):
    healed.fault("recent-rollout")
    run = healed.run_checks(KUBE, "-m", "kubernetes or api_gateway")
    check = run.check(f"check_recent_rollout_is_recorded[{API}]")
    assert check["outcome"] == "passed"
    rollout = check["facts"]["recent_rollout"]
    assert rollout["deployment"] == API and rollout["revision"] == 4 and rollout["previous_revision"] == 3
    assert rollout["rollback"] == f"kubectl rollout undo deployment/{API} -n {NS} --to-revision=3"
    assert rollout["image"].endswith(":v1.5.0") and 0 <= rollout["age_s"] < 1800
    assert run.triage["facts"]["recent_deployment"] is True
    assert run.triage["severity"] is None and run.triage["suspects"] == []


def _revision(number, images=("registry/llm-research-api:v1",), created=1.0):
    from labcheck.components.kubernetes import Revision

    return Revision(number=number, replicaset=f"rs-{number}", images=images, created=created,
                    change_cause="", replicas=1)


@pytest.mark.parametrize("current, history, gaps", [
    (2, [_revision(1), _revision(2)], []),
    (None, [_revision(1)], []),
    (None, [], ["no replicaset of the deployment carries a revision: the rollout history is empty"]),
    (3, [_revision(1), _revision(2)], ["the deployment runs revision 3, which no replicaset records (recorded: 1, 2)"]),
    (1, [_revision(1, images=(), created=None)],
     ["revision 1 names no container image", "revision 1 has no creation time"]),
])
# Imported here, checks/kubernetes.py's component markers are not registered (this run is not a triage).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")
def test_a_rollout_history_without_the_running_revision_fails(current, history, gaps):
    # check_recent_rollout_is_recorded can fail: a gap in the history is FAILED (the listing was read).
    from checks.kubernetes import _rollout_gaps

    assert _rollout_gaps(current, history) == gaps


def test_recent_rollout_with_error_rate_is_the_suspect(healed):
    healed.fault("recent-rollout")
    healed.fault("error-rate", share=0.3)
    run = healed.wait_for(
        lambda r: bool(r.triage["suspects"]) and any(
            c["outcome"] == "failed" and c["severity"] in ("SEV-1", "SEV-2") for c in r.triage["checks"]),
        KUBE, "checks/api_gateway.py", "-m", "kubernetes or api_gateway", deadline_s=90,
        what="a sev1/sev2 API failure with the rollout as suspect")
    suspect = run.triage["suspects"][0]
    command = f"kubectl rollout undo deployment/{API} -n {NS} --to-revision=3"
    assert suspect["kind"] == "recent-rollout" and suspect["deployment"] == API
    assert suspect["revision"] == 4 and suspect["previous_revision"] == 3 and suspect["rollback"] == command
    assert run.triage["next_steps"][0]["command"] == command
    assert "high-error-rate" in run.scenario_ids()
    # A failing API gateway check carries the Kubernetes evidence too, with the new revision.
    failed = [c["nodeid"].split("::", 1)[1] for c in run.triage["checks"]
              if c["outcome"] == "failed" and c["component"] == "api_gateway"]
    files = _evidence(run, failed[0])
    history = files[f"rollout-history_{API}.txt"]
    assert "current revision 4" in history and "v1.5.0" in history
    assert "pod-descriptions.json" in files and "warning-events.txt" in files
    _assert_redacted(run)


def test_no_kubernetes_target_is_unknown_not_pass(healed):
    run = healed.run_checks(KUBE, "--no-sandbox")
    outcomes = _outcomes(run)
    assert len(outcomes) == 19 and set(outcomes.values()) == {"unknown"}, outcomes
    assert all("no kubeconfig configured" in c["message"] for c in run.triage["checks"])


@pytest.mark.parametrize(("fault", "status"), [("forbidden", "403"), ("unauthorized", "401")])
def test_rejected_credentials_make_every_check_unknown(healed, fault, status):
    healed.fault(fault)
    run = healed.run_checks(KUBE)
    outcomes = _outcomes(run)
    assert len(outcomes) == 19 and set(outcomes.values()) == {"unknown"}, outcomes
    for check in run.triage["checks"]:
        assert f"HTTP {status}" in check["message"], check["message"]
    assert run.triage["sev1_blind"] is True


def test_requests_stay_within_rbac(healed):
    """A full run (with a crash loop, so evidence reads logs) uses only what deploy/rbac.yaml grants."""
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "rbac.yaml").read_text()) if d]
    grants = []
    for doc in docs:
        if doc["kind"] not in ("Role", "ClusterRole"):
            continue
        namespace = doc["metadata"].get("namespace") if doc["kind"] == "Role" else None
        for rule in doc["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        grants.append((namespace, group, resource, verb, tuple(rule.get("resourceNames", ()))))

    def allowed(entry: dict[str, Any]) -> bool:
        for namespace, group, resource, verb, names in grants:
            if namespace is not None and entry["namespace"] != namespace:
                continue
            if (group, resource, verb) == (entry["api_group"], entry["resource"], entry["verb"]) and \
                    (not names or entry["name"] in names):
                return True
        return False

    healed.fault("crash-loop", started_ago=60)
    _kube_admin("DELETE", "/admin/requests")
    # checks/auth.py reads the platform secret (the one JWT secret check).
    run = healed.run_checks(KUBE, "checks/api_gateway.py", "checks/auth.py")
    assert run.outcome(f"check_no_container_crash_looping[{API}]") == "failed"
    entries = [e for e in _kube_admin("GET", "/admin/requests")["requests"] if "labcheck" in e["user_agent"]]
    assert entries, "no request from labcheck reached the stand-in"
    assert all(e["resource"] for e in entries), [e["path"] for e in entries if not e["resource"]]
    denied = [f"{e['verb']} {e['api_group'] or 'core'}/{e['resource']} {e['namespace']}/{e['name']}"
              for e in entries if not allowed(e)]
    assert not denied, denied
    used = {(e["verb"], e["resource"]) for e in entries}
    assert {("list", r) for r in ("pods", "events", "nodes", "deployments", "replicasets")} <= used
    assert ("get", "secrets") in used and ("get", "pods/log") in used
    lists = [e["resource"] for e in entries if e["verb"] == "list"]
    assert sorted(lists) == sorted(set(lists)), f"a list was fetched more than once: {sorted(lists)}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_works_against_the_stand_in(healed):
    kubeconfig = _state()["settings"]["kubeconfig"]
    proc = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "get", "pods,deploy", "-n", NS],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"deployment.apps/{API}" in proc.stdout and f"pod/{API}-" in proc.stdout, proc.stdout


# Last: it stops the stand-in and restarts the whole sandbox.
def test_stopped_stand_in_makes_every_check_unknown(healed):
    from labcheck.sandbox import manager

    pid = int(_state()["services"]["kube"]["pid"])
    os.kill(pid, signal.SIGTERM)
    try:
        _wait_dead(pid)
        run = healed.run_checks(KUBE)
        outcomes = _outcomes(run)
        assert len(outcomes) == 19 and set(outcomes.values()) == {"unknown"}, outcomes
        assert all("connection refused" in c["message"] for c in run.triage["checks"]), \
            [c["message"] for c in run.triage["checks"]]
        assert run.triage["counts"]["passed"] == 0
    finally:
        offset = int(os.environ.get("LABCHECK_SANDBOX_PORT_OFFSET", "0"))
        healed.state = manager.up(port_offset=offset)
