"""``rootwise bench detect``: detection speed on NAB and on a fleet-sized store.

* NAB: all 58 files (365k points) with the default causal detector (``streaming``), 2 worker processes.
* Fleet: ``series`` × ``days`` at 1-minute resolution (10,000 × 7 days ≈ 100 M points by default) written
  straight into a fresh store (daily seasonality, trends, noise, quantised and counter series, a few injected
  shifts), then ``rootwise detect`` in a child process — wall time and peak RSS of that process — and an
  incremental re-run after 5 new minutes for every series; then 5 more minutes and one pass as ``rootwise serve``
  runs it (scoring processes already started and warm).
* Per family: points/s of each univariate detector family on a sample of the fleet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ingest.batch import TelemetryBatch, labels_list, series_id
from ingest.schema import POINTS, SERIES
from ingest.store import Store

START = datetime(2026, 10, 1)


def _series_rows(ids: range) -> pl.DataFrame:
    rows = []
    for i in ids:
        kind = "counter" if i % 10 == 0 else "gauge"
        metric = "requests_total" if kind == "counter" else ("latency_ms", "gpu_util", "queue_depth")[i % 3]
        labels = {"instance": f"i-{i:05d}", "region": ("us-east", "eu-west")[i % 2]}
        sid = series_id(metric, f"svc-{i // 100:03d}", labels)
        rows.append((sid, metric, f"svc-{i // 100:03d}", kind, "", labels_list(labels)))
    return pl.DataFrame(rows, schema=SERIES, orient="row")


def _values(i: int, n_build: int, end: int) -> np.ndarray:
    """Series ``i`` for minutes ``0..end-1``; the same values whatever ``end`` (one generator per series), so
    appended minutes continue what was built. A few series shift on the last build day."""
    rng = np.random.default_rng(i)
    minutes = np.arange(end)
    day = np.sin(2 * np.pi * (minutes % 1440) / 1440)
    base = 100 + 10 * (i % 7)
    y = base * (1 + 0.3 * day) + rng.normal(0, 0.03 * base, end)
    if i % 3 == 2:  # queue depth: small integers, MAD often 0
        y = np.round(np.maximum(y / 40 - 2, 0))
    if i % 97 == 5:  # an injected level shift on the last day of the build
        y[n_build - 600 : n_build - 300] += 0.5 * base
    if i % 10 == 0:  # counter
        y = np.cumsum(np.maximum(y, 0))
    return y


def build_fleet(db: Path, *, series: int, days: float, chunk: int = 250) -> dict[str, Any]:
    """Write the fleet store; returns points and seconds."""
    n = int(days * 1440)
    minutes = np.arange(n)
    ts = (np.datetime64(START, "us") + minutes.astype("timedelta64[m]")).astype("datetime64[us]")
    store = Store(db)
    started = time.perf_counter()
    total = 0
    for a in range(0, series, chunk):
        ids = range(a, min(a + chunk, series))
        srows = _series_rows(ids)
        sids = srows["series_id"].to_numpy()
        vals = np.concatenate([_values(i, n, n) for i in ids])
        points = pl.DataFrame(
            {"series_id": np.repeat(sids, n), "ts": np.tile(ts, len(ids)), "value": vals}, schema=POINTS
        )
        store.append(TelemetryBatch(series=srows, points=points))
        total += points.height
    store.close()
    return {"points": total, "seconds": round(time.perf_counter() - started, 1)}


def append_minutes(db: Path, *, series: int, days: float, minutes: int, after: int = 0) -> int:
    """Append ``minutes`` new points to every series of the fleet store, ``after`` minutes already appended."""
    n0 = int(days * 1440) + after
    mins = np.arange(n0, n0 + minutes)
    ts = (np.datetime64(START, "us") + mins.astype("timedelta64[m]")).astype("datetime64[us]")
    srows = _series_rows(range(series))
    sids = srows["series_id"].to_numpy()
    vals = np.concatenate([_values(i, n0, n0 + minutes)[n0:] for i in range(series)])
    store = Store(db)
    points = pl.DataFrame(
        {"series_id": np.repeat(sids, minutes), "ts": np.tile(ts, series), "value": vals}, schema=POINTS
    )
    store.append(TelemetryBatch(points=points))
    store.close()
    return series * minutes


def _run_detect(db: Path) -> dict[str, Any]:
    code = (
        "import json, resource, sys\n"
        "from ingest.store import Store\n"
        "from app.detect import run_detection\n"
        f"s = Store({str(db)!r})\n"
        "r = run_detection(s)\n"
        "s.close()\n"
        "print(json.dumps({**r.to_dict(), 'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    started = time.perf_counter()
    out = _run_child(code)
    out["wall_seconds"] = round(time.perf_counter() - started, 1)
    return out


def _run_child(code: str) -> dict[str, Any]:
    """Run ``code`` in a fresh Python process from the checkout; the JSON object its last line prints."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    if proc.returncode != 0:
        raise RuntimeError(f"detect failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_warm_pass(db: Path, *, series: int, days: float, after: int) -> dict[str, Any]:
    """An incremental pass as ``rootwise serve`` runs one: its scoring processes already started and warm
    (the scheduler keeps them between passes), 5 more minutes appended, then one pass timed in that process."""
    code = (
        "import json, time\n"
        "from app.bench_detect import append_minutes\n"
        "from app.detect import DetectConfig, ScoringPool, run_detection\n"
        "from ingest.store import Store\n"
        "pool = ScoringPool(DetectConfig().scoring_processes())\n"
        "pool.executor(); pool.started\n"
        f"append_minutes({str(db)!r}, series={series}, days={days}, minutes=5, after={after})\n"
        f"s = Store({str(db)!r})\n"
        "t = time.perf_counter()\n"
        "r = run_detection(s, pool=pool)\n"
        "sec = time.perf_counter() - t\n"
        "s.close(); pool.close()\n"
        "print(json.dumps({**r.to_dict(), 'pass_seconds': round(sec, 1)}))\n"
    )
    return _run_child(code)


def bench_families(db: Path, *, sample: int = 100) -> dict[str, Any]:
    """Points/s of each univariate family (fit + score) on ``sample`` series of the fleet."""
    from detectors.registry import DETECTORS, make_detector
    from ingest.queries import series_points

    store = Store(db, read_only=True)
    ids = [
        r[0]
        for r in store.cursor()
        .execute("SELECT series_id FROM series ORDER BY series_id LIMIT ?", [sample])
        .fetchall()
    ]
    frame = series_points(store, ids)
    store.close()
    out = {}
    for name in DETECTORS:
        try:
            det = make_detector(name)
        except ImportError:
            continue
        if getattr(det, "input_kind", "points") != "points":
            continue
        f = frame if name != "bocpd" else frame.filter(pl.col("series_id").is_in(ids[:5]))
        started = time.perf_counter()
        det.fit(f)
        det.score(f)
        sec = time.perf_counter() - started
        out[name] = {"points": f.height, "seconds": round(sec, 2), "points_per_second": round(f.height / sec)}
    return out


def bench_detect(*, series: int, days: float, out: Path, nab_root: Path) -> dict[str, Any]:
    """All figures of the detection benchmark; written to ``out`` as JSON."""
    from app.evaluate import nab_scores

    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}}
    if (nab_root / "labels").exists():
        _, sec = nab_scores(nab_root, "streaming", workers=2)
        results["nab"] = {"detector": "streaming", "points": 365_558, "seconds": round(sec, 1)}
    with tempfile.TemporaryDirectory(prefix="rootwise-bench-detect-") as tmp:
        db = Path(tmp) / "fleet.duckdb"
        results["build"] = build_fleet(db, series=series, days=days)
        results["first_run"] = _run_detect(db)
        results["new_points"] = append_minutes(db, series=series, days=days, minutes=5)
        results["incremental_run"] = _run_detect(db)
        results["warm_pass"] = _run_warm_pass(db, series=series, days=days, after=5)
        results["families"] = bench_families(db)
    first, inc = results["first_run"], results["incremental_run"]
    lines = [
        f"NAB (streaming): {results.get('nab', {}).get('seconds')} s for 365,558 points",
        f"fleet {series} series x {days:g} days: {results['build']['points']:,} points; "
        f"detect {first['wall_seconds']} s ({first['points_per_second']:,.0f} points/s), "
        f"peak RSS {first['peak_rss_mb']:.0f} MB; incidents opened {first['incidents_opened']}",
        f"incremental (+5 min): {inc['wall_seconds']} s, peak RSS {inc['peak_rss_mb']:.0f} MB; "
        f"the same pass in a running server (warm scoring processes): {results['warm_pass']['pass_seconds']} s",
        "families (fit+score points/s): "
        + ", ".join(f"{k} {v['points_per_second']:,}" for k, v in results["families"].items()),
    ]
    results["summary"] = "\n".join(lines)
    results["date"] = datetime.now().isoformat(timespec="seconds")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results
