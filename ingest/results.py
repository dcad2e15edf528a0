"""Detection results in the store: anomalies, incidents, their series, and fitted detector state.

All SQL of ``rootwise detect`` and ``rootwise incidents`` lives here (STYLE.md rule 6); values are bound
parameters. Detector and alarm states are pickled blobs written and read only by Rootwise itself: the store
file is trusted like the code (anyone who can write it can already change every result).
"""

from __future__ import annotations

import json
import pickle
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import lz4.block
import polars as pl

from detectors.incidents import Episode, Incident
from ingest import schema
from ingest.store import Store

#: first byte of an LZ4-compressed blob (a pickle starts with 0x80, a zlib stream with 0x78)
_LZ4 = b"L"


class Pickled(bytes):
    """A state or alarm as stored: pickled, then LZ4-compressed. Detection passes these through unread, so a
    state is unpickled once where it is scored (a worker process) and pickled once there, not again on each
    hop. Compression makes the blobs about 30 % smaller, which is what the store reads and writes every run (a
    state is ~12 KB). LZ4 rather than zlib: zlib at level 1 took 0.17 ms to compress a fleet state and 0.07 ms
    to decompress it, LZ4 0.017 and 0.008 ms for blobs 11 % larger, about 1 s of a 10,000-series incremental
    pass on two processes. Blobs written with zlib, or before compression, still load.
    """

    @classmethod
    def of(cls, value: Any) -> Pickled:
        return cls(_LZ4 + lz4.block.compress(pickle.dumps(value, protocol=5)))

    def load(self) -> Any:
        head = self[:1]
        if head == _LZ4:
            return pickle.loads(lz4.block.decompress(memoryview(self)[1:]))
        return pickle.loads(zlib.decompress(self) if head == b"\x78" else self)


def _blob(value: Any) -> bytes:
    return value if isinstance(value, Pickled) else Pickled.of(value)


def unpickled(value: Any) -> Any:
    """``value`` itself, or what it holds when it is :class:`Pickled` (the inverse of how it is stored)."""
    return value.load() if isinstance(value, Pickled) else value


@dataclass(frozen=True)
class SeriesState:
    """What detection remembers per series between runs (``state``/``alarm``: objects, or :class:`Pickled`)."""

    detector: str
    state: Any
    alarm: Any
    scored_until: datetime | None
    fitted_until: datetime | None


def _labels(entries: Any) -> dict[str, str]:
    if entries is None:
        return {}
    if isinstance(entries, dict):
        return {str(k): str(v) for k, v in entries.items()}
    return {e["key"]: e["value"] for e in entries}


def detection_catalog(store: Store) -> pl.DataFrame:
    """Every series with its metric, service, kind, unit and labels (key/value struct list)."""
    cur = store.cursor()
    cur.complete()
    df = cur.sql(
        "SELECT series_id, metric, service, kind, unit, map_entries(labels) AS labels FROM series ORDER BY series_id"
    ).pl()
    return df.cast(pl.Schema(schema.SERIES)) if df.height else pl.DataFrame(schema=schema.SERIES)


def load_states(store: Store, series_ids: Sequence[int], *, pickled: bool = False) -> dict[int, SeriesState]:
    """Fitted state of the given series (series never detected are absent); with ``pickled``, ``state`` and
    ``alarm`` stay as stored (:class:`Pickled`)."""
    ids = [int(i) for i in series_ids]
    if not ids:
        return {}
    # the range as a plain filter too: the scan skips the row groups outside it (zone maps on series_id)
    # instead of reading every state's blob into the semi-join
    rows = (
        store.cursor()
        .execute(
            "SELECT series_id, detector, state, alarm, scored_until, fitted_until FROM detector_state "
            "WHERE series_id BETWEEN $lo AND $hi AND series_id IN (SELECT unnest($ids::BIGINT[]))",
            {"ids": ids, "lo": min(ids), "hi": max(ids)},
        )
        .fetchall()
    )

    def read(blob: bytes | None) -> Any:
        if not blob:
            return None
        return Pickled(blob) if pickled else Pickled(blob).load()

    return {int(r[0]): SeriesState(r[1], read(r[2]), read(r[3]), r[4], r[5]) for r in rows}


def watermarks(store: Store, series_ids: Sequence[int]) -> dict[int, datetime]:
    """``scored_until`` of the given series that have been scored (their states are not read)."""
    ids = [int(i) for i in series_ids]
    if not ids:
        return {}
    cur = store.cursor()
    cur.complete()
    rows = cur.execute(
        "SELECT series_id, scored_until FROM detector_state "
        "WHERE scored_until IS NOT NULL AND series_id IN (SELECT unnest($ids::BIGINT[]))",
        {"ids": ids},
    ).fetchall()
    return {int(r[0]): r[1] for r in rows}


def points_since(
    store: Store,
    since: Mapping[int, datetime | None],
    *,
    kind: str = "points",
    history_from: datetime | None = None,
) -> pl.DataFrame:
    """Points (or histogram rows, ``kind="histograms"``) of each series after its own watermark.

    ``since[sid] = None`` reads the series from ``history_from`` (or its beginning).
    """
    if not since:
        return pl.DataFrame(schema=schema.POINTS if kind == "points" else schema.HISTOGRAMS)
    cols = "p.series_id, p.ts, p.value" if kind == "points" else "p.*"
    return _after_watermarks(store, since, kind, cols, "ORDER BY p.series_id, p.ts", history_from)


def new_point_counts(
    store: Store, since: Mapping[int, datetime | None], *, kind: str = "points"
) -> dict[int, int]:
    """How many points (or histogram rows) each series has after its own watermark (series with none are
    absent); one scan of the rows after the earliest watermark."""
    if not since:
        return {}
    df = _after_watermarks(store, since, kind, "p.series_id, count(*) AS n", "GROUP BY p.series_id")
    return dict(zip(df["series_id"].to_list(), df["n"].to_list(), strict=True))


def _after_watermarks(
    store: Store,
    since: Mapping[int, datetime | None],
    kind: str,
    select: str,
    tail: str,
    history_from: datetime | None = None,
) -> pl.DataFrame:
    """``SELECT {select}`` over the rows of ``kind``'s table (alias ``p``) after each series' watermark."""
    table = {"points": "points", "histograms": "histograms"}[kind]
    floor = history_from or datetime(1970, 1, 1)
    marks = [v or floor for v in since.values()]
    w = pl.DataFrame(
        {"series_id": list(since), "since": marks},
        schema={"series_id": pl.Int64, "since": schema.TS},
    ).to_arrow()
    cur = store.cursor()
    cur.complete()
    cur.register("rootwise_watermarks", w)
    try:
        # the earliest watermark as a plain filter too: the scan skips the row groups before it (zone maps on
        # ts), so an incremental run reads the new points, not the whole table
        return cur.sql(
            f"SELECT {select} FROM {table} p JOIN rootwise_watermarks w "
            f"ON p.series_id = w.series_id AND p.ts > w.since WHERE p.ts > $earliest {tail}",
            params={"earliest": min(marks)},
        ).pl()
    finally:
        cur.unregister("rootwise_watermarks")


def counter_increases_since(
    store: Store, since: Mapping[int, datetime | None], *, lookback: timedelta = timedelta(hours=1)
) -> pl.DataFrame:
    """Per-step increases of cumulative counters after each series' own watermark (``series_id, ts, value``).

    A drop is a reset and the new value is the increase (Prometheus' rule, as in :func:`aggregate_points_since`).
    The increase into the first point after a watermark needs the point before it, which is looked for up to
    ``lookback`` back; a series' very first point has none and is left out, and so is the first point after a
    silence longer than ``lookback``.
    """
    if not since:
        return pl.DataFrame(schema=schema.POINTS)
    df = points_since(store, {s: (v - lookback if v is not None else None) for s, v in since.items()})
    floor = datetime(1970, 1, 1)
    marks = pl.DataFrame(
        {"series_id": list(since), "since": [v or floor for v in since.values()]},
        schema={"series_id": pl.Int64, "since": schema.TS},
    )
    prev = pl.col("value").shift(1).forward_fill().over("series_id")
    return (
        df.with_columns(prev.alias("prev"))
        .filter(pl.col("prev").is_not_null())
        .with_columns(
            pl.when(pl.col("value") < pl.col("prev"))
            .then(pl.col("value"))
            .otherwise(pl.col("value") - pl.col("prev"))
            .alias("value")
        )
        .join(marks, on="series_id")
        .filter(pl.col("ts") > pl.col("since"))
        .select("series_id", "ts", "value")
        .cast(pl.Schema(schema.POINTS))
    )


def _incident_rows(cur: Any, where: str, params: dict[str, Any]) -> list[Incident]:
    rows = cur.execute(
        f'SELECT id, service, metric, map_entries(labels), start, "end", severity, status FROM incidents WHERE {where}',
        params,
    ).fetchall()
    if not rows:
        return []
    ids = [r[0] for r in rows]
    series: dict[str, dict[int, Episode]] = {i: {} for i in ids}
    for r in cur.execute(
        "SELECT s.incident_id, s.series_id, s.metric, map_entries(s.labels), s.start, s.last, s.peak, s.active, i.service "
        "FROM incident_series s JOIN incidents i ON i.id = s.incident_id "
        "WHERE s.incident_id IN (SELECT unnest($ids::VARCHAR[]))",
        {"ids": ids},
    ).fetchall():
        series[r[0]][int(r[1])] = Episode(
            int(r[1]), r[8], r[2], _labels(r[3]), r[4], r[5], float(r[6]), bool(r[7])
        )
    return [Incident(r[0], r[1], r[2], _labels(r[3]), r[4], r[5], r[6], r[7], series[r[0]]) for r in rows]


def recent_incidents(store: Store, since: datetime) -> list[Incident]:
    """Incidents still open, and those resolved at or after ``since`` (they may reopen)."""
    cur = store.cursor()
    cur.complete()
    return _incident_rows(cur, "status <> 'resolved' OR \"end\" >= $since", {"since": since})


def open_incidents(store: Store) -> list[Incident]:
    """Incidents not resolved (open or acknowledged), with their series."""
    cur = store.cursor()
    cur.complete()
    return _incident_rows(cur, "status <> 'resolved'", {})


def save_detection(
    store: Store,
    *,
    states: Mapping[int, SeriesState],
    anomalies: pl.DataFrame,
    detector: str,
    incidents: Sequence[Incident],
    now: datetime,
) -> None:
    """Write one detection step atomically: anomalies, changed incidents and their series, new states.

    A crash before the commit leaves the previous state (the same points are scored again next run); after
    it, everything; so ``rootwise detect`` never double counts and never loses an anomaly.
    """
    with store.write_transaction() as cur:
        if anomalies.height:
            a = anomalies.select(
                pl.col("series_id"),
                pl.col("ts"),
                pl.lit(detector).alias("detector"),
                "score",
                "is_anomaly",
                "expected",
                "lower",
                "upper",
            ).to_arrow()
            cur.register("rootwise_anomalies", a)
            cur.execute("INSERT INTO anomalies SELECT * FROM rootwise_anomalies")
            cur.unregister("rootwise_anomalies")
        for inc in incidents:
            cur.execute(
                'INSERT INTO incidents (id, service, metric, labels, start, "end", severity, status, causes, updated, peak) '
                "VALUES ($id, $service, $metric, MAP($k::VARCHAR[], $v::VARCHAR[]), $start, $end, $severity, $status, "
                "NULL, $now, $peak) ON CONFLICT (id) DO UPDATE SET metric = excluded.metric, labels = excluded.labels, "
                'start = excluded.start, "end" = excluded."end", updated = excluded.updated, peak = excluded.peak, '
                # responders' states survive detection; a page never goes back to ticket
                "severity = CASE WHEN incidents.severity = 'page' THEN 'page' ELSE excluded.severity END, "
                "status = CASE WHEN excluded.status = 'resolved' THEN 'resolved' "
                "WHEN incidents.status = 'acknowledged' THEN 'acknowledged' ELSE excluded.status END",
                {
                    "id": inc.id,
                    "service": inc.service,
                    "metric": inc.metric,
                    "k": list(inc.labels),
                    "v": list(inc.labels.values()),
                    "start": inc.start,
                    "end": inc.end,
                    "severity": inc.severity,
                    "status": inc.status,
                    "now": now,
                    "peak": inc.peak,
                },
            )
            for ep in inc.series.values():
                cur.execute(
                    "INSERT INTO incident_series VALUES ($i, $s, $m, MAP($k::VARCHAR[], $v::VARCHAR[]), $a, $b, $p, $act) "
                    "ON CONFLICT (incident_id, series_id) DO UPDATE SET start = excluded.start, last = excluded.last, "
                    "peak = excluded.peak, active = excluded.active",
                    {
                        "i": inc.id,
                        "s": ep.series_id,
                        "m": ep.metric,
                        "k": list(ep.labels),
                        "v": list(ep.labels.values()),
                        "a": ep.start,
                        "b": ep.last,
                        "p": ep.peak,
                        "act": ep.active,
                    },
                )
        if states:
            rows = pl.DataFrame(
                {
                    "series_id": list(states),
                    "detector": [s.detector for s in states.values()],
                    "state": [_blob(s.state) for s in states.values()],
                    "alarm": [_blob(s.alarm) for s in states.values()],
                    "scored_until": [s.scored_until for s in states.values()],
                    "fitted_until": [s.fitted_until for s in states.values()],
                    "updated": [now] * len(states),
                },
                schema={
                    "series_id": pl.Int64,
                    "detector": pl.Utf8,
                    "state": pl.Binary,
                    "alarm": pl.Binary,
                    "scored_until": schema.TS,
                    "fitted_until": schema.TS,
                    "updated": schema.TS,
                },
            ).to_arrow()
            cur.register("rootwise_states", rows)
            cur.execute("INSERT OR REPLACE INTO detector_state SELECT * FROM rootwise_states")
            cur.unregister("rootwise_states")


#: the keys of each incident :func:`list_incidents` returns, in order (a CSV of no incidents still has its header)
INCIDENT_FIELDS = (
    "id",
    "service",
    "metric",
    "labels",
    "start",
    "end",
    "severity",
    "status",
    "causes",
    "peak",
    "series",
)


def list_incidents(
    store: Store,
    *,
    status: str | None = None,
    service: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
    firing_or_updated_since: datetime | None = None,
) -> list[dict[str, Any]]:
    """Incidents as DESIGN.md's JSON objects (``id, service, metric, labels, start, end, severity, status,
    causes``) plus ``peak`` and ``series`` (affected series count), most recent first.

    ``firing_or_updated_since`` keeps the incidents not resolved plus those updated since then (alerting)."""
    conds, params = ["TRUE"], {}
    if firing_or_updated_since is not None:
        conds.append("(status <> 'resolved' OR updated >= $updated_since)")
        params["updated_since"] = firing_or_updated_since
    if status:
        conds.append("status = $status")
        params["status"] = status
    if service:
        conds.append("service = $service")
        params["service"] = service
    if since:
        conds.append('"end" >= $since')
        params["since"] = since
    sql = (
        'SELECT id, service, metric, map_entries(labels), start, "end", severity, status, causes, peak, '
        "(SELECT count(*) FROM incident_series s WHERE s.incident_id = i.id) "
        f"FROM incidents i WHERE {' AND '.join(conds)} ORDER BY start DESC, id"
    )
    if limit:
        sql += " LIMIT $limit"
        params["limit"] = int(limit)
    cur = store.cursor()
    cur.complete()
    out = []
    for r in cur.execute(sql, params).fetchall():
        values = (
            r[0],
            r[1],
            r[2],
            _labels(r[3]),
            r[4].isoformat() if r[4] else None,
            r[5].isoformat() if r[5] else None,
            r[6],
            r[7],
            json.loads(r[8]) if r[8] else [],
            r[9],
            r[10],
        )
        out.append(dict(zip(INCIDENT_FIELDS, values, strict=True)))
    return out


def incident_series(store: Store, incident_id: str) -> pl.DataFrame:
    """The affected series of an incident (series_id, metric, labels, start, last, peak, active)."""
    cur = store.cursor()
    cur.complete()
    return cur.sql(
        "SELECT series_id, metric, map_entries(labels) AS labels, start, last, peak, active FROM incident_series "
        "WHERE incident_id = $id ORDER BY peak DESC",
        params={"id": incident_id},
    ).pl()


def register_series(store: Store, rows: Sequence[tuple[int, str, str, str, str, dict[str, str]]]) -> None:
    """Add derived series (``id, metric, service, kind, unit, labels``) to the catalog if they are new."""
    if not rows:
        return
    with store.write_transaction() as cur:
        for sid, metric, service, kind, unit, labels in rows:
            cur.execute(
                "INSERT INTO series (series_id, metric, service, kind, unit, labels) SELECT $id, $metric, $service, $kind, $unit, MAP($k::VARCHAR[], $v::VARCHAR[]) "
                "WHERE NOT EXISTS (SELECT 1 FROM series WHERE series_id = $id)",
                {
                    "id": sid,
                    "metric": metric,
                    "service": service,
                    "kind": kind,
                    "unit": unit,
                    "k": list(labels),
                    "v": list(labels.values()),
                },
            )


def aggregate_points_since(
    store: Store, series_id: int, members: Sequence[int], kind: str, since: datetime | None
) -> pl.DataFrame:
    """One aggregate point per timestamp over ``members`` after ``since``: the sum of deltas, the sum of
    counter increases (Prometheus reset rule, so member resets do not show as fleet drops) or the mean of
    gauges. Returned with ``series_id`` set to the aggregate's id."""
    params: dict[str, Any] = {
        "ids": [int(m) for m in members],
        "since": since or datetime(1970, 1, 1),
        "sid": series_id,
    }
    if kind == "counter":
        sql = """
            SELECT $sid AS series_id, ts, sum(inc) AS value FROM (
                SELECT ts, CASE WHEN value < prev THEN value ELSE value - prev END AS inc FROM (
                    SELECT ts, value, lag(value) OVER (PARTITION BY series_id ORDER BY ts) AS prev FROM points
                    WHERE series_id IN (SELECT unnest($ids::BIGINT[])) AND ts > $since - INTERVAL 1 HOUR
                )
                WHERE prev IS NOT NULL
            ) WHERE ts > $since GROUP BY ts ORDER BY ts
        """
    else:
        agg = "avg" if kind == "gauge" else "sum"
        sql = f"""
            SELECT $sid AS series_id, ts, {agg}(value) AS value FROM points
            WHERE series_id IN (SELECT unnest($ids::BIGINT[])) AND ts > $since GROUP BY ts ORDER BY ts
        """
    cur = store.cursor()
    cur.complete()
    df = cur.sql(sql, params=params).pl()
    return df.cast(pl.Schema(schema.POINTS)) if df.height else pl.DataFrame(schema=schema.POINTS)


def write_forecasts(store: Store, frame: pl.DataFrame, *, created: datetime) -> int:
    """Append forecasts (``series_id, ts, yhat, lo80, hi80, lo95, hi95, model``) made at ``created``; earlier
    forecasts are kept, so a report can compare what was forecast with what happened."""
    if frame.height == 0:
        return 0
    rows = frame.select(
        pl.col("series_id").cast(pl.Int64),
        pl.col("ts").cast(schema.TS),
        "yhat",
        "lo80",
        "hi80",
        "lo95",
        "hi95",
        "model",
        pl.lit(created).cast(schema.TS).alias("created"),
    ).to_arrow()
    with store.write_transaction() as cur:
        cur.register("rootwise_forecasts", rows)
        cur.execute("INSERT INTO forecasts SELECT * FROM rootwise_forecasts")
        cur.unregister("rootwise_forecasts")
    return frame.height


def write_capacity_forecasts(store: Store, frame: pl.DataFrame, *, report_id: str, created: datetime) -> int:
    """Record a capacity report's daily forecasts (``resource, unit, ts, yhat, lo80, hi80, lo95, hi95, model``)
    so the next report can score them against what happened; re-writing a report id replaces it."""
    if frame.height == 0:
        return 0
    rows = frame.select(
        pl.lit(report_id).alias("report_id"),
        pl.lit(created).cast(schema.TS).alias("created"),
        pl.col("resource").cast(pl.Utf8),
        pl.col("unit").cast(pl.Utf8),
        pl.col("ts").cast(schema.TS),
        *[pl.col(c).cast(pl.Float64) for c in ("yhat", "lo80", "hi80", "lo95", "hi95")],
        pl.col("model").cast(pl.Utf8),
    ).to_arrow()
    with store.write_transaction() as cur:
        cur.execute("DELETE FROM capacity_forecasts WHERE report_id = $id", {"id": report_id})
        cur.register("rootwise_capacity", rows)
        cur.execute("INSERT INTO capacity_forecasts SELECT * FROM rootwise_capacity")
        cur.unregister("rootwise_capacity")
    return frame.height


def previous_capacity_forecasts(store: Store, before: datetime) -> pl.DataFrame:
    """The daily forecasts of the latest capacity report created before ``before`` (empty when none)."""
    sql = """
        SELECT report_id, created, resource, unit, ts, yhat, lo80, hi80, lo95, hi95, model
        FROM capacity_forecasts
        WHERE report_id = (
            SELECT report_id FROM capacity_forecasts WHERE created < $before ORDER BY created DESC LIMIT 1
        )
        ORDER BY resource, ts
    """
    cur = store.cursor()
    return cur.sql(sql, params={"before": before}).pl()


def get_incident(store: Store, incident_id: str) -> dict[str, Any] | None:
    """One incident as :func:`list_incidents` shows it, or ``None`` when the id is unknown."""
    cur = store.cursor()
    cur.complete()
    row = cur.execute(
        'SELECT id, service, metric, map_entries(labels), start, "end", severity, status, causes, peak '
        "FROM incidents WHERE id = $id",
        {"id": incident_id},
    ).fetchone()
    if row is None:
        return None
    return {
        "id": row[0],
        "service": row[1],
        "metric": row[2],
        "labels": _labels(row[3]),
        "start": row[4],
        "end": row[5],
        "severity": row[6],
        "status": row[7],
        "causes": json.loads(row[8]) if row[8] else [],
        "peak": row[9],
    }


def incidents_without_causes(store: Store, since: datetime | None = None) -> list[str]:
    """Ids of incidents that have no stored RCA yet (newest first), optionally only those ending after ``since``."""
    cur = store.cursor()
    cur.complete()
    sql = 'SELECT id FROM incidents WHERE causes IS NULL AND ("end" >= $since OR $since IS NULL) ORDER BY start DESC'
    return [r[0] for r in cur.execute(sql, {"since": since}).fetchall()]


def save_causes(store: Store, incident_id: str, causes: list[dict[str, Any]]) -> None:
    """Store an incident's ranked causes (the ``causes`` list of ``rootwise rca``'s JSON)."""
    with store.write_transaction() as cur:
        cur.execute(
            "UPDATE incidents SET causes = $causes WHERE id = $id",
            {"causes": json.dumps(causes, default=str), "id": incident_id},
        )


#: statuses a responder can set on an incident (detection itself only opens and resolves)
INCIDENT_STATUSES = ("open", "acknowledged", "resolved")


class IncidentStatusError(ValueError):
    """A status change that does not apply to the incident as it is (acknowledging a resolved one)."""


def set_incident_status(store: Store, incident_id: str, status: str, *, now: datetime) -> bool:
    """Set an incident's status (``open``, ``acknowledged`` or ``resolved``) and its ``updated`` time.

    Detection keeps an acknowledged status (see :func:`save_detection`), so an acknowledgement survives the
    next run.

    Returns
    -------
    bool
        ``False`` when no incident has that id; :class:`IncidentStatusError` for acknowledging a resolved one.
    """
    if status not in INCIDENT_STATUSES:
        raise ValueError(f"status must be one of {', '.join(INCIDENT_STATUSES)}; got {status!r}")
    with store.write_transaction() as cur:
        found = cur.execute("SELECT status FROM incidents WHERE id = $id", {"id": incident_id}).fetchone()
        if not found:
            return False
        if found[0] == "resolved" and status == "acknowledged":
            # it would leave the resolved list and read as someone working on it
            raise IncidentStatusError(
                f"incident {incident_id} is resolved: reopen it rather than acknowledge it"
            )
        cur.execute(
            "UPDATE incidents SET status = $status, updated = $now WHERE id = $id",
            {"status": status, "now": now, "id": incident_id},
        )
    return True


def anomalies_between(
    store: Store, series_ids: Sequence[int], start: datetime, end: datetime
) -> pl.DataFrame:
    """Anomalous points (``is_anomaly``) of the given series in ``[start, end)``.

    Returns
    -------
    pl.DataFrame
        ``series_id, ts, detector, score, expected, lower, upper`` in time order.
    """
    columns: dict[str, Any] = {
        "series_id": pl.Int64,
        "ts": schema.TS,
        "detector": pl.Utf8,
        "score": pl.Float64,
        "expected": pl.Float64,
        "lower": pl.Float64,
        "upper": pl.Float64,
    }
    ids = [int(i) for i in series_ids]
    if not ids:
        return pl.DataFrame(schema=columns)
    cur = store.cursor()
    cur.complete()
    df = cur.sql(
        "SELECT series_id, ts, detector, score, expected, lower, upper FROM anomalies "
        "WHERE is_anomaly AND series_id IN (SELECT unnest($ids::BIGINT[])) AND ts >= $start AND ts < $end "
        "ORDER BY ts, series_id",
        params={"ids": ids, "start": start, "end": end},
    ).pl()
    return df.cast(pl.Schema(columns)) if df.height else pl.DataFrame(schema=columns)


def last_capacity_report(store: Store) -> datetime | None:
    """When the newest recorded capacity report was made (``capacity_forecasts.created``), if any."""
    cur = store.cursor()
    cur.complete()
    row = cur.execute("SELECT max(created) FROM capacity_forecasts").fetchone()
    return row[0] if row else None
