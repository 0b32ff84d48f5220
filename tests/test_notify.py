"""Notifications (issue 15, part 4): the URL forms, the three bodies, redaction, bounds, sent-once.

Every test posts to a real HTTP receiver on loopback (tests/receiver.py); nothing is mocked.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from labcheck import config
from labcheck.errors import ConfigError
from labcheck.evidence import RedactingLogFilter, Redactor
from labcheck.notify import Notifier, pagerduty_event, parse_targets
from receiver import Receiver

ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"  # 32 letters and digits, as PagerDuty's are

# The Events API v2 event, as PagerDuty documents it:
# - PagerDuty/api-schema, reference/events-v2/openapiv3.json (commit 5cd58ff2), "createV2Event":
#   required routing_key and event_action; event_action in trigger/acknowledge/resolve; dedup_key
#   "required unless the event_type is trigger"; Payload required summary, severity, source, with
#   severity in critical/warning/error/info, timestamp a date-time, custom_details an object;
# - PagerDuty/developer-docs, docs/events-API-v2/02-Trigger-Events.md ("Send an Alert Event"):
#   routing_key is the 32 character Integration Key, dedup_key at most 255 characters,
#   payload.summary at most 1024 characters.
# Stricter than those documents on purpose: no property they do not list (a misspelt field is
# silently ignored by PagerDuty, so it fails here), and a trigger must carry its payload.
PAGERDUTY_EVENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["routing_key", "event_action"],
    "additionalProperties": False,
    "properties": {
        "routing_key": {"type": "string", "minLength": 32, "maxLength": 32},
        "event_action": {"enum": ["trigger", "acknowledge", "resolve"]},
        "dedup_key": {"type": "string", "minLength": 1, "maxLength": 255},
        "client": {"type": "string"},
        "client_url": {"type": "string"},
        "links": {"type": "array", "items": {"type": "object", "required": ["href"]}},
        "images": {"type": "array", "items": {"type": "object", "required": ["src"]}},
        "payload": {
            "type": "object",
            "required": ["summary", "severity", "source"],
            "additionalProperties": False,
            "properties": {
                "summary": {"type": "string", "minLength": 1, "maxLength": 1024},
                "timestamp": {"type": "string", "format": "date-time"},
                "severity": {"enum": ["critical", "warning", "error", "info"]},
                "source": {"type": "string", "minLength": 1},
                "component": {"type": "string"},
                "group": {"type": "string"},
                "class": {"type": "string"},
                "custom_details": {"type": "object"},
            },
        },
    },
    "allOf": [
        {"if": {"properties": {"event_action": {"const": "trigger"}}}, "then": {"required": ["payload"]}},
        {"if": {"properties": {"event_action": {"enum": ["acknowledge", "resolve"]}}},
         "then": {"required": ["dedup_key"]}},
    ],
}


def assert_pagerduty_event(doc: Any) -> None:
    jsonschema.Draft202012Validator(PAGERDUTY_EVENT_SCHEMA, format_checker=jsonschema.FormatChecker()).validate(doc)
    if "payload" in doc and "timestamp" in doc["payload"]:
        datetime.fromisoformat(doc["payload"]["timestamp"])  # checked even without rfc3339-validator


def verdict(severity: str | None = "SEV-2", why: str = "21% of requests answered 5xx") -> dict[str, Any]:
    return {
        "severity": severity,
        "target": "configured target",
        "affected_components": ["api_gateway", "database"],
        "probable_cause": {"label": "high-error-rate", "scenario": "high-error-rate", "title": "High error rate",
                           "component": "api_gateway", "severity": severity, "check": "check_error_ratio",
                           "checks": ["check_error_ratio"], "why": why, "explains": [], "caveat": None},
        "checks": [{"nodeid": "checks/api_gateway.py::check_error_ratio", "outcome": "failed"}],
    }


@pytest.fixture
def settings() -> config.Settings:
    return config.load(cli={"timeout": (0.5, "test")}, environ={}, use_sandbox=False)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(statuses=[202])
    yield r
    r.close()


def notifier(urls: list[str], settings: config.Settings, tmp_path: Path,
             redact: Any = None) -> Notifier:
    return Notifier(parse_targets(urls), settings=settings, redact=redact or Redactor(),
                    sent_path=tmp_path / "notify-sent.json")


# --- the URL forms ------------------------------------------------------------------------------


def test_each_url_form_names_its_kind_and_endpoint_and_shows_no_secret() -> None:
    slack, pd, pd_eu, hook = parse_targets([
        "slack+https://hooks.slack.com/services/T000/B000/XXXXXXXX",
        f"pagerduty://{ROUTING_KEY}",
        f"pagerduty+https://events.eu.pagerduty.com/v2/enqueue?routing_key={ROUTING_KEY}",
        "webhook+http://10.0.0.5:8080/hooks/labcheck?token=abc",
    ])
    assert (slack.kind, slack.endpoint) == ("slack", "https://hooks.slack.com/services/T000/B000/XXXXXXXX")
    assert slack.name == "slack+https://hooks.slack.com/***"
    assert (pd.kind, pd.endpoint, pd.routing_key) == ("pagerduty", "https://events.pagerduty.com/v2/enqueue",
                                                      ROUTING_KEY)
    assert pd.name == "pagerduty+https://events.pagerduty.com/v2/enqueue"
    assert (pd_eu.endpoint, pd_eu.routing_key) == ("https://events.eu.pagerduty.com/v2/enqueue", ROUTING_KEY)
    assert (hook.kind, hook.endpoint, hook.name) == ("webhook", "http://10.0.0.5:8080/hooks/labcheck?token=abc",
                                                     "webhook+http://10.0.0.5:8080/***")
    assert len({t.id for t in (slack, pd, pd_eu, hook)}) == 4
    assert parse_targets(["slack+https://h.example/a", "slack+https://h.example/a"]) == parse_targets(
        ["slack+https://h.example/a"])


@pytest.mark.parametrize("url, reason", [
    ("https://hooks.slack.com/services/T000/B000/XXXXXXXX", "unknown notify scheme 'https'"),
    ("slak+https://hooks.slack.com/services/T000/B000/XXXXXXXX", "unknown notify scheme 'slak+https'"),
    ("slack+ftp://hooks.slack.com/services/T000/B000/XXXXXXXX", "unknown notify scheme 'slack+ftp'"),
    ("smtp://mail.example.com", "unknown notify scheme 'smtp'"),
    ("hooks.slack.com/services/T000/B000/XXXXXXXX", "not a URL"),
    ("", "not a URL"),
    ("slack+https://", "no host"),
    ("webhook+http://127.0.0.1:99999/hook", "malformed URL"),
    ("webhook+http://127.0.0.1:port/hook", "malformed URL"),
    ("pagerduty://", "no PagerDuty routing key"),
    ("pagerduty://tooshortkey", "is 11 characters"),
    (f"pagerduty://{ROUTING_KEY}/v2/enqueue", "takes the key alone"),
    ("pagerduty+http://127.0.0.1:9/v2/enqueue", "no PagerDuty routing key"),
])
def test_a_bad_url_is_one_config_error_line_naming_it_without_its_secret(url: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_targets(["webhook+https://fine.example/hook", url])
    message = str(info.value)
    assert "\n" not in message and message.startswith("--notify ")
    assert reason in message
    for secret in ("XXXXXXXX", ROUTING_KEY, "tooshortkey"):
        assert secret not in message


# --- the bodies ---------------------------------------------------------------------------------


def test_slack_gets_the_markdown_as_text(receiver: Receiver, settings: config.Settings, tmp_path: Path) -> None:
    text = "*SEV-2* declared: High error rate\n- started 10:30 UTC"
    [delivery] = notifier([f"slack+{receiver.url}/services/T1/B2/SECRETPATH"], settings, tmp_path).send(
        "declaration", key="inc-1", text=text, data=verdict())
    assert delivery.ok and not delivery.skipped, delivery
    assert delivery.target == f"slack+{receiver.url}/***" and delivery.detail == "HTTP 202"
    [request] = receiver.requests
    assert (request.method, request.path) == ("POST", "/services/T1/B2/SECRETPATH")
    assert request.headers["Content-Type"] == "application/json"
    assert request.json == {"text": text}


def test_the_webhook_gets_kind_key_text_and_the_triage(receiver: Receiver, settings: config.Settings,
                                                        tmp_path: Path) -> None:
    data = verdict()
    [delivery] = notifier([f"webhook+{receiver.url}/hook"], settings, tmp_path).send(
        "update", key="inc-1", text="update 1", data=data)
    assert delivery.ok, delivery
    [doc] = receiver.bodies()
    assert {k: doc[k] for k in ("source", "kind", "key", "text", "triage")} == {
        "source": "labcheck", "kind": "update", "key": "inc-1", "text": "update 1", "triage": data}
    datetime.fromisoformat(doc["sent_at"])


def test_pagerduty_triggers_then_resolves_one_alert_with_schema_valid_events(
        receiver: Receiver, settings: config.Settings, tmp_path: Path) -> None:
    n = notifier([f"pagerduty+{receiver.url}/v2/enqueue?routing_key={ROUTING_KEY}"], settings, tmp_path)
    long_why = "the API answered 5xx " * 100
    for kind, text, data in [("declaration", "declared", verdict("SEV-2")),
                             ("update", "now SEV-1", verdict("SEV-1", why=long_why)),
                             ("resolution", "resolved", verdict(None))]:
        [delivery] = n.send(kind, key="labcheck/prod/2026-11-30T10:30:00Z", text=text, data=data)
        assert delivery.ok, delivery
        assert ROUTING_KEY not in delivery.target + delivery.detail
    assert [r.path for r in receiver.requests] == ["/v2/enqueue"] * 3
    trigger, update, resolve = receiver.bodies()
    for doc in (trigger, update, resolve):
        assert_pagerduty_event(doc)
        assert doc["routing_key"] == ROUTING_KEY
        assert doc["dedup_key"] == "labcheck/prod/2026-11-30T10:30:00Z"
    assert [d["event_action"] for d in (trigger, update, resolve)] == ["trigger", "trigger", "resolve"]
    assert trigger["payload"]["summary"] == "SEV-2 High error rate: 21% of requests answered 5xx"
    assert trigger["payload"]["severity"] == "error" and update["payload"]["severity"] == "critical"
    assert trigger["payload"]["source"] == "configured target"
    assert trigger["payload"]["component"] == "api_gateway, database"
    assert trigger["payload"]["custom_details"]["probable_cause"]["label"] == "high-error-rate"
    assert len(update["payload"]["summary"]) == 1024 and update["payload"]["summary"].endswith("…")


@pytest.mark.parametrize("severity, mapped", [("SEV-1", "critical"), ("SEV-2", "error"),
                                              ("SEV-3", "warning"), ("SEV-4", "info"), (None, "info")])
def test_severity_maps_onto_pagerdutys(severity: str | None, mapped: str) -> None:
    event = {"routing_key": ROUTING_KEY, **pagerduty_event("update", "k", "t", verdict(severity), time.time())}
    assert_pagerduty_event(event)
    assert event["payload"]["severity"] == mapped
    assert event["payload"]["summary"] == f"{severity + ' ' if severity else ''}High error rate: 21% of requests answered 5xx"


def test_a_record_of_an_odd_shape_does_not_crash_the_sender(receiver: Receiver, settings: config.Settings,
                                                            tmp_path: Path) -> None:
    n = notifier([f"slack+{receiver.url}/services/x"], settings, tmp_path)
    [target] = n.targets
    (tmp_path / "notify-sent.json").write_text(json.dumps(
        {"version": 1, "incidents": {"inc-1": {target.id: {"declaration": "yes", "update": 3}}}}))
    declared, updated = (n.send(kind, key="inc-1", text="t", data=verdict()) for kind in ("declaration", "update"))
    assert declared[0].skipped and declared[0].detail == "declaration already sent at ?"
    assert updated[0].ok and not updated[0].skipped, updated


def test_the_schema_is_not_vacuous() -> None:
    good = {"routing_key": ROUTING_KEY, **pagerduty_event("declaration", "k", "t", verdict(), time.time())}
    assert_pagerduty_event(good)
    bad = [
        {**good, "payload": {**good["payload"], "severity": "SEV-2"}},
        {**good, "payload": {k: v for k, v in good["payload"].items() if k != "summary"}},
        {**good, "payload": {**good["payload"], "summary": "x" * 1025}},
        {k: v for k, v in good.items() if k != "payload"},
        {"routing_key": ROUTING_KEY, "event_action": "resolve"},
        {**good, "routing_key": "short"},
        {**good, "dedupkey": "k"},
    ]
    for doc in bad:
        with pytest.raises(jsonschema.ValidationError):
            assert_pagerduty_event(doc)


# --- redaction ----------------------------------------------------------------------------------


def test_secrets_never_reach_a_body_the_routing_key_only_its_field(
        receiver: Receiver, settings: config.Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    known = "kn0wn-db-passw0rd"
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJsYWJjaGVjayJ9.c2lnbmF0dXJlc2ln"
    planted = [known, jwt, "hunter2hunter2", "AKIAABCDEFGHIJKLMNOP", "abcdefgh12345678", "plain-api-key-value"]
    text = (f"DB at postgresql://lab:{known}@db:5432/lab, token {jwt}, JWT_SECRET: hunter2hunter2, "
            f"aws AKIAABCDEFGHIJKLMNOP, Authorization: Bearer abcdefgh12345678")
    data = verdict(why=f"password={known} was refused")
    data["facts"] = {"api_key": "plain-api-key-value", "auth_secret_rotated": True}
    redactor = Redactor([known, ROUTING_KEY])  # the watcher may well know the key as a secret too
    urls = [f"slack+{receiver.url}/services/T1/B2/SECRETPATH", f"webhook+{receiver.url}/hook",
            f"pagerduty+{receiver.url}/v2/enqueue?routing_key={ROUTING_KEY}"]
    caplog.set_level(logging.DEBUG)
    caplog.handler.addFilter(RedactingLogFilter(redactor))
    deliveries = notifier(urls, settings, tmp_path, redactor).send("declaration", key="inc-1", text=text, data=data)
    assert [d.ok for d in deliveries] == [True, True, True], deliveries
    assert len(receiver.requests) == 3
    for request in receiver.requests:
        raw = request.raw.decode()
        for secret in planted:
            assert secret not in raw, (request.path, secret)
        json.loads(raw)  # still JSON after redaction
        if request.path == "/v2/enqueue":
            assert raw.count(ROUTING_KEY) == 1 and request.json["routing_key"] == ROUTING_KEY
        else:
            assert ROUTING_KEY not in raw
    webhook = next(r.json for r in receiver.requests if r.path == "/hook")
    assert webhook["triage"]["facts"] == {"api_key": "***", "auth_secret_rotated": True}
    shown = " ".join(d.target + " " + d.detail for d in deliveries) + caplog.text
    assert "labcheck notify: declaration inc-1" in caplog.text
    assert "HTTP Request: POST ***" in caplog.text  # httpx logs the Slack URL; the filter masks it
    for secret in (ROUTING_KEY, "SECRETPATH"):
        assert secret not in shown


# --- bounded: a dead or hanging receiver --------------------------------------------------------


def test_a_hanging_receiver_is_a_failed_delivery_within_the_budget(settings: config.Settings,
                                                                  tmp_path: Path) -> None:
    hung, fine = Receiver(hang=True), Receiver(statuses=[200])
    try:
        n = notifier([f"webhook+{hung.url}/hook", f"slack+{fine.url}/services/x"], settings, tmp_path)
        start = time.monotonic()
        slow, quick = n.send("declaration", key="inc-1", text="t", data=verdict())
        elapsed = time.monotonic() - start
    finally:
        hung.close()
        fine.close()
    assert elapsed < n.budget_s + 1.0, elapsed  # an upper bound for sanity; speed is bench/'s business
    assert not slow.ok and "no response within 0.5 s" in slow.detail, slow
    assert quick.ok, quick
    assert len(hung.requests) == 1  # a read timeout is not retried: the message may have arrived


def test_a_receiver_that_never_finishes_its_answer_is_abandoned_at_the_budget(settings: config.Settings,
                                                                              tmp_path: Path) -> None:
    trickling = Receiver(trickle=True)  # a byte every 0.2 s: httpx's read timeout (0.5 s) never fires
    try:
        n = notifier([f"webhook+{trickling.url}/hook"], settings, tmp_path)
        start = time.monotonic()
        [delivery] = n.send("declaration", key="inc-1", text="t", data=verdict())
        elapsed = time.monotonic() - start
    finally:
        trickling.close()
    assert elapsed < n.budget_s + 1.0, elapsed
    assert not delivery.ok and delivery.detail == f"no answer within the budget of {n.budget_s:g} s", delivery


def test_a_500_is_retried_once_then_failed_and_not_recorded(settings: config.Settings, tmp_path: Path) -> None:
    failing = Receiver(statuses=[500])
    try:
        n = notifier([f"webhook+{failing.url}/hook"], settings, tmp_path)
        start = time.monotonic()
        [delivery] = n.send("declaration", key="inc-1", text="t", data=verdict())
        assert time.monotonic() - start < n.budget_s + 1.0
    finally:
        failing.close()
    assert not delivery.ok and delivery.detail.startswith("HTTP 500 (attempt 2)"), delivery
    assert delivery.detail.endswith("after 2 attempts")
    assert len(failing.requests) == 2
    assert json.loads((tmp_path / "notify-sent.json").read_text())["incidents"] == {}  # marked, then taken back


def test_a_500_then_202_is_delivered_on_the_second_attempt(settings: config.Settings, tmp_path: Path) -> None:
    flaky = Receiver(statuses=[503, 202])
    try:
        [delivery] = notifier([f"webhook+{flaky.url}/hook"], settings, tmp_path).send(
            "declaration", key="inc-1", text="t", data=verdict())
    finally:
        flaky.close()
    assert delivery.ok and delivery.detail == "HTTP 202 (attempt 2)", delivery


def test_a_4xx_is_not_retried_and_nobody_listening_is_a_failed_delivery(settings: config.Settings,
                                                                        tmp_path: Path) -> None:
    refusing = Receiver(statuses=[400])
    dead = Receiver()
    dead.close()  # its port is now closed
    try:
        bad, gone = notifier([f"webhook+{refusing.url}/hook", f"webhook+{dead.url}/hook"], settings,
                             tmp_path).send("declaration", key="inc-1", text="t", data=verdict())
    finally:
        refusing.close()
    assert not bad.ok and bad.detail.startswith("HTTP 400:") and len(refusing.requests) == 1, bad
    assert not gone.ok and "connection refused, after 2 attempts" in gone.detail, gone


# --- sent once ----------------------------------------------------------------------------------


def test_each_message_is_sent_once_across_a_restart(receiver: Receiver, settings: config.Settings,
                                                    tmp_path: Path) -> None:
    urls = [f"slack+{receiver.url}/services/x", f"pagerduty+{receiver.url}/v2/enqueue?routing_key={ROUTING_KEY}"]

    def send(kind: str, text: str, data: dict[str, Any] | None = None) -> list[bool]:
        # a new Notifier each time: a watcher restarted between any two messages
        deliveries = notifier(urls, settings, tmp_path).send(kind, key="inc-1", text=text, data=data or verdict())
        assert all(d.ok for d in deliveries), deliveries
        return [not d.skipped for d in deliveries]

    assert send("declaration", "declared") == [True, True]
    assert send("declaration", "declared") == [False, False]
    assert send("update", "declared") == [False, False]  # same content as what was last sent
    assert send("update", "update 1") == [True, True]
    assert send("update", "update 1") == [False, False]
    assert send("update", "update 1", verdict("SEV-1")) == [True, True]  # the severity changed
    assert send("resolution", "resolved", verdict(None)) == [True, True]
    assert send("resolution", "resolved", verdict(None)) == [False, False]
    assert send("update", "update 2") == [False, False]  # resolved: no trigger reopens it
    assert len(receiver.requests) == 8
    record = json.loads((tmp_path / "notify-sent.json").read_text())
    assert record["version"] == 1
    [(target_id, entry), _] = record["incidents"]["inc-1"].items()
    assert entry["update"]["count"] == 2 and set(entry) >= {"declaration", "update", "resolution", "target"}
    assert ROUTING_KEY not in (tmp_path / "notify-sent.json").read_text()


def test_each_target_is_recorded_when_it_answers_not_when_the_slowest_does(settings: config.Settings,
                                                                           tmp_path: Path) -> None:
    """A watcher killed while one receiver is still being retried has recorded the others (issue 15)."""
    quick, hung = Receiver(statuses=[202]), Receiver(hang=True)
    urls = [f"pagerduty+{quick.url}/v2/enqueue?routing_key={ROUTING_KEY}", f"webhook+{hung.url}/hook"]
    ledger = tmp_path / "notify-sent.json"
    try:
        first = notifier(urls, settings, tmp_path)
        sender = threading.Thread(target=first.send, kwargs={"kind": "declaration", "key": "inc-1", "text": "t",
                                                             "data": verdict()}, daemon=True)
        sender.start()
        deadline = time.monotonic() + 10
        records: dict[str, Any] = {}
        while time.monotonic() < deadline and sender.is_alive():
            records = json.loads(ledger.read_text())["incidents"].get("inc-1", {}) if ledger.exists() else {}
            if any("declaration" in r for r in records.values()) and hung.requests:
                break
            time.sleep(0.01)
        # Recorded while the hung receiver still holds the sender: the record did not wait for it.
        assert sender.is_alive() and len(hung.requests) == 1, (records, hung.requests)
        pd, hook = (t.id for t in first.targets)
        assert "declaration" in records[pd] and "sending" not in records[pd]
        assert records[hook]["sending"]["kind"] == "declaration"  # still in flight
        # The watcher is "killed" here; its successor sends the declaration again.
        again = notifier(urls, settings, tmp_path).send("declaration", key="inc-1", text="t", data=verdict())
    finally:
        quick.close()
        hung.close()
    assert len(quick.requests) == 1 and again[0].skipped, again  # PagerDuty: not sent twice
    # The webhook was cut off mid-POST, so it may have arrived: sent again, and it says so.
    assert "sent again" in again[1].detail and len(hung.requests) == 2, again
    assert hung.requests[1].json["possibly_repeated"] is True and hung.requests[0].json["possibly_repeated"] is False


def test_a_message_cut_off_mid_post_is_sent_again_marked_as_a_possible_repeat(receiver: Receiver,
                                                                             settings: config.Settings,
                                                                             tmp_path: Path) -> None:
    n = notifier([f"slack+{receiver.url}/services/x"], settings, tmp_path)
    [target] = n.targets
    from labcheck.notify import content_hash

    mark = {"kind": "declaration", "hash": content_hash("declared", verdict()), "at": "2026-11-30T12:00:00Z"}
    (tmp_path / "notify-sent.json").write_text(json.dumps(
        {"version": 1, "incidents": {"inc-1": {target.id: {"sending": mark}}}}))
    [delivery] = n.send("declaration", key="inc-1", text="declared", data=verdict())
    assert delivery.ok and delivery.detail.startswith("sent again, as the last watcher stopped while sending it")
    [sent] = receiver.bodies()
    assert sent["text"].startswith("_(Sent again: labcheck stopped while sending this message")
    assert sent["text"].endswith("declared")
    entry = json.loads((tmp_path / "notify-sent.json").read_text())["incidents"]["inc-1"][target.id]
    assert "declaration" in entry and "sending" not in entry
    # Another message (an update) after a cut-off declaration is not marked.
    [update] = n.send("update", key="inc-1", text="update 1", data=verdict())
    assert update.ok and "sent again" not in update.detail and not receiver.bodies()[1]["text"].startswith("_(")


def test_another_incident_key_is_another_incident(receiver: Receiver, settings: config.Settings,
                                                  tmp_path: Path) -> None:
    n = notifier([f"slack+{receiver.url}/services/x"], settings, tmp_path)
    for key in ("inc-1", "inc-2"):
        [delivery] = n.send("declaration", key=key, text="declared", data=verdict())
        assert delivery.ok and not delivery.skipped
    assert len(receiver.requests) == 2


@pytest.mark.parametrize("corrupt", [b"{not json", b"[]", b'{"version": 2, "incidents": {}}', b"\xff\xfe\x00"])
def test_a_corrupt_sent_file_is_moved_aside_not_a_crash(receiver: Receiver, settings: config.Settings,
                                                        tmp_path: Path, corrupt: bytes) -> None:
    (tmp_path / "notify-sent.json").write_bytes(corrupt)
    n = notifier([f"slack+{receiver.url}/services/x"], settings, tmp_path)
    [delivery] = n.send("declaration", key="inc-1", text="declared", data=verdict())
    assert delivery.ok and not delivery.skipped, delivery
    [aside] = tmp_path.glob("notify-sent.json.corrupt-*")
    assert aside.read_bytes() == corrupt
    assert "is corrupt" in n.warnings[0] and "moved aside" in n.warnings[0]
    assert "inc-1" in json.loads((tmp_path / "notify-sent.json").read_text())["incidents"]


def test_an_unknown_kind_is_a_programming_error(settings: config.Settings, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        notifier([], settings, tmp_path).send("acknowledge", key="k", text="t", data={})
