"""Trend regression for long-horizon capacity demand: daily peaks extrapolated with a growth curve.

Capacity questions ("when does tokens/s outgrow our GPUs?") are about where the *daily peak* goes over weeks
and months, not about the shape of tomorrow's curve. Models tuned for short horizons (ETS, MSTL) either damp
the trend away or extrapolate noise; this family fits an explicit growth curve to the (usually daily) series
by least squares: ``y = a + b t`` (linear) or ``log y = a + b t`` (exponential), plus day-of-week effects once
three weeks of history exist. Its uncertainty shape is the OLS prediction standard error,
``sigma * sqrt(1 + x_h' (X'X)^-1 x_h)``, which grows with the distance from the data — parameter
uncertainty, not only noise, is what makes a 90-day exhaustion date uncertain. The base class then calibrates
it on rolling-origin backtests (split conformal) like every family.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from detectors.forecast_base import Forecaster, SeriesData, SeriesFit

GROWTHS = ("linear", "exponential", "auto")
_DOW_MIN_WEEKS = 3  # weekly effects need a few cycles, or they soak up the trend


def _design(t: np.ndarray, m: int | None, phase0: int) -> np.ndarray:
    cols = [np.ones_like(t), t]
    if m:
        phase = (phase0 + t.astype(np.int64)) % m
        cols += [(phase == k).astype(np.float64) for k in range(1, m)]
    return np.column_stack(cols)


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    dof = max(y.size - x.shape[1], 1)
    sigma = float(np.sqrt(resid @ resid / dof))
    xtx_inv = np.linalg.pinv(x.T @ x)
    return beta, xtx_inv, sigma


@dataclass(kw_only=True, eq=False)
class TrendForecaster(Forecaster):
    """Least-squares growth curve with day-of-week effects and a horizon-dependent standard error.

    Parameters
    ----------
    growth
        ``linear``, ``exponential`` (log-linear, positive series only) or ``auto``: the one with the smaller
        error forecasting the last ``holdout`` points from the rest.
    holdout
        Points held out by ``auto``.

    Examples
    --------
    >>> import polars as pl, numpy as np
    >>> from datetime import datetime
    >>> t = pl.datetime_range(datetime(2026, 1, 1), datetime(2026, 2, 11), "1d", eager=True)
    >>> y = 100 + 2.0 * np.arange(t.len()) + np.random.default_rng(0).normal(0, 1, t.len())
    >>> out = TrendForecaster(growth="linear").fit(pl.DataFrame({"series_id": 1, "ts": t, "value": y})).predict(30)
    >>> round(float(out["yhat"][29]) / 10) * 10, bool((out["hi95"] - out["lo95"]).is_sorted())
    (240, True)
    """

    name: ClassVar[str] = "trend"

    growth: str = "auto"
    holdout: int = 7
    backtest_horizon: int | None = 7

    def __post_init__(self) -> None:
        if self.growth not in GROWTHS:
            raise ValueError(f"growth {self.growth!r} is not one of {', '.join(GROWTHS)}")

    def _min_length(self, seasons: tuple[int, ...]) -> int:
        return 5

    def _fit_one(self, data: SeriesData, growth: str) -> SeriesFit:
        y = data.y
        if growth == "exponential" and float(np.min(y)) <= 0:
            growth = "linear"
        z = np.log(y) if growth == "exponential" else y
        m = next((s for s in data.season_lengths if y.size >= _DOW_MIN_WEEKS * s), None)
        phase0 = 0
        t = np.arange(y.size, dtype=np.float64)
        x = _design(t, m, phase0)
        beta, xtx_inv, sigma = _ols(x, z)
        fitted = x @ beta
        if growth == "exponential":
            fitted = np.exp(fitted)
        name = f"trend({growth}{', weekly' if m else ''})"
        return SeriesFit(model=name, params=(growth, m, beta, xtx_inv, sigma, y.size), fitted=fitted)

    def _fit_series(self, data: SeriesData) -> SeriesFit:
        if self.growth != "auto":
            return self._fit_one(data, self.growth)
        h = int(self.holdout)
        if data.n < max(2 * h, 10) or float(np.min(data.y)) <= 0:
            return self._fit_one(data, "linear")
        errors = {}
        for growth in ("linear", "exponential"):
            head = self._fit_one(data.head(data.n - h), growth)
            mean, _ = self._forecast_series(head, h)
            errors[growth] = float(np.mean(np.abs(data.y[-h:] - mean)))
        return self._fit_one(data, min(errors, key=errors.__getitem__))

    def _forecast_series(
        self, fit: SeriesFit, horizon: int, future: Mapping[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        growth, m, beta, xtx_inv, sigma, n = fit.params
        t = np.arange(n, n + horizon, dtype=np.float64)
        x = _design(t, m, 0)
        mean = x @ beta
        se = sigma * np.sqrt(1.0 + np.einsum("ij,jk,ik->i", x, xtx_inv, x))
        if growth == "exponential":
            mean = np.exp(mean)
            se = mean * se  # delta method: sd of exp(z) ~ exp(z) * sd(z)
        return mean, np.maximum(se, 1e-12)
