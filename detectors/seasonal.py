"""Seasonal robust baseline: STL/MSTL decomposition (daily, weekly), residuals against a robust scale.

Fit: the history is averaged onto a coarse grid (at most ``points_per_day`` buckets a day — STL on 10,080
one-minute points takes seconds, on 96 buckets a day milliseconds), decomposed with statsmodels ``STL``
(daily) or ``MSTL`` (daily + weekly, when two full weeks are there), and the seasonal profile of the last
cycle is kept per phase. Expected value = last trend level + seasonal profile at the point's phase. The
residual of every history point at full resolution gives a robust scale (IQR, floored by the series'
resolution so quantised metrics with MAD = 0 still score sensibly) and a :class:`TailCalibrator`, so scores
are calibrated z values. Batch family: refitted on a schedule by ``rootwise detect``; ``score_online`` refits on
the growing prefix for a causal run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from detectors.base import Detector, SeriesScores, Threshold
from detectors.calibration import TailCalibrator
from detectors.streaming import ffill, running_resolution

DAY_US = 86_400_000_000
WEEK_US = 7 * DAY_US


@dataclass(frozen=True)
class SeasonalState:
    """Fitted decomposition: level, per-phase seasonal profiles and the residual calibration."""

    level: float
    step_us: int  # grid bucket width
    daily: np.ndarray  # seasonal value per daily bucket (empty: no daily seasonality fitted)
    weekly: np.ndarray  # per weekly bucket (empty: none)
    scale: float
    calibrator: TailCalibrator


def seasonal_strength(y: np.ndarray, period: int) -> float:
    """Autocorrelation of ``y`` at lag ``period`` (0 when too short): a cheap seasonality test.

    Examples
    --------
    >>> t = np.arange(480)
    >>> round(seasonal_strength(np.sin(2 * np.pi * t / 48), 48), 2)
    1.0
    >>> seasonal_strength(np.ones(10), 48)
    0.0
    """
    if period < 2 or y.size < 2 * period:
        return 0.0
    a, b = y[:-period] - y[:-period].mean(), y[period:] - y[period:].mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


class StlResidualDetector(Detector):
    """STL/MSTL seasonal baseline with robust, calibrated residual scores.

    Parameters
    ----------
    points_per_day
        Grid resolution for the decomposition.
    min_days
        History needed for the daily component (less: level only).
    """

    name = "stl"
    causal = False

    def __init__(
        self,
        *,
        points_per_day: int = 96,
        min_days: float = 2.0,
        threshold: Threshold | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(threshold=threshold, seed=seed)
        self.points_per_day = points_per_day
        self.min_days = min_days

    def _grid(self, t: np.ndarray, y: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """Bucket means on a regular grid aligned to UTC midnight; empty buckets forward-filled."""
        step_native = int(np.median(np.diff(t))) if t.size > 1 else DAY_US
        step = max(DAY_US // self.points_per_day, step_native)
        b = t // step
        first = int(b[0])
        idx = b - first
        sums = np.bincount(idx, weights=y, minlength=int(idx[-1]) + 1)
        counts = np.bincount(idx, minlength=int(idx[-1]) + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            g = sums / counts
        return step, np.arange(first, first + g.size, dtype=np.int64), ffill(g)

    def _fit_series(self, t: np.ndarray, y: np.ndarray) -> SeasonalState:
        from statsmodels.tsa.seasonal import MSTL, STL

        y = ffill(y)
        if t.size < 10:
            level = float(np.median(y)) if y.size else 0.0
            return SeasonalState(
                level, DAY_US, np.zeros(0), np.zeros(0), 1.0, TailCalibrator.fit(np.zeros(0))
            )
        step, buckets, g = self._grid(t, y)
        per_day = int(DAY_US // step)
        days = g.size / max(per_day, 1)
        daily = weekly = np.zeros(0)
        trend = pl.Series(g).rolling_median(max(1, per_day // 4) | 1, min_samples=1, center=True).to_numpy()
        if per_day >= 4 and days >= self.min_days and seasonal_strength(g, per_day) > 0.2:
            # MSTL keeps a period only with more than two cycles of data (exactly 14 days would drop the week)
            if days > 14 and seasonal_strength(g, 7 * per_day) > seasonal_strength(g, per_day):
                res = MSTL(g, periods=(per_day, 7 * per_day)).fit()
                seas = np.asarray(res.seasonal)
                if seas.ndim == 2 and seas.shape[1] == 2:
                    daily, weekly = (
                        self._profile(buckets, seas[:, 0], per_day),
                        self._profile(buckets, seas[:, 1], 7 * per_day),
                    )
                else:  # statsmodels dropped the weekly period after all
                    daily = self._profile(buckets, seas if seas.ndim == 1 else seas[:, 0], per_day)
            else:
                res = STL(g, period=per_day).fit()
                daily = self._profile(buckets, np.asarray(res.seasonal), per_day)
            trend = np.asarray(res.trend)
        level = float(np.median(trend[-max(1, per_day // 8) :]))
        state = SeasonalState(level, step, daily, weekly, 1.0, TailCalibrator.fit(np.zeros(0)))
        # residuals of the history at full resolution against trend + profile: the noise scoring will see
        hist_trend = trend[np.clip(t // step - buckets[0], 0, trend.size - 1)]
        resid = y - self._expected(t, state) + (hist_trend - level)
        q75, q25 = np.percentile(resid, [75, 25])
        res_floor = running_resolution(y)[-1] if y.size > 1 else np.inf
        scale = max(
            (q75 - q25) / 1.349, res_floor if np.isfinite(res_floor) else 0.0, 1e-3 * abs(level), 1e-9
        )
        raw = np.abs(resid - np.median(resid)) / scale
        return SeasonalState(level, step, daily, weekly, scale, TailCalibrator.fit(raw))

    @staticmethod
    def _profile(buckets: np.ndarray, seasonal: np.ndarray, period: int) -> np.ndarray:
        """Seasonal value per phase, from the last full cycle (the most recent shape)."""
        phase = buckets % period
        prof = np.zeros(period)
        tail = slice(-period, None)
        prof[phase[tail]] = seasonal[tail]
        return prof

    def _expected(self, t: np.ndarray, state: SeasonalState) -> np.ndarray:
        b = t // state.step_us
        e = np.full(t.size, state.level, dtype=np.float64)
        if state.daily.size:
            e += state.daily[b % state.daily.size]
        if state.weekly.size:
            e += state.weekly[b % state.weekly.size]
        return e

    def _score_series(self, t: np.ndarray, y: np.ndarray, state: SeasonalState) -> SeriesScores:
        expected = self._expected(t, state)
        raw = np.abs(ffill(y) - expected) / state.scale
        z = state.calibrator(raw)
        band = 4.0 * state.scale
        return SeriesScores(z, expected, expected - band, expected + band)
