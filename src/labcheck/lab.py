"""The run's shared view of the platform: every distinct fact is fetched once, concurrently, within a bound."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

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
        self.settings = settings
        self.redact = redactor
        self.evidence = evidence
        self._lock = threading.Lock()
        self._facts: dict[str, Future[Any]] = {}
        self._started: dict[str, float] = {}
        self._clients: dict[str, Any] = {}
        self.deadline: float | None = None
        self.calls: list[str] = []

    @property
    def budget(self) -> float:
        """How long one probe may take in all: its timeouts plus a margin."""
        return max(self.settings.connect_s, self.settings.read_s) + 1.0

    def start(self, key: str, fn: Callable[[], Any]) -> Future[Any]:
        """Start fetching a fact in the background, once per run."""
        with self._lock:
            future = self._facts.get(key)
            if future is not None:
                return future
            future = Future()
            self._facts[key] = future
            self._started[key] = time.monotonic()
            self.calls.append(key)
        threading.Thread(target=_run, args=(fn, future), name=f"labcheck:{key}", daemon=True).start()
        return future

    def fact(self, key: str, fn: Callable[[], T], *, target: str, budget: float | None = None) -> T:
        """The value of a fact, fetched once per run and bounded in time."""
        self.check_deadline()
        future = self.start(key, fn)
        bound = self.budget if budget is None else budget
        remaining = bound - (time.monotonic() - self._started[key])
        if self.deadline is not None:
            remaining = min(remaining, self.deadline - time.monotonic())
        try:
            return future.result(timeout=max(remaining, 0.0))  # type: ignore[no-any-return]
        except FutureTimeout:
            self.check_deadline()
            raise ProbeTimeout(f"no complete answer within {bound:.0f} s", target=target) from None

    def client(self, name: str, make: Callable[[], T]) -> T:
        """A client built once per run (httpx, psycopg, boto3, kubernetes)."""
        with self._lock:
            if name not in self._clients:
                self._clients[name] = make()
            return self._clients[name]  # type: ignore[no-any-return]

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


def unknown_if_missing(value: Any, what: str, *, target: str) -> Any:
    """Turn a missing configuration value into UNKNOWN with a reason."""
    if value in (None, "", ()):
        from labcheck.errors import NotConfigured

        raise NotConfigured(f"{what} is not configured", target=target)
    return value


__all__ = ["Lab", "Unknown", "unknown_if_missing"]
