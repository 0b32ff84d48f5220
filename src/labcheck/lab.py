"""The run's shared view of the platform: every distinct fact is fetched once, concurrently, within a bound."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from labcheck import snapshots
from labcheck.config import Settings
from labcheck.errors import DeadlineReached, ProbeTimeout, Unknown
from labcheck.evidence import Evidence, Redactor

T = TypeVar("T")


def _run(fn: Callable[[], Any], future: Future[Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
        future.set_exception(exc)


class Lab:
    """Session-wide cache of facts about the platform.

    ``lab.fact(key, fn)`` starts ``fn`` at most once per run, in a daemon
    thread, and waits for it at most ``budget`` seconds. A probe that hangs
    past every timeout of its library is abandoned (its thread is a daemon),
    so a hung target costs the run one bound, never a hang.
    """

    def __init__(self, settings: Settings, *, redactor: Redactor, evidence: Evidence | None = None) -> None:
        snapshots.install()  # probe threads read os.environ and loggerDict while pytest changes them
        self.settings = settings
        self.redact = redactor
        self.evidence = evidence
        self._lock = threading.Lock()
        self._facts: dict[str, Future[Any]] = {}
        self._started: dict[str, float] = {}
        self._clients: dict[str, Any] = {}
        self._building: dict[str, threading.Lock] = {}
        self.deadline: float | None = None
        self.calls: list[str] = []
        self._dead: dict[str, str] = {}

    @property
    def budget(self) -> float:
        """How long one probe may take in all: its timeouts plus a margin."""
        return max(self.settings.connect_s, self.settings.read_s) + 1.0

    def start(self, key: str, fn: Callable[[], Any], *, origin: str | None = None) -> Future[Any]:
        """Start fetching a fact in the background, once per run."""
        fn = self._watch(fn, origin)
        with self._lock:
            future = self._facts.get(key)
            if future is not None:
                return future
            if origin is not None and origin in self._dead:
                # Not started, and not cached: ``fact`` then fails at once naming its own target.
                future = Future()
                future.set_exception(ProbeTimeout(f"not tried: {self._dead[origin]}", target=origin))
                return future
            future = Future()
            self._facts[key] = future
            self._started[key] = time.monotonic()
            self.calls.append(key)
        threading.Thread(target=_run, args=(fn, future), name=f"labcheck:{key}", daemon=True).start()
        return future

    def fact(self, key: str, fn: Callable[[], T], *, target: str, budget: float | None = None,
             origin: str | None = None) -> T:
        """The value of a fact, fetched once per run and bounded in time.

        ``origin`` names the server behind the fact (``scheme://host:port``): once one
        fact from an origin times out, the others fail at once instead of each
        costing the run another timeout.
        """
        self.check_deadline()
        origin = origin or origin_of(target)
        if key not in self._facts and origin in self._dead:
            raise ProbeTimeout(f"not tried: {self._dead[origin]}", target=target)
        future = self.start(key, fn, origin=origin)
        bound = self.budget if budget is None else budget
        remaining = bound - (time.monotonic() - self._started[key])
        if self.deadline is not None:
            remaining = min(remaining, self.deadline - time.monotonic())
        try:
            return future.result(timeout=max(remaining, 0.0))  # type: ignore[no-any-return]
        except FutureTimeout:
            pass
        except Exception as exc:  # noqa: BLE001 - every reader gets its own copy of the shared failure
            if isinstance(exc, ProbeTimeout):
                self._mark_dead(origin, exc.reason)  # also when the fact was started without its origin
            raise _fresh(exc) from None
        self.check_deadline()
        self._mark_dead(origin, f"no complete answer within {bound:.0f} s")
        raise ProbeTimeout(f"no complete answer within {bound:.0f} s", target=target)

    def _watch(self, fn: Callable[[], T], origin: str | None) -> Callable[[], T]:
        def run() -> T:
            try:
                return fn()
            except ProbeTimeout as exc:
                self._mark_dead(origin, exc.reason)
                raise
        return run

    def mark_dead(self, origin: str | None, reason: str) -> None:
        """Record that ``origin`` did not answer in time (for probes that return, not raise, a timeout)."""
        self._mark_dead(origin, reason)

    def _mark_dead(self, origin: str | None, reason: str) -> None:
        if origin:
            with self._lock:
                self._dead.setdefault(origin, f"{origin} did not answer earlier in this run ({reason})")

    def client(self, name: str, make: Callable[[], T]) -> T:
        """A client built once per run (httpx, psycopg, boto3, kubernetes); see ``once``."""
        return self.once(name, make)

    def once(self, name: str, make: Callable[[], T]) -> T:
        """Anything built once per run and shared: a client, a facade, evidence every failing check records.

        Built under its own lock, not the lab's: importing kubernetes or boto3 takes a second or
        more, and meanwhile every other probe must still start and finish.
        """
        with self._lock:
            if name in self._clients:
                return self._clients[name]  # type: ignore[no-any-return]
            building = self._building.setdefault(name, threading.Lock())
        with building:
            with self._lock:
                if name in self._clients:
                    return self._clients[name]  # type: ignore[no-any-return]
            made = _build(make)
            with self._lock:
                self._clients[name] = made
            return made

    def peek(self, key: str) -> Any:
        """A fact's value if it was fetched in this run and succeeded, else None (never fetches)."""
        with self._lock:
            future = self._facts.get(key)
        if future is None or not future.done() or future.exception() is not None:
            return None
        return future.result()

    def check_deadline(self) -> None:
        """Raise DeadlineReached once the run-wide triage deadline has passed."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineReached("deadline reached before this check could finish")

    def record(self, nodeid: str, name: str, body: Any) -> str | None:
        """Record evidence through the single redacting recorder."""
        if self.evidence is None:
            return None
        return self.evidence.record(nodeid, name, body)

    def close(self) -> None:
        for client in self._clients.values():
            close = getattr(client, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - closing must never fail a run
                    pass
        self._clients.clear()


# Environment variables pytest sets and removes around every test, while our threads run.
_ENVIRON_CHURN = frozenset({"PYTEST_CURRENT_TEST"})


def _build(make: Callable[[], T]) -> T:
    """``make()``, once more if an environment variable vanished while it read ``os.environ``.

    Building a kubernetes or boto3 client calls urllib's ``getproxies()``, which iterates
    ``os.environ``; in a background thread it can list PYTEST_CURRENT_TEST just before pytest
    removes it, and then fail with KeyError reading its value.
    """
    for attempt in range(3):
        try:
            return make()
        except KeyError as exc:
            if attempt == 2 or not exc.args or exc.args[0] not in _ENVIRON_CHURN:
                raise
    raise AssertionError("unreachable")


def _fresh(exc: Exception) -> Exception:
    """A copy of a cached exception without its traceback, so it does not grow with every reader."""
    try:
        new = copy.copy(exc)
    except Exception:  # noqa: BLE001 - an exception that cannot be copied is re-raised as it is
        return exc
    new.__traceback__ = None
    return new


def origin_of(target: str | None) -> str | None:
    """``scheme://host:port`` of a URL-looking target, else None."""
    if not target or "://" not in target:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(target.split()[-1] if " " in target else target)
    if not parts.hostname:
        return None
    return f"{parts.scheme}://{parts.hostname}:{parts.port or ''}"


__all__ = ["Lab", "Unknown", "origin_of"]
