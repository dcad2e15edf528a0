"""Seasonal ARIMA fitted by conditional least squares: the strong, cheap workhorse for hourly telemetry.

The model is ``(1 - B^D) phi(B) x_t = gamma' f_t + e_t``: ``x`` the (log-)series, ``D`` a seasonal difference
(a day or a week), ``phi`` a sparse autoregression on the differenced series with short lags ``1..p`` and
seasonal lags (``m - 1, m, m + 1, 2m, ...`` of the daily season ``m`` and the weekly season), ``f`` optional
Fourier terms of the longest season when that season is not differenced. In ARIMA notation it is an
``ARIMA(p, 0, 0)(P, 1, 0)_D`` with subset lags, estimated by conditional sum of squares (Box & Jenkins, ch. 7)
— one least-squares solve instead of a likelihood optimisation, so a fit takes about a millisecond and the
rolling-origin backtest is cheap. The autoregression is made stationary by shrinking its roots into the unit
circle when the estimate is explosive (so a forecast never blows up). On M4 Hourly the daily-differenced log
model alone scores MASE 0.891 (seasonal naive 1.193); a ``statsmodels`` SARIMAX fit is 50-100x slower.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from scipy.signal import lfilter, lfiltic

from detectors.forecast_base import Forecaster, SeriesData, SeriesFit

_MAX_ROOT = 0.999  # largest root modulus allowed for the AR part on the differenced series
_MIN_ROWS = 30


@dataclass(frozen=True)
class ArimaParams:
    log: bool
    period: int
    lags: tuple[int, ...]
    beta: np.ndarray
    gamma: np.ndarray
    fourier_period: int
    sigma: float
    tail: np.ndarray  # last ``period + max(lags)`` values of x
    n: int
    band: tuple[float, float]  # forecasts of x are kept inside this (far outside the history: overflow guard)


@dataclass(kw_only=True, eq=False)
class ArimaForecaster(Forecaster):
    """Seasonal-difference subset ARIMA by conditional least squares (see the module docstring).

    Parameters
    ----------
    seasonal_difference
        Difference at the ``"shortest"`` season (a day: ``x_t - x_{t-24}``), the ``"longest"`` (a week), or
        ``"none"`` (first difference).
    transform
        ``"log"`` models multiplicative seasonality (series must be positive, else it falls back to none);
        ``"auto"`` logs strictly positive series.
    ar_order
        Short autoregressive lags ``1..ar_order`` of the differenced series.
    fourier
        Harmonics of the longest season used as regressors when that season is not the differenced one.

    Examples
    --------
    >>> import polars as pl, numpy as np
    >>> from datetime import datetime
    >>> t = pl.datetime_range(datetime(2026, 1, 1), datetime(2026, 1, 21, 23), "1h", eager=True)
    >>> rng = np.random.default_rng(0)
    >>> y = 50 + 10 * np.sin(2 * np.pi * np.arange(t.len()) / 24) + rng.normal(0, 1, t.len())
    >>> f = ArimaForecaster().fit(pl.DataFrame({"series_id": 1, "ts": t, "value": y}))
    >>> out = f.predict(48)
    >>> out.height, out["model"][0], bool((out["lo95"] < out["yhat"]).all())
    (48, 'arima(d=24,log)', True)
    """

    name: ClassVar[str] = "arima"

    seasonal_difference: Literal["shortest", "longest", "none"] = "shortest"
    transform: Literal["auto", "log", "none"] = "auto"
    ar_order: int = 5
    fourier: int = 0

    def _period(self, seasons: tuple[int, ...]) -> int:
        if not seasons or self.seasonal_difference == "none":
            return 1
        return seasons[-1] if self.seasonal_difference == "longest" else seasons[0]

    def _min_length(self, seasons: tuple[int, ...]) -> int:
        return self._period(seasons) + self.ar_order + _MIN_ROWS

    def _lags(self, period: int, seasons: tuple[int, ...], n_diff: int) -> tuple[int, ...]:
        lags = set(range(1, self.ar_order + 1))
        if seasons:
            m = seasons[0]
            lags |= {m - 1, m, m + 1, 2 * m}
            if period != seasons[-1] or len(seasons) == 1:
                lags |= {3 * m, 4 * m}
            for big in seasons[1:]:
                lags |= {big} if period == big else {big - m, big}
        ordered = sorted(lag for lag in lags if lag >= 1)
        # keep enough regression rows: drop the longest lags first
        while len(ordered) > 1 and n_diff - ordered[-1] < max(_MIN_ROWS, 3 * len(ordered)):
            ordered.pop()
        return tuple(ordered)

    def _fit_series(self, data: SeriesData) -> SeriesFit:
        y = data.y
        log = self.transform != "none" and float(y.min()) > 0
        x = np.log(y) if log else y.astype(np.float64)
        seasons = data.seasons
        period = self._period(seasons)
        d = x[period:] - x[:-period]
        lags = self._lags(period, seasons, d.size)
        top = max(lags)
        rows = d.size - top
        design = np.column_stack([d[top - lag : d.size - lag] for lag in lags])
        fourier_period = seasons[-1] if self.fourier > 0 and seasons and seasons[-1] != period else 0
        t_rows = np.arange(period + top, data.n)
        terms = _fourier(t_rows, fourier_period, self.fourier)
        full = np.column_stack([design, terms])
        target = d[top:]
        gram = full.T @ full
        ridge = 1e-8 * (np.trace(gram) / gram.shape[0] + 1e-12)
        coef = np.linalg.solve(gram + ridge * np.eye(gram.shape[0]), full.T @ target)
        beta, gamma = _stabilise(coef[: len(lags)], lags), coef[len(lags) :]
        pred = design @ beta + terms @ gamma
        resid = target - pred
        sigma = float(np.sqrt(np.sum(resid**2) / max(rows - full.shape[1], 1)))
        fitted_x = np.full(data.n, np.nan)
        fitted_x[period + top :] = x[top : data.n - period] + pred
        lo, hi = float(x.min()), float(x.max())
        band = (lo - 5 * (hi - lo) - 1.0, hi + 5 * (hi - lo) + 1.0)
        params = ArimaParams(
            log=log,
            period=period,
            lags=lags,
            beta=beta,
            gamma=gamma,
            fourier_period=fourier_period,
            sigma=sigma,
            tail=x[-(period + top) :].copy(),
            n=data.n,
            band=band,
        )
        model = f"arima(d={period},{'log' if log else 'raw'}{',fourier' if fourier_period else ''})"
        return SeriesFit(model=model, params=params, fitted=np.exp(fitted_x) if log else fitted_x)

    def _forecast_series(
        self, fit: SeriesFit, horizon: int, future: Mapping[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        p: ArimaParams = fit.params
        a = _polynomial(p.beta, p.lags, p.period)
        order = a.size - 1
        drive = _fourier(np.arange(p.n, p.n + horizon), p.fourier_period, p.gamma.size // 2) @ p.gamma
        zi = lfiltic([1.0], a, p.tail[::-1][:order])
        xf, _ = lfilter([1.0], a, drive, zi=zi)
        xf = np.clip(xf, *p.band)
        impulse = np.zeros(horizon)
        impulse[0] = 1.0
        psi = lfilter([1.0], a, impulse)
        sd = p.sigma * np.sqrt(np.cumsum(psi**2))
        if p.log:
            mean = np.exp(xf)
            return mean, mean * sd
        return xf, sd


def _fourier(t: np.ndarray, period: int, harmonics: int) -> np.ndarray:
    if not period or harmonics <= 0:
        return np.zeros((t.size, 0))
    k = np.arange(1, harmonics + 1)
    angle = 2 * np.pi * np.outer(t, k) / period
    return np.column_stack([np.sin(angle), np.cos(angle)])


def _polynomial(beta: np.ndarray, lags: tuple[int, ...], period: int) -> np.ndarray:
    """Coefficients of ``(1 - B^period) (1 - sum beta_l B^l)`` in powers of ``B``."""
    phi = np.zeros(max(lags) + 1)
    phi[0] = 1.0
    phi[np.asarray(lags)] -= beta
    diff = np.zeros(period + 1)
    diff[0], diff[-1] = 1.0, -1.0
    return np.convolve(phi, diff)


def _root_modulus(beta: np.ndarray, lags: tuple[int, ...]) -> float:
    """Largest root modulus of the AR part, from the decay rate of its impulse response.

    The companion-matrix eigenvalues would be exact but cost O(L^3) for lag L = 168 (~60 ms); the impulse
    response through ``lfilter`` costs ~0.5 ms and is exact enough to tell explosive from stationary.
    """
    top = max(lags)
    phi = np.zeros(top + 1)
    phi[0] = 1.0
    phi[np.asarray(lags)] -= beta
    n = 20 * top + 200
    impulse = np.zeros(n)
    impulse[0] = 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        h = np.abs(lfilter([1.0], phi, impulse))
        late, early = np.max(h[n - top - 1 :]), np.max(h[n // 2 - top - 1 : n // 2])
        if not np.isfinite(late) or not np.isfinite(early):
            return np.inf
        if early == 0.0 or late == 0.0:
            return 0.0
        return float((late / early) ** (1.0 / (n - n // 2)))


def _stabilise(beta: np.ndarray, lags: tuple[int, ...]) -> np.ndarray:
    """Scale ``beta_l`` by ``r^l`` (every root shrinks by ``r``) until the largest root modulus is < 0.999."""
    powers = np.asarray(lags, dtype=np.float64)
    for _ in range(8):
        radius = _root_modulus(beta, lags)
        if radius <= _MAX_ROOT:
            break
        shrink = _MAX_ROOT / radius if np.isfinite(radius) else 0.9
        beta = beta * min(shrink, 0.9999) ** powers
    return beta
