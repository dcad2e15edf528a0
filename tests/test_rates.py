"""Quality floors of the error-rate / success-ratio detector on labelled synthetic counts."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from detectors.calibration import z_of_tail
from detectors.rates import RatioDetector
from detectors.registry import detector_class

T0 = datetime(2024, 3, 1)


def counts(bad, total, *, sid: int = 1, start: datetime = T0) -> pl.DataFrame:
    bad = np.asarray(bad, dtype=np.float64)
    d = {
        "series_id": np.full(bad.size, sid, dtype=np.int64),
        "ts": [start + timedelta(minutes=i) for i in range(bad.size)],
        "value": bad,
    }
    if total is not None:
        d["total"] = np.asarray(total, dtype=np.float64)
    return pl.DataFrame(d)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def fleet(rng) -> pl.DataFrame:
    """30 tenants over 1000 minutes: volumes from 5 to 20,000 requests a minute, error rates around 0.5 %."""
    parts = []
    for sid in range(1, 31):
        volume = float(rng.choice([5, 50, 500, 5000, 20_000]))
        rate = float(rng.uniform(0.003, 0.007))
        total = rng.poisson(volume, 1000).astype(float)
        parts.append(counts(rng.binomial(total.astype(int), rate), total, sid=sid))
    return pl.concat(parts)


def test_registry_and_input_kind():
    assert detector_class("ratio") is RatioDetector
    assert RatioDetector.input_kind == "ratio"


def test_two_requests_one_error_is_not_an_anomaly_but_ten_thousand_at_3pct_is(rng):
    total = rng.poisson(2000, 500).astype(float)
    hist = counts(rng.binomial(total.astype(int), 0.005), total)
    det = RatioDetector().fit(hist)
    p0 = det.states_[1].rate
    assert p0 == pytest.approx(0.005, rel=0.1)
    now = counts([1.0, 300.0], [2.0, 10_000.0], start=T0 + timedelta(days=1))
    z = det.score(now)["score"].to_numpy()
    # 1 of 2 at 50 %: P(X >= 1 | 2, p0) = 1 - (1 - p0)^2 ~ 1 %, z ~ 2.3 — not a page
    assert z[0] == pytest.approx(float(z_of_tail(1.0 - (1.0 - p0) ** 2)), abs=1e-6)
    assert z[0] < 5.0
    # 300 of 10,000 (3 %) against 0.5 %: expected 50 +- 7, certain
    assert z[1] >= 5.0
    out = det.score(now)
    assert out["is_anomaly"].to_list() == [False, True]
    assert out["expected"][1] == pytest.approx(10_000 * p0)
    assert out["lower"][1] < 10_000 * p0 < out["upper"][1] < 300


def test_no_alarm_on_binomial_noise_across_volumes(fleet):
    hist = fleet.filter(pl.col("ts") < T0 + timedelta(minutes=500))
    cur = fleet.filter(pl.col("ts") >= T0 + timedelta(minutes=500))
    out = RatioDetector().fit(hist).score(cur)
    assert out.height == cur.height
    assert out["is_anomaly"].sum() == 0


def test_detects_an_error_burst_on_a_big_tenant_not_the_same_ratio_on_a_tiny_one(rng):
    big_total = np.full(300, 10_000.0)
    tiny_total = np.full(300, 4.0)
    hist = pl.concat(
        [
            counts(rng.binomial(10_000, 0.005, 300), big_total, sid=1),
            counts(rng.binomial(4, 0.005, 300), tiny_total, sid=2),
        ]
    )
    det = RatioDetector().fit(hist)
    later = T0 + timedelta(days=1)
    # the same 2.5 % error ratio on both tenants (5x the baseline)
    now = pl.concat(
        [counts([250.0], [10_000.0], sid=1, start=later), counts([1.0], [40.0], sid=2, start=later)]
    )
    out = det.score(now).sort("series_id")
    assert out["is_anomaly"].to_list() == [True, False]


def test_overdispersed_history_is_not_a_stream_of_alarms(rng):
    # error rates that wander from interval to interval (beta-binomial), as real error counts do
    total = np.full(2000, 5000)
    rates = rng.beta(5, 995, 2000)  # mean 0.5 %, far more spread than binomial
    bad = rng.binomial(total, rates).astype(float)
    frame = counts(bad, total)
    det = RatioDetector().fit(frame[:1000])
    assert det.states_[1].dispersion > 2.0
    out = det.score(frame[1000:])
    assert out["is_anomaly"].sum() <= 2
    burst = det.score(counts([300.0], [5000.0], start=T0 + timedelta(days=3)))
    assert burst["is_anomaly"].item()


def test_success_ratio_mode_flags_drops_not_rises(rng):
    total = np.full(500, 10_000.0)
    good = rng.binomial(10_000, 0.995, 500).astype(float)
    det = RatioDetector(bad="low").fit(counts(good, total))
    now = counts([9_700.0, 10_000.0, 9_950.0], [10_000.0] * 3, start=T0 + timedelta(days=1))
    out = det.score(now)
    assert out["is_anomaly"].to_list() == [True, False, False]
    assert out["expected"][0] == pytest.approx(9_950.0, rel=1e-3)


def test_counts_without_total_use_the_poisson_rate(rng):
    hist = counts(rng.poisson(5.0, 1000), None)
    det = RatioDetector().fit(hist)
    now = counts([8.0, 40.0], None, start=T0 + timedelta(days=1))
    out = det.score(now)
    assert out["is_anomaly"].to_list() == [False, True]
    assert out["expected"][0] == pytest.approx(5.0, rel=0.1)
    # a null total in a frame that has the column is the same as no column
    with_nulls = now.with_columns(total=pl.lit(None, dtype=pl.Float64))
    assert det.score(with_nulls)["score"].to_list() == out["score"].to_list()


def test_update_learns_normal_points_and_skips_anomalies(rng):
    total = np.full(200, 1000.0)
    det = RatioDetector().fit(counts(rng.binomial(1000, 0.01, 200), total))
    before = det.states_[1]
    incident = counts(np.full(50, 200.0), np.full(50, 1000.0), start=T0 + timedelta(days=1))
    det.update(incident)
    assert det.states_[1].rate == pytest.approx(before.rate)
    normal = counts(rng.binomial(1000, 0.01, 50), np.full(50, 1000.0), start=T0 + timedelta(days=2))
    det.update(normal)
    assert det.states_[1].total == before.total + 50_000.0


def test_small_tenants_borrow_the_fleet_rate(rng):
    big = counts(rng.binomial(10_000, 0.01, 100), np.full(100, 10_000.0), sid=1)
    small = counts([0.0, 0.0], [3.0, 2.0], sid=2)
    det = RatioDetector().fit(pl.concat([big, small]))
    # 0 errors in 5 requests: without shrinkage the rate would be ~0.1 (Jeffreys) or 0; with it, near 1 %
    assert det.states_[2].rate == pytest.approx(0.01, rel=0.3)


def test_online_scoring_is_causal(fleet):
    det = RatioDetector()
    part = fleet.filter(pl.col("ts") < T0 + timedelta(minutes=300))
    full = det.score_online(fleet).filter(pl.col("ts") < T0 + timedelta(minutes=300))
    np.testing.assert_array_equal(det.score_online(part)["score"].to_numpy(), full["score"].to_numpy())
    assert full["is_anomaly"].sum() == 0
    # an unfitted series is scored the same way by ``score``
    np.testing.assert_array_equal(det.score(part)["score"].to_numpy(), full["score"].to_numpy())


def test_bad_parameters_and_columns_are_clear_errors():
    frame = counts([1.0], [10.0])
    with pytest.raises(ValueError, match="'high' or 'low'"):
        RatioDetector(bad="up").fit(frame)
    with pytest.raises(ValueError, match="total must be numeric"):
        RatioDetector().fit(frame.with_columns(total=pl.lit("x")))
