"""`rootwise bench ingest` runs end to end on a tiny size and reports every figure (speed is never asserted)."""

from __future__ import annotations

import json

import pytest

from app.cli import main


@pytest.mark.slow
def test_bench_ingest_reports_every_path(tmp_path, capsys):
    out = tmp_path / "ingest.json"
    assert main(["bench", "ingest", "--points", "200000", "--big-points", "0", "--out", str(out),
                 "--format", "json"]) == 0
    results = json.loads(out.read_text())
    for path in ("ceiling", "ceiling_long", "parquet", "otlp_json", "otlp_protobuf", "prometheus"):
        assert results[path]["seconds"] > 0
    # every point of every path was stored, none lost or doubled
    assert results["ceiling"]["points"] == results["parquet"]["points"] == 200_000
    assert results["otlp_json"]["points_stored"] == results["otlp_json"]["points_sent"] == 200_000
    assert results["otlp_protobuf"]["points_stored"] == 200_000
    assert set(results["targets_met"]) >= {"parquet>=2M/s", "otlp_json>=200k/s"}
