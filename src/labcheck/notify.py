"""Notifications: an incident's declaration, updates and resolution, posted where people read them.

``--notify URL`` names one target; the URL's scheme picks its kind:

    slack+https://hooks.slack.com/services/T000/B000/XXXX     a Slack-compatible incoming webhook
    pagerduty://<routing_key>                                PagerDuty Events API v2
    pagerduty+https://HOST/v2/enqueue?routing_key=<key>       the same, at another endpoint
                                                             (the EU service, a test receiver)
    webhook+https://example.com/hooks/labcheck               a generic JSON webhook

(``+http`` works for each, for a receiver on a private network or on loopback.)

What each receives, one POST per message (``application/json``):

- Slack: ``{"text": <the template's markdown>}``.
- PagerDuty: a ``trigger`` event for the declaration and for each update, a ``resolve`` event for
  the resolution, all with ``dedup_key`` = the incident's key, so they act on one alert. The
  summary is the probable cause (at most 1024 characters); SEV-1..4 map to critical, error,
  warning, info.
- Webhook: ``{"source": "labcheck", "kind", "key", "sent_at", "text", "triage", "possibly_repeated"}``, the triage
  being the verdict (triage.json's shape).

Every body is redacted before it is sent; PagerDuty's routing key is put into its own field
after redaction, and is never shown: a target is named without the parts of its URL that may be a
secret (a Slack webhook's path, a routing key). Each target gets at most ``ATTEMPTS`` tries, with
the connect and read timeouts of the settings, within ``Notifier.budget_s`` for the whole send: a
dead or hanging receiver costs that, then is a ``Delivery(ok=False)``, never an exception.

Each message is sent once: ``sent_path`` records, per incident key and target, the declaration,
the last update's content hash, and the resolution, so a restarted watcher does not send them
again, and an update goes out only when its content (text, severity, probable cause) changed.
Each target's record is written the moment it answers (``labcheck.notify_ledger``); only a
watcher killed during the POST itself leaves a message that may be sent twice, and the second
copy says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from labcheck.config import Settings
from labcheck.errors import ConfigError
from labcheck.evidence import MASK, mask_params
from labcheck.notify_ledger import SentLedger, already, answered, interrupted, one_line, sending
from labcheck.timefmt import iso_utc

log = logging.getLogger("labcheck.notify")

KINDS = ("declaration", "update", "resolution")
TARGET_KINDS = ("slack", "pagerduty", "webhook")
PAGERDUTY_ENQUEUE = "https://events.pagerduty.com/v2/enqueue"
PAGERDUTY_SEVERITY = {"SEV-1": "critical", "SEV-2": "error", "SEV-3": "warning", "SEV-4": "info"}
# The Events API v2 documentation's limits (developer.pagerduty.com, "Send an Alert Event").
ROUTING_KEY_LENGTH = 32
SUMMARY_MAX = 1024
DEDUP_KEY_MAX = 255
SLACK_TEXT_MAX = 40_000  # Slack truncates a message's text beyond this
ATTEMPTS = 2
BACKOFF_S = 0.5
MAYBE_ARRIVED = "the message may have arrived"
AGAIN_NOTE = "_(Sent again: labcheck stopped while sending this message, which may have arrived already.)_\n\n"
_USAGE = ("use slack+https://..., pagerduty://ROUTING_KEY, pagerduty+https://HOST/PATH?routing_key=KEY "
          "or webhook+https://...")


@dataclass(frozen=True)
class Target:
    """Where one ``--notify`` URL posts; ``name`` is how it is shown, with no secret in it."""

    kind: str
    name: str
    id: str
    endpoint: str = field(repr=False)
    routing_key: str | None = field(default=None, repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never be shown: a webhook's URL (its path may be the credential), the routing key."""
        parts = urlsplit(self.endpoint)
        found = []
        if self.kind != "pagerduty":  # PagerDuty's endpoint is public; its credential is the key
            tail = parts.path + (f"?{parts.query}" if parts.query else "")
            found += [self.endpoint] + ([tail] if len(tail) >= 12 else [])
        if parts.password:
            found.append(parts.password)
        if self.routing_key:
            found.append(self.routing_key)
        return tuple(found)


@dataclass(frozen=True)
class Delivery:
    """What became of one message for one target: ``skipped`` when it had already been sent."""

    target: str
    ok: bool
    detail: str
    skipped: bool = False


# --- the URL forms ------------------------------------------------------------------------------


def shown_url(url: str) -> str:
    """A notify URL as it may be printed: its scheme and host only (the rest may be a credential)."""
    text = one_line(url)
    scheme, sep, rest = text.partition("://")
    if not sep:  # no scheme: a host-looking head is kept, anything else (a bare key?) is masked
        head = text.split("/")[0]
        return repr(head[:60] + (f"/{MASK}" if "/" in text else "") if "." in head else MASK)
    if scheme.lower() == "pagerduty":
        return repr(f"pagerduty://{MASK}")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    hidden = rest[len(authority):].strip("/")
    return repr(f"{scheme}://{authority.rpartition('@')[2]}" + (f"/{MASK}" if hidden else ""))


def _fail(url: str, reason: str) -> ConfigError:
    return ConfigError(f"--notify {shown_url(url)}: {reason}")


def _routing_key(url: str, key: str) -> str:
    if not key:
        raise _fail(url, "no PagerDuty routing key")
    if not re.fullmatch(rf"[A-Za-z0-9]{{{ROUTING_KEY_LENGTH}}}", key):
        raise _fail(url, f"a PagerDuty routing key is {ROUTING_KEY_LENGTH} letters and digits, "
                         f"this one is {len(key)} characters")
    return key


def _target(kind: str, endpoint: str, routing_key: str | None = None) -> Target:
    parts = urlsplit(endpoint)
    host = parts.netloc.rpartition("@")[2]
    if kind == "pagerduty":
        name = f"pagerduty+{parts.scheme}://{host}{parts.path}"
    else:
        hidden = parts.path.strip("/") or parts.query
        name = f"{kind}+{parts.scheme}://{host}" + (f"/{MASK}" if hidden else "")
    ident = hashlib.sha256(f"{kind}|{endpoint}|{routing_key or ''}".encode()).hexdigest()[:16]
    return Target(kind=kind, name=name, id=ident, endpoint=endpoint, routing_key=routing_key)


def parse_target(url: str) -> Target:
    """One ``--notify`` URL as a target, or a one-line ConfigError naming it (secrets masked)."""
    text = url.strip()
    if not text or "://" not in text or any(c.isspace() for c in text):
        raise _fail(url, f"not a URL; {_USAGE}")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise _fail(url, f"malformed URL ({one_line(str(exc))})") from None
    kind, plus, transport = parts.scheme.lower().partition("+")
    if kind == "pagerduty" and not plus:
        if parts.path.strip("/") or parts.query or "@" in parts.netloc:
            raise _fail(url, "pagerduty://ROUTING_KEY takes the key alone; name another endpoint "
                             "with pagerduty+https://HOST/PATH?routing_key=KEY")
        return _target("pagerduty", PAGERDUTY_ENQUEUE, _routing_key(url, parts.netloc))
    if kind not in TARGET_KINDS or transport not in ("http", "https"):
        raise _fail(url, f"unknown notify scheme {parts.scheme!r}; {_USAGE}")
    if not parts.hostname:
        raise _fail(url, "no host")
    query, routing_key = parts.query, None  # a webhook's query is kept as written (it may be signed)
    if kind == "pagerduty":
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        keys = [v for k, v in pairs if k == "routing_key"]
        routing_key = _routing_key(url, keys[0] if len(keys) == 1 else "")
        query = urlencode([(k, v) for k, v in pairs if k != "routing_key"])
    endpoint = urlunsplit((transport, parts.netloc, parts.path or "/", query, ""))
    return _target(kind, endpoint, routing_key)


def parse_targets(urls: Iterable[str]) -> list[Target]:
    """The ``--notify`` URLs as targets (a URL given twice is one target)."""
    targets: dict[str, Target] = {}
    for url in urls:
        target = parse_target(url)
        targets.setdefault(target.id, target)
    found = list(targets.values())
    names = [t.name for t in found]
    return [t if names.count(t.name) == 1 else _renamed(t) for t in found]


def _renamed(target: Target) -> Target:
    return Target(target.kind, f"{target.name} #{target.id[:6]}", target.id, target.endpoint,
                  target.routing_key)


# --- the bodies -----------------------------------------------------------------------------


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary(data: Mapping[str, Any]) -> str:
    """The probable cause in one line (PagerDuty's summary): severity, title, why."""
    severity = f"{data['severity']} " if data.get("severity") else ""
    cause = data.get("probable_cause") or {}
    title = cause.get("title") or cause.get("label")
    if not title:
        return _clip(f"{severity}labcheck: no probable cause named on {data.get('target') or 'the target'}",
                     SUMMARY_MAX)
    why = cause.get("why")
    return _clip(one_line(f"{severity}{title}" + (f": {why}" if why else "")), SUMMARY_MAX)


def dedup_key(key: str) -> str:
    """The incident key as PagerDuty's dedup_key (at most 255 characters: a longer key is hashed)."""
    return key if len(key) <= DEDUP_KEY_MAX else "labcheck-" + hashlib.sha256(key.encode()).hexdigest()


def pagerduty_event(kind: str, key: str, text: str, data: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The Events API v2 event for one message, without its routing key (added after redaction)."""
    if kind == "resolution":
        return {"event_action": "resolve", "dedup_key": dedup_key(key)}
    cause = data.get("probable_cause") or {}
    components = [str(c) for c in data.get("affected_components") or []]
    payload: dict[str, Any] = {
        "summary": summary(data),
        "source": str(data.get("target") or "labcheck"),
        "severity": PAGERDUTY_SEVERITY.get(str(data.get("severity")), "info"),
        "timestamp": iso_utc(now),
        "component": ", ".join(components) or cause.get("component"),
        "class": cause.get("label"),
        "custom_details": {
            "kind": kind, "incident": key, "severity": data.get("severity"), "probable_cause": cause or None,
            "affected_components": components, "text": text,
        },
    }
    return {"event_action": "trigger", "dedup_key": dedup_key(key), "client": "labcheck",
            "payload": {k: v for k, v in payload.items() if v not in (None, "")}}


def body(target: Target, kind: str, *, key: str, text: str, data: Mapping[str, Any], now: float,
         again: bool = False) -> dict[str, Any]:
    """What one target receives for one message, before redaction.

    ``again``: the last watcher stopped while posting this message, so it may have arrived. Slack's
    text and the webhook's body say so; PagerDuty folds a repeated trigger into the same alert.
    """
    if target.kind == "slack":
        return {"text": _clip((AGAIN_NOTE + text) if again else text, SLACK_TEXT_MAX)}
    if target.kind == "pagerduty":
        return pagerduty_event(kind, key, text, data, now)
    return {"source": "labcheck", "kind": kind, "key": key, "sent_at": iso_utc(now), "text": text,
            "triage": dict(data), "possibly_repeated": again}


def _scrub(value: Any, redact: Callable[[str], str]) -> Any:
    """Redact every string in a JSON-able value; a string under a secret-looking key is masked whole."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        masked = mask_params({str(k): v for k, v in value.items()})
        return {redact(k): MASK if masked[k] == MASK and isinstance(v, str) else _scrub(v, redact)
                for k, v in ((str(k), v) for k, v in value.items())}
    if isinstance(value, list | tuple):
        return [_scrub(v, redact) for v in value]
    return value


def redacted_json(doc: Mapping[str, Any], redact: Callable[[str], str], *, routing_key: str | None = None) -> bytes:
    """The body as sent: each string redacted, then the serialized whole; the routing key put in last."""
    text = json.dumps(_scrub(doc, redact), default=str, ensure_ascii=False)
    again = redact(text)
    try:
        redone = json.loads(again)
    except ValueError:  # a pattern cut through JSON syntax: the value-by-value redaction stands
        redone = json.loads(text)
    if routing_key is not None:
        redone = {"routing_key": routing_key, **redone}
    return json.dumps(redone, ensure_ascii=False).encode()


def content_hash(text: str, data: Mapping[str, Any]) -> str:
    """What makes an update new: its text, the severity, the probable cause."""
    cause = data.get("probable_cause") or {}
    doc = [text, data.get("severity"), cause.get("label"), cause.get("title")]
    return hashlib.sha256(json.dumps(doc, default=str).encode()).hexdigest()[:16]


# --- sending --------------------------------------------------------------------------------


class Notifier:
    """Posts each message once to every target, bounded in time; failures come back as deliveries."""

    def __init__(self, targets: Sequence[Target], *, settings: Settings, redact: Callable[[str], str],
                 sent_path: Path | str) -> None:
        self.targets = list(targets)
        self.connect_s = float(settings.connect_s)
        self.read_s = float(settings.read_s)
        # One slow attempt plus the back-off before a second: the most a send may take.
        self.budget_s = self.connect_s + self.read_s + BACKOFF_S
        self.redact = redact
        self.ledger = SentLedger(Path(sent_path))
        self._lock = threading.Lock()
        add = getattr(redact, "add", None)
        if callable(add):  # a Redactor: its log filter then masks the URLs httpx logs, too
            add(s for t in self.targets for s in t.secrets)

    @property
    def warnings(self) -> list[str]:
        return self.ledger.warnings

    def send(self, kind: str, *, key: str, text: str, data: Mapping[str, Any]) -> list[Delivery]:
        """Post one message (declaration, update, resolution) of incident ``key`` to every target."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        digest = content_hash(text, data)
        now = time.time()
        at = iso_utc(now)
        with self._lock:
            records = self.ledger.records(key)
            results: dict[str, Delivery] = {}
            todo: list[Target] = []
            again: set[str] = set()
            for target in self.targets:
                record = records.get(target.id, {})
                reason = already(kind, record, digest)
                if reason:
                    results[target.id] = Delivery(target.name, True, reason, skipped=True)
                    continue
                todo.append(target)
                if interrupted(kind, record, digest):
                    again.add(target.id)
            if todo:
                self.ledger.update(key, [t.id for t in todo], sending(kind, digest, at))

            def done(target: Target, delivery: Delivery) -> None:
                # Recorded as soon as this target answered: a slower one does not widen the window in
                # which a killed watcher has sent a message without saying so.
                self.ledger.update(key, [target.id], answered(kind, target.name, digest, at, ok=delivery.ok,
                                                              maybe_arrived=MAYBE_ARRIVED in delivery.detail))
                log.info("labcheck notify: %s %s -> %s: %s", kind, key, target.name,
                         ("sent, " if delivery.ok else "failed, ") + delivery.detail)

            results.update(self._post_all(todo, kind, key=key, text=text, data=data, now=now, again=again,
                                          done=done))
        return [results[t.id] for t in self.targets]

    def _post_all(self, targets: Sequence[Target], kind: str, *, key: str, text: str, data: Mapping[str, Any],
                  now: float, again: set[str], done: Callable[[Target, Delivery], None]) -> dict[str, Delivery]:
        """Every target at once, each in a daemon thread: a hung one is abandoned at the budget."""
        deadline = time.monotonic() + self.budget_s
        results: dict[str, Delivery] = {}
        threads = []
        for target in targets:
            def run(target: Target = target) -> None:
                delivery = self._deliver(target, kind, key=key, text=text, data=data, now=now,
                                         deadline=deadline, again=target.id in again)
                done(target, delivery)
                results[target.id] = delivery
            thread = threading.Thread(target=run, name=f"labcheck-notify-{target.id[:6]}", daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()) + 0.25)
        late = f"no answer within the budget of {self.budget_s:g} s"
        return {t.id: results.get(t.id) or Delivery(t.name, False, late) for t in targets}

    def _deliver(self, target: Target, kind: str, *, key: str, text: str, data: Mapping[str, Any],
                 now: float, deadline: float, again: bool) -> Delivery:
        try:
            doc = body(target, kind, key=key, text=text, data=data, now=now, again=again)
            content = redacted_json(doc, self.redact, routing_key=target.routing_key)
            ok, detail = self._post(target, content, deadline)
        except Exception as exc:  # noqa: BLE001 - a notification never breaks the caller's round
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        if again:
            detail = f"sent again, as the last watcher stopped while sending it: {detail}"
        return Delivery(target.name, ok, self._shown(target, detail))

    def _shown(self, target: Target, detail: str) -> str:
        for secret in sorted(target.secrets, key=len, reverse=True):
            detail = detail.replace(secret, MASK)
        return _clip(one_line(self.redact(detail)), 300)

    def _post(self, target: Target, content: bytes, deadline: float) -> tuple[bool, str]:
        """At most ATTEMPTS POSTs: retried after no connection, 429 or 5xx, never after a read timeout."""
        import httpx

        last = "not sent"
        for attempt in range(1, ATTEMPTS + 1):
            left = deadline - time.monotonic()
            if left < 0.05:
                return False, f"{last}; the budget of {self.budget_s:g} s is spent"
            timeout = httpx.Timeout(connect=min(self.connect_s, left), read=min(self.read_s, left),
                                    write=min(self.read_s, left), pool=min(self.connect_s, left))
            try:
                # trust_env: the receivers are outside the cluster; HTTPS_PROXY and NO_PROXY apply.
                with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=True,
                                  headers={"User-Agent": "labcheck"}) as client:
                    response = client.post(target.endpoint, content=content,
                                           headers={"Content-Type": "application/json"})
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                last = _transport_error(exc, self.connect_s)
            except httpx.TimeoutException:
                return False, f"no response within {min(self.read_s, left):g} s (not retried: {MAYBE_ARRIVED})"
            except httpx.HTTPError as exc:
                return False, f"{type(exc).__name__}: {exc}"
            else:
                tries = f" (attempt {attempt})" if attempt > 1 else ""
                if response.is_success:
                    return True, f"HTTP {response.status_code}{tries}"
                last = f"HTTP {response.status_code}{tries}: {one_line(response.text)[:160]}"
                if response.status_code != 429 and response.status_code < 500:
                    return False, last
            if attempt < ATTEMPTS:
                time.sleep(max(0.0, min(BACKOFF_S, deadline - time.monotonic() - 0.05)))
        return False, f"{last}, after {ATTEMPTS} attempts"


def _transport_error(exc: Exception, connect_s: float) -> str:
    if type(exc).__name__ == "ConnectTimeout":
        return f"timed out after {connect_s:g} s connecting"
    text = one_line(str(exc))
    return "connection refused" if "refused" in text.lower() else f"cannot connect ({text[:120]})"
