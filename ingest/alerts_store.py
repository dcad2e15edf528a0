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
from collections.abc import Mapping, Sequence
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
    "report": (None,),  # a scheduled capacity report: one per key (the report's name)
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
    #: the earliest time to send (grouping: ``group_wait`` / ``group_interval``); None: at once
    not_before: datetime | None = None
    #: a reminder (``repeat_interval``): a trigger that may follow a delivered trigger of the same key
    repeat: bool = False


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
            allowed = ALLOWED_AFTER[it.event] + (("trigger",) if it.repeat and it.event == "trigger" else ())
            if last_event not in allowed:
                continue
            rid = row_id(it.receiver, it.dedup_key, it.event, last_seq + 1)
            inserted = cur.execute(
                "INSERT INTO alert_outbox (id, incident_id, receiver, event, dedup_key, seq, group_key, payload, "
                "status, attempts, next_attempt, created, dead_after) "
                "VALUES ($id, $inc, $r, $e, $k, $seq, $g, $p, $status, 0, $next, $now, $dead) "
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
                    "next": max(now, it.not_before) if it.not_before is not None else now,
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


@dataclass(frozen=True)
class GroupState:
    """What the outbox knows of one ``(receiver, group_key)``: when its pending rows are due (the batch being
    gathered), when it last delivered, and whether it ever had a row."""

    pending_due: datetime | None
    last_delivered: datetime | None
    seen: bool


def group_state(store: Store, receiver: str, group_key: str) -> GroupState:
    cur = store.cursor()
    cur.complete()
    row = cur.execute(
        "SELECT min(next_attempt) FILTER (WHERE status = $pending), max(delivered), count(*) "
        "FROM alert_outbox WHERE receiver = $r AND group_key = $g",
        {"pending": PENDING, "r": receiver, "g": group_key},
    ).fetchone()
    return GroupState(row[0], row[1], bool(row[2])) if row else GroupState(None, None, False)


def last_events(store: Store, incident_ids: Sequence[str]) -> dict[tuple[str, str], OutboxRow]:
    """The newest row per ``(receiver, dedup_key)`` of these incidents (for reminders)."""
    if not incident_ids:
        return {}
    cur = store.cursor()
    cur.complete()
    sql = (
        f"SELECT {_COLUMNS} FROM alert_outbox WHERE incident_id IN (SELECT unnest($ids)) "
        "QUALIFY row_number() OVER (PARTITION BY receiver, dedup_key ORDER BY seq DESC) = 1"
    )
    return {(r.receiver, r.dedup_key): r for r in _rows(cur, sql, {"ids": list(incident_ids)})}


def group_members(store: Store, row: OutboxRow, now: datetime, *, limit: int = 200) -> list[OutboxRow]:
    """The due pending rows of ``row``'s receiver and group other than ``row`` (sent with it as one message)."""
    cur = store.cursor()
    cur.complete()
    sql = (
        f"SELECT {_COLUMNS} FROM alert_outbox o WHERE o.status = $pending AND o.next_attempt <= $now "
        "AND o.receiver = $r AND o.group_key = $g AND o.id <> $id "
        "AND NOT EXISTS (SELECT 1 FROM alert_outbox p WHERE p.receiver = o.receiver AND p.dedup_key = o.dedup_key "
        "AND p.status = $pending AND p.seq < o.seq) "
        "ORDER BY o.created, o.seq LIMIT $limit"
    )
    params = {"pending": PENDING, "now": now, "r": row.receiver, "g": row.group_key, "id": row.id}
    return _rows(cur, sql, {**params, "limit": int(limit)})


def pending_count(store: Store) -> dict[str, int]:
    """Pending rows per receiver (the delivery queue depth)."""
    cur = store.cursor()
    cur.complete()
    return {
        r: int(n)
        for r, n in cur.execute(
            "SELECT receiver, count(*) FROM alert_outbox WHERE status = $p GROUP BY receiver", {"p": PENDING}
        ).fetchall()
    }


# --- silences ---------------------------------------------------------------------------------------------

_SILENCE_COLUMNS = "id, matchers, starts_at, ends_at, created_by, comment, created"


def add_silence(
    store: Store,
    *,
    silence_id: str,
    matchers_json: str,
    starts_at: datetime,
    ends_at: datetime,
    created_by: str,
    comment: str,
    created: datetime,
) -> None:
    with store.write_transaction() as cur:
        cur.execute(
            f"INSERT INTO silences ({_SILENCE_COLUMNS}) VALUES ($id, $m, $s, $e, $by, $c, $now)",
            {
                "id": silence_id,
                "m": matchers_json,
                "s": starts_at,
                "e": ends_at,
                "by": created_by,
                "c": comment,
                "now": created,
            },
        )


def expire_silence(store: Store, silence_id: str, *, now: datetime) -> bool:
    """End a silence now; False when there is no such silence or it has already ended."""
    with store.write_transaction() as cur:
        row = cur.execute(
            "UPDATE silences SET ends_at = greatest(starts_at, $now) WHERE id = $id AND ends_at > $now RETURNING id",
            {"id": silence_id, "now": now},
        ).fetchone()
    return row is not None


def silence_rows(store: Store, *, ended_after: datetime | None = None) -> list[tuple[Any, ...]]:
    """Silences as ``(id, matchers_json, starts_at, ends_at, created_by, comment, created)``, newest first;
    ``ended_after`` keeps only those ending after that time (active and pending ones)."""
    cur = store.cursor()
    cur.complete()
    cond, params = ("WHERE ends_at > $t", {"t": ended_after}) if ended_after is not None else ("", {})
    return cur.execute(
        f"SELECT {_SILENCE_COLUMNS} FROM silences {cond} ORDER BY created DESC", params
    ).fetchall()


# --- holds (silenced or inhibited incidents) ---------------------------------------------------------------


def set_holds(
    store: Store,
    holds: Mapping[str, tuple[str, str | None, str]],
    *,
    considered: Sequence[str],
    now: datetime,
) -> None:
    """Record the holds of the incidents ``considered`` in one pass: ``holds[incident_id] = (kind, source_id,
    reason)``; a considered incident without a hold has its old hold removed. ``since`` is kept while a hold
    of the same kind and source continues."""
    with store.write_transaction() as cur:
        old = {
            r[0]: (r[1], r[2])
            for r in cur.execute(
                "SELECT incident_id, kind, source_id FROM alert_holds WHERE incident_id IN (SELECT unnest($ids))",
                {"ids": list(considered)},
            ).fetchall()
        }
        released = [i for i in considered if i in old and i not in holds]
        if released:
            cur.execute(
                "DELETE FROM alert_holds WHERE incident_id IN (SELECT unnest($ids))", {"ids": released}
            )
        for incident_id, (kind, source_id, reason) in holds.items():
            if old.get(incident_id) == (kind, source_id):
                cur.execute(
                    "UPDATE alert_holds SET reason = $reason, updated = $now WHERE incident_id = $id",
                    {"reason": reason, "now": now, "id": incident_id},
                )
            else:
                cur.execute(
                    "INSERT OR REPLACE INTO alert_holds (incident_id, kind, source_id, reason, since, updated) "
                    "VALUES ($id, $kind, $src, $reason, $now, $now)",
                    {"id": incident_id, "kind": kind, "src": source_id, "reason": reason, "now": now},
                )


def holds(store: Store) -> dict[str, dict[str, Any]]:
    """Current holds by incident id: ``kind`` (``silence``, ``inhibit``, ``rca``), ``source_id``, ``reason``,
    ``since``."""
    cur = store.cursor()
    cur.complete()
    return {
        r[0]: {"kind": r[1], "source_id": r[2], "reason": r[3], "since": _iso(r[4])}
        for r in cur.execute(
            "SELECT incident_id, kind, source_id, reason, since FROM alert_holds ORDER BY since"
        ).fetchall()
    }
