"""JSON Lines decoders: change events, logs, topology edges and long-format metric rows.

One JSON object per line. A file holds one kind of record, decided from the keys of its first valid records
(:func:`classify_jsonl_record`). Each line is validated on its own: invalid JSON, non-UTF-8 bytes, wrong types,
missing fields or lines longer than the limit are dead-lettered with their line number, the reason and the
raw bytes, and the good lines of the same file are stored.

Records
-------
events
    ``{"ts", "service", "kind", "title", "attributes"?, "id"?}``; ``kind`` one of :data:`ingest.schema.EVENT_KINDS`.
    ``event_id`` is the given ``id`` or a stable hash of ``ts|service|kind|title`` (``ts`` as epoch
    microseconds, so the same event written with another timestamp spelling gets the same id).
logs
    ``{"ts", "service", "severity"?, "body", "attributes"?, "trace_id"?, "span_id"?, "severity_number"?}``;
    ``log_id`` is a hash of the normalised content (re-ingesting is a no-op); ``tenant`` comes from the
    attribute named by ``tenant_attribute`` (default ``rootwise.tenant.id``) or ``tenant``.
topology
    ``{"source", "target", "ts"?}``: a caller → callee edge, stored with origin ``config``; ``ts`` (last seen)
    defaults to the time of ingestion.
long rows
    ``{"ts", "metric", "value", "service", "kind"?, "unit"?, <label>: <scalar>, …}``, converted by
    :mod:`ingest.longformat`.

``ts`` is an RFC 3339 string or an epoch number (unit by magnitude, see :mod:`ingest.longformat`). Attribute
values become strings: numbers and booleans in their JSON spelling, objects and arrays as compact JSON.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import orjson
import polars as pl

from ingest import schema
from ingest.batch import Reject, TelemetryBatch, log_id, ts_bounds_ns
from ingest.longformat import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, long_frame_to_batch, string_ts_to_us

#: longest accepted line for events, logs, topology and long rows; OTLP export lines get their own limit
MAX_LINE_BYTES = 1 << 20
#: raw bytes kept in the dead letter for one oversized line
MAX_RAW_BYTES = 64 << 10

KINDS = ("jsonl-events", "jsonl-logs", "jsonl-topology", "jsonl-long")
OTLP_KEYS = ("resourceMetrics", "resourceSpans", "resourceLogs")

SEVERITY_NUMBERS = schema.SEVERITY_NUMBERS


class Line:
    """One input line: its 1-based number, its bytes (without the newline) and its full length."""

    __slots__ = ("number", "data", "length")

    def __init__(self, number: int, data: bytes, length: int) -> None:
        self.number = number
        self.data = data
        self.length = length


def iter_lines(stream: IO[bytes], *, max_bytes: int = MAX_LINE_BYTES) -> Iterator[Line]:
    """Lines of a binary stream, never holding more than ``max_bytes`` of one line in memory.

    A longer line is yielded with its first :data:`MAX_RAW_BYTES` bytes and its true ``length`` (so the caller
    can dead-letter it); blank lines are skipped but counted.
    """
    number = 0
    while True:
        line = stream.readline(max_bytes + 1)
        if not line:
            return
        number += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            length = len(line)
            head = line[:MAX_RAW_BYTES]
            while True:
                more = stream.readline(1 << 20)
                length += len(more)
                if not more:
                    break
                if more.endswith(b"\n"):
                    length -= len(more) - len(more.rstrip(b"\r\n"))
                    break
            yield Line(number, head, length)
            continue
        data = line.rstrip(b"\r\n")
        if data.strip():
            yield Line(number, data, len(data))


def classify_jsonl_record(obj: Any) -> str:
    """The kind of JSON Lines file a record belongs to, from its keys.

    Returns one of ``otlp-json``, ``jsonl-long``, ``jsonl-topology``, ``jsonl-logs``, ``jsonl-events`` or
    ``unknown``.

    Examples
    --------
    >>> classify_jsonl_record({"ts": 1, "service": "api", "kind": "deploy", "title": "v2"})
    'jsonl-events'
    >>> classify_jsonl_record({"source": "gateway", "target": "vllm"})
    'jsonl-topology'
    >>> classify_jsonl_record([1, 2])
    'unknown'
    """
    if not isinstance(obj, dict):
        return "unknown"
    keys = obj.keys()
    if any(k in keys for k in OTLP_KEYS):
        return "otlp-json"
    if "metric" in keys and "value" in keys:
        return "jsonl-long"
    if "source" in keys and "target" in keys:
        return "jsonl-topology"
    if "body" in keys or "severity" in keys:
        return "jsonl-logs"
    if "kind" in keys and "title" in keys:
        return "jsonl-events"
    return "unknown"


def expected_record_text(kind: str) -> str:
    return {
        "jsonl-events": '{"ts", "service", "kind", "title", "attributes"?, "id"?}',
        "jsonl-logs": '{"ts", "service", "severity"?, "body", "attributes"?, "trace_id"?, "span_id"?}',
        "jsonl-topology": '{"source", "target", "ts"?}',
        "jsonl-long": '{"ts", "metric", "value", "service", <label>: <value>, ...}',
    }[kind]


# -- per-line parsing --------------------------------------------------------------------------------------
_JSON_POS_RE = re.compile(r"line 1 column (\d+) \(char \d+\)")


class _LineError(Exception):
    """A line that cannot be stored, with the reason."""


def parse_line(line: Line, max_bytes: int = MAX_LINE_BYTES) -> dict[str, Any]:
    """Decode one line to a JSON object, raising :class:`_LineError` with a precise reason."""
    if line.length > max_bytes:
        raise _LineError(f"line is {line.length} bytes, longer than the {max_bytes}-byte limit")
    try:
        obj = orjson.loads(line.data)
    except orjson.JSONDecodeError as exc:
        try:
            line.data.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise _LineError(f"line is not valid UTF-8 (byte {uexc.start})") from None
        # orjson counts lines within the one line it was given; the location already names the file line
        message = _JSON_POS_RE.sub(r"at column \1", str(exc))
        raise _LineError(f"invalid JSON: {message}") from None
    if not isinstance(obj, dict):
        raise _LineError(f"expected a JSON object, got {_type_name(obj)}")
    return obj


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(v), type(v).__name__)


def _text(obj: dict, name: str, *, required: bool = True, empty_ok: bool = False) -> str | None:
    v = obj.get(name)
    if v is None:
        if required:
            raise _LineError(f"field {name!r} is missing (expected a string)")
        return None
    if not isinstance(v, str):
        raise _LineError(f"field {name!r} must be a string, got {_type_name(v)}")
    if not empty_ok and required and not v.strip():
        raise _LineError(f"field {name!r} is empty")
    return v


def _ts_text(obj: dict, name: str = "ts", *, required: bool = True) -> str | None:
    v = obj.get(name)
    if v is None:
        if required:
            raise _LineError(f"field {name!r} is missing (expected an RFC 3339 string or epoch number)")
        return None
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise _LineError(f"field {name!r} must be an RFC 3339 string or an epoch number, got {_type_name(v)}")
    return v if isinstance(v, str) else repr(v)


def scalar_text(v: Any) -> str:
    """A JSON value as a label/attribute string (nested values as compact JSON)."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()


def _attributes(obj: dict, name: str = "attributes") -> list[dict[str, str]]:
    v = obj.get(name)
    if v is None:
        return []
    if not isinstance(v, dict):
        raise _LineError(f"field {name!r} must be an object, got {_type_name(v)}")
    return [{"key": k, "value": scalar_text(v[k])} for k in sorted(v) if v[k] is not None]


# -- decoders ----------------------------------------------------------------------------------------------
class _Collector:
    """Accumulates good rows column-wise and rejects for one chunk of lines."""

    def __init__(self, source: str, columns: tuple[str, ...]) -> None:
        self.source = source
        self.cols: dict[str, list] = {c: [] for c in (*columns, "line")}
        self.raw: list[bytes] = []
        self.rejects: list[Reject] = []

    def add(self, line: Line, **row: Any) -> None:
        for k, v in row.items():
            self.cols[k].append(v)
        self.cols["line"].append(line.number)
        self.raw.append(line.data)

    def sorted_rejects(self) -> list[Reject]:
        return sorted(self.rejects, key=lambda r: int(r.location.split()[-1]))

    def reject(self, line: Line, reason: str) -> None:
        raw = line.data[:MAX_RAW_BYTES]
        if line.length > len(raw):
            reason = f"{reason} (raw truncated to the first {len(raw)} bytes)"
        self.rejects.append(Reject(self.source, f"line {line.number}", reason, raw))


def _with_ts(frame: pl.DataFrame, c: _Collector, *, now_ns: int | None) -> pl.DataFrame:
    """Parse the text ``ts`` column to TS; unparsable or out-of-range timestamps become rejects (null stays null)."""
    min_ns, max_ns = ts_bounds_ns(now_ns)
    lo, hi = -(-min_ns // 1000), max_ns // 1000
    frame = frame.with_row_index("_i").with_columns(string_ts_to_us(pl.col("ts")).alias("_us"))
    in_range = pl.col("_us").is_between(lo, hi).fill_null(False)
    present = pl.col("ts").is_not_null()
    for i, number, text, us in (
        frame.filter(present & ~in_range).select("_i", "line", "ts", "_us").iter_rows()
    ):
        line = Line(number, c.raw[i], len(c.raw[i]))
        if us is None:
            c.reject(
                line, f"field 'ts' {text!r} is not a timestamp (expected RFC 3339 or epoch seconds/ms/us/ns)"
            )
        else:
            c.reject(line, f"field 'ts' {text!r} is outside the accepted range (1990-01-01 to now + 1 day)")
    return (
        frame.filter(~present | in_range)
        .with_columns(pl.col("_us").cast(schema.TS).alias("ts"))
        .drop("_i", "_us")
    )


def _stable_hash(*parts: Any) -> str:
    return hashlib.blake2b(orjson.dumps(parts), digest_size=16).hexdigest()


def decode_events(lines: list[Line], source: str, *, now_ns: int | None = None) -> TelemetryBatch:
    """Change events from JSON lines."""
    c = _Collector(source, ("ts", "service", "kind", "title", "attributes", "id"))
    for line in lines:
        try:
            obj = parse_line(line)
            ts = _ts_text(obj)
            service = _text(obj, "service")
            kind = _text(obj, "kind")
            if kind not in schema.EVENT_KINDS:
                raise _LineError(f"field 'kind' is {kind!r}; expected one of {', '.join(schema.EVENT_KINDS)}")
            title = _text(obj, "title", empty_ok=True)
            attributes = _attributes(obj)
            eid = obj.get("id")
            if eid is not None and (isinstance(eid, bool) or not isinstance(eid, str | int)):
                raise _LineError(f"field 'id' must be a string or an integer, got {_type_name(eid)}")
            c.add(
                line,
                ts=ts,
                service=service,
                kind=kind,
                title=title,
                attributes=attributes,
                id=None if eid is None else str(eid),
            )
        except _LineError as exc:
            c.reject(line, str(exc))
    if not c.cols["line"]:
        return TelemetryBatch(rejects=c.rejects)
    frame = pl.DataFrame(
        c.cols,
        schema={
            "ts": pl.Utf8,
            "service": pl.Utf8,
            "kind": pl.Utf8,
            "title": pl.Utf8,
            "attributes": schema.LABELS,
            "id": pl.Utf8,
            "line": pl.Int64,
        },
    )
    frame = _with_ts(frame, c, now_ns=now_ns)
    ids = [
        eid if eid is not None else _stable_hash(_us(ts), service, kind, title)
        for eid, ts, service, kind, title in frame.select("id", "ts", "service", "kind", "title").iter_rows()
    ]
    events = frame.with_columns(pl.Series("event_id", ids, dtype=pl.Utf8)).select(list(schema.EVENTS))
    return TelemetryBatch(events=events, rejects=c.sorted_rejects())


_EPOCH = datetime(1970, 1, 1)


def _us(ts: datetime) -> int:
    return (ts - _EPOCH) // timedelta(microseconds=1)


def decode_logs(
    lines: list[Line], source: str, *, tenant_attribute: str = "rootwise.tenant.id", now_ns: int | None = None
) -> TelemetryBatch:
    """Log records from JSON lines."""
    c = _Collector(
        source,
        (
            "ts",
            "service",
            "severity",
            "severity_number",
            "body",
            "trace_id",
            "span_id",
            "tenant",
            "attributes",
        ),
    )
    for line in lines:
        try:
            obj = parse_line(line)
            ts = _ts_text(obj)
            service = _text(obj, "service")
            severity = _text(obj, "severity", required=False)
            if "body" not in obj:
                raise _LineError("field 'body' is missing (expected a string)")
            body = obj["body"]
            body = None if body is None else scalar_text(body)
            trace_id = _text(obj, "trace_id", required=False)
            span_id = _text(obj, "span_id", required=False)
            number = obj.get("severity_number")
            if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
                raise _LineError(f"field 'severity_number' must be an integer, got {_type_name(number)}")
            if number is None and severity:
                number = SEVERITY_NUMBERS.get(severity.strip().lower())
            attributes = _attributes(obj)
            amap = {a["key"]: a["value"] for a in attributes}
            tenant = amap.get(tenant_attribute) or amap.get("tenant")
            c.add(
                line,
                ts=ts,
                service=service,
                severity=severity or None,
                severity_number=number,
                body=body,
                trace_id=trace_id.lower() if trace_id else None,
                span_id=span_id.lower() if span_id else None,
                tenant=tenant,
                attributes=attributes,
            )
        except _LineError as exc:
            c.reject(line, str(exc))
    if not c.cols["line"]:
        return TelemetryBatch(rejects=c.rejects)
    frame = pl.DataFrame(
        c.cols,
        schema={
            "ts": pl.Utf8,
            "service": pl.Utf8,
            "severity": pl.Utf8,
            "severity_number": pl.Int32,
            "body": pl.Utf8,
            "trace_id": pl.Utf8,
            "span_id": pl.Utf8,
            "tenant": pl.Utf8,
            "attributes": schema.LABELS,
            "line": pl.Int64,
        },
    )
    frame = _with_ts(frame, c, now_ns=now_ns)
    ids = [
        log_id(
            _us(ts) * 1000,
            service,
            severity or "",
            body or "",
            trace_id or "",
            span_id or "",
            {a["key"]: a["value"] for a in attrs},
        )
        for ts, service, severity, body, trace_id, span_id, attrs in frame.select(
            "ts", "service", "severity", "body", "trace_id", "span_id", "attributes"
        ).iter_rows()
    ]
    logs = frame.with_columns(
        pl.Series("log_id", ids, dtype=pl.Utf8), pl.lit(None, dtype=pl.Utf8).alias("template_id")
    ).select(list(schema.LOGS))
    return TelemetryBatch(logs=logs, rejects=c.sorted_rejects())


def decode_topology(lines: list[Line], source: str, *, now_ns: int | None = None) -> TelemetryBatch:
    """Service topology edges (caller → callee) from JSON lines."""
    c = _Collector(source, ("source", "target", "ts"))
    for line in lines:
        try:
            obj = parse_line(line)
            src = _text(obj, "source")
            dst = _text(obj, "target")
            ts = _ts_text(obj, required=False)
            c.add(line, source=src, target=dst, ts=ts)
        except _LineError as exc:
            c.reject(line, str(exc))
    if not c.cols["line"]:
        return TelemetryBatch(rejects=c.rejects)
    frame = pl.DataFrame(
        c.cols, schema={"source": pl.Utf8, "target": pl.Utf8, "ts": pl.Utf8, "line": pl.Int64}
    )
    frame = _with_ts(frame, c, now_ns=now_ns)
    now = datetime.now(UTC).replace(tzinfo=None) if now_ns is None else _ns_to_dt(now_ns)
    edges = frame.with_columns(
        pl.lit("config").alias("origin"), pl.col("ts").cast(schema.TS).fill_null(pl.lit(now, dtype=schema.TS))
    ).select(list(schema.EDGES))
    return TelemetryBatch(edges=edges, rejects=c.sorted_rejects())


def _ns_to_dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC).replace(tzinfo=None)


def decode_long_rows(lines: list[Line], source: str, *, now_ns: int | None = None) -> TelemetryBatch:
    """Long-format metric rows from JSON lines (converted by :mod:`ingest.longformat`)."""
    c = _Collector(source, ())
    rows: list[dict[str, str | None]] = []
    numbers: list[int] = []
    names: dict[str, None] = dict.fromkeys((*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS))
    for line in lines:
        try:
            obj = parse_line(line)
            row: dict[str, str | None] = {"ts": _ts_text(obj, required=False)}
            for name in ("metric", "service", "kind", "unit"):
                row[name] = _text(obj, name, required=False)
            v = obj.get("value")
            if isinstance(v, bool) or not (v is None or isinstance(v, int | float | str)):
                raise _LineError(f"field 'value' must be a number, got {_type_name(v)}")
            row["value"] = None if v is None else (v if isinstance(v, str) else repr(float(v)))
            for k, lv in obj.items():
                if k in row:
                    continue
                if isinstance(lv, dict | list):
                    raise _LineError(f"label {k!r} must be a string or number, got {_type_name(lv)}")
                if not k.strip():
                    raise _LineError("a label has an empty name")
                row[k] = None if lv is None else scalar_text(lv)
        except _LineError as exc:
            c.reject(line, str(exc))
            continue
        for k in row:
            if k not in names:
                names[k] = None
        rows.append(row)
        numbers.append(line.number)
    if not rows:
        return TelemetryBatch(rejects=c.rejects)
    frame = pl.from_dicts(rows, schema={k: pl.Utf8 for k in names})
    batch = long_frame_to_batch(
        frame, source, now_ns=now_ns, row_numbers=pl.Series(numbers), location_word="line"
    )
    c.rejects.extend(batch.rejects)
    batch.rejects = c.sorted_rejects()
    return batch


DecodeFn = Callable[[list[Line], str], TelemetryBatch]


def decoder(kind: str, *, tenant_attribute: str = "rootwise.tenant.id") -> DecodeFn:
    """The decoder of a JSON Lines kind (``jsonl-events``, ``jsonl-logs``, ``jsonl-topology``, ``jsonl-long``)."""
    if kind == "jsonl-events":
        return decode_events
    if kind == "jsonl-logs":
        return lambda lines, source: decode_logs(lines, source, tenant_attribute=tenant_attribute)
    if kind == "jsonl-topology":
        return decode_topology
    if kind == "jsonl-long":
        return decode_long_rows
    raise ValueError(f"unknown JSON Lines kind {kind!r}; expected one of {', '.join(KINDS)}")


def iter_jsonl_batches(
    stream: IO[bytes],
    kind: str,
    source: str,
    *,
    tenant_attribute: str = "rootwise.tenant.id",
    batch_lines: int = 100_000,
    batch_bytes: int = 64 << 20,
) -> Iterator[TelemetryBatch]:
    """Decode a JSON Lines stream of one kind in bounded chunks of lines."""
    decode = decoder(kind, tenant_attribute=tenant_attribute)
    chunk: list[Line] = []
    size = 0
    for line in iter_lines(stream):
        chunk.append(line)
        size += len(line.data)
        if len(chunk) >= batch_lines or size >= batch_bytes:
            yield decode(chunk, source)
            chunk, size = [], 0
    if chunk:
        yield decode(chunk, source)
