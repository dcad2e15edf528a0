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

from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.special import ndtr, ndtri

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
    p = np.clip(np.asarray(p, dtype=np.float64), _TINY, 1.0)
    return np.clip(-ndtri(p), -Z_MAX, Z_MAX)


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

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = np.abs(rng.normal(size=3000)); x[2500] = 9.0
    >>> z = exceedance_z(x)
    >>> bool(z[2500] > 6 and np.delete(z, 2500)[200:].max() < 5)
    True
    """
    x = np.nan_to_num(np.asarray(raw, dtype=np.float64), nan=0.0)
    n = x.size
    if n == 0:
        return np.zeros(0)
    s = pl.Series(x)
    if cap is not None:
        s = pl.Series(np.minimum(x, cap))
    hist = s.to_numpy()
    u = s.rolling_quantile(q, "linear", window, min_samples=2).shift(1).to_numpy()
    u = np.nan_to_num(u, nan=np.inf)
    exc = np.where(hist > u, hist - u, 0.0)
    hits = (hist > u).astype(np.float64)
    exc_sum = pl.Series(exc).rolling_sum(window, min_samples=1).shift(1).to_numpy()
    hit_sum = pl.Series(hits).rolling_sum(window, min_samples=1).shift(1).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma = np.nan_to_num(exc_sum / hit_sum, nan=0.0)
        spread = np.abs(u) * 0.05
    sigma = np.maximum.reduce([sigma, np.nan_to_num(spread, posinf=0.0), np.full(n, min_scale)])
    with np.errstate(invalid="ignore", over="ignore"):
        p_tail = (1.0 - q) * np.exp(-(x - u) / sigma)
        p_body = 1.0 - q * np.clip(x / np.where(u > 0, u, np.inf), 0.0, 1.0)
    p = np.where(x > u, p_tail, p_body)
    z = z_of_tail(p)
    z[: min(n, min_history)] = 0.0
    return z
