"""The normalised unit of ingestion: a :class:`TelemetryBatch` of polars frames.

Every decoder (OTLP, Prometheus, long files, JSONL) turns its input into one of these; the store appends it in
one transaction. Row-oriented decoders collect through :class:`MetricBuilder`, which interns each series once
(so per-point work is a dict lookup and two list appends) and builds columnar frames at the end.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from ingest import schema

#: timestamps outside [MIN_TS, now + MAX_FUTURE] are rejected (a 1970 epoch-zero or year-2500 point is a bug
#: in the sender, and one of them would wreck every time axis and rollup)
MIN_TS_NS = int(datetime(1990, 1, 1, tzinfo=UTC).timestamp() * 1e9)
MAX_FUTURE_NS = 24 * 3600 * 10**9

_SEP_FIELD = "\x1f"
_SEP_LABEL = "\x1e"


def series_key(metric: str, service: str, labels: Mapping[str, str]) -> str:
    """Canonical identity string of a series: metric, service and sorted labels."""
    parts = _SEP_LABEL.join(f"{k}={labels[k]}" for k in sorted(labels))
    return f"{metric}{_SEP_FIELD}{service}{_SEP_FIELD}{parts}"


def series_id_of_key(key: str) -> int:
    """Stable 64-bit id of a series key (same in every process, version and engine).

    Examples
    --------
    >>> series_id_of_key(series_key("requests", "api", {"b": "2", "a": "1"})) == series_id_of_key(
    ...     series_key("requests", "api", {"a": "1", "b": "2"}))
    True
    """
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def series_id(metric: str, service: str, labels: Mapping[str, str]) -> int:
    """Stable id of a series given its metric, service and labels."""
    return series_id_of_key(series_key(metric, service, labels))


def log_id(
    ts_ns: int, service: str, severity: str, body: str, trace_id: str, span_id: str, attrs: Mapping[str, str]
) -> str:
    """Stable content hash of a log record, the same whichever format (OTLP, JSONL) brought it.

    Examples
    --------
    >>> log_id(1, "api", "INFO", "hi", "", "", {"b": "2", "a": "1"}) == log_id(
    ...     1, "api", "INFO", "hi", "", "", {"a": "1", "b": "2"})
    True
    """
    parts = [str(ts_ns), service, severity, body, trace_id, span_id]
    parts.extend(f"{k}={attrs[k]}" for k in sorted(attrs))
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def ts_bounds_ns(now_ns: int | None = None) -> tuple[int, int]:
    """Accepted timestamp range in epoch nanoseconds."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    return MIN_TS_NS, now_ns + MAX_FUTURE_NS


def labels_list(labels: Mapping[str, str]) -> list[dict[str, str]]:
    """Labels as the sorted key/value struct list stored in ``LABELS`` columns."""
    return [{"key": k, "value": labels[k]} for k in sorted(labels)]


@dataclass
class Reject:
    """One record that could not be stored, kept whole in the dead-letter table."""

    source: str
    location: str
    reason: str
    raw: bytes


@dataclass
class TelemetryBatch:
    """Frames ready to append; any part may be empty."""

    series: pl.DataFrame = field(default_factory=lambda: schema.empty(schema.SERIES))
    points: pl.DataFrame = field(default_factory=lambda: schema.empty(schema.POINTS))
    histograms: pl.DataFrame = field(default_factory=lambda: schema.empty(schema.HISTOGRAMS))
    spans: pl.DataFrame = field(default_factory=lambda: schema.empty(schema.SPANS))
    logs: pl.DataFrame = field(default_factory=lambda: schema.empty(schema.LOGS))
    events: pl.DataFrame = field(default_factory=lambda: schema.empty(schema.EVENTS))
    edges: pl.DataFrame = field(default_factory=lambda: schema.empty(schema.EDGES))
    rejects: list[Reject] = field(default_factory=list)

    PARTS = ("series", "points", "histograms", "spans", "logs", "events", "edges")

    @property
    def accepted(self) -> int:
        """Records accepted: points + histogram points + spans + logs + events + edges."""
        return sum(self.counts().values())

    def counts(self) -> dict[str, int]:
        """Accepted records per kind (series are catalog entries, not records)."""
        return {p: getattr(self, p).height for p in self.PARTS if p != "series"}

    @property
    def rejected(self) -> int:
        return len(self.rejects)

    def rejects_frame(self) -> pl.DataFrame:
        now = datetime.now(UTC).replace(tzinfo=None)
        if not self.rejects:
            return schema.empty(schema.REJECTS)
        return pl.DataFrame(
            {
                "received": [now] * len(self.rejects),
                "source": [r.source for r in self.rejects],
                "location": [r.location for r in self.rejects],
                "reason": [r.reason for r in self.rejects],
                "raw": [r.raw for r in self.rejects],
            },
            schema=schema.REJECTS,
        )

    @classmethod
    def concat(cls, batches: Iterable[TelemetryBatch]) -> TelemetryBatch:
        """One batch holding all parts of ``batches`` (series de-duplicated)."""
        batches = list(batches)
        if len(batches) == 1:
            return batches[0]
        out = cls()
        for part in cls.PARTS:
            frames = [getattr(b, part) for b in batches if getattr(b, part).height]
            if frames:
                frame = pl.concat(frames, how="vertical_relaxed")
                if part == "series":
                    frame = frame.unique(subset="series_id", keep="first", maintain_order=True)
                setattr(out, part, frame)
        out.rejects = [r for b in batches for r in b.rejects]
        return out


def labels_arrow(items: list[Any]) -> pa.ListArray:
    """A ``LABELS`` column (list of key/value structs) as one Arrow array, from per-row label lists of
    ``(key, value)`` pairs or of ``{"key", "value"}`` dicts (:func:`labels_list`); ``None`` rows are empty.

    Polars builds such a column from Python objects one row at a time (a Series per cell), which cost more than
    decoding the OTLP spans themselves; here it is three flat arrays."""
    items = [i or () for i in items]
    offsets = np.zeros(len(items) + 1, dtype=np.int32)
    np.cumsum([len(i) for i in items], out=offsets[1:])
    first = next((p for i in items for p in i), None)
    if isinstance(first, dict):
        keys = [p["key"] for i in items for p in i]
        values = [p["value"] for i in items for p in i]
    else:
        keys = [k for i in items for k, _ in i]
        values = [v for i in items for _, v in i]
    return pa.ListArray.from_arrays(
        pa.array(offsets),
        pa.StructArray.from_arrays(
            [pa.array(keys, pa.string()), pa.array(values, pa.string())], names=["key", "value"]
        ),
    )


def _float_lists(rows: tuple[list[float], ...]) -> pa.ListArray:
    """A list-of-float64 column as one Arrow array (histogram bounds and counts; see :func:`labels_arrow`)."""
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array([x for r in rows for x in r], pa.float64()))


def series_frame(rows: list[tuple]) -> pl.DataFrame:
    """Series rows ``(id, metric, service, kind, unit, sorted label items)`` as a SERIES frame.

    The labels column is assembled as one Arrow list array: building it row by row through polars costs
    more than the whole parse of a Prometheus page.
    """
    labels = labels_arrow([r[5] for r in rows])
    return pl.DataFrame(
        {
            "series_id": pl.Series([r[0] for r in rows], dtype=pl.Int64),
            "metric": [r[1] for r in rows],
            "service": [r[2] for r in rows],
            "kind": [r[3] for r in rows],
            "unit": [r[4] for r in rows],
            "labels": pl.from_arrow(labels),
        }
    ).cast(schema.SERIES)  # type: ignore[arg-type]


class MetricBuilder:
    """Collects metric points from row-oriented decoders into columnar frames.

    Examples
    --------
    >>> b = MetricBuilder(source="example")
    >>> sid = b.series("requests", "api", "counter", "1", {"tenant": "t1"})
    >>> b.point(sid, 1_700_000_000_000_000_000, 5.0, "line 1")
    True
    >>> b.point(sid, 1_700_000_060_000_000_000, float("nan"), "line 2")
    False
    >>> batch = b.build()
    >>> batch.points.height, batch.rejected, batch.rejects[0].reason
    (1, 1, 'value is not a finite number: nan')
    """

    def __init__(self, source: str, now_ns: int | None = None) -> None:
        self.source = source
        self.min_ns, self.max_ns = ts_bounds_ns(now_ns)
        self._series: dict[tuple, int] = {}
        self._series_rows: dict[int, tuple] = {}
        self._p_sid: list[int] = []
        self._p_ts: list[int] = []
        self._p_val: list[float] = []
        self._h_rows: list[tuple] = []
        self.rejects: list[Reject] = []

    def series(
        self, metric: str, service: str, kind: str, unit: str | None, labels: Mapping[str, str]
    ) -> int:
        """Intern a series and return its id."""
        items = tuple(sorted(labels.items()))
        cache_key = (metric, service, items)
        sid = self._series.get(cache_key)
        if sid is None:
            # the same string as series_key(), built from the already sorted items
            key = f"{metric}{_SEP_FIELD}{service}{_SEP_FIELD}" + _SEP_LABEL.join(
                [f"{k}={v}" for k, v in items]
            )
            sid = series_id_of_key(key)
            self._series[cache_key] = sid
            self._series_rows[sid] = (metric, service, kind, unit or "", items)
        return sid

    def reject(self, location: str, reason: str, raw: bytes | str) -> None:
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        self.rejects.append(Reject(self.source, location, reason, raw))

    def check_ts(self, ts_ns: int, location: str, raw: bytes | str | None = None) -> bool:
        """Validate a timestamp, dead-lettering it when out of range."""
        if self.min_ns <= ts_ns <= self.max_ns:
            return True
        self.reject(location, f"timestamp out of accepted range: {ts_ns} ns since epoch", raw or str(ts_ns))
        return False

    def point(
        self, sid: int, ts_ns: int, value: float, location: str, raw: bytes | str | None = None
    ) -> bool:
        """Add one point; invalid ones are dead-lettered and ``False`` returned."""
        if not math.isfinite(value):
            self.reject(location, f"value is not a finite number: {value}", raw or repr(value))
            return False
        if not self.check_ts(ts_ns, location, raw):
            return False
        self._p_sid.append(sid)
        self._p_ts.append(ts_ns)
        self._p_val.append(value)
        return True

    def histogram(
        self,
        sid: int,
        ts_ns: int,
        count: float,
        total: float | None,
        vmin: float | None,
        vmax: float | None,
        bounds: list[float],
        counts: list[float],
        cumulative: bool,
        location: str,
        raw: bytes | str | None = None,
    ) -> bool:
        """Add one histogram point (explicit bounds; ``len(counts) == len(bounds) + 1``)."""
        if len(counts) != len(bounds) + 1:
            self.reject(
                location,
                f"histogram has {len(counts)} bucket counts for {len(bounds)} bounds (expected bounds + 1)",
                raw or "",
            )
            return False
        if any(b2 <= b1 for b1, b2 in zip(bounds, bounds[1:], strict=False)):
            self.reject(location, "histogram bounds are not strictly increasing", raw or "")
            return False
        if not self.check_ts(ts_ns, location, raw):
            return False
        self._h_rows.append((sid, ts_ns, count, total, vmin, vmax, bounds, counts, cumulative))
        return True

    def build(self) -> TelemetryBatch:
        """The collected points as a batch (series restricted to those with accepted points)."""
        used = set(self._p_sid) | {r[0] for r in self._h_rows}
        rows = [(sid, *self._series_rows[sid]) for sid in used]
        series = series_frame(rows) if rows else schema.empty(schema.SERIES)
        points = pl.DataFrame(
            {"series_id": self._p_sid, "ts": self._p_ts, "value": self._p_val},
            schema={"series_id": pl.Int64, "ts": pl.Int64, "value": pl.Float64},
        ).with_columns(pl.from_epoch("ts", time_unit="ns").cast(schema.TS))
        if self._h_rows:
            types = {**schema.HISTOGRAMS, "ts": pl.Int64}
            cols = dict(zip(types, zip(*self._h_rows, strict=True), strict=True))
            hist = pl.DataFrame(
                {
                    c: pl.Series(c, _float_lists(v))
                    if c in ("bounds", "counts")
                    else pl.Series(c, v, types[c])
                    for c, v in cols.items()
                }
            ).with_columns(pl.from_epoch("ts", time_unit="ns").cast(schema.TS))
        else:
            hist = schema.empty(schema.HISTOGRAMS)
        return TelemetryBatch(series=series, points=points, histograms=hist, rejects=list(self.rejects))
