"""``rootwise bench rca`` on a small store: the JSON it writes and the cause it finds (no timing asserts)."""

from __future__ import annotations

import json

from app.bench_rca import bench_rca, format_bench_rca


def test_small_bench_rca_writes_json_and_finds_the_injected_rollout(tmp_path):
    out = tmp_path / "rca.json"
    work = tmp_path / "work"
    result = bench_rca(series=2_000, days=1, out=out, workdir=work, repeats=1, dimension_leaves=5_000)

    written = json.loads(out.read_text())
    assert written["summary"] == result["summary"] == format_bench_rca(result)
    assert {"machine", "build", "store", "rca", "dimensions", "targets", "date"} <= set(written)

    build, store = written["build"], written["store"]
    assert (build["series"], build["leaves"], build["gauges"]) == (2_000, 800, 400)
    assert store["rows"]["series"] == 2_000
    assert store["rows"]["points"] == build["points"] == 2_000 * 1_440
    assert store["rows"]["events"] > 0 and store["rows"]["spans"] == 4 * 10 * 1_440
    assert store["bytes"] > 0

    rca = written["rca"]
    steps = {"dimensions", "changes", "topology", "metrics", "logs"}
    assert set(rca["cold"]["steps"]) == set(rca["warm"]["steps"]) == steps
    assert rca["cold"]["total"] > 0 and rca["warm"]["repeats"] == 1
    assert {c["method"] for c in rca["view_calls"]["cold"]} >= {"series", "points", "events"}
    assert {c["step"] for c in rca["view_calls"]["cold"]} <= steps
    top = rca["top_causes"][0]
    assert rca["top_cause_ok"] and top["kind"] == "change" and top["event_id"] == "rollout-incident"
    assert top["labels"]["model_version"] == build["bad_model_version"] == "model-3-v2"
    # ranked first because it agrees with the dimension the localisation found
    assert "matches model_version=model-3-v2" in top["explanation"]

    assert written["dimensions"]["found"] and written["dimensions"]["labels"] == 5
    assert written["dimensions"]["values"] == 1_000
    # without keep the store is gone; the folder we passed stays
    assert work.is_dir() and not list(work.iterdir())


def test_kept_store_is_reused(tmp_path):
    work = tmp_path / "work"
    kwargs = {"series": 200, "days": 0.5, "workdir": work, "repeats": 1, "dimension_leaves": 2_000}
    first = bench_rca(out=tmp_path / "a.json", keep=True, **kwargs)
    second = bench_rca(out=tmp_path / "b.json", keep=False, **kwargs)
    assert "reused" not in first["build"] and second["build"]["reused"] is True
    assert second["store"]["rows"] == first["store"]["rows"]
    assert not list(work.iterdir())
