"""Process-wide mappings that pytest mutates while our probe threads read them.

labcheck fetches its facts in background threads while pytest runs checks in the main thread.
Two of pytest's per-test habits race with code those threads run inside client libraries:

- pytest's log capture iterates ``logging.Logger.manager.loggerDict`` at every test phase, while
  importing boto3 or kubernetes creates loggers: "dictionary changed size during iteration";
- pytest sets ``PYTEST_CURRENT_TEST`` before each test phase and pops it after teardown, while
  building a kubernetes or boto3 client reads proxy settings by iterating ``os.environ``
  (``urllib.request.getproxies``): a key listed and then popped raised ``KeyError``.

Either made a check UNKNOWN for no reason of the platform's (both seen in CI, with ten runs at
once on two cores). :func:`install` makes both mappings iterate through a snapshot taken in one
step under the GIL, for the rest of the process (the plugin calls it when pytest configures).
"""

from __future__ import annotations

import logging
import os
from typing import Any


class SnapshotDict(dict[str, Any]):
    """logging's loggerDict, iterated through snapshots."""

    def values(self) -> Any:
        return list(super().values())

    def items(self) -> Any:
        return list(super().items())

    def keys(self) -> Any:
        return list(super().keys())


class SnapshotEnviron(os._Environ):  # type: ignore[type-arg]
    """``os.environ``, iterated through snapshots: ``items()``, ``keys()``, ``values()``,
    ``copy()`` and iteration see the environment as it was at one instant."""

    def _snapshot(self) -> dict[str, str]:
        data = dict(self._data)  # type: ignore[attr-defined]  # one C-level copy: atomic under the GIL
        return {self.decodekey(k): self.decodevalue(v) for k, v in data.items()}

    def __iter__(self) -> Any:
        return iter(self._snapshot())

    def items(self) -> Any:
        return self._snapshot().items()

    def keys(self) -> Any:
        return self._snapshot().keys()

    def values(self) -> Any:
        return self._snapshot().values()

    def copy(self) -> dict[str, str]:
        return self._snapshot()


def install() -> None:
    manager = logging.Logger.manager
    if type(manager.loggerDict) is dict:
        manager.loggerDict = SnapshotDict(manager.loggerDict)
    if type(os.environ) is os._Environ:
        os.environ.__class__ = SnapshotEnviron

