"""Forecast-residual detectors: a forecaster composed into a detector (STYLE.md rule 2, never inheritance).

:class:`ResidualDetector` fits any registered forecaster (:mod:`detectors.forecast_registry`: ETS /
Holt-Winters, Prophet, MSTL, ...) on a series' history, forecasts the points to score, and scores each point by
how far outside the forecast's *calibrated* prediction interval it falls: the 95 % interval is split-conformal
(calibrated on rolling-origin backtests, :mod:`detectors.forecast_base`), so a point exactly on its edge has tail
probability 0.05 whatever the model; beyond the edge the tail is extrapolated with the normal shape
(``p = 2 * (1 - Phi(1.96 * r))``, ``r`` = distance from the forecast in half-widths). Expected value and band
are the forecast and its 95 % interval.

Batch family: the forecast horizon grows with the distance from the end of the fit, so ``rootwise detect``
refits it on a schedule and ``score_online`` on the growing prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from detectors.base import Detector, SeriesScores, Threshold
from detectors.calibration import z_of_tail
from detectors.forecast_registry import make_forecaster

_Z95 = 1.959963984540054


@dataclass(frozen=True)
class ResidualState:
    """The fitted forecaster of one series and the end of its training grid."""

    forecaster: Any
    last_us: int
    step_us: int


class ResidualDetector(Detector):
    """Score points by their distance outside a forecaster's calibrated 95 % prediction interval.

    Parameters
    ----------
    forecaster
        Registered forecaster name (``ets``, ``prophet``, ``mstl``, ``arima``, ``naive``, ``auto``).
    max_history
        Points of history the forecaster is fitted on (the most recent ones).
    """

    name = "residual"
    causal = False

    def __init__(
        self,
        *,
        forecaster: str = "ets",
        max_history: int = 4032,
        threshold: Threshold | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(threshold=threshold, seed=seed)
        self.forecaster = forecaster
        self.max_history = max_history

    def _fit_series(self, t: np.ndarray, y: np.ndarray) -> ResidualState | None:
        t, y = t[-self.max_history :], y[-self.max_history :]
        if t.size < 3:
            return None
        frame = pl.DataFrame(
            {"series_id": np.zeros(t.size, np.int64), "ts": t.astype("datetime64[us]"), "value": y}
        )
        f = make_forecaster(self.forecaster, seed=self.seed).fit(frame)
        step = int(np.median(np.diff(t)))
        return ResidualState(f, int(t[-1]), max(step, 1))

    def _score_series(self, t: np.ndarray, y: np.ndarray, state: ResidualState | None) -> SeriesScores:
        n = t.size
        if state is None or n == 0:
            return SeriesScores(np.zeros(n))
        # grid position of each point after the end of the fit (points at or before it reuse step 1)
        pos = np.maximum(np.rint((t - state.last_us) / state.step_us).astype(np.int64), 1)
        fc = state.forecaster.predict(int(pos.max()))
        idx = pos - 1
        yhat = fc["yhat"].to_numpy()[idx]
        lo, hi = fc["lo95"].to_numpy()[idx], fc["hi95"].to_numpy()[idx]
        half = np.maximum((hi - lo) / 2.0, 1e-12)
        r = np.abs(np.nan_to_num(y, nan=yhat) - yhat) / half
        # on the edge of the calibrated 95 % interval p = 0.05; the normal shape beyond it
        from scipy.special import ndtr

        p = 2.0 * ndtr(-_Z95 * r)
        return SeriesScores(z_of_tail(p), yhat, lo, hi)


class EtsResidualDetector(ResidualDetector):
    """ETS / Holt-Winters (statsmodels) residuals; a :class:`ResidualDetector` with ``forecaster="ets"``."""

    name = "ets-residual"

    def __init__(
        self,
        *,
        forecaster: str = "ets",
        max_history: int = 4032,
        threshold: Threshold | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(forecaster=forecaster, max_history=max_history, threshold=threshold, seed=seed)


class ProphetResidualDetector(ResidualDetector):
    """Prophet residuals (imported lazily by the forecaster); a :class:`ResidualDetector` with
    ``forecaster="prophet"``."""

    name = "prophet-residual"

    def __init__(
        self,
        *,
        forecaster: str = "prophet",
        max_history: int = 2016,
        threshold: Threshold | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(forecaster=forecaster, max_history=max_history, threshold=threshold, seed=seed)
