"""Prometheus text exposition decoding, checked through the real store (DuckDB file)."""

from __future__ import annotations

import bisect
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from app.bench import prometheus_page
from ingest.prometheus import MAX_LABEL_VALUE_LEN, looks_like_prometheus, parse_prometheus_text

FIXTURES = Path(__file__).parent / "fixtures" / "prometheus"
TS_NS = 1_750_000_000_000_000_000
TS = datetime.fromtimestamp(TS_NS / 1e9, UTC).replace(tzinfo=None)


def points(store, metric: str) -> list[tuple]:
    """(kind, service, labels, ts, value) of every stored point of ``metric``, ordered by labels."""
    return (
        store.cursor()
        .execute(
            """SELECT s.kind, s.service, s.labels, p.ts, p.value FROM series s JOIN points p USING (series_id)
           WHERE s.metric = ? ORDER BY CAST(s.labels AS VARCHAR), p.ts""",
            [metric],
        )
        .fetchall()
    )


def value(store, metric: str, **labels: str) -> float:
    """The single stored value of ``metric`` with exactly ``labels``."""
    found = [r[4] for r in points(store, metric) if r[2] == labels]
    assert len(found) == 1, (metric, labels, points(store, metric))
    return found[0]


def histogram(store, metric: str) -> dict:
    rows = (
        store.cursor()
        .execute(
            """SELECT s.kind, s.service, s.labels, h.ts, h.count, h.sum, h.bounds, h.counts, h.cumulative
           FROM series s JOIN histograms h USING (series_id) WHERE s.metric = ?""",
            [metric],
        )
        .fetchall()
    )
    assert len(rows) == 1, (metric, rows)
    keys = ("kind", "service", "labels", "ts", "count", "sum", "bounds", "counts", "cumulative")
    return dict(zip(keys, rows[0], strict=True))


def metrics(store) -> dict[str, str]:
    return dict(store.cursor().execute("SELECT DISTINCT metric, kind FROM series").fetchall())


def per_bucket(bounds: list[float], observations: list[float]) -> list[float]:
    """Expected per-bucket counts: an observation falls in the first bucket whose bound is >= it."""
    counts = [0.0] * (len(bounds) + 1)
    for o in observations:
        counts[bisect.bisect_left(bounds, o)] += 1
    return counts


# -- text written by the real prometheus_client library -------------------------------------------------


def test_prometheus_client_exposition_round_trips_through_the_store(store):
    reg = CollectorRegistry()
    tricky = 'say "hi"\\ to\nme'
    requests = Counter("requests", "Requests served.", ["path", "tenant"], registry=reg)
    requests.labels("/v1/chat", tricky).inc(5)
    requests.labels("/v1/embed", "t2").inc(2.5)
    Counter("restarts", "Restarts.", registry=reg).inc(3)
    Gauge("queue_depth", "Queue depth.", ["model"], registry=reg).labels("llama").set(17.5)
    Gauge("temperature_celsius", "Temperature.", registry=reg).set(-3.25)
    latency = Histogram("latency_seconds", "Latency.", ["model"], buckets=[0.1, 0.5, 1.0], registry=reg)
    for v in (0.05, 0.2, 0.3, 0.7, 5.0):
        latency.labels("llama").observe(v)
    Histogram("size_bytes", "Size.", buckets=[10, 100], registry=reg).observe(50)
    tokens = Summary("tokens", "Tokens.", ["model"], registry=reg)
    tokens.labels("llama").observe(10)
    tokens.labels("llama").observe(30)

    batch = parse_prometheus_text(generate_latest(reg), "client", service="api", default_ts_ns=TS_NS)
    assert batch.rejects == []
    store.append(batch)

    assert metrics(store) == {
        "requests_total": "counter",
        "restarts_total": "counter",
        "queue_depth": "gauge",
        "temperature_celsius": "gauge",
        "latency_seconds": "histogram",
        "size_bytes": "histogram",
        "tokens_sum": "counter",
        "tokens_count": "counter",
    }  # and no *_created series
    assert value(store, "requests_total", path="/v1/chat", tenant=tricky) == 5.0
    assert value(store, "requests_total", path="/v1/embed", tenant="t2") == 2.5
    assert value(store, "restarts_total") == 3.0
    assert value(store, "queue_depth", model="llama") == 17.5
    assert value(store, "temperature_celsius") == -3.25
    assert value(store, "tokens_sum", model="llama") == 40.0
    assert value(store, "tokens_count", model="llama") == 2.0
    assert {r[1] for m in ("requests_total", "queue_depth") for r in points(store, m)} == {"api"}
    assert {r[3] for r in points(store, "requests_total")} == {TS}

    h = histogram(store, "latency_seconds")
    assert h["labels"] == {"model": "llama"}
    assert h["bounds"] == [0.1, 0.5, 1.0]
    assert h["counts"] == [1.0, 2.0, 1.0, 1.0]
    assert (h["count"], h["sum"], h["cumulative"], h["ts"]) == (5.0, 6.25, True, TS)
    h = histogram(store, "size_bytes")
    assert (h["bounds"], h["counts"], h["count"], h["sum"]) == ([10.0, 100.0], [0.0, 1.0, 0.0], 1.0, 50.0)


def test_openmetrics_exposition_of_prometheus_client_is_accepted(store):
    reg = CollectorRegistry()
    Counter("jobs", "Jobs.", ["queue"], registry=reg).labels("q1").inc(4)
    Histogram("wait_seconds", "Wait.", buckets=[1.0], registry=reg).observe(0.5)
    text = generate_openmetrics(reg)
    assert text.endswith(b"# EOF\n")

    batch = parse_prometheus_text(text, "om", service="worker", default_ts_ns=TS_NS)
    assert batch.rejects == []
    store.append(batch)
    assert metrics(store) == {"jobs_total": "counter", "wait_seconds": "histogram"}
    assert value(store, "jobs_total", queue="q1") == 4.0
    h = histogram(store, "wait_seconds")
    assert (h["bounds"], h["counts"], h["count"], h["sum"]) == ([1.0], [1.0, 0.0], 1.0, 0.5)


@settings(max_examples=60, deadline=None)
@given(
    label=st.text(min_size=1, max_size=40),
    number=st.floats(allow_nan=False, allow_infinity=False),
)
def test_any_label_value_and_float_survive_prometheus_client_escaping(label, number):
    reg = CollectorRegistry()
    Gauge("g", "G.", ["v"], registry=reg).labels(label).set(number)
    batch = parse_prometheus_text(generate_latest(reg), "hyp", service="s", default_ts_ns=TS_NS)
    assert batch.rejects == []
    assert batch.series["labels"].to_list() == [[{"key": "v", "value": label}]]
    assert batch.points["value"].to_list() == [number]


# -- real exporters' metric names (fixtures, see fixtures/prometheus/README.md) ----------------------------

VLLM_LABELS = {"model_name": "meta-llama/Llama-3.1-8B-Instruct", "engine": "0"}


def test_vllm_metrics(store):
    batch = parse_prometheus_text((FIXTURES / "vllm.prom").read_bytes(), "vllm.prom", default_ts_ns=TS_NS)
    assert batch.rejects == []
    store.append(batch)

    assert value(store, "vllm:num_requests_running", **VLLM_LABELS) == 3.0
    assert value(store, "vllm:num_requests_waiting", **VLLM_LABELS) == 7.0
    assert value(store, "vllm:gpu_cache_usage_perc", **VLLM_LABELS) == 0.42
    assert value(store, "vllm:kv_cache_usage_perc", **VLLM_LABELS) == 0.42
    assert value(store, "vllm:prompt_tokens_total", **VLLM_LABELS) == 123456.0
    assert value(store, "vllm:generation_tokens_total", **VLLM_LABELS) == 654321.0
    for reason, n in (("stop", 950.0), ("length", 50.0), ("abort", 0.0)):
        assert value(store, "vllm:request_success_total", finished_reason=reason, **VLLM_LABELS) == n
    kinds = metrics(store)
    assert kinds["vllm:prompt_tokens_total"] == "counter"
    assert kinds["vllm:num_requests_running"] == "gauge"
    assert not [m for m in kinds if m.endswith("_created")]
    assert {r[1] for r in points(store, "vllm:num_requests_running")} == {"unknown_service"}  # no job label

    ttft = histogram(store, "vllm:time_to_first_token_seconds")
    bounds = [
        0.001,
        0.005,
        0.01,
        0.02,
        0.04,
        0.06,
        0.08,
        0.1,
        0.25,
        0.5,
        0.75,
        1.0,
        2.5,
        5.0,
        7.5,
        10.0,
        20.0,
    ]
    bounds += [40.0, 80.0, 160.0, 640.0, 2560.0]
    observed = [0.03, 0.07, 0.09, 0.2, 0.3, 1.2, 3.0]
    assert ttft["kind"] == "histogram" and ttft["labels"] == VLLM_LABELS
    assert ttft["bounds"] == bounds
    assert ttft["counts"] == per_bucket(bounds, observed)
    assert ttft["count"] == 7.0 and ttft["sum"] == pytest.approx(sum(observed))
    for name in ("vllm:time_per_output_token_seconds", "vllm:inter_token_latency_seconds"):
        h = histogram(store, name)
        assert h["count"] == 4.0 and h["counts"] == per_bucket(h["bounds"], [0.02, 0.03, 0.04, 0.06])
    e2e = histogram(store, "vllm:e2e_request_latency_seconds")
    assert e2e["counts"] == per_bucket(e2e["bounds"], [0.4, 0.9, 2.2, 12.0])
    assert e2e["bounds"][0] == 0.3 and e2e["bounds"][-1] == 7680.0


def test_triton_metrics(store):
    batch = parse_prometheus_text(
        (FIXTURES / "triton.prom").read_text(), "triton.prom", service="triton", default_ts_ns=TS_NS
    )
    assert batch.rejects == []
    store.append(batch)
    kinds = metrics(store)
    # Triton's counters are typed counters without a _total suffix: stored as exposed, kind counter
    for name in (
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_energy_consumption",
    ):
        assert kinds[name] == "counter", name
    assert value(store, "nv_inference_request_success", model="llama3-8b", version="2") == 4210.0
    assert value(store, "nv_inference_request_failure", model="llama3-8b", version="2") == 12.0
    assert value(store, "nv_inference_count", model="resnet50", version="1") == 1288.0
    assert value(store, "nv_inference_exec_count", model="llama3-8b", version="2") == 3977.0
    assert value(store, "nv_inference_request_duration_us", model="resnet50", version="1") == 1.234e6
    assert value(store, "nv_inference_queue_duration_us", model="llama3-8b", version="2") == 2.5e6
    gpu = {"gpu_uuid": "GPU-340cec52-80ba-c0df-8511-5f9680aae0ed"}
    assert kinds["nv_gpu_utilization"] == "gauge"
    assert value(store, "nv_gpu_utilization", **gpu) == 0.87
    assert value(store, "nv_gpu_memory_used_bytes", **gpu) == 617611264.0
    assert value(store, "nv_gpu_memory_total_bytes", **gpu) == 16101933056.0

    quantiles = {r[2]["quantile"]: r[4] for r in points(store, "nv_inference_queue_summary_us")}
    assert quantiles == {"0.5": 55.0, "0.9": 97.0, "0.95": 98.0, "0.99": 101.0, "0.999": 101.0}
    assert kinds["nv_inference_queue_summary_us"] == "summary"
    assert kinds["nv_inference_queue_summary_us_sum"] == "counter"
    assert value(store, "nv_inference_queue_summary_us_sum", model="resnet50", version="1") == 11110.0
    assert value(store, "nv_inference_queue_summary_us_count", model="resnet50", version="1") == 161.0


def test_dcgm_exporter_metrics(store):
    batch = parse_prometheus_text((FIXTURES / "dcgm.prom").read_bytes(), "dcgm.prom", service="dcgm")
    assert batch.rejects == []
    store.append(batch)
    gpu0 = {
        "gpu": "0",
        "UUID": "GPU-74f7fe3b-48f2-6d8b-3cb4-e70426fb669c",
        "pci_bus_id": "00000000:00:04.0",
        "device": "nvidia0",
        "modelName": "NVIDIA A100-SXM4-80GB",
        "Hostname": "gpu-node-1",
    }  # container="", namespace="", pod="" are dropped: an empty label is an absent label
    gpu1 = {
        **gpu0,
        "gpu": "1",
        "UUID": "GPU-f3a2185e-464d-c671-4057-0d056df64b6e",
        "pci_bus_id": "00000000:00:05.0",
        "device": "nvidia1",
        "container": "vllm",
        "namespace": "inference",
        "pod": "vllm-7d9f8-abcde",
    }
    assert value(store, "DCGM_FI_DEV_GPU_UTIL", **gpu0) == 0.0
    assert value(store, "DCGM_FI_DEV_GPU_UTIL", **gpu1) == 93.0
    assert value(store, "DCGM_FI_DEV_FB_USED", **gpu1) == 74524.0
    assert value(store, "DCGM_FI_DEV_FB_FREE", **gpu1) == 6513.0
    assert value(store, "DCGM_FI_DEV_GPU_TEMP", **gpu1) == 67.0
    assert value(store, "DCGM_FI_DEV_POWER_USAGE", **gpu0) == 61.187
    assert metrics(store)["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == "counter"
    assert store.count("points") == 14


# -- malformed input --------------------------------------------------------------------------------------


def test_bad_lines_are_dead_lettered_with_line_numbers_and_good_lines_kept(store):
    huge = b"x" * (MAX_LABEL_VALUE_LEN + 1)
    lines = [
        b"# TYPE good gauge",  # 1
        b'good{a="1"} 1',  # 2
        b'bad_escape{a="x\\q"} 1',  # 3
        b'missing_value{a="1"}',  # 4
        b"{{{ junk",  # 5
        b'latin1{a="caf\xe9"} 1',  # 6
        b'huge{a="' + huge + b'"} 1',  # 7
        b"nan_value NaN",  # 8
        b'good{a="2"} 2',  # 9
        b'unterminated{a="1} 1',  # 10
        b"bad_ts 1 12x",  # 11
        b'dup{a="1",a="2"} 1',  # 12
        b"# TYPE weird nonsense",  # 13
        b"minus_inf -Inf",  # 14
        b'good{a="3"} 3 1700000000000',  # 15
        b"not_a_number 1,5",  # 16
        b"too many tokens here",  # 17
        b"ancient 1 5",  # 18 (5 ms after the epoch)
    ]
    batch = parse_prometheus_text(b"\n".join(lines) + b"\n", "bad.prom", service="s", default_ts_ns=TS_NS)
    reasons = {int(r.location.split()[1]): r.reason for r in batch.rejects}
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18]
    for n, reason in reasons.items():
        assert f"line {n}" not in reason  # the location says it, once
    assert "invalid escape sequence '\\\\q'" in reasons[3] and "expected" in reasons[3]
    assert "expected a sample value" in reasons[4]
    assert "expected a metric name" in reasons[5]
    assert "not valid UTF-8" in reasons[6]
    assert f"expected at most {MAX_LABEL_VALUE_LEN}" in reasons[7]
    assert "NaN is not a finite number" in reasons[8]
    assert "not closed" in reasons[10]
    assert "expected an integer timestamp in milliseconds" in reasons[11]
    assert "appears more than once" in reasons[12]
    assert "expected '# TYPE weird <type>'" in reasons[13]
    assert "-Inf is not a finite number" in reasons[14]
    assert "expected a float sample value" in reasons[16]
    assert "got 3 tokens" in reasons[17]
    assert "outside the accepted range" in reasons[18]
    raw = {int(r.location.split()[1]): r.raw for r in batch.rejects}
    assert raw[6] == lines[5] and raw[7] == lines[6]  # the original bytes are kept

    store.append(batch)
    assert [(r[2], r[4]) for r in points(store, "good")] == [
        ({"a": "1"}, 1.0),
        ({"a": "2"}, 2.0),
        ({"a": "3"}, 3.0),
    ]
    assert store.count("points") == 3
    stored = (
        store.cursor()
        .execute("SELECT location, reason, raw FROM ingest_rejects ORDER BY reject_id")
        .fetchall()
    )
    assert len(stored) == 14 and stored[3] == ("line 6", reasons[6], lines[5])


def test_broken_histograms_are_rejected_whole_with_their_line_range(store):
    text = "\n".join(
        [
            "# TYPE h histogram",  # 1
            'h_bucket{le="1"} 2',  # 2
            'h_bucket{le="2"} 1',  # 3  decreasing
            'h_bucket{le="+Inf"} 3',  # 4
            "h_count 3",  # 5
            "# TYPE h2 histogram",  # 6
            'h2_bucket{le="1"} 2',  # 7  no +Inf
            "h2_count 2",  # 8
            "# TYPE h3 histogram",  # 9
            'h3_bucket{le="+Inf"} 4',  # 10
            "h3_count 5",  # 11 count differs from +Inf bucket
            "# TYPE h4 histogram",  # 12
            'h4_bucket{le="+Inf"} 4',  # 13 only the +Inf bucket: valid
            "h4_sum 10",  # 14
            "# TYPE h5 histogram",  # 15
            "h5 1",  # 16 not a histogram sample name
            'h5_bucket{le="abc"} 1',  # 17
            'h5_bucket{x="1"} 1',  # 18
        ]
    )
    batch = parse_prometheus_text(text, "hist.prom", service="s", default_ts_ns=TS_NS)
    reasons = {r.location: r.reason for r in batch.rejects}
    assert set(reasons) == {"lines 2-5", "lines 7-8", "lines 10-11", "line 16", "line 17", "line 18"}
    assert reasons["lines 2-5"].startswith("histogram 'h': bucket counts decrease with le")
    assert 'no le="+Inf" bucket' in reasons["lines 7-8"]
    assert '_count is 5.0 but the le="+Inf" bucket is 4.0' in reasons["lines 10-11"]
    assert "exposes only _bucket, _sum and _count" in reasons["line 16"]
    assert "expected a float le bound" in reasons["line 17"]
    assert "has no le label" in reasons["line 18"]
    assert [r.raw for r in batch.rejects if r.location == "lines 7-8"] == [b'h2_bucket{le="1"} 2\nh2_count 2']
    store.append(batch)
    h = histogram(store, "h4")
    assert (h["bounds"], h["counts"], h["count"], h["sum"]) == ([], [4.0], 4.0, 10.0)
    assert store.count("histograms") == 1


# -- format details ---------------------------------------------------------------------------------------


def test_format_details(store):
    text = (
        "# a plain comment\r\n"
        "\r\n"
        "   \t\r\n"
        "# HELP spaced Help text with \\\\ and \\n escapes.\r\n"
        "# TYPE spaced gauge\r\n"
        '  spaced { a = "1" , b="2", }\t7\t1700000000000\r\n'
        "spaced{} 8 1700000060000\r\n"
        "requests_total 12\n"
        "temperature 21.5\n"
        'le_without_histogram_bucket{le="0.5"} 3\n'
        "ratio 1e-3\n"
        "big +1.5E+10\n"
    )
    batch = parse_prometheus_text(text, "details", service="s", default_ts_ns=TS_NS)
    assert batch.rejects == []
    store.append(batch)
    rows = points(store, "spaced")
    assert sorted((r[3], r[2], r[4]) for r in rows) == [
        (datetime(2023, 11, 14, 22, 13, 20), {"a": "1", "b": "2"}, 7.0),
        (datetime(2023, 11, 14, 22, 14, 20), {}, 8.0),
    ]
    kinds = metrics(store)
    assert kinds["requests_total"] == "counter"  # untyped with _total suffix
    assert kinds["temperature"] == "gauge"  # untyped
    assert kinds["le_without_histogram_bucket"] == "gauge"
    assert value(store, "le_without_histogram_bucket", le="0.5") == 3.0
    assert value(store, "ratio") == 0.001 and value(store, "big") == 1.5e10


def test_openmetrics_timestamps_are_seconds_and_exemplars_are_ignored(store):
    text = (
        "# TYPE rpc_seconds histogram\n"
        "# UNIT rpc_seconds seconds\n"
        'rpc_seconds_bucket{le="0.1"} 8 1700000000.5 # {trace_id="abc123"} 0.05 1699999999.9\n'
        'rpc_seconds_bucket{le="+Inf"} 10 1700000000.5\n'
        "rpc_seconds_count 10 1700000000.5\n"
        "rpc_seconds_sum 1.5 1700000000.5\n"
        "rpc_seconds_created 1699990000.0\n"
        "# TYPE build info\n"
        'build_info{version="1.2.3"} 1\n'
        "# EOF\n"
    )
    batch = parse_prometheus_text(text, "om", service="rpc")
    assert batch.rejects == []
    store.append(batch)
    h = histogram(store, "rpc_seconds")
    assert h["ts"] == datetime(2023, 11, 14, 22, 13, 20, 500000)
    assert (h["bounds"], h["counts"], h["count"], h["sum"]) == ([0.1], [8.0, 2.0], 10.0, 1.5)
    assert store.cursor().execute("SELECT unit FROM series WHERE metric = 'rpc_seconds'").fetchone() == (
        "seconds",
    )
    assert value(store, "build_info", version="1.2.3") == 1.0


def test_service_comes_from_argument_then_job_label_and_instance_stays_a_label(store):
    text = (
        'up{job="node",instance="10.0.0.1:9100"} 1 1700000000000\n'
        'up{instance="10.0.0.2:9100"} 0 1700000000000\n'
        'up{job="",instance="10.0.0.3:9100"} 1 1700000000000\n'
    )
    store.append(parse_prometheus_text(text, "svc"))
    assert {(r[1], r[2]["instance"], "job" in r[2]) for r in points(store, "up")} == {
        ("node", "10.0.0.1:9100", False),
        ("unknown_service", "10.0.0.2:9100", False),
        ("unknown_service", "10.0.0.3:9100", False),
    }
    batch = parse_prometheus_text(text, "svc", service="explicit")
    assert set(batch.series["service"]) == {"explicit"}
    assert {"key": "job", "value": "node"} in batch.series["labels"].explode().to_list()


def test_default_timestamp_is_now_and_appending_twice_adds_nothing(store):
    before = datetime.now(UTC).replace(tzinfo=None)
    batch = parse_prometheus_text(b"a 1\nb 2\n", "now", service="s")
    (ts,) = set(batch.points["ts"].to_list())
    assert (
        before.replace(microsecond=before.microsecond // 1000 * 1000)
        <= ts
        <= datetime.now(UTC).replace(tzinfo=None)
    )
    assert ts.microsecond % 1000 == 0  # milliseconds, like Prometheus
    assert store.append(batch).inserted["points"] == 2
    assert store.append(batch).inserted["points"] == 0
    assert store.count("points") == 2


def test_histogram_parts_are_matched_whatever_the_label_order():
    text = (
        "# TYPE rpc_seconds histogram\n"
        'rpc_seconds_bucket{b="2",le="0.5",a="1"} 1\n'
        'rpc_seconds_bucket{le="+Inf",a="1",b="2"} 3\n'
        'rpc_seconds_sum{a="1",b="2"} 4.5\n'
        'rpc_seconds_count{b="2",a="1"} 3\n'
    )
    batch = parse_prometheus_text(text, "order", service="s", default_ts_ns=TS_NS)
    assert batch.rejects == []
    row = batch.histograms.row(0, named=True)
    assert (batch.histograms.height, row["counts"], row["sum"], row["count"]) == (1, [1.0, 2.0], 4.5, 3.0)


def test_concatenated_scrapes_repeat_type_lines_harmlessly(store):
    scrape = "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running {v} {ts}\n"
    text = scrape.format(v=1, ts=1700000000000) + scrape.format(v=2, ts=1700000015000)
    text += "# TYPE vllm:num_requests_running counter\n"  # line 5: a conflicting repeat
    batch = parse_prometheus_text(text, "dump", service="vllm")
    assert [(r.location, r.reason) for r in batch.rejects] == [
        (
            "line 5",
            "TYPE counter for 'vllm:num_requests_running' conflicts with the earlier TYPE gauge",
        )
    ]
    store.append(batch)
    assert [r[4] for r in points(store, "vllm:num_requests_running")] == [1.0, 2.0]


def test_gauge_histogram_is_folded_as_non_cumulative():
    text = (
        "# TYPE queue_size gaugehistogram\n"
        'queue_size_bucket{le="10"} 3\n'
        'queue_size_bucket{le="+Inf"} 5\n'
        "queue_size_gcount 5\n"
        "queue_size_gsum 70\n"
        "# EOF\n"
    )
    batch = parse_prometheus_text(text, "gh", service="s", default_ts_ns=TS_NS)
    assert batch.rejects == []
    row = batch.histograms.row(0, named=True)
    assert (row["bounds"], row["counts"], row["count"], row["sum"], row["cumulative"]) == (
        [10.0],
        [3.0, 2.0],
        5.0,
        70.0,
        False,
    )


def test_sniffing():
    for name in ("vllm.prom", "triton.prom", "dcgm.prom"):
        assert looks_like_prometheus((FIXTURES / name).read_bytes()[:4096]), name
    assert looks_like_prometheus(b'nv_gpu_utilization{gpu_uuid="GPU-1"} 0.5\nnv_cpu_utilization 0.25\n')
    assert looks_like_prometheus(b"# TYPE x counter\n")
    assert looks_like_prometheus(b"vllm:num_requests_running 3\r\nvllm:num_requests_waiting 1\r\n")
    for other in (
        b'{"resourceMetrics": [{"resource": {}}]}',
        b'{"ts": "2024-01-01T00:00:00Z", "service": "api", "kind": "deploy", "title": "v2"}\n',
        b"ts,metric,value,service\n2024-01-01T00:00:00,cpu,0.5,api\n",
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00",
        b"PAR1\x15\x04\x15",
        b"hello world\n",
        b"",
        b"# just a comment\n",
    ):
        assert not looks_like_prometheus(other), other


# -- speed ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_parses_a_100k_line_exposition():
    # its speed is measured by `rootwise bench ingest`, never asserted here
    batch = parse_prometheus_text(prometheus_page(100_000), "bench", service="s", default_ts_ns=TS_NS)
    assert batch.points.height + batch.histograms.height > 60_000
    assert batch.rejected <= 1  # at most the histogram cut in half by the 100k-line cap


def test_ingested_file_names_the_bad_line_once(store, tmp_path):
    from ingest.files import ingest_paths

    path = tmp_path / "bad.prom"
    path.write_text('# TYPE m gauge\nm{a="1"} 1\nm{a="1" b="2"} 1\n')
    report = ingest_paths(store, [path])
    assert (report.accepted, report.rejected) == (1, 1)
    reason = "expected ',' or '}' after the value of label 'a' at column 9"
    assert report.files[0].first_reasons == [f"line 3: {reason}"]
    stored = store.cursor().execute("SELECT location, reason FROM ingest_rejects").fetchall()
    assert stored == [("line 3", reason)]
