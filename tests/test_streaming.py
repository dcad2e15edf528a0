"""StreamingDetector: exact incremental runs (in time per new point), causality, quantised metrics, detection of
shifts and spikes."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from detectors.streaming import (
    CHANNELS,
    StreamingDetector,
    StreamingState,
    StreamState,
    WindowedGaussianDetector,
)


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


def test_compiled_window_sum_is_the_vectorised_one_bit_for_bit() -> None:
    """A 1-d array goes through the compiled loop, rows of a 2-d array through the vectorised blocks: the same
    float additions in the same order, so the same bits (a batch pass and an incremental one may take either)."""
    from detectors.streaming import trailing_window_sum

    rng = np.random.default_rng(31)
    x = np.r_[rng.lognormal(0, 3, 700), rng.normal(size=300) * 1e-9, np.zeros(20)]
    for width in (1, 2, 3, 10, 60, 97, 1440, 2000):
        one = trailing_window_sum(x, width)
        rows = trailing_window_sum(np.vstack([x, x[::-1]]), width)
        np.testing.assert_array_equal(one, rows[0])
        np.testing.assert_array_equal(trailing_window_sum(x[::-1], width), rows[1])


def test_trailing_mean_is_start_independent_and_exact_on_equal_values() -> None:
    """The recent means of the mean channel: the same floats whatever the start of the array (so pieces and one
    pass agree), the mean so far before a full window, and exactly 0 over zeros after decimals (a running sum
    keeps a residue there, which on a quantised series scored as a surprise)."""
    from detectors.streaming import trailing_mean

    rng = np.random.default_rng(18)
    x = np.r_[rng.uniform(0.1, 0.5, 50), np.zeros(100), rng.normal(size=300)]
    for width in (1, 3, 10, 60):
        full = trailing_mean(x, width)
        np.testing.assert_allclose(full[: width - 1], np.cumsum(x[: width - 1]) / np.arange(1, width))
        np.testing.assert_allclose(
            full[width - 1 :], np.convolve(x, np.ones(width), "valid") / width, rtol=1e-9, atol=1e-12
        )
        for start in (1, 37, 200):
            np.testing.assert_array_equal(
                trailing_mean(x[start:], width)[width - 1 :], full[start + width - 1 :]
            )
        assert (full[50 + width - 1 : 150] == 0.0).all()


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
    # no calibration holds (the default holds the pattern channel, which also keeps the second incident
    # visible): the cap alone
    plain = StreamingDetector(suppress=0, long=1440, holds={}).score_online(frame)["score"].to_numpy()
    capped_det = StreamingDetector(suppress=0, long=1440, calibration_cap=20.0, holds={})
    capped = capped_det.score_online(frame)["score"].to_numpy()
    assert plain[2000:2010].max() < 5 <= capped[2000:2010].max()
    quiet = np.r_[capped[300:790], capped[1100:1990], capped[2200:]]
    assert quiet.max() < 5
    det = StreamingDetector(suppress=0, long=1440, calibration_cap=20.0, holds={}).fit(frame[:1900])
    np.testing.assert_allclose(det.score(frame[1900:])["score"].to_numpy(), capped[1900:], atol=1e-9)


def test_default_pattern_hold_keeps_a_repeated_incident_visible_and_is_incremental() -> None:
    """The default holds the pattern channel's calibration (60 points at z 4): the same incident a second time
    still pages where the channels without holds learnt it; pieces equal one pass."""
    rng = np.random.default_rng(5)
    n = 3000
    y = rng.normal(100, 2, n)
    y[800:950] += 60
    y[2000:2040] += 60
    frame = _frame(y)
    held = StreamingDetector(suppress=0, long=1440).score_online(frame)["score"].to_numpy()
    plain = StreamingDetector(suppress=0, long=1440, holds={}).score_online(frame)["score"].to_numpy()
    assert plain[2000:2010].max() < 5 <= held[2000:2010].max()
    assert np.r_[held[300:790], held[1100:1990], held[2200:]].max() < 4
    det = StreamingDetector(suppress=0, long=1440).fit(frame[:1900])
    np.testing.assert_allclose(det.score(frame[1900:])["score"].to_numpy(), held[1900:], atol=1e-9)


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


# -- the incremental path: cost per new point, the scores of the batch recomputation ------------------------

#: windows short enough to be cut and rolled many times
_SMALL = dict(window=100, long=400, min_history=50, suppress=30, means=(5, 20))
#: the streaming member of the ensemble (what ``rootwise detect`` runs on most series), a small detector with
#: the change channel and suppression (the channels the default had before the pattern channel joined it,
#: pinned: the series' length, hence what it holds, follows the detector's state length) and a weighted one
_INCREMENTAL = {
    "ensemble": dict(
        suppress=0,
        long=1440,
        calibration_cap=200.0,
        holds={"level": (240, 3.0)},
        channels=("level", "mean"),
        mean_gate=(10, 2.0),
    ),
    "small": dict(_SMALL, channels=("level", "change", "mean"), weights={}),
    "weighted": dict(
        _SMALL,
        channels=("level", "change", "mean", "median", "pattern"),
        medians=(15,),
        pattern_memory=200,
        weights={"pattern": 0.2, "change": 0.5, "median": 0.2},
        holds={"median": (20, 4.0)},
    ),
}
_NEW = 1700  # new points scored in chunks after the fit: more than either calibration window
#: chunk sizes of successive runs (cycled): a few new points per run (the per-point path), a whole catch-up
#: in one run (the rolling pass of the calibration), and runs of both kinds in turn — sizes on both sides of
#: the calibration's switch between its two paths, one longer than the ensemble's calibration window
_CHUNKINGS = {"1": (1,), "5": (5,), "once": (_NEW,), "mixed": (3, 700, 1, 127, 128, 5, 64, 1500)}


def _realistic(kind: str, n: int) -> np.ndarray:
    """Fleet-like series; each has a shift, a burst or a gap among its last ``_NEW`` points."""
    rng = np.random.default_rng(13)
    t = np.arange(n)
    if kind == "seasonal":
        y = 100 + 10 * np.sin(2 * np.pi * t / 1440) + rng.normal(0, 2, n)
        y[n - 200 :] += 30.0
        y[n - 250] += 120.0
    elif kind == "quantised":  # queue depth: small integers, MAD often 0
        y = np.round(np.maximum(rng.normal(2, 1.2, n), 0))
        y[n - 150 : n - 120] += 12
    elif kind == "flat":
        y = np.full(n, 7.0)
        y[n - 250] = 9.0
        y[n - 100 :] = 8.0
    elif kind == "bursts":  # a load balancer's spikes: zeros, now and then a few decimals (NAB)
        y = np.zeros(n)
        for at in rng.choice(n - 10, n // 150, replace=False):
            y[at : at + 4] = rng.uniform(0.1, 0.5, 4)
        y[n - 120 : n - 110] = 3.2
    else:  # one decimal, a gap
        y = np.round(50 + 10 * np.sin(2 * np.pi * t / 1440) + rng.normal(0, 1, n), 1)
        y[n - 180 : n - 170] = np.nan
    return y


def _legacy_state(det: StreamingDetector, y: np.ndarray) -> StreamState:
    """The state as versions before the incremental path kept it (and as ``detector_state`` may still hold it):
    the stream's tail and its running resolution per point, pickled the old way."""
    from detectors.streaming import ffill, running_resolution

    keep = det._bulk_length()
    yy = ffill(y)
    state = StreamState(np.zeros(0, np.int64), yy[-keep:], running_resolution(yy)[-keep:], y.size)
    return pickle.loads(pickle.dumps(state))


def _in_chunks(
    det: StreamingDetector, y: np.ndarray, start: int, sizes: int | tuple[int, ...], stop: int | None = None
) -> pl.DataFrame:
    """``score_update`` runs over ``y[start:stop]``, the run sizes cycling through ``sizes``."""
    sizes = (sizes,) if isinstance(sizes, int) else sizes
    stop = y.size if stop is None else stop
    parts, a, run = [], start, 0
    while a < stop:
        b = min(stop, a + sizes[run % len(sizes)])
        parts.append(det.score_update(_frame(y[a:b], start=a)))
        det = pickle.loads(pickle.dumps(det))  # the state goes through the store between runs
        assert isinstance(det.states_[1], StreamingState)
        a, run = b, run + 1
    return pl.concat(parts)


@pytest.mark.parametrize("config", sorted(_INCREMENTAL))
@pytest.mark.parametrize("kind", ["seasonal", "quantised", "flat", "decimals", "bursts"])
def test_incremental_scores_equal_the_batch_recomputation(config: str, kind: str) -> None:
    """Fitted on a history longer than anything the state keeps, then fed the new points in runs of 1 (the
    first 300 points), 5, all at once and mixed sizes: the scores (and bands) are those of the batch
    recomputation over the whole stream — equal up to rounding of running sums (rtol 1e-12) — and
    bit-identical however the runs were cut."""
    params = _INCREMENTAL[config]
    det = StreamingDetector(**params)
    hist = det._bulk_length() + 200
    y = _realistic(kind, hist + _NEW)
    one_pass = det.score_online(_frame(y))[hist:]
    runs = {}
    for name, sizes in _CHUNKINGS.items():
        fitted = StreamingDetector(**params).fit(_frame(y[:hist]))
        runs[name] = _in_chunks(fitted, y, hist, sizes, stop=hist + 300 if sizes == (1,) else None)
        expected = one_pass[: runs[name].height]
        for col in ("score", "expected", "lower", "upper"):
            np.testing.assert_allclose(
                runs[name][col], expected[col], rtol=1e-12, atol=1e-12, err_msg=f"{name}: {col}"
            )
    for name, run in runs.items():
        assert run.equals(runs["5"][: run.height]), name
    if kind in ("seasonal", "quantised"):
        assert (one_pass["score"] >= 4).any()  # the new stretch has something to find


@pytest.mark.parametrize("size", [5, 300, 1500])
def test_incremental_scores_equal_the_old_tail_recomputation(size: int) -> None:
    """Against the previous incremental path itself: each chunk rescored over the kept tail of the stream."""
    params = _INCREMENTAL["ensemble"]
    det = StreamingDetector(**params)
    hist = det._bulk_length() + 200
    y = _realistic("seasonal", hist + _NEW)
    new = _in_chunks(StreamingDetector(**params).fit(_frame(y[:hist])), y, hist, size)["score"].to_numpy()
    old = np.concatenate(
        [
            det._score_series(np.zeros(0), y[a : a + size], _legacy_state(det, y[:a])).score
            for a in range(hist, y.size, size)
        ]
    )
    np.testing.assert_allclose(new, old, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sizes", [(5,), (700, 5)])
def test_state_saved_by_an_earlier_version_continues_exactly(sizes: tuple[int, ...]) -> None:
    """A tail state read from ``detector_state`` is converted on its first update (a few points, or a
    catch-up); scores do not change."""
    params = _INCREMENTAL["ensemble"]
    det = StreamingDetector(**params)
    hist = det._bulk_length() + 200
    y = _realistic("decimals", hist + _NEW)
    one_pass = det.score_online(_frame(y))["score"].to_numpy()[hist:]
    det.states_ = {1: _legacy_state(det, y[:hist])}
    got = _in_chunks(det, y, hist, sizes, stop=hist + 1000)["score"].to_numpy()
    np.testing.assert_allclose(got, one_pass[:1000], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sizes", [(1,), (2, 150, 1, 400, 3)])
def test_young_streams_and_every_channel_are_incremental(sizes: tuple[int, ...]) -> None:
    """From the very first point (windows and calibration still filling) and with every channel, smoothing
    and the likelihood calibration: point by point, or in runs of mixed sizes, equals one pass."""
    y = _noisy_series(900, seed=14)
    y[300:305] = np.nan
    for params in (
        dict(
            window=60,
            long=200,
            min_history=30,
            suppress=10,
            means=(5,),
            medians=(7,),
            channels=CHANNELS,
            pattern_width=8,
            pattern_memory=100,
        ),
        dict(window=60, long=200, min_history=30, smooth=3, calibration="likelihood"),
        dict(window=60, long=200, min_history=30, smooth=4, channels=("level", "volatility", "range")),
    ):
        det = StreamingDetector(**params)
        one_pass = _online(det, y)
        det.fit(_frame(y[:1]))
        got = np.r_[one_pass[:1], _in_chunks(det, y, 1, sizes)["score"].to_numpy()]
        np.testing.assert_allclose(got, one_pass, rtol=1e-12, atol=1e-12, err_msg=str(params))


def test_a_state_kept_for_other_channels_warms_the_new_ones_up() -> None:
    """A state stored for other channels (the default before the median channel joined it) is not read
    channel by channel: the stream starts again from its kept values, warm-ups included. A state
    stored before the channels were recorded continues exactly when its channel count matches."""
    y = _noisy_series(1600, seed=3)
    y[1400:] += 8.0  # a shift after the switch
    common = dict(
        window=60, long=200, min_history=30, suppress=10, means=(5,), pattern_width=8, pattern_memory=100
    )
    old = StreamingDetector(channels=("change", "mean", "pattern"), **common).fit(_frame(y[:1200]))
    state = old.states_[1]
    assert state.channels == ("change", "mean:5", "pattern")
    new = StreamingDetector(channels=("change", "mean", "median", "pattern"), medians=(7,), **common)
    new.states_ = {1: state}
    got = new.score_update(_frame(y[1200:], start=1200))["score"].to_numpy()
    after = new.states_[1]
    assert after.channels == ("change", "mean:5", "median:7", "pattern") and len(after.memory) == 4
    assert np.isfinite(got).all() and after.seen == state.y.size + 400  # counted from the kept values
    # ... as a new stream that starts with them would be scored, warm-ups included
    fresh = _online(new, np.r_[state.y, y[1200:]])[state.y.size :]
    np.testing.assert_allclose(got, fresh, rtol=1e-12, atol=1e-12)
    assert got[200:210].max() >= 4  # the shift is found
    # an unrecorded state with the same channels continues as the recorded one does
    legacy = StreamingDetector(channels=("change", "mean", "pattern"), **common).fit(_frame(y[:1200]))
    legacy.states_ = {1: replace(legacy.states_[1], channels=())}
    again = StreamingDetector(channels=("change", "mean", "pattern"), **common).fit(_frame(y[:1200]))
    np.testing.assert_array_equal(
        legacy.score_update(_frame(y[1200:], start=1200))["score"].to_numpy(),
        again.score_update(_frame(y[1200:], start=1200))["score"].to_numpy(),
    )


def test_streaming_state_pickles_in_one_buffer_and_loads_old_pickles() -> None:
    """The state's float arrays travel as one buffer; a state pickled as the plain dataclass it was before
    (no ``channels``) still loads and continues the stream exactly."""
    params = _INCREMENTAL["weighted"]
    y = _realistic("seasonal", 2500)
    det = StreamingDetector(**params).fit(_frame(y[:2000]))
    state = det.states_[1]
    back = pickle.loads(pickle.dumps(state))
    for name in ("y", "z"):
        np.testing.assert_array_equal(getattr(back, name), getattr(state, name))
    assert back.channels == state.channels and back.seen == state.seen and len(back.raw) == len(state.raw)
    old = {k: v for k, v in vars(state).items() if k != "channels"}  # a plain dataclass's pickled state
    legacy = object.__new__(StreamingState)
    legacy.__setstate__(old)
    assert legacy.channels == ()
    again = StreamingDetector(**params)
    again.states_ = {1: legacy}
    np.testing.assert_array_equal(
        again.score_update(_frame(y[2000:], start=2000))["score"].to_numpy(),
        det.score_update(_frame(y[2000:], start=2000))["score"].to_numpy(),
    )


def test_incremental_state_is_small() -> None:
    """The kept state of a week of minutes is a fraction of the old tail (~29 KB: 3,600 values)."""
    params = _INCREMENTAL["ensemble"]
    old_bytes = 8 * StreamingDetector(**params)._bulk_length()
    for kind in ("seasonal", "quantised", "flat"):
        y = _realistic(kind, 7 * 1440)
        state = StreamingDetector(**params).fit(_frame(y)).states_[1]
        size = len(pickle.dumps(state, protocol=5))
        assert size < 0.6 * old_bytes, (kind, size)
        assert all(m.top_pos.size <= 1440 and m.hit_pos.size <= 1440 for m in state.memory)


def test_window_quantiles_match_polars() -> None:
    """Quantiles of the compiled sliding window are polars' rolling values, bit for bit: ties, partial windows,
    ``min_samples``, runs of any length and a series with gaps (NaN, polars' path) included."""
    from detectors.streaming import _rolling_quantiles, _window_stats

    rng = np.random.default_rng(15)
    for y in (
        rng.normal(size=700) * 1e3,
        rng.choice([0.0, 1.0, 2.0], 700),
        np.round(rng.lognormal(2, 1, 700), 1),
        np.where(rng.random(700) < 0.05, np.nan, rng.normal(size=700)),
    ):
        s = pl.Series(y).shift(1)
        expected = [*_rolling_quantiles(y, 100, 20), s.rolling_max(100, min_samples=2).to_numpy()]
        expected.append(s.rolling_min(100, min_samples=2).to_numpy())
        for end in (1, 7, 19, 20, 21, 99, 100, 101, 700):
            for n in {1, min(5, end), min(33, end), end}:
                got = _window_stats(y[:end], n, 100, 20, (0.5, 0.25, 0.75), extremes=True)
                for g, e in zip(got, expected, strict=True):
                    np.testing.assert_array_equal(g, e[end - n : end])


def test_exceedance_update_equals_exceedance_z() -> None:
    """The calibration from its kept top values and exceedances equals the batch one, from any cut, in runs
    of any size (the compiled loop sweeps out values behind the window every 64 points: runs around that) — and the scores and the
    state after them do not depend on how the stream was cut; a falling history (every value kept) and a
    rising one (every point an exceedance) included; with and without holding anomalies out of the history."""
    from detectors.calibration import (
        exceedance_parts,
        exceedance_state,
        exceedance_update,
        exceedance_z,
    )

    rng = np.random.default_rng(16)
    n = 3600
    falling = np.abs(rng.normal(size=n))
    falling[800:1400] = np.linspace(400, 1, 600)
    rising = np.abs(rng.normal(size=n))
    rising[2000:3500] = np.linspace(1, 400, 1500)
    series = {
        "heavy": np.abs(rng.standard_t(3, n)),
        "ties": rng.choice([0.0, 0.5, 1.0, 2.0, 7.0], n, p=[0.5, 0.2, 0.2, 0.08, 0.02]),
        "falling": falling,
        "rising": rising,
    }
    params = [(0.99, 300, None, 10), (0.9, 500, 3.0, 0), (0.99, 1440, 200.0, 0), (0.99, 1440, 200.0, 60)]
    chunkings = [(1,), (63,), (64,), (65,), (2000,), (3, 700, 1, 128, 5, 1500)]
    for (name, x), (q, window, cap, hold) in zip(series.items(), params, strict=True):
        kw = dict(q=q, window=window, min_history=100, cap=cap, hold=hold)
        ref = exceedance_z(x, **kw)
        for cut in (0, 1, 2, 777):
            state = exceedance_state(*exceedance_parts(x[:cut], **kw)[1:], q=q, window=window)
            runs = []
            for sizes in chunkings:
                stop = min(n, cut + 600) if sizes == (1,) else n
                out, st, a, run = [], state, cut, 0
                while a < stop:
                    b = min(stop, a + sizes[run % len(sizes)])
                    z, st = exceedance_update(x[a:b], st, **kw)
                    out.append(z)
                    a, run = b, run + 1
                got = np.concatenate(out)
                np.testing.assert_allclose(
                    got, ref[cut:stop], rtol=1e-12, atol=1e-12, err_msg=f"{name} {cut} {sizes}"
                )
                runs.append((got, st))
            # the same floats and the same state whatever the runs; the state is the batch pass's
            whole = exceedance_state(*exceedance_parts(x, **kw)[1:], q=q, window=window)
            for got, st in runs:
                np.testing.assert_array_equal(got, runs[-1][0][: got.size])
                if got.size == n - cut:
                    for field in ("count", "top_pos", "top_val", "top_cnt", "hit_pos", "run"):
                        np.testing.assert_array_equal(
                            getattr(st, field), getattr(whole, field), err_msg=field
                        )
                    np.testing.assert_array_equal(st.hit_exc, runs[-1][1].hit_exc)
                    np.testing.assert_allclose(st.hit_exc, whole.hit_exc, rtol=1e-12, atol=1e-12)
                assert st.top_pos.size <= window


def _exceedance_reference(
    x: np.ndarray, *, q: float, window: int, min_history: int, hold: int, hold_z: float
):
    """The exceedance calibration with holds, written plainly: numpy's quantile of the window, sums afresh."""
    from detectors.calibration import _exceedance_tail, z_of_tail

    hist, exc, hit, z = np.zeros(x.size), np.zeros(x.size), np.zeros(x.size, bool), np.zeros(x.size)
    run = 0
    for i, v in enumerate(x):
        w = slice(max(0, i - window), i)
        u = np.quantile(hist[w], q) if i >= 2 else np.inf
        hits = hit[w].sum()
        tail = _exceedance_tail(
            np.r_[v], np.r_[u], np.r_[exc[w].sum() if hits else 0.0], np.r_[hits], q, 1e-9
        )
        z[i] = z_of_tail(tail)[0] if i >= min_history else 0.0
        run = run + 1 if z[i] >= hold_z else 0
        hist[i] = u if 1 < run <= hold else v
        hit[i], exc[i] = hist[i] > u, max(hist[i] - u, 0.0)
    return z


def test_exceedance_hold_keeps_an_anomaly_out_of_its_own_calibration() -> None:
    """A sustained anomaly keeps scoring while it is held out of the history (without a hold it calibrates
    itself away within minutes); its first point and isolated spikes still join the history, so recurring
    spikes are learnt; after ``hold`` points a lasting change joins the history; the compiled pass equals a
    plain reference; states pickled before holds existed load with no run."""
    import pickle

    from detectors.calibration import exceedance_parts, exceedance_state, exceedance_z

    rng = np.random.default_rng(23)
    x = np.abs(rng.normal(size=2400))
    # a leak's memory against its trailing median: each minute several noise scales above the last
    x[2000:2200] += 6.5 + 3.0 * np.arange(200)
    kw = dict(q=0.99, window=1440, min_history=100)
    plain, held = exceedance_z(x, **kw), exceedance_z(x, hold=120, **kw)
    assert (
        plain[2010:2120].max() < 4.5 and plain[2030:2120].max() < 4
    )  # calibrated away: the failure the hold mends
    assert held[2001:2120].min() > 5 and held[2100] > 25
    assert held[2150:2200].max() < 4  # past the hold, the ramp is history
    # nothing changes before an anomaly (up to rounding: the compiled pass sums each window afresh)
    np.testing.assert_allclose(held[:2000], plain[:2000], rtol=1e-12, atol=1e-12)
    spikes = np.abs(rng.normal(size=2400))
    spikes[1000::50] += 12.0  # isolated: each joins the history, so the later ones score as without holds
    np.testing.assert_allclose(
        exceedance_z(spikes, hold=120, **kw), exceedance_z(spikes, **kw), rtol=1e-12, atol=1e-12
    )
    for hold, hold_z in ((120, 5.0), (7, 3.0)):
        short = np.r_[x[:300], x[2000:2200] - 5, x[300:500]]
        got = exceedance_z(short, q=0.98, window=250, min_history=50, hold=hold, hold_z=hold_z)
        ref = _exceedance_reference(short, q=0.98, window=250, min_history=50, hold=hold, hold_z=hold_z)
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
    state = exceedance_state(*exceedance_parts(x[:2050], hold=120, **kw)[1:], q=0.99, window=1440)
    assert state.run == 50
    back = pickle.loads(pickle.dumps(state))
    assert back.run == 50 and back.count == state.count
    for name in ("top_pos", "top_val", "top_cnt", "hit_pos", "hit_exc"):
        np.testing.assert_array_equal(getattr(back, name), getattr(state, name))
        assert getattr(back, name).dtype == getattr(state, name).dtype and getattr(back, name).flags.writeable
    # as pickled before holds and before the single buffer: a dict, positions relative to the count
    old = {
        "count": state.count,
        "top": np.stack([state.top_pos - state.count, state.top_cnt]).astype(np.int32),
        "top_val": state.top_val,
        "hit_pos": (state.hit_pos - state.count).astype(np.int32),
        "hit_exc": state.hit_exc,
    }
    restored = object.__new__(type(state))
    restored.__setstate__(old)
    assert restored.run == 0
    np.testing.assert_array_equal(restored.top_pos, state.top_pos)
    np.testing.assert_array_equal(restored.hit_pos, state.hit_pos)


def test_later_at_least_counts_exactly_below_k() -> None:
    """How many later values are at least as large: exact below ``k``, ``k`` or more otherwise — on noise,
    ties, falling and rising runs, lengths around the bound's block and values of ``k`` above it."""
    from detectors.calibration import _SPAN, _later_at_least

    rng = np.random.default_rng(17)
    for m in (0, 1, 5, _SPAN - 1, _SPAN, _SPAN + 1, 3 * _SPAN + 7, 1440):
        for x in (
            np.abs(rng.normal(size=m)),
            rng.choice([0.0, 1.0, 2.0], m),
            np.linspace(100, 0, m),
            np.linspace(0, 100, m),
            np.r_[np.abs(rng.normal(size=m - m // 2)), np.linspace(50, 0, m // 2)],
        ):
            exact = np.array([(x[p + 1 :] >= x[p]).sum() for p in range(m)], dtype=np.int64)
            for k in (1, 6, 16, 51, 2 * _SPAN):
                got = _later_at_least(x, k)
                low = exact < k
                np.testing.assert_array_equal(got[low], exact[low], err_msg=f"{m} {k}")
                assert (got[~low] >= k).all(), (m, k)


def test_compiled_exceedance_tail_equals_the_ufunc_formula() -> None:
    """The calibration's tail probability, compiled, against the formula written with numpy ufuncs (what it
    replaced): the same floats, edge cases included (no threshold yet, no exceedances, NaN sums, u <= 0)."""
    from detectors.calibration import _exceedance_tail

    def reference(x, u, exc_sum, hit_sum, q, min_scale):
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            sigma = np.nan_to_num(exc_sum / hit_sum, nan=0.0)
            spread = np.abs(u) * 0.05
            spread = np.where(np.isnan(spread) | (spread == np.inf), 0.0, spread)
            sigma = np.maximum(np.maximum(sigma, spread), min_scale)
            p_tail = (1.0 - q) * np.exp(-(x - u) / sigma)
            p_body = 1.0 - q * np.minimum(np.maximum(x / np.where(u > 0, u, np.inf), 0.0), 1.0)
        return np.where(x > u, p_tail, p_body)

    rng = np.random.default_rng(44)
    n = 5000
    x = np.abs(rng.standard_cauchy(n))
    u = np.where(rng.random(n) < 0.1, np.inf, rng.lognormal(0, 1, n))
    u[rng.random(n) < 0.05] = 0.0
    u[rng.random(n) < 0.02] = -1.0
    hit_sum = rng.integers(0, 30, n).astype(float)
    exc_sum = np.where(hit_sum > 0, rng.lognormal(0, 2, n) * hit_sum, 0.0)
    exc_sum[rng.random(n) < 0.02] = np.nan
    exc_sum[rng.random(n) < 0.01] = 1e308  # a sum past the largest float after division by a fraction
    for q, min_scale in ((0.98, 1e-9), (0.99, 0.5)):
        np.testing.assert_array_equal(
            _exceedance_tail(x, u, exc_sum, hit_sum, q, min_scale),
            reference(x, u, exc_sum, hit_sum, q, min_scale),
        )


def test_exceedance_without_exceedances_in_the_window() -> None:
    """A window whose exceedances have all left it has no mean excess: a spike after a quiet stretch scores
    high (a running sum's rounding residue divided by zero hits used to make sigma infinite: z = 1.28)."""
    from detectors.calibration import exceedance_parts, exceedance_state, exceedance_update, exceedance_z

    rng = np.random.default_rng(7)
    x = np.r_[np.abs(rng.standard_t(3, 60)).round(3), np.full(40, 0.01), [5.0]]
    kw = dict(q=0.9, window=30, min_history=20)
    assert exceedance_z(x, **kw)[-1] > 30
    state = exceedance_state(*exceedance_parts(x[:70], **kw)[1:], q=0.9, window=30)
    assert exceedance_update(x[70:], state, **kw)[0][-1] > 30


def test_weighted_bonferroni_is_calibrated_and_equal_weights_change_nothing() -> None:
    """Equal weights (any value) give the plain ``k x`` Bonferroni scores; a channel with a small weight counts
    its tail ``sum(w) / w`` times, the others ``sum(w)`` times (for 3 channels weighted 1, 1, 0.25: 2.25 x)."""
    from detectors.calibration import tail_of_z, z_of_tail

    y = _realistic("seasonal", 3000)
    three = ("level", "change", "mean")
    plain = StreamingDetector(channels=three, weights={}).score_online(_frame(y))["score"].to_numpy()
    equal = StreamingDetector(channels=three, weights={"level": 2.0, "change": 2.0, "mean": 2.0})
    np.testing.assert_allclose(
        equal.score_online(_frame(y))["score"].to_numpy(), plain, rtol=1e-12, atol=1e-12
    )
    det = StreamingDetector(channels=("level", "change"), means=(), weights={"change": 0.25})
    zs = [np.array([4.0, 1.0]), np.array([1.0, 4.0])]
    expected = z_of_tail(np.array([1.25 * tail_of_z(4.0), 1.25 / 0.25 * tail_of_z(4.0)]))
    np.testing.assert_allclose(det._combine(zs), expected, rtol=1e-12)


def test_ensemble_member_settings_are_the_ones_tested_incrementally() -> None:
    from detectors.ensemble import EnsembleDetector

    stream = EnsembleDetector()._members()[0]
    expected = StreamingDetector(**_INCREMENTAL["ensemble"])
    assert vars(stream) == vars(expected)


def _fixture_points(name: str) -> tuple[pl.Series, pl.DataFrame]:
    """A series exported from the simulator (``timestamp,value``, read as ``rootwise score`` reads it): its
    times and a points frame."""
    from ingest.csvtable import read_csv_table

    _, cols = read_csv_table(Path(__file__).parent / "fixtures" / name, {"timestamp": "time", "value": "number"})
    ts = cols["timestamp"]
    return ts, pl.DataFrame({"series_id": np.ones(ts.len(), np.int64), "ts": ts, "value": cols["value"]})


def test_ensemble_finds_a_repeat_incident_as_fast_as_the_first() -> None:
    """The simulator's seed 5, eu-west retriever latency (mean of the histogram, 4 days): vector DB latency
    incidents start at 00:19 and 15:55 on 31 October, both ramping to ~150x in 40 minutes. Held from z 5 for an
    hour, the first one's ramp filled the day's calibration tail (its top 1 %) at the cap and the second alarmed
    (z 5) 51 minutes in; held from z 3 for four hours, it alarms within 10 minutes, like the first. Nothing
    alarms outside the incidents and the two hours after each."""
    ts, points = _fixture_points("sim_seed5_retriever_eu_west_latency_mean.csv")
    minute = ((ts - ts[0]).dt.total_minutes()).to_numpy()
    starts = [int(np.searchsorted(ts.to_numpy(), np.datetime64(t))) for t in ("2026-10-31T00:19", "2026-10-31T15:55")]
    found = {}
    for name, holds in (("new", _INCREMENTAL["ensemble"]["holds"]), ("old", {"level": (60, 5.0)})):
        z = StreamingDetector(**{**_INCREMENTAL["ensemble"], "holds": holds}).score_online(points)["score"].to_numpy()
        found[name] = [int(minute[s + np.argmax(z[s:] >= 5)] - minute[s]) for s in starts]
        quiet = np.ones(z.size, bool)
        for s in starts:
            quiet[s : s + 240] = False
        assert (z[quiet] < 5).all(), name
    assert max(found["new"]) <= 10 and found["old"][0] <= 10, found
    assert found["old"][1] >= 30, found  # what holding from z 3 for four hours fixes


def _after_shift(mean_gate: tuple[int, float] | None, delta: float, length: int) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(3)
    y = 100 + rng.normal(0, 1, 4000)
    y[3000 : 3000 + length] += delta
    det = StreamingDetector(**{**_INCREMENTAL["ensemble"], "mean_gate": mean_gate})
    return det.score_online(_frame(y))["score"].to_numpy(), 3000 + length


def test_mean_gate_ends_the_alarm_when_a_large_shift_ends() -> None:
    """Latency five times its usual level for 20 minutes: the hour-long mean holds that for the next 40
    minutes, far above its calibration's (winsorised) tail, and kept the score above the resolve bar (z 3) for
    most of that hour. With the gate, the longer mean counts only as far as the last 10 points still show the
    shift, so the score is back under 3 within those 10 points; the shift itself scores as before."""
    ungated, end = _after_shift(None, 1000.0, 20)
    gated, _ = _after_shift((10, 2.0), 1000.0, 20)
    assert ungated[end - 20 : end].max() >= 30 and gated[end - 20 : end].max() >= 30
    assert (ungated[end + 30 : end + 60] >= 3).sum() >= 10  # what the gate fixes
    assert (gated[end + 10 :] < 3).all()


@pytest.mark.parametrize("delta", [3.0, 10.0])
def test_mean_gate_keeps_a_sustained_shift_as_visible(delta: float) -> None:
    """A shift of 3 or 10 standard deviations held for two hours: the last 10 points keep showing it, so the
    gate passes the longer mean on: the same peak, and at least 90 % of the points above the resolve bar."""
    ungated, end = _after_shift(None, delta, 120)
    gated, _ = _after_shift((10, 2.0), delta, 120)
    during, during_gated = ungated[end - 120 : end], gated[end - 120 : end]
    assert during.max() >= 4 and during_gated.max() == pytest.approx(during.max())
    assert (during_gated >= 3).sum() >= 0.9 * (during >= 3).sum() > 0


def test_a_hold_leaves_a_tail_at_the_cap_alone() -> None:
    """The simulator's seed 7, p99 time per output token of one GPU node (4 days): a quantised series whose every
    step is hundreds of robust units, so the level channel's tail sits at the 200-unit cap. A token inflation
    steps it up at 20:30 on 30 October, z 7.2 without any hold: it pages. A held point joins the history at its
    threshold, the cap, so the hold changes nothing there; held as 0 (before session 15) they pulled the
    threshold under the cap, the capped points left in the window became exceedances, and the step scored z 4.2
    and did not page."""
    ts, points = _fixture_points("sim_seed7_gpu_node_8_time_per_output_token.csv")
    at = int(np.searchsorted(ts.to_numpy(), np.datetime64("2026-10-30T20:30")))
    held = StreamingDetector(**_INCREMENTAL["ensemble"]).score_online(points)["score"].to_numpy()
    plain = StreamingDetector(**{**_INCREMENTAL["ensemble"], "holds": {}}).score_online(points)["score"].to_numpy()
    assert held[at] >= 7 and held[at] == pytest.approx(plain[at], rel=1e-9)
