"""Score calibration: every detector's raw score ends on one scale, a standard-normal z.

A calibrated score ``z`` means "a point this unusual has tail probability ``p = 1 - Phi(z)`` under the series'
own history", so one threshold (e.g. ``z >= 5``) means the same thing on every detector and every series
(the idea of Merlion's anomaly calibrator; Bhatnagar et al. 2021, section 4.2).

Two calibrators:

* :class:`TailCalibrator` — batch: fitted on in-sample raw scores; the body is the empirical CDF and the tail
  beyond the 95th percentile is exponential (a peaks-over-threshold fit), so scores larger than anything
  seen still get finite, ordered z values.
* :func:`anomaly_likelihood` — streaming and causal: the short-term mean of raw scores against the mean and
  spread of their own longer history (Numenta's anomaly likelihood; Ahmad et al. 2017, "Unsupervised
  real-time anomaly detection for streaming data", section 3.3), the layer that took HTM from 53.6 to 70.1 on
  NAB.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.special import ndtr, ndtri

from detectors.base import pack_arrays, unpack_arrays
from detectors.compiled import compiled

#: calibrated scores are clipped here: a tail probability of ~1e-300 is "certain" for every purpose
Z_MAX = 37.0
_TINY = 1e-300


def z_of_tail(p: np.ndarray | float) -> np.ndarray:
    """Tail probability → standard-normal z (``Phi^-1(1 - p)``), clipped to ``[-Z_MAX, Z_MAX]``.

    Examples
    --------
    >>> abs(float(z_of_tail(0.5))), round(float(z_of_tail(0.001)), 3)
    (0.0, 3.09)
    """
    # np.clip without its Python overhead (this runs per series and channel on every incremental run)
    p = np.minimum(np.maximum(np.asarray(p, dtype=np.float64), _TINY), 1.0)
    return np.minimum(np.maximum(-ndtri(p), -Z_MAX), Z_MAX)


def tail_of_z(z: np.ndarray | float) -> np.ndarray:
    """Standard-normal z → tail probability ``1 - Phi(z)``.

    Examples
    --------
    >>> round(float(tail_of_z(3.09)), 4)
    0.001
    """
    return ndtr(-np.asarray(z, dtype=np.float64))


@dataclass(frozen=True)
class TailCalibrator:
    """Maps raw scores (higher = worse) to z via their in-sample distribution; fit with :meth:`fit`.

    Attributes
    ----------
    levels, quantiles
        The empirical CDF of the fitted raw scores (body), sampled at ``levels``.
    tail_start, tail_scale
        Exponential tail above the ``1 - tail_mass`` quantile: ``p(x) = tail_mass * exp(-(x - start) / scale)``.
    """

    levels: np.ndarray
    quantiles: np.ndarray
    tail_start: float
    tail_scale: float
    tail_mass: float = 0.05

    @classmethod
    def fit(cls, raw: np.ndarray, *, tail_mass: float = 0.05, min_scale: float = 1e-9) -> TailCalibrator:
        """Fit on raw scores (NaN ignored); an empty or constant input still gives a usable calibrator."""
        x = np.asarray(raw, dtype=np.float64)
        x = x[np.isfinite(x)]
        levels = np.linspace(0.0, 1.0 - tail_mass, 96)
        if x.size == 0:
            return cls(levels, np.zeros_like(levels), 0.0, 1.0, tail_mass)
        q = np.quantile(x, levels)
        start = float(q[-1])
        excess = x[x > start] - start
        # mean excess is the MLE of an exponential tail; floor it so a constant history does not give z=inf
        scale = float(excess.mean()) if excess.size else 0.0
        spread = float(q[-1] - q[0])
        scale = max(scale, 0.1 * spread, min_scale, 1e-6 * abs(start))
        return cls(levels, q, start, scale, tail_mass)

    def tail(self, raw: np.ndarray) -> np.ndarray:
        """Tail probability of each raw score."""
        x = np.asarray(raw, dtype=np.float64)
        p = np.empty_like(x)
        above = x > self.tail_start
        p[above] = self.tail_mass * np.exp(-(x[above] - self.tail_start) / self.tail_scale)
        below = ~above
        # the body's CDF; np.interp needs increasing xp — ties in quantiles are fine (it takes the first)
        q, idx = np.unique(self.quantiles, return_index=True)
        p[below] = 1.0 - np.interp(x[below], q, self.levels[idx]) if q.size > 1 else 0.5
        p[np.isnan(x)] = 1.0
        return p

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated z of each raw score."""
        return z_of_tail(self.tail(raw))


def anomaly_likelihood(
    raw: np.ndarray,
    *,
    short: int = 10,
    long: int = 2000,
    min_history: int = 100,
    min_std: float = 0.02,
) -> np.ndarray:
    """Causal anomaly likelihood as z: how unusual the recent mean of ``raw`` is against its own history.

    ``z_t = (mean(raw[t-short+1..t]) - mu_t) / sigma_t`` where ``mu_t``/``sigma_t`` are the mean and standard
    deviation of the short-term means over the ``long`` points before the short window. Points with fewer than
    ``min_history`` earlier points score 0. ``min_std`` is a floor on ``sigma`` relative to the raw scale
    (``raw`` is expected in [0, 1]-ish units; Numenta floors the variance the same way) so a flat history
    does not turn a tiny wiggle into a page.

    Examples
    --------
    >>> x = np.r_[np.full(300, 0.1), np.full(5, 0.9)]
    >>> z = anomaly_likelihood(x, short=3, long=200, min_history=50)
    >>> bool(z[:300].max() < 1 and z[-1] > 10)
    True
    """
    x = np.nan_to_num(np.asarray(raw, dtype=np.float64), nan=0.0)
    n = x.size
    if n == 0:
        return np.zeros(0)
    s = pl.Series(x)
    m = s.rolling_mean(short, min_samples=1)
    # history of the short means, ending just before the current short window (no overlap with "now")
    hist = m.shift(short)
    mu = hist.rolling_mean(long, min_samples=1).to_numpy()
    sd = hist.rolling_std(long, min_samples=2).to_numpy()
    sd = np.where(np.isnan(sd), min_std, np.maximum(sd, min_std))
    z = (m.to_numpy() - np.nan_to_num(mu, nan=0.0)) / sd
    z[: min(n, max(min_history, short + 1))] = 0.0
    return np.clip(np.nan_to_num(z, nan=0.0), -Z_MAX, Z_MAX)


def exceedance_z(
    raw: np.ndarray,
    *,
    q: float = 0.98,
    window: int = 5000,
    min_history: int = 100,
    min_scale: float = 1e-9,
    cap: float | None = None,
    hold: int = 0,
    hold_z: float = 5.0,
) -> np.ndarray:
    """Causal peaks-over-threshold calibration of raw scores (streaming SPOT; Siffer et al., KDD 2017).

    For each point, ``u`` is the ``q`` quantile of the raw scores in the trailing ``window`` (excluding the
    point) and ``sigma`` the mean excess of those past scores over their own ``u``; the tail probability of a
    new score ``r > u`` is ``(1 - q) * exp(-(r - u) / sigma)`` (the exponential member of the generalised
    Pareto family, which the mean-excess estimate fits). Below ``u`` the probability falls linearly from 1 to
    ``1 - q``. Returned as z; points with fewer than ``min_history`` earlier points score 0.

    ``cap`` winsorises the *history* the tail is fitted on at ``cap`` (raw scores here are robust-z surprises,
    so a cap of 200 is far beyond any routine value): without it, a two-hour incident earlier in the window
    lifts the fitted tail so much that the next incident of the same size scores below the threshold — the
    calibration learns that incidents are normal. New points are never capped, so they still score in full.

    ``hold`` keeps a sustained anomaly out of its own calibration, as SPOT does with the points it flags: in a
    run of consecutive points that score ``z >= hold_z``, the first joins the history as it is and the next
    ``hold - 1`` join at their own threshold ``u``: no exceedance, and the threshold stays where it was (as 0
    they lowered it whenever they would have been among the top values, and on a quantised series whose tail
    sits at the cap the capped values then counted as exceedances and inflated the scale). Without it a
    sustained anomaly calibrates itself away: the history holds only ``(1 - q) * window`` points above the
    threshold (14 of a day's 1,440 at ``q = 0.99``), and once the anomaly's first points are among them its
    later, larger points score lower and lower (a leak that tripled a process's memory scored z 6.6 in its
    third minute and 2.5 half an hour later). An isolated spike, and the first point of every run, still join
    the history, so spikes that recur are learnt as before (holding those out too made a 0/1 gauge's every dip
    page). From the ``hold + 1``-th point of a run on, the anomaly joins the history, so a lasting change
    becomes the new normal. A run whose first point alone lifts the tail so far that the second no longer
    reaches ``hold_z`` is not held: a sudden jump leans on its first points' scores (and on the recent-mean
    channels, which turn it into a ramp). 0 turns this off. With a hold, the pass is the compiled loop of
    :func:`exceedance_update` from an empty state (each point's history depends on the scores before it).

    :func:`exceedance_update` continues the same calibration from an :class:`ExceedanceState` in time
    proportional to the new points.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = np.abs(rng.normal(size=3000)); x[2500] = 9.0
    >>> z = exceedance_z(x)
    >>> bool(z[2500] > 6 and np.delete(z, 2500)[200:].max() < 5)
    True
    """
    return exceedance_parts(
        raw,
        q=q,
        window=window,
        min_history=min_history,
        min_scale=min_scale,
        cap=cap,
        hold=hold,
        hold_z=hold_z,
    )[0]


def exceedance_parts(
    raw: np.ndarray,
    *,
    q: float = 0.98,
    window: int = 5000,
    min_history: int = 100,
    min_scale: float = 1e-9,
    cap: float | None = None,
    hold: int = 0,
    hold_z: float = 5.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """:func:`exceedance_z` and its history: ``(z, hist, hits, exc, run)`` — the (capped) history values,
    whether each exceeded its threshold ``u`` and by how much, and how many anomalous points in a row end it
    (``hold``); :func:`exceedance_state` keeps what is still needed."""
    x = np.nan_to_num(np.asarray(raw, dtype=np.float64), nan=0.0)
    n = x.size
    if n == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0), 0
    if hold > 0:
        hist = np.minimum(x, cap) if cap is not None else x
        z, u, held, run, _ = _update(
            x, hist, _empty_exceedance(), q, window, min_history, min_scale, hold, hold_z
        )
        hist = np.where(held, u, hist)
        hit = hist > u
        return z, hist, hit, np.where(hit, hist - u, 0.0), run
    s = pl.Series(x)
    if cap is not None:
        s = pl.Series(np.minimum(x, cap))
    hist = s.to_numpy()
    u = s.rolling_quantile(q, "linear", window, min_samples=2).shift(1).to_numpy()
    u = np.nan_to_num(u, nan=np.inf)
    hit = hist > u
    exc = np.where(hit, hist - u, 0.0)
    exc_sum = pl.Series(exc).rolling_sum(window, min_samples=1).shift(1).to_numpy()
    # exceedances in the window before each point: whole numbers, so differences of a cumulative count are
    # exact (the same floats as a rolling sum, without another polars pass)
    seen = np.r_[0.0, np.cumsum(hit, dtype=np.float64)]  # seen[j]: exceedances among the first j points
    before = np.arange(n)
    hit_sum = seen[before] - seen[np.maximum(before - window, 0)]
    # a window without exceedances sums to 0: the running sum can keep a rounding residue of the ones that
    # left it, and residue / 0 hits would make sigma infinite (every exceedance then scored only z = 2.3)
    exc_sum = np.where(hit_sum > 0, exc_sum, 0.0)
    z = z_of_tail(_exceedance_tail(x, u, exc_sum, hit_sum, q, min_scale))
    z[: min(n, min_history)] = 0.0
    return z, hist, hit, exc, 0


def _exceedance_tail(
    x: np.ndarray, u: np.ndarray, exc_sum: np.ndarray, hit_sum: np.ndarray, q: float, min_scale: float
) -> np.ndarray:
    # one formula for the batch and the incremental calibration, so both give the same floats (compiled: a
    # dozen ufuncs on a few new points cost ~25 µs per channel and series on every incremental pass)
    f = np.float64
    return _exceedance_tail_steps(
        np.ascontiguousarray(x, f),
        np.ascontiguousarray(u, f),
        np.ascontiguousarray(exc_sum, f),
        np.ascontiguousarray(hit_sum, f),
        float(q),
        float(min_scale),
    )


@compiled
def _exceedance_tail_steps(
    x: np.ndarray, u: np.ndarray, exc_sum: np.ndarray, hit_sum: np.ndarray, q: float, min_scale: float
) -> np.ndarray:
    """Tail probability of each ``x`` over its threshold ``u``: above it, ``(1 - q) exp(-(x - u) / sigma)``
    with ``sigma`` the mean excess (``exc_sum / hit_sum``; 0 without exceedances, NaN read as 0 and infinities
    clipped to the largest float, as :func:`nan_to_zero`), at least ``5 %`` of ``|u|`` (0 when ``u`` is
    infinite or NaN) and ``min_scale``; below it, ``1 - q x / u`` clipped to [0, 1] (``u <= 0``: 1)."""
    n = x.size
    out = np.empty(n)
    big = np.finfo(np.float64).max
    for i in range(n):
        e, h = exc_sum[i], hit_sum[i]
        if h != 0.0:
            sigma = e / h
        elif e == 0.0 or np.isnan(e):
            sigma = np.nan
        else:
            sigma = np.inf if e > 0 else -np.inf
        sigma = 0.0 if np.isnan(sigma) else min(max(sigma, -big), big)
        spread = abs(u[i]) * 0.05
        if np.isnan(spread) or spread == np.inf:
            spread = 0.0
        sigma = max(max(sigma, spread), min_scale)
        if x[i] > u[i]:
            out[i] = (1.0 - q) * np.exp(-(x[i] - u[i]) / sigma)
        else:
            ratio = x[i] / (u[i] if u[i] > 0 else np.inf)
            out[i] = 1.0 - q * min(max(ratio, 0.0), 1.0)
    return out


_BIG = np.finfo(np.float64).max


def nan_to_zero(x: np.ndarray) -> np.ndarray:
    """``np.nan_to_num(x, nan=0.0)`` (NaN → 0, ±inf → ±largest float) with two ufuncs."""
    return np.where(np.isnan(x), 0.0, np.minimum(np.maximum(x, -_BIG), _BIG))


@functools.lru_cache(maxsize=64)
def top_ranks(q: float, window: int) -> int:
    """How many of the largest values of a trailing window its ``q`` quantile (linear interpolation) can use:
    ``max over counts c <= window of c - floor(q (c - 1))``.

    Examples
    --------
    >>> top_ranks(0.99, 1440), top_ranks(0.5, 10)
    (16, 6)
    """
    c = np.arange(1, window + 1)
    return int((c - np.floor(q * (c - 1))).max())


@dataclass(frozen=True)
class ExceedanceState:
    """What :func:`exceedance_update` needs of a channel's past: ``count`` raw scores seen; of the trailing
    ``window``, the history values that can still be among the ``k`` largest of a later window (``top_*``:
    position, value, and how many later values are at least as large — a value with ``k`` of them never is,
    so it is dropped) and the exceedances (``hit_pos``, ``hit_exc``).

    The ``q`` quantile of a window is an interpolation between two of its ``k = top_ranks(q, window)`` largest
    values, so the kept values give the threshold of every later point exactly. For a stationary history
    about ``k (1 + ln(window / k))`` values are kept (~90 for ``q = 0.99``, ``window = 1440``) instead of
    ``window``; a falling history keeps more, never more than ``window``.
    """

    count: int
    top_pos: np.ndarray
    top_val: np.ndarray
    top_cnt: np.ndarray
    hit_pos: np.ndarray
    hit_exc: np.ndarray
    run: int = 0  # anomalous points in a row at the end (``hold``)

    def __getstate__(self) -> tuple[object, ...]:
        # one buffer for the five arrays (unpickling an array costs more than its bytes: a state holds three
        # of these and ``rootwise detect`` loads one per series every run); positions relative to ``count``
        # fit in 32 bits (they lie within the trailing window)
        blob = pack_arrays(
            self.top_val,
            self.hit_exc,
            (self.top_pos - self.count).astype(np.int32),
            self.top_cnt.astype(np.int32),
            (self.hit_pos - self.count).astype(np.int32),
        )
        return (self.count, self.run, self.top_val.size, self.hit_exc.size, blob)

    def __setstate__(self, state: tuple[object, ...] | dict[str, object]) -> None:
        if isinstance(state, dict):  # pickled before the single buffer
            count = int(state["count"])  # type: ignore[call-overload]
            top = np.asarray(state["top"], dtype=np.int64)
            fields = (top[0] + count, state["top_val"], top[1])
            hits = (np.asarray(state["hit_pos"], dtype=np.int64) + count, state["hit_exc"])
            run = int(state.get("run", 0))  # type: ignore[call-overload]  # absent before holds
        else:
            count, run, n_top, n_hit, blob = state  # type: ignore[misc]
            f64, i32 = np.float64, np.int32
            top_val, hit_exc, top_rel, top_cnt, hit_rel = unpack_arrays(
                blob, ((f64, n_top), (f64, n_hit), (i32, n_top), (i32, n_top), (i32, n_hit))
            )
            fields = (top_rel.astype(np.int64) + count, top_val, top_cnt.astype(np.int64))
            hits = (hit_rel.astype(np.int64) + count, hit_exc)
        object.__setattr__(self, "count", int(count))
        object.__setattr__(self, "top_pos", fields[0])
        object.__setattr__(self, "top_val", fields[1])
        object.__setattr__(self, "top_cnt", fields[2])
        object.__setattr__(self, "hit_pos", hits[0])
        object.__setattr__(self, "hit_exc", hits[1])
        object.__setattr__(self, "run", int(run))


#: block length of :func:`_later_at_least`'s bound and of :func:`_later_in_blocks`' steps
_SPAN = 128
_BLOCK = 64
_LATER = np.triu(np.ones((_BLOCK, _BLOCK), dtype=bool), 1)  # [i, j]: j comes after i within a block


def _empty_exceedance(count: int = 0) -> ExceedanceState:
    e = np.zeros(0, dtype=np.int64)
    return ExceedanceState(count, e, np.zeros(0), e, e, np.zeros(0))


def _later_at_least(val: np.ndarray, k: int) -> np.ndarray:
    """For values in stream order, how many later values are at least as large — exact below ``k``, some
    number ``>= k`` otherwise (the counts :class:`ExceedanceState` keeps).

    A value not above the k-th largest of some later block of ``_SPAN`` values has k later values at least as
    large. The others are counted among themselves: every later value at least as large as a value with fewer
    than k is itself such a value (it has no more later ones), so that count is exact below k and ``>= k``
    otherwise.
    """
    m = val.size
    cnt = np.full(m, k, dtype=np.int64)
    span = max(_SPAN, 2 * k)
    blocks = m // span
    head = m - blocks * span  # blocks end at the last value; a shorter head comes first
    bound = np.full(m, -np.inf)
    if blocks:
        kth = np.partition(val[head:].reshape(blocks, span), span - k, axis=1)[:, span - k]
        after = np.maximum.accumulate(kth[::-1])[::-1]  # per block: the largest k-th largest from it on
        bound[:head] = after[0]
        bound[head:-span] = np.repeat(after[1:], span)
    cand = np.flatnonzero(val > bound)
    cnt[cand] = _later_in_blocks(val[cand], k)
    return cnt


def _later_in_blocks(val: np.ndarray, k: int) -> np.ndarray:
    """:func:`_later_at_least` from the end, block by block: each block against the ``k`` largest values
    after it, which hold every later value larger than a value that has fewer than ``k``."""
    cnt = np.empty(val.size, dtype=np.int64)
    top = np.zeros(0)  # ascending: the k largest values after the current block
    for b in range(val.size, 0, -_BLOCK):
        a = max(0, b - _BLOCK)
        v = val[a:b]
        later = ((v >= v[:, None]) & _LATER[: v.size, : v.size]).sum(axis=1)
        cnt[a:b] = later + top.size - np.searchsorted(top, v)
        top = np.sort(np.concatenate((top, v)))[-k:]
    return cnt


def exceedance_state(
    hist: np.ndarray,
    hits: np.ndarray,
    exc: np.ndarray,
    run: int = 0,
    *,
    q: float,
    window: int,
    count: int | None = None,
) -> ExceedanceState:
    """The :class:`ExceedanceState` after the history of :func:`exceedance_parts` (its arrays, in stream order,
    the last at position ``count - 1``; only the last ``window`` matter)."""
    count = hist.size if count is None else count
    start = max(0, hist.size - window)
    pos = np.arange(count - hist.size + start, count)
    val = np.asarray(hist[start:], dtype=np.float64)
    cnt = _later_at_least(val, top_ranks(q, window))
    top = cnt < top_ranks(q, window)
    h = np.asarray(hits[start:], dtype=bool)
    return ExceedanceState(
        count, pos[top], val[top], cnt[top], pos[h], np.asarray(exc[start:], dtype=np.float64)[h], int(run)
    )


def exceedance_update(
    raw: np.ndarray,
    state: ExceedanceState,
    *,
    q: float = 0.98,
    window: int = 5000,
    min_history: int = 100,
    min_scale: float = 1e-9,
    cap: float | None = None,
    hold: int = 0,
    hold_z: float = 5.0,
) -> tuple[np.ndarray, ExceedanceState]:
    """:func:`exceedance_z` of new raw scores continuing ``state``, and the state after them.

    Same thresholds (the ``q`` quantile by polars' linear interpolation, from the kept top values), same
    exceedance sums, so the scores equal those of :func:`exceedance_z` over the whole stream (the sums up to
    rounding: here each window's exceedances are summed afresh) and do not depend on how the stream was cut
    into pieces. Point by point in compiled code (:func:`_exceedance_steps`): each new point costs time
    proportional to the few kept values it moves, not to ``window``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = np.abs(rng.normal(size=3000))
    >>> st = exceedance_state(*exceedance_parts(x[:2000], window=500)[1:], q=0.98, window=500)
    >>> z, _ = exceedance_update(x[2000:], st, window=500)
    >>> bool(np.allclose(z, exceedance_z(x, window=500)[2000:], rtol=1e-12, atol=1e-12))
    True
    """
    x = nan_to_zero(np.asarray(raw, dtype=np.float64))
    hist = np.minimum(x, cap) if cap is not None else x
    z, _, _, _, new = _update(x, hist, state, q, window, min_history, min_scale, hold, hold_z)
    return z, new


def _update(
    x: np.ndarray,
    hist: np.ndarray,
    state: ExceedanceState,
    q: float,
    window: int,
    min_history: int,
    min_scale: float,
    hold: int,
    hold_z: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, ExceedanceState]:
    """The compiled pass behind :func:`exceedance_update`: ``(z, u, held, run, state after)``."""
    count, n = state.count, x.size
    # a point is held out when its tail probability is at most that of hold_z: (1 - q) exp(-gap) <= tail(hold_z)
    gap = np.log((1.0 - q) / float(tail_of_z(hold_z))) if hold > 0 else np.inf
    # the kernel walks the kept values from the largest down (ties in stream order)
    order = np.lexsort((state.top_pos, -state.top_val))
    u, exc_sum, n_hits, pos, val, cnt, hit_pos, hit_exc, held, run = _exceedance_steps(
        hist,
        count,
        np.ascontiguousarray(state.top_pos[order], dtype=np.int64),
        np.ascontiguousarray(state.top_val[order], dtype=np.float64),
        np.ascontiguousarray(state.top_cnt[order], dtype=np.int64),
        np.ascontiguousarray(state.hit_pos, dtype=np.int64),
        np.ascontiguousarray(state.hit_exc, dtype=np.float64),
        float(q),
        int(window),
        top_ranks(q, window),
        x,
        float(gap),
        int(hold),
        int(state.run),
        int(min_history),
        float(min_scale),
    )
    if count == 0 and n:
        exc_sum[0] = np.nan  # polars: the first point has no window at all
    z = z_of_tail(_exceedance_tail(x, u, exc_sum, n_hits, q, min_scale))
    if count < min_history:
        z[: min(n, min_history - count)] = 0.0
    by_pos = np.argsort(pos, kind="stable")
    return (
        z,
        u,
        held,
        int(run),
        ExceedanceState(count + n, pos[by_pos], val[by_pos], cnt[by_pos], hit_pos, hit_exc, int(run)),
    )


#: new points between two sweeps of :func:`_exceedance_steps` that drop kept values left behind by the window
_COMPACT = 64


@compiled
def _exceedance_steps(
    hist: np.ndarray,
    count: int,
    pos0: np.ndarray,
    val0: np.ndarray,
    cnt0: np.ndarray,
    hit_pos0: np.ndarray,
    hit_exc0: np.ndarray,
    q: float,
    window: int,
    k: int,
    x: np.ndarray,
    gap: float,
    hold: int,
    run: int,
    min_history: int,
    min_scale: float,
) -> tuple:
    """The loop of :func:`exceedance_update` (compiled): for each new value, its
    threshold ``u`` from the kept values of its window, the exceedances in that window (their sum, summed afresh
    in stream order, and their number), then the value joins the kept ones. The kept values are held sorted
    from the largest down: the threshold reads two of the first ``k`` live ones, and a new value only touches
    the kept values it is at least as large as (they gain one later value; those with ``k`` leave). Values
    that left the window are skipped while reading and dropped every ``_COMPACT`` points and at the end.

    With ``hold > 0``, a raw score ``x`` that exceeds its threshold by at least ``gap`` times the tail scale
    (the scale of :func:`_exceedance_tail`) is anomalous; in a run of anomalous points, the second to the
    ``hold``-th join the history at their threshold ``u`` instead of their value (``held``)."""
    n = hist.size
    cap_m = pos0.size + n
    pos = np.empty(cap_m, np.int64)
    val = np.empty(cap_m)
    cnt = np.empty(cap_m, np.int64)
    m = pos0.size
    pos[:m] = pos0
    val[:m] = val0
    cnt[:m] = cnt0
    hpos = np.empty(hit_pos0.size + n, np.int64)
    hexc = np.empty(hit_pos0.size + n)
    h1 = hit_pos0.size
    hpos[:h1] = hit_pos0
    hexc[:h1] = hit_exc0
    h0 = 0
    u = np.empty(n)
    exc_sum = np.empty(n)
    n_hits = np.empty(n)
    held = np.zeros(n, np.bool_)
    scratch_pos = np.empty(cap_m, np.int64)
    scratch_val = np.empty(cap_m)
    scratch_cnt = np.empty(cap_m, np.int64)
    for j in range(n + 1):  # j == n: only the last sweep, for the window of the next point
        i = count + j
        first = i - window  # the window of point i: positions first .. i - 1
        if j % _COMPACT == 0 or j == n:
            w = 0
            for r in range(m):
                if pos[r] >= first:
                    pos[w] = pos[r]
                    val[w] = val[r]
                    cnt[w] = cnt[r]
                    w += 1
            m = w
        if j == n:
            break
        c = min(window, i)
        if c >= 2:
            at = q * (c - 1)
            lo = np.floor(at)
            hi = np.ceil(at)
            # ascending rank lo of the window's c values is rank c - 1 - lo from the largest
            want_lo = c - 1 - int(lo)
            want_hi = c - 1 - int(hi)
            v_lo = np.nan
            v_hi = np.nan
            rank = 0
            for r in range(m):
                if pos[r] < first:
                    continue
                if rank == want_hi:
                    v_hi = val[r]
                if rank == want_lo:
                    v_lo = val[r]
                    break
                rank += 1
            ui = v_lo + (v_hi - v_lo) * (at - lo)
            if np.isnan(ui):
                ui = np.inf
        else:
            ui = np.inf
        u[j] = ui
        while h0 < h1 and hpos[h0] < first:
            h0 += 1
        total = 0.0
        for r in range(h0, h1):
            total += hexc[r]
        exc_sum[j] = total
        n_hits[j] = h1 - h0
        v = hist[j]
        if hold > 0 and i >= min_history:
            sigma = total / (h1 - h0) if h1 > h0 else 0.0
            if ui < np.inf:
                sigma = max(sigma, abs(ui) * 0.05)
            sigma = max(sigma, min_scale)
            if x[j] > ui and x[j] - ui >= gap * sigma:
                run += 1
                if 1 < run <= hold:
                    held[j] = True
                    v = ui
            else:
                run = 0
        if v > ui:
            hpos[h1] = i
            hexc[h1] = v - ui
            h1 += 1
        # the kept values at most v (a suffix): one more later value each; v goes first among them
        a, b = 0, m
        while a < b:
            mid = (a + b) // 2
            if val[mid] > v:
                a = mid + 1
            else:
                b = mid
        w = 0
        for r in range(a, m):
            if cnt[r] + 1 < k:
                scratch_pos[w] = pos[r]
                scratch_val[w] = val[r]
                scratch_cnt[w] = cnt[r] + 1
                w += 1
        pos[a] = i
        val[a] = v
        cnt[a] = 0
        for r in range(w):
            pos[a + 1 + r] = scratch_pos[r]
            val[a + 1 + r] = scratch_val[r]
            cnt[a + 1 + r] = scratch_cnt[r]
        m = a + 1 + w
    while h0 < h1 and hpos[h0] < count + n - window:
        h0 += 1
    return (
        u,
        exc_sum,
        n_hits,
        pos[:m].copy(),
        val[:m].copy(),
        cnt[:m].copy(),
        hpos[h0:h1].copy(),
        hexc[h0:h1].copy(),
        held,
        run,
    )
