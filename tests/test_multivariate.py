"""Quality floors of the multivariate (isolation forest) detector on a labelled synthetic service."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from scipy.signal import lfilter

from detectors.changepoint import robust_level_scale
from detectors.multivariate import IsolationForestDetector
from detectors.registry import detector_class

T0 = datetime(2024, 3, 1)
BREAK = 600  # row of the scored frame where latency stops following load


def service(
    rng: np.random.Generator, n: int, *, start: datetime = T0, brk: int | None = None
) -> pl.DataFrame:
    """Load (rps), latency that follows load, and an unrelated memory gauge; ids 11, 12, 13."""
    load = lfilter([1.0], [1.0, -0.95], rng.normal(0.0, 1.0, n))  # smooth, autocorrelated
    rps = 500.0 + 40.0 * load + rng.normal(0.0, 4.0, n)
    latency = 120.0 + 9.0 * load + rng.normal(0.0, 1.0, n)
    memory = 2048.0 + rng.normal(0.0, 30.0, n)
    if brk is not None:
        # latency jumps to the level of the opposite load: each metric is ordinary, the pair is not
        latency[brk] = 120.0 - 9.0 * load[brk]
    ts = [start + timedelta(minutes=i) for i in range(n)]
    return pl.concat(
        pl.DataFrame({"series_id": sid, "ts": ts, "value": v})
        for sid, v in ((11, rps), (12, latency), (13, memory))
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


@pytest.fixture
def history(rng) -> pl.DataFrame:
    return service(rng, 4000)


def later(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


def test_registry_and_input_kind():
    assert detector_class("isolation-forest") is IsolationForestDetector
    assert IsolationForestDetector.input_kind == "multivariate"


def test_finds_a_correlation_break_that_no_single_metric_shows(history):
    rng = np.random.default_rng(5)
    # pick a scored frame whose break is at a load well away from the mean, so the break is a real one
    for _ in range(20):
        cur = service(rng, 1000, start=later(4000), brk=BREAK)
        load_z = (cur.filter(pl.col("series_id") == 11)["value"][BREAK] - 500.0) / 40.0
        if abs(load_z) > 1.0:
            break
    det = IsolationForestDetector().fit(history)
    out = det.score(cur)
    assert out.height == 1000 and out["series_id"].unique().to_list() == [11]
    hits = np.flatnonzero(out["is_anomaly"].to_numpy())
    assert BREAK in hits
    assert set(hits) <= {BREAK, BREAK + 1}  # the break, and the difference feature of its undoing
    # neither metric alone: each value is within 3 robust sigmas of its own history
    for sid in (11, 12):
        level, scale = robust_level_scale(history.filter(pl.col("series_id") == sid)["value"].to_numpy())
        v = cur.filter(pl.col("series_id") == sid)["value"][BREAK]
        assert abs(v - level) / scale < 3.0


def test_the_forest_alone_ranks_the_break_first(history):
    rng = np.random.default_rng(5)
    for _ in range(20):
        cur = service(rng, 1000, start=later(4000), brk=BREAK)
        if abs((cur.filter(pl.col("series_id") == 11)["value"][BREAK] - 500.0) / 40.0) > 1.0:
            break
    out = IsolationForestDetector(distance=False).fit(history).score(cur)
    top = set(np.argsort(out["score"].to_numpy())[-2:].tolist())
    assert top & {BREAK, BREAK + 1}


def test_no_alarm_on_10k_rows_of_normal_operation(history):
    cur = service(np.random.default_rng(9), 10_000, start=later(4000))
    out = IsolationForestDetector().fit(history).score(cur)
    assert out.height == 10_000
    assert out["is_anomaly"].sum() == 0


def test_gaps_and_missing_series_are_imputed_and_group_id_is_kept(history):
    cur = service(np.random.default_rng(2), 300, start=later(4000))
    # two missed latency scrapes, and the memory gauge absent altogether
    gappy = cur.filter(~((pl.col("series_id") == 12) & pl.col("ts").is_in([later(4100), later(4101)])))
    gappy = gappy.filter(pl.col("series_id") != 13)
    # with shared timestamps, impute every gap from the other metrics (no forward fill): no false alarm
    out = IsolationForestDetector(group_id=99, max_gap=0).fit(history).score(gappy)
    assert out.height == 300 and out["series_id"].unique().to_list() == [99]
    assert out["score"].is_finite().all()
    assert out["is_anomaly"].sum() == 0
    # forward-filling a fast-moving metric can only disturb the gap and the row after it
    ffill = IsolationForestDetector(max_gap=3).fit(history).score(gappy)
    hits = set(np.flatnonzero(ffill["is_anomaly"].to_numpy()).tolist())
    assert hits <= {100, 101, 102}


def test_misaligned_timestamps_are_forward_filled(history):
    cur = service(np.random.default_rng(4), 300, start=later(4000))
    # memory is scraped 20 s after the others: every row of the pivot misses something
    shifted = cur.with_columns(
        pl.when(pl.col("series_id") == 13).then(pl.col("ts") + timedelta(seconds=20)).otherwise(pl.col("ts"))
    )
    out = IsolationForestDetector().fit(history).score(shifted)
    assert out.height == 600 and out["is_anomaly"].sum() == 0


def test_unfitted_scores_in_sample_and_is_deterministic(history):
    a = IsolationForestDetector(seed=3).score(history)
    b = IsolationForestDetector(seed=3).score(history)
    assert a.equals(b)
    assert a.height == 4000 and a["is_anomaly"].sum() == 0


def test_online_scoring_refits_on_the_prefix(history):
    out = IsolationForestDetector().score_online(history, warmup=500, refit_every=1000)
    s = out["score"].to_numpy()
    assert out.height == 4000 and (s[:500] == 0).all() and np.isfinite(s).all()
    assert out["is_anomaly"].sum() == 0
