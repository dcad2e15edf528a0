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
