"""Column names and dtypes of every frame that crosses a module boundary.

Defined once here and imported everywhere (STYLE.md rule 5). The DuckDB tables created by
:mod:`ingest.migrations` have the same columns; timestamps are naive ``TIMESTAMP`` values in UTC.
"""

from __future__ import annotations

import polars as pl

TS = pl.Datetime("us")  # naive, UTC by convention (DESIGN.md: all timestamps UTC)
LABELS = pl.List(pl.Struct({"key": pl.Utf8, "value": pl.Utf8}))  # becomes MAP(VARCHAR, VARCHAR)

#: series kinds; counters are cumulative monotonic sums, ``delta`` sums carry per-interval increments
KINDS = ("gauge", "counter", "delta", "histogram", "summary")

SERIES = {
    "series_id": pl.Int64,
    "metric": pl.Utf8,
    "service": pl.Utf8,
    "kind": pl.Utf8,
    "unit": pl.Utf8,
    "labels": LABELS,
}

POINTS = {"series_id": pl.Int64, "ts": TS, "value": pl.Float64}

HISTOGRAMS = {
    "series_id": pl.Int64,
    "ts": TS,
    "count": pl.Float64,
    "sum": pl.Float64,
    "min": pl.Float64,
    "max": pl.Float64,
    # explicit upper bounds; ``counts`` has len(bounds) + 1 entries, the last one for (bounds[-1], +Inf]
    "bounds": pl.List(pl.Float64),
    "counts": pl.List(pl.Float64),
    # True when the counts are cumulative since start (OTLP cumulative temporality, Prometheus)
    "cumulative": pl.Boolean,
}

SPANS = {
    "trace_id": pl.Utf8,  # lowercase hex, 32 chars
    "span_id": pl.Utf8,  # lowercase hex, 16 chars
    "parent_span_id": pl.Utf8,
    "service": pl.Utf8,
    "name": pl.Utf8,
    "kind": pl.Utf8,  # internal | server | client | producer | consumer | unspecified
    "start": TS,
    "duration": pl.Float64,  # milliseconds
    "status": pl.Utf8,  # unset | ok | error
    "status_message": pl.Utf8,
    "tenant": pl.Utf8,
    "model": pl.Utf8,
    "provider": pl.Utf8,
    "operation": pl.Utf8,
    "input_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "ttft": pl.Float64,  # time to first token, milliseconds
    "attributes": LABELS,
    "resource": LABELS,
    "events": pl.Utf8,  # JSON list of span events {ts, name, attributes}
}

LOGS = {
    "log_id": pl.Utf8,  # content hash: re-ingesting the same record is a no-op
    "ts": TS,
    "service": pl.Utf8,
    "severity": pl.Utf8,
    "severity_number": pl.Int32,
    "body": pl.Utf8,
    "trace_id": pl.Utf8,
    "span_id": pl.Utf8,
    "tenant": pl.Utf8,
    "attributes": LABELS,
    "template_id": pl.Utf8,  # filled by log template mining (rca), NULL at ingest
}

#: OpenTelemetry log severity numbers of common severity texts (logs data model, SeverityNumber)
SEVERITY_NUMBERS = {
    "trace": 1,
    "debug": 5,
    "info": 9,
    "information": 9,
    "notice": 10,
    "warn": 13,
    "warning": 13,
    "error": 17,
    "err": 17,
    "critical": 21,
    "crit": 21,
    "fatal": 21,
    "alert": 22,
    "emergency": 23,
}

EVENTS = {
    "event_id": pl.Utf8,
    "ts": TS,
    "service": pl.Utf8,
    "kind": pl.Utf8,  # deploy | model_rollout | config | feature_flag | scale | infra | other
    "title": pl.Utf8,
    "attributes": LABELS,
}

EVENT_KINDS = ("deploy", "model_rollout", "config", "feature_flag", "scale", "infra", "other")

EDGES = {"source": pl.Utf8, "target": pl.Utf8, "origin": pl.Utf8, "ts": TS}

REJECTS = {
    "received": TS,
    "source": pl.Utf8,  # file path or endpoint
    "location": pl.Utf8,  # line / field / record index
    "reason": pl.Utf8,
    "raw": pl.Binary,
}

#: detector output (table ``anomalies`` adds ``detector``); ``score`` is calibrated: a standard-normal z of the
#: point's tail probability, so one threshold means the same on every detector and series
SCORES = {
    "series_id": pl.Int64,
    "ts": TS,
    "score": pl.Float64,
    "is_anomaly": pl.Boolean,
    "expected": pl.Float64,
    "lower": pl.Float64,
    "upper": pl.Float64,
}

#: per-series sums of an RCA window (:meth:`rca.base.View.window_sums`): before and from the onset
WINDOW_SUMS = {
    "series_id": pl.Int64,
    "n_before": pl.Int64,
    "n_now": pl.Int64,
    "sum_before": pl.Float64,
    "sum_now": pl.Float64,
}

#: name of each batch part -> (table, schema)
TABLES: dict[str, tuple[str, dict[str, pl.DataType]]] = {
    "series": ("series", SERIES),
    "points": ("points", POINTS),
    "histograms": ("histograms", HISTOGRAMS),
    "spans": ("spans", SPANS),
    "logs": ("logs", LOGS),
    "events": ("events", EVENTS),
    "edges": ("topology_edges", EDGES),
    "rejects": ("ingest_rejects", REJECTS),
}


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """An empty frame with the given schema.

    Examples
    --------
    >>> empty(POINTS).columns
    ['series_id', 'ts', 'value']
    """
    return pl.DataFrame(schema=schema)
