"""``rootwise bench ingest``: ingest throughput of every path against DuckDB's own append ceiling.

Measured in one run on the same machine:

* ceiling — the benchmark's points as ready-made Arrow tables ``(series_id, ts, value)`` appended straight into
  a DuckDB table with plain ``INSERT`` (no decoding, no de-duplication): the most any path could reach;
* (a) Parquet long-format file → ``rootwise ingest`` path (streamed read, series ids, idempotent append);
* (b) OTLP/HTTP JSON to ``rootwise serve`` in its own process, 4 concurrent clients;
* (c) OTLP/HTTP protobuf, same;
* peak RSS of a separate process ingesting a big Parquet file (default 100 M points).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

T0_S = 1_767_225_600  # 2026-01-01T00:00Z, fixed so runs are comparable
N_SERIES = 10_000


def _labels(n_series: int) -> dict[str, np.ndarray]:
    idx = np.arange(n_series)
    return {
        "tenant": np.array([f"t-{i % 500:04d}" for i in idx]),
        "model": np.array([f"m-{(i // 500) % 4}" for i in idx]),
        "region": np.array(["us-east", "us-west", "eu-west"])[(idx // 2000) % 3],
        "instance": np.array([f"node-{i % 7}" for i in idx]),
    }


def long_chunks(points: int, *, n_series: int = N_SERIES, chunk: int = 1_000_000) -> Iterator[pa.Table]:
    """The benchmark's data in the long schema, time-ordered, in Arrow chunks of ``chunk`` rows."""
    labels = _labels(n_series)
    metrics = np.array(["requests_total", "latency_ms", "tokens_out_total", "gpu_util"])[
        np.arange(n_series) % 4
    ]
    services = np.array(["gateway", "rag-api", "llm-serving", "embedder"])[np.arange(n_series) % 4]
    rng = np.random.default_rng(0)
    per_chunk = max(1, chunk // n_series)
    steps = points // n_series
    for s0 in range(0, steps, per_chunk):
        k = min(per_chunk, steps - s0)
        ts = np.repeat((T0_S + (s0 + np.arange(k)) * 60) * 1_000_000, n_series).astype("datetime64[us]")
        cols = {
            "ts": pa.array(ts),
            "metric": pa.DictionaryArray.from_arrays(
                np.tile(np.arange(n_series) % 4, k).astype(np.int32), pa.array(np.unique(metrics))
            ),
            "value": pa.array(rng.random(k * n_series) * 100.0),
            "service": pa.array(np.tile(services, k)).dictionary_encode(),
        }
        for name, values in labels.items():
            cols[name] = pa.array(np.tile(values, k)).dictionary_encode()
        yield pa.table(cols)


def write_parquet(path: Path, points: int) -> int:
    """Write ``points`` long-format rows to ``path``; returns rows written."""
    writer = None
    rows = 0
    for table in long_chunks(points):
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table, row_group_size=1_000_000)
        rows += table.num_rows
    if writer is not None:
        writer.close()
    return rows


def prometheus_page(n_lines: int) -> bytes:
    """A vLLM/DCGM-like page: gauges, counters and histograms with realistic label sets."""
    out: list[str] = []
    family = 0
    les = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf"]
    while len(out) < n_lines:
        family += 1
        if family % 3 == 0:
            out.append(f"# TYPE lat_{family}_seconds histogram")
            for i in range(5):
                for k, le in enumerate(les):
                    out.append(f'lat_{family}_seconds_bucket{{model_name="m{i}",le="{le}"}} {k * 3}')
                out.append(f'lat_{family}_seconds_sum{{model_name="m{i}"}} {k * 0.7}')
                out.append(f'lat_{family}_seconds_count{{model_name="m{i}"}} {k * 3}')
        elif family % 3 == 1:
            out.append(f"# TYPE requests_{family}_total counter")
            for i in range(50):
                out.append(
                    f'requests_{family}_total{{method="GET",code="200",path="/v1/x{i}"}} {i * 1000 + family}'
                )
        else:
            out.append(f"# TYPE DCGM_FI_DEV_{family} gauge")
            for i in range(50):
                out.append(
                    f'DCGM_FI_DEV_{family}{{gpu="{i}",UUID="GPU-{i:08x}",Hostname="node-1"}} {i + 0.5}'
                )
    return ("\n".join(out[:n_lines]) + "\n").encode()


def bench_prometheus(lines: int = 100_000) -> dict[str, Any]:
    """Parse a synthetic exposition page (best of 3) and report lines/s and samples/s."""
    from ingest.prometheus import parse_prometheus_text

    page = prometheus_page(lines)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        batch = parse_prometheus_text(page, "bench", service="bench", default_ts_ns=T0_S * 10**9)
        best = min(best, time.perf_counter() - t)
    samples = batch.points.height + batch.histograms.height
    return {"lines": lines, "seconds": best, "lines_per_s": lines / best, "points_per_s": samples / best}


def _timed_inserts(db: Path, tables: list[pa.Table]) -> dict[str, Any]:
    """Append ``tables`` into a fresh DuckDB table (created like the first) with plain ``INSERT``s, timed."""
    import duckdb

    con = duckdb.connect(str(db))
    con.register("b", tables[0])
    con.execute("CREATE TABLE target AS SELECT * FROM b LIMIT 0")
    con.unregister("b")
    t = time.perf_counter()
    for arrow_table in tables:
        con.register("b", arrow_table)
        con.execute("INSERT INTO target SELECT * FROM b")
        con.unregister("b")
    elapsed = time.perf_counter() - t
    n = con.execute("SELECT count(*) FROM target").fetchone()[0]
    con.close()
    return {"points": n, "seconds": elapsed, "points_per_s": n / elapsed}


def bench_ceiling(path: Path, db: Path) -> dict[str, Any]:
    """Plain Arrow → DuckDB INSERT of the same points (ids precomputed outside the timing)."""
    from ingest.longformat import long_frame_to_batch

    tables = []
    for i, batch in enumerate(pq.ParquetFile(path).iter_batches(batch_size=1_000_000)):
        frame = pl.from_arrow(batch)
        tables.append(long_frame_to_batch(frame, str(path), first_row=i).points.to_arrow())
    return _timed_inserts(db, tables)


def bench_ceiling_long(path: Path, db: Path) -> dict[str, Any]:
    """The file's long rows as they are (strings and labels, already in memory) → DuckDB ``INSERT``.

    The looser reading of "the same data appended straight into DuckDB": no series identity, no validation,
    no de-duplication, but the same columns the file has.
    """
    tables = [pa.Table.from_batches([b]) for b in pq.ParquetFile(path).iter_batches(batch_size=1_000_000)]
    return _timed_inserts(db, tables)


def bench_parquet(path: Path, db: Path) -> dict[str, Any]:
    from ingest.files import ingest_paths
    from ingest.store import Store

    store = Store(db)
    t = time.perf_counter()
    report = ingest_paths(store, [path])
    elapsed = time.perf_counter() - t
    n = store.count("points")
    store.close()
    return {
        "points": n,
        "accepted": report.accepted,
        "rejected": report.rejected,
        "seconds": elapsed,
        "points_per_s": n / elapsed,
    }


# -- OTLP over HTTP ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def otlp_payloads(
    total_points: int, *, series_per_request: int = 1000, points_per_series: int = 5
) -> Iterator[tuple[int, dict[str, Any]]]:
    """OTLP JSON ExportMetricsServiceRequest dicts: gauges of ``series_per_request`` series × points each."""
    per_request = series_per_request * points_per_series
    labels = _labels(series_per_request)
    attrs = [
        [{"key": k, "value": {"stringValue": str(labels[k][i])}} for k in labels]
        for i in range(series_per_request)
    ]
    rng = np.random.default_rng(1)
    for r in range(total_points // per_request):
        base = T0_S + r * points_per_series * 60
        values = rng.random((series_per_request, points_per_series)) * 100
        dps = [
            {
                "attributes": attrs[i],
                "timeUnixNano": str((base + j * 60) * 10**9),
                "asDouble": float(values[i, j]),
            }
            for i in range(series_per_request)
            for j in range(points_per_series)
        ]
        yield (
            per_request,
            {
                "resourceMetrics": [
                    {
                        "resource": {
                            "attributes": [{"key": "service.name", "value": {"stringValue": "llm-serving"}}]
                        },
                        "scopeMetrics": [
                            {
                                "scope": {"name": "bench"},
                                "metrics": [
                                    {"name": "gpu_util", "unit": "%", "gauge": {"dataPoints": dps}},
                                ],
                            }
                        ],
                    }
                ]
            },
        )


def _to_protobuf(payload: dict[str, Any]) -> bytes:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    return json_format.ParseDict(payload, ExportMetricsServiceRequest()).SerializeToString()


def bench_otlp(db: Path, *, encoding: str, total_points: int, clients: int = 4) -> dict[str, Any]:
    """Send OTLP metrics to a ``rootwise serve`` subprocess from ``clients`` threads."""
    import orjson

    bodies = []
    for n, payload in otlp_payloads(total_points):
        bodies.append((n, orjson.dumps(payload) if encoding == "json" else _to_protobuf(payload)))
    ctype = "application/json" if encoding == "json" else "application/x-protobuf"
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--db", str(db), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_healthy(port, server)
        queue = list(reversed(bodies))
        lock = threading.Lock()
        sent = [0]
        failures: list[str] = []

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            while True:
                with lock:
                    if not queue:
                        break
                    n, body = queue.pop()
                while True:
                    conn.request("POST", "/v1/metrics", body=body, headers={"Content-Type": ctype})
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status == 200:
                        break
                    if resp.status in (429, 503):  # back-pressure: retry after a moment, as exporters do
                        time.sleep(0.05)
                        continue
                    failures.append(f"HTTP {resp.status}")
                    break
                with lock:
                    sent[0] += n
            conn.close()

        threads = [threading.Thread(target=client) for _ in range(clients)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - t
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    from ingest.store import Store

    with Store(db) as store:
        stored = store.count("points")
    return {
        "encoding": encoding,
        "clients": clients,
        "points_sent": sent[0],
        "points_stored": stored,
        "failures": len(failures),
        "seconds": elapsed,
        "points_per_s": sent[0] / elapsed,
    }


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"rootwise serve exited early: {proc.stderr.read().decode(errors='replace')[-2000:]}"
            )
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("rootwise serve did not become healthy in time")


def bench_big_rss(path: Path, db: Path) -> dict[str, Any]:
    """Ingest a big Parquet file in a fresh process and report its peak RSS."""
    code = (
        "import json, resource, time\n"
        "from pathlib import Path\n"
        "from ingest.files import ingest_paths\n"
        "from ingest.store import Store\n"
        f"s = Store({str(db)!r}); t = time.perf_counter()\n"
        f"r = ingest_paths(s, [Path({str(path)!r})]); e = time.perf_counter() - t\n"
        "n = s.count('points'); s.close()\n"
        "print(json.dumps({'points': n, 'seconds': e, 'points_per_s': n / e,\n"
        "  'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_ingest(*, points: int, big_points: int, out: Path) -> dict[str, Any]:
    """Run every ingest benchmark; write JSON to ``out`` and return the results with a text summary."""
    from rich.console import Console

    console = Console(stderr=True)
    work = Path(tempfile.mkdtemp(prefix="rootwise-bench-"))
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "points": points}
    try:
        parquet = work / "long.parquet"
        console.print(f"writing {points:,} long-format points to {parquet}")
        write_parquet(parquet, points)
        console.print("ceiling: Arrow → DuckDB INSERT")
        results["ceiling"] = bench_ceiling(parquet, work / "ceiling.duckdb")
        console.print("ceiling, long rows as they are: Arrow → DuckDB INSERT")
        results["ceiling_long"] = bench_ceiling_long(parquet, work / "ceiling-long.duckdb")
        console.print("(a) Parquet long format → rootwise ingest")
        results["parquet"] = bench_parquet(parquet, work / "parquet.duckdb")
        results["parquet"]["ratio_to_ceiling"] = (
            results["parquet"]["points_per_s"] / results["ceiling"]["points_per_s"]
        )
        results["parquet"]["ratio_to_ceiling_long"] = (
            results["parquet"]["points_per_s"] / results["ceiling_long"]["points_per_s"]
        )
        console.print("(d) Prometheus text exposition parse, 100k lines")
        results["prometheus"] = bench_prometheus()
        otlp_points = min(points, 2_000_000)
        for enc in ("json", "protobuf"):
            console.print(
                f"({'b' if enc == 'json' else 'c'}) OTLP/HTTP {enc}, 4 clients, {otlp_points:,} points"
            )
            results[f"otlp_{enc}"] = bench_otlp(
                work / f"otlp-{enc}.duckdb", encoding=enc, total_points=otlp_points
            )
        if big_points:
            big = work / "big.parquet"
            console.print(f"peak RSS: writing and ingesting {big_points:,} points in a fresh process")
            parquet.unlink()
            write_parquet(big, big_points)
            results["big_parquet"] = bench_big_rss(big, work / "big.duckdb")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    targets = {
        "parquet_ratio>=0.7": results["parquet"]["ratio_to_ceiling"] >= 0.7,
        "parquet_ratio_to_long_rows>=0.7": results["parquet"]["ratio_to_ceiling_long"] >= 0.7,
        "parquet>=2M/s": results["parquet"]["points_per_s"] >= 2e6,
        "otlp_json>=200k/s": results["otlp_json"]["points_per_s"] >= 2e5,
        "otlp_protobuf>=200k/s": results["otlp_protobuf"]["points_per_s"] >= 2e5,
    }
    if "big_parquet" in results:
        targets["big_parquet_rss<1.5GB"] = results["big_parquet"]["peak_rss_mb"] < 1536
    results["targets_met"] = targets
    lines = [
        f"ceiling (Arrow → DuckDB):   {results['ceiling']['points_per_s']:>14,.0f} points/s",
        f"ceiling, long rows:         {results['ceiling_long']['points_per_s']:>14,.0f} points/s",
        f"(a) Parquet long format:    {results['parquet']['points_per_s']:>14,.0f} points/s "
        f"({results['parquet']['ratio_to_ceiling']:.2f} of ceiling, "
        f"{results['parquet']['ratio_to_ceiling_long']:.2f} of the long-row ceiling)",
        f"(b) OTLP/HTTP JSON ×4:      {results['otlp_json']['points_per_s']:>14,.0f} points/s",
        f"(c) OTLP/HTTP protobuf ×4:  {results['otlp_protobuf']['points_per_s']:>14,.0f} points/s",
        f"(d) Prometheus text parse:  {results['prometheus']['lines_per_s']:>14,.0f} lines/s",
    ]
    if "big_parquet" in results:
        b = results["big_parquet"]
        lines.append(
            f"big Parquet {b['points']:,} points: {b['points_per_s']:,.0f} points/s, "
            f"peak RSS {b['peak_rss_mb']:,.0f} MB"
        )
    lines.append("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    results["summary"] = "\n".join(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({k: v for k, v in results.items() if k != "summary"}, indent=2))
    return results
