"""``rootwise bench serve``: sustained OTLP ingest into one ``rootwise serve`` while its scheduler detects every
minute and the app answers.

The load: ``series`` gauge series (default 10,000, the size of ``bench detect``) sent as OTLP/HTTP JSON by
``clients`` connections at a target of ``rate`` points/s (default 100,000) for ``seconds`` (default 300). Each
series has one point per *data* minute, and data time runs as fast as the load needs (at 100 k points/s and
10,000 series, ten data minutes per wall second), so every detection pass has real new points of every series
to score — the load of a fleet of 10,000 series scraped often, compressed. Bodies are built once with fixed-width
timestamp placeholders and stamped per request, so the client costs little of the two cores.

Measured (every figure from the server process, the app over HTTP, and ``/metrics``):

* ingest rate — points acknowledged (HTTP 200) per second over the run, and points stored at the end;
* detection lag — ``rootwise_detection_lag_seconds`` sampled every 2 s: the time since the start of the last
  completed detection pass, i.e. how long a point stored just before that start waited to be scored — p50/p95/max;
  plus the pass durations;
* app response — wall time of ``GET /`` and ``GET /_dash-layout`` and ``GET /api/v1/incidents`` during the load,
  p50/p95;
* RSS — peak resident memory of the server with its decode workers.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.bench import _free_port, _wait_healthy

TS_WIDTH = 19  # digits of a nanosecond timestamp
SERIES_PER_REQUEST = 1000
SERIES_PER_SERVICE = 40
POINTS_PER_SERIES = 5
TARGETS = {"ingest_points_per_s": 100_000, "detection_lag_p95_s": 60.0}


def _template(block: int, series_per_request: int, points: int, rng: np.random.Generator) -> bytes:
    """One request body for series ``block*n … block*n+n-1``, with placeholders ``@@j@@…`` per point slot.

    Services hold :data:`SERIES_PER_SERVICE` series each, under the detection's per-metric aggregation limit, so
    every series is scored on its own (as in ``bench detect``).
    """
    values = 50 + 10 * rng.standard_normal((series_per_request, points))
    resources = []
    for first in range(0, series_per_request, SERIES_PER_SERVICE):
        dps = []
        for i in range(first, min(first + SERIES_PER_SERVICE, series_per_request)):
            sid = block * series_per_request + i
            attrs = [
                {"key": "instance", "value": {"stringValue": f"i-{sid:06d}"}},
                {"key": "model", "value": {"stringValue": f"m-{sid % 7}"}},
            ]
            for j in range(points):
                placeholder = f"@@{j}@@".ljust(TS_WIDTH, "x")
                dps.append(
                    {
                        "attributes": attrs,
                        "timeUnixNano": placeholder,
                        "asDouble": round(float(values[i, j]), 3),
                    }
                )
        service = f"svc-{(block * series_per_request + first) // SERIES_PER_SERVICE:04d}"
        resources.append(
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeMetrics": [
                    {
                        "scope": {"name": "bench-serve"},
                        "metrics": [{"name": "queue_depth", "gauge": {"dataPoints": dps}}],
                    }
                ],
            }
        )
    return json.dumps({"resourceMetrics": resources}, separators=(",", ":")).encode()


def _stamp(template: bytes, first_minute: int, points: int, t0_ns: int) -> bytes:
    out = template
    for j in range(points):
        ts = str(t0_ns + (first_minute + j) * 60 * 10**9).rjust(TS_WIDTH, "0")
        out = out.replace(f"@@{j}@@".ljust(TS_WIDTH, "x").encode(), ts.encode())
    return out


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def bench_serve(
    *,
    series: int = 10_000,
    seconds: float = 300.0,
    rate: float = 100_000.0,
    clients: int = 4,
    out: Path,
    workdir: Path | None = None,
    detect_interval: str = "20s",
    detect_workers: int | None = None,
) -> dict[str, Any]:
    import psutil

    from app.scheduler import SchedulerSettings

    blocks = max(1, series // SERIES_PER_REQUEST)
    series = blocks * SERIES_PER_REQUEST
    rng = np.random.default_rng(1)
    templates = [_template(b, SERIES_PER_REQUEST, POINTS_PER_SERIES, rng) for b in range(blocks)]
    per_request = SERIES_PER_REQUEST * POINTS_PER_SERIES
    # data minutes the run will cover at the target rate; data time ends about now (detection and the app look
    # at recent data)
    data_minutes = int(rate * seconds / series) + POINTS_PER_SERIES
    t0_ns = (int(time.time()) // 60 - data_minutes) * 60 * 10**9
    tmp = Path(tempfile.mkdtemp(prefix="rootwise-bench-serve-", dir=workdir))
    db = tmp / "serve.duckdb"
    cfg = tmp / "rootwise.toml"
    workers = f"detect_workers = {int(detect_workers)}\n" if detect_workers is not None else ""
    cfg.write_text(f'[scheduler]\ndetect_interval = "{detect_interval}"\nreport_interval = "0s"\n{workers}')
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--db",
            str(db),
            "--port",
            str(port),
            "--config",
            str(cfg),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stop = threading.Event()
    lock = threading.Lock()
    acked = [0]
    refused = [0]
    failures: list[str] = []
    next_round = [0]  # rounds of all blocks; round r carries data minutes r*P … r*P+P-1
    lag: list[float] = []
    pass_seconds: list[float] = []
    app_ms: dict[str, list[float]] = {"/": [], "/_dash-layout": [], "/api/v1/incidents": []}
    rss_peak = [0.0]
    try:
        _wait_healthy(port, server)
        proc = psutil.Process(server.pid)
        started = time.perf_counter()
        budget_start = started

        def next_body() -> bytes | None:
            with lock:
                k = next_round[0]
                next_round[0] += 1
            r, b = divmod(k, blocks)
            return _stamp(templates[b], r * POINTS_PER_SERIES, POINTS_PER_SERIES, t0_ns)

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            while not stop.is_set():
                # pace to the target rate over the whole run (all clients share the budget)
                with lock:
                    due = budget_start + (acked[0] + per_request) / rate
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(min(wait, 0.5))
                    continue
                body = next_body()
                while not stop.is_set():
                    try:
                        conn.request(
                            "POST", "/v1/metrics", body=body, headers={"Content-Type": "application/json"}
                        )
                        resp = conn.getresponse()
                        resp.read()
                    except OSError as exc:
                        failures.append(f"{type(exc).__name__}: {exc}")
                        conn.close()
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                        time.sleep(0.2)
                        continue
                    if resp.status == 200:
                        with lock:
                            acked[0] += per_request
                        break
                    if resp.status in (429, 503):  # back-pressure: wait as exporters do
                        with lock:
                            refused[0] += 1
                        time.sleep(0.1)
                        continue
                    failures.append(f"HTTP {resp.status}")
                    break
            conn.close()

        def watcher() -> None:
            last_pass = None
            while not stop.wait(2.0):
                try:
                    rss = proc.memory_info().rss + sum(
                        c.memory_info().rss for c in proc.children(recursive=True)
                    )
                    rss_peak[0] = max(rss_peak[0], rss / 2**20)
                except psutil.Error:
                    pass
                for path in app_ms:
                    t = time.perf_counter()
                    try:
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                        conn.request("GET", path)
                        resp = conn.getresponse()
                        resp.read()
                        conn.close()
                        if resp.status == 200:
                            app_ms[path].append((time.perf_counter() - t) * 1000)
                        else:
                            failures.append(f"GET {path}: HTTP {resp.status}")
                    except OSError as exc:
                        failures.append(f"GET {path}: {exc}")
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    conn.request("GET", "/metrics")
                    text = conn.getresponse().read().decode()
                    conn.close()
                except OSError:
                    continue
                value = _metric(text, "rootwise_detection_lag_seconds")
                if value is not None:
                    lag.append(value)
                duration = _metric(text, "rootwise_detection_pass_seconds")
                ok = _metric(text, "rootwise_scheduler_passes_total")
                if duration is not None and ok is not None and ok != last_pass:
                    pass_seconds.append(duration)
                    last_pass = ok

        threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        threads.append(threading.Thread(target=watcher, daemon=True))
        for th in threads:
            th.start()
        progress = _progress(seconds)
        while (elapsed := time.perf_counter() - started) < seconds:
            time.sleep(1.0)
            if progress:
                progress(elapsed, acked[0] / max(elapsed, 1e-9))
        stop.set()
        for th in threads:
            th.join(timeout=150)
        wall = time.perf_counter() - started
    finally:
        stop.set()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=300)
        except subprocess.TimeoutExpired:
            server.kill()
    from ingest.store import Store

    with Store(db, read_only=True) as store:
        stored = store.count("points")
        incidents = store.count("incidents")
    rate_measured = acked[0] / wall
    lag_p95 = _percentile(lag, 95)
    results = {
        "series": series,
        "seconds": round(wall, 1),
        "clients": clients,
        "detect_workers": detect_workers or SchedulerSettings().detect_workers,
        "target_points_per_s": rate,
        "points_acked": acked[0],
        "points_stored": stored,
        "ingest_points_per_s": round(rate_measured),
        "refused_requests_429_503": refused[0],
        "failures": failures[:20],
        "detection_passes": len(pass_seconds),
        "detection_pass_seconds": [round(s, 1) for s in pass_seconds],
        "detection_lag_s": {
            "p50": _percentile(lag, 50),
            "p95": lag_p95,
            "max": max(lag) if lag else None,
            "samples": len(lag),
        },
        "app_ms": {
            p: {"p50": _percentile(v, 50), "p95": _percentile(v, 95), "n": len(v)} for p, v in app_ms.items()
        },
        "rss_peak_mb": round(rss_peak[0]),
        "incidents": incidents,
        "targets": TARGETS,
        "met": {
            "ingest": rate_measured >= TARGETS["ingest_points_per_s"],
            "detection_lag": lag_p95 is not None and lag_p95 <= TARGETS["detection_lag_p95_s"],
        },
    }
    results["summary"] = _summary(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    return results


def _progress(total: float) -> Any:
    if not sys.stderr.isatty():
        return None
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task("bench serve", total=total)
    bar.start()

    def update(elapsed: float, rate: float) -> None:
        bar.update(task, completed=elapsed, description=f"bench serve: {rate:,.0f} points/s")
        if elapsed >= total - 1:
            bar.stop()

    return update


def _summary(r: dict[str, Any]) -> str:
    def fmt(v: Any, unit: str = "") -> str:
        return "-" if v is None else f"{v:,.1f}{unit}"

    lag = r["detection_lag_s"]
    lines = [
        f"rootwise serve under load: {r['series']:,} series, {r['seconds']:.0f} s, {r['clients']} clients",
        f"  ingest: {r['ingest_points_per_s']:,} points/s acknowledged (target ≥ {TARGETS['ingest_points_per_s']:,}: "
        f"{'met' if r['met']['ingest'] else 'MISSED'}), {r['points_stored']:,} points stored, "
        f"{r['refused_requests_429_503']} requests refused with 429/503 and retried",
        f"  detection ({r['detect_workers']} scoring process(es)): {r['detection_passes']} passes of "
        f"{r['detection_pass_seconds']} s; lag p50 {fmt(lag['p50'], ' s')}, "
        f"p95 {fmt(lag['p95'], ' s')} (target ≤ 60 s: {'met' if r['met']['detection_lag'] else 'MISSED'}), "
        f"max {fmt(lag['max'], ' s')}",
    ]
    for path, v in r["app_ms"].items():
        lines.append(
            f"  app GET {path}: p50 {fmt(v['p50'], ' ms')}, p95 {fmt(v['p95'], ' ms')} ({v['n']} requests)"
        )
    lines.append(
        f"  peak RSS (server + decode workers): {r['rss_peak_mb']:,} MB; incidents opened: {r['incidents']}"
    )
    if r["failures"]:
        lines.append(f"  failures: {r['failures'][:5]}")
    return "\n".join(lines)
