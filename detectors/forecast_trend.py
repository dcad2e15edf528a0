"""Trend regression for long-horizon capacity demand: daily peaks extrapolated with a growth curve.

Capacity questions ("when does tokens/s outgrow our GPUs?") are about where the *daily peak* goes over weeks
and months, not about the shape of tomorrow's curve. Models tuned for short horizons (ETS, MSTL) either damp
the trend away or extrapolate noise; this family fits an explicit growth curve to the (usually daily) series:
linear ``y = a (1 + c t)`` or exponential ``y = a exp(c t)``, plus day-of-week effects once three weeks of
history exist. On a positive series both are fitted to ``log y``, so the weekly pattern and the noise scale
with the level, as traffic does (a weekend 30 % lower stays 30 % lower as demand doubles); with additive
weekly effects a linear fit takes the slope of weekday and weekend peaks together and comes late to a limit
that the weekday peaks cross (on simulated growth, :mod:`app.eval_capacity`, P90 dates on or before the
realised exhaustion day 0.80 of runs additive, 0.89 multiplicative). A series with a value <= 0 gets the
additive linear curve ``y = a + b t``.

``growth="mixture"`` averages the two curves, weighted by their BIC: four weeks of noisy daily peaks rarely
tell linear from exponential growth, and the two disagree by weeks at a 90-day horizon. The fit is robust
(Huber IRLS with a MAD scale, Gauss-Newton steps for the linear curve on ``log y``): one traffic spike in the
history otherwise tilts the line and widens every interval. Its uncertainty is the prediction standard error
``sqrt(sigma^2 + g' V g)`` (``V`` the covariance of the curve's parameters, ``g`` the gradient of the
forecast in them), which grows with the distance from the data: parameter uncertainty, not only noise, is
what makes a 90-day exhaustion date uncertain. The base class calibrates the intervals on rolling-origin
backtests (split conformal) like every family.

:meth:`TrendForecaster.sample_paths` draws whole future paths from the same model (a growth curve by its
weight, its parameters from their sampling distribution, then daily noise): the first day a path passes a
limit is an exhaustion day, which per-day intervals cannot give (:func:`app.capacity.forecast_daily`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from detectors.forecast_base import Forecaster, SeriesData, SeriesFit

GROWTHS = ("linear", "exponential", "auto", "mixture")
_HUBER_K = 1.345  # 95 % efficiency under normal errors (Huber 1981)
_DOW_MIN_WEEKS = 3  # weekly effects need a few cycles, or they soak up the trend
_CLIP_SIGMAS = 3.0  # residuals beyond this many robust sds are spikes: clipped when estimating the noise sd
_FLOOR = 1e-6  # 1 + c t never reaches 0 inside a log: a falling linear curve flattens at ~0


@dataclass(frozen=True, eq=False)  # numpy fields: identity, not elementwise, equality
class GrowthCurve:
    """A fitted growth curve: ``eta(t) = level + growth term + season effect``; ``y = exp(eta)`` when ``log``.

    ``theta`` is ``(level, rate, season effects of phases 1 .. m-1)``; ``cov`` its covariance; ``sigma`` the
    residual standard deviation (of ``log y`` when ``log``); ``n`` the points fitted (``t = 0 .. n-1``).
    """

    growth: str  # linear | exponential
    log: bool
    season: int | None
    theta: np.ndarray
    cov: np.ndarray
    sigma: float
    n: int

    def eta(self, t: np.ndarray, theta: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``eta`` at times ``t`` for parameters ``theta`` (rows: one parameter vector each, or one vector),
        and its Jacobian in ``theta`` (for a single vector)."""
        th = self.theta if theta is None else theta
        return _eta(th, t, self.growth, self.log, self.season)

    def mean_se(self, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """Forecast (median) and prediction standard error for the ``horizon`` steps after the data."""
        t = np.arange(self.n, self.n + horizon, dtype=np.float64)
        eta, jac = self.eta(t)
        se = np.sqrt(self.sigma**2 + np.einsum("ij,jk,ik->i", jac, self.cov, jac))
        if self.log:
            mean = np.exp(eta)
            return mean, mean * se  # delta method: sd of exp(z) ~ exp(z) * sd(z)
        return eta, se

    def sample(self, horizon: int, n_paths: int, rng: np.random.Generator) -> np.ndarray:
        """``(n_paths, horizon)`` future paths: parameters from ``N(theta, cov)``, then normal daily noise."""
        t = np.arange(self.n, self.n + horizon, dtype=np.float64)
        thetas = rng.multivariate_normal(self.theta, self.cov, size=n_paths, method="eigh")
        eta, _ = _eta(thetas, t, self.growth, self.log, self.season)
        eta = eta + self.sigma * rng.standard_normal((n_paths, horizon))
        return np.exp(eta) if self.log else eta


def _season_columns(t: np.ndarray, m: int | None) -> np.ndarray:
    if not m:
        return np.zeros((t.size, 0))
    phase = t.astype(np.int64) % m
    return np.column_stack([(phase == k).astype(np.float64) for k in range(1, m)])


def _eta(
    theta: np.ndarray, t: np.ndarray, growth: str, log: bool, m: int | None
) -> tuple[np.ndarray, np.ndarray]:
    th = np.atleast_2d(theta)
    level, rate = th[:, :1], th[:, 1:2]
    seasons = _season_columns(t, m)
    if growth == "linear" and log:
        base = np.maximum(1.0 + rate * t, _FLOOR)
        term, d_rate = np.log(base), np.where(base > _FLOOR, t / base, 0.0)
    else:  # exponential on log y, or the additive linear curve: linear in theta
        term, d_rate = rate * t, np.broadcast_to(t, th.shape[:1] + t.shape)
    eta = level + term + th[:, 2:] @ seasons.T
    jac = np.column_stack([np.ones_like(t), d_rate[0], seasons])
    return (eta[0], jac) if theta.ndim == 1 else (eta, jac)


def _fit_curve(y: np.ndarray, growth: str, m: int | None, robust: bool) -> GrowthCurve:
    """Huber M-estimate (IRLS, MAD scale) of a growth curve by Gauss-Newton steps.

    The linear and exponential curves on ``log y`` need a positive ``y``; otherwise the additive linear curve.
    """
    log = bool(float(np.min(y)) > 0)
    if growth == "exponential" and not log:
        growth = "linear"
    z = np.log(y) if log else y
    n = y.size
    t = np.arange(n, dtype=np.float64)
    p = 2 + (m - 1 if m else 0)
    theta = np.zeros(p)
    theta[0] = float(np.median(z))
    w = np.ones(n)
    scale = 0.0
    for _ in range(50):
        eta, jac = _eta(theta, t, growth, log, m)
        sw = np.sqrt(w)
        step, *_ = np.linalg.lstsq(jac * sw[:, None], (z - eta) * sw, rcond=None)
        # keep 1 + c t positive over the data (the linear curve on log y), halving the step if needed
        while growth == "linear" and log and 1.0 + (theta[1] + step[1]) * (n - 1) <= 0.05:
            step = step / 2.0
        theta = theta + step
        resid = z - _eta(theta, t, growth, log, m)[0]
        scale = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
        w_new = w
        if robust and scale > 0:
            u = np.abs(resid) / (_HUBER_K * scale)
            w_new = np.where(u <= 1.0, 1.0, 1.0 / np.maximum(u, 1e-12))
        converged = float(np.max(np.abs(step))) < 1e-10 * (1.0 + float(np.max(np.abs(theta))))
        if converged and np.allclose(w_new, w):
            break
        w = w_new
    _, jac = _eta(theta, t, growth, log, m)
    dof = max(n - p, 1)
    if robust and scale > 0:
        # the sd of residuals clipped at 3 robust sds: a spike does not inflate it, while the heavier-than-
        # normal upper tail of daily peaks (each the largest of 24 hours) still counts, as the MAD alone would not
        clipped = np.clip(resid - np.median(resid), -_CLIP_SIGMAS * scale, _CLIP_SIGMAS * scale)
        sigma = float(np.sqrt(clipped @ clipped / dof))
    else:
        sigma = float(np.sqrt(resid @ resid / dof))
    # Huber's asymptotic covariance is a scalar times (J'J)^-1 (Huber 1981, ch. 7); the scalar goes in sigma
    cov = sigma**2 * np.linalg.pinv(jac.T @ jac)
    return GrowthCurve(growth=growth, log=log, season=m, theta=theta, cov=cov, sigma=sigma, n=n)


def _linear_weight(resid_linear: np.ndarray, resid_exponential: np.ndarray) -> float:
    """Posterior weight of the linear curve against the exponential one: ``1 / (1 + exp(-dBIC / 2))``.

    Both have the same number of parameters and are fitted to the same ``log y``, so the BIC difference is
    ``n log(s_e^2 / s_l^2)`` with ``s`` the robust (MAD) scale of each curve's residuals. Noisy weeks give
    weights near 0.5 (the forecast is the average); clear curvature, or clearly none, decides.
    """
    scales = [
        max(1.4826 * float(np.median(np.abs(r - np.median(r)))), 1e-12)
        for r in (resid_linear, resid_exponential)
    ]
    d_bic = resid_linear.size * 2.0 * (np.log(scales[1]) - np.log(scales[0]))  # > 0: linear fits better
    return float(1.0 / (1.0 + np.exp(-np.clip(d_bic / 2.0, -50.0, 50.0))))


@dataclass(kw_only=True, eq=False)
class TrendForecaster(Forecaster):
    """Robust growth curve with day-of-week effects and a horizon-dependent standard error.

    Parameters
    ----------
    growth
        ``linear``, ``exponential`` (positive series only), ``auto``: the one with the smaller error
        forecasting the last ``holdout`` points from the rest, or ``mixture``: the two forecasts averaged with
        BIC weights, with the mixture's variance (the weighted variances plus ``w (1 - w)`` times their gap
        squared), so the interval covers both growth shapes while the data cannot tell them apart.
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
    >>> f = TrendForecaster(growth="linear").fit(pl.DataFrame({"series_id": 1, "ts": t, "value": y}))
    >>> out = f.predict(30)
    >>> width = (out["hi95"] - out["lo95"]).to_numpy()
    >>> round(float(out["yhat"][29]) / 10) * 10, bool(width[-1] > 1.2 * width[0])  # wider further out
    (240, True)
    >>> paths = f.sample_paths(30, n_paths=500)[1]  # 500 simulated futures of 30 days
    >>> paths.shape, round(float(np.median(paths[:, 29])) / 10) * 10
    ((500, 30), 240)
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
        m = next((s for s in data.season_lengths if y.size >= _DOW_MIN_WEEKS * s), None)
        curve = _fit_curve(y, growth, m, self.robust)
        eta, _ = curve.eta(np.arange(y.size, dtype=np.float64))
        fitted = np.exp(eta) if curve.log else eta
        name = f"trend({curve.growth}{f', season {m}' if m else ''})"
        return SeriesFit(model=name, params=curve, fitted=fitted)

    def _fit_series(self, data: SeriesData) -> SeriesFit:
        if self.growth == "mixture":
            if float(np.min(data.y)) <= 0:
                return self._fit_one(data, "linear")
            lin, exp = self._fit_one(data, "linear"), self._fit_one(data, "exponential")
            w = _linear_weight(np.log(data.y) - np.log(lin.fitted), np.log(data.y) - np.log(exp.fitted))
            m = lin.params.season
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
        if isinstance(fit.params, tuple) and fit.params[0] == "mixture":
            w = fit.params[1]
            (mean_l, se_l), (mean_e, se_e) = (self._forecast_series(f, horizon) for f in fit.params[2:])
            var = w * se_l**2 + (1.0 - w) * se_e**2 + w * (1.0 - w) * (mean_l - mean_e) ** 2
            return w * mean_l + (1.0 - w) * mean_e, np.sqrt(var)
        mean, se = fit.params.mean_se(horizon)
        return mean, np.maximum(se, 1e-12)

    # -- simulated futures ---------------------------------------------------------------------------------
    def growth_weights(self) -> dict[Any, dict[str, float]]:
        """Per series, the weight of each growth curve in its forecast (one curve: weight 1; the seasonal
        naive fallback: ``{}``)."""
        out: dict[Any, dict[str, float]] = {}
        for sid, st in self._fitted_states().items():
            params = st.fit.params
            if st.fallback:
                out[sid] = {}
            elif isinstance(params, tuple):
                out[sid] = {"linear": params[1], "exponential": 1.0 - params[1]}
            else:
                out[sid] = {params.growth: 1.0}
        return out

    def sample_paths(
        self, horizon: int, n_paths: int = 1000, *, growth: str | None = None
    ) -> dict[Any, np.ndarray]:
        """Simulated futures per series: ``(n_paths, horizon)`` arrays, reproducible from ``seed``.

        Each path takes a growth curve by its weight (``growth`` forces one of a mixture's two), draws the
        curve's parameters from their sampling distribution (``N(theta, cov)``: a slope fitted on four weeks
        is uncertain) and adds the residual noise day by day, in ``log y`` when the curve is fitted there.
        Paths are clipped to the forecaster's bounds. A series on the seasonal naive fallback gets its
        forecast plus normal noise of the calibrated 80 % interval's width.
        """
        if horizon < 1 or n_paths < 1:
            raise ValueError(f"horizon and n_paths must be at least 1, got {horizon}, {n_paths}")
        if growth not in (None, "linear", "exponential"):
            raise ValueError(f"growth {growth!r} is not linear, exponential or None")
        out: dict[Any, np.ndarray] = {}
        for i, (sid, st) in enumerate(self._fitted_states().items()):
            rng = np.random.default_rng([self.seed, i, (None, "linear", "exponential").index(growth)])
            params = st.fit.params
            if st.fallback:
                fc = self._series_forecast(st, horizon, {})
                sd = (fc["hi80"] - fc["yhat"]) / 1.2815515655446004
                paths = fc["yhat"] + sd * rng.standard_normal((n_paths, horizon))
            elif isinstance(params, tuple):  # a mixture: the linear curve with probability w
                w, lin, exp = params[1], params[2].params, params[3].params
                if growth is None:
                    use_lin = rng.random(n_paths) < w
                else:
                    use_lin = np.full(n_paths, growth == "linear")
                paths = np.empty((n_paths, horizon))
                k = int(use_lin.sum())
                if k:
                    paths[use_lin] = lin.sample(horizon, k, rng)
                if k < n_paths:
                    paths[~use_lin] = exp.sample(horizon, n_paths - k, rng)
            else:
                paths = params.sample(horizon, n_paths, rng)
            out[sid] = np.clip(paths, st.lower, st.upper)
        return out
