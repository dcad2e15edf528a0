"""Retention: rollups equal polars aggregates of the raw points, raw dropped, idempotent, queries unchanged."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from ingest import queries as q
from ingest import retention
from ingest.batch import MetricBuilder
from ingest.retention import RetentionReport, apply_retention

T0 = datetime(2024, 3, 1)
MIN = timedelta(minutes=1)
HOURS = 6


def ns(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1)) // timedelta(microseconds=1) * 1000


def build(seed: int = 3):
    """6 hours of a gauge, a counter with resets and a delta metric; 2 tenants; 1-minute samples with jitter."""
    rng = np.random.default_rng(seed)
    b = MetricBuilder("test")
    n = HOURS * 60
    for tenant in ("a", "b"):
        g = b.series("gpu_util", "api", "gauge", "%", {"tenant": tenant})
        c = b.series("req_total", "api", "counter", "1", {"tenant": tenant})
        d = b.series("tokens", "api", "delta", "1", {"tenant": tenant})
        value = 0.0
        for i in range(n):
            # jitter within the minute, so samples do not sit on bucket edges only
            ts = ns(T0 + i * MIN + timedelta(seconds=int(rng.integers(0, 60))))
            b.point(g, ts, float(rng.normal(50, 10)), "g")
            value = float(rng.integers(0, 5)) if rng.random() < 0.02 else value + float(rng.integers(0, 20))
            b.point(c, ts, value, "c")
            b.point(d, ts, float(rng.integers(0, 100)), "d")
    return b.build()


@pytest.fixture
def loaded(store):
    batch = build()
    store.append(batch)
    return store, batch


def reference_rollup(
    points: pl.DataFrame, series: pl.DataFrame, cutoff: datetime, every: str
) -> pl.DataFrame:
    """Rollups computed by polars from the raw points (counters: Prometheus reset-aware increase in sum)."""
    prev = pl.col("value").shift(1).over("series_id")
    inc = (
        pl.when(prev.is_null())
        .then(None)
        .when(pl.col("value") >= prev)
        .then(pl.col("value") - prev)
        .otherwise(pl.col("value"))
    )
    frame = (
        points.join(series.select("series_id", "kind"), on="series_id")
        .sort("series_id", "ts")
        .with_columns(inc=inc)
        .filter(pl.col("ts") < cutoff)
        .with_columns(bucket=pl.col("ts").dt.truncate(every))
    )
    counter_sum = pl.when(pl.col("inc").count() > 0).then(pl.col("inc").sum())
    return (
        frame.group_by("series_id", "bucket")
        .agg(
            avg=pl.col("value").mean(),
            min=pl.col("value").min(),
            max=pl.col("value").max(),
            sum=pl.when(pl.col("kind").first() == "counter")
            .then(counter_sum)
            .otherwise(pl.col("value").sum()),
            count=pl.len().cast(pl.Int64),
            last=pl.col("value").sort_by("ts").last(),
        )
        .rename({"bucket": "ts"})
        .sort("series_id", "ts")
    )


def table(store, name: str) -> pl.DataFrame:
    cols = "series_id, ts, avg, min, max, sum, count, last"
    return store.cursor().sql(f"SELECT {cols} FROM {name} ORDER BY series_id, ts").pl()


def test_rollups_equal_polars_aggregates_and_raw_is_dropped(loaded):
    store, batch = loaded
    now = T0 + timedelta(hours=HOURS, minutes=30)
    report = apply_retention(store, raw_max_age=timedelta(hours=3), now=now)
    cutoff = T0 + timedelta(hours=3)  # floor(now - 3 h) to the hour
    assert report.cutoff == cutoff
    old = batch.points.filter(pl.col("ts") < cutoff)
    assert report.deleted_raw == old.height
    assert report.discarded_late == 0
    assert store.count("points") == batch.points.height - old.height
    remaining = store.cursor().execute("SELECT min(ts) FROM points").fetchall()[0][0]
    assert remaining >= cutoff

    for name, every, rolled in (("points_5m", "5m", report.rolled_5m), ("points_1h", "1h", report.rolled_1h)):
        want = reference_rollup(batch.points, batch.series, cutoff, every)
        got = table(store, name)
        assert rolled == got.height == want.height
        assert got.select("series_id", "ts", "count").equals(want.select("series_id", "ts", "count"))
        for col in ("avg", "min", "max", "sum", "last"):
            np.testing.assert_allclose(got[col].to_numpy(), want[col].to_numpy(), rtol=1e-12, err_msg=col)
    # hourly rows are exactly the 5-minute rows combined
    five = table(store, "points_5m").with_columns(pl.col("ts").dt.truncate("1h"))
    combined = (
        five.group_by("series_id", "ts")
        .agg(pl.col("sum").sum(), pl.col("count").sum())
        .sort("series_id", "ts")
    )
    hourly = table(store, "points_1h")
    np.testing.assert_allclose(combined["sum"].to_numpy(), hourly["sum"].to_numpy(), rtol=1e-12)
    assert combined["count"].to_list() == hourly["count"].to_list()


def test_second_run_is_idempotent(loaded):
    store, _ = loaded
    now = T0 + timedelta(hours=HOURS, minutes=30)
    first = apply_retention(store, raw_max_age=timedelta(hours=3), now=now)
    snapshot = (table(store, "points_5m"), table(store, "points_1h"), store.count("points"))
    second = apply_retention(store, raw_max_age=timedelta(hours=3), now=now)
    assert (second.rolled_5m, second.rolled_1h, second.deleted_raw) == (0, 0, 0)
    assert second.cutoff == first.cutoff
    assert table(store, "points_5m").equals(snapshot[0])
    assert table(store, "points_1h").equals(snapshot[1])
    assert store.count("points") == snapshot[2]


def test_reingested_old_points_do_not_double_count(loaded):
    store, batch = loaded
    now = T0 + timedelta(hours=HOURS, minutes=30)
    apply_retention(store, raw_max_age=timedelta(hours=3), now=now)
    rollups = (table(store, "points_5m"), table(store, "points_1h"))
    kw = dict(metric="req_total", start=T0, end=T0 + timedelta(hours=HOURS), step=timedelta(hours=1))
    before = q.resample(store, **kw)
    # the same file sent again: the old raw points are back (their originals were deleted)...
    store.append(batch)
    old = batch.points.filter(pl.col("ts") < T0 + timedelta(hours=3)).height
    assert store.count("points") == batch.points.height
    # ...queries still prefer the rollups for those buckets...
    during = q.resample(store, **kw)
    assert during["ts"].equals(before["ts"])
    np.testing.assert_allclose(during["value"].to_numpy(), before["value"].to_numpy(), rtol=1e-12)
    # ...and the next run discards them: the rolled hours are sealed
    again = apply_retention(store, raw_max_age=timedelta(hours=3), now=now)
    assert (again.discarded_late, again.deleted_raw, again.rolled_5m, again.rolled_1h) == (old, old, 0, 0)
    assert table(store, "points_5m").equals(rollups[0]) and table(store, "points_1h").equals(rollups[1])
    # a late point for an hour the series had no rollup for is rolled up normally
    b = MetricBuilder("late")
    sid = b.series("queue_depth", "api", "gauge", "1", {})
    b.point(sid, ns(T0 + timedelta(minutes=7)), 4.0, "late")
    store.append(b.build())
    late = apply_retention(store, raw_max_age=timedelta(hours=3), now=now)
    assert (late.rolled_5m, late.rolled_1h, late.deleted_raw, late.discarded_late) == (1, 1, 1, 0)


def test_late_point_in_a_sealed_hour_is_ignored_by_queries_and_discarded(store):
    b = MetricBuilder("test")
    sid = b.series("queue_depth", "api", "gauge", "1", {})
    b.point(sid, ns(T0 + MIN), 2.0, "p")
    store.append(b.build())
    apply_retention(store, raw_max_age=timedelta(hours=1), now=T0 + timedelta(hours=3))
    kw = dict(
        metric="queue_depth", start=T0, end=T0 + timedelta(hours=1), step=timedelta(hours=1), agg="count"
    )
    assert q.resample(store, **kw)["value"].to_list() == [1.0]
    # a late point in another 5-minute bucket of the same, already rolled hour
    b = MetricBuilder("late")
    b.point(b.series("queue_depth", "api", "gauge", "1", {}), ns(T0 + timedelta(minutes=30)), 9.0, "late")
    store.append(b.build())
    assert q.resample(store, **kw)["value"].to_list() == [1.0]
    assert q.resample(store, **{**kw, "agg": "max"})["value"].to_list() == [2.0]
    report = apply_retention(store, raw_max_age=timedelta(hours=1), now=T0 + timedelta(hours=3))
    assert (report.discarded_late, report.rolled_5m) == (1, 0)


@pytest.mark.parametrize("step_minutes", [5, 15, 60, 24 * 60])
def test_resample_across_dropped_raw_data_reads_rollups(loaded, step_minutes):
    store, _ = loaded
    step = timedelta(minutes=step_minutes)
    cases = [
        ("gpu_util", "avg", None),
        ("gpu_util", "max", None),
        ("gpu_util", "min", None),
        ("gpu_util", "count", None),
        ("gpu_util", "last", "avg"),
        ("gpu_util", "avg", "sum"),
        ("req_total", "rate", None),
        ("req_total", "increase", None),
        ("req_total", "max", None),
        ("tokens", "rate", None),
        ("tokens", "sum", None),
    ]
    # the window starts inside the rolled range, so the first increase needs a rolled predecessor
    windows = [(T0, T0 + timedelta(hours=HOURS)), (T0 + timedelta(hours=1), T0 + timedelta(hours=5))]
    before = {
        (m, a, x, w): q.resample(
            store, metric=m, agg=a, across=x, group_by=["tenant"], start=w[0], end=w[1], step=step
        )
        for m, a, x in cases
        for w in windows
    }
    series_before = q.resample_series(
        store, metric="req_total", start=T0, end=T0 + timedelta(hours=HOURS), step=step
    )
    apply_retention(store, raw_max_age=timedelta(hours=3), now=T0 + timedelta(hours=HOURS, minutes=30))
    assert store.count("points_5m") > 0
    for (m, a, x, w), want in before.items():
        got = q.resample(
            store, metric=m, agg=a, across=x, group_by=["tenant"], start=w[0], end=w[1], step=step
        )
        assert got.select("ts", "tenant").equals(want.select("ts", "tenant")), (m, a, x, w)
        np.testing.assert_allclose(
            got["value"].to_numpy(), want["value"].to_numpy(), rtol=1e-9, err_msg=str((m, a, x, w))
        )
    got = q.resample_series(store, metric="req_total", start=T0, end=T0 + timedelta(hours=HOURS), step=step)
    assert got.select("series_id", "ts").equals(series_before.select("series_id", "ts"))
    np.testing.assert_allclose(got["value"].to_numpy(), series_before["value"].to_numpy(), rtol=1e-9)


def test_successive_runs_link_counters_across_the_previous_cutoff(loaded):
    store, _ = loaded
    kw = dict(
        metric="req_total",
        start=T0,
        end=T0 + timedelta(hours=HOURS),
        step=timedelta(minutes=5),
        agg="increase",
        group_by=["tenant"],
    )
    want = q.resample(store, **kw)
    apply_retention(store, raw_max_age=timedelta(hours=4), now=T0 + timedelta(hours=HOURS))  # cutoff 2 h
    apply_retention(store, raw_max_age=timedelta(hours=2), now=T0 + timedelta(hours=HOURS))  # cutoff 4 h
    assert store.cursor().execute("SELECT min(ts) FROM points").fetchall()[0][0] >= T0 + timedelta(hours=4)
    got = q.resample(store, **kw)
    assert got.select("ts", "tenant").equals(want.select("ts", "tenant"))
    np.testing.assert_allclose(got["value"].to_numpy(), want["value"].to_numpy(), rtol=1e-9)


def test_finer_step_than_rollup_spreads_it(loaded):
    store, batch = loaded
    report = apply_retention(
        store,
        raw_max_age=timedelta(hours=3),
        now=T0 + timedelta(hours=HOURS),
        rollup_max_age_5m=timedelta(hours=5),
    )
    assert report.cutoff_5m == T0 + timedelta(hours=1)
    assert report.deleted_5m == 2 * 3 * 12  # one hour of 5-minute rows for 6 series
    assert store.cursor().execute("SELECT min(ts) FROM points_5m").fetchall()[0][0] == T0 + timedelta(hours=1)
    assert store.cursor().execute("SELECT min(ts) FROM points_1h").fetchall()[0][0] == T0
    # the first hour exists only hourly: 5-minute buckets get the hourly average and 1/12 of its increase
    kw = dict(start=T0, end=T0 + timedelta(hours=1), step=timedelta(minutes=5), group_by=["tenant"])
    avg = q.resample(store, metric="gpu_util", agg="avg", **kw).filter(pl.col("tenant") == "a")
    first_hour = batch.points.join(
        q.find_series(store, metric="gpu_util", matchers={"tenant": "a"}).select("series_id"), on="series_id"
    ).filter(pl.col("ts") < T0 + timedelta(hours=1))
    assert avg.height == 12
    np.testing.assert_allclose(avg["value"].to_numpy(), first_hour["value"].mean(), rtol=1e-12)
    hourly = q.resample(store, metric="req_total", agg="increase", **{**kw, "step": timedelta(hours=1)})
    spread = q.resample(store, metric="req_total", agg="increase", **kw)
    np.testing.assert_allclose(
        spread.group_by("tenant").agg(pl.col("value").sum()).sort("tenant")["value"],
        hourly.sort("tenant")["value"],
        rtol=1e-12,
    )


def test_retention_is_one_transaction(loaded, monkeypatch):
    store, batch = loaded
    real = retention._count

    def failing(cur, sql, params=None):
        if sql.startswith("DELETE FROM points WHERE"):
            raise RuntimeError("disk full")
        return real(cur, sql, params)

    monkeypatch.setattr(retention, "_count", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        apply_retention(store, raw_max_age=timedelta(hours=3), now=T0 + timedelta(hours=HOURS))
    assert store.count("points") == batch.points.height
    assert store.count("points_5m") == store.count("points_1h") == 0
    monkeypatch.setattr(retention, "_count", real)
    assert (
        apply_retention(store, raw_max_age=timedelta(hours=3), now=T0 + timedelta(hours=HOURS)).rolled_5m > 0
    )


def test_empty_store_validation_and_report(store):
    report = apply_retention(store, raw_max_age=timedelta(days=7), now=datetime(2024, 3, 8, 12, 34, 56))
    assert report == RetentionReport(0, 0, 0, datetime(2024, 3, 1, 12))
    assert report.to_dict() == {
        "rolled_5m": 0,
        "rolled_1h": 0,
        "deleted_raw": 0,
        "cutoff": "2024-03-01T12:00:00",
        "discarded_late": 0,
        "deleted_5m": 0,
        "cutoff_5m": None,
        "deleted_histograms": 0,
        "deleted_spans": 0,
        "deleted_logs": 0,
    }
    with pytest.raises(ValueError, match="positive timedelta"):
        apply_retention(store, raw_max_age=timedelta(0))
    with pytest.raises(ValueError, match="must not be shorter than raw_max_age"):
        apply_retention(store, raw_max_age=timedelta(days=7), rollup_max_age_5m=timedelta(days=1))


def test_optional_deletion_of_histograms(store):
    b = MetricBuilder("test")
    sid = b.series("latency_seconds", "api", "histogram", "s", {})
    for m in range(3):
        b.histogram(sid, ns(T0 + timedelta(days=m)), 1.0, 0.1, None, None, [1.0], [1.0, 0.0], False, "h")
    store.append(b.build())
    report = apply_retention(
        store,
        raw_max_age=timedelta(days=30),
        now=T0 + timedelta(days=2, hours=1),
        histograms_max_age=timedelta(days=1),
    )
    assert report.deleted_histograms == 2
    assert store.count("histograms") == 1
