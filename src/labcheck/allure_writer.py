"""allure-pytest's result and container files, written by one background thread (issue 16).

allure-pytest writes a file for every check's result and every fixture's container, from the
hooks of the check itself: about 250 files a full run, each created, written and renamed while the
run waits (a file creation took 0.2-1.3 ms on a busy disk). ``install`` hands its file logger's
writes to a thread, in the order they come; the files and their content are allure-pytest's own.
``flush`` waits until every one is on disk: before anything reads the results back
(``allure_results.attach_run_picture``) and when pytest unconfigures.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

_STOP = object()


class Writer:
    """Calls ``write(item)`` for each item put, in order, in one daemon thread."""

    def __init__(self, write: Callable[[Any], None]) -> None:
        self._write = write
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # one per thread
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def put(self, item: Any) -> None:
        with self._lock:
            if self._thread is None:
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._run, args=(self._queue,), name="labcheck:allure writer",
                                                daemon=True)
                self._thread.start()
            self._queue.put(item)

    def _run(self, items: queue.SimpleQueue[Any]) -> None:
        while (item := items.get()) is not _STOP:
            try:
                self._write(item)
            except Exception as exc:  # noqa: BLE001 - said once at flush; the run's verdict does not depend on it
                self.error = self.error or f"{type(exc).__name__}: {exc}"

    def flush(self) -> None:
        """Wait until every item put so far is written; later items start a new thread."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._queue.put(_STOP)
        thread.join()
        if self.error:
            print(f"labcheck: could not write every Allure result: {self.error}", file=sys.stderr)
            self.error = None


_WRITERS: list[Writer] = []


def install() -> Callable[[], None] | None:
    """Write allure-pytest's result files in the background; the flush to call at unconfigure (None
    when allure-pytest has no file logger in this process)."""
    try:
        import allure_commons
        from allure_commons.logger import AllureFileLogger
    except ImportError:
        return None
    for plugin in allure_commons.plugin_manager.get_plugins():
        if isinstance(plugin, AllureFileLogger) and "_report_item" not in vars(plugin):
            writer = Writer(plugin._report_item)
            plugin._report_item = writer.put  # type: ignore[method-assign]  # report_result, report_container call it
            _WRITERS.append(writer)

            def done(writer: Writer = writer) -> None:
                writer.flush()
                if writer in _WRITERS:
                    _WRITERS.remove(writer)
            return done
    return None


def flush() -> None:
    """Every Allure result put so far is on disk."""
    for writer in list(_WRITERS):
        writer.flush()
