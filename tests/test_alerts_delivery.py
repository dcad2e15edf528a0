"""Alert delivery over real HTTP (a receiver on 127.0.0.1) through the outbox in a DuckDB file.

Covers the retry semantics (2xx / 429 + Retry-After / 5xx / 4xx / connection errors), the Standard Webhooks
signature checked by an independent verifier, at-least-once delivery across outages, crashes and restarts,
idempotent enqueueing, resolve events, rate limits, deadlines, and the shared "no secret in any error, log
line or repr" test over every notifier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from alerting_support import (
    OG_KEY,
    PD_KEY,
    SLACK_TOKEN,
    T0,
    WH_SECRET,
    Receiver,
    Reply,
    incident,
    make_config,
    run_until_idle,
)

from app.alerts import outbox
from app.alerts.config import RECEIVER_TYPES, AlertingConfig, RouteConfig, alerting_from_config
from app.alerts.notifiers import NOTIFIERS, Notification, build_notifier, build_notifiers
from app.alerts.outbox import RateLimiter, deliver_due, delivery_log, enqueue, enqueue_incident, send_test
from detectors.incidents import Incident
from ingest import alerts_store
from ingest.results import list_incidents, save_causes, save_detection
from ingest.store import Store


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "rootwise.duckdb"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    s = Store(db)
    yield s
    s.close()


# -- Standard Webhooks signature, verified independently ----------------------------------------------
def verify_standard_webhook(
    secret: str, headers: dict[str, str], body: bytes, *, tolerance_s: int = 300
) -> bool:
    """A verifier written from the Standard Webhooks spec, sharing no code with the signer."""
    msg_id, ts, sigs = headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"]
    if abs(time.time() - int(ts)) > tolerance_s:
        return False
    key = base64.b64decode(secret.split("_", 1)[1])
    expected = hmac.new(key, msg_id.encode() + b"." + ts.encode() + b"." + body, hashlib.sha256).digest()
    for sig in sigs.split(" "):
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(value), expected):
            return True
    return False


def test_webhook_signature_verifies_and_id_is_stable_across_retries(
    receiver: Receiver, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(monkeypatch, receiver.url)
    answers = iter([503, 200])
    receiver.reply = lambda p, h, b: (next(answers), {}, b"")
    now = datetime.now(UTC).replace(tzinfo=None)  # real time: the verifier checks the timestamp's freshness
    (row_id,) = enqueue(
        store, incident(), "trigger", [config.receivers["hook"]], now=now, external_url="http://rw"
    )
    run_until_idle(store, config, now, step_s=2)
    first, second = receiver.received
    for r in (first, second):
        assert r.headers["content-type"] == "application/json"
        assert verify_standard_webhook(WH_SECRET, r.headers, r.body)
        assert not verify_standard_webhook(WH_SECRET, r.headers, r.body + b" ")  # tampered body
        assert not verify_standard_webhook("whsec_" + base64.b64encode(b"x" * 32).decode(), r.headers, r.body)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == f"msg_{row_id}"
    body = second.json()
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "hook"
    assert body["alerts"][0]["generatorURL"] == "http://rw/incident/inc-1"


# -- retry semantics per status ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "headers", "ok", "retryable", "retry_after"),
    [
        (200, {}, True, False, None),
        (202, {}, True, False, None),
        (429, {"Retry-After": "7"}, False, True, 7.0),
        (503, {"Retry-After": "HTTPDATE"}, False, True, "date"),
        (500, {}, False, True, None),
        (400, {}, False, False, None),
        (404, {}, False, False, None),
        (410, {}, False, False, None),
        (301, {"Location": "http://127.0.0.1:1/elsewhere"}, False, False, None),
    ],
)
def test_status_classification(
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    headers: dict[str, str],
    ok: bool,
    retryable: bool,
    retry_after: Any,
) -> None:
    if headers.get("Retry-After") == "HTTPDATE":
        headers = {"Retry-After": format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)}
    receiver.reply = lambda p, h, b: (status, headers, b"nope")
    config = make_config(monkeypatch, receiver.url)
    n = Notification("ob_x", "hook", "trigger", "inc-1", incident(), "http://rw/incident/inc-1")
    result = build_notifier(config.receivers["hook"]).send(n)
    assert (result.ok, result.retryable, result.status) == (ok, retryable, status)
    if retry_after == "date":
        assert result.retry_after is not None and 80 <= result.retry_after <= 91
    else:
        assert result.retry_after == retry_after
    if not ok:
        assert f"HTTP {status}" in (result.error or "")
    assert len(receiver.received) == 1  # a redirect is not followed


def test_connection_refused_is_retryable(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(monkeypatch, receiver.url)
    receiver.stop()
    n = Notification("ob_x", "pd", "trigger", "inc-1", incident(), "http://rw/incident/inc-1")
    result = build_notifier(config.receivers["pd"]).send(n)
    assert result.retryable and not result.ok and "cannot connect" in (result.error or "")


# -- the shared secret test over every notifier --------------------------------------------------------
SECRETS = (PD_KEY, OG_KEY, WH_SECRET, WH_SECRET.removeprefix("whsec_"), SLACK_TOKEN, f"B02/{SLACK_TOKEN}")


def echo_everything(status: int) -> Callable[[str, dict[str, str], bytes], Reply]:
    """A hostile receiver: answers ``status`` and echoes the path, every header and the body back."""

    def reply(path: str, headers: dict[str, str], body: bytes) -> Reply:
        echoed = json.dumps({"path": path, "headers": headers, "body": body.decode()}).encode()
        return status, {"Retry-After": "1"}, b"error: " + echoed + b" " + body

    return reply


@pytest.mark.parametrize("receiver_type", list(NOTIFIERS))
def test_no_secret_in_any_error_log_or_repr(
    receiver_type: str,
    receiver: Receiver,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert set(NOTIFIERS) == set(RECEIVER_TYPES)  # the parametrisation covers every notifier
    caplog.set_level(logging.DEBUG)
    config = make_config(monkeypatch, receiver.url)
    (rc,) = [r for r in config.receivers.values() if r.type == receiver_type]
    notifier = build_notifier(rc)
    seen: list[str] = [repr(config), str(config), repr(rc), repr(notifier), str(rc.url)]
    n = Notification("ob_x", rc.name, "trigger", "inc-1", incident(), "http://rw/incident/inc-1")
    seen.append(repr(notifier.request(n)))
    for status in (500, 400, 429):
        receiver.reply = echo_everything(status)
        result = notifier.send(n)
        assert not result.ok
        seen += [str(result.error), repr(result)]
    # the same through the outbox: delivery log, log lines
    enqueue(store, incident(), "trigger", [rc], now=T0)
    receiver.reply = echo_everything(503)
    deliver_due(store, {rc.name: notifier}, T0, rng=random.Random(1))
    receiver.stop()  # connection refused
    deliver_due(store, {rc.name: notifier}, T0 + timedelta(hours=1), rng=random.Random(1))
    seen.append(repr(send_test(rc)))
    seen.append(json.dumps(delivery_log(store)))
    seen += [rec.getMessage() for rec in caplog.records]
    assert receiver.received, "the receiver must have seen (and echoed) the secrets"
    text = "\n".join(seen)
    assert "***" in text  # redaction happened: the echoed secret was there to leak
    for secret in SECRETS:
        assert secret not in text, f"{receiver_type}: a secret leaked"


# -- the outbox -----------------------------------------------------------------------------------------
def test_receiver_down_then_back_delivers_each_notification_exactly_once(
    receiver: Receiver, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(monkeypatch, receiver.url)
    targets = [config.receivers["pd"], config.receivers["hook"], config.receivers["og"]]
    for i in range(1, 6):
        enqueue(store, incident(i), "trigger", targets, now=T0)
    receiver.stop()  # down: connection refused
    notifiers, rng, limiter = build_notifiers(config), random.Random(3), RateLimiter()
    now = T0
    for _ in range(20):  # ten minutes of outage
        deliver_due(store, notifiers, now, rng=rng, limiter=limiter)
        now += timedelta(seconds=30)
    log_rows = delivery_log(store)
    assert all(r["status"] == "pending" for r in log_rows) and any(r["attempts"] > 0 for r in log_rows)
    assert all("cannot connect" in r["last_error"] for r in log_rows if r["attempts"])
    # two incidents resolve during the outage
    for i in (2, 4):
        enqueue(store, incident(i, "resolved"), "resolve", targets, now=now)
    receiver.start()  # back, on the same port
    run_until_idle(store, config, now, step_s=30)
    got = Counter()
    for r in receiver.ok():
        body = r.json()
        if r.path == "/pd":
            got["pd", body["dedup_key"], body["event_action"]] += 1
        elif r.path == "/hook":  # one message may carry a group's alerts: count each alert
            for a in body["alerts"]:
                got["hook", a["labels"]["incident_id"], a["status"]] += 1
        elif r.path == "/og/v2/alerts":
            got["og", body["alias"], "create"] += 1
        else:
            got["og", r.path, "close"] += 1
    assert set(got.values()) == {1}, got  # nothing twice
    assert len(got) == 3 * 5 + 3 * 2  # every trigger, every resolve
    assert all(r["status"] == "delivered" for r in delivery_log(store))
    # a resolve never overtook its trigger
    pd_events = [(r.json()["dedup_key"], r.json()["event_action"]) for r in receiver.ok("/pd")]
    for i in (2, 4):
        assert pd_events.index((f"inc-{i}", "trigger")) < pd_events.index((f"inc-{i}", "resolve"))


def test_429_retry_after_is_honoured(
    receiver: Receiver, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(monkeypatch, receiver.url)
    answers = iter([(429, {"Retry-After": "120"}), (202, {})])
    receiver.reply = lambda p, h, b: (*next(answers), b"")
    (rid,) = enqueue(store, incident(), "trigger", [config.receivers["pd"]], now=T0)
    notifiers, rng = build_notifiers(config), random.Random(0)
    deliver_due(store, notifiers, T0, rng=rng)
    row = alerts_store.get(store, rid)
    assert row is not None and row.status == "pending" and row.attempts == 1
    assert row.next_attempt is not None and row.next_attempt >= T0 + timedelta(seconds=120)
    assert "HTTP 429" in (row.last_error or "")
    deliver_due(store, notifiers, T0 + timedelta(seconds=119), rng=rng)
    assert len(receiver.received) == 1  # not before Retry-After
    deliver_due(store, notifiers, row.next_attempt, rng=rng)
    assert len(receiver.received) == 2 and alerts_store.get(store, rid).status == "delivered"  # type: ignore[union-attr]


def test_400_is_not_retried(receiver: Receiver, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(monkeypatch, receiver.url)
    receiver.reply = lambda p, h, b: (
        400,
        {},
        b'{"status":"invalid event","message":"Event object is invalid"}',
    )
    (rid,) = enqueue(store, incident(), "trigger", [config.receivers["pd"]], now=T0)
    notifiers = build_notifiers(config)
    for k in range(10):
        deliver_due(store, notifiers, T0 + timedelta(minutes=k), rng=random.Random(0))
    row = alerts_store.get(store, rid)
    assert row is not None and row.status == "failed" and row.attempts == 1
    assert "HTTP 400" in (row.last_error or "") and "Event object is invalid" in (row.last_error or "")
    assert len(receiver.received) == 1


def test_deadline_makes_a_row_dead(receiver: Receiver, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(monkeypatch, receiver.url, hook={"deadline": "3m"})
    receiver.reply = lambda p, h, b: (503, {}, b"overloaded")
    (rid,) = enqueue(store, incident(), "trigger", [config.receivers["hook"]], now=T0)
    end = run_until_idle(store, config, T0, step_s=10)
    row = alerts_store.get(store, rid)
    assert row is not None and row.status == "dead" and row.attempts >= 3
    assert end <= T0 + timedelta(minutes=3, seconds=10)
    assert "HTTP 503" in (row.last_error or "")
    sent = len(receiver.received)
    deliver_due(store, build_notifiers(config), end + timedelta(hours=1), rng=random.Random(0))
    assert len(receiver.received) == sent  # dead rows are never sent again


def test_backoff_is_full_jitter_exponential_capped(
    receiver: Receiver, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(monkeypatch, receiver.url)
    receiver.reply = lambda p, h, b: (500, {}, b"")
    (rid,) = enqueue(store, incident(), "trigger", [config.receivers["hook"]], now=T0)
    notifiers, rng, now, delays = build_notifiers(config), random.Random(11), T0, []
    for attempt in range(14):
        deliver_due(store, notifiers, now, rng=rng)
        row = alerts_store.get(store, rid)
        assert row is not None and row.attempts == attempt + 1 and row.next_attempt is not None
        delays.append((row.next_attempt - now).total_seconds())
        now = row.next_attempt
    assert all(0 <= d <= min(300, 2**a) for a, d in enumerate(delays))
    assert max(delays[9:]) > 60  # grows past a minute once the window allows it


def test_restart_mid_way_still_delivers_pending_rows(
    receiver: Receiver, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(monkeypatch, receiver.url)
    s = Store(db)
    ids = [
        rid
        for i in (1, 2, 3)
        for rid in enqueue(s, incident(i), "trigger", [config.receivers["hook"]], now=T0)
    ]
    receiver.reply = lambda p, h, b: (503, {}, b"")
    deliver_due(s, build_notifiers(config), T0, rng=random.Random(0))
    s.close()  # the process stops with everything pending
    receiver.reply = lambda p, h, b: (200, {}, b"")
    s2 = Store(db)
    try:
        assert {r["id"] for r in delivery_log(s2, status="pending")} == set(ids)
        run_until_idle(s2, config, T0 + timedelta(minutes=10))
        assert {r["id"] for r in delivery_log(s2, status="delivered")} == set(ids)
    finally:
        s2.close()
    # the three are one group: delivered together, each alert once
    sent = [a["labels"]["incident_id"] for r in receiver.ok() for a in r.json()["alerts"]]
    assert sorted(sent) == ["inc-1", "inc-2", "inc-3"]


def test_crash_between_send_and_mark_resends_never_loses(
    receiver: Receiver, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(monkeypatch, receiver.url)
    (rid,) = enqueue(store, incident(), "trigger", [config.receivers["hook"]], now=T0)
    real_mark = alerts_store.mark_delivered

    def crash(*args: Any, **kwargs: Any) -> bool:
        raise SystemExit("killed after the send, before the mark")

    monkeypatch.setattr(alerts_store, "mark_delivered", crash)
    with pytest.raises(SystemExit):
        deliver_due(store, build_notifiers(config), T0, rng=random.Random(0))
    assert alerts_store.get(store, rid).status == "pending"  # type: ignore[union-attr]
    monkeypatch.setattr(alerts_store, "mark_delivered", real_mark)
    deliver_due(store, build_notifiers(config), T0 + timedelta(seconds=1), rng=random.Random(0))
    assert alerts_store.get(store, rid).status == "delivered"  # type: ignore[union-attr]
    # at least once: sent twice, with the same webhook-id so the receiver can drop the repeat
    assert [r.headers["webhook-id"] for r in receiver.ok()] == [f"msg_{rid}"] * 2


def test_enqueue_is_idempotent_and_follows_incident_state(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(monkeypatch, "http://127.0.0.1:1")
    pd_only = AlertingConfig(receivers={"pd": config.receivers["pd"], "chat": config.receivers["chat"]})
    first = enqueue_incident(store, incident(status="open"), pd_only, now=T0)
    assert len(first) == 2
    for k in range(5):  # detection re-runs on an unchanged incident
        assert enqueue_incident(store, incident(status="open"), pd_only, now=T0 + timedelta(minutes=k)) == []
    ack = enqueue_incident(store, incident(status="acknowledged"), pd_only, now=T0)
    assert [r["receiver"] for r in delivery_log(store) if r["id"] in ack] == ["pd"]  # Slack has no ack
    assert enqueue_incident(store, incident(status="acknowledged"), pd_only, now=T0) == []
    assert len(enqueue_incident(store, incident(status="resolved"), pd_only, now=T0)) == 2
    assert enqueue_incident(store, incident(status="resolved"), pd_only, now=T0) == []
    reopened = enqueue_incident(store, incident(status="open"), pd_only, now=T0)  # it fires again
    assert len(reopened) == 2
    events = [(r["receiver"], r["event"]) for r in reversed(delivery_log(store)) if r["receiver"] == "pd"]
    assert events == [("pd", "trigger"), ("pd", "acknowledge"), ("pd", "resolve"), ("pd", "trigger")]
    # a resolve for an incident never triggered to a receiver sends nothing
    assert enqueue_incident(store, incident(9, status="resolved"), pd_only, now=T0) == []


def test_resolve_sent_when_the_stored_incident_resolves(
    receiver: Receiver, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end from the incidents table: open → trigger with causes; resolved → resolve, same dedup key."""
    config = make_config(monkeypatch, receiver.url)
    routed = alerting_from_config(
        {
            "receivers": [
                {
                    "name": "pd",
                    "type": "pagerduty",
                    "url": f"{receiver.url}/pd",
                    "routing_key": "${T_PD_KEY}",
                },
                {
                    "name": "hook",
                    "type": "webhook",
                    "url": f"{receiver.url}/hook",
                    "secret": "${T_WH_SECRET}",
                },
            ],
            "routes": [
                {"receiver": "pd", "match": {"severity": "page"}, "continue": True},
                {"receiver": "hook", "group_by": ["service"]},
            ],
        }
    )
    assert config.receivers["pd"].routing_key == routed.receivers["pd"].routing_key
    inc = Incident("inc-db-1", "llm-gateway", "ttft_p95", {"model": "m1"}, T0, None, "page", "open", {})
    save_detection(store, states={}, anomalies=pl.DataFrame(), detector="t", incidents=[inc], now=T0)
    save_causes(store, "inc-db-1", [{"rank": 1, "kind": "change", "evidence": {"explanation": "deploy v7"}}])
    (stored,) = list_incidents(store)
    assert len(enqueue_incident(store, stored, routed, now=T0)) == 2
    run_until_idle(store, routed, T0)
    resolved = Incident(
        "inc-db-1",
        "llm-gateway",
        "ttft_p95",
        {"model": "m1"},
        T0,
        T0 + timedelta(minutes=20),
        "page",
        "resolved",
        {},
    )
    save_detection(store, states={}, anomalies=pl.DataFrame(), detector="t", incidents=[resolved], now=T0)
    (stored,) = list_incidents(store)
    assert len(enqueue_incident(store, stored, routed, now=T0 + timedelta(minutes=20))) == 2
    run_until_idle(store, routed, T0 + timedelta(minutes=20))
    pd = [r.json() for r in receiver.ok("/pd")]
    assert [(b["event_action"], b["dedup_key"]) for b in pd] == [
        ("trigger", "inc-db-1"),
        ("resolve", "inc-db-1"),
    ]
    assert pd[0]["payload"]["custom_details"]["top_causes"][0]["explanation"] == "deploy v7"
    hooks = [r.json() for r in receiver.ok("/hook")]
    assert [h["status"] for h in hooks] == ["firing", "resolved"]
    assert hooks[0]["groupKey"] == '{}/{}:{service="llm-gateway"}' and hooks[0]["groupLabels"] == {
        "service": "llm-gateway"
    }
    assert hooks[1]["alerts"][0]["endsAt"] == "2026-03-01T12:20:00Z"
    assert hooks[0]["alerts"][0]["fingerprint"] == hooks[1]["alerts"][0]["fingerprint"]


def test_rate_limit_defers_without_counting_attempts(
    receiver: Receiver, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(monkeypatch, receiver.url)  # Slack: 60/min, bursts of one
    receiver.reply = lambda p, h, b: (200, {}, b"ok")
    per_incident = RouteConfig("chat", group_by=("incident_id",))  # five groups: five messages
    for i in range(1, 6):
        enqueue(store, incident(i), "trigger", [config.receivers["chat"]], now=T0, route=per_incident)
    notifiers, limiter, rng = build_notifiers(config), RateLimiter(), random.Random(0)
    report = deliver_due(store, notifiers, T0, rng=rng, limiter=limiter)
    assert len(report.delivered) == 1 and len(report.deferred) == 4
    pending = delivery_log(store, status="pending")
    assert all(r["attempts"] == 0 for r in pending)
    assert all(datetime.fromisoformat(r["next_attempt"]) >= T0 + timedelta(seconds=1) for r in pending)
    now = T0
    while delivery_log(store, status="pending"):
        now += timedelta(seconds=0.25)
        deliver_due(store, notifiers, now, rng=rng, limiter=limiter)
    assert len(receiver.ok()) == 5 and now >= T0 + timedelta(seconds=4)  # about one a second


def test_send_test_action(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(monkeypatch, receiver.url)
    result = send_test(config.receivers["pd"], external_url="http://rw")
    assert result.ok
    actions = [(r.json()["event_action"], r.json()["dedup_key"]) for r in receiver.ok("/pd")]
    assert [a for a, _ in actions] == ["trigger", "resolve"] and actions[0][1] == actions[1][
        1
    ]  # nothing left open
    receiver.reply = lambda p, h, b: (403, {}, b"invalid_token")
    failed = send_test(config.receivers["chat"])
    assert not failed.ok and not failed.retryable and "HTTP 403" in (failed.error or "")


def test_rows_of_a_removed_receiver_wait_until_their_deadline(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(monkeypatch, "http://127.0.0.1:1")
    (rid,) = enqueue(store, incident(), "trigger", [config.receivers["hook"]], now=T0)
    report = deliver_due(store, {}, T0 + timedelta(hours=1), rng=random.Random(0))
    assert report.skipped == [rid] and alerts_store.get(store, rid).status == "pending"  # type: ignore[union-attr]
    report = deliver_due(store, {}, T0 + timedelta(hours=25), rng=random.Random(0))
    assert report.dead == [rid]
    assert outbox.delivery_log(store, status="dead")[0]["last_error"] == "deadline passed before delivery"
