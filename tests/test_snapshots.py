"""labcheck.snapshots: os.environ and logging's loggerDict read from one thread while another
thread does what pytest does at every test phase (PYTEST_CURRENT_TEST set then popped; loggers
created). Before the shim, both raised in CI runs; each test fails if the reader ever raises."""

from __future__ import annotations

import logging
import os
import threading
import urllib.request
from collections.abc import Callable

import pytest

from labcheck import snapshots

ROUNDS = 20000


def _race(mutate: Callable[[int], None], read: Callable[[], object]) -> list[BaseException]:
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                read()
            except Exception as exc:  # noqa: BLE001 - what the test looks for
                errors.append(exc)
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for i in range(ROUNDS):
            mutate(i)
    finally:
        stop.set()
        thread.join(10)
    return errors


PROBE = """
import logging, os
from labcheck import snapshots

def test_probe():
    print("SHIM", type(os.environ) is snapshots.SnapshotEnviron,
          type(logging.Logger.manager.loggerDict) is snapshots.SnapshotDict)
"""


def test_shim_is_installed_by_the_plugin_only_when_labcheck_is_used(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("LABCHECK_")]:
        monkeypatch.delenv(name)
    pytester.makepyfile(test_probe=PROBE)
    inert = pytester.runpytest_subprocess("-s", "-p", "no:randomly")
    inert.assert_outcomes(passed=1)
    assert "SHIM False False" in inert.stdout.str()
    used = pytester.runpytest_subprocess("-s", "-p", "no:randomly", "--no-sandbox")
    used.assert_outcomes(passed=1)
    assert "SHIM True True" in used.stdout.str()


def test_getproxies_survives_a_key_popped_while_it_iterates() -> None:
    snapshots.install()

    def mutate(i: int) -> None:
        os.environ["LABCHECK_TEST_CURRENT"] = f"check {i} (call)"
        os.environ.pop("LABCHECK_TEST_CURRENT")

    errors = _race(mutate, urllib.request.getproxies)
    assert not errors, f"getproxies() raised while another thread popped a key: {errors[0]!r}"
    assert "LABCHECK_TEST_CURRENT" not in os.environ


def test_environ_still_reads_and_writes_through() -> None:
    snapshots.install()
    os.environ["LABCHECK_TEST_VALUE"] = "one"
    try:
        assert os.environ["LABCHECK_TEST_VALUE"] == "one"
        assert os.environ.copy()["LABCHECK_TEST_VALUE"] == "one"
        assert ("LABCHECK_TEST_VALUE", "one") in os.environ.items()
        assert "LABCHECK_TEST_VALUE" in list(os.environ)
        assert os.getenv("LABCHECK_TEST_VALUE") == "one"
    finally:
        del os.environ["LABCHECK_TEST_VALUE"]
    assert "LABCHECK_TEST_VALUE" not in os.environ.keys()


def test_logger_dict_survives_loggers_created_while_it_iterates() -> None:
    snapshots.install()
    manager = logging.Logger.manager

    def mutate(i: int) -> None:
        logging.getLogger(f"labcheck.tests.snapshot.{i}")

    try:
        errors = _race(mutate, lambda: [v for v in manager.loggerDict.values() if isinstance(v, logging.Logger)])
    finally:
        for name in [n for n in manager.loggerDict if n.startswith("labcheck.tests.snapshot")]:
            del manager.loggerDict[name]
    assert not errors, f"iterating loggerDict raised while loggers were created: {errors[0]!r}"
