"""The platform simulator: determinism, public formats, ground truth, and that every incident shows.

One small run (1 day, scale 0.05) is shared by the module: it is the fixture of every read-only check here
(a module-scoped fixture because generating it per test would multiply the suite's time by ten).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pytest

from ingest.schema import EVENT_KINDS
from ingest.simulator import DEFAULT_END, KINDS, simulate

DAYS, SCALE, SEED = 1.0, 0.05, 7


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sim")
    manifest = simulate(out, days=DAYS, seed=SEED, scale=SCALE)
    return out, manifest


@pytest.fixture(scope="module")
def labels(run) -> dict:
    return orjson.loads((run[0] / "labels" / "incidents.json").read_bytes())


# ---- readers (plain json / regex / polars, independent of the ingest decoders) -----------------------------------
def _attrs(items: list[dict]) -> dict[str, object]:
    out = {}
    for a in items:
        v = a["value"]
        out[a["key"]] = next(iter(v.values())) if v else None
    return out


def _ts(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def _ns(dt: datetime) -> int:
    return int(dt.timestamp()) * 1_000_000_000


@pytest.fixture(scope="module")
def otlp_metrics(run) -> pl.DataFrame:
    """Every OTLP data point: resource, metric, time, value / histogram count, sum and buckets."""
    rows = []
    for path in sorted((run[0] / "telemetry" / "metrics").glob("*.json")):
        doc = orjson.loads(path.read_bytes())
        for rm in doc["resourceMetrics"]:
            res = _attrs(rm["resource"]["attributes"])
            for sm in rm["scopeMetrics"]:
                for m in sm["metrics"]:
                    kind = next(k for k in ("sum", "gauge", "histogram") if k in m)
                    for dp in m[kind]["dataPoints"]:
                        a = _attrs(dp.get("attributes", []))
                        if kind == "histogram":
                            value = None
                            count, total = int(dp["count"]), dp["sum"]
                        else:
                            value = float(dp["asInt"]) if "asInt" in dp else dp["asDouble"]
                            count, total = None, None
                        rows.append(
                            (
                                res["service.name"],
                                res["service.instance.id"],
                                res["cloud.region"],
                                res["service.version"],
                                m["name"],
                                kind,
                                int(dp["timeUnixNano"]),
                                int(dp.get("startTimeUnixNano", 0)),
                                value,
                                count,
                                total,
                                a.get("model_version"),
                            )
                        )
    return pl.DataFrame(
        rows,
        orient="row",
        schema={
            "service": pl.Utf8,
            "instance": pl.Utf8,
            "region": pl.Utf8,
            "version": pl.Utf8,
            "metric": pl.Utf8,
            "kind": pl.Utf8,
            "time": pl.Int64,
            "start": pl.Int64,
            "value": pl.Float64,
            "count": pl.Float64,
            "sum": pl.Float64,
            "model_version": pl.Utf8,
        },
    )


PROM_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\} (-?[0-9.eE+-]+|NaN) (\d{13})$")


@pytest.fixture(scope="module")
def prom(run) -> pl.DataFrame:
    rows = []
    for path in sorted((run[0] / "telemetry" / "prometheus").glob("*.prom")):
        for line in path.read_text().splitlines():
            if line.startswith("#"):
                continue
            m = PROM_LINE.match(line)
            assert m, line
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            rows.append(
                (
                    m.group(1),
                    labels["instance"],
                    labels["region"],
                    labels.get("model_name"),
                    float(m.group(3)),
                    int(m.group(4)),
                )
            )
    return pl.DataFrame(
        rows,
        orient="row",
        schema={
            "family": pl.Utf8,
            "instance": pl.Utf8,
            "region": pl.Utf8,
            "model": pl.Utf8,
            "value": pl.Float64,
            "ts_ms": pl.Int64,
        },
    )


@pytest.fixture(scope="module")
def gpu_nodes(prom: pl.DataFrame) -> dict[tuple[str, str], list[str]]:
    """(region, model) -> GPU nodes serving it, from the vLLM series."""
    pairs = prom.filter(pl.col("model").is_not_null()).select("region", "model", "instance").unique()
    out: dict[tuple[str, str], list[str]] = {}
    for region, model, inst in pairs.sort("instance").iter_rows():
        out.setdefault((region, model), []).append(inst)
    return out


@pytest.fixture(scope="module")
def spans(run) -> pl.DataFrame:
    rows = []
    for path in sorted((run[0] / "telemetry" / "traces").glob("*.json")):
        for rs in orjson.loads(path.read_bytes())["resourceSpans"]:
            res = _attrs(rs["resource"]["attributes"])
            for ss in rs["scopeSpans"]:
                for s in ss["spans"]:
                    a = _attrs(s["attributes"])
                    rows.append(
                        (
                            res["service.name"],
                            res["cloud.region"],
                            s["traceId"],
                            s["spanId"],
                            s.get("parentSpanId", ""),
                            s["name"],
                            s["kind"],
                            int(s["startTimeUnixNano"]),
                            int(s["endTimeUnixNano"]),
                            s["status"].get("code", 0),
                            a.get("gen_ai.request.model"),
                            a.get("rootwise.tenant.id"),
                        )
                    )
    return pl.DataFrame(
        rows,
        orient="row",
        schema={
            "service": pl.Utf8,
            "region": pl.Utf8,
            "trace": pl.Utf8,
            "span": pl.Utf8,
            "parent": pl.Utf8,
            "name": pl.Utf8,
            "kind": pl.Int64,
            "start": pl.Int64,
            "end": pl.Int64,
            "status": pl.Int64,
            "model": pl.Utf8,
            "tenant": pl.Utf8,
        },
    )


@pytest.fixture(scope="module")
def logs(run) -> pl.DataFrame:
    rows = []
    for path in sorted((run[0] / "telemetry" / "logs").glob("*.json")):
        for rl in orjson.loads(path.read_bytes())["resourceLogs"]:
            res = _attrs(rl["resource"]["attributes"])
            for sl in rl["scopeLogs"]:
                for r in sl["logRecords"]:
                    rows.append(
                        (
                            res["service.name"],
                            res["cloud.region"],
                            res["service.instance.id"],
                            int(r["timeUnixNano"]),
                            r["severityText"],
                            r["body"]["stringValue"],
                            r.get("traceId", ""),
                        )
                    )
    return pl.DataFrame(
        rows, orient="row", schema=["service", "region", "instance", "time", "severity", "body", "trace"]
    )


@pytest.fixture(scope="module")
def usage(run) -> pl.DataFrame:
    return pl.read_parquet(run[0] / "telemetry" / "metrics" / "*.parquet")


def _incidents(labels: dict, kind: str) -> list[dict]:
    found = [i for i in labels["incidents"] if i["kind"] == kind]
    assert found, f"no {kind} incident in the run"
    return found


def _windows(inc: dict, before: int = 55, gap: int = 5) -> tuple[datetime, datetime, datetime, datetime]:
    """(baseline start, baseline end, incident start, incident end); incidents are >= 60 minutes apart."""
    s, e = _ts(inc["start"]), _ts(inc["end"])
    return s - timedelta(minutes=before), s - timedelta(minutes=gap), s, e


def _rate(counter: pl.DataFrame, t0: datetime, t1: datetime, col: str = "value") -> float:
    """Increase of a cumulative series over [t0, t1) per instance, summed (resets handled by differencing)."""
    c = counter.sort(["instance", "time"]).with_columns(
        d=pl.col(col).diff().over("instance"), restarted=pl.col("start").diff().over("instance") != 0
    )
    c = c.with_columns(d=pl.when(pl.col("restarted")).then(pl.col(col)).otherwise(pl.col("d")))
    inside = c.filter((pl.col("time") > _ns(t0)) & (pl.col("time") <= _ns(t1)))
    return float(inside["d"].fill_null(0).sum())


def _hist_mean(h: pl.DataFrame, t0: datetime, t1: datetime) -> float:
    """Mean observed value of cumulative histogram series over [t0, t1)."""
    return _rate(h, t0, t1, "sum") / max(_rate(h, t0, t1, "count"), 1)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp()) * 1000


def _between(frame: pl.DataFrame, column: str, t0: datetime, t1: datetime) -> pl.DataFrame:
    scale = {"ts_ms": _ms, "time": _ns, "start": _ns}[column]
    return frame.filter(pl.col(column).is_between(scale(t0), scale(t1)))


# ---- determinism --------------------------------------------------------------------------------------------
def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    a = simulate(tmp_path / "a", days=0.4, seed=3, scale=0.05)
    b = simulate(tmp_path / "b", days=0.4, seed=3, scale=0.05)
    simulate(tmp_path / "c", days=0.4, seed=4, scale=0.05)
    da, db, dc = _digests(tmp_path / "a"), _digests(tmp_path / "b"), _digests(tmp_path / "c")
    assert a == b
    assert da == db
    assert len(da) > 20
    differing = [k for k in da if k in dc and da[k] != dc[k]]
    assert len(differing) >= len(da) - 3  # only the topology (and maybe nothing else) may coincide


def test_default_period_is_fixed_and_explicit_start_is_honoured(tmp_path: Path) -> None:
    m = simulate(tmp_path / "a", days=0.02, scale=0.05)
    assert _ts(m["end"]) == DEFAULT_END
    start = datetime(2026, 3, 2, 10, 30, 41)
    m = simulate(tmp_path / "b", days=0.02, scale=0.05, start=start)
    assert _ts(m["start"]) == datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
    assert _ts(m["end"]) - _ts(m["start"]) == timedelta(minutes=29)


def test_rerun_into_the_same_folder_replaces_it_but_foreign_folders_are_refused(tmp_path: Path) -> None:
    simulate(tmp_path / "a", days=0.05, scale=0.05, seed=1)
    simulate(tmp_path / "a", days=0.05, scale=0.05, seed=2)
    assert orjson.loads((tmp_path / "a" / "manifest.json").read_bytes())["seed"] == 2
    (tmp_path / "b" / "telemetry").mkdir(parents=True)
    (tmp_path / "b" / "telemetry" / "mine.txt").write_text("x")
    with pytest.raises(FileExistsError):
        simulate(tmp_path / "b", days=0.05, scale=0.05)
    with pytest.raises(ValueError):
        simulate(tmp_path / "c", days=0, scale=0.05)


# ---- formats ------------------------------------------------------------------------------------------------
def test_manifest_lists_every_file_with_its_format(run) -> None:
    out, m = run
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert {f["path"] for f in m["files"]} == on_disk
    formats = {f["format"] for f in m["files"]}
    assert formats == {
        "otlp-json-metrics",
        "parquet-long",
        "prometheus-text",
        "otlp-json-traces",
        "otlp-json-logs",
        "events-jsonl",
        "topology-jsonl",
        "labels-json",
    }
    assert all(f["bytes"] <= 50 * 1024 * 1024 for f in m["files"])
    assert m["points"] > 0 and m["spans"] > 0 and m["logs"] > 0 and m["events"] > 0 and m["incidents"] >= 8
    assert _ts(m["end"]) - _ts(m["start"]) == timedelta(days=DAYS)
    assert m["points"] == m["otlp_points"] + m["usage_rows"] + m["prometheus_samples"]


def test_otlp_metrics_structure(run, otlp_metrics: pl.DataFrame) -> None:
    out, m = run
    doc = orjson.loads(next((out / "telemetry" / "metrics").glob("*.json")).read_bytes())
    metric = doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]
    assert metric["sum"]["aggregationTemporality"] == 2 and metric["sum"]["isMonotonic"] is True
    assert isinstance(metric["sum"]["dataPoints"][0]["timeUnixNano"], str)
    for rm in doc["resourceMetrics"]:
        for mm in rm["scopeMetrics"][0]["metrics"]:
            if "histogram" in mm:
                assert mm["histogram"]["aggregationTemporality"] == 2
                for dp in mm["histogram"]["dataPoints"]:
                    counts = [int(c) for c in dp["bucketCounts"]]
                    assert len(counts) == len(dp["explicitBounds"]) + 1
                    assert sum(counts) == int(dp["count"])
                    assert dp["explicitBounds"] == sorted(dp["explicitBounds"])
    assert otlp_metrics.height == m["otlp_points"] + m["histogram_points"]
    names = set(otlp_metrics["metric"].unique())
    assert {
        "requests",
        "errors",
        "http.server.request.duration",
        "gen_ai.server.request.duration",
        "gen_ai.server.time_to_first_token",
        "gen_ai.server.time_per_output_token",
        "prediction.score",
        "process.memory.usage",
    } <= names
    assert set(otlp_metrics["service"].unique()) == {
        "gateway",
        "rag-api",
        "retriever",
        "embedder",
        "reranker",
        "llm-serving",
        "predictor",
        "feature-store",
    }
    assert set(otlp_metrics["region"].unique()) == {"us-east", "us-west", "eu-west"}
    start, end = _ns(_ts(m["start"])), _ns(_ts(m["end"]))
    assert otlp_metrics["time"].min() > start and otlp_metrics["time"].max() <= end
    # cumulative counters never decrease unless the process restarted (new start time)
    req = otlp_metrics.filter(pl.col("metric") == "requests").sort(["instance", "time"])
    bad = req.with_columns(
        d=pl.col("value").diff().over("instance"), s=pl.col("start").diff().over("instance")
    )
    assert bad.filter((pl.col("d") < 0) & (pl.col("s") == 0)).height == 0
    assert bad.filter(pl.col("s") != 0).height > 0  # deploys and OOM kills restart processes


def test_usage_parquet_long_format(run, usage: pl.DataFrame) -> None:
    out, m = run
    assert usage.columns == [
        "ts",
        "metric",
        "value",
        "service",
        "kind",
        "unit",
        "tenant",
        "model",
        "model_version",
        "region",
        "operation",
    ]
    assert set(usage["kind"].unique()) == {"delta"}
    assert usage.schema["ts"] == pl.Datetime("us", "UTC")
    assert usage.height == m["usage_rows"]
    assert set(usage["metric"].unique()) == {
        "requests",
        "errors",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "latency_ms_sum",
    }
    assert set(usage["operation"].unique()) == {"chat", "rag", "embeddings", "predict"}
    assert usage["tenant"].n_unique() == m["tenants"]
    assert usage.filter(pl.col("metric") == "requests")["value"].min() == 0  # dense: quiet minutes are zeros
    per_minute = usage.group_by("ts").len()
    assert per_minute.height == DAYS * 1440
    # Zipf-skewed tenants: the biggest tenant carries far more than the median one
    req = usage.filter(pl.col("metric") == "requests").group_by("tenant").agg(pl.col("value").sum())["value"]
    assert req.max() > 3 * req.median()


def test_prometheus_snapshots(run, prom: pl.DataFrame) -> None:
    out, _ = run
    text = next((out / "telemetry" / "prometheus").glob("*.prom")).read_text()
    seen: list[str] = []
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            seen.append(line.split()[2])
        elif not line.startswith("#"):
            assert line.split("{")[0] == seen[-1]  # samples follow their family's TYPE line, contiguously
    assert len(seen) == len(set(seen))
    families = set(prom["family"].unique())
    assert {
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "vllm:num_requests_waiting",
        "vllm:gpu_cache_usage_perc",
        "vllm:num_preemptions_total",
    } <= families
    assert prom["ts_ms"].n_unique() == DAYS * 1440
    assert prom.filter(pl.col("family") == "DCGM_FI_DEV_GPU_UTIL")["value"].is_between(0, 100).all()


def test_traces_structure(spans: pl.DataFrame) -> None:
    assert spans["trace"].str.contains(r"^[0-9a-f]{32}$").all()
    assert spans["span"].str.contains(r"^[0-9a-f]{16}$").all()
    assert spans["span"].n_unique() == spans.height
    roots = spans.filter(pl.col("parent") == "")
    assert set(roots["service"].unique()) == {"gateway"}
    assert roots.height == spans["trace"].n_unique()
    # every parent exists in the same trace, and children start within their parent
    joined = spans.filter(pl.col("parent") != "").join(
        spans.select(
            "trace",
            pl.col("span").alias("parent"),
            pl.col("start").alias("p_start"),
            pl.col("service").alias("p_service"),
        ),
        on=["trace", "parent"],
        how="left",
    )
    assert joined["p_start"].null_count() == 0
    assert (joined["start"] >= joined["p_start"]).all()
    edges = set(joined.select("p_service", "service").unique().iter_rows())
    assert {
        ("gateway", "rag-api"),
        ("rag-api", "retriever"),
        ("rag-api", "embedder"),
        ("rag-api", "reranker"),
        ("rag-api", "llm-serving"),
        ("gateway", "llm-serving"),
        ("gateway", "predictor"),
        ("predictor", "feature-store"),
    } <= edges
    llm = spans.filter(pl.col("service") == "llm-serving")
    assert set(llm["model"].unique()) <= {"m-small", "m-large"} and llm["tenant"].null_count() == 0
    assert spans.filter(pl.col("status") == 2).height > 0


def test_llm_spans_carry_genai_attributes(run) -> None:
    path = next((run[0] / "telemetry" / "traces").glob("*.json"))
    for rs in orjson.loads(path.read_bytes())["resourceSpans"]:
        if _attrs(rs["resource"]["attributes"])["service.name"] != "llm-serving":
            continue
        a = _attrs(rs["scopeSpans"][0]["spans"][0]["attributes"])
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.request.model"] in ("m-small", "m-large")
        assert int(a["gen_ai.usage.input_tokens"]) > 0 and "gen_ai.usage.output_tokens" in a
        assert a["gen_ai.provider.name"] and a["rootwise.tenant.id"].startswith("t-")
        return
    pytest.fail("no llm-serving spans")


def test_logs_events_topology(run, logs: pl.DataFrame) -> None:
    out, m = run
    assert set(logs["severity"].unique()) >= {"INFO", "WARN", "ERROR"}
    assert logs.filter(pl.col("trace") != "").height > 0  # error logs link to sampled traces
    events = [orjson.loads(x) for x in (out / "telemetry" / "events.jsonl").read_bytes().splitlines()]
    assert len(events) == m["events"]
    assert all(set(e) == {"id", "ts", "service", "kind", "title", "attributes"} for e in events)
    assert {e["kind"] for e in events} <= set(EVENT_KINDS)
    assert len({e["id"] for e in events}) == len(events)
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert all(_ts(m["start"]) <= _ts(e["ts"]) < _ts(m["end"]) for e in events)
    edges = [orjson.loads(x) for x in (out / "telemetry" / "topology.jsonl").read_bytes().splitlines()]
    assert {"source": "rag-api", "target": "retriever"} in edges


# ---- ground truth -------------------------------------------------------------------------------------------
def test_labels_cover_every_kind_with_valid_windows(run, labels: dict) -> None:
    out, m = run
    incidents = labels["incidents"]
    assert {i["kind"] for i in incidents} == set(KINDS) and len(KINDS) >= 8
    events = {orjson.loads(x)["id"] for x in (out / "telemetry" / "events.jsonl").read_bytes().splitlines()}
    start, end, warm = _ts(m["start"]), _ts(m["end"]), _ts(labels["warmup_end"])
    assert warm - start >= timedelta(hours=7)
    prev_end = start
    for inc in incidents:
        s, e = _ts(inc["start"]), _ts(inc["end"])
        assert warm <= s and e <= end
        assert timedelta(minutes=20) <= e - s <= timedelta(minutes=120)
        assert s - prev_end >= timedelta(minutes=60)  # apart, so each has a clean baseline
        prev_end = e
        assert inc["root_cause"]["service"] and isinstance(inc["root_cause"]["labels"], dict)
        assert inc["affected_services"] and inc["affected_metrics"]
        assert inc["event_id"] is None or inc["event_id"] in events
    with_cause = {i["kind"] for i in incidents if i["event_id"]}
    assert {"bad_deploy", "token_inflation", "prediction_drift", "memory_leak"} <= with_cause
    # routine changes happen too
    assert m["events"] > 2 * len(with_cause)


def test_incident_count_grows_with_days(tmp_path: Path) -> None:
    from ingest.simulator.plan import build_plan
    from ingest.simulator.sources import load_sources
    from ingest.simulator.world import build_world

    world = build_world(load_sources(), 0.05, np.random.default_rng(0))
    n = [len(build_plan(world, int(d * 1440), np.random.default_rng(1)).incidents) for d in (1, 3, 7)]
    assert n[0] >= 8 and n[0] < n[1] < n[2]
    plan = build_plan(world, 3 * 1440, np.random.default_rng(2))
    assert min(i.start for i in plan.incidents) >= 1440  # none in the first day


def test_telemetry_never_contains_the_labels(run, labels: dict) -> None:
    out, _ = run
    needles = [i["id"].encode() for i in labels["incidents"]] + [k.encode() for k in KINDS]
    needles += [b"incidents.json", b"ground truth"]
    for path in (out / "telemetry").rglob("*"):
        if path.is_file() and path.suffix != ".parquet":
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, (needle, path)
    text = (
        pl.read_parquet(out / "telemetry" / "metrics" / "*.parquet")
        .select(pl.all().exclude("ts", "value").cast(pl.Utf8))
        .unique()
    )
    for col in text.columns:
        for needle in needles:
            assert not text[col].str.contains(needle.decode(), literal=True).any()


# ---- every incident is visible in the telemetry -------------------------------------------------------------
def test_bad_deploy_raises_errors_of_that_version_only(labels: dict, usage: pl.DataFrame) -> None:
    for inc in _incidents(labels, "bad_deploy"):
        b0, b1, s, e = _windows(inc)
        model, bad = inc["root_cause"]["labels"]["model"], inc["root_cause"]["labels"]["model_version"]
        u = (
            usage.filter(pl.col("model") == model)
            .pivot("metric", index=["ts", "tenant", "model_version", "region", "operation"], values="value")
            .fill_null(0)
        )

        def err_rate(frame: pl.DataFrame) -> float:
            return float(frame["errors"].sum() / max(frame["requests"].sum(), 1))

        window = u.filter(pl.col("ts").is_between(s, e, closed="left"))
        base = err_rate(u.filter(pl.col("ts").is_between(b0, b1)))
        on_bad = window.filter(pl.col("model_version") == bad)
        others = window.filter(pl.col("model_version") != bad)
        assert on_bad["requests"].sum() > 20
        assert err_rate(on_bad) > max(0.08, 10 * base)
        assert err_rate(others) < max(0.03, 3 * base)
        # the bad version exists only during the incident
        assert u.filter(pl.col("model_version") == bad)["ts"].min() >= s


def test_tenant_surge_saturates_the_queue(
    labels: dict, usage: pl.DataFrame, prom: pl.DataFrame, gpu_nodes: dict
) -> None:
    for inc in _incidents(labels, "tenant_surge"):
        b0, b1, s, e = _windows(inc)
        lab = inc["root_cause"]["labels"]
        req = usage.filter(
            (pl.col("metric") == "requests")
            & (pl.col("tenant") == lab["tenant"])
            & (pl.col("region") == lab["region"])
        )
        per_min = req.group_by("ts").agg(pl.col("value").sum())
        assert (
            per_min.filter(pl.col("ts").is_between(s, e, closed="left"))["value"].mean()
            > 3 * per_min.filter(pl.col("ts").is_between(b0, b1))["value"].mean()
        )
        waiting = prom.filter(
            (pl.col("family") == "vllm:num_requests_waiting")
            & pl.col("instance").is_in(gpu_nodes[(lab["region"], "m-large")])
        )
        w_in = _between(waiting, "ts_ms", s, e)["value"].mean()
        assert w_in > max(3.0, 5 * _between(waiting, "ts_ms", b0, b1)["value"].mean())


def _shift(
    prom: pl.DataFrame,
    family: str,
    inst: str,
    base: tuple[datetime, datetime],
    window: tuple[datetime, datetime],
) -> float:
    f = prom.filter((pl.col("family") == family) & (pl.col("instance") == inst))
    return _between(f, "ts_ms", *window)["value"].mean() - _between(f, "ts_ms", *base)["value"].mean()


def test_degraded_gpu_node_shows_on_that_node_only(
    labels: dict, prom: pl.DataFrame, otlp_metrics: pl.DataFrame, gpu_nodes: dict
) -> None:
    for inc in _incidents(labels, "gpu_node_degraded"):
        b0, b1, s, e = _windows(inc)
        lab = inc["root_cause"]["labels"]
        node = lab["instance"]
        assert node in gpu_nodes[(lab["region"], lab["model"])]
        peers = [n for n in gpu_nodes[(lab["region"], lab["model"])] if n != node]  # same model, same region
        assert peers
        base, window = (b0, b1), (s + timedelta(minutes=2), e)
        assert _shift(prom, "DCGM_FI_DEV_SM_CLOCK", node, base, window) < -500
        assert _shift(prom, "DCGM_FI_DEV_GPU_UTIL", node, base, window) > 20
        for p in peers:
            assert abs(_shift(prom, "DCGM_FI_DEV_SM_CLOCK", p, base, window)) < 150
            assert abs(_shift(prom, "DCGM_FI_DEV_GPU_UTIL", p, base, window)) < 20
        tpot = otlp_metrics.filter(pl.col("metric") == "gen_ai.server.time_per_output_token")
        mine = tpot.filter(pl.col("instance") == node)
        assert _hist_mean(mine, s, e) > 2 * _hist_mean(mine, b0, b1)
        for p in peers:
            theirs = tpot.filter(pl.col("instance") == p)
            assert _hist_mean(theirs, s, e) < 1.5 * _hist_mean(theirs, b0, b1)


def _onset(per_bucket: pl.DataFrame, value: str, threshold: float) -> int | None:
    """First bucket that, with the next one, is above ``threshold`` (one noisy bucket is not an onset)."""
    rows = per_bucket.sort("bucket")
    above, buckets = (rows[value] > threshold).to_list(), rows["bucket"].to_list()
    for i in range(len(above) - 1):
        if above[i] and above[i + 1]:
            return int(buckets[i])
    return None


def test_vector_db_latency_reaches_retriever_before_rag_api(
    labels: dict, spans: pl.DataFrame, otlp_metrics: pl.DataFrame
) -> None:
    for inc in _incidents(labels, "vector_db_latency"):
        b0, b1, s, e = _windows(inc)
        plateau_end = e - timedelta(minutes=3)  # the effect ramps down over the last two minutes
        late = plateau_end - (plateau_end - s) / 3
        region = inc["root_cause"]["labels"]["region"]
        ok = spans.filter((pl.col("region") == region) & (pl.col("status") != 2)).with_columns(
            dur=(pl.col("end") - pl.col("start")) / 1e6
        )
        # rag-api's own share of a rag request: its span minus its generation child (the LLM call dominates the
        # total and would hide everything else in a handful of sampled traces)
        generation = ok.filter(pl.col("service") == "llm-serving").select(
            "trace", pl.col("parent").alias("span"), pl.col("dur").alias("gen")
        )
        rag_api = (
            ok.filter(pl.col("service") == "rag-api")
            .join(generation, on=["trace", "span"])
            .with_columns(dur=pl.col("dur") - pl.col("gen"))
        )
        series = {
            "retriever": ok.filter(pl.col("service") == "retriever"),
            "rag-api": rag_api,
            "rag-api total": ok.filter(pl.col("service") == "rag-api"),
            "gateway": ok.filter(pl.col("name") == "POST /v1/rag/query"),
        }
        onsets, rise = {}, {}
        for name, factor in (("retriever", 3.0), ("rag-api", 10.0)):
            x = series[name].with_columns(bucket=(pl.col("start") - _ns(s)) // 150_000_000_000)
            base = _between(x, "start", b0, b1)["dur"].median()
            per = _between(x, "start", s, plateau_end).group_by("bucket").agg(pl.col("dur").median())
            onsets[name] = _onset(per, "dur", factor * base)
            assert onsets[name] is not None, f"{name} span durations did not rise"
        assert onsets["retriever"] < onsets["rag-api"]
        for name, x in series.items():
            rise[name] = (
                _between(x, "start", late, plateau_end)["dur"].median()
                / _between(x, "start", b0, b1)["dur"].median()
            )
        assert rise["retriever"] > 20 and rise["rag-api"] > 20
        assert rise["rag-api total"] > 1.5 and rise["gateway"] > 1.5

        # the (unsampled) duration histograms and error counters tell the same
        durations = otlp_metrics.filter(
            (pl.col("metric") == "http.server.request.duration") & (pl.col("region") == region)
        )
        retriever = durations.filter(pl.col("service") == "retriever")
        rag = durations.filter(pl.col("service") == "rag-api")
        assert _hist_mean(retriever, late, plateau_end) > 20 * _hist_mean(retriever, b0, b1)
        assert _hist_mean(rag, late, plateau_end) > 1.5 * _hist_mean(rag, b0, b1)
        err = otlp_metrics.filter(
            (pl.col("metric") == "errors") & (pl.col("service") == "rag-api") & (pl.col("region") == region)
        )
        per_second = _rate(err, late, plateau_end) / (plateau_end - late).total_seconds()
        assert per_second > 5 * (_rate(err, b0, b1) + 1) / (b1 - b0).total_seconds()


def test_kv_cache_exhaustion(
    labels: dict, prom: pl.DataFrame, otlp_metrics: pl.DataFrame, gpu_nodes: dict
) -> None:
    for inc in _incidents(labels, "kv_cache_exhaustion"):
        b0, b1, s, e = _windows(inc)
        nodes = gpu_nodes[(inc["root_cause"]["labels"]["region"], "m-large")]
        kv = prom.filter((pl.col("family") == "vllm:gpu_cache_usage_perc") & pl.col("instance").is_in(nodes))
        assert _between(kv, "ts_ms", s + timedelta(minutes=5), e)["value"].median() > 0.95
        assert _between(kv, "ts_ms", b0, b1)["value"].median() < 0.8
        pre = prom.filter(
            (pl.col("family") == "vllm:num_preemptions_total") & pl.col("instance").is_in(nodes)
        )
        grew = (
            _between(pre, "ts_ms", s, e)
            .group_by("instance")
            .agg(pl.col("value").max() - pl.col("value").min())
        )
        assert grew["value"].sum() > 0
        ttft = otlp_metrics.filter(
            (pl.col("metric") == "gen_ai.server.time_to_first_token") & pl.col("instance").is_in(nodes)
        )
        assert _hist_mean(ttft, s, e) > 3 * _hist_mean(ttft, b0, b1)


def test_token_inflation_raises_rag_tokens_and_cost(labels: dict, usage: pl.DataFrame) -> None:
    for inc in _incidents(labels, "token_inflation"):
        b0, b1, s, e = _windows(inc)
        rag = (
            usage.filter(pl.col("operation") == "rag")
            .group_by("ts", "metric")
            .agg(pl.col("value").sum())
            .pivot("metric", index="ts", values="value")
        )

        during = rag.filter(pl.col("ts").is_between(s, e, closed="left")).sum()
        before = rag.filter(pl.col("ts").is_between(b0, b1, closed="left")).sum()
        for metric, factor in (("input_tokens", 1.4), ("cost_usd", 1.2)):
            assert (
                during[metric][0] / during["requests"][0] > factor * before[metric][0] / before["requests"][0]
            )
        chat = usage.filter((pl.col("operation") == "chat") & (pl.col("metric") == "input_tokens"))
        assert chat.filter(pl.col("ts").is_between(s, e, closed="left"))["value"].sum() > 0


def test_prediction_drift_shifts_scores(labels: dict, otlp_metrics: pl.DataFrame) -> None:
    for inc in _incidents(labels, "prediction_drift"):
        b0, b1, s, e = _windows(inc)
        h = otlp_metrics.filter(pl.col("metric") == "prediction.score").with_columns(
            instance=pl.col("instance") + pl.col("model_version")
        )
        assert _hist_mean(h, s + timedelta(minutes=5), e) > _hist_mean(h, b0, b1) + 0.15


def test_memory_leak_ramps_and_restarts(labels: dict, otlp_metrics: pl.DataFrame, logs: pl.DataFrame) -> None:
    for inc in _incidents(labels, "memory_leak"):
        b0, b1, s, e = _windows(inc)
        svc, region = inc["root_cause"]["service"], inc["root_cause"]["labels"]["region"]
        mem = otlp_metrics.filter(
            (pl.col("metric") == "process.memory.usage")
            & (pl.col("service") == svc)
            & (pl.col("region") == region)
        )
        assert (
            _between(mem, "time", s, e)["value"].max() > 1.8 * _between(mem, "time", b0, b1)["value"].mean()
        )
        oom = logs.filter(
            (pl.col("service") == svc)
            & (pl.col("region") == region)
            & pl.col("body").str.contains("OOMKilled")
            & pl.col("time").is_between(_ns(s), _ns(e))
        )
        assert oom.height >= 1
        req = otlp_metrics.filter(
            (pl.col("metric") == "requests")
            & (pl.col("service") == svc)
            & (pl.col("region") == region)
            & pl.col("time").is_between(_ns(s) + 60_000_000_000, _ns(e))
        )
        assert req["start"].n_unique() > req["instance"].n_unique()  # counters restarted inside the window
        # nobody else leaks
        others = otlp_metrics.filter(
            (pl.col("metric") == "process.memory.usage")
            & (pl.col("service") != svc)
            & pl.col("time").is_between(_ns(s), _ns(e))
        )
        ratio = others.group_by("instance").agg(pl.col("value").max() / pl.col("value").min())
        assert ratio["value"].max() < 1.3


def test_decoders_accept_everything(run) -> None:
    """The ingest decoders (colleagues' modules) read the simulator's files with zero rejects."""
    otlp = pytest.importorskip("ingest.otlp")
    prometheus = pytest.importorskip("ingest.prometheus")
    out, _ = run
    tele = out / "telemetry"
    for signal in ("metrics", "traces", "logs"):
        for path in sorted((tele / signal).glob("*.json"))[:3]:
            batch = otlp.decode_otlp_json(path.read_bytes(), signal, str(path))
            assert batch.rejected == 0, batch.rejects[:3]
            assert batch.accepted > 0
    for path in sorted((tele / "prometheus").glob("*.prom"))[:3]:
        batch = prometheus.parse_prometheus_text(path.read_text(), str(path))
        assert batch.rejected == 0, batch.rejects[:3]
        assert batch.accepted > 0
        assert set(batch.series["service"].unique()) == {"llm-serving"}


@pytest.mark.slow
def test_whole_folder_ingests_without_rejects(run, store) -> None:
    """``rootwise ingest OUT/telemetry``: every file format detected and stored, nothing dead-lettered."""
    files = pytest.importorskip("ingest.files")
    out, m = run
    report = files.ingest_paths(store, [out / "telemetry"])
    assert report.rejected == 0 and report.ok
    assert store.count("points") == m["points"]
    assert store.count("histograms") == m["histogram_points"]
    assert store.count("spans") == m["spans"] and store.count("logs") == m["logs"]
    assert store.count("events") == m["events"] and store.count("ingest_rejects") == 0


@pytest.mark.slow
def test_large_scale_streams_in_bounded_chunks(tmp_path: Path) -> None:
    """Scale 20 (4,000 tenants): ~100k usage rows per simulated minute, written chunk by chunk."""
    m = simulate(tmp_path, days=15 / 1440, scale=20)
    assert m["tenants"] == 4000
    assert m["chunk_minutes"] < 60  # sub-hour chunks keep memory bounded
    assert m["usage_rows"] / 15 > 80_000
    parquet = [f for f in m["files"] if f["format"] == "parquet-long"]
    assert len(parquet) == -(-15 // m["chunk_minutes"])
