"""``rootwise detect`` over a real store: incidents open, merge, resolve; idempotent and incremental runs."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from app.detect import DetectConfig, histogram_quantile_series, run_detection
from ingest.batch import TelemetryBatch, labels_list, series_id
from ingest.results import incident_series, list_incidents
from ingest.schema import HISTOGRAMS, POINTS, SERIES
from ingest.store import Store

START = datetime(2026, 10, 1)


def _fleet(minutes: int, *, shift_at: int | None = None, shift_len: int = 60, offset: int = 0, seed: int = 0):
    """Two services × two instances (latency gauge, request counter); rag-api latency jumps at ``shift_at``."""
    rng = np.random.default_rng(seed + offset)
    series, points = [], []
    t = np.arange(offset, offset + minutes)
    ts = (np.datetime64(START, "us") + t.astype("timedelta64[m]")).astype("datetime64[us]")
    for service in ("rag-api", "embedder"):
        for inst in ("a", "b"):
            labels = {"instance": f"{service}-{inst}", "region": "us-east"}
            for metric, kind in (("latency_ms", "gauge"), ("requests", "counter")):
                sid = series_id(metric, service, labels)
                series.append((sid, metric, service, kind, "", labels_list(labels)))
                if kind == "gauge":
                    y = 120 + 20 * np.sin(2 * np.pi * t / 1440) + rng.normal(0, 3, minutes)
                    if shift_at is not None and service == "rag-api":
                        on = (t >= shift_at) & (t < shift_at + shift_len)
                        y = np.where(on, y + 80, y)
                else:
                    y = 1000.0 * t + 40.0 * np.sin(t * 0.37)  # monotone, continuous across chunks
                points.append(
                    pl.DataFrame({"series_id": np.full(minutes, sid), "ts": ts, "value": y}, schema=POINTS)
                )
    return TelemetryBatch(series=pl.DataFrame(series, schema=SERIES, orient="row"), points=pl.concat(points))


def test_first_run_finds_the_injected_incident_and_reruns_are_idempotent(store: Store) -> None:
    store.append(_fleet(3 * 1440, shift_at=2 * 1440 + 600))
    report = run_detection(store)
    # a counter is scored on its increases: its first point has none
    assert report.series == 8 and report.points == 8 * 3 * 1440 - 4
    incidents = list_incidents(store)
    rag = [i for i in incidents if i["service"] == "rag-api"]
    assert len(rag) == 1, incidents
    inc = rag[0]
    onset = START + timedelta(minutes=2 * 1440 + 600)
    assert onset <= datetime.fromisoformat(inc["start"]) <= onset + timedelta(minutes=5)
    assert inc["metric"] == "latency_ms" and inc["status"] == "resolved"
    assert inc["labels"] == {"region": "us-east"}  # what both affected instances share
    assert set(
        incident_series(store, inc["id"])["labels"].map_elements(
            lambda ls: dict((e["key"], e["value"]) for e in ls)["instance"], return_dtype=pl.Utf8
        )
    ) == {"rag-api-a", "rag-api-b"}
    # nothing on the healthy service, and no page for noise
    assert not [i for i in incidents if i["service"] == "embedder" and i["severity"] == "page"]
    anomalies = store.count("anomalies")
    again = run_detection(store)
    assert again.points == 0 and again.incidents_opened == 0
    assert store.count("anomalies") == anomalies
    assert list_incidents(store) == incidents


def test_incremental_run_scores_only_new_points_and_resolves(store: Store) -> None:
    store.append(_fleet(2 * 1440 + 600))
    run_detection(store)
    assert not [i for i in list_incidents(store) if i["service"] == "rag-api"]
    # the shift starts in new data: the open incident shows up, then resolves once latency is back
    store.append(_fleet(30, shift_at=2 * 1440 + 600, shift_len=10_000, offset=2 * 1440 + 600))
    r = run_detection(store)
    assert r.points == 8 * 30
    (inc,) = [i for i in list_incidents(store) if i["service"] == "rag-api"]
    assert inc["status"] == "open" and r.incidents_opened == 1
    store.append(_fleet(60, offset=2 * 1440 + 630))
    r = run_detection(store)
    assert r.points == 8 * 60
    (after,) = [i for i in list_incidents(store) if i["service"] == "rag-api"]
    assert after["id"] == inc["id"] and after["status"] == "resolved"


def test_states_travel_pickled_and_are_stored_as_the_scorer_pickled_them(store: Store) -> None:
    import pickle

    from ingest.results import Pickled, load_states, save_detection

    store.append(_fleet(1440))
    run_detection(store)
    sids = [r[0] for r in store.cursor().execute("SELECT series_id FROM detector_state").fetchall()]
    plain, raw = load_states(store, sids), load_states(store, sids, pickled=True)
    assert len(plain) == 8 and all(isinstance(raw[s].state, Pickled) for s in sids)
    assert all(pickle.dumps(raw[s].state.load(), 5) == pickle.dumps(plain[s].state, 5) for s in sids)
    assert all(raw[s].state[:1] == b"L" for s in sids)  # stored LZ4-compressed
    assert all(len(raw[s].state) < len(pickle.dumps(plain[s].state, 5)) for s in sids)
    # as versions before compression, and then with zlib, stored it: both still load
    import zlib

    pickled = pickle.dumps(plain[sids[0]].state, 5)
    for old in (Pickled(pickled), Pickled(zlib.compress(pickled, 1))):
        assert pickle.dumps(old.load(), 5) == pickled
    # written back untouched: the stored bytes are exactly what was read
    before = dict(store.cursor().execute("SELECT series_id, state FROM detector_state").fetchall())
    save_detection(store, states=raw, anomalies=pl.DataFrame(), detector="ensemble", incidents=[], now=START)
    after = dict(store.cursor().execute("SELECT series_id, state FROM detector_state").fetchall())
    assert after == before


def test_acknowledged_state_survives_detection(store: Store) -> None:
    store.append(_fleet(2 * 1440 + 600))
    run_detection(store)
    store.append(_fleet(30, shift_at=2 * 1440 + 600, shift_len=10_000, offset=2 * 1440 + 600))
    run_detection(store)
    (inc,) = [i for i in list_incidents(store) if i["service"] == "rag-api"]
    with store.write_transaction() as cur:
        cur.execute("UPDATE incidents SET status = 'acknowledged' WHERE id = ?", [inc["id"]])
    store.append(_fleet(5, shift_at=0, shift_len=10_000, offset=2 * 1440 + 630))
    run_detection(store)
    (same,) = [i for i in list_incidents(store) if i["service"] == "rag-api"]
    assert same["status"] == "acknowledged"


def test_high_cardinality_metric_is_detected_on_its_aggregate(store: Store) -> None:
    minutes = 2 * 1440
    t = np.arange(minutes)
    ts = (np.datetime64(START, "us") + t.astype("timedelta64[m]")).astype("datetime64[us]")
    rng = np.random.default_rng(0)
    series, points = [], []
    for k in range(60):
        labels = {"tenant": f"t-{k:03d}"}
        sid = series_id("tokens", "gateway", labels)
        series.append((sid, "tokens", "gateway", "delta", "", labels_list(labels)))
        y = rng.poisson(20, minutes).astype(float)
        points.append(pl.DataFrame({"series_id": np.full(minutes, sid), "ts": ts, "value": y}, schema=POINTS))
    store.append(
        TelemetryBatch(series=pl.DataFrame(series, schema=SERIES, orient="row"), points=pl.concat(points))
    )
    report = run_detection(store, DetectConfig(max_series_per_metric=50))
    assert report.series == 1  # one aggregate instead of 60 tenants
    agg = store.cursor().execute("SELECT labels FROM series WHERE labels['aggregate'] IS NOT NULL").fetchall()
    assert agg == [({"aggregate": "sum"},)]
    assert list_incidents(store) == []  # Poisson noise on a quiet fleet: no incident


def test_histogram_p99_matches_prometheus_interpolation_and_sums_members() -> None:
    bounds = [10.0, 20.0, 50.0]
    t = [START, START + timedelta(minutes=1), START + timedelta(minutes=2)]

    def rows(sid: int, counts: list[list[float]]) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "series_id": [sid] * 3,
                "ts": t,
                "count": [0.0] * 3,
                "sum": [0.0] * 3,
                "min": [None] * 3,
                "max": [None] * 3,
                "bounds": [bounds] * 3,
                "counts": counts,
                "cumulative": [True] * 3,
            },
            schema=HISTOGRAMS,
        )

    # cumulative: +100 observations in minute 1 (90 ≤ 10, 10 in (10, 20]), none in minute 2
    one = rows(1, [[0.0, 0, 0, 0], [90.0, 10, 0, 0], [90.0, 10, 0, 0]])
    q = histogram_quantile_series(one, 0.99, 7)
    assert q["ts"].to_list() == t[1:] and q["series_id"].to_list() == [7, 7]
    # rank 99 of 100: 9 of the 10 observations into (10, 20] → 10 + 10 * 9/10
    assert q["value"][0] == 19.0 and np.isnan(q["value"][1])
    # a second member (another version of the same service) with 100 slow observations in minute 1:
    # the stitched series' p99 is over all 200 observations — rank 198 lands in (20, 50]
    two = rows(2, [[0.0, 0, 0, 0], [0.0, 0, 100, 0], [0.0, 0, 100, 0]])
    q = histogram_quantile_series(pl.concat([one, two]), 0.99, 7)
    assert q["value"][0] == 20.0 + 30.0 * 98 / 100


def test_new_version_of_a_service_is_scored_against_the_old_ones_history(store: Store) -> None:
    """A deploy changes ``service.version`` (a new series id); detection stitches the versions, so a bad
    deploy's latency jump is an anomaly, not the first points of a series with no baseline."""
    minutes = 2 * 1440 + 300
    cut = 2 * 1440
    t = np.arange(minutes)
    ts = (np.datetime64(START, "us") + t.astype("timedelta64[m]")).astype("datetime64[us]")
    rng = np.random.default_rng(3)
    y = 100 + rng.normal(0, 2, minutes)
    y[cut:] += 40
    series, points = [], []
    for version, part in (("1.0", slice(0, cut)), ("1.1", slice(cut, minutes))):
        labels = {"instance": "api-0", "service.version": version}
        sid = series_id("latency_ms", "api", labels)
        series.append((sid, "latency_ms", "api", "gauge", "", labels_list(labels)))
        points.append(
            pl.DataFrame(
                {"series_id": np.full(t[part].size, sid), "ts": ts[part], "value": y[part]}, schema=POINTS
            )
        )
    store.append(
        TelemetryBatch(series=pl.DataFrame(series, schema=SERIES, orient="row"), points=pl.concat(points))
    )
    report = run_detection(store)
    assert report.series == 1
    (inc,) = list_incidents(store)
    assert inc["labels"] == {"instance": "api-0"}
    assert (
        START + timedelta(minutes=cut)
        <= datetime.fromisoformat(inc["start"])
        <= START + timedelta(minutes=cut + 5)
    )


def test_cli_detect_and_incidents_json(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    s = Store(db)
    s.append(_fleet(3 * 1440, shift_at=2 * 1440 + 600))
    s.close()

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *a], capture_output=True, text=True, check=False
        )  # noqa: E731

    p = run("detect", "--db", str(db), "--format", "json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["series"] == 8
    p = run("incidents", "--db", str(db), "--format", "json")
    assert p.returncode == 0, p.stderr
    items = json.loads(p.stdout)
    assert items and set(items[0]) >= {
        "id",
        "service",
        "metric",
        "labels",
        "start",
        "end",
        "severity",
        "status",
        "causes",
    }
    assert any(i["service"] == "rag-api" for i in items)
    from ingest.results import INCIDENT_FIELDS

    assert tuple(items[0]) == INCIDENT_FIELDS  # the header a CSV of no incidents prints
    p = run("incidents", "--db", str(db), "--service", "rag-apj", "--format", "json")
    assert p.returncode == 2 and "no such service 'rag-apj' (did you mean 'rag-api'?)" in p.stderr
    p = run("detect", "--db", str(db), "--detector", "nope")
    assert p.returncode == 2 and "unknown detector 'nope'" in p.stderr


@pytest.mark.slow
def test_demo_pipeline_runs_detection(tmp_path: Path) -> None:
    db = tmp_path / "demo.duckdb"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "demo",
            "--db",
            str(db),
            "--days",
            "1",
            "--scale",
            "0.05",
            "--no-serve",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["pipeline"] == ["simulate", "ingest", "detect", "rca", "capacity report"]
    assert Path(summary["capacity_report"]).exists()
    assert summary["detect"]["points"] > 0 and summary["detect"]["series"] > 0
    s = Store(db, read_only=True)
    assert s.count("detector_state") > 0
    from ingest.results import list_incidents

    incidents = list_incidents(s)
    # every incident detection opened was explained, and its causes follow DESIGN.md's shape
    assert incidents and all(i["causes"] for i in incidents)
    assert {"rank", "kind", "service", "score", "evidence"} <= set(incidents[0]["causes"][0])
    s.close()
    # a store with telemetry that no demo wrote (no simulated files beside it) is refused, not mixed into
    import shutil

    real = tmp_path / "real.duckdb"
    shutil.copy(db, real)
    p = subprocess.run(
        [sys.executable, "-m", "app.cli", "demo", "--db", str(real), "--days", "1", "--scale", "0.05", "--no-serve"],
        capture_output=True, text=True, check=False,
    )
    assert p.returncode == 2 and "already holds telemetry that no demo wrote" in p.stderr, p.stderr
    assert not (tmp_path / "real-demo-data").exists()


def test_seasonal_member_is_refitted_after_two_days_of_new_data(store: Store) -> None:
    store.append(_fleet(3 * 1440))
    run_detection(store)
    sid = (
        store.cursor()
        .execute(
            "SELECT series_id FROM series WHERE service = 'rag-api' AND metric = 'latency_ms' "
            "AND labels['instance'] = 'rag-api-a'"
        )
        .fetchone()[0]
    )

    def fitted_until() -> datetime:
        return (
            store.cursor()
            .execute("SELECT fitted_until FROM detector_state WHERE series_id = ?", [sid])
            .fetchone()[0]
        )

    first = fitted_until()
    assert first == START + timedelta(minutes=3 * 1440 - 1)
    store.append(_fleet(1500, offset=3 * 1440))
    run_detection(store)
    assert fitted_until() == first  # less than two days of new data: the fit is kept
    store.append(_fleet(1500, offset=3 * 1440 + 1500))
    run_detection(store)
    end = START + timedelta(minutes=3 * 1440 + 3000 - 1)
    assert fitted_until() == end
    state = results_state(store, sid)
    assert state.profile.members == ("streaming", "stl")
    assert state.last_fit_us == (end - datetime(1970, 1, 1)) // timedelta(microseconds=1)


def results_state(store: Store, sid: int):
    from ingest.results import load_states

    return load_states(store, [sid])[sid].state


def test_parallel_scoring_gives_the_same_results_as_one_process(tmp_path: Path) -> None:
    dbs = []
    for name, workers in (("one", 1), ("two", 2)):
        s = Store(tmp_path / f"{name}.duckdb")
        s.append(_fleet(3 * 1440, shift_at=2 * 1440 + 600))
        run_detection(s, DetectConfig(batch=3, workers=workers))
        dbs.append(s)
    one, two = (list_incidents(s) for s in dbs)
    assert one == two and any(i["service"] == "rag-api" for i in one)
    a, b = (
        s.cursor().execute("SELECT series_id, ts, score FROM anomalies ORDER BY ALL").fetchall() for s in dbs
    )
    assert a == b and a
    for s in dbs:
        s.close()


def test_incremental_passes_batch_series_by_their_new_points(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from app.detect import _batches, _plan
    from ingest.results import detection_catalog

    store.append(_fleet(2 * 1440))
    config = DetectConfig(batch=2, batch_points=1000, workers=1)

    def sizes(cfg: DetectConfig, workers: int = 1) -> list[int]:
        meta = _plan(store, detection_catalog(store), cfg)
        return [len(b) for b in _batches(store, list(meta), meta, cfg, workers)]

    assert sizes(config) == [2, 2, 2, 2]  # first fits: `batch` series each
    run_detection(store, config)
    store.append(_fleet(30, offset=2 * 1440))
    # 30 new points each: the points budget would take all 8, but each process gets two batches
    assert sizes(config) == [4, 4] and sizes(config, workers=2) == [2, 2, 2, 2]
    assert sizes(replace(config, batch_points=100)) == [3, 3, 2]  # 3 x 30 points fit in 100
    assert sizes(replace(config, max_batch=3)) == [3, 3, 2]
    # much to score (a busy server's pass): about four batches per process, each of at least the minimum
    monkeypatch.setattr("app.detect._MIN_BATCH_POINTS", 10)
    assert sizes(config) == [2, 2, 2, 2]  # 240 new points / 4 = 60 per batch
    monkeypatch.setattr("app.detect._MIN_BATCH_POINTS", 90)
    assert sizes(config) == [3, 3, 2]


def test_incidents_and_anomalies_do_not_depend_on_batching(tmp_path: Path) -> None:
    configs = {"alone": DetectConfig(batch=1, batch_points=1, workers=1), "default": DetectConfig(workers=1)}
    found = {}
    for name, config in configs.items():
        with Store(tmp_path / f"{name}.duckdb") as s:
            s.append(_fleet(2 * 1440 + 600))
            run_detection(s, config)
            for k in range(3):  # the shift starts in the second increment and lasts past the third
                s.append(_fleet(20, shift_at=2 * 1440 + 630, offset=2 * 1440 + 600 + 20 * k))
                run_detection(s, config)
            anomalies = (
                s.cursor().execute("SELECT series_id, ts, score FROM anomalies ORDER BY ALL").fetchall()
            )
            found[name] = (list_incidents(s), anomalies)
    assert found["alone"] == found["default"]
    incidents, anomalies = found["default"]
    assert any(i["service"] == "rag-api" and i["status"] == "open" for i in incidents) and anomalies


def test_histogram_mean_kpi_sums_members_and_handles_restarts() -> None:
    from app.detect import histogram_mean_series

    t = [START + timedelta(minutes=i) for i in range(3)]

    def rows(sid: int, count: list[float], total: list[float]) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "series_id": [sid] * 3,
                "ts": t,
                "count": count,
                "sum": total,
                "min": [None] * 3,
                "max": [None] * 3,
                "bounds": [[1.0]] * 3,
                "counts": [[0.0, 0.0]] * 3,
                "cumulative": [True] * 3,
            },
            schema=HISTOGRAMS,
        )

    # member 1: +10 observations summing 5.0, then a restart (count drops) with 4 observations summing 8.0
    # member 2: +30 observations summing 45.0, then none
    m = histogram_mean_series(
        pl.concat([rows(1, [100, 110, 4], [50, 55, 8]), rows(2, [0, 30, 30], [0, 45, 45])]), 9
    )
    assert m["ts"].to_list() == t[1:] and m["series_id"].to_list() == [9, 9]
    assert m["value"].to_list() == [(5.0 + 45.0) / 40, 8.0 / 4]


def test_prediction_score_shift_is_caught_by_the_histogram_mean_kpi(store: Store) -> None:
    """A drift of the whole score distribution inside the same buckets' range: the mean KPI pages."""
    minutes = 2 * 1440 + 240
    bounds = [0.1 * k for k in range(1, 10)]
    rng = np.random.default_rng(4)
    labels = {"instance": "predictor-0"}
    sid = series_id("prediction.score", "predictor", labels)
    cum = np.zeros(len(bounds) + 1)
    total = count = 0.0
    recs = []
    for i in range(minutes):
        a, b = (2.0, 5.0) if i < 2 * 1440 + 120 else (3.5, 4.0)  # mean 0.29 -> 0.47
        x = rng.beta(a, b, 200)
        cum += np.bincount(np.searchsorted(bounds, x), minlength=len(bounds) + 1)
        total += x.sum()
        count += x.size
        recs.append((sid, START + timedelta(minutes=i), count, total, None, None, bounds, cum.tolist(), True))
    series = pl.DataFrame(
        [(sid, "prediction.score", "predictor", "histogram", "", labels_list(labels))],
        schema=SERIES,
        orient="row",
    )
    store.append(
        TelemetryBatch(series=series, histograms=pl.DataFrame(recs, schema=HISTOGRAMS, orient="row"))
    )
    run_detection(store)
    (inc,) = [i for i in list_incidents(store) if i["service"] == "predictor"]
    assert inc["labels"].get("stat") == "mean" or any(
        dict((e["key"], e["value"]) for e in ls).get("stat") == "mean"
        for ls in incident_series(store, inc["id"])["labels"]
    )
    onset = START + timedelta(minutes=2 * 1440 + 120)
    assert onset <= datetime.fromisoformat(inc["start"]) <= onset + timedelta(minutes=10)


def _api(minutes: int, *, offset: int = 0, shift: tuple[int, int] | None = None, only: str | None = None):
    """Service ``api`` with two gauges, latency and queue depth; both jump during ``shift`` (start, end)."""
    rng = np.random.default_rng(offset)
    t = np.arange(offset, offset + minutes)
    ts = (np.datetime64(START, "us") + t.astype("timedelta64[m]")).astype("datetime64[us]")
    series, points = [], []
    for metric in ("latency_ms", "queue_depth"):
        if only is not None and metric != only:
            continue
        sid = series_id(metric, "api", {})
        series.append((sid, metric, "api", "gauge", "", labels_list({})))
        y = 100 + rng.normal(0, 2, minutes)
        if shift is not None:
            y = np.where((t >= shift[0]) & (t < shift[1]), y + 60, y)
        points.append(pl.DataFrame({"series_id": np.full(minutes, sid), "ts": ts, "value": y}, schema=POINTS))
    return TelemetryBatch(series=pl.DataFrame(series, schema=SERIES, orient="row"), points=pl.concat(points))


def test_alarm_on_a_series_that_stops_reporting_resolves_while_its_service_goes_on(store: Store) -> None:
    day = 1440
    store.append(_api(day))
    run_detection(store)
    store.append(_api(20, offset=day, shift=(day + 5, day + 10_000)))  # both series jump and stay up
    run_detection(store)
    (inc,) = list_incidents(store)
    assert inc["status"] == "open"
    # queue depth stops reporting while still high; latency recovers and goes on
    store.append(_api(10, offset=day + 20, only="latency_ms"))
    run_detection(store)
    assert list_incidents(store)[0]["status"] == "open"  # 10 minutes of silence: not yet
    store.append(_api(10, offset=day + 30, only="latency_ms"))
    r = run_detection(store)
    (after,) = list_incidents(store)
    assert after["id"] == inc["id"] and after["status"] == "resolved" and r.incidents_resolved == 1
    # queue depth comes back normal: no new incident, and its alarm was reset (no stale alarm resolving late)
    store.append(_api(30, offset=day + 40))
    run_detection(store)
    assert [(i["id"], i["status"]) for i in list_incidents(store)] == [(inc["id"], "resolved")]


def test_a_service_gone_silent_as_a_whole_keeps_its_incident_open(store: Store) -> None:
    day = 1440
    store.append(_api(day))
    run_detection(store)
    store.append(_api(20, offset=day, shift=(day + 5, day + 10_000)))
    run_detection(store)
    store.append(_fleet(120, offset=day + 20))  # other services go on; api sends nothing
    run_detection(store)
    (inc,) = [i for i in list_incidents(store) if i["service"] == "api"]
    assert inc["status"] == "open"


def test_histogram_p99_pools_trailing_minutes_of_a_quiet_series() -> None:
    """The p99 of ~40 requests is their maximum: with ``min_observations`` a quiet series' KPI is the p99 of the
    trailing minutes that hold about that many (causal), a busy one keeps each minute alone."""
    bounds = [10.0, 20.0, 50.0, 100.0]
    rng = np.random.default_rng(5)

    def rows(per_minute: int, minutes: int = 30) -> pl.DataFrame:
        cum = np.zeros(len(bounds) + 1)
        recs = []
        for i in range(minutes):
            x = rng.gamma(3.0, 4.0, per_minute)
            cum += np.bincount(np.searchsorted(bounds, x), minlength=len(bounds) + 1)
            t = START + timedelta(minutes=i)
            recs.append((7, t, float(cum.sum()), float(x.sum()), None, None, bounds, cum.tolist(), True))
        return pl.DataFrame(recs, schema=HISTOGRAMS, orient="row")

    quiet = rows(40)
    alone = histogram_quantile_series(quiet, 0.99, 1)
    pooled = histogram_quantile_series(quiet, 0.99, 1, min_observations=100)
    # span ceil(100 / 40) = 3: each point is the p99 of its own and the two earlier intervals' increments
    counts = np.vstack(quiet.sort("ts")["counts"].to_list())
    inc = np.diff(counts, axis=0)
    for j in range(2, inc.shape[0]):
        window = inc[j - 2 : j + 1].sum(axis=0)
        one = pl.DataFrame(
            [
                (7, START, 0.0, 0.0, None, None, bounds, [0.0] * 5, True),
                (7, START + timedelta(minutes=1), 0.0, 0.0, None, None, bounds, window.tolist(), True),
            ],
            schema=HISTOGRAMS,
            orient="row",
        )
        assert pooled["value"][j] == pytest.approx(histogram_quantile_series(one, 0.99, 1)["value"][0])
    assert pooled["value"].std() < alone["value"].std()  # the KPI no longer jumps with one slow request
    busy = rows(400)
    assert histogram_quantile_series(busy, 0.99, 1, min_observations=100).equals(
        histogram_quantile_series(busy, 0.99, 1)
    )


def _one(metric: str, kind: str, y: np.ndarray) -> TelemetryBatch:
    """One gateway series of ``kind`` with values ``y``, one a minute from ``START``."""
    labels = {"instance": "gw-a", "region": "us-east"}
    sid = series_id(metric, "gateway", labels)
    ts = (np.datetime64(START, "us") + np.arange(y.size).astype("timedelta64[m]")).astype("datetime64[us]")
    return TelemetryBatch(
        series=pl.DataFrame(
            [(sid, metric, "gateway", kind, "", labels_list(labels))], schema=SERIES, orient="row"
        ),
        points=pl.DataFrame({"series_id": np.full(y.size, sid), "ts": ts, "value": y}, schema=POINTS),
    )


def test_counters_are_read_as_increases_after_each_watermark(store: Store) -> None:
    """Per-step increases of a single counter: a drop is a reset (the new value is the increase), the step into
    the first point after a watermark uses the point before it, a series' first point has none."""
    from ingest.results import counter_increases_since

    y = np.array([10.0, 12.0, 15.0, 3.0, 7.0, 7.0, 20.0])
    batch = _one("requests", "counter", y)
    store.append(batch)
    sid = int(batch.series["series_id"][0])
    whole = counter_increases_since(store, {sid: None})
    assert whole["value"].to_list() == [2.0, 3.0, 3.0, 4.0, 0.0, 13.0]
    after = counter_increases_since(store, {sid: START + timedelta(minutes=4)})
    assert after["value"].to_list() == [0.0, 13.0]
    assert after["ts"].to_list() == [START + timedelta(minutes=5), START + timedelta(minutes=6)]
    mark = START + timedelta(minutes=4, seconds=30)
    far = counter_increases_since(store, {sid: mark}, lookback=timedelta(seconds=20))
    assert far["value"].to_list() == [13.0]  # the point before the watermark is out of reach


def test_the_catalog_kind_decides_what_is_a_counter(store: Store) -> None:
    """A gauge that only grows (a slow leak) is scored on its level, not guessed into a counter; a counter that
    has not stepped yet in its first hour is scored on its increases from the first pass (guessed from the
    data, its staircase would be a level shift at every step)."""
    from ingest.results import load_states

    rng = np.random.default_rng(3)
    minutes = 2 * 1440
    leak = 500.0 + 0.2 * np.arange(minutes) + np.abs(rng.normal(0, 0.01, minutes)).cumsum()  # never falls
    steps = np.zeros(minutes)
    steps[rng.choice(np.arange(120, minutes), 12, replace=False)] = rng.integers(1, 4, 12)
    batches = [
        _one("process.memory.usage", "gauge", leak),
        _one("vllm:num_preemptions_total", "counter", steps.cumsum()),
    ]
    for b in batches:
        store.append(b)
    run_detection(store, DetectConfig(workers=1))
    states = load_states(store, [int(b.series["series_id"][0]) for b in batches])
    leak_state, counter_state = (states[int(b.series["series_id"][0])].state for b in batches)
    assert not leak_state.profile.counter and not counter_state.profile.counter  # no guessing
    # the counter's detector saw increases: its last raw value is a step (0 to 3), not the running total
    assert counter_state.streaming.y[-1] <= 3.0 < steps.sum()
    assert not list_incidents(store)
