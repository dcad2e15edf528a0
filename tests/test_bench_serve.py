"""``rootwise bench serve`` end to end on a small load: a real server, real OTLP clients, the scheduler running."""

from __future__ import annotations

import json

import pytest

from app.bench_serve import bench_serve

pytestmark = pytest.mark.slow


def test_bench_serve_small_load(tmp_path) -> None:
    out = tmp_path / "serve.json"
    r = bench_serve(
        series=1000, seconds=8, rate=5000, clients=2, out=out, workdir=tmp_path, detect_interval="2s"
    )
    assert json.loads(out.read_text())["series"] == 1000
    assert r["points_acked"] > 0 and r["points_stored"] == r["points_acked"]  # nothing acknowledged is lost
    assert 0.5 * 5000 <= r["ingest_points_per_s"] <= 1.2 * 5000  # paced to the target
    assert r["detection_passes"] >= 1 and r["detection_lag_s"]["samples"] >= 1
    assert all(v["n"] >= 1 for v in r["app_ms"].values()) and r["rss_peak_mb"] > 0
    assert r["failures"] == []
    assert "points/s acknowledged" in r["summary"]
