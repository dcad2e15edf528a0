"""``rootwise serve`` end to end: telemetry over OTLP from the official OpenTelemetry SDK exporters, the
scheduler's detection, RCA and alerting, and deliveries to real HTTP receivers on 127.0.0.1 shaped like
PagerDuty, Slack and a Standard-Webhooks-signed generic webhook — then the fault ends and everything resolves.
Plus the fault tests through the real process: SIGKILL with undelivered notifications, then a restart; a
malformed config refused at start; /readyz and /metrics.

The platform: ``rag-api`` calls ``vector-db`` (spans give the dependency). Three hours of normal latency are
exported with explicit timestamps, then ``vector-db`` slows down and ``rag-api`` suffers two minutes later.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from alerting_support import SERVE_ENV as ENV
from alerting_support import SERVE_PD_KEY as PD_KEY
from alerting_support import SERVE_WH_SECRET as WH_SECRET
from alerting_support import Receiver, get, pd_events, wait_for, write_config
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind
from standardwebhooks.webhooks import Webhook

pytestmark = pytest.mark.slow

MODELS = ("m-small", "m-large", "m-embed")
HISTORY_MIN = 180
FAULT_MIN = 20  # minutes of fault
RECOVERY_MIN = 25


def latency(service: str, minute: int, fault_start: int, fault_end: int, rng: np.random.Generator) -> float:
    base = {"vector-db": 40.0, "rag-api": 220.0}[service]
    value = base * (1 + 0.05 * rng.standard_normal())
    onset = fault_start + (2 if service == "rag-api" else 0)
    if onset <= minute < fault_end:
        value *= 6.0 if service == "vector-db" else 2.5
    return float(value)


def export_minutes(
    url: str, t0: datetime, minutes: range, fault_start: int, fault_end: int, seed: int
) -> None:
    """Latency gauges (per model) and one rag-api → vector-db call per minute, timestamped ``t0 + m``."""
    rng = np.random.default_rng(seed)
    metrics = OTLPMetricExporter(endpoint=f"{url}/v1/metrics")
    resource_metrics = []
    for service in ("vector-db", "rag-api"):
        points = [
            NumberDataPoint(
                attributes={"model": model},
                start_time_unix_nano=0,
                time_unix_nano=int((t0 + timedelta(minutes=m)).timestamp() * 1e9),
                value=latency(service, m, fault_start, fault_end, rng),
            )
            for m in minutes
            for model in MODELS
        ]
        metric = Metric("request_latency_p95_ms", "p95 latency", "ms", Gauge(points))
        resource_metrics.append(
            ResourceMetrics(
                Resource.create({"service.name": service}),
                [ScopeMetrics(InstrumentationScope("e2e"), [metric], "")],
                "",
            )
        )
    assert metrics.export(MetricsData(resource_metrics)) == MetricExportResult.SUCCESS
    metrics.shutdown()
    spans = OTLPSpanExporter(endpoint=f"{url}/v1/traces")
    provider = TracerProvider(resource=Resource.create({"service.name": "rag-api"}))
    provider.add_span_processor(SimpleSpanProcessor(spans))
    db_provider = TracerProvider(resource=Resource.create({"service.name": "vector-db"}))
    db_provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{url}/v1/traces")))
    api, vdb = provider.get_tracer("e2e"), db_provider.get_tracer("e2e")
    for m in minutes[:: max(1, len(minutes) // 30)]:
        start = int((t0 + timedelta(minutes=m)).timestamp() * 1e9)
        dur = int(latency("vector-db", m, fault_start, fault_end, rng) * 1e6)
        parent = api.start_span("POST /answer", kind=SpanKind.SERVER, start_time=start)
        ctx = parent.get_span_context()
        from opentelemetry import trace

        with trace.use_span(parent, end_on_exit=False):
            client = api.start_span("vector-db.query", kind=SpanKind.CLIENT, start_time=start + 1000)
            with trace.use_span(client, end_on_exit=False):
                server = vdb.start_span("query", kind=SpanKind.SERVER, start_time=start + 2000)
                server.end(end_time=start + 2000 + dur)
            client.end(end_time=start + 3000 + dur)
        parent.end(end_time=start + 5000 + dur)
        assert ctx.is_valid
    provider.shutdown()
    db_provider.shutdown()


def test_serve_detects_explains_pages_and_resolves(tmp_path: Path, serve_process, receiver: Receiver) -> None:
    cfg = write_config(tmp_path / "rootwise.toml", receiver)
    url, proc = serve_process(tmp_path / "e2e.duckdb", "--config", str(cfg), env=ENV, scheduler=True)
    status, body = get(f"{url}/readyz")
    assert status == 200 and json.loads(body)["scheduler"] == "running", body
    now = datetime.now(UTC).replace(second=0, microsecond=0, tzinfo=None)
    t0 = now - timedelta(minutes=HISTORY_MIN + FAULT_MIN + RECOVERY_MIN)
    fault_start, fault_end = HISTORY_MIN, HISTORY_MIN + FAULT_MIN
    # history and the fault
    export_minutes(url, t0, range(0, fault_start + 8), fault_start, fault_end, seed=1)
    triggered = wait_for(
        lambda: [e for e in pd_events(receiver) if e[0] == "trigger"], 90, "a PagerDuty trigger", proc
    )
    (pd_body,) = [r.json() for r in receiver.ok("/pd")][:1]
    dedup = triggered[0][1]
    assert dedup.startswith("inc-vector-db-"), triggered  # the root, not the victim, pages
    assert pd_body["routing_key"] == PD_KEY and pd_body["payload"]["source"]
    assert pd_body["links"][0]["href"].startswith("http://rootwise.test:8050/incident/")
    causes = pd_body["payload"]["custom_details"]["top_causes"]
    assert causes, "the page carries RCA's causes"
    # the rag-api incident exists, is explained by vector-db, and its page is held (said in the root's page)
    incidents = wait_for(
        lambda: [i for i in json.loads(get(f"{url}/api/v1/incidents")[1]) if i["service"] == "rag-api"],
        60,
        "the rag-api incident",
        proc,
    )
    assert incidents[0]["causes"][0]["service"] == "vector-db", incidents[0]["causes"][:2]
    holds = wait_for(lambda: json.loads(get(f"{url}/api/v1/alerts/holds")[1]), 30, "a hold", proc)
    assert [h["kind"] for h in holds.values()] == ["rca"], holds
    assert all(dk.startswith("inc-vector-db-") for a, dk in pd_events(receiver))  # no page for rag-api
    slack = wait_for(lambda: receiver.ok("/slack"), 30, "the Slack message", proc)
    assert "vector-db" in json.dumps(slack[0].json())
    hooks = wait_for(lambda: receiver.ok("/hook"), 30, "the webhook", proc)
    # the generic webhook's signature verifies with the reference Standard Webhooks library
    for h in hooks:
        payload = Webhook(WH_SECRET).verify(h.body, h.headers)
        assert payload["version"] == "4" and payload["receiver"] == "hook"
    # the fault ends: everything resolves
    export_minutes(url, t0, range(fault_start + 8, fault_end + RECOVERY_MIN), fault_start, fault_end, seed=2)
    wait_for(lambda: ("resolve", dedup) in pd_events(receiver), 120, "the PagerDuty resolve", proc)
    wait_for(
        lambda: any(a["status"] == "resolved" for r in receiver.ok("/hook") for a in r.json()["alerts"]),
        30,
        "status: resolved at the webhook",
        proc,
    )
    assert pd_events(receiver).count(("trigger", dedup)) == 1  # exactly one page per dedup key
    status, metrics = get(f"{url}/metrics")
    assert status == 200
    assert 'rootwise_alert_deliveries_total{receiver="pd",outcome="delivered"}' in metrics
    assert "rootwise_detection_lag_seconds" in metrics and "rootwise_alert_queue_depth" in metrics
    # SIGTERM: graceful, exit 0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert PD_KEY not in (proc.stderr.read() if proc.stderr else "")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    """Running, not a zombie (a zombie's parent, init once re-parented, reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[-1][0] != "Z"
    except FileNotFoundError:
        return False


def test_sigkill_with_undelivered_notifications_then_restart_delivers(
    tmp_path: Path, serve_process, receiver: Receiver
) -> None:
    cfg = write_config(tmp_path / "rootwise.toml", receiver)
    db = tmp_path / "kill.duckdb"
    receiver.reply = lambda p, h, b: (503, {}, b"down")  # every receiver is down
    url, proc = serve_process(db, "--config", str(cfg), env=ENV, scheduler=True)
    now = datetime.now(UTC).replace(second=0, microsecond=0, tzinfo=None)
    t0 = now - timedelta(minutes=HISTORY_MIN + 10)
    export_minutes(url, t0, range(0, HISTORY_MIN + 10), HISTORY_MIN, HISTORY_MIN + 60, seed=3)
    wait_for(
        lambda: len({r.path.split("/")[1] for r in receiver.received}) == 3, 90, "attempts at all three", proc
    )
    children = _children(proc.pid)  # the OTLP decode processes (and multiprocessing's resource tracker)
    assert len(children) >= 2, children
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    # re-parented, they exit instead of waiting on their pools forever with their memory
    deadline = time.monotonic() + 20
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [c for c in children if _alive(c)]
    attempted = {r.path for r in receiver.received}
    assert not receiver.ok()
    receiver.reply = lambda p, h, b: (202, {}, b'{"status":"success"}')
    url, proc = serve_process(db, "--config", str(cfg), env=ENV, scheduler=True)
    wait_for(
        lambda: {r.path.split("/")[1] for r in receiver.ok()} >= {p.split("/")[1] for p in attempted},
        60,
        "delivery after the restart",
        proc,
    )
    triggers = [e for e in pd_events(receiver) if e[0] == "trigger"]
    assert len(triggers) == len(set(triggers)) >= 1  # each dedup key paged once


def test_malformed_config_is_refused_at_start(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[scheduler]\ndetect_interval = "soon"\n[[receivers]]\nname = "pd"\ntype = "pagerduty"\n'
        'routing_key = "inline-secret-value"\n'
    )
    proc = _cli("serve", "--db", str(tmp_path / "x.duckdb"), "--config", str(cfg), "--port", "0")
    assert proc.returncode == 2, proc.stderr
    assert "receivers[0].routing_key" in proc.stderr and "inline-secret-value" not in proc.stderr
    cfg.write_text('[scheduler]\ndetect_interval = "soon"\n')
    proc = _cli("serve", "--db", str(tmp_path / "x.duckdb"), "--config", str(cfg), "--port", "0")
    assert proc.returncode == 2 and "scheduler.detect_interval" in proc.stderr, proc.stderr


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [os.sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_silence_cli_on_the_file_and_through_a_running_server(tmp_path: Path, serve_process) -> None:
    db = tmp_path / "sil.duckdb"
    added = _cli(
        "silence",
        "add",
        'service="rag-api"',
        "tenant=~t-1.*",
        "--duration",
        "1h",
        "--db",
        str(db),
        "--format",
        "json",
    )
    assert added.returncode == 0, added.stderr
    sid = json.loads(added.stdout)["id"]
    bad = _cli("silence", "add", "service=~(", "--db", str(db))
    assert bad.returncode == 2 and "invalid regular expression" in bad.stderr
    listed = json.loads(_cli("silence", "list", "--db", str(db), "--format", "json").stdout)
    assert [(s["id"], s["state"]) for s in listed] == [(sid, "active")]
    cfg = tmp_path / "rootwise.toml"
    cfg.write_text('[server]\ntoken = "${E2E_TOKEN}"\n')
    env = {"E2E_TOKEN": "tok-0123456789abcdef"}
    url, _ = serve_process(db, "--config", str(cfg), "--decode-workers", "0", env=env)
    held = _cli("silence", "list", "--db", str(db))
    assert held.returncode == 2 and "--server" in held.stderr  # the server owns the file: say how
    unauth = _cli("silence", "list", "--server", url)
    assert unauth.returncode == 2 and "HTTP 401" in unauth.stderr
    token = {"ROOTWISE_TOKEN": env["E2E_TOKEN"]}
    assert _cli("silence", "expire", "--id", sid, "--server", url, env=token).returncode == 0
    again = _cli("silence", "expire", "--id", sid, "--server", url, env=token)
    assert again.returncode == 2 and "no active silence" in again.stderr
    listed = json.loads(_cli("silence", "list", "--server", url, "--format", "json", env=token).stdout)
    assert listed[0]["state"] == "expired"
