"""StreamingDetector: exact incremental runs, causality, quantised metrics, detection of shifts and spikes."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from detectors.streaming import StreamingDetector, WindowedGaussianDetector


def _frame(y: np.ndarray, start: int = 0, sid: int = 1) -> pl.DataFrame:
    ts = (np.arange(start, start + y.size) * 60_000_000).astype("datetime64[us]")
    return pl.DataFrame({"series_id": np.full(y.size, sid, dtype=np.int64), "ts": ts, "value": y})


def _online(det: StreamingDetector, y: np.ndarray) -> np.ndarray:
    return det.score_online(_frame(y))["score"].to_numpy()


def _noisy_series(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = 10 + 3 * np.sin(2 * np.pi * t / 288) + rng.normal(0, 1, n)
    y[n // 2 :] += 6.0  # a level shift, so suppression and alarms are exercised across the cut points
    y[n // 3] += 25.0
    return y


@pytest.fixture
def small_detector() -> StreamingDetector:
    # short windows so the tail is cut several times in a few thousand points
    return StreamingDetector(window=100, long=400, min_history=50, suppress=30, means=(5, 20))


@pytest.mark.parametrize("cut", [1, 49, 777, 1500])
def test_fit_prefix_then_score_rest_equals_one_pass(small_detector: StreamingDetector, cut: int) -> None:
    y = _noisy_series(3000)
    one_pass = _online(small_detector, y)
    det = StreamingDetector(**small_detector.get_params()).fit(_frame(y[:cut]))
    rest = det.score(_frame(y[cut:], start=cut))["score"].to_numpy()
    np.testing.assert_allclose(rest, one_pass[cut:], rtol=0, atol=1e-9)


def test_update_in_chunks_equals_one_pass(small_detector: StreamingDetector) -> None:
    y = _noisy_series(3000, seed=1)
    y[100:105] = np.nan  # gaps are forward-filled the same way in pieces
    one_pass = _online(small_detector, y)
    det = StreamingDetector(**small_detector.get_params())
    pieces, start = [], 0
    for size in (7, 300, 1, 993, 450, 1249):
        chunk = _frame(y[start : start + size], start=start)
        if start == 0:
            pieces.append(det.score(chunk)["score"].to_numpy())
            det.fit(chunk)
        else:
            pieces.append(det.score(chunk)["score"].to_numpy())
            det.update(chunk)
        start += size
    np.testing.assert_allclose(np.concatenate(pieces), one_pass, rtol=0, atol=1e-9)


def test_default_detector_is_incremental() -> None:
    det = StreamingDetector()
    y = _noisy_series(9000, seed=2)
    one_pass = _online(det, y)
    fitted = StreamingDetector().fit(_frame(y[:8000]))
    rest = fitted.score(_frame(y[8000:], start=8000))["score"].to_numpy()
    np.testing.assert_allclose(rest, one_pass[8000:], rtol=0, atol=1e-9)


def test_future_values_do_not_change_earlier_scores(small_detector: StreamingDetector) -> None:
    y = _noisy_series(2000, seed=3)
    before = _online(small_detector, y)
    changed = y.copy()
    changed[1200:] = changed[1200:] * 5 + 100
    after = _online(small_detector, changed)
    np.testing.assert_array_equal(before[:1200], after[:1200])


def test_quantised_counts_do_not_page() -> None:
    rng = np.random.default_rng(4)
    y = rng.choice([0.0, 1.0, 2.0], size=20_000, p=[0.6, 0.3, 0.1])
    z = _online(StreamingDetector(), y)
    assert np.isfinite(z).all()
    assert z.max() < 5.0


def test_constant_series_scores_nothing() -> None:
    z = _online(StreamingDetector(), np.full(3000, 7.0))
    assert np.isfinite(z).all() and z.max() < 5.0


@pytest.mark.parametrize("kind", ["level_shift", "spike"])
def test_shift_and_spike_are_detected_quickly(kind: str) -> None:
    rng = np.random.default_rng(5)
    y = 50 + rng.normal(0, 1, 4000)
    at = 3000
    if kind == "level_shift":
        y[at:] += 10.0
    else:
        y[at] += 15.0
    z = _online(StreamingDetector(), y)
    assert z[:at].max() < 5.0
    assert z[at : at + 5].max() >= 5.0


def test_onset_is_reported_once() -> None:
    rng = np.random.default_rng(6)
    y = 50 + rng.normal(0, 1, 4000)
    y[3000:] += 10.0
    det = StreamingDetector(alarm_z=5.0)
    z = _online(det, y)
    alarms = np.flatnonzero(z >= det.alarm_z)
    assert alarms.size and alarms[0] >= 3000
    # nothing pages again within the suppression span after the first alarm
    assert not (z[alarms[0] + 1 : alarms[0] + 1 + det.suppress] >= det.alarm_z).any()


def test_deterministic() -> None:
    y = _noisy_series(3000, seed=7)
    a = StreamingDetector().score_online(_frame(y))
    b = StreamingDetector().score_online(_frame(y))
    assert a.equals(b)


def test_unknown_channel_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown channel"):
        _online(StreamingDetector(channels=("level", "nope")), np.arange(500.0))


def test_windowed_gaussian_still_scores() -> None:
    y = _noisy_series(2000, seed=8)
    z = WindowedGaussianDetector().score_online(_frame(y))["score"].to_numpy()
    assert z.shape == (2000,) and np.isfinite(z).all()


# -- the pattern channel (left nearest-neighbour distance of the recent subsequence) ----------------------

_WITH_PATTERN = ("level", "change", "mean", "pattern")


def _changed_cycle(n: int = 6000, period: int = 100, at: int = 4500) -> np.ndarray:
    """A noisy cycle in which one period runs at double speed: same range, same level, a new shape."""
    rng = np.random.default_rng(9)
    t = np.arange(n)
    y = 10 + 5 * np.sin(2 * np.pi * t / period) + rng.normal(0, 0.3, n)
    y[at : at + period] = (
        10 + 5 * np.sin(4 * np.pi * t[at : at + period] / period) + rng.normal(0, 0.3, period)
    )
    return y


def test_pattern_flags_a_changed_cycle_the_level_channels_miss() -> None:
    y, at, period = _changed_cycle(), 4500, 100
    level = _online(StreamingDetector(channels=("level", "change", "mean"), suppress=0), y)
    pattern = _online(StreamingDetector(channels=("pattern",), suppress=0), y)
    # the level channels see nothing new: the changed cycle scores like the stationary stretch (z ~ 3)
    assert level[at : at + period].max() < min(3.5, level[1000:at].max() + 0.5)
    # the pattern channel does: far above anything it gave on the stationary stretch
    assert pattern[at : at + period].max() > 4.0
    assert pattern[at : at + period].max() > pattern[1000:at].max() + 1.5


@pytest.mark.parametrize("cut", [1, 650, 1777])
def test_pattern_channel_is_incremental(cut: int) -> None:
    det = StreamingDetector(
        window=100,
        long=400,
        min_history=50,
        suppress=30,
        means=(5,),
        channels=_WITH_PATTERN,
        pattern_width=12,
        pattern_memory=300,
    )
    y = _noisy_series(3000, seed=10)
    one_pass = _online(det, y)
    fitted = StreamingDetector(**det.get_params()).fit(_frame(y[:cut]))
    rest = fitted.score(_frame(y[cut:], start=cut))["score"].to_numpy()
    np.testing.assert_allclose(rest, one_pass[cut:], rtol=0, atol=1e-9)
    # and in many small pieces
    pieces, start = [], 0
    det2 = StreamingDetector(**det.get_params())
    for size in (40, 333, 1, 900, 1726):
        chunk = _frame(y[start : start + size], start=start)
        pieces.append(det2.score(chunk)["score"].to_numpy())
        det2.update(chunk)
        start += size
    np.testing.assert_allclose(np.concatenate(pieces), one_pass, rtol=0, atol=1e-9)


def test_pattern_channel_is_causal() -> None:
    det = StreamingDetector(channels=("pattern",), pattern_memory=400)
    y = _changed_cycle(3000, at=2000)
    before = _online(det, y)
    changed = y.copy()
    changed[1500:] = -changed[1500:] * 3
    np.testing.assert_array_equal(before[:1500], _online(det, changed)[:1500])


@pytest.mark.parametrize("kind", ["noise", "counts"])
def test_pattern_channel_does_not_page_on_stationary_series(kind: str) -> None:
    rng = np.random.default_rng(11)
    if kind == "noise":
        y = 50 + rng.normal(0, 1, 20_000)
    else:
        y = rng.choice([0.0, 1.0, 2.0], size=20_000, p=[0.6, 0.3, 0.1])
    z = _online(StreamingDetector(channels=_WITH_PATTERN), y)
    assert np.isfinite(z).all()
    assert z.max() < 5.0


def test_window_sum_is_exact_and_start_independent() -> None:
    from detectors.streaming import trailing_window_sum

    rng = np.random.default_rng(12)
    x = rng.lognormal(3, 2, 500)
    for width in (1, 5, 16, 23):
        full = trailing_window_sum(x, width)
        expected = np.convolve(x, np.ones(width))[: x.size]
        np.testing.assert_allclose(full[width - 1 :], expected[width - 1 :], rtol=1e-12)
        assert np.isinf(full[: width - 1]).all()
        np.testing.assert_array_equal(trailing_window_sum(x[77:], width)[width - 1 :], full[77 + width - 1 :])


def test_winsorised_calibration_keeps_the_second_incident_visible_and_is_incremental() -> None:
    """With ``calibration_cap``, a long incident earlier in the calibration window does not make the next one
    look normal; scoring in pieces still equals one pass."""
    rng = np.random.default_rng(5)
    n = 3000
    y = rng.normal(100, 2, n)
    y[800:950] += 60  # a 150-point incident: 10 % of the calibration window
    y[2000:2040] += 60
    ts = (np.datetime64("2026-01-01T00:00", "us") + np.arange(n).astype("timedelta64[m]")).astype(
        "datetime64[us]"
    )
    frame = pl.DataFrame({"series_id": np.zeros(n, np.int64), "ts": ts, "value": y})
    plain = StreamingDetector(suppress=0, long=1440).score_online(frame)["score"].to_numpy()
    capped_det = StreamingDetector(suppress=0, long=1440, calibration_cap=20.0)
    capped = capped_det.score_online(frame)["score"].to_numpy()
    assert plain[2000:2010].max() < 5 <= capped[2000:2010].max()
    quiet = np.r_[capped[300:790], capped[1100:1990], capped[2200:]]
    assert quiet.max() < 5
    det = StreamingDetector(suppress=0, long=1440, calibration_cap=20.0).fit(frame[:1900])
    np.testing.assert_allclose(det.score(frame[1900:])["score"].to_numpy(), capped[1900:], atol=1e-9)


def test_seasonal_fit_on_exactly_two_weeks_with_a_weekly_cycle() -> None:
    """MSTL drops a period without more than two cycles: exactly 14 days at a 30-minute-aligned start used to
    crash the default detector's seasonal fit (IndexError on the missing weekly column)."""
    from datetime import datetime, timedelta

    import polars as pl

    from detectors.registry import make_detector

    n = 14 * 1440
    i = np.arange(n)
    rng = np.random.default_rng(0)
    y = 100 + 10 * np.sin(2 * np.pi * i / 1440) + 30 * (i // 1440 % 7 >= 5) + rng.normal(0, 1, n)
    ts = [datetime(2026, 1, 5) + timedelta(minutes=int(k)) for k in i]
    frame = pl.DataFrame({"series_id": [1] * n, "ts": ts, "value": y}).with_columns(
        pl.col("series_id").cast(pl.Int64), pl.col("ts").cast(pl.Datetime("us"))
    )
    for name in ("stl", "ensemble"):
        det = make_detector(name).fit(frame)
        assert det.score(frame.tail(60)).height == 60
