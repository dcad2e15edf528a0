"""JSON Lines decoders: events, logs, topology, long rows; per-line validation and dead letters."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import orjson
import polars as pl
import pytest

from ingest import schema
from ingest.batch import TelemetryBatch, series_id
from ingest.jsonl import (
    MAX_LINE_BYTES,
    MAX_RAW_BYTES,
    classify_jsonl_record,
    iter_jsonl_batches,
    iter_lines,
)

NOW = datetime(2025, 6, 1, tzinfo=UTC)


def _lines(*records: object | bytes) -> bytes:
    return b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in records)


def _decode(kind: str, data: bytes, **kw) -> TelemetryBatch:
    return TelemetryBatch.concat(list(iter_jsonl_batches(io.BytesIO(data), kind, "in.jsonl", **kw)))


def _reasons(batch: TelemetryBatch) -> dict[str, str]:
    return {r.location: r.reason for r in batch.rejects}


EVENT = {"ts": "2025-05-01T12:00:00Z", "service": "api", "kind": "deploy", "title": "v2.1 rollout"}
LOG = {"ts": "2025-05-01T12:00:00Z", "service": "vllm", "severity": "ERROR", "body": "CUDA out of memory"}


# -- classification -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("obj", "kind"),
    [
        (EVENT, "jsonl-events"),
        (LOG, "jsonl-logs"),
        ({"ts": 1, "service": "a", "body": "x"}, "jsonl-logs"),
        ({"source": "gateway", "target": "vllm"}, "jsonl-topology"),
        ({"ts": 1, "metric": "m", "value": 1, "service": "s", "tenant": "t"}, "jsonl-long"),
        ({"resourceSpans": []}, "otlp-json"),
        ({"hello": "world"}, "unknown"),
        ("text", "unknown"),
    ],
)
def test_classify(obj, kind):
    assert classify_jsonl_record(obj) == kind


# -- events -------------------------------------------------------------------------------------------------
def test_events_decoded_with_stable_ids_and_string_attributes():
    data = _lines(
        {
            **EVENT,
            "attributes": {"version": "2.1", "replicas": 3, "canary": True, "meta": {"b": [1, 2], "a": 1}},
        },
        {**EVENT, "ts": 1_746_100_800},  # same event, another timestamp spelling -> same id
        {**EVENT, "id": "evt-42", "kind": "model_rollout"},
    )
    b = _decode("jsonl-events", data)
    assert b.rejected == 0
    ev = b.events.to_dicts()
    assert ev[0]["event_id"] == ev[1]["event_id"] and len(ev[0]["event_id"]) == 32
    assert ev[2]["event_id"] == "evt-42"
    assert ev[0]["ts"] == datetime(2025, 5, 1, 12)
    assert ev[0]["attributes"] == [
        {"key": "canary", "value": "true"},
        {"key": "meta", "value": '{"a":1,"b":[1,2]}'},
        {"key": "replicas", "value": "3"},
        {"key": "version", "value": "2.1"},
    ]
    assert b.events.schema == pl.Schema(schema.EVENTS)


def test_event_kind_must_be_known():
    b = _decode("jsonl-events", _lines(EVENT, {**EVENT, "kind": "rollback"}))
    assert b.events.height == 1
    assert _reasons(b) == {
        "line 2": "field 'kind' is 'rollback'; expected one of deploy, model_rollout, config, feature_flag, "
        "scale, infra, other"
    }
    assert b.rejects[0].raw == orjson.dumps({**EVENT, "kind": "rollback"})


def test_malformed_event_lines_each_rejected_good_kept():
    data = _lines(
        EVENT,
        b'{"ts": "2025-05-01T12:00:00Z", "service": "api", "kin',  # truncated
        {**EVENT, "service": 7},
        {k: v for k, v in EVENT.items() if k != "title"},
        {**EVENT, "ts": "2300-01-01T00:00:00Z"},
        {**EVENT, "ts": "1975-01-01T00:00:00Z"},
        {**EVENT, "ts": True},
        {**EVENT, "attributes": ["a"]},
        b"\xff\xfe\x00bad",
        b"[1, 2]",
        b"",
        {**EVENT, "title": "ok again"},
    )
    b = _decode("jsonl-events", data)
    assert b.events["title"].to_list() == ["v2.1 rollout", "ok again"]
    reasons = _reasons(b)
    assert reasons["line 2"].startswith("invalid JSON: ") and "at column" in reasons["line 2"]
    assert reasons["line 3"] == "field 'service' must be a string, got number"
    assert reasons["line 4"] == "field 'title' is missing (expected a string)"
    assert "'2300-01-01T00:00:00Z' is outside the accepted range" in reasons["line 5"]
    assert "outside the accepted range" in reasons["line 6"]
    assert reasons["line 7"] == "field 'ts' must be an RFC 3339 string or an epoch number, got boolean"
    assert reasons["line 8"] == "field 'attributes' must be an object, got array"
    assert reasons["line 9"] == "line is not valid UTF-8 (byte 0)"
    assert reasons["line 10"] == "expected a JSON object, got array"
    assert len(reasons) == 9
    assert [r.location for r in b.rejects] == sorted(reasons, key=lambda loc: int(loc.split()[1]))
    assert b.rejects[-1].raw == b"[1, 2]"


def test_huge_line_rejected_with_truncated_raw_and_neighbours_kept():
    huge = orjson.dumps({**EVENT, "title": "x" * (10 << 20)})
    b = _decode("jsonl-events", _lines(EVENT, huge, {**EVENT, "title": "after"}))
    assert b.events["title"].to_list() == ["v2.1 rollout", "after"]
    (r,) = b.rejects
    assert r.location == "line 2"
    assert r.reason == (
        f"line is {len(huge)} bytes, longer than the {MAX_LINE_BYTES}-byte limit "
        f"(raw truncated to the first {MAX_RAW_BYTES} bytes)"
    )
    assert r.raw == huge[:MAX_RAW_BYTES]


def test_iter_lines_counts_blank_lines_and_crlf():
    lines = list(iter_lines(io.BytesIO(b"a\r\n\n  \nb")))
    assert [(x.number, x.data) for x in lines] == [(1, b"a"), (4, b"b")]


# -- logs ---------------------------------------------------------------------------------------------------
def test_logs_decoded_with_content_hash_tenant_and_trace_ids():
    data = _lines(
        {
            **LOG,
            "attributes": {"rootwise.tenant.id": "acme", "gpu": 0},
            "trace_id": "AB" * 16,
            "span_id": "cd" * 8,
        },
        {**LOG, "severity": "warning", "attributes": {"tenant": "globex"}},
        {"ts": 1_746_100_800_000, "service": "api", "body": {"msg": "structured"}},
        LOG,
        LOG,  # exact duplicate: same log_id
    )
    b = _decode("jsonl-logs", data)
    rows = b.logs.to_dicts()
    assert b.rejected == 0 and len(rows) == 5
    assert rows[0]["tenant"] == "acme" and rows[0]["trace_id"] == "ab" * 16 and rows[0]["span_id"] == "cd" * 8
    assert rows[0]["severity_number"] == 17
    assert rows[1]["tenant"] == "globex" and rows[1]["severity_number"] == 13
    assert rows[2]["body"] == '{"msg":"structured"}' and rows[2]["severity"] is None
    assert rows[3]["log_id"] == rows[4]["log_id"] != rows[0]["log_id"]
    assert b.logs.schema == pl.Schema(schema.LOGS)


def test_log_id_matches_otlp_log_id():
    otlp = pytest.importorskip("ingest.otlp")
    b = _decode("jsonl-logs", _lines({**LOG, "attributes": {"k": "v"}, "trace_id": "ab" * 16}))
    ts_ns = 1_746_100_800 * 10**9
    assert b.logs["log_id"].item() == otlp.log_id(
        ts_ns, "vllm", "ERROR", LOG["body"], "ab" * 16, "", {"k": "v"}
    )


def test_custom_tenant_attribute_and_bad_log_lines():
    data = _lines(
        {**LOG, "attributes": {"org": "initech", "tenant": "fallback"}},
        {k: v for k, v in LOG.items() if k != "body"},
        {**LOG, "severity_number": "high"},
        {**LOG, "trace_id": 12},
    )
    b = _decode("jsonl-logs", data, tenant_attribute="org")
    assert b.logs["tenant"].to_list() == ["initech"]
    assert _reasons(b) == {
        "line 2": "field 'body' is missing (expected a string)",
        "line 3": "field 'severity_number' must be an integer, got string",
        "line 4": "field 'trace_id' must be a string, got number",
    }


# -- topology -----------------------------------------------------------------------------------------------
def test_topology_edges():
    data = _lines(
        {"source": "gateway", "target": "router"},
        {"source": "router", "target": "vllm", "ts": "2025-05-01T00:00:00Z"},
        {"source": "router"},
        {"source": "", "target": "x"},
    )
    b = _decode("jsonl-topology", data)
    assert b.edges.select("source", "target", "origin").rows() == [
        ("gateway", "router", "config"),
        ("router", "vllm", "config"),
    ]
    assert b.edges["ts"].null_count() == 0 and b.edges["ts"][1] == datetime(2025, 5, 1)
    assert _reasons(b) == {
        "line 3": "field 'target' is missing (expected a string)",
        "line 4": "field 'source' is empty",
    }


# -- long rows ----------------------------------------------------------------------------------------------
def test_long_rows_from_jsonl_with_sparse_labels_and_line_numbers():
    data = _lines(
        {
            "ts": "2025-05-01T12:00:00Z",
            "metric": "ttft_ms",
            "value": 120.5,
            "service": "vllm",
            "model": "llama",
        },
        {
            "ts": "2025-05-01T12:00:00Z",
            "metric": "ttft_ms",
            "value": 99,
            "service": "vllm",
            "tenant": "acme",
            "gpu": 1,
        },
        {"ts": "2025-05-01T12:00:00Z", "metric": "ttft_ms", "value": "NaN", "service": "vllm"},
        {"ts": "2025-05-01T12:00:00Z", "metric": "ttft_ms", "value": True, "service": "vllm"},
        {
            "ts": "2025-05-01T12:00:00Z",
            "metric": "ttft_ms",
            "value": 1,
            "service": "vllm",
            "nested": {"a": 1},
        },
        b"not json",
        b'{"ts": "2025-05-01T12:00:00Z", "metric": "ttft_ms", "value": 1e400, "service": "vllm"}',
        {"ts": "2025-05-01T12:00:00Z", "metric": "ttft_ms", "value": None, "service": "vllm"},
    )
    b = _decode("jsonl-long", data)
    assert b.points["value"].to_list() == [120.5, 99.0]
    assert b.points["series_id"].to_list() == [
        series_id("ttft_ms", "vllm", {"model": "llama"}),
        series_id("ttft_ms", "vllm", {"tenant": "acme", "gpu": "1"}),
    ]
    reasons = _reasons(b)
    assert reasons["line 3"] == "value NaN is not a finite number"
    assert reasons["line 4"] == "field 'value' must be a number, got boolean"
    assert reasons["line 5"] == "label 'nested' must be a string or number, got object"
    assert reasons["line 6"].startswith("invalid JSON")
    assert reasons["line 7"] == "invalid JSON: number is infinity when parsed as double: at column 62"
    assert reasons["line 8"] == "value is missing"
    assert b.points.height + b.rejected == 8


def test_batches_are_bounded():
    data = _lines(*[{**EVENT, "title": str(i)} for i in range(25)])
    batches = list(iter_jsonl_batches(io.BytesIO(data), "jsonl-events", "x", batch_lines=10))
    assert [x.events.height for x in batches] == [10, 10, 5]


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="expected one of"):
        list(iter_jsonl_batches(io.BytesIO(b"{}\n"), "jsonl-nope", "x"))
