"""End to end: the official OpenTelemetry Python SDK exports to ``serve()`` running in its own process.

Metrics (counter, histogram, gauge), spans (parent/child with GenAI attributes) and logs go over OTLP/HTTP
protobuf to 127.0.0.1; the server is stopped with SIGTERM and the DuckDB file is checked row by row.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
from pathlib import Path

import duckdb
import pytest
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

pytestmark = pytest.mark.slow

RESOURCE = Resource.create(
    {"service.name": "chat-api", "rootwise.tenant.id": "acme", "deployment.region": "eu"}
)
SDK_DEFAULT_BOUNDS = [
    0.0,
    5.0,
    10.0,
    25.0,
    50.0,
    75.0,
    100.0,
    250.0,
    500.0,
    750.0,
    1000.0,
    2500.0,
    5000.0,
    7500.0,
    10000.0,
]


@pytest.fixture
def server(tmp_path: Path, serve_process) -> tuple[str, subprocess.Popen, Path]:
    db = tmp_path / "e2e.duckdb"
    url, proc = serve_process(db)
    return url, proc, db


def export_everything(url: str) -> dict[str, str]:
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{url}/v1/metrics"), export_interval_millis=3_600_000
    )
    meters = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    meter = meters.get_meter("e2e")
    requests = meter.create_counter("llm.requests", unit="{request}")
    latency = meter.create_histogram("gen_ai.client.operation.duration", unit="s")
    kv_cache = meter.create_gauge("gpu.kv_cache.usage", unit="1")
    for model in ("gpt-4o", "gpt-4o", "llama-3"):
        requests.add(1, {"gen_ai.request.model": model, "gen_ai.system": "openai"})
    for value in (0.4, 3.0, 7.5, 12.0):
        latency.record(value, {"gen_ai.request.model": "gpt-4o", "gen_ai.provider.name": "openai"})
    kv_cache.set(0.82, {"gpu": "0"})
    meters.shutdown()  # one final collection and export (a force_flush first would export twice)

    tracers = TracerProvider(resource=RESOURCE)
    tracers.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{url}/v1/traces")))
    tracer = tracers.get_tracer("e2e")
    loggers = LoggerProvider(resource=RESOURCE)
    loggers.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{url}/v1/logs")))
    log = logging.getLogger("e2e.app")
    handler = LoggingHandler(level=logging.INFO, logger_provider=loggers)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        with tracer.start_as_current_span("POST /chat", kind=SpanKind.SERVER) as parent:
            with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT) as child:
                child.set_attributes(
                    {
                        "gen_ai.system": "openai",  # the old names ...
                        "gen_ai.request.model": "gpt-4o",
                        "gen_ai.operation.name": "chat",
                        "gen_ai.usage.prompt_tokens": 120,
                        "gen_ai.usage.output_tokens": 48,  # ... and a new one, side by side
                        "gen_ai.response.time_to_first_chunk": 0.25,
                    }
                )
                child.set_status(Status(StatusCode.ERROR, "rate limited"))
                log.warning("upstream rate limit hit", extra={"retry_in_s": 2})
        assert tracers.force_flush(10_000) and loggers.force_flush(10_000)
    finally:
        log.removeHandler(handler)
        tracers.shutdown()
        loggers.shutdown()
    return {
        "trace_id": format(parent.get_span_context().trace_id, "032x"),
        "parent": format(parent.get_span_context().span_id, "016x"),
        "child": format(child.get_span_context().span_id, "016x"),
    }


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


@pytest.mark.filterwarnings("ignore:`LoggingHandler` in `opentelemetry-sdk` is deprecated")
def test_sdk_exports_are_stored_exactly(server):
    url, proc, db = server
    ids = export_everything(url)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, proc.stderr.read()

    con = duckdb.connect(str(db), read_only=True)
    series = rows(
        con, "SELECT metric, service, kind, unit, labels FROM series ORDER BY metric, labels::VARCHAR"
    )
    # the SDK gives each process a random service.instance.id; it becomes the ``instance`` label
    instance = RESOURCE.attributes["service.instance.id"]
    assert [s["labels"].pop("instance") for s in series] == [instance] * 4
    assert series == [
        {
            "metric": "gen_ai.client.operation.duration",
            "service": "chat-api",
            "kind": "histogram",
            "unit": "s",
            "labels": {"deployment.region": "eu", "model": "gpt-4o", "provider": "openai", "tenant": "acme"},
        },
        {
            "metric": "gpu.kv_cache.usage",
            "service": "chat-api",
            "kind": "gauge",
            "unit": "1",
            "labels": {"deployment.region": "eu", "gpu": "0", "tenant": "acme"},
        },
        {
            "metric": "llm.requests",
            "service": "chat-api",
            "kind": "counter",
            "unit": "{request}",
            "labels": {"deployment.region": "eu", "model": "gpt-4o", "provider": "openai", "tenant": "acme"},
        },
        {
            "metric": "llm.requests",
            "service": "chat-api",
            "kind": "counter",
            "unit": "{request}",
            "labels": {"deployment.region": "eu", "model": "llama-3", "provider": "openai", "tenant": "acme"},
        },
    ]
    points = rows(
        con,
        "SELECT s.metric, s.labels['model'] AS model, p.value FROM points p JOIN series s USING (series_id) "
        "ORDER BY s.metric, model",
    )
    assert points == [
        {"metric": "gpu.kv_cache.usage", "model": None, "value": 0.82},
        {"metric": "llm.requests", "model": "gpt-4o", "value": 2.0},
        {"metric": "llm.requests", "model": "llama-3", "value": 1.0},
    ]
    (hist,) = rows(con, "SELECT count, sum, min, max, bounds, counts, cumulative FROM histograms")
    assert hist == {
        "count": 4.0,
        "sum": 22.9,
        "min": 0.4,
        "max": 12.0,
        "bounds": SDK_DEFAULT_BOUNDS,
        "counts": [0.0, 2.0, 1.0, 1.0] + [0.0] * 12,
        "cumulative": True,
    }

    spans = rows(con, "SELECT * EXCLUDE (start, duration, resource) FROM spans ORDER BY name")
    assert [s["name"] for s in spans] == ["POST /chat", "chat gpt-4o"]
    parent, child = spans
    assert {
        k: parent[k] for k in ("trace_id", "span_id", "parent_span_id", "kind", "status", "tenant", "model")
    } == {
        "trace_id": ids["trace_id"],
        "span_id": ids["parent"],
        "parent_span_id": None,
        "kind": "server",
        "status": "unset",
        "tenant": "acme",
        "model": None,
    }
    assert {k: v for k, v in child.items() if k not in ("attributes", "events")} == {
        "trace_id": ids["trace_id"],
        "span_id": ids["child"],
        "parent_span_id": ids["parent"],
        "service": "chat-api",
        "name": "chat gpt-4o",
        "kind": "client",
        "status": "error",
        "status_message": "rate limited",
        "tenant": "acme",
        "model": "gpt-4o",
        "provider": "openai",
        "operation": "chat",
        "input_tokens": 120,
        "output_tokens": 48,
        "ttft": 250.0,
    }
    assert child["attributes"]["gen_ai.usage.prompt_tokens"] == "120"
    assert json.loads(child["events"]) == []
    (durations,) = con.execute(
        "SELECT bool_and(duration >= 0), max(duration) < 60000, count(DISTINCT resource) FROM spans"
    ).fetchall()
    assert durations == (True, True, 1)

    (log,) = rows(con, "SELECT * FROM logs")
    assert {
        k: log[k]
        for k in (
            "service",
            "severity",
            "severity_number",
            "body",
            "trace_id",
            "span_id",
            "tenant",
            "template_id",
        )
    } == {
        "service": "chat-api",
        "severity": "WARN",
        "severity_number": 13,
        "body": "upstream rate limit hit",
        "trace_id": ids["trace_id"],
        "span_id": ids["child"],
        "tenant": "acme",
        "template_id": None,
    }
    assert log["attributes"]["retry_in_s"] == "2" and log["attributes"]["deployment.region"] == "eu"
    assert con.execute("SELECT count(*) FROM ingest_rejects").fetchone() == (0,)
