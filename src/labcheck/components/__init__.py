"""One module per platform component, named like its checks module.

Each holds the component's facade (registered with ``labcheck.prefetch.component``, its getters
declaring their facts), its session fixture, the parameters it offers checks (``@parameter``),
any marker it adds (``marker_line``) and the configuration keys it needs (``config.declare``).
The plugin registers every module of this package; a component of another package registers
itself as any pytest plugin does (``pytest_plugins``, ``-p`` or an entry point).
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from labcheck.config import Settings
from labcheck.errors import CatalogueError
from labcheck.scenarios import Catalogue

Values = Callable[[pytest.Metafunc, Settings], Sequence[Any]]
PARAMETERS: dict[str, Values] = {}
MARKER_LINES: list[str] = []
# Component names that code refers to, by who refers to them: each must be a row of the impact table.
REFERRED: dict[str, frozenset[str]] = {}


def modules() -> list[str]:
    """The plugin module of every component: each module of this package."""
    return sorted(f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def parameter(name: str) -> Callable[[Values], Values]:
    """Declare a parameter checks may ask for: ``fn(metafunc, settings)`` returns its values."""

    def register(fn: Values) -> Values:
        PARAMETERS[name] = fn
        return fn

    return register


def marker_line(line: str) -> None:
    """Declare a marker (``name(args): help``) that a component's checks use."""
    if line not in MARKER_LINES:
        MARKER_LINES.append(line)


def refers_to(where: str, *names: str) -> None:
    """Declare that ``where`` names these components (checked against the impact table at load)."""
    REFERRED[where] = frozenset(names)


def check_named(catalogue: Catalogue) -> None:
    """Every component the code names is a row of the impact table, the one list of components."""
    from labcheck import verdict

    named = {"the verdict's API and worker components": verdict.API_COMPONENTS | verdict.WORKER_COMPONENTS,
             **REFERRED}
    known = set(catalogue.severity.impact)
    for where, names in named.items():
        missing = sorted(set(names) - known)
        if missing:
            raise CatalogueError(f"{catalogue.directory}: the impact table (_severity.toml) has no row for "
                                 f"{', '.join(missing)}, which {where} names")


def add_markers(config: pytest.Config) -> None:
    for line in MARKER_LINES:
        config.addinivalue_line("markers", line)


def parametrize(metafunc: pytest.Metafunc, settings: Settings) -> None:
    """Parametrize every declared parameter the check asks for."""
    for name, values in PARAMETERS.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, list(values(metafunc, settings)))
