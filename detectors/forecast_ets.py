"""Exponential smoothing (Holt-Winters, ``statsmodels``): additive seasonality on the (log-)series, a trend
chosen by AIC among none / damped / linear.

Log-transformed additive seasonality is multiplicative seasonality, what most load series have (the daily
swing grows with the level). The season is the shortest one with two cycles of history (a day for hourly
data): ``statsmodels`` estimates one initial state per season position, so a weekly season (168 states)
would be slow and poorly determined. The forecast scale uses the analytic ETS variance (Hyndman et al.,
*Forecasting with Exponential Smoothing*, 2008, table 6.1, class 1); the intervals are then calibrated by the
base class.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from detectors.forecast_base import Forecaster, SeriesData, SeriesFit

Trend = Literal["none", "damped", "linear"]


@dataclass(frozen=True)
class SmoothingState:
    """Final states and smoothing parameters of one Holt-Winters fit."""

    level: float
    slope: float
    phi: float
    alpha: float
    beta: float  # trend smoothing in component form (beta*)
    gamma: float
    season: np.ndarray  # last ``m`` seasonal states (empty without a season)
    sigma: float
    aic: float

    def mean(self, horizon: int) -> np.ndarray:
        h = np.arange(1, horizon + 1)
        out = self.level + np.cumsum(self.phi**h) * self.slope
        if self.season.size:
            m = self.season.size
            out = out + self.season[(h - 1) % m]
        return out

    def sd(self, horizon: int) -> np.ndarray:
        """``sigma * sqrt(1 + sum_{j<h} c_j^2)``, ``c_j = alpha (1 + beta phi_j) + gamma [j mod m == 0]``."""
        j = np.arange(1, horizon)
        phi_j = np.cumsum(self.phi**j) if self.slope or self.beta else np.zeros(j.size)
        c = self.alpha * (1.0 + self.beta * phi_j)
        if self.season.size:
            c = c + self.gamma * (j % self.season.size == 0)
        return self.sigma * np.sqrt(np.r_[1.0, 1.0 + np.cumsum(c**2)])


def fit_smoothing(
    x: np.ndarray, trend: Trend, season: int, initialization: str = "estimated"
) -> tuple[SmoothingState, np.ndarray]:
    """Fit Holt-Winters (additive trend/season) to ``x``: the final state and the one-step fitted values."""
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    with warnings.catch_warnings():
        # convergence chatter of the optimiser on short or smooth series; the fit is still usable
        warnings.simplefilter("ignore")
        # no brute-force grid of starting values: it cost ~10x and found no better optimum on 10 M4 Hourly series
        res = ExponentialSmoothing(
            x,
            trend=None if trend == "none" else "add",
            damped_trend=trend == "damped",
            seasonal="add" if season > 1 else None,
            seasonal_periods=season if season > 1 else None,
            initialization_method=initialization,
        ).fit(use_brute=False)
    p = res.params
    has_trend = trend != "none"
    state = SmoothingState(
        level=float(res.level[-1]),
        slope=float(res.trend[-1]) if has_trend else 0.0,
        phi=float(p["damping_trend"]) if trend == "damped" else 1.0,
        alpha=float(p["smoothing_level"]),
        beta=float(p["smoothing_trend"]) if has_trend else 0.0,
        gamma=float(p["smoothing_seasonal"]) if season > 1 else 0.0,
        season=np.asarray(res.season[-season:], dtype=np.float64) if season > 1 else np.zeros(0),
        sigma=float(np.sqrt(res.sse / max(x.size - len(p), 1))),
        aic=float(res.aic),
    )
    return state, np.asarray(res.fittedvalues, dtype=np.float64)


@dataclass(frozen=True)
class EtsParams:
    log: bool
    state: SmoothingState


@dataclass(kw_only=True, eq=False)
class EtsForecaster(Forecaster):
    """Holt-Winters with additive season on the (log-)series; trend chosen by AIC among ``trends``.

    Parameters
    ----------
    transform
        ``"auto"`` logs strictly positive series (multiplicative seasonality), ``"log"`` likewise, ``"none"``
        never.
    trends
        Trend variants compared by AIC (same transform, so the likelihoods are comparable).
    seasonal
        ``False`` fits no season.
    initialization
        ``statsmodels`` ``initialization_method``: ``"estimated"`` optimises the initial states (better,
        ~4x slower), ``"heuristic"`` takes them from a decomposition of the first cycles.

    Examples
    --------
    >>> import polars as pl, numpy as np
    >>> from datetime import datetime
    >>> t = pl.datetime_range(datetime(2026, 1, 1), datetime(2026, 1, 14, 23), "1h", eager=True)
    >>> y = 20 + 5 * np.sin(2 * np.pi * np.arange(t.len()) / 24) + np.random.default_rng(1).normal(0, 0.5, t.len())
    >>> out = EtsForecaster(trends=("none",)).fit(pl.DataFrame({"series_id": 1, "ts": t, "value": y})).predict(24)
    >>> out["model"][0], bool(np.abs(out["yhat"].to_numpy() - y[-24:]).mean() < 1.5)
    ('ets(N,A,log)', True)
    """

    name: ClassVar[str] = "ets"

    transform: Literal["auto", "log", "none"] = "auto"
    trends: tuple[Trend, ...] = ("none", "damped")
    seasonal: bool = True
    initialization: Literal["estimated", "heuristic"] = "estimated"

    def _min_length(self, seasons: tuple[int, ...]) -> int:
        return max(2 * seasons[0] if seasons and self.seasonal else 0, 12)

    def _fit_series(self, data: SeriesData) -> SeriesFit:
        y = data.y
        log = self.transform != "none" and float(y.min()) > 0
        x = np.log(y) if log else y.astype(np.float64)
        season = data.seasons[0] if self.seasonal and data.seasons else 1
        init = self.initialization if season == 1 or x.size >= 3 * season else "estimated"
        best: tuple[SmoothingState, np.ndarray, Trend] | None = None
        for trend in self.trends:
            state, fitted = fit_smoothing(x, trend, season, init)
            if best is None or state.aic < best[0].aic:
                best = (state, fitted, trend)
        if best is None:
            raise ValueError("EtsForecaster needs at least one trend in `trends`")
        state, fitted, trend = best
        code = {"none": "N", "damped": "Ad", "linear": "A"}[trend] + (",A" if season > 1 else ",N")
        model = f"ets({code},{'log' if log else 'raw'})"
        return SeriesFit(model=model, params=EtsParams(log, state), fitted=np.exp(fitted) if log else fitted)

    def _forecast_series(
        self, fit: SeriesFit, horizon: int, future: Mapping[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        p: EtsParams = fit.params
        mean, sd = p.state.mean(horizon), p.state.sd(horizon)
        if p.log:
            mean = np.exp(np.clip(mean, -700, 700))
            return mean, mean * sd
        return mean, sd
