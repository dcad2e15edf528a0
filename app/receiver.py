"""The OTLP/HTTP receiver: ``POST /v1/metrics``, ``/v1/traces``, ``/v1/logs``, plus ``/healthz`` and ``/metrics``.

Behaviour follows the OTLP specification (opentelemetry-proto ``docs/specification.md``, "OTLP/HTTP"):

- Bodies are binary protobuf (``application/x-protobuf``) or JSON (``application/json``); anything else is
  415. The response uses the request's encoding.
- ``Content-Encoding: gzip`` is inflated with a cap; an unknown content coding is 415.
- Bodies above ``max_body_bytes`` (default 16 MiB, compressed or inflated) are 413. 16 MiB is four times the
  OpenTelemetry Collector's default batch ceiling and keeps a worst-case decode under a few seconds and a few
  hundred MB of memory; raise it together with waitress' ``max_request_body_size``.
- With a token configured, ``Authorization: Bearer <token>`` is required (401 otherwise; compared in constant
  time; the header is never logged).
- Undecodable bodies are 400 with a ``google.rpc.Status`` message naming the problem.
- The reply is sent only after the batch is committed, so an acknowledged write survives a crash.
  Records that were dead-lettered are reported in ``partial_success`` (``rejected_data_points`` /
  ``rejected_spans`` / ``rejected_log_records`` and ``error_message``), with ``HTTP 200`` as the spec requires.
- A full write queue is 429 with ``Retry-After``; a stopped or failed writer (or a commit that failed or timed
  out) is 503 with ``Retry-After``; both are retryable per the spec, and re-sending is harmless because appends
  are idempotent.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Executor

import flask
import orjson
from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from ingest.batch import TelemetryBatch
from ingest.genai import DEFAULT_TENANT_ATTRIBUTE
from ingest.otlp import OtlpDecodeError, decode_otlp_json, decode_otlp_protobuf
from ingest.writer import BatchWriter, QueueFull, WriterStopped

log = logging.getLogger("rootwise.receiver")

MAX_BODY_BYTES = 16 * 1024 * 1024
RETRY_AFTER_SECONDS = 1
JSON = "application/json"
PROTOBUF = "application/x-protobuf"

_RESPONSES: dict[str, tuple[type[Message], str]] = {
    "metrics": (ExportMetricsServiceResponse, "rejected_data_points"),
    "traces": (ExportTraceServiceResponse, "rejected_spans"),
    "logs": (ExportLogsServiceResponse, "rejected_log_records"),
}
# google.rpc.Code values for Status.code (the spec lets clients ignore it; useful when troubleshooting)
_GRPC_CODES = {400: 3, 401: 16, 413: 8, 415: 3, 429: 8, 500: 13, 503: 14}
_SIGNALS = tuple(_RESPONSES)


class _Reply(Exception):
    """An HTTP error reply: status, message and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class ReceiverStats:
    """The receiver's own counters, exported at ``/metrics``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.accepted: dict[str, int] = dict.fromkeys(_SIGNALS, 0)
        self.rejected: dict[str, int] = dict.fromkeys(_SIGNALS, 0)
        self.body_bytes: dict[str, int] = dict.fromkeys(_SIGNALS, 0)
        self.seconds: dict[str, float] = dict.fromkeys(_SIGNALS, 0.0)

    def request(self, signal: str, status: int, seconds: float, body_bytes: int = 0) -> None:
        with self._lock:
            self.requests[(signal, status)] = self.requests.get((signal, status), 0) + 1
            self.seconds[signal] += seconds
            self.body_bytes[signal] += body_bytes

    def records(self, signal: str, accepted: int, rejected: int) -> None:
        with self._lock:
            self.accepted[signal] += accepted
            self.rejected[signal] += rejected

    def prometheus(self, writer: BatchWriter) -> str:
        """Prometheus text exposition (format 0.0.4) of these counters and the writer's."""
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {_num(value)}" for labels, value in samples)

        with self._lock:
            requests = sorted(self.requests.items())
            accepted, rejected = dict(self.accepted), dict(self.rejected)
            body_bytes, seconds = dict(self.body_bytes), dict(self.seconds)
        family(
            "rootwise_receiver_requests_total",
            "counter",
            "OTLP/HTTP export requests by signal and HTTP status code.",
            [(f'{{signal="{s}",code="{c}"}}', n) for (s, c), n in requests],
        )
        family(
            "rootwise_receiver_records_accepted_total",
            "counter",
            "Records (data points, spans, log records) committed to the store.",
            [(f'{{signal="{s}"}}', n) for s, n in accepted.items()],
        )
        family(
            "rootwise_receiver_records_rejected_total",
            "counter",
            "Records dead-lettered to ingest_rejects.",
            [(f'{{signal="{s}"}}', n) for s, n in rejected.items()],
        )
        family(
            "rootwise_receiver_request_bytes_total",
            "counter",
            "Request body bytes received (after inflating gzip).",
            [(f'{{signal="{s}"}}', n) for s, n in body_bytes.items()],
        )
        family(
            "rootwise_receiver_request_seconds_total",
            "counter",
            "Time spent handling export requests, including waiting for the commit.",
            [(f'{{signal="{s}"}}', n) for s, n in seconds.items()],
        )
        w = writer.stats()
        family(
            "rootwise_writer_queue_depth",
            "gauge",
            "Batches waiting for the writer.",
            [("", w["queue_depth"])],
        )
        family("rootwise_writer_running", "gauge", "1 while the writer takes batches.", [("", w["running"])])
        for key, help_text in (
            ("commits", "Store transactions committed by the writer."),
            ("commit_failures", "Store transactions that failed."),
            ("batches_committed", "Batches committed."),
            ("batches_failed", "Batches whose transaction failed."),
            ("queue_full", "Batches refused because the write queue was full."),
            ("records_committed", "Records committed."),
            ("rejects_committed", "Dead-lettered records written."),
            ("commit_seconds", "Time spent in store transactions."),
        ):
            family(f"rootwise_writer_{key}_total", "counter", help_text, [("", w[key])])
        return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def status_body(code: int, message: str, encoding: str) -> bytes:
    """A ``google.rpc.Status`` (the OTLP/HTTP failure body) in JSON or protobuf.

    Written by hand (field 1 ``code`` varint, field 2 ``message`` string) to avoid depending on
    googleapis-common-protos for a two-field message.

    Examples
    --------
    >>> status_body(3, "bad", PROTOBUF)
    b'\\x08\\x03\\x12\\x03bad'
    """
    if encoding == PROTOBUF:
        msg = message.encode("utf-8")
        return (b"\x08" + _varint(code) if code else b"") + b"\x12" + _varint(len(msg)) + msg
    return orjson.dumps({"code": code, "message": message})


def _inflate(body: bytes, cap: int) -> bytes:
    """Gunzip ``body`` (all members) producing at most ``cap`` bytes."""
    out = bytearray()
    data = body
    while data:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += d.decompress(data, cap + 1 - len(out))
        except zlib.error as exc:
            raise _Reply(400, f"Content-Encoding is gzip but the body does not inflate: {exc}") from None
        if len(out) > cap:
            raise _Reply(413, f"inflated body exceeds the limit of {cap} bytes")
        if not d.eof:
            raise _Reply(400, "Content-Encoding is gzip but the gzip stream is truncated")
        data = d.unused_data
    return bytes(out)


def _partial_message(batch: TelemetryBatch) -> str:
    shown = "; ".join(f"{r.location}: {r.reason}" for r in batch.rejects[:3])
    more = f" (and {batch.rejected - 3} more)" if batch.rejected > 3 else ""
    text = (
        f"{batch.rejected} record(s) rejected and kept in the ingest_rejects dead-letter table; "
        f"{shown}{more}. Fix the sender; re-sending this request will not store them."
    )
    return text if len(text) <= 2000 else text[:1997] + "..."


def otlp_blueprint(
    writer: BatchWriter,
    *,
    token: str | None,
    max_body_bytes: int = MAX_BODY_BYTES,
    tenant_attribute: str = DEFAULT_TENANT_ATTRIBUTE,
    commit_timeout: float = 60.0,
    decode_pool: Executor | None = None,
) -> flask.Blueprint:
    """The OTLP/HTTP endpoints as a Flask blueprint writing through ``writer``.

    Parameters
    ----------
    writer
        The running write queue.
    token
        Bearer token required on the export endpoints; ``None`` accepts any request.
    max_body_bytes
        Limit for the body, before and after inflating gzip (413 above it).
    tenant_attribute
        Attribute naming the tenant (see :mod:`ingest.genai`).
    commit_timeout
        Seconds to wait for the commit before answering 503 (the batch may still land; a retry is harmless).
    decode_pool
        Worker processes to decode in (``None``: in the request thread). Decoding is pure Python and holds
        the GIL; in other processes it runs beside the HTTP handling and the DuckDB appends of this one.
    """
    bp = flask.Blueprint("otlp", __name__)
    stats = ReceiverStats()
    bp.stats = stats  # type: ignore[attr-defined]  # for the server's and tests' introspection
    expected = f"Bearer {token}".encode() if token else None
    decoders: dict[str, Callable[..., TelemetryBatch]] = {
        JSON: decode_otlp_json,
        PROTOBUF: decode_otlp_protobuf,
    }

    def reply(
        status: int, body: bytes, encoding: str, headers: dict[str, str] | None = None
    ) -> flask.Response:
        resp = flask.Response(body, status=status, content_type=encoding)
        for k, v in (headers or {}).items():
            resp.headers[k] = v
        return resp

    def export(signal: str) -> flask.Response:
        started = time.perf_counter()
        req = flask.request
        encoding = req.mimetype if req.mimetype in decoders else JSON
        size = 0
        try:
            if expected is not None:
                given = req.headers.get("Authorization", "").encode("utf-8", "replace")
                if not hmac.compare_digest(given, expected):
                    raise _Reply(
                        401, "missing or wrong bearer token", {"WWW-Authenticate": 'Bearer realm="otlp"'}
                    )
            if req.mimetype not in decoders:
                raise _Reply(
                    415, f"Content-Type must be {PROTOBUF} or {JSON}, got {req.mimetype or 'none'!r}"
                )
            coding = req.headers.get("Content-Encoding", "").strip().lower()
            if coding not in ("", "identity", "gzip"):
                raise _Reply(415, f"Content-Encoding must be gzip or absent, got {coding!r}")
            if req.content_length is not None and req.content_length > max_body_bytes:
                raise _Reply(413, f"body of {req.content_length} bytes exceeds the limit of {max_body_bytes}")
            body = req.stream.read(max_body_bytes + 1)
            if len(body) > max_body_bytes:
                raise _Reply(413, f"body exceeds the limit of {max_body_bytes} bytes")
            if coding == "gzip":
                body = _inflate(body, max_body_bytes)
            size = len(body)
            try:
                args = (body, signal, f"otlp/http /v1/{signal}")
                if decode_pool is None:
                    batch = decoders[encoding](*args, tenant_attribute=tenant_attribute)
                else:
                    batch = decode_pool.submit(
                        decoders[encoding], *args, tenant_attribute=tenant_attribute
                    ).result()
            except OtlpDecodeError as exc:
                raise _Reply(400, str(exc)) from None
            try:
                future = writer.submit(batch)
            except QueueFull as exc:
                raise _Reply(429, str(exc), {"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
            except WriterStopped as exc:
                raise _Reply(503, str(exc), {"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
            try:
                future.result(timeout=commit_timeout)
            except TimeoutError:
                raise _Reply(503, "the store did not commit in time", {"Retry-After": "5"}) from None
            except Exception as exc:  # the transaction failed: nothing of this batch is stored
                log.error("store append failed for /v1/%s: %s", signal, exc)
                raise _Reply(503, f"the store could not commit: {exc}", {"Retry-After": "5"}) from None
        except _Reply as r:
            if r.status >= 500:
                log.warning("/v1/%s -> %s: %s", signal, r.status, r.message)
            stats.request(signal, r.status, time.perf_counter() - started, size)
            return reply(
                r.status, status_body(_GRPC_CODES.get(r.status, 2), r.message, encoding), encoding, r.headers
            )
        stats.records(signal, batch.accepted, batch.rejected)
        message_type, rejected_field = _RESPONSES[signal]
        response = message_type()
        if batch.rejected:
            setattr(response.partial_success, rejected_field, batch.rejected)
            response.partial_success.error_message = _partial_message(batch)
        if encoding == PROTOBUF:
            out = response.SerializeToString()
        else:
            out = json_format.MessageToJson(response, indent=None).encode()
        stats.request(signal, 200, time.perf_counter() - started, size)
        return reply(200, out, encoding)

    for signal in _SIGNALS:
        bp.add_url_rule(f"/v1/{signal}", f"export_{signal}", lambda s=signal: export(s), methods=["POST"])

    @bp.get("/healthz")
    def healthz() -> flask.Response:
        ok = writer.running
        body = {"status": "ok" if ok else "writer stopped", "queue_depth": writer.depth}
        return flask.Response(orjson.dumps(body), status=200 if ok else 503, content_type=JSON)

    @bp.get("/metrics")
    def metrics() -> flask.Response:
        # other parts of the process (the scheduler) add their families through app.extensions
        extra = [f() for f in flask.current_app.extensions.get("rootwise_metrics", [])]
        return flask.Response(
            stats.prometheus(writer) + "".join(extra),
            content_type="text/plain; version=0.0.4; charset=utf-8",
        )

    return bp
