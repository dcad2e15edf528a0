"""MSTL: daily and weekly seasonal components (``statsmodels`` MSTL, Bandara et al. 2021), each continued
from its last cycle, plus a damped-trend exponential smoothing of the seasonally adjusted series.

The decomposition runs on the log of positive series (``transform="auto"``), so seasonal swings scale with
the level. Only the seasons with two cycles of history are used (four weeks of hourly data → daily and
weekly). The trend model is the one statsforecast and the MSTL paper use for the adjusted series: an
exponential smoothing with a damped trend (Gardner & McKenzie 1985), so trends flatten instead of running off.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from detectors.forecast_base import Forecaster, SeriesData, SeriesFit
from detectors.forecast_ets import SmoothingState, Trend, fit_smoothing


@dataclass(frozen=True)
class MstlParams:
    log: bool
    tails: tuple[np.ndarray, ...]  # last cycle of each seasonal component
    trend: SmoothingState


@dataclass(kw_only=True, eq=False)
class MstlForecaster(Forecaster):
    """MSTL seasonal components + exponential smoothing of the adjusted series (see the module docstring).

    Parameters
    ----------
    transform
        ``"auto"`` decomposes the log of strictly positive series, ``"log"`` likewise, ``"none"`` the values.
    trend
        Trend of the adjusted series' smoothing: ``"damped"``, ``"linear"`` or ``"none"`` (level only).
    iterate
        MSTL's refinement iterations.

    Examples
    --------
    >>> import polars as pl, numpy as np
    >>> from datetime import datetime
    >>> t = pl.datetime_range(datetime(2026, 1, 1), datetime(2026, 1, 28, 23), "1h", eager=True)
    >>> i = np.arange(t.len())
    >>> y = 100 + 20 * np.sin(2 * np.pi * i / 24) + 10 * (i % 168 < 120) + np.random.default_rng(2).normal(0, 1, i.size)
    >>> f = MstlForecaster().fit(pl.DataFrame({"series_id": 1, "ts": t, "value": y}))
    >>> f.predict(24)["model"][0]
    'mstl(24,168,Ad,log)'
    """

    name: ClassVar[str] = "mstl"

    transform: Literal["auto", "log", "none"] = "auto"
    trend: Trend = "damped"
    iterate: int = 2

    def _min_length(self, seasons: tuple[int, ...]) -> int:
        return max(2 * seasons[0] if seasons else 0, 12)

    def _fit_series(self, data: SeriesData) -> SeriesFit:
        from statsmodels.tsa.seasonal import MSTL

        y = data.y
        log = self.transform != "none" and float(y.min()) > 0
        x = np.log(y) if log else y.astype(np.float64)
        periods = data.seasons
        if periods:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = MSTL(x, periods=periods, iterate=self.iterate).fit()
            seasonal = np.asarray(res.seasonal, dtype=np.float64).reshape(x.size, -1)
        else:
            seasonal = np.zeros((x.size, 0))
        adjusted = x - seasonal.sum(axis=1)
        state, fitted_adj = fit_smoothing(adjusted, self.trend, 1)
        tails = tuple(seasonal[x.size - p :, j].copy() for j, p in enumerate(periods))
        fitted = fitted_adj + seasonal.sum(axis=1)
        code = {"none": "N", "damped": "Ad", "linear": "A"}[self.trend]
        model = f"mstl({','.join(str(p) for p in periods) or '-'},{code},{'log' if log else 'raw'})"
        return SeriesFit(
            model=model,
            params=MstlParams(log=log, tails=tails, trend=state),
            fitted=np.exp(fitted) if log else fitted,
        )

    def _forecast_series(
        self, fit: SeriesFit, horizon: int, future: Mapping[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        p: MstlParams = fit.params
        j = np.arange(horizon)
        mean = p.trend.mean(horizon) + sum((tail[j % tail.size] for tail in p.tails), np.zeros(horizon))
        sd = p.trend.sd(horizon)
        if p.log:
            mean = np.exp(np.clip(mean, -700, 700))
            return mean, mean * sd
        return mean, sd
