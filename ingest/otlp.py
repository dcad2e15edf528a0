"""OTLP decoding: ``Export*ServiceRequest`` payloads (JSON or binary protobuf) to a :class:`TelemetryBatch`.

One normalisation path serves both encodings. JSON is parsed with orjson into the OTLP/JSON object shape; a
protobuf message is turned into that same shape by :func:`_pb_to_obj`, a generic walk over its fields
(``json_name`` keys, ids as lowercase hex, ``bytesValue`` as base64, enums as ints), so every per-signal
rule below exists once.

OTLP/JSON rules followed (opentelemetry-proto ``docs/specification.md``, "JSON Protobuf Encoding"):
lowerCamelCase keys; 64-bit integers as decimal strings or numbers; ``traceId``/``spanId`` as
case-insensitive hex; enums as integers; unknown fields ignored; doubles may be ``"NaN"``/``"Infinity"``.

What becomes what
-----------------
- Service: resource attribute ``service.name`` (``unknown_service`` when absent).
- Metric labels: point attributes over resource attributes (the point wins), without ``service.name``,
  ``telemetry.sdk.*`` and ``process.*``, then :func:`ingest.genai.canonical_labels`. ``cloud.region`` becomes
  ``region`` and ``cloud.availability_zone`` ``zone`` (the names every other input uses). ``service.instance.id``
  becomes ``instance`` (unless the resource sets ``instance``), as in Prometheus' OTLP translation. Scope
  attributes are not used. AnyValues become strings: ints in decimal, doubles as Python ``repr``, bools
  ``true``/``false``, arrays and kvlists as compact JSON (sorted keys), bytes as base64.
- Gauge -> ``gauge``; monotonic cumulative sum -> ``counter``; delta sum -> ``delta``; non-monotonic
  cumulative sum -> ``gauge`` (an unspecified temporality is read as cumulative); histogram -> ``histograms``
  rows; exponential histogram -> explicit-bounds ``histograms`` rows (:func:`exponential_to_explicit`);
  summary -> ``summary`` series per quantile (label ``quantile``) plus ``<name>_sum`` and ``<name>_count``
  counters. Points flagged ``NO_RECORDED_VALUE`` are skipped.
- Spans keep all their attributes (strings) and all resource attributes (``resource``), plus the GenAI
  columns of :func:`ingest.genai.span_columns`; links are not stored. Logs get the metric-label resource
  attributes merged under their own; ``severity`` is the sender's text, else the short name of
  ``severityNumber`` (``INFO``, ``WARN2``...), and a missing ``severityNumber`` is derived from common texts.
- Record-level problems (a bad timestamp, a wrong type, a bad id) dead-letter that record with a reason naming
  the field and what was expected; a payload that is not OTLP at all raises :class:`OtlpDecodeError`.
  Attribute values on spans and logs longer than :data:`MAX_ATTRIBUTE_CHARS` (and log bodies longer than
  :data:`MAX_BODY_CHARS`) are cut and marked; a metric label longer than :data:`MAX_LABEL_CHARS`
  dead-letters the point, since labels are series identity. A reject's ``raw`` is the record in OTLP/JSON
  form (for protobuf input too).
"""

from __future__ import annotations

import base64
import gc
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import orjson
import polars as pl
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ingest import schema
from ingest.batch import (
    MetricBuilder,
    Reject,
    TelemetryBatch,
    labels_arrow,
    labels_list,
    log_id,
    ts_bounds_ns,
)
from ingest.genai import DEFAULT_TENANT_ATTRIBUTE, canonical_labels, span_columns

SIGNALS = ("metrics", "traces", "logs")
#: top-level key of each signal's ``Export*ServiceRequest`` in OTLP/JSON
TOP_KEYS = {"metrics": "resourceMetrics", "traces": "resourceSpans", "logs": "resourceLogs"}
REQUESTS: dict[str, type[Message]] = {
    "metrics": ExportMetricsServiceRequest,
    "traces": ExportTraceServiceRequest,
    "logs": ExportLogsServiceRequest,
}

MAX_LABEL_CHARS = 2048
MAX_ATTRIBUTE_CHARS = 65_536
MAX_BODY_CHARS = 1_048_576
#: exponential histograms with more buckets than this (both ranges) are dead-lettered; the SDK default is 160
MAX_EXPONENTIAL_BUCKETS = 4096

# metrics.proto: AggregationTemporality, DataPointFlags
_DELTA, _CUMULATIVE = 1, 2
_NO_RECORDED_VALUE = 1
# trace.proto: Span.SpanKind, Status.StatusCode
_SPAN_KINDS = ("unspecified", "internal", "server", "client", "producer", "consumer")
_STATUS = ("unset", "ok", "error")
# logs.proto SeverityNumber short names (the data model's "SeverityNumber" table)
_SEVERITY_NAMES = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
_SEVERITY_FROM_TEXT = schema.SEVERITY_NUMBERS
_RESOURCE_DROP_PREFIXES = ("telemetry.sdk.", "process.")
#: resource attributes renamed to Rootwise's dimension names (semantic-conventions cloud.* -> short label)
_RESOURCE_DIMENSIONS = {"cloud.region": "region", "cloud.availability_zone": "zone"}
_EPOCH = datetime(1970, 1, 1)
_TRUNCATED = "…[truncated]"


class OtlpDecodeError(ValueError):
    """The payload as a whole is not a decodable OTLP request (the receiver answers 400)."""


class _Invalid(Exception):
    """One record is malformed; the message names the field and what was expected."""


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(field: str, expected: str, got: Any) -> _Invalid:
    return _Invalid(f"{field}: expected {expected}, got {_preview(got)}")


def _raw(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):
        return repr(obj).encode("utf-8", "backslashreplace")


# -- scalar accessors: accept what proto3 JSON allows, raise _Invalid otherwise ----------------------------------
def _uint(v: Any, field: str) -> int:
    """A uint64/fixed64: JSON number or decimal string (proto3 JSON mapping)."""
    t = type(v)
    if t is int and 0 <= v < 1 << 64:
        return v
    if t is str and v.isascii() and v.isdigit() and len(v) <= 20:
        return int(v)
    if t is float and v.is_integer() and 0 <= v < 2.0**64:
        return int(v)
    raise _bad(field, "an unsigned 64-bit integer (number or decimal string)", v)


def _int(v: Any, field: str) -> int:
    """An int64/sint32: JSON number or decimal string."""
    t = type(v)
    if t is int and -(1 << 63) <= v < 1 << 63:
        return v
    if t is str:
        digits = v[1:] if v[:1] == "-" else v
        if digits.isascii() and digits.isdigit() and len(digits) <= 19:
            return int(v)
    if t is float and v.is_integer() and abs(v) < 2.0**63:
        return int(v)
    raise _bad(field, "a 64-bit integer (number or decimal string)", v)


def _float(v: Any, field: str) -> float:
    """A double: JSON number, or a string (``"NaN"``, ``"Infinity"``, ``"-Infinity"``, decimal)."""
    t = type(v)
    if t is float or t is int:
        return float(v)
    if t is str:
        try:
            return float(v)
        except ValueError:
            pass
    raise _bad(field, "a number", v)


def _optional_finite(v: Any, field: str) -> float | None:
    if v is None:
        return None
    x = _float(v, field)
    if not math.isfinite(x):
        raise _bad(field, "a finite number", x)
    return x


def _str(v: Any, field: str) -> str:
    if v is None:
        return ""
    if type(v) is str:
        return v
    raise _bad(field, "a string", v)


def _list(v: Any, field: str) -> list:
    if v is None:
        return []
    if type(v) is list:
        return v
    raise _bad(field, "a list", v)


def _obj(v: Any, field: str) -> dict:
    if v is None:
        return {}
    if type(v) is dict:
        return v
    raise _bad(field, "an object", v)


def _enum(v: Any, field: str) -> int:
    # OTLP/JSON: "Values of enum fields MUST be encoded as integer values"
    if v is None:
        return 0
    if type(v) is int:
        return v
    raise _bad(field, "an integer enum value", v)


def _time(v: Any, field: str) -> int:
    """Nanoseconds since the epoch; 0 when missing."""
    if type(v) is int and v >= 0:
        return v
    return 0 if v is None else _uint(v, field)


def _hex_id(v: Any, n_bytes: int, field: str, *, required: bool = True) -> str | None:
    """A trace/span id as lowercase hex (OTLP/JSON: case-insensitive hex, not base64)."""
    if v is None or v == "":
        if required:
            raise _Invalid(f"{field} is missing; expected {2 * n_bytes} hex characters")
        return None
    if type(v) is not str or len(v) != 2 * n_bytes:
        raise _bad(field, f"{2 * n_bytes} hex characters ({n_bytes} bytes)", v)
    try:
        raw = bytes.fromhex(v)
    except ValueError:
        raise _bad(field, f"{2 * n_bytes} hex characters", v) from None
    if not any(raw):
        # trace.proto: "an all-zeroes trace_id / span_id is considered invalid"
        raise _Invalid(f"{field} is all zeroes, which OTLP defines as invalid")
    return v.lower()


# -- AnyValue --------------------------------------------------------------------------------------------------
def _any_native(v: Any, field: str) -> Any:
    """An AnyValue as a JSON-able Python value (used inside arrays and kvlists)."""
    if v is None:
        return None
    if type(v) is not dict:
        raise _bad(field, "an AnyValue object", v)
    if "stringValue" in v:
        return _str(v["stringValue"], field)
    if "boolValue" in v:
        b = v["boolValue"]
        if type(b) is not bool:
            raise _bad(field, "a boolean boolValue", b)
        return b
    if "intValue" in v:
        return _int(v["intValue"], field)
    if "doubleValue" in v:
        d = _float(v["doubleValue"], field)
        return d if math.isfinite(d) else repr(d)
    if "arrayValue" in v:
        values = _list(_obj(v["arrayValue"], field).get("values"), field)
        return [_any_native(x, f"{field}[{i}]") for i, x in enumerate(values)]
    if "kvlistValue" in v:
        values = _list(_obj(v["kvlistValue"], field).get("values"), field)
        out = {}
        for kv in values:
            kv = _obj(kv, field)
            out[_str(kv.get("key"), f"{field}.key")] = _any_native(kv.get("value"), field)
        return out
    if "bytesValue" in v:
        return _str(v["bytesValue"], field)  # base64, as in the proto3 JSON mapping
    return None  # an empty AnyValue (or a value kind this decoder does not know)


def _any_str(v: Any, field: str) -> str:
    """An AnyValue as the string stored in labels, attributes and log bodies."""
    if type(v) is dict:
        s = v.get("stringValue")
        if type(s) is str:
            return s
    native = _any_native(v, field)
    if native is None:
        return ""
    if type(native) is str:
        return native
    if type(native) is bool:
        return "true" if native else "false"
    if type(native) is int:
        return str(native)
    if type(native) is float:
        return repr(native)
    return orjson.dumps(native, option=orjson.OPT_SORT_KEYS).decode()


def _attrs(kvs: Any, field: str) -> dict[str, str]:
    """A KeyValue list as ``{key: string value}`` (a repeated key: the last one wins)."""
    if not kvs:
        return {}
    if type(kvs) is not list:
        raise _bad(field, "a list of {key, value} objects", kvs)
    out = {}
    for kv in kvs:
        if type(kv) is not dict:
            raise _bad(field, "a list of {key, value} objects", kv)
        k = kv.get("key")
        if type(k) is not str:
            raise _bad(f"{field}.key", "a string", k)
        v = kv.get("value")
        if type(v) is dict:
            s = v.get("stringValue")
            if type(s) is str:
                out[k] = s
                continue
        out[k] = _any_str(v, f"{field}[{k!r}]")
    return out


def _attr_key(kvs: Any) -> tuple:
    """A cheap cache key for a KeyValue list of string values (any other shape falls back to a slower key).

    Only a key that equals one built from validated strings can hit the cache, and strings compare equal only
    to strings, so the fast key needs no validation of its own.
    """
    if not kvs:
        return ()
    try:
        return tuple([(kv["key"], kv["value"]["stringValue"]) for kv in kvs])
    except (TypeError, KeyError):
        if type(kvs) is list:
            try:
                return ("\x00json", orjson.dumps(kvs))
            except orjson.JSONEncodeError:
                pass
        return (object(),)  # never hits: validated on every point


def _cut(attrs: dict[str, str]) -> dict[str, str]:
    """Span/log attributes with over-long values cut (prompts and completions can be megabytes)."""
    for k, v in attrs.items():
        if len(v) > MAX_ATTRIBUTE_CHARS:
            attrs[k] = v[:MAX_ATTRIBUTE_CHARS] + _TRUNCATED
    return attrs


def _resource(rx: Any, field: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """Service name, all resource attributes, and those that become labels."""
    attrs = _attrs(_obj(rx, field).get("attributes"), f"{field}.attributes")
    service = attrs.get("service.name") or "unknown_service"
    labels = {
        k: v
        for k, v in attrs.items()
        if k not in ("service.name", "service.instance.id") and not k.startswith(_RESOURCE_DROP_PREFIXES)
    }
    for otel_key, dimension in _RESOURCE_DIMENSIONS.items():
        if otel_key in labels:
            # one name per dimension whatever the source (Parquet, Prometheus and OTLP all say "region")
            labels.setdefault(dimension, labels.pop(otel_key))
    instance = attrs.get("service.instance.id")
    if instance:
        # as Prometheus' OTLP translation does: the SDKs set a per-process id, and cumulative series of two
        # replicas must not merge into one
        labels.setdefault("instance", instance)
    return service, attrs, labels


def _walk(
    obj: dict, top: str, scope_key: str, item_key: str, rejects: Callable[[str, str, Any], None]
) -> Any:
    """Yield ``(location, resource, item list)`` per scope, dead-lettering malformed resources and scopes."""
    for ri, r in enumerate(_list_top(obj.get(top), top)):
        loc_r = f"{top}[{ri}]"
        try:
            r = _obj(r, loc_r)
            scopes = _list(r.get(scope_key), f"{loc_r}.{scope_key}")
            resource = _resource(r.get("resource"), f"{loc_r}.resource")
        except (_Invalid, RecursionError) as exc:
            rejects(loc_r, str(exc), r)
            continue
        for si, s in enumerate(scopes):
            loc_s = f"{loc_r}.{scope_key}[{si}]"
            try:
                items = _list(_obj(s, loc_s).get(item_key), f"{loc_s}.{item_key}")
            except _Invalid as exc:
                rejects(loc_s, str(exc), s)
                continue
            yield loc_s, resource, items


def _list_top(v: Any, top: str) -> list:
    if v is None:
        return []
    if type(v) is not list:
        raise OtlpDecodeError(f"{top} must be a list, got {_preview(v)}")
    return v


# -- metrics ---------------------------------------------------------------------------------------------------
class _MetricDecoder:
    """Walks ``resourceMetrics`` into a :class:`MetricBuilder`."""

    def __init__(self, source: str, tenant_attribute: str, now_ns: int | None) -> None:
        self.b = MetricBuilder(source, now_ns)
        self.tenant_attribute = tenant_attribute

    def reject(self, location: str, reason: str, record: Any) -> None:
        self.b.reject(location, reason, _raw(record))

    def run(self, obj: dict) -> TelemetryBatch:
        for loc_s, (service, _, res_labels), metrics in _walk(
            obj, "resourceMetrics", "scopeMetrics", "metrics", self.reject
        ):
            for mi, m in enumerate(metrics):
                loc = f"{loc_s}.metrics[{mi}]"
                try:
                    self.metric(m, loc, service, res_labels)
                except (_Invalid, RecursionError) as exc:
                    self.reject(loc, str(exc), m)
        return self.b.build()

    def metric(self, m: Any, loc: str, service: str, res_labels: dict[str, str]) -> None:
        m = _obj(m, loc)
        name = _str(m.get("name"), "name")
        if not name:
            raise _Invalid("name is missing; expected a non-empty metric name")
        unit = _str(m.get("unit"), "unit")
        loc = f"{loc}({name})"
        if (g := m.get("gauge")) is not None:
            self.numbers(_obj(g, "gauge"), loc, name, service, "gauge", unit, res_labels)
        elif (s := m.get("sum")) is not None:
            s = _obj(s, "sum")
            temporality = _enum(s.get("aggregationTemporality"), "sum.aggregationTemporality")
            if temporality == _DELTA:
                kind = "delta"
            else:
                kind = "counter" if s.get("isMonotonic") is True else "gauge"
            self.numbers(s, loc, name, service, kind, unit, res_labels)
        elif (h := m.get("histogram")) is not None:
            self.histograms(_obj(h, "histogram"), loc, name, service, unit, res_labels, self.explicit)
        elif (e := m.get("exponentialHistogram")) is not None:
            self.histograms(
                _obj(e, "exponentialHistogram"), loc, name, service, unit, res_labels, self.exponential
            )
        elif (q := m.get("summary")) is not None:
            self.summaries(_obj(q, "summary"), loc, name, service, unit, res_labels)
        else:
            raise _Invalid(
                "metric has no data; expected one of gauge, sum, histogram, exponentialHistogram, summary"
            )

    def series(self, metric: str, service: str, kind: str, unit: str, res_labels: dict, items: tuple) -> int:
        labels = dict(res_labels)
        labels.update(items)
        labels = canonical_labels(labels, self.tenant_attribute)
        for k, v in labels.items():
            if len(v) > MAX_LABEL_CHARS or len(k) > MAX_LABEL_CHARS:
                raise _Invalid(
                    f"attribute {k[:80]!r} is {max(len(k), len(v))} characters; metric labels (series identity) "
                    f"take at most {MAX_LABEL_CHARS}"
                )
        return self.b.series(metric, service, kind, unit, labels)

    def numbers(
        self, data: dict, loc: str, name: str, service: str, kind: str, unit: str, res_labels: dict
    ) -> None:
        # the hot path: per point one attribute walk, one dict lookup, three appends (through MetricBuilder)
        b = self.b
        point = b.point
        lo, hi = b.min_ns, b.max_ns
        cache: dict[tuple, int] = {}
        for i, dp in enumerate(_list(data.get("dataPoints"), "dataPoints")):
            try:
                if type(dp) is not dict:
                    raise _bad("dataPoints[]", "an object", dp)
                flags = dp.get("flags")
                if flags and _uint(flags, "flags") & _NO_RECORDED_VALUE:
                    continue
                sid = cache.get(key := _attr_key(dp.get("attributes")))
                if sid is None:
                    # a new key: validated strictly here, so a later hit on the same key is valid too
                    items = tuple(_attrs(dp.get("attributes"), "attributes").items())
                    sid = cache[key] = self.series(name, service, kind, unit, res_labels, items)
                ts = dp.get("timeUnixNano")
                if type(ts) is not int:
                    ts = (
                        int(ts)
                        if type(ts) is str and len(ts) == 19 and ts.isdigit()
                        else _time(ts, "timeUnixNano")
                    )
                if not ts:
                    raise _Invalid("timeUnixNano is missing or 0; expected nanoseconds since the Unix epoch")
                v = dp.get("asDouble")
                if v is None:
                    v = dp.get("asInt")
                    if v is None:
                        raise _Invalid("data point has neither asDouble nor asInt")
                    v = float(_int(v, "asInt"))
                elif type(v) is not float:
                    v = _float(v, "asDouble")
            except (_Invalid, RecursionError) as exc:
                self.reject(f"{loc}.dataPoints[{i}]", str(exc), dp)
                continue
            if lo <= ts <= hi and v - v == 0.0:  # in range and finite: MetricBuilder only re-checks
                point(sid, ts, v, loc)
            else:  # MetricBuilder dead-letters it with its own reason
                point(sid, ts, v, f"{loc}.dataPoints[{i}]", _raw(dp))

    def histograms(
        self,
        data: dict,
        loc: str,
        name: str,
        service: str,
        unit: str,
        res_labels: dict,
        buckets: Callable[[dict], tuple[list[float], list[float]]],
    ) -> None:
        b = self.b
        cumulative = _enum(data.get("aggregationTemporality"), "aggregationTemporality") != _DELTA
        cache: dict[tuple, int] = {}
        for i, dp in enumerate(_list(data.get("dataPoints"), "dataPoints")):
            loc_i = f"{loc}.dataPoints[{i}]"
            try:
                dp = _obj(dp, "dataPoints[]")
                if _uint(dp.get("flags", 0), "flags") & _NO_RECORDED_VALUE:
                    continue
                key = tuple(_attrs(dp.get("attributes"), "attributes").items())
                sid = cache.get(key)
                if sid is None:
                    sid = cache[key] = self.series(name, service, "histogram", unit, res_labels, key)
                ts = _time(dp.get("timeUnixNano"), "timeUnixNano")
                if not ts:
                    raise _Invalid("timeUnixNano is missing or 0; expected nanoseconds since the Unix epoch")
                count = float(_uint(dp.get("count", 0), "count"))
                total, vmin, vmax = (_optional_finite(dp.get(f), f) for f in ("sum", "min", "max"))
                bounds, counts = buckets(dp)
                if counts and sum(counts) != count:
                    raise _Invalid(f"count is {count:g} but the bucket counts add up to {sum(counts):g}")
                if not counts:  # count/sum only: one bucket (-Inf, +Inf)
                    bounds, counts = [], [count]
            except (_Invalid, RecursionError) as exc:
                self.reject(loc_i, str(exc), dp)
                continue
            ok = b.min_ns <= ts <= b.max_ns and all(x < y for x, y in zip(bounds, bounds[1:], strict=False))
            # MetricBuilder re-validates; the raw record is serialised only when it will be dead-lettered
            b.histogram(
                sid, ts, count, total, vmin, vmax, bounds, counts, cumulative, loc_i, None if ok else _raw(dp)
            )

    @staticmethod
    def explicit(dp: dict) -> tuple[list[float], list[float]]:
        bounds = [_float(x, "explicitBounds[]") for x in _list(dp.get("explicitBounds"), "explicitBounds")]
        counts = [float(_uint(x, "bucketCounts[]")) for x in _list(dp.get("bucketCounts"), "bucketCounts")]
        if not all(math.isfinite(x) for x in bounds):
            raise _bad("explicitBounds", "finite numbers", bounds)
        if counts and len(counts) != len(bounds) + 1:
            raise _Invalid(
                f"bucketCounts has {len(counts)} entries for {len(bounds)} explicitBounds; expected bounds + 1"
            )
        return bounds, counts

    @staticmethod
    def exponential(dp: dict) -> tuple[list[float], list[float]]:
        scale = _int(dp.get("scale", 0), "scale")
        if not -10 <= scale <= 20:
            raise _bad("scale", "an integer in [-10, 20]", scale)
        ranges = []
        for side in ("positive", "negative"):
            bx = _obj(dp.get(side), side)
            counts = [float(_uint(x, f"{side}.bucketCounts[]")) for x in _list(bx.get("bucketCounts"), side)]
            ranges.append((_int(bx.get("offset", 0), f"{side}.offset"), counts))
        if len(ranges[0][1]) + len(ranges[1][1]) > MAX_EXPONENTIAL_BUCKETS:
            raise _Invalid(f"exponential histogram has more than {MAX_EXPONENTIAL_BUCKETS} buckets")
        zero_threshold = _float(dp.get("zeroThreshold", 0.0), "zeroThreshold")
        if not (math.isfinite(zero_threshold) and zero_threshold >= 0):
            raise _bad("zeroThreshold", "a finite number >= 0", zero_threshold)
        zero_count = float(_uint(dp.get("zeroCount", 0), "zeroCount"))
        (p_off, p_counts), (n_off, n_counts) = ranges
        try:
            return exponential_to_explicit(
                scale, p_off, p_counts, n_off, n_counts, zero_count, zero_threshold
            )
        except OverflowError:
            raise _Invalid(
                f"exponential histogram bucket offsets ({p_off}, {n_off}) at scale {scale} exceed the double range"
            ) from None

    def summaries(self, data: dict, loc: str, name: str, service: str, unit: str, res_labels: dict) -> None:
        b = self.b
        cache: dict[tuple, int] = {}
        for i, dp in enumerate(_list(data.get("dataPoints"), "dataPoints")):
            loc_i = f"{loc}.dataPoints[{i}]"
            try:
                dp = _obj(dp, "dataPoints[]")
                if _uint(dp.get("flags", 0), "flags") & _NO_RECORDED_VALUE:
                    continue
                key = tuple(_attrs(dp.get("attributes"), "attributes").items())
                ts = _time(dp.get("timeUnixNano"), "timeUnixNano")
                if not ts:
                    raise _Invalid("timeUnixNano is missing or 0; expected nanoseconds since the Unix epoch")
                rows: list[tuple[str, str, float | None, float]] = [
                    (f"{name}_count", "1", None, float(_uint(dp.get("count", 0), "count"))),
                    (f"{name}_sum", unit, None, _float(dp.get("sum", 0.0), "sum")),
                ]
                for qv in _list(dp.get("quantileValues"), "quantileValues"):
                    qv = _obj(qv, "quantileValues[]")
                    q = _float(qv.get("quantile", 0.0), "quantileValues[].quantile")
                    if not 0.0 <= q <= 1.0:
                        raise _bad("quantileValues[].quantile", "a number in [0, 1]", q)
                    rows.append((name, unit, q, _float(qv.get("value", 0.0), "quantileValues[].value")))
                sids = []
                for metric, u, quantile, _ in rows:
                    ckey = (metric, quantile, key)
                    sid = cache.get(ckey)
                    if sid is None:
                        items = key if quantile is None else (*key, ("quantile", quantile_label(quantile)))
                        kind = "summary" if quantile is not None else "counter"
                        sid = cache[ckey] = self.series(metric, service, kind, u, res_labels, items)
                    sids.append(sid)
            except (_Invalid, RecursionError) as exc:
                self.reject(loc_i, str(exc), dp)
                continue
            raw = None
            for sid, (*_, value) in zip(sids, rows, strict=True):
                if raw is None and not (b.min_ns <= ts <= b.max_ns and math.isfinite(value)):
                    raw = _raw(dp)
                b.point(sid, ts, value, loc_i, raw)


def quantile_label(q: float) -> str:
    """The ``quantile`` label of a summary series: shortest round-trip form, no trailing ``.0``.

    Examples
    --------
    >>> [quantile_label(q) for q in (0.5, 0.99, 1.0, 0.0)]
    ['0.5', '0.99', '1', '0']
    """
    text = repr(float(q))
    return text[:-2] if text.endswith(".0") else text


def exponential_to_explicit(
    scale: int,
    positive_offset: int,
    positive_counts: list[float],
    negative_offset: int,
    negative_counts: list[float],
    zero_count: float,
    zero_threshold: float = 0.0,
) -> tuple[list[float], list[float]]:
    """Convert OTLP exponential-histogram buckets to explicit upper bounds and counts.

    metrics.proto, ExponentialHistogramDataPoint: ``base = 2**(2**-scale)``; positive bucket ``i`` covers
    ``(base**(offset + i), base**(offset + i + 1)]``; negative bucket ``i`` covers the mirrored range
    ``[-base**(offset + i + 1), -base**(offset + i))``; the zero bucket holds values with
    ``abs(v) <= zero_threshold``. The result lists the ranges in ascending order as explicit buckets
    ``(-Inf, b0], (b0, b1], ..., (b_last, +Inf)``; empty buckets are inserted where ranges do not touch.
    Two approximations: a negative bucket's closed end moves from its lower to its upper edge (explicit
    buckets are upper-inclusive), and a zero bucket with ``zero_threshold == 0`` becomes the bucket ending at
    0 (so it shares its lower edge with the highest negative bucket, or with -Inf).

    Examples
    --------
    >>> exponential_to_explicit(0, 0, [2.0, 3.0], 0, [1.0], 4.0)
    ([-2.0, -1.0, 0.0, 1.0, 2.0, 4.0], [0.0, 1.0, 4.0, 0.0, 2.0, 3.0, 0.0])
    """
    if scale <= 0:
        # base = 2**(2**-scale) is an integer power of two: exact
        def edge(index: int) -> float:
            return math.ldexp(1.0, index << -scale)
    else:
        inv = 2.0**-scale

        def edge(index: int) -> float:
            return 2.0 ** (index * inv)

    ranges: list[tuple[float, float, float]] = []  # (lower, upper, count), ascending
    for i in range(len(negative_counts) - 1, -1, -1):
        j = negative_offset + i
        ranges.append((-edge(j + 1), -edge(j), negative_counts[i]))
    if zero_count:
        ranges.append((-zero_threshold if zero_threshold else 0.0, zero_threshold, zero_count))
    for i, c in enumerate(positive_counts):
        j = positive_offset + i
        ranges.append((edge(j), edge(j + 1), c))
    bounds: list[float] = []
    counts: list[float] = []  # counts[k] is the count of (bounds[k-1], bounds[k]]
    for lower, upper, c in ranges:
        if not (math.isfinite(lower) and math.isfinite(upper)):
            raise OverflowError("exponential histogram bucket index out of the double range")
        if not bounds or bounds[-1] < lower:
            bounds.append(lower)
            counts.append(0.0)  # (-Inf, lower] or the gap between two ranges: empty
        if upper > bounds[-1]:
            bounds.append(upper)
            counts.append(c)
        else:
            counts[-1] += c  # the zero bucket with threshold 0 ends at the bound just added
    counts.append(0.0)  # (last, +Inf)
    return bounds, counts


# -- traces ----------------------------------------------------------------------------------------------------
def _iso(ns: int) -> str:
    return (_EPOCH + timedelta(microseconds=ns // 1000)).isoformat(timespec="microseconds") + "Z"


class _Rows:
    """Column lists for a span or log frame plus the rejects met on the way."""

    def __init__(self, source: str, columns: dict[str, Any]) -> None:
        self.source = source
        self.columns = columns
        self.cols: dict[str, list] = {c: [] for c in columns}
        self.rejects: list[Reject] = []

    def reject(self, location: str, reason: str, record: Any) -> None:
        self.rejects.append(Reject(self.source, location, reason, _raw(record)))

    def add(self, row: dict[str, Any]) -> None:
        for c, values in self.cols.items():
            values.append(row[c])

    def frame(self, time_col: str) -> pl.DataFrame:
        if not self.cols[time_col]:
            return schema.empty(self.columns)
        types = {**self.columns, time_col: pl.Int64}
        # label columns through Arrow in one piece (see labels_arrow): polars would build them cell by cell
        cols = {
            c: pl.Series(c, labels_arrow(v)) if types[c] == schema.LABELS else pl.Series(c, v, dtype=types[c])
            for c, v in self.cols.items()
        }
        return pl.DataFrame(cols).with_columns(pl.from_epoch(time_col, time_unit="ns").cast(schema.TS))


def _decode_traces(obj: dict, source: str, tenant_attribute: str, now_ns: int | None) -> TelemetryBatch:
    rows = _Rows(source, schema.SPANS)
    lo, hi = ts_bounds_ns(now_ns)
    for loc_s, (service, res_attrs, _), spans in _walk(
        obj, "resourceSpans", "scopeSpans", "spans", rows.reject
    ):
        resource = labels_list(_cut(dict(res_attrs)))
        for i, sp in enumerate(spans):
            loc = f"{loc_s}.spans[{i}]"
            try:
                row = _span(_obj(sp, "span"), lo, hi, tenant_attribute, res_attrs)
            except (_Invalid, RecursionError) as exc:
                rows.reject(loc, str(exc), sp)
                continue
            row["service"] = service
            row["resource"] = resource
            rows.add(row)
    return TelemetryBatch(spans=rows.frame("start"), rejects=rows.rejects)


def _span(sp: dict, lo: int, hi: int, tenant_attribute: str, res_attrs: dict[str, str]) -> dict[str, Any]:
    trace_id = _hex_id(sp.get("traceId"), 16, "traceId")
    span_id = _hex_id(sp.get("spanId"), 8, "spanId")
    parent = _hex_id(sp.get("parentSpanId"), 8, "parentSpanId", required=False)
    start = _time(sp.get("startTimeUnixNano"), "startTimeUnixNano")
    end = _time(sp.get("endTimeUnixNano"), "endTimeUnixNano")
    if not start:
        raise _Invalid("startTimeUnixNano is missing or 0; expected nanoseconds since the Unix epoch")
    if not end:
        raise _Invalid("endTimeUnixNano is missing or 0; expected nanoseconds since the Unix epoch")
    if not lo <= start <= hi:
        raise _Invalid(f"startTimeUnixNano out of accepted range: {start} ns since epoch")
    if end < start:
        raise _Invalid(f"endTimeUnixNano {end} is before startTimeUnixNano {start}")
    kind = _enum(sp.get("kind"), "kind")
    status = _obj(sp.get("status"), "status")
    code = _enum(status.get("code"), "status.code")
    attrs = _cut(_attrs(sp.get("attributes"), "attributes"))
    events = []
    marks = []
    for j, ev in enumerate(_list(sp.get("events"), "events")):
        ev = _obj(ev, f"events[{j}]")
        ev_ts = _time(ev.get("timeUnixNano"), f"events[{j}].timeUnixNano")
        ev_name = _str(ev.get("name"), f"events[{j}].name")
        ev_attrs = _cut(_attrs(ev.get("attributes"), f"events[{j}].attributes"))
        events.append({"ts": _iso(ev_ts), "name": ev_name, "attributes": ev_attrs})
        marks.append((ev_ts, ev_name))
    genai = span_columns(attrs, res_attrs, start_ns=start, events=marks, tenant_attribute=tenant_attribute)
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": _str(sp.get("name"), "name"),
        "kind": _SPAN_KINDS[kind] if 0 <= kind < len(_SPAN_KINDS) else "unspecified",
        "start": start,
        "duration": (end - start) / 1e6,
        "status": _STATUS[code] if 0 <= code < len(_STATUS) else "unset",
        "status_message": _str(status.get("message"), "status.message") or None,
        "tenant": genai.tenant,
        "model": genai.model,
        "provider": genai.provider,
        "operation": genai.operation,
        "input_tokens": genai.input_tokens,
        "output_tokens": genai.output_tokens,
        "ttft": genai.ttft,
        "attributes": labels_list(attrs),
        "events": orjson.dumps(events, option=orjson.OPT_SORT_KEYS).decode() if events else "[]",
    }


# -- logs ------------------------------------------------------------------------------------------------------
def _severity_text(number: int) -> str | None:
    # logs data model: 1-4 TRACE, 5-8 DEBUG, 9-12 INFO, 13-16 WARN, 17-20 ERROR, 21-24 FATAL; "INFO2" etc.
    if not 1 <= number <= 24:
        return None
    base, step = divmod(number - 1, 4)
    return _SEVERITY_NAMES[base] + (str(step + 1) if step else "")


def _decode_logs(obj: dict, source: str, tenant_attribute: str, now_ns: int | None) -> TelemetryBatch:
    rows = _Rows(source, schema.LOGS)
    lo, hi = ts_bounds_ns(now_ns)
    for loc_s, (service, _, res_labels), records in _walk(
        obj, "resourceLogs", "scopeLogs", "logRecords", rows.reject
    ):
        for i, rec in enumerate(records):
            loc = f"{loc_s}.logRecords[{i}]"
            try:
                row = _log(_obj(rec, "logRecord"), lo, hi, service, tenant_attribute, res_labels)
            except (_Invalid, RecursionError) as exc:
                rows.reject(loc, str(exc), rec)
                continue
            rows.add(row)
    return TelemetryBatch(logs=rows.frame("ts"), rejects=rows.rejects)


def _log(
    rec: dict, lo: int, hi: int, service: str, tenant_attribute: str, res_labels: dict[str, str]
) -> dict[str, Any]:
    ts = _time(rec.get("timeUnixNano"), "timeUnixNano")
    if not ts:  # logs.proto: use observed_time_unix_nano when time_unix_nano is unset
        ts = _time(rec.get("observedTimeUnixNano"), "observedTimeUnixNano")
    if not ts:
        raise _Invalid(
            "timeUnixNano and observedTimeUnixNano are missing or 0; expected nanoseconds since epoch"
        )
    if not lo <= ts <= hi:
        raise _Invalid(f"timeUnixNano out of accepted range: {ts} ns since epoch")
    number = _enum(rec.get("severityNumber"), "severityNumber")
    text = _str(rec.get("severityText"), "severityText")
    if not number and text:
        number = _SEVERITY_FROM_TEXT.get(text.lower(), 0)
    severity = text or _severity_text(number) or ""
    body = _any_str(rec.get("body"), "body")
    if len(body) > MAX_BODY_CHARS:
        body = body[:MAX_BODY_CHARS] + _TRUNCATED
    trace_id = _hex_id(rec.get("traceId"), 16, "traceId", required=False)
    span_id = _hex_id(rec.get("spanId"), 8, "spanId", required=False)
    attrs = dict(res_labels)
    attrs.update(_cut(_attrs(rec.get("attributes"), "attributes")))
    event_name = _str(rec.get("eventName"), "eventName")
    if event_name:
        attrs.setdefault("event.name", event_name)
    tenant = attrs.get(tenant_attribute) or attrs.get("tenant") or None
    return {
        "log_id": log_id(ts, service, severity, body, trace_id or "", span_id or "", attrs),
        "ts": ts,
        "service": service,
        "severity": severity or None,
        "severity_number": number or None,
        "body": body,
        "trace_id": trace_id,
        "span_id": span_id,
        "tenant": tenant,
        "attributes": labels_list(attrs),
        "template_id": None,
    }


# -- entry points ----------------------------------------------------------------------------------------------
_gc_lock = threading.Lock()
_gc_depth = 0
_gc_was_enabled = False


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a payload is parsed and normalised.

    A payload becomes millions of short-lived, acyclic dicts, lists and strings (freed by reference counting);
    the collector's passes over them tripled decode time in our measurements without freeing anything. The
    pause is counted across threads: the collector runs again as soon as no decode is in progress.
    """
    global _gc_depth, _gc_was_enabled
    with _gc_lock:
        if _gc_depth == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_depth += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_was_enabled:
                gc.enable()


def detect_signal(obj: dict) -> str | None:
    """The signal of an OTLP/JSON request object, from its top-level key.

    Examples
    --------
    >>> detect_signal({"resourceSpans": []}), detect_signal({"data": 1})
    ('traces', None)
    """
    if not isinstance(obj, dict):
        return None
    for signal, key in TOP_KEYS.items():
        if key in obj:
            return signal
    return None


def _decode(obj: Any, signal: str, source: str, tenant_attribute: str, now_ns: int | None) -> TelemetryBatch:
    if signal not in TOP_KEYS:
        raise ValueError(f"unknown OTLP signal {signal!r}; expected one of {', '.join(SIGNALS)}")
    if type(obj) is not dict:
        raise OtlpDecodeError(f"expected a JSON object with key {TOP_KEYS[signal]}, got {type(obj).__name__}")
    if TOP_KEYS[signal] not in obj:
        other = detect_signal(obj)
        if other is not None:
            raise OtlpDecodeError(
                f"expected {TOP_KEYS[signal]} for {signal}, the body holds {TOP_KEYS[other]} (send it to /v1/{other})"
            )
        return TelemetryBatch()  # spec: an empty request is a success
    if signal == "metrics":
        return _MetricDecoder(source, tenant_attribute, now_ns).run(obj)
    if signal == "traces":
        return _decode_traces(obj, source, tenant_attribute, now_ns)
    return _decode_logs(obj, source, tenant_attribute, now_ns)


def decode_otlp_json(
    body: bytes,
    signal: str,
    source: str,
    *,
    tenant_attribute: str = DEFAULT_TENANT_ATTRIBUTE,
    now_ns: int | None = None,
) -> TelemetryBatch:
    """Decode an OTLP/JSON ``Export*ServiceRequest``.

    Parameters
    ----------
    body
        UTF-8 JSON bytes.
    signal
        ``"metrics"``, ``"traces"`` or ``"logs"``.
    source
        Where the payload came from (endpoint or file), recorded with each reject.
    tenant_attribute
        Attribute naming the tenant (``tenant`` is the fallback).
    now_ns
        Clock for the accepted timestamp range (tests); defaults to now.

    Raises
    ------
    OtlpDecodeError
        When the body is not JSON or not an OTLP request of this signal.

    Examples
    --------
    >>> body = (b'{"resourceMetrics": [{"resource": {"attributes": [{"key": "service.name", "value": '
    ...         b'{"stringValue": "api"}}]}, "scopeMetrics": [{"metrics": [{"name": "up", "gauge": '
    ...         b'{"dataPoints": [{"timeUnixNano": "1700000000000000000", "asInt": "1"}]}}]}]}]}')
    >>> batch = decode_otlp_json(body, "metrics", "example")
    >>> batch.series["service"].to_list(), batch.points["value"].to_list()
    (['api'], [1.0])
    """
    with _gc_paused():
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise OtlpDecodeError(f"body is not valid JSON: {exc}") from None
        batch = _decode(obj, signal, source, tenant_attribute, now_ns)
        del obj  # free the parse tree while the collector is still paused
    return batch


# -- protobuf: walk the message into the OTLP/JSON shape --------------------------------------------------------
_MESSAGE = FieldDescriptor.TYPE_MESSAGE
_BYTES = FieldDescriptor.TYPE_BYTES
_KEY_VALUE = "opentelemetry.proto.common.v1.KeyValue"
_FIELD_PLANS: dict[Any, tuple[str, int, bool, bool]] = {}


def _plan(fd: FieldDescriptor) -> tuple[str, int, bool, bool]:
    plan = _FIELD_PLANS.get(fd)
    if plan is None:
        # protobuf >= 5.28 has is_repeated; 7 dropped label
        repeated = (
            fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == FieldDescriptor.LABEL_REPEATED
        )
        ftype = fd.type
        if ftype == _MESSAGE and repeated and fd.message_type.full_name == _KEY_VALUE:
            ftype = -1  # attribute lists: the hot case, see _pb_key_values
        # bytes: trace/span ids are hex in OTLP/JSON; other bytes (AnyValue.bytes_value) keep the proto3 base64
        hex_bytes = fd.type == _BYTES and fd.name != "bytes_value"
        plan = _FIELD_PLANS[fd] = (fd.json_name, ftype, repeated, hex_bytes)
    return plan


def _pb_key_values(kvs: Any) -> list[dict[str, Any]]:
    """A repeated KeyValue; string values (nearly all of them) without the generic walk."""
    out = []
    for kv in kvs:
        v = kv.value
        # a non-empty string_value answers the oneof question without asking (WhichOneof is the dearer call)
        if (text := v.string_value) or v.WhichOneof("value") == "string_value":
            out.append({"key": kv.key, "value": {"stringValue": text}})
        else:
            out.append(_pb_to_obj(kv))
    return out


def _pb_to_obj(msg: Message) -> dict[str, Any]:
    """A protobuf message as the object orjson would give for its OTLP/JSON encoding."""
    out: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        name, ftype, repeated, hex_bytes = _FIELD_PLANS.get(fd) or _plan(fd)
        if ftype == _MESSAGE:
            out[name] = [_pb_to_obj(m) for m in value] if repeated else _pb_to_obj(value)
        elif ftype == -1:
            out[name] = _pb_key_values(value)
        elif ftype == _BYTES:
            out[name] = value.hex() if hex_bytes else base64.b64encode(value).decode("ascii")
        elif repeated:
            out[name] = list(value)
        else:
            out[name] = value
    return out


def decode_otlp_protobuf(
    body: bytes,
    signal: str,
    source: str,
    *,
    tenant_attribute: str = DEFAULT_TENANT_ATTRIBUTE,
    now_ns: int | None = None,
) -> TelemetryBatch:
    """Decode a binary protobuf ``Export*ServiceRequest`` (parameters as :func:`decode_otlp_json`).

    Raises
    ------
    OtlpDecodeError
        When the body does not parse as the signal's request message.
    """
    if signal not in REQUESTS:
        raise ValueError(f"unknown OTLP signal {signal!r}; expected one of {', '.join(SIGNALS)}")
    msg = REQUESTS[signal]()
    try:
        msg.ParseFromString(body)
    except (DecodeError, RecursionError) as exc:
        raise OtlpDecodeError(f"body is not a protobuf {msg.DESCRIPTOR.name}: {exc}") from None
    with _gc_paused():
        obj = _pb_to_obj(msg)
        batch = _decode(obj, signal, source, tenant_attribute, now_ns)
        del obj, msg  # free while the collector is still paused
    return batch
