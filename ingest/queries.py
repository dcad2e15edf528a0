"""Read queries over the telemetry store: the only module with read SQL (STYLE.md rule 6).

Every function takes the :class:`~ingest.store.Store` first, runs on the calling thread's cursor and returns
a polars frame (or a plain list for catalog look-ups). Aggregation runs inside DuckDB; nothing loops over
points in Python.

Safety
------
Every user-supplied value (metric, service, label names and values, regexes, times, limits) is a bound
parameter; SQL text is assembled only from fixed fragments and generated placeholders. Label names are also
checked against the catalog (the distinct label keys of ``series``) so a typo fails loudly with the names
that do exist, instead of silently matching nothing.

Label matchers
--------------
:class:`Matcher` follows PromQL: ``=``, ``!=``, ``=~`` and ``!~``, regexes fully anchored (RE2, DuckDB
``regexp_full_match``), and a missing label counts as the empty string (so ``region!="eu"`` keeps series
without a region, and ``region=""`` selects exactly those). The pseudo-label ``__service__``
(:data:`SERVICE_LABEL`) addresses the ``service`` column in matchers and ``group_by``.

Time buckets
------------
``resample`` and the histogram queries cut ``[start, end)`` into epoch-aligned buckets of ``step``
(``time_bucket(step, ts, TIMESTAMP '1970-01-01')``, computed on epoch microseconds); ``start`` is floored
and ``end`` ceiled to the step so every bucket is whole. A bucket's ``ts`` is its start. Buckets without
data are absent (no zero filling).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import polars as pl

from ingest import schema
from ingest.store import Store, StoreError, rollup_state

#: pseudo-label addressing the ``series.service`` column in matchers and ``group_by``
SERVICE_LABEL = "__service__"
MATCH_OPS = ("=", "!=", "=~", "!~")
#: temporal aggregations of :func:`resample` (per series, over one step)
AGGS = ("auto", "avg", "sum", "min", "max", "count", "last", "rate", "increase")
#: aggregations across the series of one group
ACROSS = ("sum", "avg", "min", "max")
#: how far before ``start`` a counter's previous sample is looked for (Prometheus' default lookback delta)
COUNTER_LOOKBACK = timedelta(minutes=5)
#: rollup tables written by :mod:`ingest.retention`, finest first: (table, width in microseconds)
ROLLUPS = (("points_5m", 300_000_000), ("points_1h", 3_600_000_000))
#: histogram rollup tables (bucket increments), finest first
HISTOGRAM_ROLLUPS = (("histograms_5m", 300_000_000), ("histograms_1h", 3_600_000_000))
#: refuse queries that would produce more buckets than this per group
MAX_BUCKETS = 1_000_000
#: minimum severity names accepted by :func:`logs`, as OTLP SeverityNumber lower bounds
SEVERITY_NUMBERS = {
    "trace": 1,
    "debug": 5,
    "info": 9,
    "warn": 13,
    "warning": 13,
    "error": 17,
    "fatal": 21,
    "critical": 21,
}
#: a parent span may start this long before the window of :func:`topology` and still link its children
TOPOLOGY_PARENT_SLACK = timedelta(hours=1)

_GAUGE_LIKE = frozenset({"gauge", "summary"})
_SUM_LIKE = frozenset({"counter", "delta"})
_RESERVED_COLUMNS = frozenset({"ts", "value", "quantile", "series_id"})
# (agg, across) pairs computed in one GROUP BY over points; the rest need a per-series level first
_FUSED = {
    ("avg", "avg"),
    ("sum", "sum"),
    ("min", "min"),
    ("max", "max"),
    ("count", "sum"),
    ("rate", "sum"),
    ("increase", "sum"),
}
_DEFAULT_ACROSS = {
    "avg": "avg",
    "sum": "sum",
    "min": "min",
    "max": "max",
    "count": "sum",
    "last": "sum",
    "rate": "sum",
    "increase": "sum",
}


class QueryError(StoreError, ValueError):
    """A query that cannot be answered as asked; the message says why and what would work."""


class UnknownNameError(QueryError):
    """A metric, service or label name that the store does not know."""


@dataclass(frozen=True)
class Matcher:
    """One PromQL-style label matcher.

    Examples
    --------
    >>> Matcher("tenant", "=~", "acme|globex")
    Matcher(label='tenant', op='=~', value='acme|globex')
    >>> Matcher("tenant", "==", "x")
    Traceback (most recent call last):
    ...
    ingest.queries.QueryError: matcher operator must be one of =, !=, =~, !~; got '=='
    """

    label: str
    op: str = "="
    value: str = ""

    def __post_init__(self) -> None:
        if self.op not in MATCH_OPS:
            raise QueryError(f"matcher operator must be one of {', '.join(MATCH_OPS)}; got {self.op!r}")
        if not isinstance(self.label, str) or not self.label:
            raise QueryError(f"matcher label must be a non-empty string; got {self.label!r}")
        if not isinstance(self.value, str):
            raise QueryError(f"matcher value must be a string; got {self.value!r} for label {self.label!r}")


Matchers = Sequence[Matcher] | Mapping[str, str]


# -- SQL plumbing -------------------------------------------------------------------------------------
class _Params:
    """Collects bound parameters; calling it returns the placeholder to put in the SQL text."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def __call__(self, value: Any, cast: str | None = None) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"${name}::{cast}" if cast else f"${name}"


def _frame(store: Store, sql: str, params: _Params | None = None) -> pl.DataFrame:
    values = params.values if params and params.values else None
    cur = store.cursor()
    # DuckDB 2 refuses new work on a cursor whose last execute() result was only partly read (fetchone);
    # finish it rather than fail because of what other code on this thread left behind
    cur.complete()
    return cur.sql(sql, params=values).pl()


def _typed(df: pl.DataFrame, columns: Mapping[str, Any]) -> pl.DataFrame:
    """``df`` cast to ``columns``; an empty frame of exactly that schema when ``df`` has no rows."""
    target = pl.Schema(columns)
    return df.cast(target) if df.height else pl.DataFrame(schema=target)


def _rows(store: Store, sql: str, params: _Params | None = None) -> list[tuple]:
    values = params.values if params and params.values else None
    return store.cursor().execute(sql, values).fetchall()


def _select_list(columns: Mapping[str, Any], alias: str) -> str:
    """Select list for a schema's columns; MAP columns come back as key/value struct lists (schema.LABELS)."""
    out = []
    for name, dtype in columns.items():
        col = f'{alias}."{name}"'
        out.append(f'map_entries({col}) AS "{name}"' if dtype == schema.LABELS else col)
    return ", ".join(out)


def _utc(ts: datetime | None, what: str) -> datetime | None:
    """Naive UTC datetime (aware values are converted, naive ones are taken as UTC)."""
    if ts is None:
        return None
    if not isinstance(ts, datetime):
        raise QueryError(f"{what} must be a datetime; got {type(ts).__name__}")
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return ts


def _epoch_us(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1)) // timedelta(microseconds=1)


def _from_us(us: int) -> datetime:
    return datetime(1970, 1, 1) + timedelta(microseconds=us)


def _as_list(value: str | Sequence[str] | None, what: str) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(v, str) for v in items):
        raise QueryError(f"{what} must be strings; got {items!r}")
    return items


# -- name checks --------------------------------------------------------------------------------------
def _unknown(noun: str, name: str, known: Sequence[str], shown: int = 15) -> UnknownNameError:
    """``unknown label 'tenat' (did you mean 'tenant'?); known labels: model, region, tenant``."""
    lead = "unknown label" if noun == "label" else f"no such {noun}"
    msg = f"{lead} {name!r}"
    close = difflib.get_close_matches(name, known, n=3)
    if close:
        msg += f" (did you mean {' or '.join(repr(c) for c in close)}?)"
    if known:
        more = f" (+{len(known) - shown} more)" if len(known) > shown else ""
        msg += f"; known {noun}s: {', '.join(known[:shown])}{more}"
    else:
        msg += f"; the store has no {noun}s yet"
    return UnknownNameError(msg)


def _check_metric(store: Store, metric: str | None, service: str | None) -> None:
    if metric is not None:
        if not isinstance(metric, str):
            raise QueryError(f"metric must be a string; got {metric!r}")
        p = _Params()
        if not _rows(store, f"SELECT 1 FROM series WHERE metric = {p(metric)} LIMIT 1", p):
            known = [r[0] for r in _rows(store, "SELECT DISTINCT metric FROM series ORDER BY 1")]
            raise _unknown("metric", metric, known)
    if service is not None:
        if not isinstance(service, str):
            raise QueryError(f"service must be a string; got {service!r}")
        p = _Params()
        if not _rows(store, f"SELECT 1 FROM series WHERE service = {p(service)} LIMIT 1", p):
            known = [r[0] for r in _rows(store, "SELECT DISTINCT service FROM series ORDER BY 1")]
            raise _unknown("service", service, known)


def check_names(store: Store, *, service: str | None = None, metric: str | None = None) -> None:
    """Raise :class:`UnknownNameError` (with the close matches) for a service seen nowhere in the store (metrics,
    spans, logs, events, topology) or a metric no series has: names typed by a person are checked against the
    catalog before anything is computed for them."""
    if service is not None and service not in (known := services(store)):
        raise _unknown("service", service, known)
    _check_metric(store, metric, None)


def _check_labels(store: Store, names: Iterable[str], metric: str | None = None) -> None:
    """Raise :class:`UnknownNameError` for the first name that is no label key of any series."""
    names = [n for n in names if n != SERVICE_LABEL]
    for n in names:
        if not isinstance(n, str) or not n:
            raise QueryError(f"label names must be non-empty strings; got {n!r}")
    if not names:
        return
    known = set(label_names(store))
    for n in names:
        if n not in known:
            # list the metric's own labels first: those are the likely intended ones
            own = label_names(store, metric) if metric is not None else []
            ordered = own + sorted(known - set(own)) + [SERVICE_LABEL]
            raise _unknown("label", n, ordered)


def _normalise_matchers(matchers: Matchers) -> tuple[Matcher, ...]:
    if isinstance(matchers, Mapping):
        return tuple(Matcher(str(k), "=", v) for k, v in matchers.items())
    if isinstance(matchers, Matcher | str):
        raise QueryError("matchers must be a sequence of Matcher or a mapping of label to value")
    out = tuple(matchers)
    for m in out:
        if not isinstance(m, Matcher):
            raise QueryError(f"matchers must be Matcher instances; got {m!r}")
    return out


def _check_regexes(store: Store, matchers: Sequence[Matcher]) -> None:
    for m in matchers:
        if m.op in ("=~", "!~"):
            try:
                store.cursor().execute("SELECT regexp_full_match('', ?)", [m.value]).fetchall()
            except duckdb.Error as exc:
                raise QueryError(
                    f"invalid regular expression in matcher {m.label}{m.op}{m.value!r}: {exc}"
                ) from exc


def _label_expr(p: _Params, label: str, missing_as_empty: bool) -> str:
    if label == SERVICE_LABEL:
        return "s.service"
    expr = f"s.labels[{p(label)}]"
    return f"coalesce({expr}, '')" if missing_as_empty else expr


def _series_where(
    store: Store,
    p: _Params,
    *,
    metric: str | None,
    service: str | None,
    matchers: Matchers,
    extra_labels: Sequence[str] = (),
) -> str:
    """Validated WHERE condition over ``series s`` for a metric/service/matchers selection."""
    ms = _normalise_matchers(matchers)
    _check_metric(store, metric, service)
    _check_labels(store, [m.label for m in ms] + list(extra_labels), metric)
    _check_regexes(store, ms)
    conds = ["TRUE"]
    if metric is not None:
        conds.append(f"s.metric = {p(metric)}")
    if service is not None:
        conds.append(f"s.service = {p(service)}")
    for m in ms:
        expr = _label_expr(p, m.label, missing_as_empty=True)
        val = p(m.value)
        conds.append(
            {
                "=": f"{expr} = {val}",
                "!=": f"{expr} <> {val}",
                "=~": f"regexp_full_match({expr}, {val})",
                "!~": f"NOT regexp_full_match({expr}, {val})",
            }[m.op]
        )
    return " AND ".join(conds)


def _check_group_by(group_by: Sequence[str]) -> list[str]:
    if isinstance(group_by, str):
        raise QueryError(f"group_by must be a sequence of label names, e.g. ({group_by!r},)")
    names = list(group_by)
    if len(set(names)) != len(names):
        raise QueryError(f"group_by repeats a label: {names}")
    clash = [n for n in names if n in _RESERVED_COLUMNS]
    if clash:
        raise QueryError(f"cannot group by {clash[0]!r}: it would collide with an output column")
    return names


# -- catalog ------------------------------------------------------------------------------------------
def services(store: Store) -> list[str]:
    """Every service seen anywhere: metrics, spans, logs, events and declared topology edges."""
    sql = """
        SELECT service FROM series UNION SELECT service FROM spans UNION SELECT service FROM logs
        UNION SELECT service FROM events UNION SELECT source FROM topology_edges
        UNION SELECT target FROM topology_edges ORDER BY 1
    """
    return [r[0] for r in _rows(store, sql) if r[0] is not None]


def service_overview(store: Store) -> pl.DataFrame:
    """One row per service: series, metrics, spans, error spans, logs, change events and last data time.

    Spans and logs are counted over the last 24 hours of data, so the overview stays cheap on a big store.
    """
    state = rollup_state(store.cursor())
    p = _Params()
    bound = p(state.rolled_to if state is not None else None, "TIMESTAMP")
    # the last point of a service: among raw points after the rollups' bound (all of them without rollups);
    # a service with none there has its last hourly rollup row, and its last point is in that hour (raw, or
    # the start of its last 5-minute row there once retention deleted the raw points)
    sql = f"""
        WITH s AS (SELECT service, count(*) AS series, count(DISTINCT metric) AS metrics FROM series GROUP BY 1),
        recent AS (
            SELECT se.service, max(p.ts) AS last_point FROM points p JOIN series se USING (series_id)
            WHERE {bound} IS NULL OR p.ts >= {bound} GROUP BY 1
        ),
        stale AS (
            SELECT se.service, max(h.ts) AS hour FROM points_1h h JOIN series se USING (series_id)
            WHERE {bound} IS NOT NULL AND se.service NOT IN (SELECT service FROM recent) GROUP BY 1
        ),
        in_hour AS (
            SELECT st.service, max(x.ts) AS last_point
            FROM stale st JOIN series se ON se.service = st.service
            JOIN (
                SELECT series_id, ts FROM points WHERE ts < {bound}
                UNION ALL SELECT series_id, ts FROM points_5m WHERE ts < {bound}
            ) x ON x.series_id = se.series_id AND x.ts >= st.hour AND x.ts < st.hour + INTERVAL 1 HOUR
            GROUP BY 1
        ),
        lp AS (
            SELECT * FROM recent
            UNION ALL SELECT st.service, coalesce(i.last_point, st.hour) FROM stale st LEFT JOIN in_hour i USING (service)
        ),
        horizon AS (SELECT coalesce(max(start), TIMESTAMP '1970-01-01') - INTERVAL 1 DAY AS since FROM spans),
        sp AS (
            SELECT service, count(*) AS spans_24h, count(*) FILTER (status = 'error') AS error_spans_24h
            FROM spans, horizon WHERE start >= horizon.since GROUP BY 1
        ),
        lg AS (
            SELECT service, count(*) AS logs_24h FROM logs
            WHERE ts >= (SELECT coalesce(max(ts), TIMESTAMP '1970-01-01') - INTERVAL 1 DAY FROM logs) GROUP BY 1
        ),
        ev AS (SELECT service, count(*) AS changes FROM events GROUP BY 1),
        names AS (SELECT service FROM s UNION SELECT service FROM sp UNION SELECT service FROM lg
                  UNION SELECT service FROM ev)
        SELECT names.service, coalesce(s.series, 0) AS series, coalesce(s.metrics, 0) AS metrics,
               coalesce(sp.spans_24h, 0) AS spans_24h, coalesce(sp.error_spans_24h, 0) AS error_spans_24h,
               coalesce(lg.logs_24h, 0) AS logs_24h, coalesce(ev.changes, 0) AS changes, lp.last_point
        FROM names LEFT JOIN s USING (service) LEFT JOIN sp USING (service) LEFT JOIN lg USING (service)
        LEFT JOIN ev USING (service) LEFT JOIN lp USING (service)
        ORDER BY names.service
    """
    return _frame(store, sql, p)


def metrics(store: Store, service: str | None = None) -> pl.DataFrame:
    """Metrics with their kind, unit and number of series, optionally of one service.

    Returns
    -------
    pl.DataFrame
        ``metric, kind, unit, series``, sorted by metric.
    """
    _check_metric(store, None, service)
    p = _Params()
    where = f"WHERE service = {p(service)}" if service is not None else ""
    sql = f"""
        SELECT metric, kind, unit, count(*)::BIGINT AS series FROM series {where}
        GROUP BY metric, kind, unit ORDER BY metric, kind, unit
    """
    return _frame(store, sql, p)


def label_names(store: Store, metric: str | None = None) -> list[str]:
    """Label keys used by any series (of ``metric`` when given), sorted."""
    if metric is not None:
        _check_metric(store, metric, None)
    p = _Params()
    where = f"WHERE metric = {p(metric)}" if metric is not None else ""
    sql = f"SELECT DISTINCT unnest(map_keys(labels)) AS k FROM series {where} ORDER BY k"
    return [r[0] for r in _rows(store, sql, p)]


def label_values(
    store: Store, label: str, metric: str | None = None, service: str | None = None, limit: int = 1000
) -> list[str]:
    """Distinct values of one label (or of :data:`SERVICE_LABEL`), sorted, at most ``limit``."""
    if not isinstance(limit, int) or limit <= 0:
        raise QueryError(f"limit must be a positive integer; got {limit!r}")
    p = _Params()
    where = _series_where(store, p, metric=metric, service=service, matchers=(), extra_labels=[label])
    expr = _label_expr(p, label, missing_as_empty=False)
    sql = f"""
        SELECT DISTINCT {expr} AS v FROM series s WHERE {where} AND {expr} IS NOT NULL
        ORDER BY v LIMIT {p(limit)}
    """
    return [r[0] for r in _rows(store, sql, p)]


def time_range(store: Store) -> tuple[datetime, datetime] | None:
    """Earliest and latest metric timestamp (raw points, histograms and rollups), or None when empty."""
    sql = """
        SELECT min(lo), max(hi) FROM (
            SELECT min(ts) AS lo, max(ts) AS hi FROM points
            UNION ALL SELECT min(ts), max(ts) FROM histograms
            UNION ALL SELECT min(ts), max(ts) FROM points_5m
            UNION ALL SELECT min(ts), max(ts) FROM points_1h
        )
    """
    row = _rows(store, sql)[0]
    return None if row[0] is None else (row[0], row[1])


def find_series(
    store: Store, *, metric: str | None = None, service: str | None = None, matchers: Matchers = ()
) -> pl.DataFrame:
    """Series matching a metric, a service and label matchers.

    Returns
    -------
    pl.DataFrame
        :data:`ingest.schema.SERIES` columns; ``labels`` as a list of ``{key, value}`` structs.
    """
    p = _Params()
    where = _series_where(store, p, metric=metric, service=service, matchers=matchers)
    sql = f"""
        SELECT {_select_list(schema.SERIES, "s")} FROM series s WHERE {where}
        ORDER BY s.metric, s.service, s.series_id
    """
    return _typed(_frame(store, sql, p), schema.SERIES)


# -- resampling ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Window:
    lo_us: int  # aligned start, epoch microseconds
    hi_us: int  # aligned end (exclusive)
    step_us: int

    @property
    def lo(self) -> datetime:
        return _from_us(self.lo_us)

    @property
    def hi(self) -> datetime:
        return _from_us(self.hi_us)


def _window(start: datetime, end: datetime, step: timedelta) -> _Window:
    lo_ts, hi_ts = _utc(start, "start"), _utc(end, "end")
    if lo_ts is None or hi_ts is None:
        raise QueryError("start and end are required")
    start, end = lo_ts, hi_ts
    if not isinstance(step, timedelta) or step <= timedelta(0):
        raise QueryError(f"step must be a positive timedelta; got {step!r}")
    step_us = step // timedelta(microseconds=1)
    if step_us <= 0:
        raise QueryError("step must be at least one microsecond")
    if end <= start:
        raise QueryError(f"end ({end}) must be after start ({start})")
    lo = _epoch_us(start) // step_us * step_us
    hi = -(-_epoch_us(end) // step_us) * step_us
    if (hi - lo) // step_us > MAX_BUCKETS:
        raise QueryError(
            f"{(hi - lo) // step_us} buckets of {step} between {start} and {end}; at most {MAX_BUCKETS} "
            "per query, use a larger step"
        )
    return _Window(lo, hi, step_us)


def _kinds(store: Store, where: str, p: _Params) -> dict[str, int]:
    """Series count per kind of a selection (``p`` holds exactly the selection's parameters).

    ``derived`` rows are detection's catalog entries for series it computes (histogram quantiles, aggregates);
    they hold no points, so they never decide how a selection is read."""
    sql = f"SELECT kind, count(*) FROM series s WHERE {where} AND s.kind <> 'derived' GROUP BY kind"
    return dict(_rows(store, sql, p))


def _rollup_end(store: Store, lo: datetime, hi: datetime) -> datetime | None:
    """End of the latest rollup bucket in ``[lo, hi)`` (None when no rollup overlaps the range)."""
    q = _Params()
    parts = [
        f"SELECT max(ts) + to_microseconds({width}) AS e FROM {table} WHERE ts >= {q(lo)} AND ts < {q(hi)}"
        for table, width in ROLLUPS
    ]
    row = _rows(store, f"SELECT max(e) FROM ({' UNION ALL '.join(parts)})", q)
    return row[0][0] if row and row[0][0] is not None else None


def _counter_increase(value: str, prev: str) -> str:
    """SQL for a counter's increase from ``prev`` to ``value``: a drop means a restart from 0 (Prometheus)."""
    return f"CASE WHEN {prev} IS NULL THEN NULL WHEN {value} >= {prev} THEN {value} - {prev} ELSE {value} END"


def _spread_sql(rows: str, step: str, width: str, cols: str) -> str:
    """``rows`` (a table expression with ``ts``) spread over the steps each row overlaps: one row per step
    ``b`` with ``cols`` and ``frac``, the share of the row's ``width`` microseconds that falls into ``b``."""
    return f"""
            SELECT {cols}, b,
                (least((b + 1) * {step}, t + {width}) - greatest(b * {step}, t))::DOUBLE / {width} AS frac
            FROM (
                SELECT *, epoch_us(ts) AS t,
                    unnest(generate_series(epoch_us(ts) // {step}, (epoch_us(ts) + {width} - 1) // {step})) AS b
                FROM {rows}
            )"""


def _raw_inwin_sql(p: _Params, w: _Window, kinds: frozenset[str], needs_inc: bool, lookback_us: int) -> str:
    """CTE ``inwin(series_id, ts, b, value[, inc])`` straight from raw points (no rollup in the range).

    The lean path: the window function, when a counter needs one, carries only ``(series_id, ts, value)``.
    """
    needs_lag = needs_inc and "counter" in kinds
    raw_lo = _from_us(w.lo_us - lookback_us if needs_lag else w.lo_us)
    lag = ", lag(p.value) OVER (PARTITION BY p.series_id ORDER BY p.ts) AS prev" if needs_lag else ""
    join = ""
    inc = ""
    if needs_inc:
        if kinds == {"delta"}:
            inc = ", value AS inc"
        elif kinds == {"counter"}:
            inc = f", {_counter_increase('value', 'prev')} AS inc"
        else:  # counters and deltas under one metric name (e.g. Prometheus and OTLP delta exporters)
            join = "JOIN sel USING (series_id)"
            inc = (
                f", CASE WHEN kind = 'delta' THEN value ELSE {_counter_increase('value', 'prev')} END AS inc"
            )
    return f"""
        inwin AS (
            SELECT series_id, ts, epoch_us(ts) // {p(w.step_us, "BIGINT")} AS b, value{inc}
            FROM (
                SELECT p.series_id, p.ts, p.value{lag} FROM points p
                WHERE p.ts >= {p(raw_lo)} AND p.ts < {p(w.hi)} AND p.series_id IN (SELECT series_id FROM sel)
            ) {join}
            WHERE ts >= {p(w.lo)}
        )"""


def _mixed_inwin_sql(
    p: _Params,
    w: _Window,
    roll_end: datetime,
    needs_inc: bool,
    lookback_us: int,
    *,
    complete: bool = False,
    hourly: bool = False,
) -> str:
    """CTE ``inwin(series_id, ts, b, frac, n, s, mn, mx, last, inc)`` from raw points and rollups.

    An element is a raw point (``w = 0``, ``n = 1``) or a rollup row (``w`` = its width) standing in for
    raw points that retention removed. Precedence per series: rollups are authoritative for a rolled hour
    (raw points that arrived later for it are ignored, as retention discards them); 5-minute rows are used
    where present, hourly rows for hours without 5-minute rows. Counter
    rollups carry their increase in ``sum`` (see :mod:`ingest.retention`), so increases read from rollups
    equal those computed from the raw points; a raw sample right after a rollup takes the rollup's
    ``last`` as its predecessor.

    A rollup row wider than the step (or straddling a bucket edge) is spread over the buckets it overlaps in
    proportion to the overlap (``frac``): its count, sum and increase are scaled, min/max/last kept.

    With ``complete`` the rollups represent every raw point before ``roll_end`` (the store's ``rolled_to`` or
    ``raw_from``, see :mod:`ingest.retention`): rollup rows are read before it and raw points only after it,
    with no per-point check. With ``hourly`` (a step that is a whole number of hours) only hourly rows are read.
    """
    hour = ROLLUPS[-1][1]
    raw_lo_us = w.lo_us - lookback_us if needs_inc else w.lo_us
    # hourly rows from the hour before the window may straddle its start or precede its first sample
    roll_lo = _from_us(min(raw_lo_us, w.lo_us - hour) // hour * hour)
    raw_lo = _from_us(raw_lo_us)
    split = max(min(roll_end, w.hi), raw_lo)
    raw_cols = (
        "p.series_id, p.ts, 0::BIGINT AS w, 1.0 AS n, p.value AS s, p.value AS mn, p.value AS mx, "
        "p.value AS last, NULL::DOUBLE AS inc_pre"
    )
    in_sel = "p.series_id IN (SELECT series_id FROM sel)"

    roll_hi = min(roll_end, w.hi) if complete else w.hi

    def rollup(table: str, width: int) -> str:
        return f"""
            SELECT r.series_id, r.ts, {width}::BIGINT AS w, r.count::DOUBLE AS n,
                CASE WHEN sel.kind = 'counter' THEN r.avg * r.count ELSE r.sum END AS s,
                r.min AS mn, r.max AS mx, r.last,
                CASE WHEN sel.kind IN ('counter', 'delta') THEN r.sum END AS inc_pre
            FROM {table} r JOIN sel USING (series_id)
            WHERE r.ts >= {p(roll_lo)} AND r.ts < {p(roll_hi)}"""

    (t5, w5), (t1, w1) = ROLLUPS
    prev = "lag(e.last) OVER (PARTITION BY e.series_id ORDER BY e.ts)" if needs_inc else "NULL::DOUBLE"
    step = p(w.step_us, "BIGINT")
    if hourly:  # hourly rows exist wherever 5-minute rows do (both are written together)
        rollups = f"""
        r1 AS ({rollup(t1, w1)}),"""
        rolled = "UNION ALL SELECT * FROM r1"
    else:
        rollups = f"""
        r5 AS ({rollup(t5, w5)}),
        h1 AS ({rollup(t1, w1)}),
        r1 AS (
            SELECT * FROM h1 WHERE NOT EXISTS (
                SELECT 1 FROM r5 WHERE r5.series_id = h1.series_id
                AND epoch_us(r5.ts) // {w1} = epoch_us(h1.ts) // {w1})
        ),"""
        rolled = "UNION ALL SELECT * FROM r5 UNION ALL SELECT * FROM r1"
    if complete:
        raw_before = ""
    else:
        # a rolled hour is sealed (retention discards raw points that arrive for it later)
        raw_before = f"""
            UNION ALL
            SELECT {raw_cols} FROM points p
            WHERE p.ts >= {p(raw_lo)} AND p.ts < {p(split)} AND {in_sel}
              AND NOT EXISTS (SELECT 1 FROM r5 WHERE r5.series_id = p.series_id
                              AND epoch_us(r5.ts) // {w5} = epoch_us(p.ts) // {w5})
              AND NOT EXISTS (SELECT 1 FROM h1 WHERE h1.series_id = p.series_id
                              AND epoch_us(h1.ts) // {w1} = epoch_us(p.ts) // {w1})"""
    return f"""{rollups}
        elems AS (
            SELECT {raw_cols} FROM points p WHERE p.ts >= {p(split)} AND p.ts < {p(w.hi)} AND {in_sel}
            {raw_before}
            {rolled}
        ),
        seq AS (
            SELECT e.series_id, e.ts, e.w, e.n, e.s, e.mn, e.mx, e.last,
                CASE sel.kind
                    WHEN 'delta' THEN e.s
                    WHEN 'counter' THEN coalesce(e.inc_pre, {_counter_increase("e.last", "e.prev")})
                END AS inc
            FROM (SELECT e.*, {prev} AS prev FROM elems e) e JOIN sel USING (series_id)
        ),
        buck AS (
            SELECT series_id, ts, epoch_us(ts) // {step} AS b, 1.0 AS frac, n, s, mn, mx, last, inc
            FROM seq WHERE w = 0
            UNION ALL
            SELECT series_id, ts, b, frac, n, s, mn, mx, last, inc FROM (
                {_spread_sql("seq WHERE w > 0", step, "w", "series_id, ts, n, s, mn, mx, last, inc")}
            )
        ),
        inwin AS (
            SELECT * FROM buck
            WHERE b >= {p(w.lo_us // w.step_us, "BIGINT")} AND b < {p(w.hi_us // w.step_us, "BIGINT")}
        )"""


# per-series aggregation over one step, for raw-only input and for mixed raw + rollup input
_TEMPORAL_RAW = {
    "avg": "avg(value)",
    "sum": "sum(value)",
    "min": "min(value)",
    "max": "max(value)",
    "count": "count(*)::DOUBLE",
    "last": "arg_max(value, ts)",
    "increase": "sum(inc)",
    "rate": "sum(inc)",
}
_TEMPORAL_MIXED = {
    "avg": "sum(s * frac) / sum(n * frac)",
    "sum": "sum(s * frac)",
    "min": "min(mn)",
    "max": "max(mx)",
    "count": "sum(n * frac)",
    "last": "arg_max(last, ts)",
    "increase": "sum(inc * frac)",
    "rate": "sum(inc * frac)",
}


@dataclass(frozen=True)
class _Plan:
    where: str
    params: _Params
    window: _Window
    agg: str
    kinds: frozenset[str]


def _plan(
    store: Store,
    *,
    metric: str,
    service: str | None,
    matchers: Matchers,
    start: datetime,
    end: datetime,
    step: timedelta,
    agg: str,
    group_by: Sequence[str],
) -> _Plan | None:
    """Validate a resample request; None when no series match."""
    if agg not in AGGS:
        raise QueryError(f"agg must be one of {', '.join(AGGS)}; got {agg!r}")
    if metric is None:
        raise QueryError("metric is required")
    w = _window(start, end, step)
    p = _Params()
    where = _series_where(store, p, metric=metric, service=service, matchers=matchers, extra_labels=group_by)
    kinds = frozenset(_kinds(store, where, p))
    if not kinds:
        return None
    if "histogram" in kinds:
        raise QueryError(
            f"{metric!r} is a histogram metric; use histogram_quantiles() or histogram_mean() instead of resample()"
        )
    if kinds & _GAUGE_LIKE and kinds & _SUM_LIKE:
        raise QueryError(
            f"{metric!r} mixes series kinds {sorted(kinds)}; narrow the selection (service or matchers)"
        )
    if agg == "auto":
        agg = "rate" if kinds <= _SUM_LIKE else "avg"
    if agg in ("rate", "increase") and not kinds <= _SUM_LIKE:
        raise QueryError(
            f"{agg} needs a counter or delta metric; {metric!r} is {'/'.join(sorted(kinds))} "
            "(use avg, min, max, last, ...)"
        )
    return _Plan(where, p, w, agg, kinds)


def _resample_sql(
    store: Store, plan: _Plan, group_exprs: Sequence[str], across: str | None, per_series: bool
) -> str:
    p, w, agg = plan.params, plan.window, plan.agg
    needs_inc = agg in ("rate", "increase")
    lookback_us = max(w.step_us, COUNTER_LOOKBACK // timedelta(microseconds=1))
    gsel = "".join(f", {e} AS g{i}" for i, e in enumerate(group_exprs))
    gcols = "".join(f", g{i}" for i in range(len(group_exprs)))
    # MATERIALIZED: label look-ups run once per series, not once per point after the join
    sel = f"sel AS MATERIALIZED (SELECT s.series_id, s.kind{gsel} FROM series s WHERE {plan.where})"
    hour = ROLLUPS[-1][1]
    raw_lo = _from_us(w.lo_us - lookback_us if needs_inc else w.lo_us)
    state = rollup_state(store.cursor())
    if state is not None and state.rolled_to is not None:
        # the rollups are complete up to a known bound: rollup rows before it, raw points after it. A step that
        # is a whole number of 5-minute rollups reads them up to ``rolled_to``; a finer one only where
        # retention deleted the raw points
        raw_from, rolled_to = state.raw_from, state.rolled_to
        bound = rolled_to if w.step_us % ROLLUPS[0][1] == 0 else raw_from
        if bound is None or bound <= raw_lo:
            inwin = _raw_inwin_sql(p, w, plan.kinds, needs_inc, lookback_us)
            temporal = _TEMPORAL_RAW[agg]
        else:
            hourly = w.step_us % hour == 0
            inwin = _mixed_inwin_sql(p, w, bound, needs_inc, lookback_us, complete=True, hourly=hourly)
            temporal = _TEMPORAL_MIXED[agg]
    elif (
        roll_end := _rollup_end(store, _from_us((w.lo_us - max(lookback_us, hour)) // hour * hour), w.hi)
    ) is None:
        inwin = _raw_inwin_sql(p, w, plan.kinds, needs_inc, lookback_us)
        temporal = _TEMPORAL_RAW[agg]
    else:
        inwin = _mixed_inwin_sql(p, w, roll_end, needs_inc, lookback_us)
        temporal = _TEMPORAL_MIXED[agg]
    if agg == "rate":
        temporal = f"{temporal} / {p(w.step_us / 1e6, 'DOUBLE')}"
    step = p(w.step_us, "BIGINT")
    head = f"WITH {sel},{inwin}"
    if per_series:
        return f"""{head}
        SELECT series_id, make_timestamp(b * {step}) AS ts, value FROM (
            SELECT series_id, b, {temporal} AS value FROM inwin GROUP BY series_id, b
        ) WHERE value IS NOT NULL AND NOT isnan(value) ORDER BY series_id, ts"""
    if (agg, across) in _FUSED:
        inner = f"""
            SELECT b{gcols}, {temporal} AS value FROM inwin JOIN sel USING (series_id) GROUP BY ALL"""
    else:
        inner = f"""
            SELECT b{gcols}, {across}(value) AS value FROM (
                SELECT series_id, b, {temporal} AS value FROM inwin GROUP BY series_id, b
            ) JOIN sel USING (series_id) WHERE value IS NOT NULL GROUP BY ALL"""
    return f"""{head}
        SELECT make_timestamp(b * {step}) AS ts{gcols}, value FROM ({inner})
        WHERE value IS NOT NULL AND NOT isnan(value) ORDER BY ts{gcols}"""


def resample(
    store: Store,
    *,
    metric: str,
    service: str | None = None,
    matchers: Matchers = (),
    start: datetime,
    end: datetime,
    step: timedelta,
    agg: str = "auto",
    group_by: Sequence[str] = (),
    across: str | None = None,
) -> pl.DataFrame:
    """One metric on a regular time grid, aggregated per group of series.

    Parameters
    ----------
    agg
        Per-series aggregation over each step (like PromQL ``*_over_time``): ``avg``, ``sum``, ``min``,
        ``max``, ``count`` (samples), ``last``, ``increase`` or ``rate`` (increase per second), or ``auto``:
        ``rate`` for counter and delta metrics, ``avg`` for gauges. Counter increases follow Prometheus'
        reset rule (a drop means a restart from 0) and each increase between two samples is attributed to
        the step holding the later one, so increases over consecutive steps add up exactly (no
        extrapolation, unlike PromQL ``rate``). The sample before ``start`` (up to ``max(step, 5 min)``
        earlier) supplies the first increase. Delta metrics sum their values.
    across
        How the series of one group combine (like PromQL ``sum by``): ``sum``, ``avg``, ``min`` or ``max``.
        Default: ``avg`` for ``avg``, ``min``/``max`` for themselves, ``sum`` otherwise. ``avg`` of ``avg``
        weights every sample equally (sum of values / number of samples); other pairs aggregate per series
        first.
    group_by
        Label names (or :data:`SERVICE_LABEL`); each becomes a column. Series without the label form the
        null group.

    Returns
    -------
    pl.DataFrame
        ``ts, <group_by...>, value`` sorted by ``ts`` then groups; buckets without data are absent.

    Notes
    -----
    Where retention replaced raw points by rollups (:mod:`ingest.retention`), the rollups are read instead,
    per series and rollup bucket (see ``_mixed_inwin_sql``): 5-minute rows, else hourly rows. With a step
    that is a multiple of the rollup width the result equals what the raw points gave (counters included:
    their rollups keep the increase); a finer step spreads each rollup row evenly over the buckets it
    covers. Ranges without rollups take a leaner raw-only path.
    """
    group_by = _check_group_by(group_by)
    if across is not None and across not in ACROSS:
        raise QueryError(f"across must be one of {', '.join(ACROSS)}; got {across!r}")
    plan = _plan(
        store,
        metric=metric,
        service=service,
        matchers=matchers,
        start=start,
        end=end,
        step=step,
        agg=agg,
        group_by=group_by,
    )
    out_schema = {"ts": schema.TS, **{g: pl.Utf8 for g in group_by}, "value": pl.Float64}
    if plan is None:
        return _typed(pl.DataFrame(), out_schema)
    across = across or _DEFAULT_ACROSS[plan.agg]
    group_exprs = [_label_expr(plan.params, g, missing_as_empty=False) for g in group_by]
    sql = _resample_sql(store, plan, group_exprs, across, per_series=False)
    df = _frame(store, sql, plan.params)
    df = df.rename({f"g{i}": g for i, g in enumerate(group_by)})
    return _typed(df, out_schema)


def resample_series(
    store: Store,
    *,
    metric: str,
    service: str | None = None,
    matchers: Matchers = (),
    start: datetime,
    end: datetime,
    step: timedelta,
    agg: str = "auto",
) -> pl.DataFrame:
    """Every matching series on a regular grid, unaggregated: the long frame detectors consume.

    Same ``agg`` semantics, bucket alignment and rollup fallback as :func:`resample`.

    Returns
    -------
    pl.DataFrame
        ``series_id, ts, value`` sorted by series then time (join :func:`find_series` for labels).
    """
    plan = _plan(
        store,
        metric=metric,
        service=service,
        matchers=matchers,
        start=start,
        end=end,
        step=step,
        agg=agg,
        group_by=(),
    )
    out_schema = {"series_id": pl.Int64, "ts": schema.TS, "value": pl.Float64}
    if plan is None:
        return _typed(pl.DataFrame(), out_schema)
    sql = _resample_sql(store, plan, [], None, per_series=True)
    df = _frame(store, sql, plan.params)
    return _typed(df, out_schema)


def series_points(
    store: Store, series_ids: Sequence[int], start: datetime | None = None, end: datetime | None = None
) -> pl.DataFrame:
    """Raw points of the given series in ``[start, end)``.

    Points already replaced by rollups (:mod:`ingest.retention`) are not returned; use
    :func:`resample_series` for ranges older than the raw retention.

    Returns
    -------
    pl.DataFrame
        :data:`ingest.schema.POINTS` columns, sorted by series then time.
    """
    ids = [int(i) for i in series_ids]
    if not ids:
        return _typed(pl.DataFrame(), schema.POINTS)
    p = _Params()
    conds = [f"series_id IN (SELECT unnest({p(ids, 'BIGINT[]')}))"]
    if (lo := _utc(start, "start")) is not None:
        conds.append(f"ts >= {p(lo)}")
    if (hi := _utc(end, "end")) is not None:
        conds.append(f"ts < {p(hi)}")
    sql = f"SELECT series_id, ts, value FROM points WHERE {' AND '.join(conds)} ORDER BY series_id, ts"
    df = _frame(store, sql, p)
    return _typed(df, schema.POINTS)


# -- histograms ---------------------------------------------------------------------------------------
def _histogram_plan(
    store: Store,
    *,
    metric: str,
    service: str | None,
    matchers: Matchers,
    start: datetime,
    end: datetime,
    step: timedelta,
    group_by: Sequence[str],
) -> tuple[str, _Params, _Window] | None:
    if metric is None:
        raise QueryError("metric is required")
    w = _window(start, end, step)
    p = _Params()
    where = _series_where(store, p, metric=metric, service=service, matchers=matchers, extra_labels=group_by)
    kinds = set(_kinds(store, where, p))
    if not kinds:
        return None
    if kinds != {"histogram"}:
        raise QueryError(f"{metric!r} is {'/'.join(sorted(kinds))}, not a histogram; use resample()")
    return where, p, w


def histogram_increments_sql(source: str, keep: str) -> str:
    """CTEs ``h``, ``r`` and ``d(series_id, ts, bounds, inc, dsum, dcount)``: per-point histogram increments.

    ``source`` is a condition on ``histograms h`` choosing the points to read (the kept ones and, before them,
    where to look for each series' previous point); ``keep`` one on ``ts`` choosing those to return. Cumulative
    histograms become the difference to the series' previous point; a point whose bounds changed, or where any
    bucket count or the total count dropped, starts afresh (counter reset: its counts are the increment); a
    point without a previous one has NULL increments. Delta histograms are increments already. Shared by the
    queries and the histogram rollups (:mod:`ingest.retention`), so both count alike.
    """
    return f"""
        h AS (
            SELECT h.*,
                lag(counts) OVER win AS pc, lag(bounds) OVER win AS pb,
                lag(count) OVER win AS pcount, lag(sum) OVER win AS psum
            FROM histograms h
            WHERE {source}
            WINDOW win AS (PARTITION BY series_id ORDER BY ts)
        ),
        r AS (
            SELECT *, cumulative AND pc IS NOT NULL AND (
                pb <> bounds OR len(pc) <> len(counts) OR coalesce(count < pcount, FALSE)
                OR list_bool_or(list_transform(range(1, len(counts) + 1), lambda i: counts[i] < pc[i]))
            ) AS reset
            FROM h WHERE {keep}
        ),
        d AS (
            SELECT series_id, ts, bounds,
                CASE WHEN NOT cumulative OR reset THEN counts
                     WHEN pc IS NULL THEN NULL
                     ELSE list_transform(range(1, len(counts) + 1), lambda i: counts[i] - pc[i]) END AS inc,
                CASE WHEN NOT cumulative OR reset THEN sum WHEN pc IS NULL THEN NULL ELSE sum - psum END AS dsum,
                CASE WHEN NOT cumulative OR reset THEN count WHEN pc IS NULL THEN NULL ELSE count - pcount END
                    AS dcount
            FROM r
        )"""


def _histogram_increments_sql(
    store: Store, where: str, p: _Params, w: _Window, group_exprs: Sequence[str]
) -> str:
    """CTEs ``sel`` and ``e(series_id, ts, b, bounds, inc, dsum, dcount)``: increments per point or rollup row.

    Raw points are differenced with :func:`histogram_increments_sql`, their previous point looked for up to
    ``max(step, 5 min)`` before the window. When the step is a whole number of 5-minute buckets, the part of
    the window before ``histograms_to`` (see :mod:`ingest.retention`) is read from the histogram rollups
    instead: hourly rows for whole-hour steps, 5-minute rows otherwise (a 5-minute row lies inside one step),
    and for hours whose 5-minute rows were aged out, the hourly row spread over the steps it overlaps.
    """
    gsel = "".join(f", {e} AS g{i}" for i, e in enumerate(group_exprs))
    lookback = max(w.step_us, COUNTER_LOOKBACK // timedelta(microseconds=1))
    step = p(w.step_us, "BIGINT")
    in_sel = "series_id IN (SELECT series_id FROM sel)"
    state = rollup_state(store.cursor())
    bound = state.histograms_to if state is not None else None
    split = w.lo
    rolled = ""
    (t5, five), (t1, hour) = HISTOGRAM_ROLLUPS
    if bound is not None and w.step_us % five == 0 and bound > w.lo:
        split = min(bound, w.hi)
        hourly = w.step_us % hour == 0
        rolled = f"""
            UNION ALL
            SELECT series_id, ts, epoch_us(ts) // {step} AS b, bounds, counts AS inc, sum AS dsum, count AS dcount
            FROM {t1 if hourly else t5} WHERE ts >= {p(w.lo)} AND ts < {p(split)} AND {in_sel}"""
        if not hourly:
            # hours whose 5-minute rows retention aged out (``rollup_max_age_5m``): their hourly row, spread over
            # the steps it overlaps in proportion to the overlap
            hours_alone = f"""(
                SELECT h.* FROM {t1} h
                WHERE h.ts >= {p(_from_us(w.lo_us // hour * hour))} AND h.ts < {p(split)}
                  AND h.series_id IN (SELECT series_id FROM sel)
                  AND NOT EXISTS (SELECT 1 FROM {t5} f WHERE f.series_id = h.series_id
                                  AND f.ts >= h.ts AND f.ts < h.ts + INTERVAL 1 HOUR)
            )"""
            rolled += f"""
            UNION ALL
            SELECT series_id, ts, b, bounds, list_transform(counts, lambda x: x * frac) AS inc, sum * frac AS dsum,
                count * frac AS dcount
            FROM ({_spread_sql(hours_alone, step, str(hour), "series_id, ts, bounds, counts, sum, count")})
            WHERE b >= {p(w.lo_us // w.step_us, "BIGINT")} AND b < {p(w.hi_us // w.step_us, "BIGINT")}"""
    source = f"ts >= {p(_from_us(_epoch_us(split) - lookback))} AND ts < {p(w.hi)} AND {in_sel}"
    return f"""
        sel AS MATERIALIZED (SELECT s.series_id{gsel} FROM series s WHERE {where}),
        {histogram_increments_sql(source, f"ts >= {p(split)}")},
        e AS (
            SELECT series_id, ts, epoch_us(ts) // {step} AS b, bounds, inc, dsum, dcount FROM d{rolled}
        )"""


def histogram_quantiles(
    store: Store,
    *,
    metric: str,
    service: str | None = None,
    matchers: Matchers = (),
    start: datetime,
    end: datetime,
    step: timedelta,
    quantiles: Sequence[float] = (0.5, 0.95, 0.99),
    group_by: Sequence[str] = (),
) -> pl.DataFrame:
    """Quantiles of a histogram metric per step and group, the way Prometheus' ``histogram_quantile`` does.

    Per step the bucket increments of every series in the group are summed (see
    ``_histogram_increments_sql``), then for each quantile ``q`` the rank ``q * total`` is located in the
    cumulative counts and interpolated linearly inside its bucket. As in Prometheus (``bucketQuantile`` in
    ``promql/quantile.go``): the lowest bucket starts at 0 when its upper bound is positive (and returns its
    upper bound when that is ``<= 0``); a rank in the ``+Inf`` bucket returns the highest finite bound.

    Series with different bucket bounds are merged like ``sum by (le)`` over classic Prometheus histograms:
    cumulative counts are added per distinct upper bound, each series contributing at the bounds it has,
    and the result is made monotonic (running maximum, Prometheus ``ensureMonotonic``). With identical
    bounds this is the exact sum.

    Returns
    -------
    pl.DataFrame
        ``ts, <group_by...>, quantile, value``; steps with no observations are absent.
    """
    group_by = _check_group_by(group_by)
    qs = [float(q) for q in quantiles]
    if not qs or any(not (0.0 <= q <= 1.0) for q in qs):
        raise QueryError(f"quantiles must be a non-empty list of numbers in [0, 1]; got {list(quantiles)!r}")
    out_schema = {
        "ts": schema.TS,
        **{g: pl.Utf8 for g in group_by},
        "quantile": pl.Float64,
        "value": pl.Float64,
    }
    planned = _histogram_plan(
        store,
        metric=metric,
        service=service,
        matchers=matchers,
        start=start,
        end=end,
        step=step,
        group_by=group_by,
    )
    if planned is None:
        return _typed(pl.DataFrame(), out_schema)
    where, p, w = planned
    group_exprs = [_label_expr(p, g, missing_as_empty=False) for g in group_by]
    gcols = "".join(f", g{i}" for i in range(len(group_by)))
    part = f"PARTITION BY b{gcols}"
    incs = _histogram_increments_sql(store, where, p, w, group_exprs)
    sql = f"""
        WITH {incs},
        per_bucket AS (  -- increments summed per step, group, bucket layout (by hash) and upper bound
            SELECT d.b{gcols}, layout, le, sum(c) AS c FROM (
                SELECT series_id, b, hash(bounds) AS layout, unnest(list_append(bounds, 'inf'::DOUBLE)) AS le,
                    unnest(inc) AS c
                FROM e WHERE inc IS NOT NULL
            ) d JOIN sel USING (series_id) GROUP BY ALL
        ),
        layout_cum AS (  -- cumulative count at each upper bound of each layout
            SELECT b{gcols}, le, sum(c) OVER (PARTITION BY b{gcols}, layout ORDER BY le) AS cum FROM per_bucket
        ),
        merged AS (SELECT b{gcols}, le, sum(cum) AS cum FROM layout_cum GROUP BY ALL),
        mono AS (
            SELECT b{gcols}, le, max(cum) OVER ({part} ORDER BY le ROWS UNBOUNDED PRECEDING) AS cum FROM merged
        ),
        ranked AS (
            SELECT *, lag(le) OVER ({part} ORDER BY le) AS ple, lag(cum) OVER ({part} ORDER BY le) AS pcum,
                max(cum) OVER ({part}) AS total
            FROM mono
        ),
        picked AS (
            SELECT b{gcols}, q.q, any_value(total) AS total,
                arg_min({{'le': le, 'cum': cum, 'ple': ple, 'pcum': pcum}}, le)
                    FILTER (WHERE isfinite(le) AND cum >= q.q * total) AS hit,
                max(le) FILTER (WHERE isfinite(le)) AS top
            FROM ranked CROSS JOIN (SELECT unnest({p(qs, "DOUBLE[]")}) AS q) q
            GROUP BY ALL
        )
        SELECT make_timestamp(b * {p(w.step_us, "BIGINT")}) AS ts{gcols}, q AS quantile,
            CASE
                WHEN hit IS NULL THEN top
                WHEN hit.ple IS NULL AND hit.le <= 0 THEN hit.le
                ELSE coalesce(hit.ple, 0) + (hit.le - coalesce(hit.ple, 0))
                    * (q * total - coalesce(hit.pcum, 0)) / (hit.cum - coalesce(hit.pcum, 0))
            END AS value
        FROM picked WHERE total > 0 AND top IS NOT NULL
        ORDER BY ts{gcols}, quantile
    """
    df = _frame(store, sql, p).rename({f"g{i}": g for i, g in enumerate(group_by)})
    return _typed(df, out_schema)


def histogram_mean(
    store: Store,
    *,
    metric: str,
    service: str | None = None,
    matchers: Matchers = (),
    start: datetime,
    end: datetime,
    step: timedelta,
    group_by: Sequence[str] = (),
) -> pl.DataFrame:
    """Mean observation per step and group: increase of the histogram sum / increase of its count.

    Returns
    -------
    pl.DataFrame
        ``ts, <group_by...>, value, count`` (``count``: observations in the step); steps without
        observations are absent.
    """
    group_by = _check_group_by(group_by)
    out_schema = {"ts": schema.TS, **{g: pl.Utf8 for g in group_by}, "value": pl.Float64, "count": pl.Float64}
    planned = _histogram_plan(
        store,
        metric=metric,
        service=service,
        matchers=matchers,
        start=start,
        end=end,
        step=step,
        group_by=group_by,
    )
    if planned is None:
        return _typed(pl.DataFrame(), out_schema)
    where, p, w = planned
    group_exprs = [_label_expr(p, g, missing_as_empty=False) for g in group_by]
    gcols = "".join(f", g{i}" for i in range(len(group_by)))
    incs = _histogram_increments_sql(store, where, p, w, group_exprs)
    sql = f"""
        WITH {incs},
        agg AS (
            SELECT b{gcols}, sum(dsum) AS s, sum(dcount) AS n FROM e JOIN sel USING (series_id)
            WHERE dcount IS NOT NULL GROUP BY ALL
        )
        SELECT make_timestamp(b * {p(w.step_us, "BIGINT")}) AS ts{gcols}, s / n AS value, n AS count
        FROM agg WHERE n > 0 ORDER BY ts{gcols}
    """
    df = _frame(store, sql, p).rename({f"g{i}": g for i, g in enumerate(group_by)})
    return _typed(df, out_schema)


# -- spans, logs, events, topology, rejects -------------------------------------------------------------
def _time_conds(p: _Params, col: str, start: datetime | None, end: datetime | None) -> list[str]:
    conds = []
    if (lo := _utc(start, "start")) is not None:
        conds.append(f"{col} >= {p(lo)}")
    if (hi := _utc(end, "end")) is not None:
        conds.append(f"{col} < {p(hi)}")
    return conds


def _service_cond(p: _Params, col: str, service: str | Sequence[str] | None) -> list[str]:
    names = _as_list(service, "service")
    return [f"{col} IN (SELECT unnest({p(names, 'VARCHAR[]')}))"] if names else []


def _limit(p: _Params, limit: int | None) -> str:
    if limit is None:
        return ""
    if not isinstance(limit, int) or limit <= 0:
        raise QueryError(f"limit must be a positive integer or None; got {limit!r}")
    return f"LIMIT {p(limit)}"


def events(
    store: Store,
    start: datetime | None = None,
    end: datetime | None = None,
    service: str | Sequence[str] | None = None,
    kinds: Sequence[str] = (),
) -> pl.DataFrame:
    """Change events in ``[start, end)``, of one or several services and kinds, in time order.

    Returns
    -------
    pl.DataFrame
        :data:`ingest.schema.EVENTS` columns.
    """
    kinds = _as_list(kinds, "kinds")
    bad = [k for k in kinds if k not in schema.EVENT_KINDS]
    if bad:
        raise QueryError(f"unknown event kind {bad[0]!r}; kinds are {', '.join(schema.EVENT_KINDS)}")
    p = _Params()
    conds = ["TRUE", *_time_conds(p, "e.ts", start, end), *_service_cond(p, "e.service", service)]
    if kinds:
        conds.append(f"e.kind IN (SELECT unnest({p(kinds, 'VARCHAR[]')}))")
    sql = f"""
        SELECT {_select_list(schema.EVENTS, "e")} FROM events e WHERE {" AND ".join(conds)}
        ORDER BY e.ts, e.event_id
    """
    df = _frame(store, sql, p)
    return _typed(df, schema.EVENTS)


def spans(
    store: Store,
    start: datetime | None = None,
    end: datetime | None = None,
    service: str | Sequence[str] | None = None,
    trace_id: str | None = None,
    limit: int | None = 10_000,
    status: str | None = None,
) -> pl.DataFrame:
    """Spans starting in ``[start, end)``, optionally of some services, one trace or one status.

    Returns
    -------
    pl.DataFrame
        :data:`ingest.schema.SPANS` columns, the first ``limit`` spans by start time.
    """
    p = _Params()
    conds = ["TRUE", *_time_conds(p, "x.start", start, end), *_service_cond(p, "x.service", service)]
    if trace_id is not None:
        conds.append(f"x.trace_id = {p(str(trace_id).lower())}")
    if status is not None:
        conds.append(f"x.status = {p(status)}")
    sql = f"""
        SELECT {_select_list(schema.SPANS, "x")} FROM spans x WHERE {" AND ".join(conds)}
        ORDER BY x.start, x.trace_id, x.span_id {_limit(p, limit)}
    """
    df = _frame(store, sql, p)
    return _typed(df, schema.SPANS)


def logs(
    store: Store,
    start: datetime | None = None,
    end: datetime | None = None,
    service: str | Sequence[str] | None = None,
    severity: str | None = None,
    limit: int | None = 10_000,
    trace_id: str | None = None,
) -> pl.DataFrame:
    """Log records in ``[start, end)``, in time order.

    Parameters
    ----------
    severity
        Minimum severity (``trace``, ``debug``, ``info``, ``warn``, ``error``, ``fatal``), compared on the
        OTLP severity number, or on the severity text when the number is missing.

    Returns
    -------
    pl.DataFrame
        :data:`ingest.schema.LOGS` columns, the first ``limit`` records by time.
    """
    p = _Params()
    conds = ["TRUE", *_time_conds(p, "l.ts", start, end), *_service_cond(p, "l.service", service)]
    if severity is not None:
        level = SEVERITY_NUMBERS.get(str(severity).lower())
        if level is None:
            raise QueryError(f"unknown severity {severity!r}; use one of {', '.join(SEVERITY_NUMBERS)}")
        names = p(list(SEVERITY_NUMBERS), "VARCHAR[]")
        numbers = p(list(SEVERITY_NUMBERS.values()), "INTEGER[]")
        conds.append(
            f"coalesce(l.severity_number, ({numbers})[list_position({names}, lower(l.severity))]) >= {p(level)}"
        )
    if trace_id is not None:
        conds.append(f"l.trace_id = {p(str(trace_id).lower())}")
    sql = f"""
        SELECT {_select_list(schema.LOGS, "l")} FROM logs l WHERE {" AND ".join(conds)}
        ORDER BY l.ts, l.log_id {_limit(p, limit)}
    """
    df = _frame(store, sql, p)
    return _typed(df, schema.LOGS)


def topology(store: Store, start: datetime | None = None, end: datetime | None = None) -> pl.DataFrame:
    """Service call graph: span-derived edges in ``[start, end)`` merged with declared edges.

    A span edge goes from a parent span's service to its child span's service when they differ; ``calls``
    counts the child spans, ``errors`` those with status ``error``, and the durations (ms) are the child
    spans'. Parents may start up to :data:`TOPOLOGY_PARENT_SLACK` before ``start``. Every row of
    ``topology_edges`` is a declared edge whatever its recorded origin (mesh, catalog, ...).

    Returns
    -------
    pl.DataFrame
        ``source, target, calls, errors, p50_duration, p95_duration, origin`` with origin ``spans``,
        ``config`` or ``both``; declared-only edges have 0 calls and null durations.
    """
    p = _Params()
    lo, hi = _utc(start, "start"), _utc(end, "end")
    child = ["c.parent_span_id IS NOT NULL", "c.parent_span_id <> ''", *_time_conds(p, "c.start", lo, hi)]
    parent = _time_conds(p, "x.start", lo - TOPOLOGY_PARENT_SLACK if lo is not None else None, hi) or ["TRUE"]
    sql = f"""
        WITH parent AS (SELECT x.trace_id, x.span_id, x.service FROM spans x WHERE {" AND ".join(parent)}),
        observed AS (
            SELECT par.service AS source, c.service AS target, count(*) AS calls,
                count(*) FILTER (WHERE c.status = 'error') AS errors,
                quantile_cont(c.duration, 0.5) AS p50_duration, quantile_cont(c.duration, 0.95) AS p95_duration
            FROM spans c JOIN parent par ON par.trace_id = c.trace_id AND par.span_id = c.parent_span_id
            WHERE {" AND ".join(child)} AND par.service <> c.service
            GROUP BY ALL
        ),
        declared AS (SELECT DISTINCT source, target FROM topology_edges)
        SELECT coalesce(o.source, d.source) AS source, coalesce(o.target, d.target) AS target,
            coalesce(o.calls, 0)::BIGINT AS calls, coalesce(o.errors, 0)::BIGINT AS errors,
            o.p50_duration, o.p95_duration,
            CASE WHEN o.source IS NULL THEN 'config' WHEN d.source IS NULL THEN 'spans' ELSE 'both' END AS origin
        FROM observed o FULL OUTER JOIN declared d ON o.source = d.source AND o.target = d.target
        ORDER BY source, target
    """
    out_schema = {
        "source": pl.Utf8,
        "target": pl.Utf8,
        "calls": pl.Int64,
        "errors": pl.Int64,
        "p50_duration": pl.Float64,
        "p95_duration": pl.Float64,
        "origin": pl.Utf8,
    }
    df = _frame(store, sql, p)
    return _typed(df, out_schema)


def rejects(store: Store, limit: int = 100) -> pl.DataFrame:
    """The most recent dead-lettered records, newest first.

    Returns
    -------
    pl.DataFrame
        ``reject_id`` plus :data:`ingest.schema.REJECTS` columns.
    """
    p = _Params()
    sql = f"""
        SELECT reject_id, received, source, location, reason, raw FROM ingest_rejects
        ORDER BY received DESC, reject_id DESC {_limit(p, limit)}
    """
    out_schema = {"reject_id": pl.Int64, **schema.REJECTS}
    df = _frame(store, sql, p)
    return _typed(df, out_schema)
