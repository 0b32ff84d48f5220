"""Facts, declared once where they are read, and started together when collection ends.

A component's facade is registered for its fixture with ``@component("api")``. Each of its public
methods declares, with ``@fact(start)``, how to start ahead of time the fact it reads (``start``
is called with the facade and the selected checks that use the fixture, so it can narrow by their
parameters), or ``@fact(None)`` when there is nothing to start ahead (a path of the check's own).
A public method without a declaration is refused when the class is defined: a renamed or new
getter can never silently fall out of the prefetch.

When collection ends, the declared facts the selected checks read start at once, in the
background, each fetched once per run (``Lab.start``). Which getters a check reads is read off its
code: the attribute names it (and the helpers of its own module it calls) loads, matched
against the declared getters of the fixtures it asks for; a string literal it passes first to a
call (``api.attempt("/datasets")``) is kept too, so a starter can begin that request ahead as well. A check that names none of them (it hands
the fixture to code elsewhere) starts every fact of that fixture: more than needed, never less.
What no selected check reads is not started, so ``-m sev1`` sends no query only sev2 checks need.
"""

from __future__ import annotations

import dis
import functools
import inspect
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from labcheck.lab import Lab

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)

FACT_ATTR = "__labcheck_fact__"


@dataclass(frozen=True)
class Use:
    """One selected check that asks a fixture questions: its parameters, and the names it reads."""

    check: str
    params: Mapping[str, Any] = field(default_factory=dict)
    names: frozenset[str] = frozenset()
    literals: frozenset[tuple[str, str]] = frozenset()  # (attribute, first argument) of calls like x.attr("/path")

    def literal_args(self, *attrs: str) -> list[str]:
        """The string literals this check passes first to calls of ``attrs`` (``api.attempt("/datasets")``)."""
        return sorted(arg for attr, arg in self.literals if attr in attrs)


Starter = Callable[[Any, Sequence[Use]], None]


@dataclass(frozen=True)
class Registered:
    """A facade registered for a fixture: how to build it from the lab, and each getter's starter."""

    fixture: str
    cls: type
    make: Callable[[Lab], Any]
    getters: Mapping[str, Starter]


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
        getters: dict[str, Starter] = {}
        missing: list[str] = []
        for name, member in inspect.getmembers(cls, inspect.isfunction):
            if name.startswith("_"):
                continue
            start = getattr(member, FACT_ATTR, None)
            if start is None:
                missing.append(name)
            else:
                getters[name] = start
        if missing:
            raise TypeError(f"{cls.__name__} ({fixture!r}): public method(s) {', '.join(missing)} declare no "
                            f"fact: decorate each with @fact(start) or @fact(None)")
        COMPONENTS[fixture] = Registered(fixture, cls, make or cls, getters)
        return cls

    return register


def argnames(fn: Any) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def names_read(fn: Callable[..., Any]) -> frozenset[str]:
    """Attribute names a check's code mentions, through the helpers of its own module it calls."""
    return _read(fn)[0]


def literals_read(fn: Callable[..., Any]) -> frozenset[tuple[str, str]]:
    """(attribute, string) for each call ``x.attribute("string", ...)`` in a check's code and its helpers."""
    return _read(fn)[1]


_ATTRIBUTE_LOADS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})


def _read(fn: Callable[..., Any]) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    """Read off the compiled code, not the source: no file read, no parse (issue 16: a run's CPU is its time).

    ``co_names`` holds every attribute and global name the code loads; a helper of the check's own
    module (a global that is a function there) is read too, and nested code (lambdas,
    comprehensions). A string loaded right after an attribute is that call's first argument.
    """
    module_globals: dict[str, Any] = getattr(fn, "__globals__", {})
    module = getattr(fn, "__module__", None)
    names: set[str] = set()
    literals: set[tuple[str, str]] = set()
    stack = [getattr(fn, "__code__", None)]
    seen: set[int] = set()
    while stack:
        code = stack.pop()
        if not isinstance(code, types.CodeType) or id(code) in seen:
            continue
        seen.add(id(code))
        names.update(code.co_names)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        for name in code.co_names:
            helper = module_globals.get(name)
            if isinstance(helper, types.FunctionType) and helper.__module__ == module:
                stack.append(helper.__code__)
        literals.update(_call_literals(code))
    return frozenset(names), frozenset(literals)


@functools.lru_cache(maxsize=4096)
def _call_literals(code: types.CodeType) -> frozenset[tuple[str, str]]:
    """(attribute, string) of ``x.attribute("string", ...)`` in one code object: disassembled once
    per process, however many checks (parameters) and helpers share it (issue 16: this runs before
    any request is sent)."""
    found: set[tuple[str, str]] = set()
    previous = None
    for ins in dis.get_instructions(code):
        if (previous is not None and previous.opname in _ATTRIBUTE_LOADS and ins.opname == "LOAD_CONST"
                and isinstance(ins.argval, str)):
            found.add((str(previous.argval), ins.argval))
        previous = ins
    return frozenset(found)


def uses_of(items: Sequence[Any], is_check: Callable[[Any], bool]) -> dict[str, list[Use]]:
    """The selected checks per registered fixture they ask for themselves."""
    uses: dict[str, list[Use]] = {}
    read: dict[Any, tuple[list[str], frozenset[str], frozenset[tuple[str, str]]]] = {}  # once per function
    for item in items:
        fn = getattr(item, "function", None)
        if not is_check(item) or not callable(fn):
            continue
        if fn not in read:
            # The fixtures the check asks for itself: a fixture's own dependencies are its starters' business.
            asks = [n for n in argnames(fn) if n in COMPONENTS]
            read[fn] = (asks, *_read(fn)) if asks else (asks, frozenset(), frozenset())
        wanted, names, literals = read[fn]
        if not wanted:
            continue
        use = Use(check=str(getattr(item, "originalname", item.name)),
                  params=dict(getattr(getattr(item, "callspec", None), "params", {})), names=names,
                  literals=literals)
        for name in wanted:
            uses.setdefault(name, []).append(use)
    return uses


def starters(registered: Registered, uses: Sequence[Use]) -> list[tuple[Starter, list[Use]]]:
    """Each declared starter the uses read, with the uses that read it (every one for a use that
    names no getter of the facade)."""
    wanted: dict[str, list[Use]] = {}
    for use in uses:
        named = [g for g in registered.getters if g in use.names] or list(registered.getters)
        for getter in named:
            wanted.setdefault(getter, []).append(use)
    out: list[tuple[Starter, list[Use]]] = []
    for getter, readers in wanted.items():
        start = registered.getters[getter]
        if start is _nothing:
            continue
        for known, known_uses in out:
            if known is start:
                known_uses.extend(u for u in readers if u not in known_uses)
                break
        else:
            out.append((start, list(readers)))
    return out


def start(lab: Lab, uses: Mapping[str, Sequence[Use]]) -> None:
    """Start the declared facts the selected checks read, fixture by fixture."""
    for name in sorted(uses):
        registered = COMPONENTS[name]
        try:
            facade = registered.make(lab)
            for starter, readers in starters(registered, uses[name]):
                starter(facade, readers)
        except Exception:  # noqa: BLE001 - a failed prefetch is seen again, as UNKNOWN, by the check
            pass
