"""Facts, declared once where they are read, and started together when collection ends.

A component's facade is registered for its fixture with ``@component("api")``. Each of its public
methods declares, with ``@fact(start)``, how to start ahead of time the fact it reads (``start``
is called with the facade and the selected checks that use the fixture, so it can narrow by their
parameters), or ``@fact(None)`` when there is nothing to start ahead (a path of the check's own).
A public method without a declaration is refused when the class is defined: a renamed or new
getter can never silently fall out of the prefetch.

When collection ends, the facts of every fixture the selected checks ask for start at once, in
the background, each fetched once per run (``Lab.start``). What the checks do not select is not
started, and a fixture no selected check asks for starts nothing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from labcheck.lab import Lab

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)

FACT_ATTR = "__labcheck_fact__"


@dataclass(frozen=True)
class Use:
    """One selected check that asks a fixture questions, and its parameters."""

    check: str
    params: Mapping[str, Any] = field(default_factory=dict)


Starter = Callable[[Any, Sequence[Use]], None]


@dataclass(frozen=True)
class Registered:
    """A facade registered for a fixture: how to build it from the lab, and its declared starters."""

    fixture: str
    cls: type
    make: Callable[[Lab], Any]
    starters: tuple[Starter, ...]


COMPONENTS: dict[str, Registered] = {}


def fact(start: Starter | None) -> Callable[[F], F]:
    """Declare on a getter how to start the fact it reads (``None``: nothing to start ahead)."""

    def declare(fn: F) -> F:
        setattr(fn, FACT_ATTR, start or _nothing)
        return fn

    return declare


def _nothing(facade: Any, uses: Sequence[Use]) -> None:
    return None


def component(fixture: str, make: Callable[[Lab], Any] | None = None) -> Callable[[C], C]:
    """Register a facade for ``fixture``; every public method must carry a ``@fact`` declaration."""

    def register(cls: C) -> C:
        starters: list[Starter] = []
        missing: list[str] = []
        for name, member in inspect.getmembers(cls, inspect.isfunction):
            if name.startswith("_"):
                continue
            start = getattr(member, FACT_ATTR, None)
            if start is None:
                missing.append(name)
            elif start is not _nothing and start not in starters:
                starters.append(start)
        if missing:
            raise TypeError(f"{cls.__name__} ({fixture!r}): public method(s) {', '.join(missing)} declare no "
                            f"fact: decorate each with @fact(start) or @fact(None)")
        COMPONENTS[fixture] = Registered(fixture, cls, make or cls, tuple(starters))
        return cls

    return register


def argnames(fn: Any) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def uses_of(items: Sequence[Any], is_check: Callable[[Any], bool]) -> dict[str, list[Use]]:
    """The selected checks per registered fixture they ask for themselves."""
    uses: dict[str, list[Use]] = {}
    for item in items:
        fn = getattr(item, "function", None)
        if not is_check(item) or not callable(fn):
            continue
        # The fixtures the check asks for itself: a fixture's own dependencies are its starters' business.
        wanted = [n for n in argnames(fn) if n in COMPONENTS]
        if not wanted:
            continue
        use = Use(check=str(getattr(item, "originalname", item.name)),
                  params=dict(getattr(getattr(item, "callspec", None), "params", {})))
        for name in wanted:
            uses.setdefault(name, []).append(use)
    return uses


def start(lab: Lab, uses: Mapping[str, Sequence[Use]]) -> None:
    """Start every declared fact of the fixtures the selected checks use."""
    for name in sorted(uses):
        registered = COMPONENTS[name]
        try:
            facade = registered.make(lab)
            for starter in registered.starters:
                starter(facade, uses[name])
        except Exception:  # noqa: BLE001 - a failed prefetch is seen again, as UNKNOWN, by the check
            pass
