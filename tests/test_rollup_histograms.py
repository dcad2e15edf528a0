"""Histogram rollups (``histograms_5m`` / ``histograms_1h``): bucket increments equal to a numpy reference,
incremental and idempotent passes, late points taken in, quantile and mean queries answering the same from
rollups as from raw histograms, and retention keeping what it deletes in the rollups."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from test_retention import HOURS, MIN, T0, ns
from test_rollup_recent import assert_same_after_a_pass

from ingest import queries as q
from ingest.batch import MetricBuilder
from ingest.retention import apply_retention, roll_up_recent, rollup_state

NOW = T0 + timedelta(hours=HOURS, minutes=30)
ROLLED_TO = T0 + timedelta(hours=HOURS - 1)  # the last sample is at 5:59:xx; 10 minutes of grace
BOUNDS = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
WIDE = [0.1, 0.5, 1.0, 5.0]


def build(seed: int = 5, hours: int = HOURS):
    """Latency histograms of 3 pods at jittered 1-minute samples: two cumulative (pod b restarts once and
    changes its bucket layout at the restart), one delta; pod a slows down in hour 3."""
    rng = np.random.default_rng(seed)
    b = MetricBuilder("test")
    for pod in ("a", "b", "c"):
        sid = b.series("latency_seconds", "api", "histogram", "s", {"pod": pod})
        cum = np.zeros(len(BOUNDS) + 1)
        bounds, total_sum = BOUNDS, 0.0
        for i in range(hours * 60):
            ts = T0 + i * MIN + timedelta(seconds=int(rng.integers(0, 60)))
            if pod == "b" and i == 200:  # process restart with a new layout: counting starts afresh
                bounds, cum, total_sum = WIDE, np.zeros(len(WIDE) + 1), 0.0
            weights = np.linspace(1.0, 0.2, len(bounds) + 1)
            if pod == "a" and 120 <= i < 180:
                weights = weights[::-1]
            new = rng.multinomial(int(rng.integers(20, 60)), weights / weights.sum()).astype(float)
            step_sum = float(new @ np.append(bounds, bounds[-1] * 2))
            if pod == "c":  # delta temporality: each point carries its own increments
                counts, count, value_sum = new, new.sum(), step_sum
            else:
                cum, total_sum = cum + new, total_sum + step_sum
                counts, count, value_sum = cum.copy(), cum.sum(), total_sum
            assert b.histogram(
                sid, ns(ts), float(count), value_sum, None, None, list(bounds), list(counts), pod != "c", "h"
            )
    return b.build()


@pytest.fixture
def loaded(store):
    batch = build()
    store.append(batch)
    return store, batch


def reference(histograms: pl.DataFrame, to: datetime, every: timedelta) -> dict:
    """(series_id, bucket start, bounds) -> (counts, sum, count) of the increments, in plain Python/numpy."""
    out: dict = defaultdict(lambda: [0.0, 0.0, 0.0])
    for _, rows in histograms.sort("ts").group_by("series_id", maintain_order=True):
        prev = None
        for row in rows.iter_rows(named=True):
            counts = np.array(row["counts"])
            if not row["cumulative"]:
                inc = (counts, row["sum"], row["count"])
            elif prev is None:
                inc = None
            elif prev["bounds"] != row["bounds"] or (counts < np.array(prev["counts"])).any():
                inc = (counts, row["sum"], row["count"])
            else:
                inc = (
                    counts - np.array(prev["counts"]),
                    row["sum"] - prev["sum"],
                    row["count"] - prev["count"],
                )
            prev = row
            if inc is None or row["ts"] >= to:
                continue
            start = T0 + (row["ts"] - T0) // every * every
            key = (row["series_id"], start, tuple(row["bounds"]))
            acc = out[key]
            acc[0] = acc[0] + inc[0]
            acc[1] += inc[1]
            acc[2] += inc[2]
    return dict(out)


def rollup_rows(store, table: str) -> dict:
    frame = store.cursor().sql(f"SELECT * FROM {table}").pl()
    return {
        (r["series_id"], r["ts"], tuple(r["bounds"])): [np.array(r["counts"]), r["sum"], r["count"]]
        for r in frame.iter_rows(named=True)
    }


def assert_rollups_match(store, to: datetime) -> None:
    raw = store.cursor().sql("SELECT * FROM histograms").pl()
    for table, every in (("histograms_5m", timedelta(minutes=5)), ("histograms_1h", timedelta(hours=1))):
        want, got = reference(raw, to, every), rollup_rows(store, table)
        assert sorted(got) == sorted(want), table
        for key, (counts, total, count) in want.items():
            np.testing.assert_allclose(got[key][0], counts, rtol=1e-12, err_msg=f"{table} {key}")
            np.testing.assert_allclose(got[key][1:], [total, count], rtol=1e-12, err_msg=f"{table} {key}")


def answers(store, step: timedelta) -> dict:
    windows = [
        (T0, T0 + timedelta(hours=HOURS)),
        (T0 + timedelta(hours=1, minutes=10), T0 + timedelta(hours=5)),
    ]
    out = {}
    for lo, hi in windows:
        for by in ((), ("pod",)):
            kw = dict(metric="latency_seconds", start=lo, end=hi, step=step, group_by=by)
            out[("q", lo, by)] = q.histogram_quantiles(store, quantiles=(0.5, 0.9, 0.99), **kw)
            out[("mean", lo, by)] = q.histogram_mean(store, **kw)
    return out


def test_a_pass_rolls_histogram_increments(loaded):
    store, batch = loaded
    report = roll_up_recent(store, now=NOW)
    assert report.histograms_to == ROLLED_TO
    # pod b has two layouts in the hour of its restart (3:20), and in its 5-minute bucket only if the restart
    # sample is not the bucket's first
    assert report.histograms_1h == 3 * (HOURS - 1) + 1
    assert store.count("histograms") == batch.histograms.height  # raw points stay
    assert_rollups_match(store, ROLLED_TO)
    with store.write_transaction() as cur:
        assert rollup_state(cur).histograms_to == ROLLED_TO
    again = roll_up_recent(store, now=NOW)
    assert (again.histograms_5m, again.histograms_1h, again.histograms_to) == (0, 0, ROLLED_TO)


def test_passes_are_incremental(store):
    batch = build()
    split = T0 + timedelta(hours=2, minutes=30)
    store.append(replace(batch, histograms=batch.histograms.filter(pl.col("ts") < split)))
    assert roll_up_recent(store, now=NOW).histograms_to == T0 + timedelta(hours=2)
    store.append(replace(batch, histograms=batch.histograms.filter(pl.col("ts") >= split)))
    second = roll_up_recent(store, now=NOW)
    assert second.histograms_to == ROLLED_TO and second.rebuilt_series == 0
    assert_rollups_match(store, ROLLED_TO)  # the first point after the split took its predecessor


@pytest.mark.parametrize("step_minutes", [1, 5, 15, 60, 180])
def test_queries_answer_the_same_from_rollups(loaded, step_minutes):
    assert_same_after_a_pass(loaded[0], lambda store: answers(store, timedelta(minutes=step_minutes)))


def test_aligned_steps_read_rollups_finer_steps_raw_histograms(loaded):
    """Changing the raw histograms under the rollups (behind the store's back) shows which one a query read."""
    store, _ = loaded
    roll_up_recent(store, now=NOW)
    kw = dict(metric="latency_seconds", start=T0, end=T0 + timedelta(hours=HOURS))
    five, one = (q.histogram_mean(store, step=s, **kw) for s in (timedelta(minutes=5), MIN))
    # the last minutes before the bound stay: the raw points after it difference against them
    store.cursor().execute("DELETE FROM histograms WHERE ts < $t", {"t": ROLLED_TO - timedelta(minutes=10)})
    five_after, one_after = (q.histogram_mean(store, step=s, **kw) for s in (timedelta(minutes=5), MIN))
    rolled = pl.col("ts") < ROLLED_TO
    assert five_after.filter(rolled).equals(five.filter(rolled)) and five.filter(rolled).height == 60
    assert five_after.filter(~rolled).equals(five.filter(~rolled))
    early = pl.col("ts") < ROLLED_TO - timedelta(minutes=10)
    assert one_after.filter(early).height == 0 and one.filter(early).height > 0


def test_late_histogram_points_are_taken_in_by_the_next_pass(loaded):
    store, _ = loaded
    roll_up_recent(store, now=NOW)
    kw = dict(metric="latency_seconds", start=T0, end=ROLLED_TO, step=timedelta(hours=1), group_by=["pod"])
    before = q.histogram_mean(store, **kw)
    # a late delta point for pod c, in the second hour: 100 slow observations
    b = MetricBuilder("late")
    sid = b.series("latency_seconds", "api", "histogram", "s", {"pod": "c"})
    late = [0.0] * len(BOUNDS) + [100.0]
    assert b.histogram(sid, ns(T0 + timedelta(hours=1, minutes=7, seconds=30)), 100.0, 500.0, None, None,
                       BOUNDS, late, False, "late")  # fmt: skip
    store.append(b.build())
    assert q.histogram_mean(store, **kw).equals(before)  # until the next pass, answers come from the rollups
    report = roll_up_recent(store, now=NOW)
    assert report.rebuilt_series == 1
    assert_rollups_match(store, ROLLED_TO)
    after = q.histogram_mean(store, **kw).filter(pl.col("pod") == "c")
    moved = after.join(before.filter(pl.col("pod") == "c"), on=["ts", "pod"], suffix="_before")
    changed = moved.filter(pl.col("count") != pl.col("count_before"))
    assert changed["ts"].to_list() == [T0 + timedelta(hours=1)]
    assert (changed["count"] - changed["count_before"]).to_list() == [100.0]


def test_retention_rolls_histograms_before_deleting_them(loaded):
    store, _ = loaded
    kw = dict(metric="latency_seconds", start=T0, end=T0 + timedelta(hours=3), step=timedelta(minutes=15))
    want = q.histogram_quantiles(store, quantiles=(0.5, 0.99), **kw)
    report = apply_retention(
        store, raw_max_age=timedelta(hours=5), histograms_max_age=timedelta(hours=3, minutes=20), now=NOW
    )
    assert report.deleted_histograms > 0
    with store.write_transaction() as cur:
        assert rollup_state(cur).histograms_to == T0 + timedelta(hours=4)  # through the hour 3:10 falls in
    got = q.histogram_quantiles(store, quantiles=(0.5, 0.99), **kw)
    assert got.drop("value").equals(want.drop("value"))
    np.testing.assert_allclose(got["value"].to_numpy(), want["value"].to_numpy(), rtol=1e-9)
    # a later pass goes on from there
    assert roll_up_recent(store, now=NOW).histograms_to == ROLLED_TO


def test_retention_cli_keeps_old_histograms_in_rollups(tmp_path, capsys):
    import json

    from app.cli import main
    from ingest.store import Store

    db = tmp_path / "h.duckdb"
    batch = build(hours=2)
    with Store(db) as store:
        store.append(batch)
    argv = ["retention", "--db", str(db), *"--raw-max-age 7d --histograms-max-age 1d --format json".split()]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["deleted_histograms"] == batch.histograms.height
    with Store(db) as store:  # the data is from 2024: every raw histogram went, every hour is in the rollups
        assert store.count("histograms") == 0
        kw = dict(metric="latency_seconds", start=T0, end=T0 + timedelta(hours=2), step=timedelta(hours=1))
        mean = q.histogram_mean(store, **kw)
    assert mean["ts"].to_list() == [T0, T0 + timedelta(hours=1)]
    # 3 pods x ~60 samples x 20-60 observations, minus the first points
    assert (mean["count"] > 3 * 55 * 20).all()


def test_hours_without_5_minute_rows_spread_their_hourly_row(loaded):
    store, _ = loaded
    roll_up_recent(store, now=NOW)
    apply_retention(
        store,
        raw_max_age=timedelta(hours=5),
        rollup_max_age_5m=timedelta(hours=5),
        histograms_max_age=timedelta(hours=5),
        now=NOW,
    )
    gone = T0 + timedelta(hours=1)  # hour 0 has neither raw histograms nor 5-minute rows any more
    assert (
        store.cursor()
        .execute("SELECT count(*) FROM histograms_5m WHERE ts < $t", {"t": gone})
        .fetchall()[0][0]
        == 0
    )
    kw = dict(metric="latency_seconds", start=T0, end=gone)
    hourly = q.histogram_mean(store, step=timedelta(hours=1), **kw)
    quarters = q.histogram_mean(store, step=timedelta(minutes=15), **kw)
    assert hourly.height == 1 and quarters.height == 4
    np.testing.assert_allclose(quarters["count"].to_numpy(), hourly["count"][0] / 4, rtol=1e-12)
    np.testing.assert_allclose(quarters["value"].to_numpy(), hourly["value"][0], rtol=1e-12)
    p99 = q.histogram_quantiles(store, quantiles=(0.99,), step=timedelta(minutes=15), **kw)
    want = q.histogram_quantiles(store, quantiles=(0.99,), step=timedelta(hours=1), **kw)
    np.testing.assert_allclose(p99["value"].to_numpy(), want["value"][0], rtol=1e-12)
    # the next hour still has its 5-minute rows: read as before, not spread
    later = q.histogram_mean(store, step=timedelta(minutes=15), start=gone, end=gone + timedelta(hours=1),
                             metric="latency_seconds")  # fmt: skip
    assert later["count"].n_unique() > 1
