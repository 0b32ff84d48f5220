"""What labcheck adds to the Allure results: labels from the markers, categories, environment, executor.

Labels are pytest markers that allure-pytest reads (``allure_label`` / ``allure_link``), added at
collection, so they work the same in xdist workers. ``categories.json``, ``environment.properties``
and ``executor.json`` are written once, by the controller, when the session finishes.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from importlib import metadata
from pathlib import Path
from typing import Any

from labcheck.scenarios import Catalogue, Scenario

UNKNOWN_CATEGORY = "UNKNOWN / blind spot (could not check)"
NO_SCENARIO_CATEGORY = "Failed: no playbook scenario"
PLAYBOOK_URL_ENV = "LABCHECK_PLAYBOOK_URL"


def _any_text(pattern: str) -> str:
    """A regex matching any message that contains ``pattern``: a full match in Allure 2 (Java), a search in Allure 3."""
    return f"[\\s\\S]*{pattern}[\\s\\S]*"


def _escape(text: str) -> str:
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", text)


def scenario_message_regex(scenario: Scenario) -> str:
    """The regex that matches the assertion messages of a scenario's checks ("scenario <id> (<title>)")."""
    return _any_text(f"scenario {_escape(scenario.id)} \\(")


def categories(catalogue: Catalogue) -> list[dict[str, Any]]:
    """categories.json: one category per scenario, one for failures without one, one for UNKNOWN."""
    out: list[dict[str, Any]] = []
    for sc in sorted(catalogue.scenarios.values(), key=lambda s: s.id):
        out.append({"name": f"{sc.title} [{sc.id}]", "matchedStatuses": ["failed"],
                    "messageRegex": scenario_message_regex(sc)})
    out.append({"name": NO_SCENARIO_CATEGORY, "matchedStatuses": ["failed"],
                "messageRegex": _any_text("no playbook scenario")})
    out.append({"name": UNKNOWN_CATEGORY, "matchedStatuses": ["broken"]})
    return out


def playbook_url(reference: str | None, catalogue_dir: Path | None = None) -> str | None:
    """A scenario's playbook reference as a link.

    Joined to $LABCHECK_PLAYBOOK_URL when it is set (a base URL, or the playbook's own URL); else a
    file:// link when the playbook is found beside the suite (PLAYBOOK.md or ../shared/PLAYBOOK.md);
    else the reference as written.
    """
    if not reference:
        return None
    if re.match(r"^[a-z]+://", reference):
        return reference
    path, _, anchor = reference.partition("#")
    fragment = f"#{anchor}" if anchor else ""
    base = os.environ.get(PLAYBOOK_URL_ENV, "").strip()
    if base:
        if base.split("#")[0].endswith(".md"):
            return base.split("#")[0] + fragment
        return base.rstrip("/") + "/" + reference
    if catalogue_dir is not None:
        for root in (catalogue_dir.parent, catalogue_dir.parent.parent / "shared"):
            candidate = (root / path).resolve()
            if candidate.is_file():
                return candidate.as_uri() + fragment
    return reference


def marks(meta: Mapping[str, Any], catalogue: Catalogue) -> list[Any]:
    """Allure label and link markers for one check: severity, feature, story and the playbook link."""
    import pytest

    out = []
    level = catalogue.severity.level(f"SEV-{meta['severity']}") if meta.get("severity") else None
    if level is not None:
        out.append(pytest.mark.allure_label(level.allure, label_type="severity"))
    if meta.get("component"):
        out.append(pytest.mark.allure_label(meta["component"], label_type="feature"))
    sc = catalogue.get(meta.get("scenario"))
    if sc is not None:
        out.append(pytest.mark.allure_label(sc.title, label_type="story"))
        url = playbook_url(sc.playbook, catalogue.directory)
        if url:
            out.append(pytest.mark.allure_link(url, link_type="link", name=f"Playbook: {sc.title}"))
    return out


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


_COMMITS: dict[str, Future[str]] = {}


def start_git_commit(directory: Path) -> None:
    """Ask git for ``git_commit(directory)`` in the background (two processes, 10-20 ms), taken when
    the run ends: the controller starts it when collection is done."""
    if str(directory) in _COMMITS:
        return
    future: Future[str] = Future()
    _COMMITS[str(directory)] = future

    def ask() -> None:
        try:
            future.set_result(_git_commit(directory))
        except BaseException as exc:  # noqa: BLE001 - git_commit asks again
            future.set_exception(exc)

    threading.Thread(target=ask, name="labcheck:git commit", daemon=True).start()


def git_commit(directory: Path) -> str:
    """The suite's git commit (with -dirty when the work tree has changes), or the CI's, or 'unknown'."""
    future = _COMMITS.pop(str(directory), None)
    if future is not None:
        try:
            return future.result(timeout=15)  # each git call has a 5 s timeout of its own
        except Exception:  # noqa: BLE001 - asked again, in this thread
            pass
    return _git_commit(directory)


def _git_commit(directory: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("GITHUB_SHA") or os.environ.get("CI_COMMIT_SHA") or "unknown"


def environment(settings: Any, suite_dir: Path) -> dict[str, str]:
    """environment.properties: what was checked, with which versions of what."""
    values = getattr(settings, "values", {}) if settings is not None else {}
    env = {
        "target": settings.describe() if settings is not None else "unknown",
        "namespace": str(values.get("namespace") or ""),
        "kube_context": str(values.get("kube_context") or ""),
        "api_url": str(values.get("api_url") or ""),
        "prometheus_url": str(values.get("prometheus_url") or ""),
        "s3_bucket": str(values.get("s3_bucket") or ""),
        "suite.git.commit": git_commit(suite_dir),
        "labcheck.version": _version("labcheck"),
        "pytest.version": _version("pytest"),
        "allure-pytest.version": _version("allure-pytest"),
        "python.version": platform.python_version(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
    }
    return {k: v for k, v in env.items() if v}


def properties_text(values: Mapping[str, str]) -> str:
    """Java .properties text (one key=value a line, escaped)."""
    def esc(text: str, key: bool = False) -> str:
        text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        if key:
            text = re.sub(r"([=:\s#!])", r"\\\1", text)
        return text

    return "".join(f"{esc(k, True)}={esc(v)}\n" for k, v in values.items())


def executor(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """executor.json from the CI's variables (GitHub Actions, GitLab CI), or None outside CI."""
    if environ.get("GITHUB_ACTIONS") == "true":
        server = environ.get("GITHUB_SERVER_URL", "https://github.com")
        repo = environ.get("GITHUB_REPOSITORY", "")
        run_id = environ.get("GITHUB_RUN_ID", "")
        number = environ.get("GITHUB_RUN_NUMBER", "")
        return _clean({
            "name": "GitHub Actions", "type": "github",
            "url": f"{server}/{repo}" if repo else server,
            "buildOrder": int(number) if number.isdigit() else None,
            "buildName": f"{environ.get('GITHUB_WORKFLOW', 'workflow')} #{number}".strip(),
            "buildUrl": f"{server}/{repo}/actions/runs/{run_id}" if repo and run_id else None,
            "reportName": "labcheck triage",
        })
    if environ.get("GITLAB_CI") == "true":
        iid = environ.get("CI_PIPELINE_IID", "")
        return _clean({
            "name": "GitLab CI", "type": "gitlab",
            "url": environ.get("CI_PROJECT_URL") or environ.get("CI_SERVER_URL"),
            "buildOrder": int(iid) if iid.isdigit() else None,
            "buildName": f"{environ.get('CI_PROJECT_PATH', '')} pipeline #{iid} job {environ.get('CI_JOB_NAME', '')}".strip(),
            "buildUrl": environ.get("CI_PIPELINE_URL") or environ.get("CI_JOB_URL"),
            "reportUrl": environ.get("CI_JOB_URL"),
            "reportName": "labcheck triage",
        })
    return None


def _clean(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if v not in (None, "")}


def write_extras(directory: Path, *, catalogue: Catalogue, settings: Any, suite_dir: Path,
                 redact: Callable[[str], str], environ: Mapping[str, str] | None = None) -> list[Path]:
    """Write categories.json, environment.properties and (in CI) executor.json; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    path = directory / "categories.json"
    path.write_text(json.dumps(categories(catalogue), indent=2) + "\n", encoding="utf-8")
    written.append(path)
    path = directory / "environment.properties"
    path.write_text(redact(properties_text(environment(settings, suite_dir))), encoding="utf-8")
    written.append(path)
    info = executor(os.environ if environ is None else environ)
    if info is not None:
        path = directory / "executor.json"
        path.write_text(redact(json.dumps(info, indent=2)) + "\n", encoding="utf-8")
        written.append(path)
    return written


def mark_broken(config: Any, *, message: str, trace: str | None) -> None:
    """File the running check's Allure result as broken: it is UNKNOWN, whatever it raised.

    allure-pytest's listener files any AssertionError as failed (``_exception_brokes_test``), but
    only ``expect`` fails a check: a bare assert in a fixture, probe or component is UNKNOWN in
    triage.json, so it is broken here too. Call it from a makereport wrapper outside the listener's
    (which has set the status by then); the running test is the reporter's last one, as for
    ``allure.dynamic``. The message and trace are the listener's own (the exception, redacted).
    """
    listener = config.pluginmanager.get_plugin("allure_listener")
    if listener is None:
        return
    from allure_commons.model2 import Status, StatusDetails

    result = listener.allure_logger.get_test(None)
    if result is not None:
        result.status = Status.BROKEN
        result.statusDetails = StatusDetails(message=message, trace=trace)


def attach_run_picture(directory: Path, png: bytes, *, name: str, statuses: tuple[str, ...] = ("failed",)) -> str:
    """Attach a picture of the whole run to the Allure results; return the attachment's file name.

    Written the way Allure writes a session fixture's teardown: a container whose ``afters`` carry
    the attachment, its children the results of the failing checks, so each failing check's page
    shows it. A ``globals`` file names it too, which Allure 3 shows as the run's global attachment.
    """
    import time
    import uuid

    from labcheck import allure_writer

    allure_writer.flush()  # the failing checks' results are read back below
    now = int(time.time() * 1000)
    source = f"{uuid.uuid4()}-attachment.png"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / source).write_bytes(png)
    children = []
    for path in sorted(directory.glob("*-result.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("status") in statuses and isinstance(doc.get("uuid"), str):
            children.append(doc["uuid"])
    attachment = {"name": name, "source": source, "type": "image/png"}
    container = {"uuid": str(uuid.uuid4()), "name": "labcheck run", "children": children, "befores": [],
                 "afters": [{"name": name, "status": "passed", "stage": "finished", "start": now, "stop": now,
                             "attachments": [attachment], "steps": [], "parameters": []}],
                 "start": now, "stop": now}
    (directory / f"{container['uuid']}-container.json").write_text(json.dumps(container, indent=2) + "\n")
    glob = {"attachments": [{**attachment, "timestamp": now}], "errors": []}
    (directory / f"{uuid.uuid4()}-globals.json").write_text(json.dumps(glob, indent=2) + "\n")
    return source


__all__ = ["UNKNOWN_CATEGORY", "attach_run_picture", "categories", "environment", "executor", "mark_broken",
           "marks", "write_extras"]


def write_usage_error(directory: Path, message: str) -> None:
    """A configuration error as one broken Allure result, so the report says why nothing ran."""
    import time
    import uuid

    from labcheck.evidence import Redactor

    now = int(time.time() * 1000)
    result = {
        "uuid": str(uuid.uuid4()),
        "name": "labcheck configuration",
        "fullName": "labcheck.configuration",
        "status": "broken",
        "statusDetails": {"message": Redactor()(message)},
        "stage": "finished",
        "start": now,
        "stop": now,
        "labels": [{"name": "severity", "value": "blocker"}, {"name": "feature", "value": "labcheck"}],
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{result['uuid']}-result.json").write_text(json.dumps(result, indent=2) + "\n")
    except OSError:
        pass
