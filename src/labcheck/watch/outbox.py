"""Posting the incident's messages in the background, in order, so a slow receiver never delays a round.

The watcher records a message in the state with ``deliveries: null`` and queues it here; one
sender thread per environment hands it to ``labcheck.notify.Notifier.send`` (bounded, never
raising, "sent once" by its own record) and writes what each receiver answered back into the
message. A message still ``null`` when a watcher starts (its predecessor was killed before sending
it) is queued again: the notifier's record keeps a receiver from getting it twice.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from labcheck.timefmt import iso_utc

DRAIN_MARGIN_S = 2.0


class Outbox:
    """One sender thread for one environment's notifier."""

    def __init__(self, notifier: Any, *, lock: threading.Lock, saved: Callable[[], None],
                 warn: Callable[[str], None]) -> None:
        self.notifier = notifier
        self.lock = lock
        self.saved = saved
        self.warn = warn
        self.queue: queue.Queue[tuple[dict[str, Any], str, str, dict[str, Any]] | None] = queue.Queue()
        self.thread: threading.Thread | None = None

    def post(self, record: dict[str, Any], key: str, text: str, data: Mapping[str, Any]) -> None:
        """Queue one message (its record is updated when it has been sent)."""
        if not getattr(self.notifier, "targets", None):
            record["deliveries"] = []  # nowhere to post: nothing pending
            return
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="watch-notify", daemon=True)
            self.thread.start()
        self.queue.put((record, key, text, dict(data)))

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            record, key, text, data = item
            try:
                deliveries = self.notifier.send(record["kind"], key=key, text=text, data=data)
            except Exception as exc:  # the interface never raises; a surprise must not end the sender
                deliveries = []
                self.warn(f"notify: {type(exc).__name__}: {exc}")
            with self.lock:
                record["deliveries"] = [{"target": d.target, "ok": d.ok, "detail": d.detail,
                                         "skipped": bool(getattr(d, "skipped", False))} for d in deliveries]
                record["delivered_at"] = iso_utc(time.time())
                self.saved()
            for d in deliveries:
                if not d.ok:
                    self.warn(f"{record['kind']} to {d.target} not delivered: {d.detail}")

    def close(self) -> None:
        """Send what is queued, for at most the notifier's budget per message; then stop."""
        if self.thread is None:
            return
        pending = self.queue.qsize() + 1
        self.queue.put(None)
        budget = float(getattr(self.notifier, "budget_s", 10.0)) + DRAIN_MARGIN_S
        self.thread.join(budget * pending)
        if self.thread.is_alive():
            self.warn("notify: messages still being sent at exit were abandoned; the state shows them as pending")
