"""The run's state in pytest's stash: settings, catalogue, redactor, the lab; and their fixtures.

Nothing here is a hook: plugin.py calls ``activate`` and the fixtures read what it stored.
Components and checks get ``lab``, ``settings`` and ``catalogue`` by injection, not by import.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from labcheck import config as cfg
from labcheck.errors import ConfigError
from labcheck.evidence import Evidence, Redactor
from labcheck.lab import Lab
from labcheck.scenarios import Catalogue, load_catalogue

CONFIG_OPTIONS = {
    "--api-url": "api_url",
    "--prometheus-url": "prometheus_url",
    "--database-url": "database_url",
    "--s3-bucket": "s3_bucket",
    "--kubeconfig": "kubeconfig",
    "--kube-context": "kube_context",
    "--namespace": "namespace",
    "--probe-timeout": "timeout",
}

settings_key = pytest.StashKey[cfg.Settings]()
catalogue_key = pytest.StashKey[Catalogue]()
redactor_key = pytest.StashKey[Redactor]()
started_key = pytest.StashKey[float]()
lab_key = pytest.StashKey[Lab]()


def reports_dir(config: pytest.Config) -> Path:
    value = config.getoption("labcheck_reports") or os.environ.get("LABCHECK_REPORTS_DIR") or "reports"
    path = Path(value)
    return path if path.is_absolute() else Path(config.invocation_params.dir) / path


def _cli_values(config: pytest.Config) -> dict[str, tuple[Any, str]]:
    values = cfg.parse_assignments(config.getoption("labcheck_set") or [], "command line --set")
    for flag, key in CONFIG_OPTIONS.items():
        value = config.getoption(f"labcheck_{key}")
        if value is not None:
            values[key] = (value, f"command line {flag}")
    return values


def _scenarios_dir(config: pytest.Config) -> Path:
    value = config.getoption("labcheck_scenarios") or os.environ.get("LABCHECK_SCENARIOS_DIR")
    if value:
        return Path(value)
    for base in (Path(config.rootpath), Path(config.invocation_params.dir), Path(__file__).parents[2]):
        if (base / "scenarios").is_dir():
            return base / "scenarios"
    return Path(config.rootpath) / "scenarios"


def _profile(config: pytest.Config) -> str | None:
    """The one --profile of this run: a pytest run is one environment, and the last of two must not win."""
    given = list(dict.fromkeys(config.getoption("labcheck_profile") or []))
    if len(given) > 1:
        raise ConfigError(f"--profile given {len(given)} times ({', '.join(given)}): a pytest run checks one "
                          "environment; watch several with 'labcheck watch --profile A --profile B', or run "
                          "pytest once per profile")
    return given[0] if given else None


def activate(config: pytest.Config) -> None:
    """Load the settings and the catalogue into the stash (ConfigError / CatalogueError propagate)."""
    settings = cfg.load(cli=_cli_values(config), profile=_profile(config),
                        use_sandbox=not config.getoption("labcheck_no_sandbox"),
                        # Collection does no I/O: the kubeconfig is read (and a bad one is a usage error)
                        # only by a run that goes on to run checks.
                        read_files=not config.option.collectonly)
    catalogue = load_catalogue(_scenarios_dir(config))
    config.stash[settings_key] = settings
    config.stash[catalogue_key] = catalogue
    config.stash[redactor_key] = Redactor(settings.secrets)


def is_active(config: pytest.Config) -> bool:
    """Whether labcheck is in use in this run (its settings are loaded)."""
    return settings_key in config.stash


def get_lab(config: pytest.Config) -> Lab:
    lab = config.stash.get(lab_key, None)
    if lab is None:
        redactor = config.stash[redactor_key]
        lab = Lab(config.stash[settings_key], redactor=redactor,
                  evidence=Evidence(reports_dir(config) / "evidence", redactor))
        deadline = config.getoption("labcheck_deadline")
        if deadline:
            lab.deadline = time.monotonic() - (time.time() - config.stash[started_key]) + deadline
        config.stash[lab_key] = lab
        config.add_cleanup(lab.close)
    return lab


@pytest.fixture(scope="session")
def lab(pytestconfig: pytest.Config) -> Lab:
    """The run's shared, fetch-once view of the platform."""
    return get_lab(pytestconfig)


@pytest.fixture(scope="session")
def settings(pytestconfig: pytest.Config) -> cfg.Settings:
    """The effective configuration (targets and thresholds)."""
    return pytestconfig.stash[settings_key]


@pytest.fixture(scope="session")
def catalogue(pytestconfig: pytest.Config) -> Catalogue:
    """The playbook scenario catalogue."""
    return pytestconfig.stash[catalogue_key]
