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

from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from ingest.queries import histogram_increments_sql
from ingest.store import RollupState, Store, rollup_state

#: how long after an hour ends a rollup pass waits before rolling it (points of all series have come in)
GRACE = timedelta(minutes=10)
#: how far back the last rolled value of a counter is looked for to link its first remaining raw sample
PREDECESSOR_LOOKBACK = timedelta(days=1)
#: how far before the hours a rollup pass rolls a histogram series' previous point is looked for (a
#: cumulative histogram's first point after a longer gap has no increment, as in a query)
HISTOGRAM_LOOKBACK = timedelta(hours=1)

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
        return _json_ready(self)


def _json_ready(report: Any) -> dict[str, Any]:
    """A report dataclass as a dict, datetimes as ISO 8601 strings."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(report).items()}


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


# The raw points to roll up (``{where}``: a fixed condition on ``p.ts``/``p.series_id`` with bound values);
# sealed hours are taken out of it afterwards (``_SEALED``); then each point's contribution to a counter's
# increase (NULL when it has no predecessor: the first sample ever, as in Prometheus).
_SNAPSHOT = """
CREATE OR REPLACE TEMP TABLE _retention_raw AS
SELECT p.series_id, p.ts, p.value, coalesce(s.kind, 'gauge') AS kind,
    epoch_us(p.ts) // 300000000 AS b5, epoch_us(p.ts) // 3600000000 AS b1
FROM points p LEFT JOIN series s USING (series_id)
WHERE {where}
"""
_SEALED = """
DELETE FROM _retention_raw r USING points_1h h
WHERE h.series_id = r.series_id AND epoch_us(h.ts) // 3600000000 = r.b1 AND h.ts >= $lo AND h.ts < $hi
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
#: series whose late points (``rollup_dirty``) fall in rolled hours that still have raw points, with the first
#: such hour: their rollups from that hour to ``rolled_to`` are rebuilt from the raw points
_DIRTY = """
CREATE OR REPLACE TEMP TABLE _rollup_redo AS
SELECT d.series_id, min(d.hour) AS hour FROM rollup_dirty d JOIN series s USING (series_id)
WHERE s.kind <> 'histogram' AND d.hour < $rolled_to AND ($raw_from IS NULL OR d.hour >= $raw_from)
GROUP BY d.series_id
"""
#: the same for histogram series and their rollups (up to ``histograms_to``)
_HIST_DIRTY = """
CREATE OR REPLACE TEMP TABLE _rollup_redo AS
SELECT d.series_id, min(d.hour) AS hour FROM rollup_dirty d JOIN series s USING (series_id)
WHERE s.kind = 'histogram' AND d.hour < $to
GROUP BY d.series_id
"""
# Histogram rollups: the increments of the points chosen (``{ctes}``, see ``histogram_increments_sql``), then
# per series, bucket and bucket layout the sums of the increments, element by element for the bucket counts
_HIST_INC = """
CREATE OR REPLACE TEMP TABLE _hist_inc AS
WITH {ctes}
SELECT series_id, ts, bounds, inc, dsum, dcount FROM d WHERE inc IS NOT NULL
"""
_HIST_SUM = """
CREATE OR REPLACE TEMP TABLE {out} AS
WITH src AS (
    SELECT series_id, epoch_us(ts) // {width} AS b, hash(bounds) AS layout, bounds, inc, dsum, dcount FROM {source}
),
tot AS (
    SELECT series_id, b, layout, any_value(bounds) AS bounds, sum(dsum) AS s, sum(dcount) AS n
    FROM src GROUP BY series_id, b, layout
),
per AS (
    SELECT series_id, b, layout, i, sum(c) AS c
    FROM (SELECT series_id, b, layout, unnest(inc) AS c, unnest(range(len(inc))) AS i FROM src)
    GROUP BY series_id, b, layout, i
),
lists AS (SELECT series_id, b, layout, list(c ORDER BY i) AS counts FROM per GROUP BY series_id, b, layout)
SELECT series_id, make_timestamp(b * {width}) AS ts, bounds, counts AS inc, s AS dsum, n AS dcount
FROM tot JOIN lists USING (series_id, b, layout)
"""


def _set_state(cur: Any, state: RollupState) -> None:
    cur.execute(
        """
        INSERT INTO rollup_state (id, raw_from, rolled_to, histograms_to, updated)
        VALUES (1, $raw_from, $rolled_to, $histograms_to, now())
        ON CONFLICT (id) DO UPDATE SET raw_from = excluded.raw_from, rolled_to = excluded.rolled_to,
            histograms_to = excluded.histograms_to, updated = excluded.updated
        """,
        {"raw_from": state.raw_from, "rolled_to": state.rolled_to, "histograms_to": state.histograms_to},
    )


@dataclass(frozen=True)
class RollupReport:
    """What one :func:`roll_up_recent` pass did: rollup rows written (of points and of histograms), series
    whose late points made their rollups be rebuilt, and the hour boundaries the rollups now reach (``None``:
    no points / histogram points yet)."""

    rolled_5m: int
    rolled_1h: int
    rebuilt_series: int
    rolled_to: datetime | None
    histograms_5m: int = 0
    histograms_1h: int = 0
    histograms_to: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (datetimes as ISO 8601 strings)."""
        return _json_ready(self)


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
        if histograms_max_age is not None:
            _roll_up_histograms(cur, now - histograms_max_age, now)
        deleted_5m = 0
        if cutoff_5m is not None:
            deleted_5m = _count(cur, "DELETE FROM points_5m WHERE ts < $c", {"c": cutoff_5m})
            cur.execute("DELETE FROM histograms_5m WHERE ts < $c", {"c": cutoff_5m})
        extra = {}
        for field, (table, col, age) in others.items():
            if age is not None:
                # table and column names come from the fixed mapping above, never from input
                extra[field] = _count(cur, f"DELETE FROM {table} WHERE {col} < $c", {"c": now - age})
    return RetentionReport(cutoff=cutoff, deleted_5m=deleted_5m, cutoff_5m=cutoff_5m, **counts, **extra)


def _roll(cur: Any, where: str, params: dict[str, Any], *, seal: tuple[datetime, datetime] | None) -> dict:
    """Roll the raw points matching ``where`` into both rollup tables (inside a transaction); with ``seal``
    ``(lo, hi)``, points in hours of that range that already have an hourly row are left out (and counted)."""
    cur.execute(_SNAPSHOT.format(where=where), params)
    if _count(cur, "SELECT count(*) FROM _retention_raw") == 0:
        return {"rolled_5m": 0, "rolled_1h": 0, "sealed": 0}
    first = cur.execute("SELECT min(ts) FROM _retention_raw").fetchall()[0][0]
    sealed = 0
    if seal is not None:
        sealed = _count(cur, _SEALED, {"lo": max(_floor_hour(first), seal[0]), "hi": seal[1]})
    cur.execute(_INCREMENTS, {"pre_lo": first - PREDECESSOR_LOOKBACK})
    out = {
        "rolled_5m": _count(cur, _ROLLUP.format(table="points_5m", bucket="b5", width=_FIVE_MIN_US)),
        "rolled_1h": _count(cur, _ROLLUP.format(table="points_1h", bucket="b1", width=_HOUR_US)),
        "sealed": sealed,
    }
    cur.execute("DROP TABLE IF EXISTS _retention_raw")
    cur.execute("DROP TABLE IF EXISTS _retention_inc")
    return out


def _add(total: dict[str, int], part: dict[str, int]) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0) + v


def _roll_histograms(cur: Any, source: str, keep: str, params: dict[str, Any]) -> dict[str, int]:
    """Roll the increments of the histogram points kept (``source``/``keep``, see
    :func:`ingest.queries.histogram_increments_sql`) into ``histograms_5m`` and ``histograms_1h`` (inside a
    transaction); the hourly rows are the sums of the 5-minute ones."""
    cur.execute(_HIST_INC.format(ctes=histogram_increments_sql(source, keep)), params)
    cur.execute(_HIST_SUM.format(out="_hist_5m", width=_FIVE_MIN_US, source="_hist_inc"))
    cur.execute(_HIST_SUM.format(out="_hist_1h", width=_HOUR_US, source="_hist_5m"))
    out = {}
    for table, tmp in (("histograms_5m", "_hist_5m"), ("histograms_1h", "_hist_1h")):  # fixed names
        out[table] = _count(
            cur,
            f"INSERT INTO {table} (series_id, ts, bounds, counts, sum, count) "
            f"SELECT series_id, ts, bounds, inc, dsum, dcount FROM {tmp}",
        )
    for tmp in ("_hist_inc", "_hist_5m", "_hist_1h"):
        cur.execute(f"DROP TABLE IF EXISTS {tmp}")
    return out


def _roll_histogram_hours(cur: Any, lo: datetime | None, to: datetime) -> dict[str, int]:
    """Roll every histogram point in ``[lo, to)`` (from the first when ``lo`` is None)."""
    if lo is None:
        return _roll_histograms(cur, "h.ts < $to", "TRUE", {"to": to})
    params = {"pre": lo - HISTOGRAM_LOOKBACK, "lo": lo, "to": to}
    return _roll_histograms(cur, "h.ts >= $pre AND h.ts < $to", "ts >= $lo", params)


def _redo_dirty(cur: Any, state: RollupState | None) -> tuple[dict[str, int], int]:
    """Rebuild the rollups of series with late points in rolled hours whose raw points still exist (from the
    first such hour to ``rolled_to``, or ``histograms_to`` for histograms: a counter's increase after a late
    sample changes too); late points older than ``raw_from`` are retention's to discard or roll up, late
    histogram points older than the oldest raw histogram hour are ignored. Empties ``rollup_dirty``."""
    total: dict[str, int] = {}
    redone = 0
    if state is not None and state.rolled_to is not None:
        cur.execute(_DIRTY, {"rolled_to": state.rolled_to, "raw_from": state.raw_from})
        redone = _count(cur, "SELECT count(*) FROM _rollup_redo")
        if redone:
            _delete_redo(cur, ("points_5m", "points_1h"), state.rolled_to)
            where = (
                "p.ts < $to AND EXISTS (SELECT 1 FROM _rollup_redo d "
                "WHERE d.series_id = p.series_id AND p.ts >= d.hour)"
            )
            _add(total, _roll(cur, where, {"to": state.rolled_to}, seal=None))
        cur.execute("DROP TABLE IF EXISTS _rollup_redo")
    if state is not None and state.histograms_to is not None:
        cur.execute(_HIST_DIRTY, {"to": state.histograms_to})
        # hours whose raw histograms retention deleted keep their rollups
        oldest = cur.execute(
            "SELECT date_trunc('hour', min(ts)) + INTERVAL 1 HOUR FROM histograms"
        ).fetchall()
        cur.execute("DELETE FROM _rollup_redo WHERE hour < $oldest", {"oldest": oldest[0][0]})
        n = _count(cur, "SELECT count(*) FROM _rollup_redo")
        if n:
            redone += n
            _delete_redo(cur, ("histograms_5m", "histograms_1h"), state.histograms_to)
            first = cur.execute("SELECT min(hour) FROM _rollup_redo").fetchall()[0][0]
            source = "h.ts >= $pre AND h.ts < $to AND h.series_id IN (SELECT series_id FROM _rollup_redo)"
            keep = "EXISTS (SELECT 1 FROM _rollup_redo d WHERE d.series_id = h.series_id AND h.ts >= d.hour)"
            params = {"pre": first - HISTOGRAM_LOOKBACK, "to": state.histograms_to}
            _add(total, _roll_histograms(cur, source, keep, params))
        cur.execute("DROP TABLE IF EXISTS _rollup_redo")
    cur.execute("DELETE FROM rollup_dirty")
    return total, redone


def _delete_redo(cur: Any, tables: tuple[str, str], to: datetime) -> None:
    """Delete the rollup rows of the series in ``_rollup_redo`` from their first late hour to ``to``."""
    for table in tables:  # fixed names
        cur.execute(
            f"DELETE FROM {table} t USING _rollup_redo d "
            "WHERE t.series_id = d.series_id AND t.ts >= d.hour AND t.ts < $to",
            {"to": to},
        )


def roll_up_recent(store: Store, *, now: datetime | None = None, grace: timedelta = GRACE) -> RollupReport:
    """Roll every complete hour of raw points into ``points_5m`` and ``points_1h``, keeping the raw points.

    Queries then read long ranges from the rollups (a 30-day chart reads hourly rows, not 43,200 raw points
    per series) and only the last hour or so raw. A pass rolls the hours from ``rolled_to`` up to
    ``floor_to_hour(min(latest point, now) - grace)`` and rebuilds the rollups of series that received late
    points for rolled hours (the store lists them in ``rollup_dirty`` as it appends), so rollups always equal
    what the raw points give. Incremental and idempotent: a pass reads only the new hours and the late
    series. ``rootwise serve`` runs one after every detection pass; ``rootwise rollup`` runs one.
    """
    now = _naive_utc(now) if now is not None else datetime.now(UTC).replace(tzinfo=None)
    with store.write_transaction() as cur:
        state = rollup_state(cur) or RollupState(None, None)
        totals, redone = _redo_dirty(cur, state)
        latest = cur.execute("SELECT max(ts) FROM points WHERE ts <= $now", {"now": now}).fetchall()[0][0]
        start = state.rolled_to
        to = _floor_hour(latest - grace) if latest is not None else None
        if to is not None and (start is None or to > start):
            where, params = (
                ("p.ts < $to", {"to": to})
                if start is None
                else ("p.ts >= $lo AND p.ts < $to", {"lo": start, "to": to})
            )
            # hours rolled by a retention run before rollup_state existed stay as they are
            _add(totals, _roll(cur, where, params, seal=(start or datetime.min, to)))
            state = replace(state, rolled_to=to)
        latest = cur.execute("SELECT max(ts) FROM histograms WHERE ts <= $now", {"now": now}).fetchall()[0][0]
        start = state.histograms_to
        to = _floor_hour(latest - grace) if latest is not None else None
        if to is not None and (start is None or to > start):
            _add(totals, _roll_histogram_hours(cur, start, to))
            state = replace(state, histograms_to=to)
        if state != RollupState(None, None):
            _set_state(cur, state)
    return RollupReport(
        totals.get("rolled_5m", 0),
        totals.get("rolled_1h", 0),
        redone,
        state.rolled_to,
        totals.get("histograms_5m", 0),
        totals.get("histograms_1h", 0),
        state.histograms_to,
    )


def _roll_up_histograms(cur: Any, deleting: datetime, now: datetime) -> None:
    """Before retention deletes histogram points older than ``deleting``: roll the hours up to the end of the
    one it falls in, when that hour is complete (``GRACE`` ago), so the histogram rollups keep them."""
    state = rollup_state(cur) or RollupState(None, None)
    to = min(_floor_hour(deleting) + timedelta(hours=1), _floor_hour(now - GRACE))
    if state.histograms_to is None or to > state.histograms_to:
        _roll_histogram_hours(cur, state.histograms_to, to)
        _set_state(cur, replace(state, histograms_to=to))


def _roll_up(cur: Any, cutoff: datetime) -> dict[str, int]:
    """Retention's rollup (inside its transaction): after it every raw point before ``cutoff`` is represented
    in the rollups or discarded as late, and the state says raw points start at ``cutoff``.

    Raw points before the previous ``raw_from`` are late arrivals for deleted hours: those in a sealed hour (an
    hourly row exists for the series) are discarded, the others rolled up. Hours between ``rolled_to`` and
    ``cutoff`` are rolled up (all of them, on a store no rollup pass ever ran on).
    """
    state = rollup_state(cur) or RollupState(None, None)
    deleted_from, rolled_to = state.raw_from, state.rolled_to
    totals, _ = _redo_dirty(cur, state)
    if deleted_from is not None:  # late arrivals for hours whose raw points retention already deleted
        bound = min(deleted_from, cutoff)
        _add(totals, _roll(cur, "p.ts < $hi", {"hi": bound}, seal=(datetime.min, bound)))
    lo = deleted_from if deleted_from is not None else datetime.min
    if rolled_to is not None:
        lo = max(lo, rolled_to)
    if lo < cutoff:
        params = {"lo": lo, "hi": cutoff}
        _add(totals, _roll(cur, "p.ts >= $lo AND p.ts < $hi", params, seal=(datetime.min, cutoff)))
    deleted = _count(cur, "DELETE FROM points WHERE ts < $cutoff", {"cutoff": cutoff})
    raw_from = max(cutoff, deleted_from) if deleted_from is not None else cutoff
    _set_state(
        cur,
        replace(
            state, raw_from=raw_from, rolled_to=max(cutoff, rolled_to) if rolled_to is not None else cutoff
        ),
    )
    return {
        "rolled_5m": totals.get("rolled_5m", 0),
        "rolled_1h": totals.get("rolled_1h", 0),
        "deleted_raw": deleted,
        "discarded_late": totals.get("sealed", 0),
    }
