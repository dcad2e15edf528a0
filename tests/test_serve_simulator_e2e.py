"""The simulator's platform through ``rootwise serve``: its OTLP metrics re-exported with the official
OpenTelemetry SDK exporter (``OTLPMetricExporter``, protobuf over HTTP), its OTLP traces and logs as the JSON a
collector would post, its change events and topology through the file path. The scheduler detects the injected
vector-DB latency fault, RCA explains it, PagerDuty, Slack and a signed webhook on 127.0.0.1 are paged, and the
fault's end brings the resolve.

Data is sent in two stages, split inside the fault, so the incident is firing when a pass first sees it (an
incident that opened and resolved between two passes pages nobody: a backfill must not wake people).
"""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alerting_support import SERVE_ENV as ENV
from alerting_support import SERVE_WH_SECRET as WH_SECRET
from alerting_support import Receiver, pd_events, wait_for, write_config
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from standardwebhooks.webhooks import Webhook

from ingest.files import ingest_paths
from ingest.simulator import simulate
from ingest.store import Store

pytestmark = pytest.mark.slow

SEED, DAYS, SCALE = 3, 1.0, 0.2
FAULT = "vector_db_latency"


def _value(v: dict[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in v:
            return v[key]
    if "intValue" in v:
        return int(v["intValue"])
    return str(v)


def _attrs(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {a["key"]: _value(a["value"]) for a in items or []}


def _points(metric: dict[str, Any], keep: Any) -> tuple[str, list[Any]]:
    for kind in ("gauge", "sum", "histogram"):
        if kind in metric:
            raw = [p for p in metric[kind]["dataPoints"] if keep(int(p["timeUnixNano"]))]
            break
    else:
        raise AssertionError(f"unexpected metric type in {metric['name']}")
    out = []
    for p in raw:
        common = {
            "attributes": _attrs(p.get("attributes")),
            "start_time_unix_nano": int(p.get("startTimeUnixNano", 0)),
            "time_unix_nano": int(p["timeUnixNano"]),
        }
        if kind == "histogram":
            out.append(
                HistogramDataPoint(
                    **common,
                    count=int(p["count"]),
                    sum=float(p.get("sum", 0.0)),
                    bucket_counts=[int(c) for c in p["bucketCounts"]],
                    explicit_bounds=[float(b) for b in p["explicitBounds"]],
                    min=float(p.get("min", 0.0)),
                    max=float(p.get("max", 0.0)),
                )
            )
        else:
            value = float(p["asDouble"]) if "asDouble" in p else int(p["asInt"])
            out.append(NumberDataPoint(**common, value=value))
    return kind, out


def sdk_metrics(payload: dict[str, Any], keep: Any) -> MetricsData:
    """An OTLP JSON ExportMetricsServiceRequest as the SDK's own data model (what a MeterProvider hands its
    exporter), keeping the points whose time passes ``keep``."""
    resources = []
    for rm in payload["resourceMetrics"]:
        scopes = []
        for sm in rm["scopeMetrics"]:
            metrics = []
            for m in sm["metrics"]:
                kind, points = _points(m, keep)
                if not points:
                    continue
                if kind == "gauge":
                    data: Any = Gauge(points)
                elif kind == "sum":
                    data = Sum(
                        points,
                        AggregationTemporality(m["sum"].get("aggregationTemporality", 2)),
                        bool(m["sum"].get("isMonotonic", False)),
                    )
                else:
                    data = Histogram(
                        points, AggregationTemporality(m["histogram"].get("aggregationTemporality", 2))
                    )
                metrics.append(Metric(m["name"], m.get("description"), m.get("unit"), data))
            if metrics:
                scope = sm.get("scope") or {}
                scopes.append(
                    ScopeMetrics(
                        InstrumentationScope(scope.get("name", ""), scope.get("version")), metrics, ""
                    )
                )
        if scopes:
            resources.append(ResourceMetrics(Resource(_attrs(rm["resource"].get("attributes"))), scopes, ""))
    return MetricsData(resources)


def _time_ok(p: dict[str, Any], keep: Any, key: str) -> bool:
    return keep(int(p.get(key) or 0))


def filtered_spans(payload: dict[str, Any], keep: Any) -> dict[str, Any]:
    for rs in payload.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            ss["spans"] = [s for s in ss.get("spans", []) if _time_ok(s, keep, "startTimeUnixNano")]
    return payload


def filtered_logs(payload: dict[str, Any], keep: Any) -> dict[str, Any]:
    for rl in payload.get("resourceLogs", []):
        for sl in rl.get("scopeLogs", []):
            sl["logRecords"] = [r for r in sl.get("logRecords", []) if _time_ok(r, keep, "timeUnixNano")]
    return payload


def post_json(url: str, body: dict[str, Any]) -> None:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200


def send(url: str, telemetry: Path, keep: Any) -> None:
    """Every OTLP file of the simulator, points filtered by ``keep(time_ns)``, in time order."""
    exporter = OTLPMetricExporter(endpoint=f"{url}/v1/metrics", timeout=120)
    for path in sorted((telemetry / "metrics").glob("otlp_metrics_*.json")):
        data = sdk_metrics(json.loads(path.read_text()), keep)
        if data.resource_metrics:
            assert exporter.export(data) == MetricExportResult.SUCCESS, path.name
    exporter.shutdown()
    for path in sorted((telemetry / "traces").glob("*.json")):
        post_json(f"{url}/v1/traces", filtered_spans(json.loads(path.read_text()), keep))
    for path in sorted((telemetry / "logs").glob("*.json")):
        post_json(f"{url}/v1/logs", filtered_logs(json.loads(path.read_text()), keep))


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[tuple[Path, Path, dict[str, Any]]]:
    out = tmp_path / "sim"
    # the simulator's fixed period (it ends 2026-11-01): byte-identical telemetry on every run, so the test does
    # not depend on the time of day it runs at; nothing in serve needs data near the wall clock
    simulate(out, days=DAYS, scale=SCALE, seed=SEED)
    truth = json.loads((out / "labels" / "incidents.json").read_text())["incidents"]
    (fault,) = [i for i in truth if i["kind"] == FAULT]
    db = tmp_path / "platform.duckdb"
    with Store(
        db
    ) as store:  # what has no OTLP form: change events, declared topology, per-tenant usage, GPU nodes
        telemetry = out / "telemetry"
        files = [telemetry / "events.jsonl", telemetry / "topology.jsonl"]
        files += sorted((telemetry / "metrics").glob("*.parquet")) + sorted(
            (telemetry / "prometheus").glob("*.prom")
        )
        assert ingest_paths(store, files).ok
    yield db, out / "telemetry", fault


def _ns(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1e9)


def test_simulated_platform_pages_and_resolves(
    platform, tmp_path: Path, serve_process, receiver: Receiver
) -> None:
    db, telemetry, fault = platform
    cfg = write_config(tmp_path / "rootwise.toml", receiver, detect_interval="3s")
    url, proc = serve_process(db, "--config", str(cfg), env=ENV, scheduler=True)
    split = _ns(fault["start"]) + 12 * 60 * 10**9  # twelve minutes into the fault
    send(url, telemetry, lambda t: t <= split)

    onset = datetime.fromisoformat(fault["start"].replace("Z", "+00:00"))

    def paged() -> list[dict[str, Any]]:
        """PagerDuty triggers for an affected service whose incident started near the fault's onset."""
        return [
            b
            for b in (r.json() for r in receiver.ok("/pd"))
            if b["event_action"] == "trigger"
            and b["payload"]["source"] in fault["affected_services"]
            and abs(datetime.fromisoformat(b["payload"]["timestamp"].replace("Z", "+00:00")) - onset)
            <= timedelta(minutes=15)
        ]

    pages = wait_for(paged, 240, f"a page for the injected {FAULT}", proc)
    dedup = pages[0]["dedup_key"]
    incidents = json.loads(urllib.request.urlopen(f"{url}/api/v1/incidents", timeout=30).read())
    (inc,) = [i for i in incidents if i["id"] == dedup]
    assert inc["causes"], "RCA ran before the page"
    assert pages[0]["payload"]["custom_details"]["top_causes"][0]["kind"] == inc["causes"][0]["kind"]
    hook = wait_for(
        lambda: [
            r for r in receiver.ok("/hook") for a in r.json()["alerts"] if a["labels"]["incident_id"] == dedup
        ],
        60,
        "the webhook",
        proc,
    )
    assert Webhook(WH_SECRET).verify(hook[0].body, hook[0].headers)["status"] == "firing"
    # Slack is rate-limited to about one message a second: its message may come after the webhook's
    wait_for(
        lambda: any(dedup in json.dumps(r.json()) for r in receiver.ok("/slack")),
        60,
        "the Slack message",
        proc,
    )
    # the rest of the day: the fault ends, the incident resolves, the resolve is delivered once
    send(url, telemetry, lambda t: t > split)
    try:
        wait_for(lambda: ("resolve", dedup) in pd_events(receiver), 300, "the resolve", proc)
    except AssertionError as exc:  # say where it stopped: the incident's state and the scheduler's figures
        now = json.loads(urllib.request.urlopen(f"{url}/api/v1/incidents", timeout=30).read())
        state = [{k: i.get(k) for k in ("id", "status", "start", "end")} for i in now if i["id"] == dedup]
        metrics = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
        figures = [line for line in metrics.splitlines() if line.startswith("rootwise_scheduler")]
        raise AssertionError(f"{exc}; incident {state}; {figures}; PD events {pd_events(receiver)}") from None
    assert pd_events(receiver).count(("trigger", dedup)) == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
