"""Seasonal naive: repeat the last season. The baseline every forecast report shows beside its model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from detectors.forecast_base import Forecaster, SeriesData, SeriesFit

#: pseudo-observations pulling each phase's error spread towards the overall one (few seasons → noisy spreads)
_PHASE_PRIOR = 5.0


@dataclass(kw_only=True, eq=False)
class SeasonalNaive(Forecaster):
    """``yhat[n + j] = y[n + j - m * (1 + j // m)]``: the last ``m`` values, repeated.

    ``season`` is the season length ``m`` in steps; ``None`` takes the shortest season with two cycles of
    history (24 for hourly data), and a series shorter than that repeats its last value. The forecast scale
    is the spread of the in-sample seasonal differences at each phase of the season (errors at night differ
    from errors at the daily peak), growing with the square root of the number of seasons ahead.

    Examples
    --------
    >>> import polars as pl, numpy as np
    >>> from datetime import datetime
    >>> t = pl.datetime_range(datetime(2026, 1, 1), datetime(2026, 1, 5, 23), "1h", eager=True)
    >>> y = 10 + np.sin(2 * np.pi * np.arange(t.len()) / 24)
    >>> frame = pl.DataFrame({"series_id": 1, "ts": t, "value": y})
    >>> out = SeasonalNaive().fit(frame).predict(24)
    >>> bool(np.allclose(out["yhat"].to_numpy(), y[-24:])), out["model"][0]
    (True, 'naive(m=24)')
    """

    name: ClassVar[str] = "naive"

    season: int | None = None

    def _min_length(self, seasons: tuple[int, ...]) -> int:
        return 1

    def _fit_series(self, data: SeriesData) -> SeriesFit:
        y, n = data.y, data.n
        if self.season is not None:
            m = int(self.season) if n >= 2 * int(self.season) else 1
        else:
            m = data.seasons[0] if data.seasons else 1
        fitted = np.full(n, np.nan)
        if n > m:
            fitted[m:] = y[:-m]
        resid = y[m:] - y[:-m] if n > m else np.zeros(0)
        overall = float(np.sqrt(np.mean(resid**2))) if resid.size else 0.0
        phase = np.arange(m, n) % m
        ss = np.bincount(phase, weights=resid**2, minlength=m)
        cnt = np.bincount(phase, minlength=m)
        sigma = np.sqrt((ss + _PHASE_PRIOR * overall**2) / (cnt + _PHASE_PRIOR))
        model = f"naive(m={m})" if m > 1 else "naive"
        return SeriesFit(model=model, params=(m, y[n - m :].copy(), sigma, n), fitted=fitted)

    def _forecast_series(
        self, fit: SeriesFit, horizon: int, future: Mapping[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        m, last, sigma, n = fit.params
        j = np.arange(horizon)
        return last[j % m], sigma[(n + j) % m] * np.sqrt(j // m + 1.0)
