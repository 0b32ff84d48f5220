"""The status update and the status page against the live sandbox under a fault: the files, the phase,
the services named, and not one internal name on the page customers see."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

# The API gateway and database checks: the ones a leaking pool shows in, and fast.
MODULES = ("checks/api_gateway.py", "checks/database.py")


def _db_and_api_failing(run: Any) -> bool:
    failed = {c["component"] for c in run.triage["checks"] if c["outcome"] == "failed"}
    return {"database", "api_gateway"} <= failed


def _pods(settings: dict[str, Any]) -> set[str]:
    """The sandbox's pods and what they are named after (deployments, containers, app labels)."""
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(config_file=settings["kubeconfig"]))
    names: set[str] = set()
    for pod in api.list_namespaced_pod(settings["namespace"], _request_timeout=5).items:
        names.add(pod.metadata.name)
        names.update((pod.metadata.labels or {}).values())
        names.update(c.name for c in pod.spec.containers)
    return {n for n in names if n}


def _metrics(settings: dict[str, Any]) -> set[str]:
    """Every metric name Prometheus has; names without ``_`` or ``:`` (``up``) are words, not names."""
    import httpx

    answer = httpx.get(f"{settings['prometheus_url']}/api/v1/label/__name__/values", timeout=5).json()
    return {n for n in answer["data"] if "_" in n or ":" in n}


def _internal_names(settings: dict[str, Any], triage: dict[str, Any]) -> dict[str, set[str]]:
    urls = [v for v in settings.values() if isinstance(v, str) and "://" in v]
    parts = [urlsplit(u) for u in urls]
    checks = triage["checks"]
    return {
        "target URL": set(urls) | {f"{p.hostname}:{p.port}" for p in parts},
        "hostname": {p.hostname for p in parts if p.hostname} | {"localhost"},
        "port": {str(p.port) for p in parts if p.port},
        "pod": _pods(settings),
        "metric": _metrics(settings),
        "node id": {c["nodeid"] for c in checks} | {c["nodeid"].split("::")[0] for c in checks}
                   | {re.sub(r"\[.*\]$", "", c["nodeid"].rpartition("::")[2]) for c in checks},
        "configured name": {settings["namespace"], settings["s3_bucket"], settings["kubeconfig"]},
        # ids that are not plain words (``database`` is one)
        "component or scenario id": {i for i in {c["component"] for c in checks} | {s["id"] for s in triage["scenarios"]}
                                     if i and ("_" in i or "-" in i)},
    }


def _found(text: str, names: set[str]) -> list[str]:
    return sorted(n for n in names if re.search(rf"(?<![\w.-]){re.escape(n)}(?![\w-])", text))


def test_under_a_leaking_pool_the_status_documents_name_services_not_internals(healed: Any) -> None:
    healed.fault("db-pool-leak")
    run = healed.wait_for(_db_and_api_failing, *MODULES, deadline_s=120,
                          what="database and API gateway checks failing")
    data = run.triage
    update_file, page_file = run.reports / "status-update.md", run.reports / "status-page.md"
    assert data["status_update"]["file"] == update_file.name and data["status_page"]["file"] == page_file.name
    assert f"incident.md, {update_file.name}, {page_file.name}" in run.stdout  # the summary's Reports: line

    # The phase: a leaking pool is a cause the run is sure of, unless something it depends on was blind.
    phase = data["status_update"]["phase"]
    sure = not data["probable_cause"].get("caveat") and not data["sev1_blind"]
    assert phase == ("Identified" if sure else "Investigating"), data["status_update"]
    update = update_file.read_text()
    assert f"**Status:** {phase}\n" in update
    assert "- probable cause db-connection-exhaustion (database)" in update
    assert "- Next: Terminate idle connections" in update

    # The page: the services in customers' words, from the impact matrix.
    page = page_file.read_text()
    assert page.startswith(f"**{data['status_page']['status']}**\n")
    assert "- All platform features (loading and saving data)\n" in page  # the database
    assert "- Platform API\n" in page  # the API gateway, its symptom
    internal = update + (run.reports / "incident.md").read_text()
    for kind, names in _internal_names(healed.settings, data).items():
        assert names, f"no {kind} to look for: the scan would prove nothing"
        assert _found(page, names) == [], f"{kind} on the status page:\n{page}"
        if kind in ("target URL", "hostname", "port", "node id"):  # the internal documents name them: the scan sees
            assert _found(internal, names), f"no {kind} in the internal documents either: is the scan blind?"
