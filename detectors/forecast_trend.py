"""Trend regression for long-horizon capacity demand: daily peaks extrapolated with a growth curve.

Capacity questions ("when does tokens/s outgrow our GPUs?") are about where the *daily peak* goes over weeks
and months, not about the shape of tomorrow's curve. Models tuned for short horizons (ETS, MSTL) either damp
the trend away or extrapolate noise; this family fits an explicit growth curve to the (usually daily) series
by least squares: ``y = a + b t`` (linear) or ``log y = a + b t`` (exponential), plus day-of-week effects once
three weeks of history exist. ``growth="mixture"`` averages the two curves, weighted by their BIC: four weeks
of noisy daily peaks rarely tell linear from exponential growth (on simulated growth, :mod:`app.eval_capacity`,
the hold-out choice picked the right one in about half of the runs), and the two disagree by weeks at a 90-day
horizon. The fit is robust (Huber IRLS, MAD scale): one traffic spike in the history otherwise tilts the line
and widens every interval. Its uncertainty shape is the OLS prediction standard error,
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

GROWTHS = ("linear", "exponential", "auto", "mixture")
_HUBER_K = 1.345  # 95 % efficiency under normal errors (Huber 1981)
_DOW_MIN_WEEKS = 3  # weekly effects need a few cycles, or they soak up the trend


def _design(t: np.ndarray, m: int | None, phase0: int) -> np.ndarray:
    cols = [np.ones_like(t), t]
    if m:
        phase = (phase0 + t.astype(np.int64)) % m
        cols += [(phase == k).astype(np.float64) for k in range(1, m)]
    return np.column_stack(cols)


def _ols(x: np.ndarray, y: np.ndarray, robust: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """Least squares, or Huber M-estimation by IRLS with a MAD scale when ``robust``."""
    w = np.ones_like(y)
    for _ in range(20 if robust else 1):
        sw = np.sqrt(w)
        beta, *_ = np.linalg.lstsq(x * sw[:, None], y * sw, rcond=None)
        resid = y - x @ beta
        scale = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
        if not robust or scale <= 0:
            break
        u = np.abs(resid) / (_HUBER_K * scale)
        w_new = np.where(u <= 1.0, 1.0, 1.0 / np.maximum(u, 1e-12))
        if np.allclose(w_new, w):
            break
        w = w_new
    dof = max(y.size - x.shape[1], 1)
    if robust and scale > 0:
        sigma = scale * float(np.sqrt(y.size / dof))
    else:
        sigma = float(np.sqrt(resid @ resid / dof))
    # Huber's asymptotic covariance is a scalar times (X'X)^-1 (Huber 1981, ch. 7); the scalar goes in sigma
    xtx_inv = np.linalg.pinv(x.T @ x)
    return beta, xtx_inv, sigma


def _linear_weight(y: np.ndarray, linear: np.ndarray, exponential: np.ndarray) -> float:
    """Posterior weight of the linear curve against the exponential one: ``1 / (1 + exp(-dBIC / 2))``.

    Both have the same number of parameters, so the BIC difference is ``n log(s_e^2 / s_l^2)`` with ``s`` the
    robust (MAD) scale of each curve's residuals on the original scale. Noisy weeks give weights near 0.5
    (the forecast is the average); clear curvature, or clearly none, decides.
    """
    scales = []
    for fitted in (linear, exponential):
        r = y - fitted
        scales.append(max(1.4826 * float(np.median(np.abs(r - np.median(r)))), 1e-12))
    d_bic = y.size * 2.0 * (np.log(scales[1]) - np.log(scales[0]))  # > 0: linear fits better
    return float(1.0 / (1.0 + np.exp(-np.clip(d_bic / 2.0, -50.0, 50.0))))


@dataclass(kw_only=True, eq=False)
class TrendForecaster(Forecaster):
    """Least-squares growth curve with day-of-week effects and a horizon-dependent standard error.

    Parameters
    ----------
    growth
        ``linear``, ``exponential`` (log-linear, positive series only), ``auto``: the one with the smaller
        error forecasting the last ``holdout`` points from the rest, or ``mixture``: the two forecasts
        averaged with BIC weights, with the mixture's variance (the weighted variances plus ``w (1 - w)``
        times their gap squared), so the interval covers both growth shapes while the data cannot tell them
        apart.
    holdout
        Points held out by ``auto``.
    robust
        Huber IRLS instead of least squares (a spike day weighs like a ``1.345`` MAD residual).

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

    growth: str = "mixture"
    holdout: int = 7
    robust: bool = True
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
        beta, xtx_inv, sigma = _ols(x, z, self.robust)
        fitted = x @ beta
        if growth == "exponential":
            fitted = np.exp(fitted)
        name = f"trend({growth}{f', season {m}' if m else ''})"
        return SeriesFit(model=name, params=(growth, m, beta, xtx_inv, sigma, y.size), fitted=fitted)

    def _fit_series(self, data: SeriesData) -> SeriesFit:
        if self.growth == "mixture":
            if float(np.min(data.y)) <= 0:
                return self._fit_one(data, "linear")
            lin, exp = self._fit_one(data, "linear"), self._fit_one(data, "exponential")
            w = _linear_weight(data.y, lin.fitted, exp.fitted)
            m = lin.params[1]
            return SeriesFit(
                model=f"trend(mixture {w:.2f} linear{f', season {m}' if m else ''})",
                params=("mixture", w, lin, exp),
                fitted=w * lin.fitted + (1.0 - w) * exp.fitted,
            )
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
        if fit.params[0] == "mixture":
            w = fit.params[1]
            (mean_l, se_l), (mean_e, se_e) = (self._forecast_series(f, horizon) for f in fit.params[2:])
            var = w * se_l**2 + (1.0 - w) * se_e**2 + w * (1.0 - w) * (mean_l - mean_e) ** 2
            return w * mean_l + (1.0 - w) * mean_e, np.sqrt(var)
        growth, m, beta, xtx_inv, sigma, n = fit.params
        t = np.arange(n, n + horizon, dtype=np.float64)
        x = _design(t, m, 0)
        mean = x @ beta
        se = sigma * np.sqrt(1.0 + np.einsum("ij,jk,ik->i", x, xtx_inv, x))
        if growth == "exponential":
            mean = np.exp(mean)
            se = mean * se  # delta method: sd of exp(z) ~ exp(z) * sd(z)
        return mean, np.maximum(se, 1e-12)
