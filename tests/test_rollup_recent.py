"""Rollups of recent data (``roll_up_recent``): equal to the raw points' aggregates, incremental, late points
taken in, queries read them for rollup-aligned steps and raw points otherwise, retention keeps working."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from test_retention import HOURS, MIN, T0, build, ns, reference_rollup, table

from ingest import queries as q
from ingest.batch import MetricBuilder
from ingest.retention import apply_retention, roll_up_recent, rollup_state

NOW = T0 + timedelta(hours=HOURS, minutes=30)
ROLLED_TO = T0 + timedelta(hours=HOURS - 1)  # the last sample is at 5:59:xx; 10 minutes of grace


@pytest.fixture
def loaded(store):
    batch = build()
    store.append(batch)
    return store, batch


def series_kinds(store) -> pl.DataFrame:
    return store.cursor().sql("SELECT series_id, kind FROM series").pl()


def assert_rollups_match_raw(store, cutoff) -> None:
    raw = store.cursor().sql("SELECT series_id, ts, value FROM points").pl()
    for name, every in (("points_5m", "5m"), ("points_1h", "1h")):
        want = reference_rollup(raw, series_kinds(store), cutoff, every)
        got = table(store, name)
        assert got.select("series_id", "ts", "count").equals(want.select("series_id", "ts", "count")), name
        for col in ("avg", "min", "max", "sum", "last"):
            np.testing.assert_allclose(got[col].to_numpy(), want[col].to_numpy(), rtol=1e-12, err_msg=name)


CASES = [
    ("gpu_util", "avg", None),
    ("gpu_util", "max", "max"),
    ("gpu_util", "count", None),
    ("req_total", "rate", None),
    ("req_total", "increase", "sum"),
    ("tokens", "sum", None),
]


def answers(store, step: timedelta) -> dict:
    windows = [
        (T0, T0 + timedelta(hours=HOURS)),
        (T0 + timedelta(hours=1, minutes=10), T0 + timedelta(hours=5)),
    ]
    return {
        (m, a, x, w): q.resample(
            store, metric=m, agg=a, across=x, group_by=["tenant"], start=w[0], end=w[1], step=step
        )
        for m, a, x in CASES
        for w in windows
    }


def test_a_pass_rolls_complete_hours_and_keeps_raw_points(loaded):
    store, batch = loaded
    report = roll_up_recent(store, now=NOW)
    assert report.rolled_to == ROLLED_TO and report.rebuilt_series == 0
    assert report.rolled_1h == 6 * (HOURS - 1) and report.rolled_5m == 6 * (HOURS - 1) * 12
    assert store.count("points") == batch.points.height
    assert_rollups_match_raw(store, ROLLED_TO)
    with store.write_transaction() as cur:
        state = rollup_state(cur)
    assert (state.raw_from, state.rolled_to) == (None, ROLLED_TO)
    again = roll_up_recent(store, now=NOW)
    assert (again.rolled_5m, again.rolled_1h, again.rolled_to) == (0, 0, ROLLED_TO)


def test_passes_are_incremental(store):
    batch = build()
    split = T0 + timedelta(hours=2, minutes=30)
    store.append(_part(batch, split, True))
    first = roll_up_recent(store, now=NOW)
    assert first.rolled_to == T0 + timedelta(hours=2)
    store.append(_part(batch, split, False))
    second = roll_up_recent(store, now=NOW)
    assert second.rolled_to == ROLLED_TO and second.rebuilt_series == 0
    assert second.rolled_1h == 6 * (HOURS - 3)  # hours 2 to 4 only
    assert_rollups_match_raw(store, ROLLED_TO)


def _part(batch, split, before: bool):
    keep = pl.col("ts") < split if before else pl.col("ts") >= split
    return replace(batch, points=batch.points.filter(keep))


@pytest.mark.parametrize("step_minutes", [1, 5, 15, 60, 180])
def test_queries_answer_the_same_from_rollups(loaded, step_minutes):
    assert_same_after_a_pass(loaded[0], lambda store: answers(store, timedelta(minutes=step_minutes)))


def assert_same_after_a_pass(store, answers) -> None:
    """``answers(store)`` (a dict of query results) gives the same rows and values after a rollup pass."""
    before = answers(store)
    roll_up_recent(store, now=NOW)
    after = answers(store)
    for key, want in before.items():
        got = after[key]
        assert want.height > 0 and got.drop("value").equals(want.drop("value")), key
        np.testing.assert_allclose(
            got["value"].to_numpy(), want["value"].to_numpy(), rtol=1e-9, err_msg=str(key)
        )


def test_aligned_steps_read_rollups_finer_steps_raw_points(loaded):
    """Changing the raw points under the rollups (behind the store's back) shows which one a query read."""
    store, _ = loaded
    roll_up_recent(store, now=NOW)
    kw = dict(metric="gpu_util", agg="max", start=T0, end=T0 + timedelta(hours=HOURS))
    five = q.resample(store, step=timedelta(minutes=5), **kw)
    one = q.resample(store, step=MIN, **kw)
    store.cursor().execute("UPDATE points SET value = value + 1000 WHERE ts < $t", {"t": ROLLED_TO})
    five_after = q.resample(store, step=timedelta(minutes=5), **kw)
    one_after = q.resample(store, step=MIN, **kw)
    rolled = pl.col("ts") < ROLLED_TO
    assert five_after.filter(rolled).equals(five.filter(rolled))  # from the rollups
    assert (five_after.filter(~rolled)["value"] == five.filter(~rolled)["value"]).all()  # raw, untouched
    assert (one_after.filter(rolled)["value"] > one.filter(rolled)["value"] + 900).all()  # raw


def test_late_points_are_taken_in_by_the_next_pass(loaded):
    store, _ = loaded
    roll_up_recent(store, now=NOW)
    sid = q.find_series(store, metric="req_total", matchers={"tenant": "a"})["series_id"][0]
    kw = dict(metric="req_total", agg="increase", start=T0, end=ROLLED_TO, step=timedelta(hours=1))
    before = q.resample(store, **kw)
    # a counter sample that came late, at the end of the second hour: a reset to 0, then counting on
    b = MetricBuilder("late")
    late_sid = b.series("req_total", "api", "counter", "1", {"tenant": "a"})
    b.point(late_sid, ns(T0 + timedelta(hours=1, minutes=59, seconds=59, microseconds=999_000)), 0.0, "late")
    store.append(b.build())
    assert late_sid == sid
    # until the next pass, queries keep answering from the rollups
    assert q.resample(store, **kw).equals(before)
    report = roll_up_recent(store, now=NOW)
    assert report.rebuilt_series == 1
    assert_rollups_match_raw(store, ROLLED_TO)
    after = q.resample(store, **kw)
    assert not after.equals(before)  # the reset moved increase from hour 2 into hour 3
    assert store.cursor().execute("SELECT count(*) FROM rollup_dirty").fetchall()[0][0] == 0


def test_retention_after_recent_rollups_deletes_raw_without_rolling_again(loaded):
    store, batch = loaded
    kw = dict(
        metric="req_total", agg="rate", start=T0, end=T0 + timedelta(hours=HOURS), step=timedelta(minutes=15)
    )
    want = q.resample(store, **kw)
    roll_up_recent(store, now=NOW)
    rollups = (table(store, "points_5m"), table(store, "points_1h"))
    report = apply_retention(store, raw_max_age=timedelta(hours=3), now=NOW)
    cutoff = T0 + timedelta(hours=3)
    assert report.cutoff == cutoff
    assert (report.rolled_5m, report.rolled_1h, report.discarded_late) == (0, 0, 0)
    assert report.deleted_raw == batch.points.filter(pl.col("ts") < cutoff).height
    assert table(store, "points_5m").equals(rollups[0]) and table(store, "points_1h").equals(rollups[1])
    with store.write_transaction() as cur:
        state = rollup_state(cur)
    assert (state.raw_from, state.rolled_to) == (cutoff, ROLLED_TO)
    got = q.resample(store, **kw)
    np.testing.assert_allclose(got["value"].to_numpy(), want["value"].to_numpy(), rtol=1e-9)
    # a 1-minute step reads rollups before the cutoff (spread) and raw points after it
    fine = {**kw, "step": MIN, "agg": "increase", "start": cutoff + timedelta(minutes=10)}
    got_fine = q.resample(store, **fine)
    store.cursor().execute("DELETE FROM points_5m WHERE ts >= $c", {"c": cutoff})
    store.cursor().execute("DELETE FROM points_1h WHERE ts >= $c", {"c": cutoff})
    assert (
        q.resample(store, **fine).equals(got_fine) and got_fine.height > 0
    )  # no rollup read after the cutoff


def test_overview_last_point_reads_rollups_for_services_gone_quiet(loaded):
    store, _ = loaded
    b = MetricBuilder("old")
    sid = b.series("gpu_util", "old-svc", "gauge", "%", {})
    last = T0 + timedelta(hours=1, minutes=17, seconds=42)
    for ts in (T0 + timedelta(minutes=3), T0 + timedelta(hours=1, minutes=2), last):
        b.point(sid, ns(ts), 1.0, "old")
    store.append(b.build())

    def last_points():
        frame = q.service_overview(store)
        return dict(zip(frame["service"], frame["last_point"], strict=True))

    raw = last_points()
    assert raw["old-svc"] == last and raw["api"] > ROLLED_TO
    roll_up_recent(store, now=NOW)
    assert last_points() == raw  # the quiet service from its last hourly row and the raw points in that hour
    apply_retention(store, raw_max_age=timedelta(hours=3), now=NOW)
    # its raw points are gone: the start of its last 5-minute row
    assert last_points() == {**raw, "old-svc": T0 + timedelta(hours=1, minutes=15)}
