"""Reliable alert delivery through the ``alert_outbox`` table: enqueue, deliver, retry, give up, log.

Guarantees
----------
* **At least once.** A notification is written to the outbox (:func:`enqueue`, one write transaction) before
  anything is sent, and marked delivered only after the receiver answered 2xx. A crash between the send and the
  mark leaves the row pending: it is sent again later and the receiver de-duplicates it by its key (PagerDuty
  ``dedup_key``, Opsgenie ``alias``, Slack has none, Standard Webhooks ``webhook-id``). No row is ever deleted:
  it ends ``delivered``, ``failed`` (the receiver refused it: 4xx) or ``dead`` (its receiver's deadline passed).
* **Idempotent enqueue.** Only state transitions are added (see :mod:`ingest.alerts_store`), so re-running
  detection over an unchanged incident enqueues nothing.
* **Order per key.** A resolve is never sent before the trigger it resolves.

Retries use full-jitter exponential backoff (delay uniform in ``[0, min(cap, base * 2**attempt)]``, base 1 s,
cap 5 min; AWS Architecture Blog, "Exponential Backoff And Jitter", 2015) from an injected
``random.Random``, and never come sooner than a receiver's ``Retry-After``. A token bucket per receiver
credential keeps to the target's rate limit; a rate-limited row is deferred without counting an attempt.

:func:`deliver_due` sends one row at a time and is meant to run in one thread of the owning process (the
scheduler of ``rootwise serve``); two concurrent deliverers would send duplicates (still safe, never lost).
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from app.alerts.config import AlertingConfig, ReceiverConfig, RouteConfig
from app.alerts.notifiers import (
    Notification,
    Notifier,
    SendResult,
    alert_labels,
    build_notifier,
    notifier_class,
)
from ingest import alerts_store
from ingest.alerts_store import DEAD, FAILED, NewNotification, OutboxRow
from ingest.store import Store

log = logging.getLogger("rootwise.alerts")

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 300.0
#: causes kept in a queued notification (the notifiers show fewer)
PAYLOAD_CAUSES = 10
#: Rootwise incident status → the events that bring a receiver to it
EVENTS_FOR_STATUS = {
    "open": ("trigger",),
    "acknowledged": ("trigger", "acknowledge"),
    "resolved": ("resolve",),
}


def utc_naive(t: datetime) -> datetime:
    """``t`` as a naive UTC datetime (how the store keeps times)."""
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo is not None else t


def backoff_delay(
    attempt: int, rng: random.Random, *, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S
) -> float:
    """Seconds to wait after the ``attempt``-th failure (0-based): full jitter.

    Examples
    --------
    >>> rng = random.Random(0)
    >>> all(0 <= backoff_delay(a, rng) <= min(300, 2**a) for a in range(20))
    True
    """
    return rng.uniform(0.0, min(cap, base * 2.0 ** min(attempt, 64)))


class RateLimiter:
    """Token buckets by rate key: ``per_minute`` tokens a minute, bursts of up to one second's worth (at least 1).

    Examples
    --------
    >>> rl, t0 = RateLimiter(), datetime(2026, 1, 1)
    >>> rl.take("slack:x", 60, t0), rl.take("slack:x", 60, t0), rl.take("slack:x", 60, t0 + timedelta(seconds=1))
    (0.0, 1.0, 0.0)
    """

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, datetime]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, per_minute: float, now: datetime) -> float:
        """Take a token: 0.0 when taken, else the seconds until one is available (nothing is taken)."""
        rate = per_minute / 60.0
        capacity = max(1.0, rate)
        with self._lock:
            tokens, last = self._buckets.get(key, (capacity, now))
            tokens = min(capacity, tokens + max(0.0, (now - last).total_seconds()) * rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate


def incident_link(external_url: str, incident_id: str) -> str:
    """The incident page of the app.

    Examples
    --------
    >>> incident_link("http://rootwise:8050/", "api/2026 01")
    'http://rootwise:8050/incident/api%2F2026%2001'
    """
    return f"{external_url.rstrip('/')}/incident/{quote(str(incident_id), safe='')}"


def _payload(
    incident: Mapping[str, Any], link: str, external_url: str, group_labels: Mapping[str, str]
) -> str:
    inc = dict(incident)
    causes = [c for c in inc.get("causes") or [] if isinstance(c, dict)]
    inc["causes"] = sorted(causes, key=lambda c: (c.get("rank") is None, c.get("rank") or 0))[:PAYLOAD_CAUSES]
    body = {"incident": inc, "link": link, "external_url": external_url, "group_labels": dict(group_labels)}
    return json.dumps(body, default=str, sort_keys=True)


def _item(
    incident: Mapping[str, Any],
    event: str,
    receiver: ReceiverConfig,
    route: RouteConfig,
    *,
    now: datetime,
    external_url: str,
) -> NewNotification | None:
    if event not in notifier_class(receiver.type).events:
        return None  # e.g. Slack and generic webhooks have no "acknowledged" state
    labels = alert_labels(incident)
    incident_id = str(incident["id"])
    return NewNotification(
        receiver=receiver.name,
        dedup_key=incident_id,
        event=event,
        incident_id=incident_id,
        group_key=route.group_key(labels),
        payload=_payload(
            incident,
            incident_link(external_url, incident_id),
            external_url,
            {k: labels.get(k, "") for k in route.group_by},
        ),
        dead_after=now + receiver.deadline,
    )


def enqueue(
    store: Store,
    incident: Mapping[str, Any],
    event: str,
    receivers: Sequence[ReceiverConfig],
    *,
    now: datetime,
    external_url: str = "http://127.0.0.1:8050",
    route: RouteConfig | None = None,
) -> list[str]:
    """Queue ``event`` (``trigger``, ``acknowledge`` or ``resolve``) of ``incident`` for each receiver, in one
    write transaction; returns the outbox ids added (none for an event that is not a state transition).

    ``incident`` is a dict as :func:`ingest.results.list_incidents` returns it (``id`` required, ``causes``
    included); its content is frozen into the row, so every retry sends the same thing.
    """
    now = utc_naive(now)
    items = [
        it
        for r in receivers
        if (it := _item(incident, event, r, route or RouteConfig(r.name), now=now, external_url=external_url))
    ]
    return alerts_store.enqueue(store, items, now=now)


def enqueue_incident(
    store: Store, incident: Mapping[str, Any], config: AlertingConfig, *, now: datetime
) -> list[str]:
    """Route an incident and queue what its status calls for (open → trigger, acknowledged → trigger then
    acknowledge, resolved → resolve) to every receiver its labels route to; idempotent."""
    now = utc_naive(now)
    events = EVENTS_FOR_STATUS.get(str(incident.get("status")), ())
    items = []
    for receiver, route in config.route(alert_labels(incident)):
        for event in events:
            it = _item(incident, event, receiver, route, now=now, external_url=config.external_url)
            if it is not None:
                items.append(it)
    return alerts_store.enqueue(store, items, now=now)


def notification_from_row(row: OutboxRow, *, sent_at: datetime) -> Notification:
    """The notification a queued row describes, for an attempt at ``sent_at``."""
    p = json.loads(row.payload)
    return Notification(
        id=row.id,
        receiver=row.receiver,
        event=row.event,
        dedup_key=row.dedup_key,
        incident=p["incident"],
        link=p["link"],
        group_key=row.group_key,
        group_labels=p.get("group_labels") or {},
        external_url=p.get("external_url") or "",
        sent_at=sent_at.replace(tzinfo=UTC) if sent_at.tzinfo is None else sent_at,
    )


@dataclass
class DeliveryReport:
    """What one :func:`deliver_due` pass did, by row."""

    delivered: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    #: rows by (receiver, outcome), for the server's /metrics
    by_receiver: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.__dict__.items() if isinstance(v, list)}

    def add(self, outcome: str, row: OutboxRow) -> None:
        getattr(self, outcome).append(row.id)
        self.by_receiver[row.receiver, outcome] += 1


def deliver_due(
    store: Store,
    notifiers: Mapping[str, Notifier],
    now: datetime,
    *,
    rng: random.Random,
    limiter: RateLimiter | None = None,
    limit: int = 100,
) -> DeliveryReport:
    """Send every due row once: mark it delivered, schedule its retry, or end it as failed or dead.

    ``notifiers`` maps receiver names to notifiers (:func:`app.alerts.notifiers.build_notifiers`); rows of a
    receiver no longer configured stay pending until their deadline. ``limiter`` should live as long as the
    deliverer (a fresh one forgets the rate already used). After a retryable failure the receiver's other rows
    wait for the next pass, so a receiver that is down costs one attempt per pass.
    """
    now = utc_naive(now)
    limiter = limiter if limiter is not None else RateLimiter()
    report = DeliveryReport()
    backing_off: set[str] = set()
    handled: set[str] = set()  # rows sent as members of an earlier row's group message
    for row in alerts_store.due(store, now, limit=limit):
        if row.id in handled:
            continue
        if row.dead_after is not None and now >= row.dead_after:
            error = "deadline passed before delivery" + (
                f"; last error: {row.last_error}" if row.last_error else ""
            )
            alerts_store.mark_final(store, row.id, status=DEAD, error=error, now=now, attempted=False)
            log.warning("alert %s to %s is dead: %s", row.id, row.receiver, error)
            report.add("dead", row)
            continue
        notifier = notifiers.get(row.receiver)
        if notifier is None or row.receiver in backing_off:
            report.add("skipped", row)
            continue
        wait = limiter.take(notifier.rate_key, notifier.receiver.rate_limit_per_minute, now)
        if wait > 0:
            alerts_store.defer(store, row.id, next_attempt=now + timedelta(seconds=wait))
            report.add("deferred", row)
            continue
        try:
            notification = notification_from_row(row, sent_at=now)
        except (ValueError, KeyError, TypeError) as exc:
            alerts_store.mark_final(
                store,
                row.id,
                status=FAILED,
                error=f"unreadable payload: {type(exc).__name__}",
                now=now,
                attempted=False,
            )
            report.add("failed", row)
            continue
        rows = [row]
        if notifier.batches:
            members = [
                m
                for m in alerts_store.group_members(store, row, now)
                if m.id not in handled and (m.dead_after is None or now < m.dead_after)
            ]
            readable = []
            for m in members:
                try:
                    readable.append((m, notification_from_row(m, sent_at=now)))
                except (ValueError, KeyError, TypeError):
                    continue  # its own turn marks it failed
            if readable:
                rows += [m for m, _ in readable]
                notification = replace(notification, members=tuple(n for _, n in readable))
        handled.update(r.id for r in rows)
        result = notifier.send(notification)
        for r in rows:
            _record(store, r, result, now, rng, report, backing_off)
    return report


def _record(
    store: Store,
    row: OutboxRow,
    result: SendResult,
    now: datetime,
    rng: random.Random,
    report: DeliveryReport,
    backing_off: set[str],
) -> None:
    if result.ok:
        alerts_store.mark_delivered(store, row.id, now=now)
        log.info("alert %s (%s %s) delivered to %s", row.id, row.event, row.dedup_key, row.receiver)
        report.add("delivered", row)
        return
    error = result.error or "unknown error"
    if not result.retryable:
        alerts_store.mark_final(store, row.id, status=FAILED, error=error, now=now, attempted=True)
        log.error("alert %s to %s failed, not retried: %s", row.id, row.receiver, error)
        report.add("failed", row)
        return
    backing_off.add(row.receiver)
    delay = backoff_delay(row.attempts, rng)
    if result.retry_after is not None:
        delay = max(delay, result.retry_after)
    next_attempt = now + timedelta(seconds=delay)
    if row.dead_after is not None and next_attempt >= row.dead_after:
        error = f"{error}; gave up: the next attempt would fall after the deadline"
        alerts_store.mark_final(store, row.id, status=DEAD, error=error, now=now, attempted=True)
        log.error("alert %s to %s is dead: %s", row.id, row.receiver, error)
        report.add("dead", row)
        return
    alerts_store.mark_retry(store, row.id, next_attempt=next_attempt, error=error, now=now)
    log.warning(
        "alert %s to %s will be retried at %s: %s", row.id, row.receiver, next_attempt.isoformat(), error
    )
    report.add("retrying", row)


def delivery_log(
    store: Store,
    *,
    incident_id: str | None = None,
    receiver: str | None = None,
    status: str | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Every notification with its status, attempts, last error and delivered time, newest first (for the app)."""
    return alerts_store.delivery_log(
        store, incident_id=incident_id, receiver=receiver, status=status, limit=limit
    )


def send_test(
    receiver: ReceiverConfig, *, external_url: str = "http://127.0.0.1:8050", now: datetime | None = None
) -> SendResult:
    """Send a test notification to one receiver now, outside the outbox (the "send test" action).

    PagerDuty and Opsgenie get a trigger then a resolve, so the test leaves nothing open on their side.
    """
    now = now or datetime.now(UTC)
    stamp = now.strftime("%Y%m%dT%H%M%S")
    incident = {
        "id": f"rootwise-test-{stamp}",
        "service": "rootwise",
        "metric": "test_notification",
        "severity": "ticket",
        "status": "open",
        "labels": {"test": "true"},
        "start": utc_naive(now).isoformat(),
        "end": utc_naive(now).isoformat(),
        "causes": [
            {
                "rank": 1,
                "kind": "change",
                "service": "rootwise",
                "evidence": {"explanation": "A test from Rootwise."},
            }
        ],
    }
    notifier = build_notifier(receiver)
    results = []
    for event in ("trigger", "resolve") if receiver.type in ("pagerduty", "opsgenie") else ("trigger",):
        n = Notification(
            id=f"test_{stamp}_{event}",
            receiver=receiver.name,
            event=event,
            dedup_key=str(incident["id"]),
            incident=incident,
            link=incident_link(external_url, str(incident["id"])),
            external_url=external_url,
            sent_at=now,
        )
        result = notifier.send(n)
        results.append(result)
        if not result.ok:
            break
    log.info("test notification to %s: %s", receiver.name, results[-1].error or "delivered")
    return results[-1]
