"""The contract every root-cause analyser follows (STYLE.md rule 4).

An analyser is a function or object with ``explain(incident, view) -> RcaResult``:

* ``incident`` (:class:`RcaIncident`) says what is abnormal: the KPI (service, metric, labels) and the
  time window (``onset`` … ``end``); the analyser compares the window against the ``baseline`` before it.
* ``view`` (:class:`View`) is read-only access to telemetry as polars frames with the columns of
  :mod:`ingest.schema`. :class:`FrameView` holds frames in memory (tests, benchmark data sets); the store
  view in :mod:`ingest` implements the same methods over DuckDB with the aggregation pushed down.
* The result is a list of typed :class:`Candidate` causes, ranked by ``score`` (higher = more likely the
  root cause), each with the evidence that supports it and one plain-English sentence.

``rca`` never imports duckdb; it never sees ground-truth labels (benchmark adapters keep them apart).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import polars as pl

from ingest import schema

#: candidate kinds, as in DESIGN.md's ``rootwise rca`` output
KINDS = ("change", "dimension", "service", "metric", "log")


@dataclass(frozen=True)
class RcaIncident:
    """What to explain: a KPI and when it went wrong.

    Parameters
    ----------
    service, metric
        The KPI's service and metric (``metric`` may be ``None`` when only the service is known).
    onset, end
        The abnormal window ``[onset, end)``.
    labels
        Label pairs that scope the KPI (e.g. ``{"region": "us-east"}``); empty means the whole service.
    baseline
        How far before ``onset`` the normal reference window reaches.
    id
        The stored incident's id, when there is one.

    Examples
    --------
    >>> inc = RcaIncident("rag-api", "latency_p99", datetime(2026, 1, 1, 2, 41), datetime(2026, 1, 1, 3, 0))
    >>> inc.baseline_start
    datetime.datetime(2026, 1, 1, 1, 41)
    """

    service: str
    metric: str | None
    onset: datetime
    end: datetime
    labels: dict[str, str] = field(default_factory=dict)
    baseline: timedelta = timedelta(hours=1)
    id: str | None = None

    @property
    def baseline_start(self) -> datetime:
        return self.onset - self.baseline


@dataclass(frozen=True)
class Candidate:
    """One possible root cause.

    ``kind`` is one of :data:`KINDS`; ``labels`` locates it (the dimension combination, the metric's labels,
    the log template, ...); ``event_id`` is set for changes; ``evidence`` is JSON-ready detail (numbers,
    times, template text) and ``explanation`` one sentence for a person.
    """

    kind: str
    service: str | None
    score: float
    explanation: str
    metric: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    event_id: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"candidate kind {self.kind!r} is not one of {', '.join(KINDS)}")


@dataclass(frozen=True)
class RcaResult:
    """Ranked candidates of one analyser (or of the combination), plus notes such as "no change found"."""

    analyser: str
    candidates: tuple[Candidate, ...] = ()
    notes: tuple[str, ...] = ()

    def ranked(self) -> list[Candidate]:
        """Candidates by descending score; ties broken by kind, service, metric, labels (deterministic)."""
        return sorted(
            self.candidates,
            key=lambda c: (-c.score, c.kind, c.service or "", c.metric or "", sorted(c.labels.items())),
        )

    def service_scores(self, kind: str) -> dict[str, float]:
        """Each service's best score among the candidates of ``kind``, best first (ties by name).

        Examples
        --------
        >>> r = RcaResult("x", (Candidate("log", "a", 2.0, "."), Candidate("log", "a", 5.0, "."),
        ...                     Candidate("log", "b", 3.0, "."), Candidate("service", "c", 9.0, ".")))
        >>> r.service_scores("log")
        {'a': 5.0, 'b': 3.0}
        """
        out: dict[str, float] = {}
        for c in self.candidates:
            if c.kind == kind and c.service is not None:
                out[c.service] = max(out.get(c.service, float("-inf")), c.score)
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    def to_json(self) -> dict[str, Any]:
        """The DESIGN.md shape: ``{"causes": [{rank, kind, service, metric, labels, event_id, score, evidence}]}``."""
        causes = [
            {
                "rank": i + 1,
                "kind": c.kind,
                "service": c.service,
                "metric": c.metric,
                "labels": dict(c.labels),
                "event_id": c.event_id,
                "score": round(float(c.score), 6),
                "evidence": _rounded({**c.evidence, "explanation": c.explanation}),
            }
            for i, c in enumerate(self.ranked())
        ]
        return {"causes": causes, "notes": list(self.notes)}


def _rounded(value: Any) -> Any:
    """Floats to 9 significant digits, recursively: parallel float sums differ in the last bits from run to run,
    and the same incident must give the same JSON.

    Examples
    --------
    >>> _rounded({"a": [0.009884198807653491, 2], "b": "x"})
    {'a': [0.00988419881, 2], 'b': 'x'}
    """
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


class Analyser(Protocol):
    """Anything with ``explain(incident, view) -> RcaResult``."""

    def explain(self, incident: RcaIncident, view: View) -> RcaResult: ...


class View(Protocol):
    """Read-only telemetry for RCA; every method returns frames with :mod:`ingest.schema` columns.

    Time bounds are half-open ``[start, end)``; ``None`` means unbounded.
    """

    def series(self, metric: str | None = None, service: str | None = None) -> pl.DataFrame:
        """Series catalog rows (:data:`ingest.schema.SERIES`)."""
        ...

    def points(
        self, series_ids: Sequence[int] | None, start: datetime | None, end: datetime | None
    ) -> pl.DataFrame:
        """Points (:data:`ingest.schema.POINTS`) of the given series (``None``: all) as stored; counters are
        cumulative (use :func:`increments`)."""
        ...

    def window_sums(
        self, series_ids: Sequence[int], start: datetime, onset: datetime, end: datetime
    ) -> pl.DataFrame:
        """Per series: ``n_before, sum_before`` over ``[start, onset)`` and ``n_now, sum_now`` over ``[onset, end)``
        (counters as increments): what a dimension analysis needs, aggregated where the data lives."""
        ...

    def group_sums(
        self, series_ids: Sequence[int], group_ids: Sequence[int], start: datetime, end: datetime
    ) -> pl.DataFrame:
        """Points of ``series_ids`` summed per group and timestamp (:data:`ingest.schema.POINTS`, ``series_id``
        holding the group id given for each series)."""
        ...

    def events(self, start: datetime | None, end: datetime | None) -> pl.DataFrame:
        """Change events (:data:`ingest.schema.EVENTS`)."""
        ...

    def spans(self, start: datetime | None, end: datetime | None) -> pl.DataFrame:
        """Spans (:data:`ingest.schema.SPANS`)."""
        ...

    def logs(self, start: datetime | None, end: datetime | None) -> pl.DataFrame:
        """Log records (:data:`ingest.schema.LOGS`)."""
        ...

    def edges(self) -> pl.DataFrame:
        """Declared topology edges (:data:`ingest.schema.EDGES`)."""
        ...


def _typed(frame: pl.DataFrame | None, columns: dict[str, pl.DataType]) -> pl.DataFrame:
    if frame is None:
        return schema.empty(columns)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        frame = frame.with_columns([pl.lit(None, dtype=columns[c]).alias(c) for c in missing])
    return frame.select([pl.col(c).cast(t) for c, t in columns.items()])


def _between(frame: pl.DataFrame, col: str, start: datetime | None, end: datetime | None) -> pl.DataFrame:
    if start is not None:
        frame = frame.filter(pl.col(col) >= start)
    if end is not None:
        frame = frame.filter(pl.col(col) < end)
    return frame


class FrameView:
    """A :class:`View` over in-memory polars frames (missing frames are empty; missing columns are null).

    Examples
    --------
    >>> s = pl.DataFrame({"series_id": [1], "metric": ["cpu"], "service": ["carts"], "kind": ["gauge"]})
    >>> p = pl.DataFrame({"series_id": [1, 1], "ts": [datetime(2026, 1, 1), datetime(2026, 1, 2)], "value": [1.0, 2.0]})
    >>> view = FrameView(series=s, points=p)
    >>> view.points([1], datetime(2026, 1, 2), None)["value"].to_list()
    [2.0]
    >>> view.series(service="carts")["labels"].to_list()
    [[]]
    """

    def __init__(
        self,
        *,
        series: pl.DataFrame | None = None,
        points: pl.DataFrame | None = None,
        events: pl.DataFrame | None = None,
        spans: pl.DataFrame | None = None,
        logs: pl.DataFrame | None = None,
        edges: pl.DataFrame | None = None,
    ) -> None:
        s = _typed(series, schema.SERIES)
        self._series = s.with_columns(pl.col("labels").fill_null(pl.lit([], dtype=schema.LABELS)))
        self._points = _typed(points, schema.POINTS).sort("series_id", "ts")
        self._events = _typed(events, schema.EVENTS).sort("ts")
        self._spans = _typed(spans, schema.SPANS).sort("start")
        self._logs = _typed(logs, schema.LOGS).sort("ts")
        self._edges = _typed(edges, schema.EDGES)

    def series(self, metric: str | None = None, service: str | None = None) -> pl.DataFrame:
        out = self._series
        if metric is not None:
            out = out.filter(pl.col("metric") == metric)
        if service is not None:
            out = out.filter(pl.col("service") == service)
        return out

    def points(
        self, series_ids: Sequence[int] | None, start: datetime | None, end: datetime | None
    ) -> pl.DataFrame:
        out = self._points
        if series_ids is not None:
            out = out.filter(pl.col("series_id").is_in(list(series_ids)))
        return _between(out, "ts", start, end)

    def window_sums(
        self, series_ids: Sequence[int], start: datetime, onset: datetime, end: datetime
    ) -> pl.DataFrame:
        return window_sums(self.points(series_ids, start, end), self.series(), onset)

    def group_sums(
        self, series_ids: Sequence[int], group_ids: Sequence[int], start: datetime, end: datetime
    ) -> pl.DataFrame:
        groups = pl.DataFrame(
            {"series_id": list(series_ids), "_g": list(group_ids)},
            schema_overrides={"series_id": pl.Int64, "_g": pl.Int64},
        )
        pts = self.points(series_ids, start, end).join(groups, on="series_id")
        out = pts.group_by("_g", "ts").agg(pl.col("value").sum()).rename({"_g": "series_id"})
        return out.select(list(schema.POINTS)).sort("series_id", "ts")

    def events(self, start: datetime | None, end: datetime | None) -> pl.DataFrame:
        return _between(self._events, "ts", start, end)

    def spans(self, start: datetime | None, end: datetime | None) -> pl.DataFrame:
        return _between(self._spans, "start", start, end)

    def logs(self, start: datetime | None, end: datetime | None) -> pl.DataFrame:
        return _between(self._logs, "ts", start, end)

    def edges(self) -> pl.DataFrame:
        return self._edges


def labels_dict(entries: Any) -> dict[str, str]:
    """A series' labels (polars list of ``{key, value}`` structs, or a dict) as a plain dict.

    Examples
    --------
    >>> labels_dict([{"key": "tenant", "value": "t1"}])
    {'tenant': 't1'}
    """
    if entries is None:
        return {}
    if isinstance(entries, dict):
        return {str(k): str(v) for k, v in entries.items()}
    return {e["key"]: e["value"] for e in entries}


def increments(points: pl.DataFrame, series: pl.DataFrame) -> pl.DataFrame:
    """Points with cumulative counters turned into per-interval increases (a drop is a reset: the new value
    is the increase), other kinds unchanged; the first point of each counter is dropped.

    Examples
    --------
    >>> s = pl.DataFrame({"series_id": [1], "kind": ["counter"]})
    >>> p = pl.DataFrame({"series_id": [1, 1, 1], "ts": [1, 2, 3], "value": [5.0, 7.0, 1.0]})
    >>> increments(p, s)["value"].to_list()
    [2.0, 1.0]
    """
    kinds = series.select("series_id", "kind")
    if not (kinds["kind"] == "counter").any():
        return points
    joined = points.join(kinds, on="series_id", how="left")
    prev = pl.col("value").shift(1).over("series_id")
    inc = pl.when(pl.col("value") >= prev).then(pl.col("value") - prev).otherwise(pl.col("value"))
    out = joined.sort("series_id", "ts").with_columns(
        pl.when(pl.col("kind") == "counter").then(inc).otherwise(pl.col("value")).alias("value"),
        (pl.col("kind") == "counter").and_(prev.is_null()).alias("_first"),
    )
    return out.filter(~pl.col("_first")).select(points.columns)


WINDOW_SUMS = schema.WINDOW_SUMS


def window_sums(points: pl.DataFrame, series: pl.DataFrame, onset: datetime) -> pl.DataFrame:
    """Count and sum of each series' points before and from ``onset`` (counters as :func:`increments`).

    Examples
    --------
    >>> s = pl.DataFrame({"series_id": [1], "kind": ["counter"]})
    >>> p = pl.DataFrame({"series_id": [1] * 4, "ts": [1, 2, 3, 4], "value": [0.0, 1.0, 2.0, 5.0]})
    >>> window_sums(p, s, 3).rows()
    [(1, 1, 2, 1.0, 4.0)]
    """
    inc = increments(points, series)
    before = pl.col("ts") < onset
    out = inc.group_by("series_id").agg(
        before.sum().cast(pl.Int64).alias("n_before"),
        (~before).sum().cast(pl.Int64).alias("n_now"),
        pl.col("value").filter(before).sum().alias("sum_before"),
        pl.col("value").filter(~before).sum().alias("sum_now"),
    )
    return out.select(list(WINDOW_SUMS)).cast(pl.Schema(WINDOW_SUMS)).sort("series_id")


def points_with_totals(
    view: View, catalog: pl.DataFrame, start: datetime, end: datetime
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The catalog's points, with the usage rows (``delta`` series: one per tenant x model x region ...) of each
    (service, metric) summed into one series by the view.

    Scoring each of 80,000 per-tenant rows separately is slow and noisy (a tenant that sent 2 requests instead of
    0 "rose 100 spreads"); the service's total is what metric and topology analysis need — which tenant moved is
    the dimension analyser's question. Summed series get negative ids and no labels.
    """
    delta = catalog.filter(pl.col("kind") == "delta")
    if delta.is_empty():
        return catalog, view.points(catalog["series_id"].to_list(), start, end)
    rest = catalog.filter(pl.col("kind") != "delta")
    groups = (
        delta.group_by("service", "metric")
        .agg(pl.col("unit").first())
        .sort("service", "metric")
        .with_row_index("_g")
        .with_columns((-1 - pl.col("_g").cast(pl.Int64)).alias("gid"))
    )
    members = delta.join(groups.select("service", "metric", "gid"), on=["service", "metric"])
    parts = [view.group_sums(members["series_id"].to_list(), members["gid"].to_list(), start, end)]
    if rest.height:
        parts.insert(0, view.points(rest["series_id"].to_list(), start, end))
    totals = groups.select(
        pl.col("gid").alias("series_id"),
        "metric",
        "service",
        pl.lit("delta").alias("kind"),
        "unit",
        pl.lit([], dtype=schema.LABELS).alias("labels"),
    )
    cols = list(schema.SERIES)
    merged = pl.concat([rest.select(cols), totals.cast(pl.Schema({c: rest.schema[c] for c in cols}))])
    extra = [c for c in catalog.columns if c not in cols]
    if extra:
        merged = merged.join(catalog.select("series_id", *extra), on="series_id", how="left")
    return merged.select(catalog.columns), pl.concat(parts)
