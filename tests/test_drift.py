"""Quality floors of the drift statistics and the rolling drift detector."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from detectors.drift import (
    PSI_MAJOR,
    PSI_MODERATE,
    DriftDetector,
    DriftRule,
    drift_report,
    js_divergence,
    ks_statistic,
    psi,
)
from detectors.registry import detector_class

T0 = datetime(2024, 3, 1)


def points(y: np.ndarray, *, sid: int = 1, start: datetime = T0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "series_id": np.full(len(y), sid, dtype=np.int64),
            "ts": [start + timedelta(minutes=i) for i in range(len(y))],
            "value": np.asarray(y, dtype=np.float64),
        }
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(3)


def test_registry_name():
    assert detector_class("drift") is DriftDetector


def test_statistics_are_zero_ish_for_the_same_distribution_and_large_for_a_shift(rng):
    ref = rng.normal(0.0, 1.0, 20_000)
    same = rng.normal(0.0, 1.0, 20_000)
    moved = rng.normal(1.0, 1.0, 20_000)
    assert psi(ref, same) < 0.01 and js_divergence(ref, same) < 0.001 and ks_statistic(ref, same)[0] < 0.02
    # a one-sd location shift: PSI ~ 1 (symmetrised KL of two unit normals is 1), KS D = 2 Phi(0.5) - 1 = 0.383
    assert psi(ref, moved) == pytest.approx(1.0, rel=0.2)
    assert ks_statistic(ref, moved)[0] == pytest.approx(0.383, abs=0.02)
    assert js_divergence(ref, moved) > 0.05


def test_one_percent_shift_on_a_million_samples_is_significant_but_not_drift(rng):
    ref = rng.normal(100.0, 10.0, 1_000_000)
    cur = rng.normal(101.0, 10.0, 1_000_000)  # 1 % of the mean, 0.1 sd
    report = drift_report(ref, cur)
    # the raw KS p-value says "different" with certainty — which is why it is not the rule
    assert report["ks_pvalue"] < 1e-100
    assert report["psi"] < PSI_MODERATE and report["ks"] < 0.1
    assert report["drift"] is False and report["severity"] == "none"
    assert report["score"] < 5.0


def test_a_real_shift_is_drift_and_graded_by_psi(rng):
    ref = rng.normal(100.0, 10.0, 50_000)
    major = drift_report(ref, rng.normal(110.0, 10.0, 5_000))
    assert major["drift"] and major["severity"] == "major" and major["psi"] >= PSI_MAJOR
    moderate = drift_report(ref, rng.normal(104.5, 10.0, 20_000))
    assert moderate["drift"] and moderate["severity"] == "moderate"
    assert set(major) >= {"psi", "ks", "ks_pvalue", "js", "score", "drift", "severity"}


def test_a_large_effect_on_a_tiny_sample_is_not_drift(rng):
    # 12 points are too few to tell, however different they look
    report = drift_report(rng.normal(0.0, 1.0, 10_000), rng.normal(0.8, 1.0, 12))
    assert report["psi"] > PSI_MODERATE
    assert report["drift"] is False


def test_a_stricter_rule_raises_the_bar(rng):
    ref, cur = rng.normal(0.0, 1.0, 20_000), rng.normal(0.45, 1.0, 20_000)
    assert drift_report(ref, cur)["drift"]
    assert not drift_report(ref, cur, rule=DriftRule(psi_min=PSI_MAJOR, ks_min=0.2, js_min=0.05))["drift"]


def test_token_lengths_quantised_reference(rng):
    # integer token counts with few distinct values: one bin per value, unseen lengths get their own bin
    ref = rng.choice([1, 2, 3, 4], size=10_000, p=[0.1, 0.4, 0.4, 0.1]).astype(float)
    same = rng.choice([1, 2, 3, 4], size=10_000, p=[0.1, 0.4, 0.4, 0.1]).astype(float)
    longer = rng.choice([3, 4, 5, 6], size=10_000, p=[0.1, 0.4, 0.4, 0.1]).astype(float)
    assert not drift_report(ref, same)["drift"]
    r = drift_report(ref, longer)
    assert r["drift"] and np.isfinite(r["psi"]) and r["severity"] == "major"


def test_detector_no_alarm_on_10k_stationary_points(rng):
    y = rng.gamma(2.0, 50.0, 15_000)  # skewed, like token lengths or latencies
    hist = points(y[:5000])
    out = DriftDetector().fit(hist).score(points(y[5000:], start=T0 + timedelta(minutes=5000)))
    assert out.height == 10_000
    assert out["is_anomaly"].sum() == 0


def test_detector_flags_a_shift_soon_after_it_and_not_before(rng):
    # token lengths double after a prompt-template change
    y = np.r_[rng.gamma(2.0, 50.0, 5000), rng.gamma(2.0, 50.0, 1000), rng.gamma(2.0, 100.0, 1000)]
    hist = points(y[:5000])
    out = DriftDetector(window=200).fit(hist).score(points(y[5000:], start=T0 + timedelta(minutes=5000)))
    hits = np.flatnonzero(out["is_anomaly"].to_numpy())
    assert hits.size and hits[0] >= 1000  # nothing before the shift
    assert hits[0] <= 1000 + 200  # flagged before the window is entirely past the shift
    assert out["is_anomaly"][1250:].all()  # a post-shift window stays flagged


def test_detector_first_windows_continue_the_fitted_history(rng):
    # the history ends with 99 shifted points: a frame that continues it starts with their window
    y = np.r_[rng.normal(0.0, 1.0, 1901), rng.normal(3.0, 1.0, 99), rng.normal(0.0, 1.0, 1000)]
    det = DriftDetector(window=100, min_window=30).fit(points(y[:2000]))
    cont = det.score(points(y[2000:], start=T0 + timedelta(minutes=2000)))["score"].to_numpy()
    assert cont[0] >= 5.0 and cont[-1] < 5.0
    # a frame that does not continue the history starts its windows from scratch
    fresh = det.score(points(y[2000:], start=T0 - timedelta(days=1)))["score"].to_numpy()
    assert (fresh[:29] == 0).all() and fresh.max() < 5.0
