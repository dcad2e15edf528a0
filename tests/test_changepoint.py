"""Quality floors of the change-point detectors (CUSUM, BOCPD) on labelled synthetic series."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from detectors.base import Threshold
from detectors.calibration import Z_MAX
from detectors.changepoint import BocpdDetector, CusumDetector, robust_level_scale
from detectors.registry import detector_class

T0 = datetime(2024, 3, 1)


def points(y: np.ndarray, *, sid: int = 1, start: datetime = T0) -> pl.DataFrame:
    n = len(y)
    return pl.DataFrame(
        {
            "series_id": np.full(n, sid, dtype=np.int64),
            "ts": [start + timedelta(minutes=i) for i in range(n)],
            "value": np.asarray(y, dtype=np.float64),
        }
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(42)


@pytest.fixture
def history(rng) -> pl.DataFrame:
    return points(rng.normal(100.0, 5.0, 2000))


def after(history: pl.DataFrame, y: np.ndarray) -> pl.DataFrame:
    """Points that continue ``history`` in time."""
    return points(y, start=history["ts"][-1] + timedelta(minutes=1))


def alarms(out: pl.DataFrame) -> np.ndarray:
    return np.flatnonzero(out["is_anomaly"].to_numpy())


def test_registry_names_resolve_to_the_classes():
    assert detector_class("cusum") is CusumDetector
    assert detector_class("bocpd") is BocpdDetector
    assert CusumDetector.causal and BocpdDetector.causal


# -- CUSUM ------------------------------------------------------------------------------------------------
def test_cusum_no_alarm_on_10k_points_of_stationary_noise(rng, history):
    out = CusumDetector().fit(history).score(after(history, rng.normal(100.0, 5.0, 10_000)))
    assert out.height == 10_000
    assert alarms(out).size == 0
    assert out["score"].max() < 5.0


def test_cusum_no_alarm_on_heavy_tailed_noise(rng):
    y = 100.0 + 5.0 * rng.standard_t(4, 12_000)
    hist = points(y[:2000])
    out = CusumDetector().fit(hist).score(after(hist, y[2000:]))
    assert alarms(out).size == 0


@pytest.mark.parametrize("shift_sd", [3.0, 5.0, 10.0])
def test_cusum_detects_a_deploy_level_shift_within_a_few_points_and_alarms_once(rng, history, shift_sd):
    y = np.r_[rng.normal(100.0, 5.0, 300), rng.normal(100.0 + 5.0 * shift_sd, 5.0, 300)]
    out = CusumDetector().fit(history).score(after(history, y))
    hits = alarms(out)
    assert hits.size >= 1 and 300 <= hits[0] <= 300 + 7, hits
    # the reference restarts at the new level: a persistent shift is one alarm, not 300
    assert hits.size == 1, hits
    # expected follows the new level after the change
    assert abs(out["expected"][-1] - (100.0 + 5.0 * shift_sd)) < 3.0


def test_cusum_detects_a_drop_as_well_as_a_rise(rng, history):
    y = np.r_[rng.normal(100.0, 5.0, 100), rng.normal(80.0, 5.0, 100)]
    hits = alarms(CusumDetector().fit(history).score(after(history, y)))
    assert hits.size and 100 <= hits[0] <= 107


def test_quantised_metric_with_zero_mad_does_not_explode(rng):
    # a queue depth: mostly 3, sometimes 2 or 4 — more than half the values equal, so MAD = 0
    y = rng.choice([2.0, 3.0, 4.0], size=12_000, p=[0.05, 0.8, 0.15])
    assert robust_level_scale(y) == (3.0, 1.0)  # floor: the smallest gap between distinct values
    hist = points(y[:2000])
    det = CusumDetector().fit(hist)
    out = det.score(after(hist, y[2000:]))
    scores = out["score"].to_numpy()
    assert np.isfinite(scores).all() and scores.max() < 5.0
    shifted = det.score(after(hist, np.r_[y[2000:2100], np.full(50, 6.0)]))
    # +3 units at scale 1 is a 3-sigma shift: the statistic needs ~15 / (3 - 0.5) points
    assert 100 <= alarms(shifted)[0] <= 107


def test_constant_history_uses_a_fraction_of_the_median_as_scale():
    hist = points(np.full(500, 200.0))
    det = CusumDetector().fit(hist)
    assert det.states_[1].scale == pytest.approx(2.0)
    out = det.score(after(hist, np.r_[np.full(50, 200.0), np.full(20, 230.0)]))
    scores = out["score"].to_numpy()
    assert np.isfinite(scores).all() and scores.max() <= Z_MAX
    assert alarms(out).tolist()[:1] and 50 <= alarms(out)[0] <= 53
    assert scores[:50].max() == 0.0


def test_cusum_update_carries_the_running_statistic_across_calls(rng, history):
    y = np.r_[rng.normal(100.0, 5.0, 500), rng.normal(118.0, 5.0, 500)]
    whole = CusumDetector().fit(history).score(after(history, y))
    det = CusumDetector().fit(history)
    a, b = after(history, y)[:520], after(history, y)[520:]
    first = det.score(a)
    det.update(a)
    second = det.score(b)
    np.testing.assert_allclose(pl.concat([first, second])["score"].to_numpy(), whole["score"].to_numpy())
    # a shift that straddles two calls still needs the points before the split
    assert alarms(whole).size == 1 and 500 <= alarms(whole)[0] <= 506


def test_cusum_scored_from_empty_history_warms_up_then_detects(rng):
    y = np.r_[rng.normal(10.0, 1.0, 1000), rng.normal(15.0, 1.0, 200)]
    out = CusumDetector(warmup=100).score_online(points(y))
    s = out["score"].to_numpy()
    assert (s[:100] == 0).all()
    hits = alarms(out)
    assert hits.size >= 1 and 1000 <= hits[0] <= 1006


def test_cusum_explicit_decision_interval(rng, history):
    y = np.r_[rng.normal(100.0, 5.0, 200), rng.normal(130.0, 5.0, 200)]
    # declaring at a low h restarts before the score reaches the threshold: no alarm, one restart
    out = CusumDetector(h=3.0).fit(history).score(after(history, y))
    assert alarms(out).size == 0
    assert abs(out["expected"][-1] - 130.0) < 5.0


# -- BOCPD ------------------------------------------------------------------------------------------------
def test_bocpd_no_alarm_on_10k_points_of_stationary_noise(rng, history):
    out = BocpdDetector().fit(history).score(after(history, rng.normal(100.0, 5.0, 10_000)))
    assert alarms(out).size == 0
    assert out["score"].max() < 5.0


@pytest.mark.parametrize(("shift_sd", "delay"), [(5.0, 8), (8.0, 3)])
def test_bocpd_detects_a_level_shift_within_a_few_points(rng, history, shift_sd, delay):
    y = np.r_[rng.normal(100.0, 5.0, 300), rng.normal(100.0 + 5.0 * shift_sd, 5.0, 100)]
    out = BocpdDetector().fit(history).score(after(history, y))
    hits = alarms(out)
    assert hits.size and 300 <= hits[0] <= 300 + delay, hits
    # "a change within the last `recent` points": flagged for at most `recent` points after the change
    assert hits.max() < 300 + BocpdDetector().recent
    # expected (posterior predictive mean) has moved to the new level
    assert abs(out["expected"][-1] - (100.0 + 5.0 * shift_sd)) < 3.0


def test_bocpd_state_persists_across_update(rng, history):
    y = np.r_[rng.normal(100.0, 5.0, 150), rng.normal(140.0, 5.0, 50)]
    whole = BocpdDetector().fit(history).score(after(history, y))
    det = BocpdDetector().fit(history)
    a, b = after(history, y)[:152], after(history, y)[152:]
    first = det.score(a)
    det.update(a)
    second = det.score(b)
    np.testing.assert_allclose(pl.concat([first, second])["score"].to_numpy(), whole["score"].to_numpy())
    assert alarms(whole).size and 150 <= alarms(whole)[0] <= 155


def test_bocpd_missing_values_keep_the_posterior(rng, history):
    y = rng.normal(100.0, 5.0, 300)
    y[100:105] = np.nan
    out = BocpdDetector().fit(history).score(after(history, y))
    assert np.isfinite(out["score"].to_numpy()).all() and alarms(out).size == 0


@pytest.mark.parametrize("cls", [CusumDetector, BocpdDetector])
def test_scoring_does_not_mutate_and_pickles(rng, history, cls):
    det = cls(threshold=Threshold(4.0)).fit(history)
    cur = after(history, np.r_[rng.normal(100.0, 5.0, 100), rng.normal(150.0, 5.0, 30)])
    before = pickle.dumps(det.states_)
    first = det.score(cur)
    assert pickle.dumps(det.states_) == before
    again = pickle.loads(pickle.dumps(det)).score(cur)
    assert first.equals(again)
