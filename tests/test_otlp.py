"""OTLP decoding: upstream examples, every metric type, spans, logs, both encodings, malformed input."""

from __future__ import annotations

import base64
import bisect
import copy
import json
import math
import random
from datetime import datetime
from pathlib import Path

import orjson
import polars as pl
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from ingest.batch import TelemetryBatch, series_id
from ingest.otlp import (
    REQUESTS,
    OtlpDecodeError,
    decode_otlp_json,
    decode_otlp_protobuf,
    detect_signal,
    exponential_to_explicit,
    log_id,
)

FIXTURES = Path(__file__).parent / "fixtures" / "otlp"
T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"


# -- helpers ------------------------------------------------------------------------------------------------------
def kv(key: str, value) -> dict:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": value}}


def resource(service: str | None = "api", **attrs) -> dict:
    kvs = [kv("service.name", service)] if service else []
    return {"attributes": kvs + [kv(k.replace("_", "."), v) for k, v in attrs.items()]}


def metrics_request(*metrics: dict, res: dict | None = None) -> dict:
    return {
        "resourceMetrics": [{"resource": res or resource(), "scopeMetrics": [{"metrics": list(metrics)}]}]
    }


def spans_request(*spans: dict, res: dict | None = None) -> dict:
    return {"resourceSpans": [{"resource": res or resource(), "scopeSpans": [{"spans": list(spans)}]}]}


def logs_request(*records: dict, res: dict | None = None) -> dict:
    return {"resourceLogs": [{"resource": res or resource(), "scopeLogs": [{"logRecords": list(records)}]}]}


def to_protobuf(obj: dict, signal: str) -> bytes:
    """The same request as binary protobuf, built with the opentelemetry-proto messages.

    ``json_format`` is the standard proto3 JSON mapping, which reads bytes as base64; OTLP/JSON ids are hex,
    so they are re-encoded first (the one documented deviation).
    """
    obj = copy.deepcopy(obj)

    def fix(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str):
                    node[k] = base64.b64encode(bytes.fromhex(v)).decode()
                else:
                    fix(v)
        elif isinstance(node, list):
            for v in node:
                fix(v)

    fix(obj)
    return json_format.ParseDict(obj, REQUESTS[signal]()).SerializeToString()


def decode(obj: dict, signal: str, **kw) -> TelemetryBatch:
    return decode_otlp_json(orjson.dumps(obj), signal, "test", **kw)


def labels(row: dict) -> dict[str, str]:
    return {d["key"]: d["value"] for d in row["labels"]}


def series_by_metric(batch: TelemetryBatch) -> dict[str, dict]:
    return {r["metric"]: r for r in batch.series.iter_rows(named=True)}


def points_of(batch: TelemetryBatch, sid: int) -> list[float]:
    return batch.points.filter(pl.col("series_id") == sid).sort("ts")["value"].to_list()


def assert_same_batch(a: TelemetryBatch, b: TelemetryBatch) -> None:
    keys = {
        "series": ["series_id"],
        "points": ["series_id", "ts"],
        "histograms": ["series_id", "ts"],
        "spans": ["trace_id", "span_id"],
        "logs": ["log_id"],
    }
    for part, key in keys.items():
        fa, fb = getattr(a, part).sort(key), getattr(b, part).sort(key)
        assert fa.equals(fb), f"{part} differ:\n{fa}\n{fb}"
    assert [(r.location, r.reason) for r in a.rejects] == [(r.location, r.reason) for r in b.rejects]


# -- upstream examples ----------------------------------------------------------------------------------------------
def test_upstream_metrics_example():
    batch = decode_otlp_json((FIXTURES / "metrics.json").read_bytes(), "metrics", "metrics.json")
    assert batch.rejected == 0
    s = series_by_metric(batch)
    assert {m: (r["kind"], r["service"], r["unit"], labels(r)) for m, r in s.items()} == {
        # aggregationTemporality 1 is DELTA
        "my.counter": ("delta", "my.service", "1", {"my.counter.attr": "some value"}),
        "my.gauge": ("gauge", "my.service", "1", {"my.gauge.attr": "some value"}),
        "my.histogram": ("histogram", "my.service", "1", {"my.histogram.attr": "some value"}),
    }
    assert s["my.gauge"]["series_id"] == series_id("my.gauge", "my.service", {"my.gauge.attr": "some value"})
    when = datetime(2018, 12, 13, 14, 51, 0, 300000)
    assert batch.points.sort("value").rows() == [
        (s["my.counter"]["series_id"], when, 5.0),
        (s["my.gauge"]["series_id"], when, 10.0),
    ]
    assert batch.histograms.rows(named=True) == [
        {
            "series_id": s["my.histogram"]["series_id"],
            "ts": when,
            "count": 2.0,
            "sum": 2.0,
            "min": 0.0,
            "max": 2.0,
            "bounds": [1.0],
            "counts": [1.0, 1.0],
            "cumulative": False,
        }
    ]


def test_upstream_trace_example():
    batch = decode_otlp_json((FIXTURES / "trace.json").read_bytes(), "traces", "trace.json")
    assert batch.rejected == 0
    assert batch.spans.rows(named=True) == [
        {
            "trace_id": TRACE,  # upper-case hex in the example, stored lower-case
            "span_id": SPAN,
            "parent_span_id": "eee19b7ec3c1b173",
            "service": "my.service",
            "name": "I'm a server span",
            "kind": "server",
            "start": datetime(2018, 12, 13, 14, 51, 0),
            "duration": 1000.0,
            "status": "unset",
            "status_message": None,
            "tenant": None,
            "model": None,
            "provider": None,
            "operation": None,
            "input_tokens": None,
            "output_tokens": None,
            "ttft": None,
            "attributes": [{"key": "my.span.attr", "value": "some value"}],
            "resource": [{"key": "service.name", "value": "my.service"}],
            "events": "[]",
        }
    ]


def test_upstream_logs_example():
    batch = decode_otlp_json((FIXTURES / "logs.json").read_bytes(), "logs", "logs.json")
    assert batch.rejected == 0
    row = batch.logs.row(0, named=True)
    attrs = {d["key"]: d["value"] for d in row["attributes"]}
    assert attrs == {
        "string.attribute": "some string",
        "boolean.attribute": "true",
        "int.attribute": "10",
        "double.attribute": "637.704",
        "array.attribute": '["many","values"]',
        "map.attribute": '{"some.map.key":"some value"}',
    }
    assert (row["ts"], row["service"], row["severity"], row["severity_number"], row["body"]) == (
        datetime(2018, 12, 13, 14, 51, 0, 300000),
        "my.service",
        "Information",
        9,  # derived from the text: the example sets no severityNumber
        "Example log record",
    )
    assert (row["trace_id"], row["span_id"], row["template_id"]) == (TRACE, SPAN, None)
    assert row["log_id"] == log_id(
        1544712660300000000, "my.service", "Information", "Example log record", TRACE, SPAN, attrs
    )


@pytest.mark.parametrize(("name", "signal"), [("metrics", "metrics"), ("trace", "traces"), ("logs", "logs")])
def test_upstream_examples_as_protobuf_decode_identically(name, signal):
    body = (FIXTURES / f"{name}.json").read_bytes()
    from_json = decode_otlp_json(body, signal, "x")
    from_pb = decode_otlp_protobuf(to_protobuf(json.loads(body), signal), signal, "x")
    assert from_json.accepted > 0
    assert_same_batch(from_json, from_pb)


def test_detect_signal():
    assert [
        detect_signal(json.loads((FIXTURES / f).read_bytes()))
        for f in ("metrics.json", "trace.json", "logs.json")
    ] == [
        "metrics",
        "traces",
        "logs",
    ]
    assert detect_signal({"foo": 1}) is None


# -- metric types ---------------------------------------------------------------------------------------------------
def gauge(name, *points, unit="1"):
    return {"name": name, "unit": unit, "gauge": {"dataPoints": list(points)}}


def point(t, value=None, *, as_int=None, attrs=(), flags=None):
    dp = {"timeUnixNano": str(t), "attributes": [kv(k, v) for k, v in attrs]}
    if value is not None:
        dp["asDouble"] = value
    if as_int is not None:
        dp["asInt"] = str(as_int)
    if flags is not None:
        dp["flags"] = flags
    return dp


ALL_TYPES = metrics_request(
    gauge(
        "queue_depth",
        point(T0, 3.5, attrs=[("queue", "a")]),
        point(T0 + 10**10, as_int=7, attrs=[("queue", "a")]),
    ),
    {
        "name": "requests",
        "unit": "{request}",
        "sum": {"aggregationTemporality": 2, "isMonotonic": True, "dataPoints": [point(T0, as_int=10)]},
    },
    {
        "name": "bytes_sent",
        "sum": {"aggregationTemporality": 1, "isMonotonic": True, "dataPoints": [point(T0, 4.0)]},
    },
    {
        "name": "inflight",
        "sum": {"aggregationTemporality": 2, "isMonotonic": False, "dataPoints": [point(T0, -2.0)]},
    },
    {
        "name": "latency",
        "unit": "s",
        "histogram": {
            "aggregationTemporality": 2,
            "dataPoints": [
                {
                    "timeUnixNano": str(T0),
                    "count": "6",
                    "sum": 3.5,
                    "min": 0.05,
                    "max": 2.0,
                    "explicitBounds": [0.1, 0.5, 1.0],
                    "bucketCounts": ["1", "2", "2", "1"],
                }
            ],
        },
    },
    {
        "name": "ttft",
        "unit": "s",
        "exponentialHistogram": {
            "aggregationTemporality": 1,
            "dataPoints": [
                {
                    "timeUnixNano": str(T0),
                    "count": "10",
                    "sum": 1.0,
                    "scale": 1,
                    "zeroCount": "3",
                    "positive": {"offset": -1, "bucketCounts": ["1", "2"]},
                    "negative": {"offset": 0, "bucketCounts": ["4"]},
                }
            ],
        },
    },
    {
        "name": "rpc_duration",
        "unit": "ms",
        "summary": {
            "dataPoints": [
                {
                    "timeUnixNano": str(T0),
                    "count": "100",
                    "sum": 2500.0,
                    "quantileValues": [{"quantile": 0.5, "value": 20.0}, {"quantile": 0.99, "value": 90.0}],
                    "attributes": [kv("method", "get")],
                }
            ]
        },
    },
)


def test_every_metric_type():
    batch = decode(ALL_TYPES, "metrics")
    assert batch.rejected == 0
    kinds = {
        (r["metric"], r["kind"], r["unit"], tuple(sorted(labels(r).items())))
        for r in batch.series.iter_rows(named=True)
    }
    assert kinds == {
        ("queue_depth", "gauge", "1", (("queue", "a"),)),
        ("requests", "counter", "{request}", ()),
        ("bytes_sent", "delta", "", ()),
        ("inflight", "gauge", "", ()),
        ("latency", "histogram", "s", ()),
        ("ttft", "histogram", "s", ()),
        ("rpc_duration", "summary", "ms", (("method", "get"), ("quantile", "0.5"))),
        ("rpc_duration", "summary", "ms", (("method", "get"), ("quantile", "0.99"))),
        ("rpc_duration_sum", "counter", "ms", (("method", "get"),)),
        ("rpc_duration_count", "counter", "1", (("method", "get"),)),
    }
    sid = {
        (r["metric"], labels(r).get("quantile")): r["series_id"] for r in batch.series.iter_rows(named=True)
    }
    assert points_of(batch, sid[("queue_depth", None)]) == [3.5, 7.0]
    assert points_of(batch, sid[("requests", None)]) == [10.0]
    assert points_of(batch, sid[("inflight", None)]) == [-2.0]
    assert points_of(batch, sid[("rpc_duration", "0.99")]) == [90.0]
    assert points_of(batch, sid[("rpc_duration_sum", None)]) == [2500.0]
    assert points_of(batch, sid[("rpc_duration_count", None)]) == [100.0]
    hist = {r["series_id"]: r for r in batch.histograms.iter_rows(named=True)}
    latency = hist[sid[("latency", None)]]
    assert (latency["bounds"], latency["counts"], latency["count"], latency["cumulative"]) == (
        [0.1, 0.5, 1.0],
        [1.0, 2.0, 2.0, 1.0],
        6.0,
        True,
    )
    ttft = hist[sid[("ttft", None)]]
    r2 = math.sqrt(2)
    assert ttft["bounds"] == pytest.approx([-r2, -1.0, 0.0, 1 / r2, 1.0, r2])
    assert ttft["counts"] == [0.0, 4.0, 3.0, 0.0, 1.0, 2.0, 0.0]
    assert (ttft["count"], ttft["cumulative"]) == (10.0, False)


def test_every_metric_type_as_protobuf_decodes_identically():
    assert_same_batch(
        decode(ALL_TYPES, "metrics"),
        decode_otlp_protobuf(to_protobuf(ALL_TYPES, "metrics"), "metrics", "test"),
    )


def test_exponential_conversion_negative_scale_is_exact():
    # scale -1: base 4; positive bucket i covers (4**i, 4**(i+1)]
    bounds, counts = exponential_to_explicit(-1, 0, [1.0, 1.0], 0, [], 0.0)
    assert (bounds, counts) == ([1.0, 4.0, 16.0], [0.0, 1.0, 1.0, 0.0])


def test_exponential_zero_threshold_bucket():
    bounds, counts = exponential_to_explicit(0, 1, [5.0], 0, [], 2.0, zero_threshold=0.5)
    assert (bounds, counts) == ([-0.5, 0.5, 2.0, 4.0], [0.0, 2.0, 0.0, 5.0, 0.0])


@pytest.mark.parametrize("scale", [-2, 0, 1, 3, 8])
def test_exponential_conversion_puts_every_value_in_the_right_bucket(scale):
    rng = random.Random(scale)
    values = [rng.lognormvariate(0, 3) * rng.choice([1, 1, 1, -1]) for _ in range(2000)] + [0.0] * 7
    # OTLP: positive bucket index i holds (base**i, base**(i+1)], i.e. i = ceil(log_base(v)) - 1
    index = {v: math.ceil(math.log2(abs(v)) * 2**scale) - 1 for v in values if v}
    pos = [index[v] for v in values if v > 0]
    neg = [index[v] for v in values if v < 0]

    def dense(indices):
        offset = min(indices)
        out = [0.0] * (max(indices) - offset + 1)
        for i in indices:
            out[i - offset] += 1
        return offset, out

    (p_off, p_counts), (n_off, n_counts) = dense(pos), dense(neg)
    bounds, counts = exponential_to_explicit(scale, p_off, p_counts, n_off, n_counts, 7.0)
    assert all(a < b for a, b in zip(bounds, bounds[1:], strict=False))
    assert len(counts) == len(bounds) + 1 and sum(counts) == len(values)
    expected = [0.0] * len(counts)
    for v in values:
        expected[bisect.bisect_left(bounds, v)] += 1  # explicit buckets are (lower, upper]
    assert counts == expected


def test_exponential_histogram_out_of_range_is_rejected():
    dp = {
        "timeUnixNano": str(T0),
        "count": "1",
        "scale": 0,
        "positive": {"offset": 5000, "bucketCounts": ["1"]},
    }
    batch = decode(metrics_request({"name": "x", "exponentialHistogram": {"dataPoints": [dp]}}), "metrics")
    assert [r.reason for r in batch.rejects] == [
        "exponential histogram bucket offsets (5000, 0) at scale 0 exceed the double range"
    ]


def test_no_recorded_value_points_are_skipped_not_rejected():
    batch = decode(metrics_request(gauge("up", point(T0, 1.0), point(T0 + 10**9, 0.0, flags=1))), "metrics")
    assert (batch.points.height, batch.rejected) == (1, 0)


def test_labels_merge_resource_and_point_attributes():
    res = resource(
        "api",
        region="eu",
        instance="i-1",
        telemetry_sdk_name="opentelemetry",
        process_pid=42,
        rootwise_tenant_id="acme",
    )
    req = metrics_request(gauge("up", point(T0, 1.0, attrs=[("instance", "i-2"), ("code", "200")])), res=res)
    (row,) = decode(req, "metrics").series.iter_rows(named=True)
    # point wins over resource; service.name, telemetry.sdk.* and process.* are not labels; tenant is canonical
    assert labels(row) == {"region": "eu", "instance": "i-2", "code": "200", "tenant": "acme"}
    assert row["service"] == "api"


def test_missing_service_name_and_custom_tenant_attribute():
    req = metrics_request(gauge("up", point(T0, 1.0, attrs=[("org", "o1")])), res=resource(None))
    (row,) = decode(req, "metrics", tenant_attribute="org").series.iter_rows(named=True)
    assert (row["service"], labels(row)) == ("unknown_service", {"tenant": "o1"})


def test_any_values_become_strings():
    attrs = [
        {"key": "i", "value": {"intValue": 7}},
        {"key": "d", "value": {"doubleValue": 5}},
        {"key": "b", "value": {"boolValue": False}},
        {"key": "bytes", "value": {"bytesValue": "AAEC"}},
        {"key": "empty", "value": {}},
        {
            "key": "nested",
            "value": {
                "arrayValue": {
                    "values": [
                        {"intValue": "1"},
                        {"kvlistValue": {"values": [{"key": "z", "value": {"doubleValue": 0.5}}]}},
                    ]
                }
            },
        },
    ]
    req = metrics_request(gauge("up", {"timeUnixNano": T0, "asDouble": 1.0, "attributes": attrs}))
    batch = decode(req, "metrics")
    assert labels(batch.series.row(0, named=True)) == {
        "i": "7",
        "d": "5.0",
        "b": "false",
        "bytes": "AAEC",
        "empty": "",
        "nested": '[1,{"z":0.5}]',
    }
    assert_same_batch(batch, decode_otlp_protobuf(to_protobuf(req, "metrics"), "metrics", "test"))


def test_unknown_fields_are_ignored():
    req = metrics_request(gauge("up", {**point(T0, 1.0), "futureField": {"x": 1}}))
    req["resourceMetrics"][0]["somethingNew"] = [1, 2]
    batch = decode(req, "metrics")
    assert (batch.points.height, batch.rejected) == (1, 0)


# -- traces ---------------------------------------------------------------------------------------------------------
def span(span_id="00f067aa0ba902b7", *, parent=None, start=T0, end=T0 + 250_000_000, **extra) -> dict:
    out = {
        "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
        "spanId": span_id,
        "name": "chat gpt-4o",
        "kind": 3,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(end),
    }
    if parent:
        out["parentSpanId"] = parent
    out.update(extra)
    return out


GENAI_SPAN = span(
    attributes=[
        kv("gen_ai.system", "openai"),
        kv("gen_ai.request.model", "gpt-4o"),
        kv("gen_ai.operation.name", "chat"),
        kv("gen_ai.usage.prompt_tokens", 120),
        kv("gen_ai.usage.completion_tokens", 48),
    ],
    status={"code": 2, "message": "rate limited"},
    events=[
        {"timeUnixNano": str(T0 + 80_000_000), "name": "gen_ai.first_token"},
        {
            "timeUnixNano": str(T0 + 200_000_000),
            "name": "exception",
            "attributes": [kv("exception.type", "E")],
        },
    ],
)


def test_span_with_status_events_and_genai_columns():
    req = spans_request(
        span("1111111111111111"), GENAI_SPAN, res=resource("chatbot", rootwise_tenant_id="acme")
    )
    batch = decode(req, "traces")
    assert batch.rejected == 0
    row = batch.spans.filter(pl.col("span_id") == "00f067aa0ba902b7").row(0, named=True)
    assert (row["kind"], row["status"], row["status_message"], row["duration"]) == (
        "client",
        "error",
        "rate limited",
        250.0,
    )
    assert (row["tenant"], row["model"], row["provider"], row["operation"]) == (
        "acme",
        "gpt-4o",
        "openai",
        "chat",
    )
    assert (row["input_tokens"], row["output_tokens"], row["ttft"]) == (120, 48, 80.0)
    assert json.loads(row["events"]) == [
        {"ts": "2023-11-14T22:13:20.080000Z", "name": "gen_ai.first_token", "attributes": {}},
        {"ts": "2023-11-14T22:13:20.200000Z", "name": "exception", "attributes": {"exception.type": "E"}},
    ]
    assert {d["key"] for d in row["attributes"]} >= {"gen_ai.system", "gen_ai.usage.prompt_tokens"}
    assert {d["key"]: d["value"] for d in row["resource"]} == {
        "service.name": "chatbot",
        "rootwise.tenant.id": "acme",
    }
    assert_same_batch(batch, decode_otlp_protobuf(to_protobuf(req, "traces"), "traces", "test"))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"traceId": "abc"}, "traceId: expected 32 hex characters"),
        ({"spanId": None}, "spanId is missing"),
        ({"spanId": "zz" * 8}, "spanId: expected 16 hex characters"),
        ({"traceId": "0" * 32}, "traceId is all zeroes"),
        ({"parentSpanId": "abcd"}, "parentSpanId: expected 16 hex characters"),
        ({"endTimeUnixNano": str(T0 - 1)}, "is before startTimeUnixNano"),
        ({"startTimeUnixNano": "0"}, "startTimeUnixNano is missing or 0"),
        ({"startTimeUnixNano": "abc"}, "startTimeUnixNano: expected an unsigned 64-bit integer"),
        (
            {"startTimeUnixNano": str(4_000_000_000 * 10**9), "endTimeUnixNano": str(4_000_000_001 * 10**9)},
            "startTimeUnixNano out of accepted range",
        ),
        ({"kind": "SPAN_KIND_SERVER"}, "kind: expected an integer enum value"),
    ],
)
def test_invalid_spans_are_dead_lettered_and_good_ones_kept(change, reason):
    bad = {k: v for k, v in span("2222222222222222", **change).items() if v is not None}
    batch = decode(spans_request(span(), bad), "traces")
    assert batch.spans["span_id"].to_list() == ["00f067aa0ba902b7"]
    (rej,) = batch.rejects
    assert reason in rej.reason
    assert rej.location == "resourceSpans[0].scopeSpans[0].spans[1]"
    assert json.loads(rej.raw) == bad


def test_protobuf_span_with_wrong_id_length_goes_through_the_same_checks():
    req = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(
                    attributes=[KeyValue(key="service.name", value=AnyValue(string_value="api"))]
                ),
                scope_spans=[
                    ScopeSpans(
                        spans=[
                            Span(
                                trace_id=bytes(range(1, 17)),
                                span_id=bytes(range(1, 9)),
                                name="ok",
                                start_time_unix_nano=T0,
                                end_time_unix_nano=T0 + 10**6,
                                kind=2,
                                status=Status(code=1),
                            ),
                            Span(
                                trace_id=b"\x01" * 5,
                                span_id=bytes(range(1, 9)),
                                name="short id",
                                start_time_unix_nano=T0,
                                end_time_unix_nano=T0 + 10**6,
                            ),
                        ]
                    )
                ],
            )
        ]
    )
    batch = decode_otlp_protobuf(req.SerializeToString(), "traces", "pb")
    assert batch.spans.select("trace_id", "span_id", "kind", "status", "duration").rows() == [
        (bytes(range(1, 17)).hex(), bytes(range(1, 9)).hex(), "server", "ok", 1.0)
    ]
    assert [r.reason for r in batch.rejects] == [
        "traceId: expected 32 hex characters (16 bytes), got '0101010101'"
    ]


# -- logs -----------------------------------------------------------------------------------------------------------
def test_logs_severity_body_and_observed_time_fallback():
    req = logs_request(
        {
            "observedTimeUnixNano": str(T0),
            "severityNumber": 17,
            "body": {"kvlistValue": {"values": [kv("event", "oom"), kv("bytes", 1024)]}},
            "attributes": [kv("tenant", "t9")],
        },
        {
            "timeUnixNano": str(T0 + 1),
            "severityNumber": 14,
            "body": {"stringValue": "slow"},
            "traceId": TRACE,
            "spanId": SPAN,
        },
        res=resource("worker", region="eu", process_pid=7),
    )
    batch = decode(req, "logs")
    assert batch.rejected == 0
    rows = batch.logs.sort("ts").rows(named=True)
    assert [(r["severity"], r["severity_number"], r["body"], r["tenant"]) for r in rows] == [
        ("ERROR", 17, '{"bytes":1024,"event":"oom"}', "t9"),
        ("WARN2", 14, "slow", None),
    ]
    assert rows[0]["ts"] == datetime(2023, 11, 14, 22, 13, 20)
    assert {d["key"]: d["value"] for d in rows[0]["attributes"]} == {"region": "eu", "tenant": "t9"}
    assert (rows[1]["trace_id"], rows[1]["span_id"]) == (TRACE, SPAN)
    assert len({r["log_id"] for r in rows}) == 2
    again = decode(req, "logs")
    assert again.logs["log_id"].sort().to_list() == batch.logs["log_id"].sort().to_list()
    assert_same_batch(batch, decode_otlp_protobuf(to_protobuf(req, "logs"), "logs", "test"))


def test_log_without_any_time_and_with_bad_trace_id_are_rejected():
    req = logs_request(
        {"body": {"stringValue": "no time"}},
        {"timeUnixNano": str(T0), "body": {"stringValue": "bad id"}, "traceId": "xyz"},
        {"timeUnixNano": str(T0), "body": {"stringValue": "fine"}},
    )
    batch = decode(req, "logs")
    assert batch.logs["body"].to_list() == ["fine"]
    assert [r.reason.split(";")[0].split(":")[0] for r in batch.rejects] == [
        "timeUnixNano and observedTimeUnixNano are missing or 0",
        "traceId",
    ]


# -- malformed input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"resourceMetrics": [', "not valid JSON"),
        (b'{"resourceMetrics": [{"resource": "\xff\xfe"}]}', "is not valid UTF-8"),
        (b"[1, 2]", "expected a JSON object with key resourceMetrics"),
        (b'{"resourceMetrics": {"a": 1}}', "resourceMetrics must be a list"),
        (b'{"resourceSpans": []}', "send it to /v1/traces"),
    ],
)
def test_undecodable_payloads_raise(body, message):
    with pytest.raises(OtlpDecodeError, match=message):
        decode_otlp_json(body, "metrics", "t")


def test_garbage_protobuf_raises():
    with pytest.raises(OtlpDecodeError, match="not a protobuf ExportMetricsServiceRequest"):
        decode_otlp_protobuf(b"\xff\xff\xff\xff\x0f garbage", "metrics", "t")


def test_empty_requests_are_empty_batches():
    assert decode_otlp_json(b"{}", "metrics", "t").accepted == 0
    assert decode_otlp_protobuf(b"", "logs", "t").accepted == 0


def test_bad_records_are_dead_lettered_with_reasons_and_good_ones_stored(store):
    future = 4_000_000_000 * 10**9  # year 2096
    huge = "x" * 100_000
    req = metrics_request(
        gauge(
            "temp",
            point(T0, 21.5),
            {"timeUnixNano": "abc", "asDouble": 1.0},
            {"timeUnixNano": str(T0 + 1), "asDouble": "NaN"},
            {"timeUnixNano": str(T0 + 2), "asDouble": "Infinity"},
            {"timeUnixNano": str(T0 + 3), "asDouble": True},
            point(future, 1.0),
            point(315_532_800 * 10**9, 1.0),  # 1980, before the accepted range
            {"asDouble": 1.0},
            {"timeUnixNano": str(T0 + 4)},
            point(T0 + 5, 2.0, attrs=[("blob", huge)]),
            "not an object",
            point(T0 + 6 * 10**9, 22.0),  # ns offsets below 1 µs would share a stored timestamp
        ),
        {"name": "", "gauge": {"dataPoints": [point(T0, 1.0)]}},
        {"name": "nodata"},
        {
            "name": "h",
            "histogram": {
                "dataPoints": [
                    {"timeUnixNano": str(T0), "count": 3, "bucketCounts": [1, 1], "explicitBounds": [1, 2]}
                ]
            },
        },
        {
            "name": "h2",
            "histogram": {
                "dataPoints": [
                    {"timeUnixNano": str(T0), "count": 2, "bucketCounts": [1, 2], "explicitBounds": [1]}
                ]
            },
        },
    )
    batch = decode(req, "metrics")
    assert batch.points["value"].sort().to_list() == [21.5, 22.0]
    reasons = [r.reason for r in batch.rejects]
    expected = [
        "timeUnixNano: expected an unsigned 64-bit integer (number or decimal string), got 'abc'",
        "value is not a finite number: nan",
        "value is not a finite number: inf",
        "asDouble: expected a number, got True",
        f"timestamp out of accepted range: {future} ns since epoch",
        f"timestamp out of accepted range: {315_532_800 * 10**9} ns since epoch",
        "timeUnixNano is missing or 0; expected nanoseconds since the Unix epoch",
        "data point has neither asDouble nor asInt",
        "attribute 'blob' is 100000 characters; metric labels (series identity) take at most 2048",
        "dataPoints[]: expected an object, got 'not an object'",
        "name is missing; expected a non-empty metric name",
        "metric has no data; expected one of gauge, sum, histogram, exponentialHistogram, summary",
        "bucketCounts has 2 entries for 2 explicitBounds; expected bounds + 1",
        "count is 2 but the bucket counts add up to 3",
    ]
    assert reasons == expected
    assert batch.rejects[1].location == "resourceMetrics[0].scopeMetrics[0].metrics[0](temp).dataPoints[2]"
    assert json.loads(batch.rejects[0].raw) == {"timeUnixNano": "abc", "asDouble": 1.0}
    result = store.append(batch)
    assert (result.inserted["points"], store.count("points"), store.count("ingest_rejects")) == (
        2,
        2,
        len(expected),
    )
    stored = store.cursor().execute("SELECT reason FROM ingest_rejects ORDER BY reject_id").fetchall()
    assert [r[0] for r in stored] == expected


def test_huge_span_attribute_is_cut_not_rejected():
    req = spans_request(span(attributes=[kv("gen_ai.prompt", "p" * 200_000)]))
    (row,) = decode(req, "traces").spans.iter_rows(named=True)
    value = {d["key"]: d["value"] for d in row["attributes"]}["gen_ai.prompt"]
    assert value.startswith("p" * 65_536) and value.endswith("[truncated]") and len(value) < 65_600


def test_malformed_resource_rejects_only_that_resource():
    req = metrics_request(gauge("up", point(T0, 1.0)))
    req["resourceMetrics"].append({"resource": {"attributes": "oops"}, "scopeMetrics": []})
    batch = decode(req, "metrics")
    assert batch.points.height == 1
    assert [(r.location, r.reason) for r in batch.rejects] == [
        (
            "resourceMetrics[1]",
            "resourceMetrics[1].resource.attributes: expected a list of {key, value} objects, got 'oops'",
        )
    ]


def test_deeply_nested_any_value():
    def nested(depth: int) -> dict:
        value: dict = {"stringValue": "leaf"}
        for _ in range(depth):
            value = {"arrayValue": {"values": [value]}}
        return logs_request({"timeUnixNano": str(T0), "body": value})

    deep = b'{"arrayValue":{"values":[' * 400 + b'{"stringValue":"leaf"}' + b"]}}" * 400
    body = b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"%d","body":%s}]}]}]}' % (T0, deep)
    with pytest.raises(OtlpDecodeError, match="not valid JSON"):  # beyond orjson's depth limit
        decode_otlp_json(body, "logs", "t")
    (body,) = decode(nested(50), "logs").logs["body"].to_list()
    assert body == "[" * 50 + '"leaf"' + "]" * 50


def test_cloud_region_becomes_the_region_dimension():
    body = json.dumps({"resourceMetrics": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "rag-api"}},
            {"key": "cloud.region", "value": {"stringValue": "us-east"}},
        ]},
        "scopeMetrics": [{"metrics": [{"name": "queue_depth", "gauge": {"dataPoints": [
            {"timeUnixNano": "1767225600000000000", "asDouble": 1}]}}]}],
    }]}).encode()
    batch = decode_otlp_json(body, "metrics", "test")
    assert batch.series["labels"].to_list() == [[{"key": "region", "value": "us-east"}]]
