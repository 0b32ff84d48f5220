"""What has been sent: ``notify-sent.json``, per incident key and target, so a restart sends nothing twice.

Each target's record is written on its own, as soon as that target has answered, not when the
slowest target of the same message is done: a watcher killed while one receiver is still being
retried has already recorded the others. Before a POST leaves, the record says ``sending``; a
record still ``sending`` when the next watcher starts means its predecessor stopped during that
POST, so the message may or may not have arrived. It is sent again (a declaration never silently
lost), marked as possibly a repeat where the receiver shows it to people; PagerDuty folds a
repeated trigger into the open alert of the same ``dedup_key``.

The file is replaced whole (write, then rename) under one lock, each time read afresh, so a send
abandoned at its budget that answers later still records itself without undoing newer records.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("labcheck.notify")

Record = dict[str, Any]


def one_line(text: str) -> str:
    """Whitespace (newlines too) folded to single spaces: one line for a message."""
    return " ".join(text.split())


class SentLedger:
    """``path``: per incident key and target id, what was delivered (a JSON file, replaced whole)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.warnings: list[str] = []
        self._lock = threading.Lock()

    def load(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._warn(f"cannot read {self.path} ({exc.strerror}): notifications may be sent again")
            return {}
        try:
            doc = json.loads(raw)
            incidents = doc["incidents"]
            if doc.get("version") != 1 or not isinstance(incidents, dict) or not all(
                    isinstance(v, dict) and all(isinstance(r, dict) for r in v.values()) for v in incidents.values()):
                raise ValueError("not a labcheck sent file")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            try:
                os.replace(self.path, aside)
                where = f"moved aside to {aside.name}"
            except OSError as err:
                where = f"could not be moved aside ({err.strerror})"
            self._warn(f"{self.path} is corrupt ({one_line(str(exc))[:80]}), {where}; starting a new record")
            return {}
        return incidents

    def save(self, incidents: Mapping[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kept = {key: {t: r for t, r in records.items() if r} for key, records in incidents.items()}
            tmp.write_text(json.dumps({"version": 1, "incidents": {k: v for k, v in kept.items() if v}},
                                      indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:
            self._warn(f"cannot write {self.path} ({exc.strerror}): a restart may send these again")

    def records(self, key: str) -> dict[str, Record]:
        """The records of incident ``key``, by target id, as the file has them now."""
        with self._lock:
            return dict(self.load().get(key, {}))

    def update(self, key: str, target_ids: Iterable[str], change: Callable[[Record], None]) -> None:
        """Read the file, apply ``change`` to each named target's record of ``key``, write it back."""
        with self._lock:
            incidents = self.load()
            records = incidents.setdefault(key, {})
            for target_id in target_ids:
                change(records.setdefault(target_id, {}))
            self.save(incidents)

    def _warn(self, message: str) -> None:
        log.warning("labcheck notify: %s", message)
        self.warnings.append(message)


def already(kind: str, record: Mapping[str, Any], digest: str) -> str | None:
    """Why this message need not go to this target again, or None."""
    if kind in ("declaration", "resolution") and kind in record:
        return f"{kind} already sent at {_entry(record, kind).get('at', '?')}"
    if kind == "update":
        if "resolution" in record:
            return "incident already resolved"
        if record.get("last_hash") == digest:
            return f"unchanged since the message sent at {record.get('last_at')}"
    return None


def interrupted(kind: str, record: Mapping[str, Any], digest: str) -> bool:
    """Whether this very message was being posted to this target when a watcher stopped."""
    sending = _entry(record, "sending")
    return sending.get("kind") == kind and sending.get("hash") == digest


def sending(kind: str, digest: str, at: str) -> Callable[[Record], None]:
    """The mark written before a POST leaves."""
    def change(record: Record) -> None:
        record["sending"] = {"kind": kind, "hash": digest, "at": at}
    return change


def answered(kind: str, name: str, digest: str, at: str, *, ok: bool, maybe_arrived: bool) -> Callable[[Record], None]:
    """What a target's answer changes: sent, or the mark taken back (kept when it may have arrived)."""
    def change(record: Record) -> None:
        if ok:
            _remember(record, kind, name, digest, at)
        if ok or not maybe_arrived:
            record.pop("sending", None)
    return change


def _entry(record: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    entry = record.get(kind)
    return entry if isinstance(entry, Mapping) else {}


def _remember(record: Record, kind: str, name: str, digest: str, at: str) -> None:
    record["target"] = name
    if kind == "update":
        previous = _entry(record, "update").get("count", 0)
        count = previous + 1 if isinstance(previous, int) else 1
        record["update"] = {"at": at, "hash": digest, "count": count}
    else:
        record[kind] = {"at": at}
    record["last_hash"], record["last_at"] = digest, at
