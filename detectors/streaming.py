"""Streaming detectors: causal windowed surprises, per-channel tail calibration, onset-only alarms.

:class:`StreamingDetector` scores each point against the trailing history of its series only (so it runs on
the live stream and in ``rootwise score``). Pipeline, per series:

1. **Raw channels** (robust surprises, all against windows that end at the previous point):
   ``level`` — distance of the value from the trailing median in robust-scale units (IQR/1.349);
   ``change`` — the same for the absolute first difference; ``mean`` — the mean of the last k points
   (``means``, default 10 and 60) against the trailing median in standard-error units (a small sustained
   shift); ``median`` — the same with the median of the last k points (``medians``, default 60): a held
   shift in a spiky series, where the spikes swamp the recent mean and its calibration; ``volatility`` — ``|log|`` ratio of the recent to the trailing spread of differences (variance
   change); ``range`` — how far the value leaves the trailing window's min/max (a level never seen lately);
   ``pattern`` — contextual novelty: the distance of the last ``pattern_width`` values to their nearest match
   in the previous ``pattern_memory`` points (a causal left matrix profile; Yeh et al., ICDM 2016), so a
   shape never seen before — a flattened day, a missing jump, a new oscillation — scores even when every
   value is in the usual range. It is the idea behind HTM's prediction error (Ahmad et al. 2017) and
   Smirnov's Context Anomaly Detector (CAD OSE in NAB's results): a point is anomalous when its recent
   context is new.
   Quantised metrics (MAD = 0: counts, percentages in steps) get a scale floor from the series' resolution —
   the smallest positive step seen so far — instead of a division by zero.
2. **Calibration** of each channel against its own trailing ``long`` history: streaming peaks-over-threshold
   (SPOT; Siffer et al., KDD 2017; :func:`detectors.calibration.exceedance_z`) or Numenta's anomaly
   likelihood (Ahmad et al. 2017), giving a z per channel.
3. **Combination**: the max of the k channel z values with a Bonferroni correction (``k x`` tail), so the
   combined score is still a tail-probability z and one threshold means the same on every series.
4. **Onset-only alarms** (Merlion's alarm post-rule; Bhatnagar et al. 2021): after a point scores
   ``>= alarm_z`` the next ``suppress`` points score at most 0, so an incident pages once.

On NAB v1.1 the ``median`` channel (60 points, weight 0.2, held 60 points at z 4 like the pattern channel, scoring
from stream point ``59 + 3 * min_history``) raises the default below to 71.2 / 63.5 / 75.9 (99 windows found
instead of 93, 170 false alarms instead of 148; realAWSCloudwatch 58.2 → 64.5, realTweets 75.6 → 79.9,
realKnownCause 49.6 → 53.3, no category loses); leave-one-category-out over 13 points (the previous default;
median length 40..100, weight 0.1..0.5, hold 30..150 points at z 3.5..4.5) scores 70.2 / 62.3 / 74.9. The median
length matters: 40 / 50 / 80 / 100 points score 67.6 / 68.1 / 67.6 / 69.3 standard. Its batch cost is ~5 %.
Before it, on NAB v1.1 (causal, one parameter set for the corpus) the defaults — ``change``, ``mean`` (10, 60) and
``pattern`` at weight 0.2 in a weighted Bonferroni combination (``weights``), the pattern channel's calibration
held for 60 points at z 4 (``holds``) — score 67.1 / 60.3 / 71.5 (standard / reward_low_FP / reward_low_FN),
against 39.6 / 20.9 / 47.4 for NAB's windowed Gaussian. The hold adds +0.8 / +0.8 / +0.8 (one more window
found, in realAWSCloudwatch; no category loses; every setting of 30..300 points at z 3.5..4.5 scores
66.3..67.1 standard, though z 3.5 loses ~0.6 reward_low_FP); leave-one-category-out over six points (no
hold; 30, 60, 150 points at z 4; 60 at z 3.5 and 4.5) scores 65.8 / 58.8 / 70.5, against 65.0 / 58.0 / 69.9
for the no-hold point alone the same way. Before the hold:
66.3 / 59.6 / 70.6; leave-one-category-out over 12 grid points (channel sets level+change+mean, +pattern, change+mean+pattern;
pattern weight 0.1/0.2/0.5, level 0.2) scores 64.9 / 58.7 / 69.4; the previous default (level, change, mean at
equal weights: 61.4 / 53.2 / 66.2) scores 59.9 / 51.8 / 64.6 the same way. At equal weight the pattern channel
won the artificial category (24.9 → 83.5) but cost the real ones a little (its ``5 x`` Bonferroni share); at
weight 0.2 it pages only when very sure and the real categories keep their scores. ``level`` is off by default
on NAB's evidence (a spike is also a jump, a held shift also moves the means; dropping it lowers the
Bonferroni factor), and it costs ~0.8 standard at weight 0.2. ``volatility`` and ``range`` are off: on NAB
they cost about one point. A hashed-context count (CAD OSE's representation: quantised recent values,
novelty = -log frequency of the context) did less (+1.1 standard). The pattern channel makes the default
~3x slower per point (all of NAB in ~3 s, ~115,000 points/s with 2 processes); the fleet ensemble sets its own channels and is unaffected.

:class:`WindowedGaussianDetector` is NAB's "windowed Gaussian" baseline (39.6 standard), kept as an anchor.

Incremental runs (``rootwise detect`` every few minutes) cost time per *new* point, not per point of history
(:class:`StreamingState`): the last ``window`` (+ a little) values, from which the raw channels of a new point
are computed on their own; per channel, what its calibration still needs of the trailing ``long`` raw
scores — the values that can still be among the top few of a later window (the tail threshold is a quantile
near the top) and the exceedances (:class:`~detectors.calibration.ExceedanceState`); and the last
``suppress`` combined scores. The scores equal those of one batch pass over the whole stream up to rounding
of running sums (relative 1e-12; quantiles, maxima and the recent means are the same floats), and do not
depend on how the stream was cut into pieces. New points are scored one by one in compiled loops
(:mod:`detectors.compiled`): one sorted window slides over them for the raw channels' quantiles, and each
channel's calibration touches only the kept values a new point moves, so a catch-up costs time proportional
to its points. A batch pass over the last ``window + 2 * long`` points (a little more) builds the state on a first fit, and
converts the tail states kept by earlier versions. Warm-ups count from the start of the stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from detectors.base import (
    Detector,
    SeriesScores,
    Threshold,
    check_points,
    iter_series,
    pack_arrays,
    scores_frame,
    unpack_arrays,
)
from detectors.calibration import (
    Z_MAX,
    anomaly_likelihood,
    exceedance_parts,
    exceedance_state,
    exceedance_update,
    nan_to_zero,
    tail_of_z,
    z_of_tail,
)
from detectors.compiled import compiled


@dataclass(frozen=True)
class StreamState:
    """Tail of the stream needed to continue exactly: values and the running resolution per point; ``seen`` is
    the number of points consumed so far (warm-up counts from the start of the stream, not of the tail).
    :class:`WindowedGaussianDetector`'s state; :class:`StreamingDetector` kept it before :class:`StreamingState`
    (and converts it on the first update).

    Pickled compactly (``rootwise detect`` stores one per series): the running resolution is a non-increasing
    step function, kept as run lengths; ``t`` is not needed to continue and is not stored.
    """

    t: np.ndarray
    y: np.ndarray
    res: np.ndarray  # running resolution at each tail point
    seen: int

    @property
    def resolution(self) -> float:
        return float(self.res[-1]) if self.res.size else np.inf

    def __getstate__(self) -> dict[str, object]:
        res = np.asarray(self.res, dtype=np.float64)
        if res.size:
            change = np.r_[True, res[1:] != res[:-1]]
            values, starts = res[change], np.flatnonzero(change)
            lengths = np.diff(np.r_[starts, res.size])
        else:
            values, lengths = res, np.zeros(0, np.int64)
        return {"y": self.y, "res_values": values, "res_lengths": lengths, "seen": self.seen}

    def __setstate__(self, state: dict[str, object]) -> None:
        object.__setattr__(self, "t", np.zeros(0, np.int64))
        object.__setattr__(self, "y", state["y"])
        object.__setattr__(self, "res", np.repeat(state["res_values"], state["res_lengths"]))  # type: ignore[call-overload]
        object.__setattr__(self, "seen", state["seen"])


@dataclass(frozen=True)
class StreamingState:
    """What :class:`StreamingDetector` keeps to continue a stream exactly, in time proportional to the new
    points: the last values its windows read (``y``), the running resolution, the number of points seen; per
    channel its calibration memory (:class:`~detectors.calibration.ExceedanceState`, or the last raw scores
    for the anomaly likelihood) and its last ``smooth - 1`` raw surprises (``raw``); and the last
    ``suppress`` combined scores before suppression (``z``); the raw channels the memory belongs to
    (``channels``, e.g. ``("change", "mean:10", "mean:60", ...)``; empty in states stored before it was kept).
    """

    y: np.ndarray
    resolution: float
    seen: int
    memory: tuple[Any, ...]
    raw: tuple[np.ndarray, ...]
    z: np.ndarray
    channels: tuple[str, ...] = ()

    def __getstate__(self) -> tuple[object, ...]:
        # the float arrays in one buffer (see :func:`~detectors.base.pack_arrays`)
        arrays = (self.y, *self.raw, self.z)
        sizes = tuple(a.size for a in arrays)
        blob = pack_arrays(*(np.asarray(a, dtype=np.float64) for a in arrays))
        return (self.resolution, self.seen, self.memory, self.channels, sizes, blob)

    def __setstate__(self, state: tuple[object, ...] | dict[str, object]) -> None:
        if isinstance(state, dict):  # pickled before the single buffer (a plain dataclass)
            for k, v in state.items():
                object.__setattr__(self, k, v)
            return
        resolution, seen, memory, channels, sizes, blob = state
        arrays = unpack_arrays(blob, [(np.float64, n) for n in sizes])  # type: ignore[arg-type, attr-defined]
        object.__setattr__(self, "y", arrays[0])
        object.__setattr__(self, "resolution", resolution)
        object.__setattr__(self, "seen", seen)
        object.__setattr__(self, "memory", memory)
        object.__setattr__(self, "raw", tuple(arrays[1:-1]))
        object.__setattr__(self, "z", arrays[-1])
        object.__setattr__(self, "channels", channels)


class _Pass(NamedTuple):
    """A batch pass of :meth:`StreamingDetector._channels`."""

    z: np.ndarray
    med: np.ndarray
    scale: np.ndarray
    z_raw: np.ndarray  # combined score before the suppression
    memory: list[tuple[np.ndarray, ...]]  # per channel: exceedance (hist, hits, exc) or likelihood (raw,)
    raw: list[np.ndarray]  # per channel: the raw surprise before smoothing


def _empty_state() -> StreamState:
    return StreamState(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), 0)


def ffill(y: np.ndarray) -> np.ndarray:
    """Forward-fill NaN (leading NaN become the first finite value, or 0).

    Examples
    --------
    >>> ffill(np.array([np.nan, 1.0, np.nan, 3.0])).tolist()
    [1.0, 1.0, 1.0, 3.0]
    """
    y = np.asarray(y, dtype=np.float64)
    bad = ~np.isfinite(y)
    if not bad.any():
        return y
    if bad.all():
        return np.zeros_like(y)
    idx = np.where(bad, 0, np.arange(y.size))
    np.maximum.accumulate(idx, out=idx)
    out = y[idx]
    first = np.flatnonzero(~bad)[0]
    out[:first] = y[first]
    return out


def running_resolution(y: np.ndarray, start: float = np.inf) -> np.ndarray:
    """Smallest positive step between consecutive values seen up to each point (causal quantisation floor)."""
    d = np.abs(np.diff(y, prepend=y[:1] if y.size else y))
    d = np.where(d > 0, d, np.inf)
    if d.size:
        d[0] = min(d[0], start)
    return np.minimum.accumulate(d) if d.size else d


def robust_surprise(
    y: np.ndarray, resolution: np.ndarray, *, window: int, min_periods: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance of each value from the trailing median, in trailing robust-scale units (causal).

    Returns ``(surprise, median, scale)``; the window ends at the previous point. The scale is the larger of
    the trailing IQR/1.349, the resolution and a tiny fraction of the level, so quantised and flat series do
    not divide by zero.
    """
    med, q25, q75 = _rolling_quantiles(y, window, min_periods)
    return _robust_from_quantiles(y, resolution, med, q25, q75)


def _rolling_quantiles(y: np.ndarray, window: int, min_periods: int) -> tuple[np.ndarray, ...]:
    # median, quartiles of the ``window`` values before each point (polars: order statistics, then linear
    # interpolation ``lo + (hi - lo) * frac`` — :func:`_window_order_steps` reproduces the same floats)
    med, q25, q75 = _polars_window_stats(y, window, min_periods, (0.5, 0.25, 0.75))
    return med, q25, q75


def _polars_window_stats(
    y: np.ndarray, window: int, min_samples: int, quantiles: tuple[float, ...], extremes: bool = False
) -> list[np.ndarray]:
    """The ``quantiles`` (and with ``extremes`` the max and min, 2 values at least) of the ``window`` values
    before each point of ``y``, by polars' rolling kernels; NaN at the first point.

    Rolled over ``y`` without its last value, the statistic at ``i - 1`` is the one before point ``i``. Not
    ``shift(1)``: the null that leaves at the start sends polars' rolling quantiles down their null-aware path,
    ~4x slower for the same floats."""
    s = pl.Series(y[: max(0, y.size - 1)])
    rolled = [
        s.rolling_median(window, min_samples=min_samples)
        if q == 0.5
        else s.rolling_quantile(q, "linear", window, min_samples=min_samples)
        for q in quantiles
    ]
    if extremes:
        rolled += [s.rolling_max(window, min_samples=2), s.rolling_min(window, min_samples=2)]
    out = []
    for r in rolled:
        aligned = np.full(y.size, np.nan)
        aligned[1:] = r.to_numpy()
        out.append(aligned)
    return out


def _robust_from_quantiles(
    y: np.ndarray, resolution: np.ndarray, med: np.ndarray, q25: np.ndarray, q75: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # nan_to_zero is np.nan_to_num(x, nan=0.0) at a fraction of its cost (this runs per series every pass)
    scale = (q75 - q25) / 1.349
    res = np.where(np.isfinite(resolution), resolution, 0.0)
    floor = np.maximum(res, 1e-3 * np.abs(nan_to_zero(med)))
    scale = np.maximum(nan_to_zero(scale), floor)
    scale = np.where(scale > 0, scale, 1.0)
    z = np.abs(y - med) / scale
    return nan_to_zero(z), med, scale


def suppress_after_alarm(z: np.ndarray, span: int, alarm_z: float) -> np.ndarray:
    """Clip a score to at most 0 when any of the previous ``span`` scores reached ``alarm_z`` (causal).

    Merlion's alarm post-rule (Bhatnagar et al. 2021, section 4.3): once a series pages, the same incident does
    not page again for ``span`` points, so an anomaly costs one alarm however long it lasts; the suppression
    is keyed on the unsuppressed scores, so a long incident stays quiet. Scores below ``alarm_z`` are kept.

    Examples
    --------
    >>> suppress_after_alarm(np.array([0, 5, 6, 5, 0, 0, 0, 7.0]), 3, 4.0).tolist()
    [0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.0]
    """
    prev = pl.Series(z).rolling_max(span, min_samples=1).shift(1).fill_null(-np.inf).to_numpy()
    return np.where(prev < alarm_z, z, np.minimum(z, 0.0))


def trailing_window_sum(x: np.ndarray, width: int) -> np.ndarray:
    """Sum of the last ``width`` values at each point (``inf`` before ``width`` values exist).

    Built from power-of-two block sums, so each output is the same sequence of float additions whatever
    the start of the array: a stream scored in pieces gets bit-identical sums (a cumulative sum would not).

    Examples
    --------
    >>> trailing_window_sum(np.arange(6.0), 3).tolist()
    [inf, inf, 3.0, 6.0, 9.0, 12.0]
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:  # the same additions in compiled loops (per series on the incremental path: ~20x less)
        return _window_sums(np.ascontiguousarray(x), int(width))
    n = x.shape[-1]  # along the last axis (a 2-d array: one window sum per row)
    out = np.zeros(x.shape)
    block = x.copy()  # sums of ``size`` values ending at each point
    size, offset = 1, 0
    while True:
        if width & size:
            shifted = np.full(x.shape, np.inf)
            if offset < n:
                shifted[..., offset:] = block[..., : n - offset]
            out = out + shifted
            offset += size
        size *= 2
        if size > width:
            return out
        half, doubled = size // 2, np.full(x.shape, np.inf)
        if half < n:
            doubled[..., half:] = block[..., half:] + block[..., : n - half]
        block = doubled


@compiled
def _window_sums(x: np.ndarray, width: int) -> np.ndarray:
    """:func:`trailing_window_sum` of a 1-d array, element by element: each output is the same float additions
    in the same order as the vectorised form (block sums ``block[i] + block[i - half]``, then the blocks of
    ``width``'s bits, smallest first, added to 0), so both give bit-identical sums."""
    n = x.size
    out = np.zeros(n)
    block = x.copy()
    size, offset = 1, 0
    while True:
        if width & size:
            for i in range(n):
                out[i] = out[i] + (block[i - offset] if i >= offset else np.inf)
            offset += size
        size *= 2
        if size > width:
            return out
        half = size // 2
        doubled = np.empty(n)
        for i in range(n):
            doubled[i] = block[i] + block[i - half] if i >= half else np.inf
        block = doubled


def trailing_mean(x: np.ndarray, width: int) -> np.ndarray:
    """Mean of the last ``width`` values at each point (of the values so far before ``width`` exist).

    From :func:`trailing_window_sum`, so a point's mean is the same floats whatever the start of the array once
    its window is full: the batch pass and the incremental path agree bit for bit, and a window of equal values
    averages to exactly that value (a running sum keeps the rounding residue of values that left the window,
    and on a quantised series a residue of 1e-16 over a resolution-sized scale is a surprise that ties with 0
    no longer do).

    Examples
    --------
    >>> trailing_mean(np.array([1.0, 2.0, 3.0, 0.0, 0.0, 0.0]), 3).tolist()
    [1.0, 1.5, 2.0, 1.6666666666666667, 1.0, 0.0]
    """
    x = np.asarray(x, dtype=np.float64)
    sums = trailing_window_sum(np.concatenate((np.zeros(width - 1), x)), width)[width - 1 :]
    return sums / np.minimum(width, np.arange(1, x.size + 1))


def pattern_distance(y: np.ndarray, scale: np.ndarray, *, width: int, memory: int) -> np.ndarray:
    """RMS distance of the last ``width`` values to their nearest earlier match, in ``scale`` units (causal).

    The left matrix profile (Yeh et al., ICDM 2016; the discord idea of Keogh et al. 2005): for each point
    the Euclidean distance between the subsequence ending there and the closest subsequence ending
    ``width``..``memory`` points earlier (no overlap, so a point never matches itself). A pattern seen before
    — one more day of a daily cycle, a repeated spike — is close to 0 however complex; a pattern never seen
    (a flattened day, a missing or new oscillation) is far from everything. ``inf`` where no earlier
    subsequence exists. One vectorised pass per lag, no per-point loop.
    """
    n = y.size
    best = np.full(n, np.inf)
    for lag in range(width, min(memory, n - 1) + 1):
        sq = np.full(n, np.inf)
        sq[lag:] = (y[lag:] - y[:-lag]) ** 2
        np.minimum(best, trailing_window_sum(sq, width), out=best)
    with np.errstate(invalid="ignore"):
        return np.sqrt(best / width) / scale


def _median_surprise(mk: np.ndarray, med: np.ndarray, scale: np.ndarray, k: int) -> np.ndarray:
    """The ``median`` channel: the median of the last ``k`` points against the trailing median, in the mean
    channel's standard-error units (the constant does not matter to the calibration)."""
    return np.nan_to_num(np.abs(mk - med) / scale * np.sqrt(k) / 3.0, nan=0.0)


def range_surprise(y: np.ndarray, scale: np.ndarray, *, window: int) -> np.ndarray:
    """How far each value leaves the range of the previous ``window`` values, in ``scale`` units (0 inside)."""
    hi, lo = _polars_window_stats(y, window, 2, (), extremes=True)
    return _range_from(y, hi, lo, scale)


def _range_from(y: np.ndarray, hi: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    out = np.maximum(y - hi, lo - y) / scale
    return np.maximum(np.nan_to_num(out, nan=0.0), 0.0)


def volatility_surprise(
    y: np.ndarray, res: np.ndarray, *, short: int, window: int, min_periods: int
) -> np.ndarray:
    """``|log|`` ratio of the recent spread of first differences to their trailing spread (variance change)."""
    dy = pl.Series(np.diff(y, prepend=y[:1]))
    short_sd = dy.rolling_std(short, min_samples=2).to_numpy()
    long_sd = dy.shift(short).rolling_std(window, min_samples=min_periods).to_numpy()
    return _volatility_from(short_sd, long_sd, res)


def _volatility_from(short_sd: np.ndarray, long_sd: np.ndarray, res: np.ndarray) -> np.ndarray:
    # the resolution keeps a quantised series' spread away from 0 (log of 0/0)
    floor = np.where(np.isfinite(res), res, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.log((short_sd + floor) / (long_sd + floor))
    return np.nan_to_num(np.abs(ratio), nan=0.0, posinf=0.0, neginf=0.0)


# -- the same statistics at the last few points only (StreamingDetector's incremental path) --------------
#: rows per step where a statistic materialises one window per point
_ROWS = 1024


def _windows(x: np.ndarray, ends: np.ndarray, width: int, pad: float) -> tuple[np.ndarray, np.ndarray]:
    """``(len(ends), width)`` copies of the ``width`` values of ``x`` ending at each of ``ends`` (inclusive),
    ``pad`` where a window reaches before the start of ``x``; and the mask of real values."""
    at = ends[:, None] + np.arange(1 - width, 1)[None, :]
    real = at >= 0
    return np.where(real, x[np.maximum(at, 0)], pad), real


def _window_stats(
    a: np.ndarray, n: int, window: int, min_samples: int, quantiles: tuple[float, ...], extremes: bool = False
) -> list[np.ndarray]:
    """The ``quantiles`` (and with ``extremes`` the max and min, 2 values at least) of the ``window`` values
    before each of the last ``n`` points of ``a`` — the values of :func:`_rolling_quantiles` and
    :func:`range_surprise`'s rolling max/min there, bit for bit; ``a`` starts at the stream's start or holds a
    full window before the first of them. NaN where fewer than ``min_samples`` values exist."""
    part = np.ascontiguousarray(a[max(0, a.size - n - window) :], dtype=np.float64)
    if np.isnan(part).any():  # NaN has no place in a sorted window: polars decides (input is ffill'd: rare)
        return [r[-n:] for r in _polars_window_stats(part, window, min_samples, quantiles, extremes)]
    before = np.sort(part[max(0, part.size - n - window) : part.size - n])
    qs = np.asarray(quantiles, dtype=np.float64)
    stats = _window_order_steps(part, before, n, window, min_samples, qs, extremes)
    return list(stats)


@compiled
def _window_order_steps(
    a: np.ndarray,
    first_sorted: np.ndarray,
    n: int,
    window: int,
    min_samples: int,
    quantiles: np.ndarray,
    extremes: bool,
) -> np.ndarray:
    """:func:`_window_stats` as one sorted window slid over the last ``n`` points (compiled): ``first_sorted``
    is the window before the first of them, sorted; each step removes the value that leaves and inserts the
    one that enters (binary search, then a shift), and reads the order statistics off; the interpolation is
    polars' ``lo + (hi - lo) * (at - floor(at))``. Plain loops only: numba types ``np.sort`` and
    ``np.searchsorted`` slowly, and this kernel is compiled on the first incremental run after an install."""
    size = a.size
    start = size - n
    m = first_sorted.size
    # a full window and one more (a value enters before one leaves)
    buf = np.empty(min(window, size) + 1)
    for r in range(m):
        buf[r] = first_sorted[r]
    rows = quantiles.size + (2 if extremes else 0)
    out = np.empty((rows, n))
    for k in range(rows):
        for j in range(n):
            out[k, j] = np.nan
    for j in range(n):
        p = start + j
        # step 0: the value before p enters; step 1: the one a window before it leaves (or an equal one)
        for step in range(2 if j > 0 else 0):
            if step == 0:
                v = a[p - 1]
            elif p - 1 - window >= 0:
                v = a[p - 1 - window]
            else:
                break
            lo, hi = 0, m  # binary search: the first of buf[:m] not below v
            while lo < hi:
                mid = (lo + hi) // 2
                if buf[mid] < v:
                    lo = mid + 1
                else:
                    hi = mid
            if step == 0:
                for r in range(m, lo, -1):
                    buf[r] = buf[r - 1]
                buf[lo] = v
                m += 1
            else:
                for r in range(lo, m - 1):
                    buf[r] = buf[r + 1]
                m -= 1
        if m >= min_samples and m > 0:
            for k in range(quantiles.size):
                at = quantiles[k] * (m - 1)
                f = np.floor(at)
                c = np.ceil(at)
                v_lo = buf[int(f)]
                v_hi = buf[int(c)]
                out[k, j] = v_lo + (v_hi - v_lo) * (at - f)
        if extremes and m >= 2:
            out[quantiles.size, j] = buf[m - 1]
            out[quantiles.size + 1, j] = buf[0]
    return out


def _trailing_std(x: np.ndarray, ends: np.ndarray, width: int, min_count: int) -> np.ndarray:
    """Sample standard deviation of the ``width`` values of ``x`` ending at each of ``ends`` (NaN where fewer
    than ``min_count`` exist); each window summed on its own, so the value does not depend on where a stream was
    cut into pieces."""
    out = np.empty(ends.size)
    for a in range(0, ends.size, _ROWS):
        w, real = _windows(x, ends[a : a + _ROWS], width, 0.0)
        count = real.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = w.sum(axis=1) / count
            dev = np.where(real, w - mean[:, None], 0.0)
            sd = np.sqrt((dev**2).sum(axis=1) / (count - 1))
        out[a : a + _ROWS] = np.where(count >= min_count, sd, np.nan)
    return out


def _pattern_at(a: np.ndarray, scale: np.ndarray, n: int, *, width: int, memory: int) -> np.ndarray:
    """:func:`pattern_distance` at the last ``n`` points of ``a`` (the same floats: the window sums are
    start-independent and the minimum is exact); ``a`` starts at the stream's start or holds
    ``memory + width - 1`` values before the first of them."""
    size = a.size
    lags = np.arange(width, memory + 1)
    best = np.full(n, np.inf)
    step = max(1, _ROWS * 64 // max(lags.size, 1))
    for b in range(0, n, step):
        m = min(step, n - b)
        pos = np.arange(size - n + b - width + 1, size - n + b + m)  # values in the windows of these points
        src = pos[None, :] - lags[:, None]
        real = (src >= 0) & (pos >= 0)[None, :]
        sq = np.where(real, (a[np.maximum(pos, 0)][None, :] - a[np.maximum(src, 0)]) ** 2, np.inf)
        if lags.size:
            best[b : b + m] = trailing_window_sum(sq, width)[:, width - 1 :].min(axis=0)
    with np.errstate(invalid="ignore"):
        return np.sqrt(best / width) / scale


#: the raw channels :class:`StreamingDetector` can combine
CHANNELS = ("level", "change", "mean", "median", "volatility", "range", "pattern")
#: :class:`StreamingDetector`'s default calibration holds per channel name: ``(points, z)``
DEFAULT_HOLDS: dict[str, tuple[int, float]] = {"median": (60, 4.0), "pattern": (60, 4.0)}
#: :class:`StreamingDetector`'s default channel weights (weighted Bonferroni; channels not named weigh 1)
DEFAULT_WEIGHTS = {"median": 0.2, "pattern": 0.2}


class StreamingDetector(Detector):
    """Causal robust surprises (level, change, shift, variance, range, pattern) → calibrated z → onset alarms.

    Parameters
    ----------
    window
        Trailing points for the median, the robust scale, the range and the spread of differences.
    short
        Points of the "recent" spread in the volatility channel (and of the recent mean of the likelihood).
    long
        Trailing points of each channel's own history used to calibrate it.
    min_history
        Points before anything can score above 0.
    calibration
        ``"exceedance"`` (streaming SPOT, :func:`~detectors.calibration.exceedance_z`) or ``"likelihood"``
        (Numenta's anomaly likelihood, :func:`~detectors.calibration.anomaly_likelihood`).
    tail_q
        Quantile above which the exceedance calibration fits its exponential tail.
    suppress, alarm_z
        After a point scores ``>= alarm_z``, the next ``suppress`` points score at most 0 (0 turns this off).
    channels
        A subset of :data:`CHANNELS`.
    means
        Lengths of the recent means of the ``"mean"`` channel (one channel per length).
    medians
        Lengths of the recent medians of the ``"median"`` channel (one channel per length).
    pattern_width, pattern_memory
        Subsequence length of the ``"pattern"`` channel and how far back (in points) it looks for a match.
    smooth
        Rolling mean over this many points of each raw channel before calibration (1 = none).
    calibration_cap
        The exceedance calibration's history is winsorised here (:func:`~detectors.calibration.exceedance_z`).
    holds
        Calibration holds per channel name, ``{name: (points, z)}``: of a run of points of that channel scoring
        ``>= z``, the second to the ``points``-th are kept out of its calibration history, so a sustained
        anomaly does not calibrate itself away (:func:`~detectors.calibration.exceedance_z`). Default
        :data:`DEFAULT_HOLDS`: the pattern channel, 60 points at z 4 (a shape that stays new for a while is
        kept out of the tail it is judged against instead of becoming its own reference); the ensemble holds
        its level channel. Hold the recent means with care: after a shift ends, a held hour-long mean keeps an
        alarm up for the hour its window still covers.
    weights
        Relative weight per channel name (default 1 each; every ``means`` length counts as one ``"mean"``
        channel): a weighted Bonferroni correction, channel ``c`` counting its tail times ``sum(w) / w_c``.
        The combined score stays a calibrated z for any weights; a small weight adds a channel that only
        pages when it is very sure, at almost no cost to the others (``{"pattern": 0.2}``: the others' tails
        count ``4.2 x`` instead of ``5 x``).
    """

    name = "streaming"
    causal = True

    def __init__(
        self,
        *,
        window: int = 600,
        short: int = 10,
        long: int = 6000,
        min_history: int = 150,
        calibration: str = "exceedance",
        tail_q: float = 0.99,
        suppress: int = 50,
        alarm_z: float = 3.0,
        channels: tuple[str, ...] = ("change", "mean", "median", "pattern"),
        means: tuple[int, ...] = (10, 60),
        medians: tuple[int, ...] = (60,),
        pattern_width: int = 16,
        pattern_memory: int = 1000,
        smooth: int = 1,
        calibration_cap: float | None = None,
        holds: dict[str, tuple[int, float]] | None = None,
        weights: dict[str, float] | None = None,
        mean_gate: tuple[int, float] | None = None,
        threshold: Threshold | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(threshold=threshold, seed=seed)
        self.mean_gate = (int(mean_gate[0]), float(mean_gate[1])) if mean_gate else None
        self.calibration_cap = calibration_cap
        self.holds = {
            k: (int(v[0]), float(v[1])) for k, v in (DEFAULT_HOLDS if holds is None else holds).items()
        }
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        self.window = window
        self.short = short
        self.long = long
        self.min_history = min_history
        self.calibration = calibration
        self.tail_q = tail_q
        self.suppress = suppress
        self.alarm_z = alarm_z
        self.channels = tuple(channels)
        self.means = tuple(means)
        self.medians = tuple(medians)
        self.pattern_width = pattern_width
        self.pattern_memory = pattern_memory
        self.smooth = smooth

    def _bulk_length(self) -> int:
        # enough history to recompute every rolling window of the last point exactly: a raw channel needs
        # ``window`` (+ the longest recent mean) earlier points; its calibration the tail threshold of each of
        # the ``long`` earlier raw values, each of which needs ``long`` values before it; the suppression the
        # calibrated scores of the previous ``suppress`` points
        # (the pattern channel needs ``pattern_memory + pattern_width`` raw values before a point)
        recent = max((*self.means, *self._medians(), self.short, self.smooth))
        raw = self.window + recent
        if "pattern" in self.channels:
            raw = max(raw, self.window + self.pattern_memory + self.pattern_width)
        return raw + 2 * self.long + recent + self.suppress + 2

    def _lookback(self) -> int:
        # values before a point that its raw channels read: the window (one more for the change channel's
        # first difference, ``short`` more for the volatility channel's shifted window), the longest recent mean,
        # the pattern channel's memory
        out = max(self.window + self.short + 1, *self.means, *self._medians(), 1)
        if "pattern" in self.channels:
            out = max(out, self.pattern_memory + self.pattern_width)
        return out

    def _likelihood_keep(self) -> int:
        # raw scores before a point that the anomaly likelihood reads (short means over a long history of them)
        return max(self.long + 2 * self.short, self.min_history, self.short + 1)

    def _fit_series(self, t: np.ndarray, y: np.ndarray) -> StreamState | StreamingState:
        return self._update_series(t, y, _empty_state())

    def _update_series(
        self, t: np.ndarray, y: np.ndarray, state: StreamState | StreamingState
    ) -> StreamState | StreamingState:
        if not y.size:
            return state
        if isinstance(state, StreamingState):
            return self._advance(y, state)[1]
        # from the start of the stream (or from a tail kept by an earlier version): one batch pass over the
        # last ``_bulk_length`` points gives every kept quantity exactly
        full = ffill(np.r_[state.y, y])
        res = np.r_[state.res, self._resolution(y, state)]
        cut = max(0, full.size - self._bulk_length())
        first = state.seen - state.y.size + cut
        return self._compact(self._channels(full[cut:], res[cut:], first), full[cut:], res[-1], first)

    @staticmethod
    def _resolution(y: np.ndarray, state: StreamState | StreamingState) -> np.ndarray:
        # the step into the first new point counts too, so pieces give the same resolution as one pass
        prev = state.y[-1:] if state.y.size else ffill(y)[:1]
        return running_resolution(ffill(np.concatenate((prev, y))), state.resolution)[1:]

    def _score_series(
        self, t: np.ndarray, y: np.ndarray, state: StreamState | StreamingState
    ) -> SeriesScores:
        if isinstance(state, StreamingState):
            return self._advance(y, state)[0]
        return self._batch(y, state)[0]

    def _score_update_series(
        self, t: np.ndarray, y: np.ndarray, state: StreamState | StreamingState
    ) -> tuple[SeriesScores, StreamState | StreamingState]:
        if isinstance(state, StreamingState):
            keys = self._channel_keys()
            if state.channels == keys or (not state.channels and len(state.memory) == len(keys)):
                return self._advance(y, state)
            # kept for other channels (stored before the default channels changed, or by another
            # configuration): its calibrations cannot be read channel by channel, so the stream starts again
            # from its kept values, warm-ups included (a calibration of a few dozen raw scores pages by chance)
            res = np.full(state.y.size, state.resolution)
            state = StreamState(np.zeros(0, np.int64), state.y, res, state.y.size)
        if not y.size:
            return self._score_series(t, y, state), state
        # one batch pass gives the scores and (from its last stretch) the state
        scores, p, full, res, first = self._batch(y, state)
        return scores, self._compact(p, full, res[-1], first)

    def _batch(
        self, y: np.ndarray, state: StreamState
    ) -> tuple[SeriesScores, _Pass, np.ndarray, np.ndarray, int]:
        """One batch pass over a tail state (empty at the stream's start) and the new points ``y``: their
        scores, the pass, its values, resolutions and the stream index of its first point."""
        n_old = state.y.size
        full = ffill(np.r_[state.y, y])
        res = np.r_[state.res, self._resolution(y, state)]
        # points are numbered from the start of the stream so warm-up does not restart after a tail cut
        first = state.seen - n_old
        p = self._channels(full, res, first)
        band = 4.0 * p.scale
        scores = SeriesScores(p.z[n_old:], p.med[n_old:], (p.med - band)[n_old:], (p.med + band)[n_old:])
        return scores, p, full, res, first

    def score_update(self, frame: pl.DataFrame) -> pl.DataFrame:
        """:meth:`score` then :meth:`update`, in one pass per series."""
        return self._score_update_each(frame)

    def fit_score_online(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Causal scores of every point and the fitted state after them, from one pass."""
        states: dict[int, StreamState | StreamingState] = {}
        parts = []
        for sid, t, y in iter_series(check_points(frame)):
            scores, states[sid] = self._score_update_series(t, y, _empty_state())
            parts.append(self._columns(sid, t, scores))
        self.states_ = states
        return scores_frame(parts)

    def _compact(self, p: _Pass, y: np.ndarray, resolution: float, first: int) -> StreamingState:
        """The incremental state after a batch pass over ``y`` (stream points ``first``...)."""
        memory: list[object] = []
        for parts in p.memory:
            if self.calibration == "likelihood":
                memory.append(parts[0][-self._likelihood_keep() :])
            else:
                memory.append(exceedance_state(*parts, q=self.tail_q, window=self.long))
        keep_raw = self.smooth - 1
        return StreamingState(
            y[-self._lookback() :],
            float(resolution),
            first + y.size,
            tuple(memory),
            tuple(r[-keep_raw:] if keep_raw else r[:0] for r in p.raw),
            p.z_raw[-self.suppress :] if self.suppress else np.zeros(0),
            self._channel_keys(),
        )

    def _surprises(
        self, y: np.ndarray, res: np.ndarray, first: int
    ) -> tuple[list[np.ndarray], list[int], np.ndarray, np.ndarray]:
        self._check_channels()
        mp = self._min_periods()
        level, med, scale = robust_surprise(y, res, window=self.window, min_periods=mp)
        surprises: list[np.ndarray] = []
        if "level" in self.channels:
            surprises.append(level)
        if "change" in self.channels:
            dy = np.abs(np.diff(y, prepend=y[:1]))
            surprises.append(robust_surprise(dy, res, window=self.window, min_periods=mp)[0])
        if "mean" in self.channels:
            # sustained shift: the mean of the last k points against the trailing median, in standard-error
            # units (a small shift held for a while is as surprising as one big spike)
            surprises.extend(self._mean_surprises(lambda k: trailing_mean(y, k), med, scale))
        if "median" in self.channels:
            # the same against the median of the last k points: a held shift in a spiky series, where the
            # spikes swamp the recent mean and the mean channel's own calibration history
            for k in self.medians:
                mk = _polars_window_stats(np.r_[y, 0.0], k, 1, (0.5,))[0][1:]
                surprises.append(_median_surprise(mk, med, scale, k))
        if "volatility" in self.channels:
            surprises.append(
                volatility_surprise(y, res, short=self.short, window=self.window, min_periods=mp)
            )
        if "range" in self.channels:
            surprises.append(range_surprise(y, scale, window=self.window))
        if "pattern" in self.channels:
            w = self.pattern_width
            raw = pattern_distance(y, scale, width=w, memory=self.pattern_memory)
            surprises.append(self._pattern_valid(raw, first + np.arange(y.size)))
        return surprises, self._starts(), med, scale

    def _surprises_at(
        self, a: np.ndarray, res: np.ndarray, n: int, first: int
    ) -> tuple[list[np.ndarray], list[int], np.ndarray, np.ndarray]:
        """:meth:`_surprises` at the last ``n`` points of ``a`` only, the same floats (the volatility channel's
        spreads up to rounding: polars' rolling std there); ``a`` holds ``_lookback`` values before them or starts at the stream's start (``a[0]`` is
        stream point ``first``); ``res`` is their running resolution."""
        self._check_channels()
        mp = self._min_periods()
        size = a.size
        y = a[size - n :]
        stats = _window_stats(a, n, self.window, mp, (0.5, 0.25, 0.75), extremes="range" in self.channels)
        level, med, scale = _robust_from_quantiles(y, res, *stats[:3])
        surprises: list[np.ndarray] = []
        if "level" in self.channels:
            surprises.append(level)
        if "change" in self.channels:
            dy = np.abs(np.diff(a, prepend=a[:1]))
            d = _window_stats(dy, n, self.window, mp, (0.5, 0.25, 0.75))
            surprises.append(_robust_from_quantiles(dy[size - n :], res, *d)[0])
        if "mean" in self.channels:
            surprises.extend(
                self._mean_surprises(
                    lambda k: trailing_mean(a[max(0, size - n - k + 1) :], k)[-n:], med, scale
                )
            )
        if "median" in self.channels:
            for k in self.medians:
                mk = _window_stats(np.r_[a, 0.0], n, k, 1, (0.5,))[0]
                surprises.append(_median_surprise(mk, med, scale, k))
        if "volatility" in self.channels:
            dy = np.diff(a, prepend=a[:1])
            ends = np.arange(size - n, size)
            short_sd = _trailing_std(dy, ends, self.short, 2)
            long_sd = _trailing_std(dy, ends - self.short, self.window, mp)
            surprises.append(_volatility_from(short_sd, long_sd, res))
        if "range" in self.channels:
            surprises.append(_range_from(y, stats[3], stats[4], scale))
        if "pattern" in self.channels:
            raw = _pattern_at(a, scale, n, width=self.pattern_width, memory=self.pattern_memory)
            surprises.append(self._pattern_valid(raw, first + np.arange(size - n, size)))
        return surprises, self._starts(), med, scale

    def _mean_surprises(
        self, mean_of: Callable[[int], np.ndarray], med: np.ndarray, scale: np.ndarray
    ) -> list[np.ndarray]:
        """The ``"mean"`` channel's raw scores, one per length in ``means`` (``mean_of(k)``: the mean of the last
        ``k`` points at each scored point): the distance of the recent mean from the trailing median in standard
        errors. With ``mean_gate = (g, f)``, a longer mean counts only as far as the last ``g`` points still show
        the shift: its distance is at most ``f`` times theirs, and 0 when they lie on the other side."""
        gate = getattr(self, "mean_gate", None)
        # each length once: the gate's is usually one of ``means`` too (10), and this runs per series every pass
        shifts = {k: mean_of(k) - med for k in {*self.means, *(gate[:1] if gate else ())}}
        recent = shifts[gate[0]] if gate else None
        out = []
        for k in self.means:
            shift = shifts[k]
            dev = np.abs(shift)
            if recent is not None and k > gate[0]:
                dev = np.where(shift * recent > 0, np.minimum(dev, gate[1] * np.abs(recent)), 0.0)
            out.append(dev / scale * np.sqrt(k) / 3.0)
        return out

    def _holds(self) -> list[tuple[int, float]]:
        # per raw channel: its calibration hold (points, z); (0, z) holds nothing
        return [self.holds.get(name, (0, 5.0)) for name in self._channel_names()]

    def _raw_channels(self) -> list[tuple[str, int | None]]:
        # one (name, recent length or None) per raw channel, in the order :meth:`_surprises` returns them
        lengths: dict[str, tuple[int | None, ...]] = {"mean": self.means, "median": self._medians()}
        return [(c, k) for c in CHANNELS if c in self.channels for k in lengths.get(c, (None,))]

    def _channel_keys(self) -> tuple[str, ...]:
        # one key per raw channel, with the recent lengths (what a stored state's memory belongs to)
        return tuple(c if k is None else f"{c}:{k}" for c, k in self._raw_channels())

    def _channel_names(self) -> list[str]:
        return [c for c, _ in self._raw_channels()]

    def _combine(self, zs: list[np.ndarray]) -> np.ndarray:
        """Max of the calibrated channels with a (weighted) Bonferroni correction: channel ``c`` with weight
        ``w_c`` counts its tail times ``sum(w) / w_c``, so the combined score stays a tail-probability z
        whatever the weights (equal weights: ``k x`` the smallest tail)."""
        w = np.array([float(self.weights.get(c, 1.0)) for c in self._channel_names()])
        if not w.size or (w == w[0]).all():
            return z_of_tail(np.minimum(1.0, len(zs) * tail_of_z(np.max(zs, axis=0))))
        factor = w.sum() / w
        tails = np.min([f * tail_of_z(z) for f, z in zip(factor, zs, strict=True)], axis=0)
        return z_of_tail(np.minimum(1.0, tails))

    def _check_channels(self) -> None:
        unknown = set(self.channels) - set(CHANNELS)
        if unknown:
            raise ValueError(f"unknown channel(s) {sorted(unknown)}; expected a subset of {CHANNELS}")

    def _starts(self) -> list[int]:
        # per raw channel: the first stream index it may score at (0 = the usual warm-up)
        out = {"pattern": self._pattern_start(), "median": self._median_start()}
        return [out.get(name, 0) for name in self._channel_names()]

    def _median_start(self) -> int:
        # a recent median sits exactly on the trailing one for long stretches of a quantised series (ties): its
        # first move after a short history is "never seen" by chance; like the pattern channel, it scores once
        # its calibration holds ``3 * min_history`` full-window values
        return max(self._medians(), default=1) - 1 + 3 * self.min_history

    def _medians(self) -> tuple[int, ...]:
        # the recent-median lengths in use (none without the channel: detectors pickled before it have no
        # ``medians``)
        return self.medians if "median" in self.channels else ()

    def _min_periods(self) -> int:
        return max(5, min(self.min_history, self.window) // 2)

    def _pattern_valid(self, raw: np.ndarray, index: np.ndarray) -> np.ndarray:
        # a nearest match among a handful of candidates is far by chance: the raw counts once there are
        # ``2 * min_history`` candidate subsequences, its calibrated z ``min_history`` points later (stream
        # index, so pieces and one pass agree)
        valid = index - 2 * self.pattern_width + 2 >= 2 * self.min_history
        return np.where(valid, np.nan_to_num(raw, nan=0.0, posinf=0.0), 0.0)

    def _pattern_start(self) -> int:
        return 2 * self.pattern_width - 2 + 3 * self.min_history

    def _channels(self, y: np.ndarray, res: np.ndarray, first: int) -> _Pass:
        """Batch pass over ``y`` (stream points ``first``...): scores and what the incremental state keeps."""
        surprises, starts, med, scale = self._surprises(y, res, first)
        zs, memory = [], []
        hold = self._holds()
        for c, (surprise, start) in enumerate(zip(surprises, starts, strict=True)):
            if self.smooth > 1:
                surprise = trailing_mean(surprise, self.smooth)
            if self.calibration == "likelihood":
                # raw anomaly score in [0, 1): the two-sided tail of the surprise as if standard normal
                raw = 1.0 - 2.0 * tail_of_z(np.minimum(surprise, Z_MAX))
                zs.append(
                    anomaly_likelihood(raw, short=self.short, long=self.long, min_history=self.min_history)
                )
                memory.append((raw,))
            else:
                z, *parts = exceedance_parts(
                    surprise,
                    q=self.tail_q,
                    window=self.long,
                    min_history=self.min_history,
                    cap=self.calibration_cap,
                    hold=hold[c][0],
                    hold_z=hold[c][1],
                )
                zs.append(z)
                memory.append(tuple(parts))
            zs[-1][: max(0, start - first)] = 0.0
        if not zs:
            zero = np.zeros(y.size)
            return _Pass(zero, med, scale, zero, memory, surprises)
        z = self._combine(zs)
        z[: max(0, self.min_history - first)] = 0.0
        z_raw = z
        if self.suppress:
            z = suppress_after_alarm(z, self.suppress, self.alarm_z)
        return _Pass(z, med, scale, z_raw, memory, surprises)

    def _advance(self, y: np.ndarray, state: StreamingState) -> tuple[SeriesScores, StreamingState]:
        """Scores of the new points ``y`` and the state after them, in time proportional to ``len(y)``: the raw
        channels at the new points only (:meth:`_surprises_at`), each channel's calibration from its kept
        memory (:func:`~detectors.calibration.exceedance_update`)."""
        n = y.size
        if not n:
            return SeriesScores(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0)), state
        a = ffill(np.concatenate((state.y, y)))  # np.r_ costs ~20 µs a call, per series on the incremental path
        res = self._resolution(y, state)
        index = state.seen + np.arange(n)  # stream index of the new points
        surprises, starts, med, scale = self._surprises_at(a, res, n, state.seen - state.y.size)
        zs, memory, raw_tail = [], [], []
        hold = self._holds()
        for c, (surprise, start) in enumerate(zip(surprises, starts, strict=True)):
            if self.smooth > 1:
                ext = np.concatenate((state.raw[c], surprise))
                raw_tail.append(ext[-(self.smooth - 1) :])
                surprise = trailing_mean(ext, self.smooth)[-n:]
            else:
                raw_tail.append(surprise[:0])
            if self.calibration == "likelihood":
                raw = np.r_[state.memory[c], 1.0 - 2.0 * tail_of_z(np.minimum(surprise, Z_MAX))]
                lik = anomaly_likelihood(raw, short=self.short, long=self.long, min_history=self.min_history)
                z = lik[-n:]
                memory.append(raw[-self._likelihood_keep() :])
            else:
                z, mem = exceedance_update(
                    surprise,
                    state.memory[c],
                    q=self.tail_q,
                    window=self.long,
                    min_history=self.min_history,
                    cap=self.calibration_cap,
                    hold=hold[c][0],
                    hold_z=hold[c][1],
                )
                memory.append(mem)
            z[index < start] = 0.0
            zs.append(z)
        if zs:
            z = self._combine(zs)
            z[index < self.min_history] = 0.0
        else:
            z = np.zeros(n)
        z_raw, z_tail = z, state.z
        if self.suppress:
            ext = np.concatenate((state.z, z_raw))
            prev = _windows(ext, np.arange(state.z.size, ext.size) - 1, self.suppress, -np.inf)[0].max(axis=1)
            z = np.where(prev < self.alarm_z, z_raw, np.minimum(z_raw, 0.0))
            z_tail = ext[-self.suppress :]
        band = 4.0 * scale
        new = StreamingState(
            a[-self._lookback() :],
            float(res[-1]),
            state.seen + n,
            tuple(memory),
            tuple(raw_tail),
            z_tail,
            self._channel_keys(),
        )
        return SeriesScores(z, med, med - band, med + band), new


class WindowedGaussianDetector(Detector):
    """NAB's windowed Gaussian baseline: tail probability of the value under a trailing window's mean and std."""

    name = "windowed-gaussian"
    causal = True

    def __init__(
        self, *, window: int = 6400, min_history: int = 20, threshold: Threshold | None = None, seed: int = 0
    ) -> None:
        super().__init__(threshold=threshold, seed=seed)
        self.window = window
        self.min_history = min_history

    def _fit_series(self, t: np.ndarray, y: np.ndarray) -> StreamState:
        return self._update_series(t, y, _empty_state())

    def _update_series(self, t: np.ndarray, y: np.ndarray, state: StreamState) -> StreamState:
        keep = self.window + 1
        yy = ffill(np.r_[state.y, y])
        return StreamState(np.r_[state.t, t][-keep:], yy[-keep:], np.zeros(0), state.seen + y.size)

    def _score_series(self, t: np.ndarray, y: np.ndarray, state: StreamState) -> SeriesScores:
        n_old = state.y.size
        s = pl.Series(ffill(np.r_[state.y, y])).shift(1)
        mu = s.rolling_mean(self.window, min_samples=self.min_history).to_numpy()
        sd = s.rolling_std(self.window, min_samples=self.min_history).to_numpy()
        sd = np.where(np.nan_to_num(sd) > 0, sd, np.nan)
        full = np.r_[state.y, y]
        z = np.abs(full - mu) / sd
        # two-sided tail → one-sided z scale
        score = z_of_tail(np.minimum(1.0, 2.0 * tail_of_z(np.nan_to_num(z, nan=0.0))))
        score = np.where(np.isnan(z), 0.0, score)
        return SeriesScores(score[n_old:], mu[n_old:], (mu - 4 * sd)[n_old:], (mu + 4 * sd)[n_old:])
