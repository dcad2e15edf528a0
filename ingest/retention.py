"""Retention: roll old raw points up into 5-minute and hourly aggregates, then drop them.

Rules
-----
- **Cutoff.** ``cutoff = floor_to_hour(now - raw_max_age)``. Because it sits on an hour boundary (and so on a
  5-minute boundary) every rollup bucket before it is complete: no bucket is ever rolled up half.
- **What a rollup row keeps** (``points_5m`` / ``points_1h``: ``avg, min, max, sum, count, last`` per series
  and bucket): the usual aggregates of the raw values, with one exception. For **counters** ``sum`` holds
  the counter's *increase attributed to the bucket*: the sum of the increases between consecutive samples
  whose later sample falls in the bucket, with the Prometheus reset rule (a drop means the counter
  restarted from 0, so the increase is the new value). That is exactly what :func:`ingest.queries.resample`
  computes from raw points, so ``rate`` and ``increase`` read the same numbers before and after retention,
  and hourly increases are the sums of the 5-minute ones. The sum of raw counter values (meaningless in
  itself) remains available as ``avg * count``; ``last`` and ``max`` are kept as usual. The first sample of
  a series after an earlier run takes its predecessor from the latest hourly row (its ``last``), looked for
  up to :data:`PREDECESSOR_LOOKBACK` back. Delta series sum their values like gauges do.
- **Idempotent, sealed buckets.** A rolled (series, hour) is sealed: raw points that arrive later for it
  (a re-sent file, a late exporter) are deleted without touching the rollup and counted as
  ``discarded_late``, so rerunning, or re-ingesting old data and rerunning, never double counts. Late
  points for an hour the series had no rollup for are rolled up normally. Queries likewise prefer a
  rollup row over raw points for its bucket.
- **One transaction.** Rolling up, deleting raw points and the optional deletions commit together or not at
  all, serialised with the store's appends.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ingest.store import Store

#: how far back the last rolled value of a counter is looked for to link its first remaining raw sample
PREDECESSOR_LOOKBACK = timedelta(days=1)

_HOUR_US = 3_600_000_000
_FIVE_MIN_US = 300_000_000


@dataclass(frozen=True)
class RetentionReport:
    """What one :func:`apply_retention` run did.

    ``rolled_5m``/``rolled_1h`` are rollup rows written, ``deleted_raw`` raw points deleted (including the
    ``discarded_late`` ones that fell into already rolled hours), ``cutoff`` the hour boundary before which
    raw points no longer exist.
    """

    rolled_5m: int
    rolled_1h: int
    deleted_raw: int
    cutoff: datetime
    discarded_late: int = 0
    deleted_5m: int = 0
    cutoff_5m: datetime | None = None
    deleted_histograms: int = 0
    deleted_spans: int = 0
    deleted_logs: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (datetimes as ISO 8601 strings).

        Examples
        --------
        >>> RetentionReport(1, 1, 12, datetime(2024, 1, 1)).to_dict()["cutoff"]
        '2024-01-01T00:00:00'
        """
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(self).items()}


def _floor_hour(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


def _naive_utc(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo is not None else ts


def _age(value: timedelta | None, name: str) -> timedelta | None:
    if value is None:
        return None
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise ValueError(f"{name} must be a positive timedelta; got {value!r}")
    return value


def _count(cur: Any, sql: str, params: dict[str, Any] | None = None) -> int:
    # fetchall, not fetchone: a partly read result blocks the cursor for later statements (DuckDB 2)
    rows = cur.execute(sql, params).fetchall()
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


# The raw points to roll up, minus those in sealed hours; then each point's contribution to a counter's
# increase (NULL when it has no predecessor: the first sample ever, as in Prometheus).
_SNAPSHOT = """
CREATE OR REPLACE TEMP TABLE _retention_raw AS
SELECT p.series_id, p.ts, p.value, coalesce(s.kind, 'gauge') AS kind,
    epoch_us(p.ts) // 300000000 AS b5, epoch_us(p.ts) // 3600000000 AS b1
FROM points p LEFT JOIN series s USING (series_id)
WHERE p.ts < $cutoff
"""
_SEALED = """
DELETE FROM _retention_raw r USING points_1h h
WHERE h.series_id = r.series_id AND epoch_us(h.ts) // 3600000000 = r.b1 AND h.ts >= $lo AND h.ts < $cutoff
"""
_INCREMENTS = """
CREATE OR REPLACE TEMP TABLE _retention_inc AS
WITH seq AS (  -- only counters need their previous sample
    SELECT r.*, lag(value) OVER (PARTITION BY series_id ORDER BY ts) AS prev
    FROM _retention_raw r WHERE kind = 'counter'
    UNION ALL
    SELECT r.*, NULL::DOUBLE AS prev FROM _retention_raw r WHERE kind <> 'counter'
),
firsts AS (SELECT series_id, min(ts) AS ts FROM _retention_raw WHERE kind = 'counter' GROUP BY series_id),
pre AS (
    SELECT f.series_id, arg_max(h.last, h.ts) AS last
    FROM firsts f JOIN points_1h h ON h.series_id = f.series_id AND h.ts < f.ts
    WHERE h.ts >= $pre_lo
    GROUP BY f.series_id
)
SELECT seq.series_id, seq.ts, seq.value, seq.kind, seq.b5, seq.b1,
    CASE WHEN seq.kind <> 'counter' THEN seq.value
         WHEN coalesce(seq.prev, pre.last) IS NULL THEN NULL
         WHEN seq.value >= coalesce(seq.prev, pre.last) THEN seq.value - coalesce(seq.prev, pre.last)
         ELSE seq.value END AS contrib
FROM seq LEFT JOIN pre ON pre.series_id = seq.series_id AND seq.prev IS NULL
"""
_ROLLUP = """
INSERT INTO {table} (series_id, ts, avg, min, max, sum, count, last)
SELECT series_id, make_timestamp({bucket} * {width}), avg(value), min(value), max(value),
    CASE WHEN any_value(kind) = 'counter' THEN sum(contrib) ELSE sum(value) END,
    count(*), arg_max(value, ts)
FROM _retention_inc GROUP BY series_id, {bucket}
"""


def apply_retention(
    store: Store,
    *,
    raw_max_age: timedelta,
    now: datetime | None = None,
    rollup_max_age_5m: timedelta | None = None,
    histograms_max_age: timedelta | None = None,
    spans_max_age: timedelta | None = None,
    logs_max_age: timedelta | None = None,
) -> RetentionReport:
    """Roll raw points older than ``raw_max_age`` into 5-minute and hourly rollups, then delete them.

    Parameters
    ----------
    raw_max_age
        Raw points before ``floor_to_hour(now - raw_max_age)`` are rolled up and deleted.
    now
        Reference time (default: the current UTC time); aware datetimes are converted to UTC.
    rollup_max_age_5m
        When given, 5-minute rollups before ``floor_to_hour(now - rollup_max_age_5m)`` are deleted (hourly
        rollups stay). Must not be shorter than ``raw_max_age``.
    histograms_max_age, spans_max_age, logs_max_age
        When given, histogram points, spans and logs older than this are deleted (they have no rollups).

    Returns
    -------
    RetentionReport
    """
    if _age(raw_max_age, "raw_max_age") is None:
        raise ValueError("raw_max_age is required")
    rollup_max_age_5m = _age(rollup_max_age_5m, "rollup_max_age_5m")
    if rollup_max_age_5m is not None and rollup_max_age_5m < raw_max_age:
        raise ValueError(
            f"rollup_max_age_5m ({rollup_max_age_5m}) must not be shorter than raw_max_age ({raw_max_age}): "
            "5-minute rollups stand in for the raw points they replace"
        )
    now = _naive_utc(now) if now is not None else datetime.now(UTC).replace(tzinfo=None)
    cutoff = _floor_hour(now - raw_max_age)
    cutoff_5m = _floor_hour(now - rollup_max_age_5m) if rollup_max_age_5m is not None else None
    others = {
        "deleted_histograms": ("histograms", "ts", _age(histograms_max_age, "histograms_max_age")),
        "deleted_spans": ("spans", "start", _age(spans_max_age, "spans_max_age")),
        "deleted_logs": ("logs", "ts", _age(logs_max_age, "logs_max_age")),
    }

    # one write transaction, serialised with the store's appends: a retention run never interleaves with a batch
    with store.write_transaction() as cur:
        counts = _roll_up(cur, cutoff)
        deleted_5m = 0
        if cutoff_5m is not None:
            deleted_5m = _count(cur, "DELETE FROM points_5m WHERE ts < $c", {"c": cutoff_5m})
        extra = {}
        for field, (table, col, age) in others.items():
            if age is not None:
                # table and column names come from the fixed mapping above, never from input
                extra[field] = _count(cur, f"DELETE FROM {table} WHERE {col} < $c", {"c": now - age})
        cur.execute("DROP TABLE IF EXISTS _retention_raw")
        cur.execute("DROP TABLE IF EXISTS _retention_inc")
    return RetentionReport(cutoff=cutoff, deleted_5m=deleted_5m, cutoff_5m=cutoff_5m, **counts, **extra)


def _roll_up(cur: Any, cutoff: datetime) -> dict[str, int]:
    """Write the rollups of raw points before ``cutoff`` and delete those points (inside a transaction)."""
    cur.execute(_SNAPSHOT, {"cutoff": cutoff})
    snapshot = _count(cur, "SELECT count(*) FROM _retention_raw")
    if snapshot == 0:
        return {"rolled_5m": 0, "rolled_1h": 0, "deleted_raw": 0, "discarded_late": 0}
    first = cur.execute("SELECT min(ts) FROM _retention_raw").fetchall()[0][0]
    discarded = _count(cur, _SEALED, {"lo": _floor_hour(first), "cutoff": cutoff})
    cur.execute(_INCREMENTS, {"pre_lo": first - PREDECESSOR_LOOKBACK})
    rolled_5m = _count(cur, _ROLLUP.format(table="points_5m", bucket="b5", width=_FIVE_MIN_US))
    rolled_1h = _count(cur, _ROLLUP.format(table="points_1h", bucket="b1", width=_HOUR_US))
    deleted = _count(cur, "DELETE FROM points WHERE ts < $cutoff", {"cutoff": cutoff})
    return {
        "rolled_5m": rolled_5m,
        "rolled_1h": rolled_1h,
        "deleted_raw": deleted,
        "discarded_late": discarded,
    }
