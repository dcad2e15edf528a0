"""The alert outbox in the store: every notification from enqueue until delivered, failed or dead.

All SQL of alerting lives here (STYLE.md rule 6); every value is a bound parameter.

Idempotency. Per ``(receiver, dedup_key)`` the outbox keeps the sequence of events sent, and a new event is
only added when it is a state *transition* (:data:`ALLOWED_AFTER`): ``trigger`` after nothing or after a
``resolve``, ``acknowledge`` after a ``trigger``, ``resolve`` after a ``trigger`` or ``acknowledge``. Re-running
detection on an unchanged incident therefore adds nothing, and an incident that resolves and fires again gets a
new trigger. The row id is a hash of ``(receiver, dedup_key, event, seq)``, so even two writers racing past the
check cannot store the same transition twice (the primary key refuses the second).

Delivery order. A row is due only when no earlier row of the same ``(receiver, dedup_key)`` is still pending,
so a resolve never overtakes the trigger it resolves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ingest.store import Store

PENDING, DELIVERED, FAILED, DEAD = "pending", "delivered", "failed", "dead"
#: events a new event may follow, per (receiver, dedup key); None: nothing sent yet
ALLOWED_AFTER: dict[str, tuple[str | None, ...]] = {
    "trigger": (None, "resolve"),
    "acknowledge": ("trigger",),
    "resolve": ("trigger", "acknowledge"),
}

_COLUMNS = (
    "id, incident_id, receiver, event, dedup_key, seq, group_key, payload, status, attempts, next_attempt, "
    "last_error, created, delivered, dead_after, last_attempt"
)


@dataclass(frozen=True)
class NewNotification:
    """A notification to add: for ``receiver``, about ``dedup_key``; ``payload`` is the JSON to format."""

    receiver: str
    dedup_key: str
    event: str
    incident_id: str | None
    group_key: str
    payload: str
    dead_after: datetime


@dataclass(frozen=True)
class OutboxRow:
    id: str
    incident_id: str | None
    receiver: str
    event: str
    dedup_key: str
    seq: int
    group_key: str
    payload: str
    status: str
    attempts: int
    next_attempt: datetime | None
    last_error: str | None
    created: datetime
    delivered: datetime | None
    dead_after: datetime | None
    last_attempt: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """The delivery-log view of the row (no payload)."""
        return {
            "id": self.id,
            "incident_id": self.incident_id,
            "receiver": self.receiver,
            "event": self.event,
            "dedup_key": self.dedup_key,
            "status": self.status,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "created": _iso(self.created),
            "last_attempt": _iso(self.last_attempt),
            "next_attempt": _iso(self.next_attempt) if self.status == PENDING else None,
            "delivered": _iso(self.delivered),
            "dead_after": _iso(self.dead_after),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def row_id(receiver: str, dedup_key: str, event: str, seq: int) -> str:
    """The outbox id of the ``seq``-th event for ``(receiver, dedup_key)``: stable, so enqueueing is idempotent.

    Examples
    --------
    >>> row_id("oncall", "inc-1", "trigger", 1) == row_id("oncall", "inc-1", "trigger", 1)
    True
    """
    digest = hashlib.sha256("\x1f".join((receiver, dedup_key, event, str(seq))).encode()).hexdigest()
    return f"ob_{digest[:32]}"


def enqueue(store: Store, items: Sequence[NewNotification], *, now: datetime) -> list[str]:
    """Add the items that are state transitions, in one write transaction; returns the ids added.

    Items are applied in order, so ``[trigger, acknowledge]`` for a new key adds both.
    """
    added: list[str] = []
    if not items:
        return added
    with store.write_transaction() as cur:
        for it in items:
            if it.event not in ALLOWED_AFTER:
                raise ValueError(f"event must be one of {', '.join(ALLOWED_AFTER)}; got {it.event!r}")
            last = cur.execute(
                "SELECT event, seq FROM alert_outbox WHERE receiver = $r AND dedup_key = $k ORDER BY seq DESC LIMIT 1",
                {"r": it.receiver, "k": it.dedup_key},
            ).fetchone()
            last_event, last_seq = (last[0], int(last[1] or 0)) if last else (None, 0)
            if last_event not in ALLOWED_AFTER[it.event]:
                continue
            rid = row_id(it.receiver, it.dedup_key, it.event, last_seq + 1)
            inserted = cur.execute(
                "INSERT INTO alert_outbox (id, incident_id, receiver, event, dedup_key, seq, group_key, payload, "
                "status, attempts, next_attempt, created, dead_after) "
                "VALUES ($id, $inc, $r, $e, $k, $seq, $g, $p, $status, 0, $now, $now, $dead) "
                "ON CONFLICT (id) DO NOTHING",
                {
                    "id": rid,
                    "inc": it.incident_id,
                    "r": it.receiver,
                    "e": it.event,
                    "k": it.dedup_key,
                    "seq": last_seq + 1,
                    "g": it.group_key,
                    "p": it.payload,
                    "status": PENDING,
                    "now": now,
                    "dead": it.dead_after,
                },
            ).fetchone()
            if inserted and inserted[0]:
                added.append(rid)
    return added


def _rows(cur: Any, sql: str, params: dict[str, Any]) -> list[OutboxRow]:
    return [
        OutboxRow(
            id=r[0],
            incident_id=r[1],
            receiver=r[2],
            event=r[3],
            dedup_key=r[4],
            seq=int(r[5] or 0),
            group_key=r[6] or "",
            payload=r[7] or "{}",
            status=r[8],
            attempts=int(r[9] or 0),
            next_attempt=r[10],
            last_error=r[11],
            created=r[12],
            delivered=r[13],
            dead_after=r[14],
            last_attempt=r[15],
        )
        for r in cur.execute(sql, params).fetchall()
    ]


def due(store: Store, now: datetime, *, limit: int = 100) -> list[OutboxRow]:
    """Pending rows whose ``next_attempt`` has come and that no earlier pending row of their key holds back."""
    cur = store.cursor()
    cur.complete()
    sql = (
        f"SELECT {_COLUMNS} FROM alert_outbox o WHERE o.status = $pending AND o.next_attempt <= $now "
        "AND NOT EXISTS (SELECT 1 FROM alert_outbox p WHERE p.receiver = o.receiver AND p.dedup_key = o.dedup_key "
        "AND p.status = $pending AND p.seq < o.seq) "
        "ORDER BY o.next_attempt, o.created, o.seq LIMIT $limit"
    )
    return _rows(cur, sql, {"pending": PENDING, "now": now, "limit": int(limit)})


def get(store: Store, outbox_id: str) -> OutboxRow | None:
    cur = store.cursor()
    cur.complete()
    rows = _rows(cur, f"SELECT {_COLUMNS} FROM alert_outbox WHERE id = $id", {"id": outbox_id})
    return rows[0] if rows else None


def _update(store: Store, sql: str, params: dict[str, Any]) -> bool:
    """Run one UPDATE of a still-pending row; False when the row was no longer pending (never resurrect)."""
    with store.write_transaction() as cur:
        row = cur.execute(
            sql + " AND status = $pending RETURNING id", {**params, "pending": PENDING}
        ).fetchone()
    return row is not None


def mark_delivered(store: Store, outbox_id: str, *, now: datetime) -> bool:
    return _update(
        store,
        "UPDATE alert_outbox SET status = $s, attempts = attempts + 1, delivered = $now, last_attempt = $now, "
        "last_error = NULL WHERE id = $id",
        {"s": DELIVERED, "now": now, "id": outbox_id},
    )


def mark_retry(store: Store, outbox_id: str, *, next_attempt: datetime, error: str, now: datetime) -> bool:
    """Count a failed attempt and schedule the next one."""
    return _update(
        store,
        "UPDATE alert_outbox SET attempts = attempts + 1, next_attempt = $next, last_error = $err, "
        "last_attempt = $now WHERE id = $id",
        {"next": next_attempt, "err": error, "now": now, "id": outbox_id},
    )


def mark_final(
    store: Store, outbox_id: str, *, status: str, error: str, now: datetime, attempted: bool
) -> bool:
    """End a row as ``failed`` (the receiver refused it) or ``dead`` (its deadline passed)."""
    if status not in (FAILED, DEAD):
        raise ValueError(f"status must be {FAILED!r} or {DEAD!r}; got {status!r}")
    return _update(
        store,
        "UPDATE alert_outbox SET status = $s, attempts = attempts + $n, last_error = $err, "
        "last_attempt = CASE WHEN $n > 0 THEN $now ELSE last_attempt END WHERE id = $id",
        {"s": status, "n": int(attempted), "err": error, "now": now, "id": outbox_id},
    )


def defer(store: Store, outbox_id: str, *, next_attempt: datetime) -> bool:
    """Move a row's next attempt without counting an attempt (rate limit: nothing was sent)."""
    return _update(
        store,
        "UPDATE alert_outbox SET next_attempt = $next WHERE id = $id",
        {"next": next_attempt, "id": outbox_id},
    )


def delivery_log(
    store: Store,
    *,
    incident_id: str | None = None,
    receiver: str | None = None,
    status: str | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    """The outbox as a delivery log, newest first: attempts, last error, delivered time per notification."""
    conds: list[str] = ["TRUE"]
    params: dict[str, Any] = {"limit": int(limit)}
    for col, value in (("incident_id", incident_id), ("receiver", receiver), ("status", status)):
        if value is not None:
            conds.append(f"{col} = ${col}")
            params[col] = value
    cur = store.cursor()
    cur.complete()
    sql = f"SELECT {_COLUMNS} FROM alert_outbox WHERE {' AND '.join(conds)} ORDER BY created DESC, seq DESC LIMIT $limit"
    return [r.to_dict() for r in _rows(cur, sql, params)]


def status_counts(store: Store) -> dict[str, int]:
    """Rows per status (``pending``, ``delivered``, ``failed``, ``dead``)."""
    cur = store.cursor()
    cur.complete()
    return {
        s: int(n)
        for s, n in cur.execute("SELECT status, count(*) FROM alert_outbox GROUP BY status").fetchall()
    }
