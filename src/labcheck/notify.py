"""Notifications for `labcheck watch` -- a STUB of the interface agreed with branch ``notify``.

Branch ``notify`` (issue 15 part 4) builds the real module under this name: Slack-compatible
webhooks, the PagerDuty Events API v2 and a generic JSON webhook, bounded, redacted and sent once.
Until it is merged, this stub keeps the same names and signatures so that ``labcheck watch`` calls
them unchanged: it validates the URLs and records each message as not delivered. The merge takes
the ``notify`` branch's file whole.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from labcheck.errors import UsageError

KINDS = ("declaration", "update", "resolution")
SCHEMES = ("http", "https")


@dataclass(frozen=True)
class Target:
    """A place messages go: its URL as given, and the name shown for it (no secret in it)."""

    url: str
    name: str


@dataclass(frozen=True)
class Delivery:
    """What became of one message at one target."""

    target: str
    ok: bool
    detail: str


def parse_targets(urls: list[str]) -> list[Target]:
    """The targets of ``--notify`` URLs; a malformed URL or an unknown scheme is a one-line UsageError."""
    out: list[Target] = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise UsageError(f"--notify {parts.scheme or url!r}: unknown scheme (known: {', '.join(SCHEMES)})")
        if not parts.hostname:
            raise UsageError(f"--notify: not a URL with a host: {parts.scheme}://...")
        out.append(Target(url=url, name=f"{parts.scheme}://{parts.hostname}"))
    return out


class Notifier:
    """Sends the incident's messages to its targets (stub: records them as not delivered)."""

    def __init__(self, targets: list[Target], *, settings: Any, redact: Callable[[str], str],
                 sent_path: Path) -> None:
        self.targets = targets
        self.settings = settings
        self.redact = redact
        self.sent_path = sent_path

    def send(self, kind: str, *, key: str, text: str, data: Mapping[str, Any]) -> list[Delivery]:
        """Post one message to every target; never raises, bounded in time."""
        return [Delivery(target=t.name, ok=False, detail="not sent: notifications are not built yet (branch notify)")
                for t in self.targets]
