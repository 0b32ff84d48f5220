"""A robustness module's own sandbox, and an environment that names no other target.

Each module runs its own sandbox (own directory, own ports) so that faults it injects never reach
another module's runs, and starts its runs with no LABCHECK_*, AWS_* or playbook-alias variables
of the developer's, so that nothing but that sandbox is checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ALIASES = {"DATABASE_URL", "TEST_TOKEN", "S3_BUCKET", "KUBECONFIG", "API_URL", "PROMETHEUS_URL"}


@contextmanager
def own_sandbox(directory: Path, port_offset: int, **options: Any) -> Iterator[dict[str, Any]]:
    """Bring up (and heal) a sandbox of the module's own; stop it, whatever happened."""
    from labcheck.sandbox import manager

    state = manager.up(dir=directory, port_offset=port_offset, timeout=120, **options)
    try:
        manager.heal(dir=directory)
        yield state
    finally:
        manager.down(dir=directory)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any labcheck target or credential, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LABCHECK_", "AWS_")) and k not in ALIASES and k != "PYTEST_XDIST_WORKER"}
    env.update(extra)
    return env
