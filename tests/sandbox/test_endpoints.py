"""`labcheck sandbox up --endpoints N`: the routes the API serves and its traffic spreads over, and N times
the API's pods in the Kubernetes stand-in (in process: no server needed)."""

from __future__ import annotations

from labcheck.sandbox.flavours import endpoint_paths, traffic_rps
from labcheck.sandbox.kube.model import API, Cluster, KubeConfig
from labcheck.sandbox.kube.objects import snapshot


def test_one_endpoint_set_is_the_playbook_api() -> None:
    assert endpoint_paths(1) == ["/experiments", "/datasets"]
    assert traffic_rps(1) == 20


def test_n_endpoint_sets_are_2n_distinct_routes_with_traffic_for_each() -> None:
    paths = endpoint_paths(10)
    assert len(paths) == len(set(paths)) == 20
    assert paths[:2] == ["/experiments", "/datasets"] and "/s9/datasets" in paths
    # The routes are taken in turn: every /datasets route (a fifth of the traffic) gets a request
    # inside each 10 s rate window, with room to spare; and the API is not overrun.
    assert 50 / (traffic_rps(50) * 0.2) <= 6 and traffic_rps(50) <= 50


def _api_pods(endpoints: int) -> list[dict]:
    cfg = KubeConfig(admin_key="k", token="t", jwt_secret="s", endpoints=endpoints)
    pods = snapshot(Cluster(cfg)).objects["pods"]
    return [p for p in pods if p["metadata"]["labels"].get("app") == API]


def test_the_standin_runs_n_times_the_api_pods_each_with_its_own_name_and_address() -> None:
    one, ten = _api_pods(1), _api_pods(10)
    assert len(one) == 3 and len(ten) == 30
    assert len({p["metadata"]["name"] for p in ten}) == 30
    assert len({p["status"]["podIP"] for p in ten}) == 30
    # The first pods keep the names and addresses they had before the API could be scaled.
    ids = {(p["metadata"]["name"], p["status"]["podIP"]) for p in one}
    assert ids <= {(p["metadata"]["name"], p["status"]["podIP"]) for p in ten}
