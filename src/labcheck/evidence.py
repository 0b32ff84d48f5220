"""The single place where evidence is recorded, and redacted."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MASK = "***"

_DSN_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")


def mask_dsn(text: str) -> str:
    """Hide the password part of any URL or DSN in text."""
    return _DSN_PASSWORD.sub(r"\1***\3", text)

_SECRET_KEY = (r"[A-Z0-9_.\-]*(?:PASSWORD|PASSWD|PWD|SECRET|TOKEN|API_?KEY|ACCESS_?KEY|ADMIN_?KEY|PRIVATE_?KEY)"
               r"[A-Z0-9_\-]*")

# Words that follow a secret's label in labcheck's own messages and in presence reports: what was
# observed about the secret, never its value.
_NOT_A_VALUE = "observed|missing|empty|non-empty|present|absent|unset|not set|not found|none"

# A label's characters run up to what follows it (``=`` or ``:``): asked first, without backtracking,
# it is a condition the label patterns below imply, so it changes no match; it only spares them their
# costly tries at every word of a text without one (a third of a run's redaction time, issue 16).
_LABEL_THEN = r"(?=[A-Za-z0-9_.\-]++"

# Patterns for secrets we were not told about. Each keeps its first group
# (the label) and masks the rest.
_PATTERNS = [
    # user:password@ inside any URL or DSN
    re.compile(r"(://[^:/@\s'\"]+:)[^@\s'\"]+(?=@)"),
    # KEY=value for secret-ish keys (a libpq keyword DSN, an env line in a log)
    re.compile(rf"(?i)\b{_LABEL_THEN}\s*+=)({_SECRET_KEY}\s*=\s*[\"']?)[^\s\"',;&}}]+"),
    # "key": "value" (JSON): the quoted string only, so redacted JSON stays valid JSON
    re.compile(rf"(?i)(\"{_SECRET_KEY}\"\s*:\s*\")[^\"]+(?=\")"),
    # KEY: value (YAML, headers, env dumps) where the key looks like an identifier, not prose:
    # JWT_SECRET: x, db-password: x, TOKEN: x. The value is on the label's line: a label that ends
    # its line, or that labcheck's own prose follows ("key JWT_SECRET: observed missing"), has no
    # value, and the next word is kept. A bare JSON literal or number is left alone.
    re.compile(rf"\b{_LABEL_THEN}[ \t]*+:)((?:[A-Za-z0-9]+[_\-]{_SECRET_KEY}|{_SECRET_KEY}[_\-][A-Za-z0-9_\-]+|password|passwd|"
               rf"(?-i:[A-Z0-9_]*(?:PASSWORD|SECRET|TOKEN|API_?KEY|ACCESS_?KEY)[A-Z0-9_]*))[ \t]*:[ \t]*)"
               rf"(?!(?:true|false|null|{_NOT_A_VALUE})(?:[\s,;}}\]]|$))(?![\d{{\[\"'-])[^\s,;}}\]]+",
               re.IGNORECASE),
    # Authorization headers
    re.compile(r"(?i)\b((?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=\-]{8,}"),
    re.compile(r"(?i)\b(X-Admin-Key\s*[:=]\s*)\S+"),
    # JWTs anywhere
    re.compile(r"()eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*"),
    # AWS access key ids
    re.compile(r"()\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
]


_SECRET_NAME = re.compile(rf"(?i)^{_SECRET_KEY}$")


def mask_params(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as they may be shown: the value of each one whose name looks secret masked."""
    return {k: MASK if _SECRET_NAME.match(k) else v for k, v in params.items()}


class Redactor:
    """Masks known secret values and secret-shaped text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._known: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Remember more secret values (and their encodings) to mask."""
        with self._lock:
            for secret in secrets:
                for form in _forms(secret):
                    if form not in self._known:
                        self._known.append(form)
            self._known.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._known:
            text = text.replace(secret, MASK)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + MASK, text)
        return text


class RedactingLogFilter(logging.Filter):
    """Redacts log records on their way to pytest's handlers: live logs, --log-file, captured logs.

    Client libraries log at DEBUG what they send (botocore: the Authorization header with the
    access key id); those records reach the terminal and the log file without passing a report.
    """

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot be formatted cannot be redacted: drop it
            return False
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def _forms(secret: str) -> list[str]:
    """A secret, the secret inside a DSN, and its base64 form."""
    if not secret or len(secret) < 4:
        return []
    forms = [secret]
    match = re.search(r"://[^:/@\s]+:([^@\s]+)@", secret)
    if match:
        forms.append(match.group(1))
    forms.append(base64.b64encode(secret.encode()).decode())
    return [f for f in forms if len(f) >= 4]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._\-]+", "_", text).strip("_")[:150] or "evidence"


class Evidence:
    """Records redacted evidence as Allure attachments and files under reports/evidence/."""

    def __init__(self, directory: Path, redactor: Redactor) -> None:
        self.directory = directory
        self.redact = redactor
        self._lock = threading.Lock()
        self.recorded: list[Path] = []
        # The same body recorded for many checks (the API's pods, for every failing API check) is
        # serialised and redacted once, and written once (the other files are hard links): on 150
        # pods, doing it again per check was most of a failing run's time (issue 16).
        self._dumped: dict[int, tuple[Any, str]] = {}
        self._redacted: dict[str, tuple[str, Path | None]] = {}

    def _text(self, body: Any) -> str:
        with self._lock:
            seen = self._dumped.get(id(body))
        if seen is not None and seen[0] is body:
            return seen[1]
        text = json.dumps(body, indent=2, default=str, sort_keys=True)
        with self._lock:
            if len(self._dumped) >= 64:
                self._dumped.clear()
            self._dumped[id(body)] = (body, text)  # the body is kept, so its id is not reused meanwhile
        return text

    def _redact(self, text: str) -> tuple[str, Path | None]:
        """The redacted text, and a file that already holds it (None the first time)."""
        with self._lock:
            done = self._redacted.get(text)
        if done is None:
            done = (self.redact(text), None)
            with self._lock:
                if len(self._redacted) >= 64:
                    self._redacted.clear()
                self._redacted[text] = done
        return done

    def _write_text(self, path: Path, source: str, text: str, written: Path | None) -> None:
        """Write ``text`` at ``path`` (a hard link to ``written`` where it already holds it). Under the lock."""
        if written == path:
            return
        path.unlink(missing_ok=True)  # never write through a link into another check's file
        if written is not None:
            try:
                os.link(written, path)
                return
            except OSError:
                pass
        path.write_text(text, encoding="utf-8")
        self._redacted[source] = (text, path)

    def record(self, nodeid: str, name: str, body: Any, *, kind: str = "text") -> str:
        """Redact and record one piece of evidence; return the redacted text."""
        if not isinstance(body, str):
            body = self._text(body)
            kind = "json"
        text, written = self._redact(body)
        suffix = ".json" if kind == "json" else ".txt"
        folder = self.directory / _safe_name(nodeid)
        path = folder / (_safe_name(name) + suffix)
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True)
            self._write_text(path, body, text, written)
            self.recorded.append(path)
        _attach_allure(text, name, kind)
        return text

    def record_run(self, name: str, body: Any) -> Path:
        """Redact and record evidence of the whole run (no one check's) as JSON at the top of the
        directory. Not attached here: outside a check there is no test result to attach it to."""
        text = self.redact(json.dumps(body, indent=2, default=str, sort_keys=True))
        return self._write(self.directory / _safe_name(name), text.encode("utf-8"))

    def record_picture(self, name: str, png: bytes) -> Path:
        """Record a picture of the whole run. Pixels cannot be redacted: its caller passes every text
        it draws through this recorder's ``redact`` first."""
        return self._write(self.directory / _safe_name(name), png)

    def _write(self, path: Path, data: bytes) -> Path:
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            self.recorded.append(path)
        return path


def _attach_allure(text: str, name: str, kind: str) -> None:
    import allure  # a no-op unless allure-pytest is writing results

    attachment_type = allure.attachment_type.JSON if kind == "json" else allure.attachment_type.TEXT
    allure.attach(text, name=name, attachment_type=attachment_type)


def redact_env_secrets() -> list[str]:
    """Secret-looking values from the environment (tokens, passwords, keys)."""
    found = []
    for name, value in os.environ.items():
        if re.search(r"(?i)(PASSWORD|SECRET|TOKEN|ACCESS_KEY|ADMIN_KEY)", name) and len(value) >= 6:
            found.append(value)
    return found
