"""The OTLP/HTTP receiver against a real HTTP server on 127.0.0.1, driven with http.client."""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import flask
import orjson
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from prometheus_client.parser import text_string_to_metric_families
from test_otlp import to_protobuf  # tests/ is on sys.path under pytest's default import mode
from werkzeug.serving import make_server

from app.receiver import otlp_blueprint
from app.server import create_server_app
from ingest.batch import TelemetryBatch
from ingest.otlp import decode_otlp_json
from ingest.store import Store
from ingest.writer import BatchWriter, QueueFull, WriterStopped

FIXTURES = Path(__file__).parent / "fixtures" / "otlp"
METRICS = (FIXTURES / "metrics.json").read_bytes()
TRACE = (FIXTURES / "trace.json").read_bytes()
LOGS = (FIXTURES / "logs.json").read_bytes()
T0 = 1_700_000_000_000_000_000
TOKEN = "s3cret-token-value"
JSON = "application/json"
PB = "application/x-protobuf"


def post(port: int, path: str, body: bytes, content_type: str = JSON, headers: dict | None = None):
    """One request on a fresh connection: ``(status, headers, body)``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@dataclass
class Server:
    port: int
    writer: BatchWriter
    store: Store

    def post(self, path: str, body: bytes, content_type: str = JSON, headers: dict | None = None):
        return post(self.port, path, body, content_type, headers)

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


def start(store: Store, **kw) -> Iterator[Server]:
    writer = BatchWriter(store, max_queue_batches=kw.pop("max_queue_batches", 64))
    app = flask.Flask("test-receiver")
    app.register_blueprint(otlp_blueprint(writer, token=kw.pop("token", None), **kw))
    http_server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http_server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(http_server.server_port, writer, store)
    finally:
        http_server.shutdown()
        http_server.server_close()
        writer.close(timeout=10)


@pytest.fixture
def server(store) -> Iterator[Server]:
    yield from start(store)


@pytest.fixture
def small_server(store) -> Iterator[Server]:
    yield from start(store, max_body_bytes=64 * 1024, token=TOKEN)


@pytest.fixture
def tiny_queue_server(store) -> Iterator[Server]:
    yield from start(store, max_queue_batches=1)


def metrics_body(*points: dict) -> bytes:
    return orjson.dumps(
        {
            "resourceMetrics": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]},
                    "scopeMetrics": [{"metrics": [{"name": "temp", "gauge": {"dataPoints": list(points)}}]}],
                }
            ]
        }
    )


def test_json_export_is_stored_and_answered_in_json(server):
    status, headers, body = server.post("/v1/metrics", METRICS)
    assert (status, headers["Content-Type"], json.loads(body)) == (200, JSON, {})
    assert (server.store.count("points"), server.store.count("histograms"), server.store.count("series")) == (
        2,
        1,
        3,
    )
    assert server.post("/v1/traces", TRACE)[0] == 200 and server.post("/v1/logs", LOGS)[0] == 200
    assert (server.store.count("spans"), server.store.count("logs")) == (1, 1)


def test_protobuf_export_is_answered_in_protobuf(server):
    for path, body, sig, response_type in [
        ("/v1/metrics", METRICS, "metrics", ExportMetricsServiceResponse),
        ("/v1/traces", TRACE, "traces", ExportTraceServiceResponse),
        ("/v1/logs", LOGS, "logs", ExportLogsServiceResponse),
    ]:
        status, headers, out = server.post(path, to_protobuf(json.loads(body), sig), PB)
        assert (status, headers["Content-Type"]) == (200, PB)
        response = response_type.FromString(out)
        assert not response.HasField("partial_success")  # spec: unset on full success
    assert (server.store.count("points"), server.store.count("spans"), server.store.count("logs")) == (
        2,
        1,
        1,
    )


def test_same_payload_twice_stores_nothing_new(server):
    for _ in range(2):
        assert server.post("/v1/metrics", METRICS)[0] == 200
        assert server.post("/v1/traces", TRACE)[0] == 200
        assert server.post("/v1/logs", LOGS)[0] == 200
    counts = [server.store.count(t) for t in ("series", "points", "histograms", "spans", "logs")]
    assert counts == [3, 2, 1, 1, 1]


def test_gzip_body(server):
    status, _, _ = server.post("/v1/metrics", gzip.compress(METRICS), headers={"Content-Encoding": "gzip"})
    assert status == 200 and server.store.count("points") == 2


def test_bad_gzip_is_400(server):
    status, _, body = server.post("/v1/metrics", b"not gzip at all", headers={"Content-Encoding": "gzip"})
    assert status == 400 and "does not inflate" in json.loads(body)["message"]
    truncated = gzip.compress(METRICS)[:-20]
    status, _, body = server.post("/v1/metrics", truncated, headers={"Content-Encoding": "gzip"})
    assert status == 400 and "truncated" in json.loads(body)["message"]


def auth(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_body_over_the_limit_is_413(small_server):
    big = metrics_body(*[{"timeUnixNano": str(T0 + i * 10**9), "asDouble": 1.0} for i in range(2000)])
    assert len(big) > 64 * 1024
    status, _, body = small_server.post("/v1/metrics", big, headers=auth())
    assert status == 413 and "exceeds the limit" in json.loads(body)["message"]


def test_gzip_bomb_is_413(small_server):
    bomb = gzip.compress(b" " * (10 * 1024 * 1024))  # ~10 KB compressed, 10 MiB inflated
    assert len(bomb) < 64 * 1024
    status, _, body = small_server.post("/v1/metrics", bomb, headers={"Content-Encoding": "gzip", **auth()})
    assert status == 413 and "inflated body exceeds" in json.loads(body)["message"]
    assert small_server.store.count("ingest_rejects") == 0


def test_unsupported_media_type_and_encoding_are_415(server):
    status, _, body = server.post("/v1/metrics", METRICS, "text/plain")
    assert status == 415 and "Content-Type must be" in json.loads(body)["message"]
    status, _, body = server.post("/v1/metrics", METRICS, headers={"Content-Encoding": "br"})
    assert status == 415 and "Content-Encoding" in json.loads(body)["message"]


def test_token_is_required_and_never_echoed(small_server, caplog):
    caplog.set_level(logging.DEBUG)
    for headers in ({}, auth("guess-1234"), {"Authorization": TOKEN}):
        status, resp_headers, body = small_server.post("/v1/metrics", METRICS, headers=headers)
        assert status == 401 and resp_headers["WWW-Authenticate"].startswith("Bearer")
        assert b"guess-1234" not in body and TOKEN.encode() not in body
    assert small_server.store.count("points") == 0
    assert small_server.post("/v1/metrics", METRICS, headers=auth())[0] == 200
    assert small_server.store.count("points") == 2
    assert TOKEN not in caplog.text


def test_undecodable_bodies_are_400_with_a_status_message(server):
    status, _, body = server.post("/v1/metrics", METRICS[:50])
    assert status == 400 and json.loads(body)["message"].startswith("body is not valid JSON")
    status, headers, body = server.post("/v1/metrics", b"\xff\xff\xff\xff\x0f garbage", PB)
    assert (status, headers["Content-Type"]) == (400, PB)
    message = status_pb2.Status.FromString(body)
    assert message.code == 3 and "not a protobuf ExportMetricsServiceRequest" in message.message
    status, _, body = server.post("/v1/metrics", TRACE)
    assert status == 400 and "send it to /v1/traces" in json.loads(body)["message"]


def test_empty_requests_succeed(server):
    assert server.post("/v1/metrics", b"{}")[0] == 200
    status, _, body = server.post("/v1/logs", b"", PB)
    assert status == 200 and not ExportLogsServiceResponse.FromString(body).HasField("partial_success")


def test_partial_success_reports_rejected_points_and_stores_the_rest(server):
    body = metrics_body(
        {"timeUnixNano": str(T0), "asDouble": 1.0},
        {"timeUnixNano": "abc", "asDouble": 2.0},
        {"timeUnixNano": str(T0 + 10**9), "asDouble": "NaN"},
        {"timeUnixNano": str(T0 + 2 * 10**9), "asDouble": 3.0},
    )
    status, _, out = server.post("/v1/metrics", body)
    partial = json.loads(out)["partialSuccess"]
    assert status == 200 and partial["rejectedDataPoints"] == "2"  # int64 as a decimal string (proto3 JSON)
    assert "timeUnixNano: expected an unsigned 64-bit integer" in partial["errorMessage"]
    assert "value is not a finite number: nan" in partial["errorMessage"]
    assert (server.store.count("points"), server.store.count("ingest_rejects")) == (2, 2)
    source = server.store.cursor().execute("SELECT DISTINCT source FROM ingest_rejects").fetchall()
    assert source == [("otlp/http /v1/metrics",)]


def test_partial_success_for_spans_and_logs_in_protobuf(server):
    trace = json.loads(TRACE)
    bad_span = dict(trace["resourceSpans"][0]["scopeSpans"][0]["spans"][0], spanId="0000000000000000")
    trace["resourceSpans"][0]["scopeSpans"][0]["spans"].append(bad_span)
    status, _, out = server.post("/v1/traces", to_protobuf(trace, "traces"), PB)
    partial = ExportTraceServiceResponse.FromString(out).partial_success
    assert (status, partial.rejected_spans) == (200, 1) and "spanId is all zeroes" in partial.error_message

    logs = json.loads(LOGS)
    logs["resourceLogs"][0]["scopeLogs"][0]["logRecords"].append({"body": {"stringValue": "no time"}})
    status, _, out = server.post("/v1/logs", to_protobuf(logs, "logs"), PB)
    partial = ExportLogsServiceResponse.FromString(out).partial_success
    assert (status, partial.rejected_log_records) == (
        200,
        1,
    ) and "observedTimeUnixNano" in partial.error_message
    assert (
        server.store.count("spans"),
        server.store.count("logs"),
        server.store.count("ingest_rejects"),
    ) == (1, 1, 2)


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_full_queue_is_429_then_everything_queued_commits(tiny_queue_server, store):
    srv = tiny_queue_server
    results: dict[int, int] = {}

    def send(i: int) -> None:
        results[i] = srv.post(
            "/v1/metrics", metrics_body({"timeUnixNano": str(T0 + i * 10**9), "asDouble": i})
        )[0]

    threads = [threading.Thread(target=send, args=(i,)) for i in (1, 2)]
    with store._write_lock:  # the writer blocks inside its first append: a slow store, for real
        threads[0].start()
        wait_for(lambda: srv.writer.counters["batches_submitted"] == 1 and srv.writer.depth == 0)
        threads[1].start()
        wait_for(lambda: srv.writer.depth == 1)
        status, headers, body = srv.post(
            "/v1/metrics", metrics_body({"timeUnixNano": str(T0), "asDouble": 3})
        )
        assert (status, headers["Retry-After"]) == (429, "1")
        assert "write queue is full" in json.loads(body)["message"]
        assert results == {}  # nothing acknowledged before its commit
    for t in threads:
        t.join(30)
    assert results == {1: 200, 2: 200}
    assert store.count("points") == 2
    families = {f.name: f for f in text_string_to_metric_families(srv.get("/metrics")[1].decode())}
    codes = {
        s.labels["code"]: s.value
        for s in families["rootwise_receiver_requests"].samples
        if s.name.endswith("_total")
    }
    assert codes == {"200": 2.0, "429": 1.0}
    assert families["rootwise_writer_queue_full"].samples[0].value == 1.0


def test_stopped_writer_is_503_and_unhealthy(server):
    assert server.get("/healthz") == (200, b'{"status":"ok","queue_depth":0}')
    server.writer.close(timeout=10)
    status, headers, body = server.post("/v1/metrics", METRICS)
    assert (status, headers["Retry-After"]) == (503, "1") and "writer is closed" in json.loads(body)[
        "message"
    ]
    assert server.get("/healthz")[0] == 503


def test_failed_commit_is_503_and_the_writer_survives(server):
    cur = server.store.cursor()
    cur.execute("ALTER TABLE histograms RENAME TO histograms_away")  # every append now fails in DuckDB
    status, headers, body = server.post("/v1/metrics", METRICS)
    assert (status, headers["Retry-After"]) == (503, "5")
    assert (
        "the store could not commit" in json.loads(body)["message"]
        and "histograms" in json.loads(body)["message"]
    )
    assert server.store.count("points") == 0  # the transaction rolled back whole
    cur.execute("ALTER TABLE histograms_away RENAME TO histograms")
    assert server.post("/v1/metrics", METRICS)[0] == 200
    assert (server.store.count("points"), server.writer.counters["commit_failures"]) == (2, 1)


def test_prometheus_metrics_endpoint(server):
    server.post("/v1/metrics", METRICS)
    server.post("/v1/metrics", metrics_body({"timeUnixNano": "abc", "asDouble": 1.0}))
    server.post("/v1/logs", b"nope")
    status, text = server.get("/metrics")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text.decode())
        for s in f.samples
    }
    assert samples[("rootwise_receiver_requests_total", (("code", "200"), ("signal", "metrics")))] == 2
    assert samples[("rootwise_receiver_requests_total", (("code", "400"), ("signal", "logs")))] == 1
    assert samples[("rootwise_receiver_records_accepted_total", (("signal", "metrics"),))] == 3
    assert samples[("rootwise_receiver_records_rejected_total", (("signal", "metrics"),))] == 1
    assert samples[("rootwise_writer_queue_depth", ())] == 0
    assert samples[("rootwise_writer_commits_total", ())] == 2


def test_acknowledged_write_survives_sigkill(tmp_path, serve_process):
    db = tmp_path / "kill.duckdb"
    url, proc = serve_process(db)
    port = int(url.rsplit(":", 1)[1])
    assert post(port, "/v1/metrics", METRICS)[0] == 200
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    with Store(db) as store:  # replays the WAL of the killed process
        assert (store.count("points"), store.count("histograms")) == (2, 1)


def test_mount_gets_the_app_and_the_store(store):
    seen = []

    def mount(app: flask.Flask, mounted_store: Store) -> None:
        seen.append(mounted_store)
        app.add_url_rule("/hello", "hello", lambda: "hi")

    app, writer = create_server_app(store, token=TOKEN, mount=mount)
    try:
        client = app.test_client()
        assert seen == [store] and client.get("/hello").data == b"hi"
        assert client.post("/v1/metrics", data=METRICS, content_type=JSON).status_code == 401
        resp = client.post("/v1/metrics", data=METRICS, content_type=JSON, headers=auth())
        assert resp.status_code == 200 and store.count("points") == 2
    finally:
        writer.close(timeout=10)


# -- the write queue on its own ----------------------------------------------------------------------------------
def metrics_batch(i: int) -> TelemetryBatch:
    return decode_otlp_json(
        metrics_body({"timeUnixNano": str(T0 + i * 10**9), "asDouble": i}), "metrics", "t"
    )


def test_writer_coalesces_queued_batches_into_one_transaction(store):
    writer = BatchWriter(store, max_queue_batches=8)
    try:
        with store._write_lock:
            first = writer.submit(metrics_batch(0))
            wait_for(lambda: writer.depth == 0)  # taken by the writer, which now waits for the lock
            rest = [writer.submit(metrics_batch(i)) for i in range(1, 6)]
            assert writer.depth == 5 and not first.done()
        results = [f.result(10) for f in [first, *rest]]
    finally:
        writer.close(timeout=10)
    assert [r.accepted["points"] for r in results] == [1] * 6
    assert results[1].inserted == {"points": 5}  # the whole second transaction
    assert (writer.counters["commits"], writer.counters["batches_committed"]) == (2, 6)
    assert store.count("points") == 6


def test_writer_queue_bound_and_close_flushes(store):
    writer = BatchWriter(store, max_queue_batches=2)
    with store._write_lock:
        futures = [writer.submit(metrics_batch(0))]
        wait_for(lambda: writer.depth == 0)
        futures += [writer.submit(metrics_batch(i)) for i in (1, 2)]
        with pytest.raises(QueueFull, match="2 batches waiting"):
            writer.submit(metrics_batch(3))
        closer = threading.Thread(target=writer.close, kwargs={"timeout": 10})
        closer.start()
        wait_for(lambda: not writer.running)
        with pytest.raises(WriterStopped, match="closed"):
            writer.submit(metrics_batch(4))
    closer.join(10)
    assert [f.result(0).accepted["points"] for f in futures] == [1, 1, 1]  # queued before close: all written
    assert store.count("points") == 3 and writer.stats()["queue_full"] == 1


def test_writer_stops_when_the_store_is_gone(tmp_path):
    store = Store(tmp_path / "gone.duckdb")
    writer = BatchWriter(store)
    assert writer.submit(metrics_batch(0)).result(10).inserted == {"points": 1}
    store.close()
    with pytest.raises(Exception, match="Connection already closed"):
        writer.submit(metrics_batch(1)).result(10)
    assert not writer.running
    with pytest.raises(WriterStopped, match="writer failed: ConnectionException"):
        writer.submit(metrics_batch(2))
    assert writer.close(timeout=10)
