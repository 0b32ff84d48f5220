"""The saturation checks against the live sandbox: PodMetrics as kubectl top reads them, the faults that move
them, the cpu_bound step, and the metrics API's 404 falling back to cAdvisor series or ending UNKNOWN."""

from __future__ import annotations

import base64
import re
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import yaml

from standin import StandIn

SAT = "checks/saturation.py"
API = "llm-research-api"
WORKERS = "experiment-workers"
NS = "llm-research"
METRICS = f"/apis/metrics.k8s.io/v1beta1/namespaces/{NS}/pods"
SCALE_OUT = "Scale horizontally if CPU bound"

pytestmark = pytest.mark.xdist_group("sandbox-kubernetes")


def _outcomes(run) -> dict[str, str]:
    return {c["nodeid"].split("::", 1)[1]: c["outcome"] for c in run.triage["checks"] if c["nodeid"].startswith(SAT)}


def _kubeconfig(sandbox) -> tuple[str, str, Any]:
    """The stand-in's URL, the kubeconfig's token, and a TLS context trusting its CA."""
    doc = yaml.safe_load(Path(sandbox.settings["kubeconfig"]).read_text())
    cluster, user = doc["clusters"][0]["cluster"], doc["users"][0]["user"]
    ca = cluster.get("certificate-authority-data")
    verify: Any = ssl.create_default_context(cadata=base64.b64decode(ca).decode()) if ca else True
    return cluster["server"], user["token"], verify


def _kube(sandbox, path: str, **params: str) -> httpx.Response:
    """A GET to the stand-in as a client with the kubeconfig's token and CA."""
    server, token, verify = _kubeconfig(sandbox)
    return httpx.get(server + path, params=params, headers={"Authorization": f"Bearer {token}"}, verify=verify,
                     timeout=5)


def _admin(sandbox, method: str, path: str) -> Any:
    """The stand-in's admin API (the request log)."""
    server, _, verify = _kubeconfig(sandbox)
    resp = httpx.request(method, server + path, headers={"X-Admin-Key": sandbox.state["secrets"]["admin_key"]},
                         verify=verify, timeout=5)
    resp.raise_for_status()
    return resp.json()


def _steps(run, scenario: str, key: str) -> list[dict[str, Any]]:
    found = [s for s in run.triage["scenarios"] if s["id"] == scenario]
    assert found, f"scenario {scenario} not matched: {sorted(run.scenario_ids())}"
    return list(found[0].get(key) or [])


# --- the stand-in's metrics API ------------------------------------------------------------------


def test_pod_metrics_are_what_metrics_server_serves(healed):
    doc = _kube(healed, METRICS).json()
    assert doc["kind"] == "PodMetricsList" and doc["apiVersion"] == "metrics.k8s.io/v1beta1"
    pods = {p["metadata"]["name"] for p in _kube(healed, f"/api/v1/namespaces/{NS}/pods").json()["items"]}
    assert {i["metadata"]["name"] for i in doc["items"]} == pods
    for item in doc["items"]:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", item["timestamp"]) and item["window"] == "15s"
        for c in item["containers"]:
            assert re.fullmatch(r"\d+n", c["usage"]["cpu"]) and re.fullmatch(r"\d+Ki", c["usage"]["memory"]), c
    api = _kube(healed, METRICS, labelSelector=f"app={API}").json()["items"]
    assert len(api) == 3 and all(i["metadata"]["labels"]["app"] == API for i in api)
    one = _kube(healed, f"{METRICS}/{api[0]['metadata']['name']}").json()
    assert one["kind"] == "PodMetrics" and one["containers"][0]["name"] == "api"
    assert _kube(healed, f"{METRICS}/no-such-pod").status_code == 404
    groups = [g["name"] for g in _kube(healed, "/apis").json()["groups"]]
    assert "metrics.k8s.io" in groups


def test_metrics_server_absent_is_404_everywhere(healed):
    healed.fault("metrics-server-absent")
    assert _kube(healed, METRICS).status_code == 404
    assert _kube(healed, "/apis/metrics.k8s.io/v1beta1").status_code == 404
    assert "metrics.k8s.io" not in [g["name"] for g in _kube(healed, "/apis").json()["groups"]]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_top_pods_shows_the_cpu_saturation(healed):
    healed.fault("cpu-saturation", share=0.97)
    proc = subprocess.run(["kubectl", "--kubeconfig", healed.settings["kubeconfig"], "top", "pods", "-n", NS,
                           "-l", f"app={API}", "--containers"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    assert len(rows) == 3 and all(r[1] == "api" and r[2] == "970m" for r in rows), proc.stdout


# --- the checks ----------------------------------------------------------------------------------


def test_healthy_sandbox_passes_and_cpu_bound_is_false(healed):
    run = healed.run_checks(SAT)
    assert set(_outcomes(run).values()) == {"passed"} and len(_outcomes(run)) == 4, _outcomes(run)
    assert run.triage["facts"]["cpu_bound"] is False
    cpu = run.check(f"check_cpu_below_limit[{API}]")
    assert cpu["severity"] == "SEV-3" and cpu["component"] == "api_gateway" and cpu["scenario"] == "high-latency"
    assert "metrics.k8s.io PodMetrics" in cpu["observed"][0]["target"]
    assert re.search(r"highest llm-research-api-\S+/api: \d+m of limit 1000m \(\d+%\)", cpu["observed"][0]["observed"])
    workers = run.check(f"check_memory_below_limit[{WORKERS}]")
    assert workers["severity"] == "SEV-4" and workers["component"] == "experiments"
    assert "cpu_bound" not in (run.check(f"check_cpu_below_limit[{WORKERS}]").get("facts") or {})


def test_cpu_saturation_fails_and_keeps_the_scale_out_step(healed):
    healed.fault("cpu-saturation")
    run = healed.run_checks(SAT)
    cpu = run.check(f"check_cpu_below_limit[{API}]")
    assert cpu["outcome"] == "failed" and cpu["scenario"] == "high-latency", cpu["message"]
    assert "3 of 3 container(s) at or above 90% of their cpu limit" in cpu["message"]
    assert "970m of limit 1000m (97%)" in cpu["message"] and "threshold below 90%" in cpu["message"]
    assert run.outcome(f"check_cpu_below_limit[{WORKERS}]") == "passed"
    assert run.outcome(f"check_memory_below_limit[{API}]") == "passed"
    assert run.triage["facts"]["cpu_bound"] is True
    kept = [s for s in _steps(run, "high-latency", "mitigation") if s["step"] == SCALE_OUT]
    assert kept and kept[0]["condition"] == "true", _steps(run, "high-latency", "mitigation")
    folder = next(p for p in (run.reports / "evidence").iterdir() if p.is_dir())  # beside the metrics picture
    table = "".join(p.read_text() for p in folder.iterdir())
    assert "USAGE" in table and "970m" in table and "97%" in table


def test_a_threshold_from_configuration(healed):
    healed.fault("cpu-saturation", share=0.8)
    assert healed.run_checks(SAT).outcome(f"check_cpu_below_limit[{API}]") == "passed"
    run = healed.run_checks(SAT, "--set", "cpu_limit_ratio=0.75")
    cpu = run.check(f"check_cpu_below_limit[{API}]")
    assert cpu["outcome"] == "failed" and "threshold below 75% of the cpu limit" in cpu["message"]


def test_no_cpu_saturation_drops_the_scale_out_step_with_its_reason(healed):
    # A long query makes high-latency the scenario; the CPU check passed, so the step is dropped.
    healed.fault("long-query")
    run = healed.wait_for(lambda r: r.outcome("check_no_long_running_queries") == "failed",
                          "--set", "db_long_query_s=1", "checks/database.py", SAT, deadline_s=30,
                          what="long-query check failing")
    assert run.triage["facts"]["cpu_bound"] is False
    assert SCALE_OUT not in [s["step"] for s in _steps(run, "high-latency", "mitigation")]
    dropped = [s for s in run.triage["dropped_steps"] if s["step"] == SCALE_OUT]
    assert dropped and dropped[0]["scenario"] == "high-latency", run.triage["dropped_steps"]
    assert dropped[0]["because"] == f"cpu_bound = false (checks/saturation.py::check_cpu_below_limit[{API}])"
    assert SCALE_OUT in [s["step"] for s in _steps(run, "high-latency", "dropped_mitigation")]


def test_memory_saturation_fails_towards_oom(healed):
    healed.fault("memory-saturation")
    run = healed.run_checks(SAT)
    memory = run.check(f"check_memory_below_limit[{API}]")
    assert memory["outcome"] == "failed" and memory["scenario"] == "pod-crash-loop" and memory["severity"] == "SEV-3"
    assert "of limit 2048Mi (95%)" in memory["message"] and "OOM kill" in memory["message"]
    assert run.outcome(f"check_cpu_below_limit[{API}]") == "passed" and run.triage["facts"]["cpu_bound"] is False


def test_no_metrics_api_and_no_cadvisor_is_unknown_naming_both(healed):
    healed.fault("metrics-server-absent")
    run = healed.run_checks(SAT)
    assert set(_outcomes(run).values()) == {"unknown"}, _outcomes(run)
    for check in run.triage["checks"]:
        message = check["message"]
        assert "from either source looked for" in message, message
        assert "metrics.k8s.io PodMetrics" in message and "HTTP 404" in message, message
        assert "Prometheus cAdvisor container_" in message and "empty vector" in message, message
    assert "cpu_bound" not in run.triage["facts"]
    assert run.triage["counts"]["passed"] == 0


def test_without_the_metrics_api_cadvisor_series_are_read(healed):
    """The metrics API answers 404; a Prometheus with cAdvisor series gives the usage instead."""
    healed.fault("metrics-server-absent")
    pods = [p["metadata"]["name"] for p in _kube(healed, f"/api/v1/namespaces/{NS}/pods").json()["items"]]
    asked: list[str] = []

    def answer(path: str, query: str) -> tuple[int, Any]:
        expr = parse_qs(query).get("query", [""])[0]
        asked.append(expr)
        cpu = expr.startswith("max by (pod, container) (rate(container_cpu_usage_seconds_total{")
        memory = expr.startswith("max by (pod, container) (container_memory_working_set_bytes{")
        if path != "/api/v1/query" or not (cpu or memory) or f'namespace="{NS}"' not in expr:
            return 200, {"status": "success", "data": {"resultType": "vector", "result": []}}
        result = [{"metric": {"pod": pod, "container": "api" if pod.startswith(API) else "worker", "namespace": NS},
                   "value": [0, str((0.95 if pod.startswith(API) else 1.0) if cpu else 512 * 2**20)]} for pod in pods]
        return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}

    prom = StandIn(answer)
    try:
        # Any configured target turns the sandbox off: name the two this run needs.
        run = healed.run_checks(SAT, "--kubeconfig", healed.settings["kubeconfig"], "--prometheus-url", prom.url)
    finally:
        prom.close()
    cpu = run.check(f"check_cpu_below_limit[{API}]")
    assert cpu["outcome"] == "failed", cpu["message"]
    assert "Prometheus cAdvisor container_cpu_usage_seconds_total, rate over 5m" in cpu["message"]
    assert "950m of limit 1000m (95%)" in cpu["message"]
    assert "not used: metrics.k8s.io PodMetrics" in cpu["message"] and "HTTP 404" in cpu["message"]
    assert run.outcome(f"check_cpu_below_limit[{WORKERS}]") == "passed"
    memory = run.check(f"check_memory_below_limit[{API}]")
    assert memory["outcome"] == "passed" and "512Mi of limit 2048Mi (25%)" in memory["observed"][0]["observed"]
    # Each query once per run: the two cAdvisor reads, and (the run fails, so it ends with a metrics
    # picture) the signal map's one detection query.
    assert sorted(set(asked)) == sorted(asked), asked
    assert len([q for q in asked if "container_" in q]) == 2, asked


def test_reads_stay_within_rbac_and_list_pod_metrics_once(healed):
    rbac = [d for d in yaml.safe_load_all((Path(__file__).parents[2] / "deploy" / "rbac.yaml").read_text()) if d]
    rules = [r for d in rbac if d["kind"] == "Role" for r in d["rules"] if "metrics.k8s.io" in r["apiGroups"]]
    assert rules == [{"apiGroups": ["metrics.k8s.io"], "resources": ["pods"], "verbs": ["get", "list"]}]
    _admin(healed, "DELETE", "/admin/requests")
    run = healed.run_checks(SAT)
    assert set(_outcomes(run).values()) == {"passed"}
    entries = [e for e in _admin(healed, "GET", "/admin/requests")["requests"] if "labcheck" in e["user_agent"]]
    metrics = [(e["verb"], e["resource"], e["namespace"]) for e in entries if e["api_group"] == "metrics.k8s.io"]
    assert metrics == [("list", "pods", NS)], entries
    core = sorted(e["resource"] for e in entries if e["api_group"] == "" and e["verb"] == "list")
    assert core == ["pods"], entries  # the one pod list the Kubernetes checks share; no second listing


# --- judging without a live source: limits missing, samples missing ------------------------------


class _Expect:
    """What a check hands ``expect``: the verdict is read back, facts kept."""

    def __init__(self) -> None:
        self.facts: dict[str, Any] = {}
        self.seen: dict[str, Any] = {}

    def __call__(self, ok: bool, **kwargs: Any) -> None:
        self.seen = {"ok": ok, **kwargs}

    def fact(self, name: str, value: Any) -> None:
        self.facts[name] = value


def _saturation(*rows: tuple[str, bool, str | None, str | None]):
    """A deployment's CPU: (container, running, usage, limit) per row, as quantities."""
    from fractions import Fraction

    from labcheck.components.saturation import ContainerUsage, Saturation
    from labcheck.quantity import cores

    def q(text: str | None) -> Fraction | None:
        return None if text is None else cores(text)

    return Saturation(API, "cpu", "metrics.k8s.io PodMetrics, window 15s", f"pods of deployment/{API}",
                      tuple(ContainerUsage("pod-1", name, running, q(usage), q(limit))
                            for name, running, usage, limit in rows))


def _judge(sat, threshold=0.9):
    from checks.saturation import check_cpu_below_limit

    class Usage:
        def cpu(self, deployment):
            return sat

    class Settings:
        api_deployment = API
        cpu_limit_ratio = threshold

    expect = _Expect()
    check_cpu_below_limit(Usage(), API, Settings(), expect)
    return expect


# Imported here, the checks' component markers are not registered (this run is not a triage).
UNREGISTERED_MARKS = pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")


@UNREGISTERED_MARKS
def test_a_container_without_a_limit_is_named_and_the_others_judged():
    expect = _judge(_saturation(("api", True, "300m", "1"), ("sidecar", True, "50m", None)))
    assert expect.seen["ok"] is True and expect.facts == {"cpu_bound": False}
    assert expect.seen["observed"] == "highest pod-1/api: 300m of limit 1000m (30%); not judged, no cpu limit: " \
                                      "pod-1/sidecar"


@UNREGISTERED_MARKS
def test_a_container_near_its_limit_fails_whatever_else_is_unknown():
    expect = _judge(_saturation(("api", True, "950m", "1"), ("sidecar", True, None, "1")))
    assert expect.seen["ok"] is False and expect.facts == {"cpu_bound": True}
    assert expect.seen["observed"].startswith("1 of 1 container(s) at or above 90% of their cpu limit, worst pod-1/api")


@pytest.mark.parametrize(("rows", "reason"), [
    ((("api", True, "100m", None),), "no running container of deployment/llm-research-api declares a cpu limit"),
    ((("api", True, "100m", "1"), ("sidecar", True, None, "1")), "no cpu usage sample from metrics.k8s.io PodMetrics"),
    ((("api", False, None, "1"),), "no container of deployment/llm-research-api is running"),
])
@UNREGISTERED_MARKS
def test_nothing_to_judge_is_unknown_and_sets_no_cpu_bound(rows, reason):
    from labcheck.errors import NoData

    with pytest.raises(NoData, match=reason):
        _judge(_saturation(*rows))


@UNREGISTERED_MARKS
def test_the_threshold_is_inclusive():
    assert _judge(_saturation(("api", True, "900m", "1"))).seen["ok"] is False
    assert _judge(_saturation(("api", True, "899999999n", "1"))).seen["ok"] is True
