"""The recipe "add a component" (CONTRIBUTING.md), proved: a toy message-queue component added
through the public extension points only -- a configuration key, a facade whose getter declares
its fact, a fixture, a check module and a row of the impact table -- touching no labcheck module."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from standin import StandIn

REPO = Path(__file__).resolve().parents[1]

# 1. The component module (a transport of its own would be a fifth file: HTTP serves here).
COMPONENT = '''
import pytest

from labcheck import config
from labcheck.components import parameter
from labcheck.errors import NotConfigured
from labcheck.prefetch import component, fact
from labcheck.probes import http

config.declare(
    config.Key("queue_url", config.PARSERS["url"], None, "Message queue admin URL", target=True),
    config.Key("queue_depth_max", config.PARSERS["count"], 100, "Messages waiting that fail"),
)


@component("queue")
class Queue:
    def __init__(self, lab):
        self.lab = lab

    def _url(self):
        if not self.lab.settings.queue_url:
            raise NotConfigured("queue_url is not configured", target="message queue")
        return self.lab.settings.queue_url + "/depth"

    @fact(lambda queue, uses: http.start(queue.lab, queue._url()))
    def depth(self):
        return int(http.get(self.lab, self._url()).json()["depth"])


@pytest.fixture(scope="session")
def queue(lab):
    return Queue(lab)


@parameter("queue_name")
def _queue_names(metafunc, settings):
    return ["jobs"]
'''

# 2. The checks module.
CHECKS = '''
import pytest


@pytest.mark.sev3
@pytest.mark.queue
def check_queue_is_draining(queue, queue_name, settings, expect):
    depth = queue.depth()
    expect(depth <= settings.queue_depth_max, target=f"message queue {queue_name}",
           observed=f"{depth} waiting", threshold=f"at most {settings.queue_depth_max}")
'''

# 3. The impact table's new row and its place in the dependency graph.
IMPACT = '''
[impact.queue]
name = "Job queue"
users = "Active experiments"
business = "High"
severity = "SEV-3"

'''


@pytest.fixture
def queue_server() -> Iterator[dict[str, Any]]:
    state: dict[str, Any] = {"depth": 3, "gets": 0}

    def answer(path: str, query: str) -> tuple[int, Any]:
        state["gets"] += 1
        return (200, {"depth": state["depth"]}) if path == "/depth" else (404, {})

    server = StandIn(answer)
    state["url"] = server.url
    yield state
    server.close()


def _project(pytester: pytest.Pytester) -> Path:
    pytester.makepyfile(toyqueue=COMPONENT)
    pytester.makeconftest('pytest_plugins = ["toyqueue"]\n')  # pytest's own plugin registration
    (pytester.path / "checks").mkdir()
    (pytester.path / "checks" / "__init__.py").write_text("")
    (pytester.path / "checks" / "queue.py").write_text(CHECKS)
    scenarios = pytester.path / "scenarios"
    shutil.copytree(REPO / "scenarios", scenarios)
    severity = scenarios / "_severity.toml"
    text = severity.read_text().replace("[depends_on]\n", "[depends_on]\nqueue = []\n")
    severity.write_text(text.replace("# Who depends on whom", IMPACT + "# Who depends on whom", 1))
    return pytester.path / "reports"


def _run(pytester: pytest.Pytester, reports: Path, url: str, *args: str) -> dict[str, Any]:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", "--no-sandbox",
                                           f"--reports-dir={reports}", "--set", f"queue_url={url}",
                                           *args, "checks")
    assert (reports / "triage.json").exists(), result.stdout.str()
    data: dict[str, Any] = json.loads((reports / "triage.json").read_text())
    data["_rc"] = result.ret
    return data


def test_a_toy_component_needs_four_files(pytester: pytest.Pytester, queue_server: dict[str, Any]) -> None:
    reports = _project(pytester)
    healthy = _run(pytester, reports, queue_server["url"])
    (check,) = healthy["checks"]
    assert check["nodeid"] == "checks/queue.py::check_queue_is_draining[jobs]"
    assert (check["component"], check["severity"], check["outcome"]) == ("queue", "SEV-3", "passed")
    assert healthy["severity"] is None and healthy["_rc"] == 0
    assert queue_server["gets"] == 1  # prefetched at collection end, read once by the check

    queue_server["depth"] = 250
    backlog = _run(pytester, reports, queue_server["url"], "--set", "queue_depth_max=200")
    (check,) = backlog["checks"]
    assert check["outcome"] == "failed" and backlog["_rc"] == 1
    assert "message queue jobs: observed 250 waiting; threshold at most 200" in check["message"]
    assert backlog["severity"] == "SEV-3"
    assert "queue" in json.dumps(backlog["affected_components"])


def test_a_getter_without_a_declaration_is_refused_at_once() -> None:
    from labcheck.prefetch import component, fact

    class Renamed:
        @fact(None)
        def declared(self) -> int:
            return 1

        def renamed_getter(self) -> int:
            return 2

    with pytest.raises(TypeError, match=r"Renamed \('toy'\): public method\(s\) renamed_getter declare no fact"):
        component("toy")(Renamed)


def test_a_component_named_in_code_must_have_an_impact_row(pytester: pytest.Pytester) -> None:
    # The impact table is the one list of components: a catalogue without a row the code names
    # (here the verdict's "auth") fails at load with one line naming it, and still writes reports.
    scenarios = pytester.path / "scenarios"
    shutil.copytree(REPO / "scenarios", scenarios)
    severity = scenarios / "_severity.toml"
    text = severity.read_text()
    start = text.index("[impact.auth]")
    severity.write_text(text[:start] + text[text.index("[impact.experiments]"):])
    text = severity.read_text().replace('"auth", ', "").replace('auth = ["kubernetes"]\n', "")
    severity.write_text(text)
    (pytester.path / "checks").mkdir()
    (pytester.path / "checks" / "__init__.py").write_text("")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--no-sandbox",
                                           f"--reports-dir={pytester.path / 'reports'}", "checks")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "has no row for auth, which the verdict's API and worker components names" in result.stderr.str()
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert (pytester.path / "reports" / "triage.json").exists()
