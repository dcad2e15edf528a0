"""The forecaster contract (STYLE.md rule 1 for forecasts), implemented once.

Input is a long frame ``series_id, ts, value`` (``series_id`` Int64 or Utf8, kept as given; ``ts`` a datetime;
``value`` float); output is :data:`FORECASTS`. A family implements only its per-series numpy core:

* ``_fit_series(data) -> SeriesFit`` — learn from one series' history (:class:`SeriesData`: the values on a
  regular grid, gaps interpolated, the season lengths that fit in it);
* ``_forecast_series(fit, horizon, future) -> (mean, scale)`` — the point forecast and the model's own
  uncertainty *shape* per step (any positive array in the units of ``y``: how the error grows with the
  horizon, the time of day, the level).

:class:`Forecaster` does the rest: grouping, the regular grid (step = median difference), missing values,
constant and too-short series (seasonal naive), bounds, process parallelism, and the prediction intervals.
A family that fails on one series (or forecasts a non-finite value) does not stop the fit: that series gets
the seasonal naive, and ``states_[series_id].note`` says why.
Intervals are *calibrated*, not nominal: at fit time every series is backtested from ``backtest_origins``
rolling origins (refitting on the history before each origin, never looking past it), and the
``scale``-normalised absolute errors ``|y - mean| / scale`` of those backtests give, per series, the multipliers
of ``scale`` that cover 80 % and 95 % of them (split-conformal, finite-sample rank ``ceil((n+1)(1-a))``;
Vovk et al. 2005; Lei et al. 2018 for the normalised score). A model's nominal interval is never used: on M4
Hourly Prophet's nominal 95 % interval covers ~83 %; calibrated here, intervals around Prophet's forecasts
cover 94 % (:mod:`detectors.m4`).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
import polars as pl

from ingest.procs import exit_with_parent
from ingest.schema import TS

if TYPE_CHECKING:
    from polars._typing import PolarsDataType

#: forecast output; ``series_id`` keeps the input's dtype (Int64 or Utf8)
FORECASTS: dict[str, PolarsDataType] = {
    "series_id": pl.Int64,
    "ts": TS,
    "yhat": pl.Float64,
    "lo80": pl.Float64,
    "hi80": pl.Float64,
    "lo95": pl.Float64,
    "hi95": pl.Float64,
    "model": pl.Utf8,
}

#: in-sample one-step-ahead predictions (:meth:`Forecaster.fitted`)
FITTED: dict[str, PolarsDataType] = {
    "series_id": pl.Int64,
    "ts": TS,
    "value": pl.Float64,
    "yhat": pl.Float64,
    "scale": pl.Float64,
}

#: interval coverages, in the order of the ``lo80/hi80, lo95/hi95`` columns
LEVELS = (0.80, 0.95)
_NORMAL_Z = (1.2815515655446004, 1.959963984540054)  # nominal fallback when a series is too short to backtest
_DAY_US = 86_400_000_000
_MIN_SCORES = 10  # fewer backtest errors than this: no calibration, nominal normal multipliers


class ForecastError(ValueError):
    """Bad input to a forecaster (missing columns, wrong dtypes, predict before fit)."""


@dataclass(frozen=True)
class SeriesData:
    """One series on its regular grid: what a family's core sees.

    ``y`` has no NaN (gaps are interpolated); ``start`` and ``step`` are microseconds; ``season_lengths`` are
    the configured (or inferred) seasons in steps, :attr:`seasons` the ones with two full cycles in ``y``;
    ``regressors`` are extra columns on the same grid (families with ``supports_regressors`` only).
    """

    y: np.ndarray
    start: int
    step: int
    season_lengths: tuple[int, ...]
    regressors: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.y.size)

    @property
    def seasons(self) -> tuple[int, ...]:
        """Season lengths (steps, ascending) with at least two full cycles of history."""
        return tuple(m for m in self.season_lengths if self.y.size >= 2 * m)

    def times(self, first: int, count: int) -> np.ndarray:
        """Timestamps (``datetime64[us]``) of grid positions ``first .. first + count - 1``."""
        pos = np.arange(first, first + count, dtype=np.int64)
        return (self.start + pos * self.step).astype("datetime64[us]")

    def head(self, n: int) -> SeriesData:
        """The first ``n`` points (a backtest's training part)."""
        return replace(self, y=self.y[:n], regressors={k: v[:n] for k, v in self.regressors.items()})


@dataclass(frozen=True)
class SeriesFit:
    """What a family learned about one series.

    ``model`` names the fitted model for the output's ``model`` column; ``params`` is the family's own
    (picklable) state; ``fitted`` holds the in-sample one-step-ahead predictions on the training grid (NaN
    where the model has none, e.g. the first season of a seasonal naive).
    """

    model: str
    params: Any
    fitted: np.ndarray


@dataclass(frozen=True)
class SeriesState:
    """Everything :class:`Forecaster` keeps per series after ``fit``."""

    data: SeriesData
    fit: SeriesFit
    #: multipliers of the forecast scale for the 80 % and 95 % intervals
    multipliers: tuple[float, float]
    #: ``"backtest"`` (conformal on ``n_scores`` backtest errors) or ``"nominal"`` (too short to backtest)
    calibration: str
    n_scores: int
    lower: float
    upper: float
    #: the series was fitted by the seasonal naive fallback (constant, too short, or the family failed)
    fallback: bool = False
    #: why the fallback was used
    note: str = ""


def infer_season_lengths(step_us: int) -> tuple[int, ...]:
    """Daily and weekly cycles in steps of ``step_us`` microseconds (empty when they are not whole steps).

    Examples
    --------
    >>> infer_season_lengths(3_600_000_000), infer_season_lengths(300_000_000), infer_season_lengths(86_400_000_000)
    ((24, 168), (288, 2016), (7,))
    """
    if step_us <= 0 or step_us > _DAY_US:
        return ()
    if step_us == _DAY_US:
        return (7,)
    if _DAY_US % step_us:
        return ()
    per_day = _DAY_US // step_us
    return (per_day, 7 * per_day)


def conformal_multipliers(
    errors: np.ndarray, scales: np.ndarray, levels: Sequence[float] = LEVELS
) -> tuple[float, ...] | None:
    """Split-conformal multipliers: for each level, the finite-sample quantile of ``|errors| / scales``.

    ``None`` when there are fewer than 10 finite scores. Multipliers never decrease with the level.

    Examples
    --------
    >>> e = np.arange(1.0, 101.0)
    >>> conformal_multipliers(e, np.ones(100), (0.8, 0.95))
    (81.0, 96.0)
    """
    score = np.abs(np.asarray(errors, dtype=np.float64)) / np.asarray(scales, dtype=np.float64)
    score = score[np.isfinite(score)]
    n = score.size
    if n < _MIN_SCORES:
        return None
    score = np.sort(score)
    out = [float(score[min(n, math.ceil((n + 1) * lv)) - 1]) for lv in levels]
    return tuple(float(v) for v in np.maximum.accumulate(out))


def scale_floor(y: np.ndarray) -> float:
    """The smallest forecast scale used, so a perfectly fitted history cannot give 0/0 scores."""
    finite = y[np.isfinite(y)]
    return 1e-9 * (1.0 + (float(np.mean(np.abs(finite))) if finite.size else 0.0))


@dataclass(kw_only=True, eq=False)
class Forecaster:
    """Base of every forecaster; see the module docstring for what a family implements.

    Parameters
    ----------
    season_lengths
        Season lengths in steps (e.g. ``(24, 168)`` for hourly data); ``None`` infers the daily and weekly
        cycles from each series' step. Seasons with fewer than two cycles of history are ignored.
    lower_bound, upper_bound
        Forecasts and intervals are clipped to these (utilisation ``0..100``; counts ``>= 0``).
        ``lower_bound=None`` means 0 when the series' history has no negative value, else unbounded;
        pass ``float("-inf")`` for explicitly unbounded.
    backtest_origins
        Rolling origins of the calibration backtest (each refits on the history before it).
    backtest_horizon
        Steps forecast from each origin; ``None`` is two shortest seasons (48 for hourly data), or 12 steps
        without a season. Forecasts beyond it keep the calibrated multipliers and the model's own growth of
        ``scale`` with the horizon.
    n_jobs
        Worker processes for fitting and predicting many series (1 = in this process, -1 = one per core).
    seed
        The only source of randomness of any family.
    """

    #: registry name, set by each family
    name: ClassVar[str] = ""
    #: True when the family uses extra numeric columns of the frame as regressors (then predict needs them)
    supports_regressors: ClassVar[bool] = False

    season_lengths: tuple[int, ...] | None = None
    lower_bound: float | None = None
    upper_bound: float | None = None
    backtest_origins: int = 5
    backtest_horizon: int | None = None
    n_jobs: int = 1
    seed: int = 0

    # -- parameters --------------------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The constructor's keyword parameters and their values."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def clone(self) -> Self:
        """A new, unfitted forecaster with the same parameters."""
        return type(self)(**self.get_params())

    # -- the family's core -------------------------------------------------------------------------------
    def _fit_series(self, data: SeriesData) -> SeriesFit:
        raise NotImplementedError

    def _forecast_series(
        self, fit: SeriesFit, horizon: int, future: Mapping[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _min_length(self, seasons: tuple[int, ...]) -> int:
        """Fewest points the family needs; shorter series get the seasonal naive fallback."""
        return 2 * max(seasons, default=4)

    def _backtest(self, data: SeriesData, fit: SeriesFit) -> tuple[np.ndarray, np.ndarray]:
        """Errors and forecast scales ``(origins, horizon)`` of a rolling-origin backtest.

        Origins are ``n - k * horizon`` for ``k = 1 .. backtest_origins`` (non-overlapping windows ending at the
        last point); each refits on the history before the origin. Families that already backtest while
        fitting (:class:`~detectors.forecast_auto.AutoForecaster`) return what they measured.
        """
        h = self._backtest_horizon(data)
        errors, scales = [], []
        lo, hi = self._bounds(data.y)
        for k in range(1, self.backtest_origins + 1):
            origin = data.n - k * h
            head = data.head(origin)
            if origin < max(self._min_length(head.seasons), 2 * h):
                break
            fit_k = self._fit_series(head)
            future = {name: v[origin : origin + h] for name, v in data.regressors.items()}
            mean, scale = self._forecast_series(fit_k, h, future)
            errors.append(data.y[origin : origin + h] - np.clip(mean, lo, hi))
            scales.append(scale)
        return np.asarray(errors, dtype=np.float64).reshape(-1, h), np.asarray(scales, np.float64).reshape(
            -1, h
        )

    # -- helpers shared by families ----------------------------------------------------------------------
    def _backtest_horizon(self, data: SeriesData) -> int:
        if self.backtest_horizon is not None:
            return int(self.backtest_horizon)
        return 2 * min(data.season_lengths) if data.season_lengths else 12

    def _bounds(self, y: np.ndarray) -> tuple[float, float]:
        lower = self.lower_bound
        if lower is None:
            lower = 0.0 if y.size and float(np.nanmin(y)) >= 0 else -np.inf
        upper = np.inf if self.upper_bound is None else self.upper_bound
        return float(lower), float(upper)

    # -- per series (runs in worker processes when n_jobs > 1) -------------------------------------------
    def _series_state(self, data: SeriesData) -> SeriesState:
        note = ""
        if np.ptp(data.y) == 0:
            note = "constant series"
        elif data.n < self._min_length(data.seasons):
            note = f"{data.n} points, fewer than {self._min_length(data.seasons)}"
        else:
            try:
                fit = self._fit_series(data)
                errors, scales = self._backtest(data, fit)
                if not data.regressors:  # a forecast that cannot be made fails here, not at predict time
                    probe, _ = self._forecast_series(fit, self._backtest_horizon(data), {})
                    if not np.all(np.isfinite(probe)):
                        note = f"{fit.model} forecast is not finite"
            except (ValueError, ArithmeticError, RuntimeError, np.linalg.LinAlgError) as exc:
                # one odd series must not stop a fit over thousands; it gets the baseline, and says why
                note = f"{type(self).__name__} failed: {exc}"
        if note:
            core = _fallback(self)
            fit = core._fit_series(data)
            errors, scales = core._backtest(data, fit)
        mult = conformal_multipliers(errors, np.maximum(scales, scale_floor(data.y)))
        lower, upper = self._bounds(data.y)
        return SeriesState(
            data=data,
            fit=fit,
            multipliers=(mult[0], mult[1]) if mult else _NORMAL_Z,
            calibration="backtest" if mult else "nominal",
            n_scores=int(errors.size),
            lower=lower,
            upper=upper,
            fallback=bool(note),
            note=note,
        )

    def _series_forecast(
        self, state: SeriesState, horizon: int, future: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        core = _fallback(self) if state.fallback else self
        mean, scale = core._forecast_series(state.fit, horizon, future)
        mean = np.asarray(mean, dtype=np.float64)
        scale = np.maximum(
            np.nan_to_num(np.asarray(scale, dtype=np.float64), nan=0.0), scale_floor(state.data.y)
        )
        if mean.shape != (horizon,) or scale.shape != (horizon,):
            raise AssertionError(
                f"{type(core).__name__} returned {mean.shape}/{scale.shape} for horizon {horizon}"
            )
        if not np.all(np.isfinite(mean)):
            raise AssertionError(f"{type(core).__name__} returned a non-finite forecast ({state.fit.model})")
        lo, hi = state.lower, state.upper
        out = {"yhat": np.clip(mean, lo, hi)}
        for (lo_name, hi_name), mult in zip(
            (("lo80", "hi80"), ("lo95", "hi95")), state.multipliers, strict=True
        ):
            out[lo_name] = np.clip(mean - mult * scale, lo, hi)
            out[hi_name] = np.clip(mean + mult * scale, lo, hi)
        return out

    # -- the contract ------------------------------------------------------------------------------------
    def fit(self, frame: pl.DataFrame) -> Self:
        """Learn every series of ``frame`` (``series_id, ts, value`` and, for families that use them, extra
        numeric regressor columns); returns ``self``. ``frame`` is not modified.

        Series without a single finite value are left out.
        """
        ids, datas = [], []
        for sid, data in self._series_data(frame):
            ids.append(sid)
            datas.append(data)
        states = _map(self, "_series_state", [(d,) for d in datas])
        self.series_dtype_: PolarsDataType = _series_id_type(frame.schema["series_id"])
        self.states_: dict[Any, SeriesState] = dict(zip(ids, states, strict=True))
        return self

    def predict(self, horizon: int, future: pl.DataFrame | None = None) -> pl.DataFrame:
        """Forecast ``horizon`` steps past each series' last point: a :data:`FORECASTS` frame.

        ``future`` (``series_id, ts`` and the regressor columns) is needed only when the family uses
        regressors and they were present at fit time. The forecaster is not modified.
        """
        states = self._fitted_states()
        if horizon < 1:
            raise ForecastError(f"horizon must be at least 1, got {horizon}")
        items = [
            (st, int(horizon), self._future_regressors(sid, st, horizon, future))
            for sid, st in states.items()
        ]
        outs = _map(self, "_series_forecast", items)
        schema = {**FORECASTS, "series_id": self.series_dtype_}
        if not states:
            return pl.DataFrame(schema=schema)
        rows = np.repeat(np.arange(len(states)), horizon)
        sts = list(states.values())
        return pl.DataFrame(
            {
                "series_id": pl.Series(list(states), dtype=self.series_dtype_).gather(rows),
                "ts": np.concatenate([st.data.times(st.data.n, horizon) for st in sts]),
                **{k: np.concatenate([o[k] for o in outs]) for k in ("yhat", "lo80", "hi80", "lo95", "hi95")},
                "model": pl.Series([st.fit.model for st in sts], dtype=pl.Utf8).gather(rows),
            }
        ).cast(pl.Schema(schema))

    def fitted(self) -> pl.DataFrame:
        """In-sample one-step-ahead predictions on each series' training grid: a :data:`FITTED` frame.

        ``value`` is the training value on the grid (gaps interpolated), ``yhat`` the model's prediction of
        it from earlier points (null where the model has none), ``scale`` the robust spread of the one-step
        residuals (see :meth:`one_step`). Lets a residual detector compose any forecaster.
        """
        parts = []
        for sid in self._fitted_states():
            yhat, scale = self.one_step(sid)
            st = self.states_[sid]
            parts.append(
                pl.DataFrame(
                    {
                        "series_id": pl.Series([sid] * st.data.n, dtype=self.series_dtype_),
                        "ts": st.data.times(0, st.data.n),
                        "value": st.data.y,
                        "yhat": yhat,
                        "scale": scale,
                    }
                )
            )
        schema = {**FITTED, "series_id": self.series_dtype_}
        if not parts:
            return pl.DataFrame(schema=schema)
        return pl.concat(parts).with_columns(pl.col("yhat").fill_nan(None)).cast(pl.Schema(schema))

    def one_step(self, series_id: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(yhat, scale)`` of one series on its training grid.

        ``yhat[t]`` predicts ``y[t]`` from ``y[:t]`` (NaN where the model has no prediction); ``scale`` is
        constant, 1.4826 times the median absolute one-step residual (a robust standard deviation), floored
        so it is never 0. ``(y - yhat) / scale`` is then a z-like residual score.
        """
        st = self._fitted_states().get(series_id)
        if st is None:
            raise ForecastError(f"series {series_id!r} was not fitted")
        yhat = np.asarray(st.fit.fitted, dtype=np.float64)
        resid = st.data.y - yhat
        resid = resid[np.isfinite(resid)]
        mad = 1.4826 * float(np.median(np.abs(resid - np.median(resid)))) if resid.size else 0.0
        if mad == 0.0 and resid.size:
            mad = float(np.std(resid))
        return yhat, np.full(st.data.n, max(mad, scale_floor(st.data.y)))

    # -- frame handling ----------------------------------------------------------------------------------
    def _fitted_states(self) -> dict[Any, SeriesState]:
        states = getattr(self, "states_", None)
        if states is None:
            raise ForecastError(f"{type(self).__name__} is not fitted; call fit(frame) first")
        return states

    def _series_data(self, frame: pl.DataFrame) -> Iterator[tuple[Any, SeriesData]]:
        """``(series_id, SeriesData)`` per series, sorted by id; reads ``frame`` without modifying it."""
        missing = [c for c in ("series_id", "ts", "value") if c not in frame.columns]
        if missing:
            raise ForecastError(f"frame lacks column(s) {missing}; expected series_id, ts, value")
        ts_type = frame.schema["ts"]
        sid_type = _series_id_type(frame.schema["series_id"])
        if not isinstance(ts_type, pl.Datetime):
            raise ForecastError(f"ts must be a datetime, got {ts_type}")
        ts = pl.col("ts")
        if ts_type.time_zone is not None:
            ts = ts.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        regressors = self._regressor_columns(frame) if self.supports_regressors else []
        df = frame.select(
            pl.col("series_id").cast(sid_type),
            ts.cast(TS).dt.epoch("us").alias("t"),
            pl.col("value").cast(pl.Float64).fill_null(np.nan),
            *[pl.col(c).cast(pl.Float64).fill_null(np.nan) for c in regressors],
        )
        if df["series_id"].null_count() or df["t"].null_count():
            raise ForecastError("frame has null series_id or ts")
        df = df.sort("series_id", "t")
        if df.height == 0:
            return
        sizes = df.group_by("series_id", maintain_order=True).len()
        t_all = df["t"].to_numpy()
        v_all = df["value"].to_numpy()
        r_all = {c: df[c].to_numpy() for c in regressors}
        steps = {}
        offsets = np.r_[0, np.cumsum(sizes["len"].to_numpy())]
        for i in range(sizes.height):
            t = np.unique(t_all[offsets[i] : offsets[i + 1]])
            if t.size > 1:
                steps[i] = int(np.median(np.diff(t)))
        default_step = int(np.median(list(steps.values()))) if steps else 3_600_000_000
        for i, sid in enumerate(sizes["series_id"].to_list()):
            a, b = offsets[i], offsets[i + 1]
            step = steps.get(i, default_step)
            grid = _regular_grid(
                t_all[a:b], {"value": v_all[a:b], **{c: r[a:b] for c, r in r_all.items()}}, step
            )
            if grid is None:
                continue
            start, cols = grid
            seasons = self.season_lengths if self.season_lengths is not None else infer_season_lengths(step)
            yield (
                sid,
                SeriesData(
                    y=cols.pop("value"),
                    start=start,
                    step=step,
                    season_lengths=tuple(sorted({int(m) for m in seasons if int(m) > 1})),
                    regressors=cols,
                ),
            )

    @staticmethod
    def _regressor_columns(frame: pl.DataFrame) -> list[str]:
        return [
            c for c, t in frame.schema.items() if c not in ("series_id", "ts", "value") and t.is_numeric()
        ]

    def _future_regressors(
        self, sid: Any, state: SeriesState, horizon: int, future: pl.DataFrame | None
    ) -> dict[str, np.ndarray]:
        names = list(state.data.regressors)
        if not names:
            return {}
        if future is None:
            raise ForecastError(
                f"series {sid!r} was fitted with regressors {names}: predict needs `future` values"
            )
        missing = [c for c in ("series_id", "ts", *names) if c not in future.columns]
        if missing:
            raise ForecastError(f"future frame lacks column(s) {missing}")
        rows = future.filter(pl.col("series_id") == sid).select(
            pl.col("ts").cast(TS).dt.epoch("us").alias("t"), *[pl.col(c).cast(pl.Float64) for c in names]
        )
        want = state.data.start + (state.data.n + np.arange(horizon, dtype=np.int64)) * state.data.step
        found = dict(zip(rows["t"].to_list(), range(rows.height), strict=True))
        idx = [found.get(int(t)) for t in want]
        if any(i is None for i in idx):
            raise ForecastError(
                f"future frame lacks regressor rows of series {sid!r} for the {horizon} steps"
            )
        return {c: rows[c].to_numpy()[np.asarray(idx)] for c in names}


def _series_id_type(dtype: PolarsDataType) -> PolarsDataType:
    """Int64 for any integer id, Utf8 for string ids (kept as given); anything else is an error."""
    if dtype.is_integer():
        return pl.Int64
    if dtype == pl.Utf8:
        return pl.Utf8
    raise ForecastError(f"series_id must be an integer or a string, got {dtype}")


def _regular_grid(
    t: np.ndarray, columns: dict[str, np.ndarray], step: int
) -> tuple[int, dict[str, np.ndarray]] | None:
    """Put one series on the grid ``t[0] + k * step``: duplicates averaged, gaps interpolated linearly.

    History before a gap of more than 1,000 steps is dropped (nothing sensible interpolates across it).
    ``None`` when ``value`` has no finite point.
    """
    v = columns["value"]
    ok = np.isfinite(v)
    if not ok.any():
        return None
    t, columns = t[ok], {k: c[ok] for k, c in columns.items()}
    pos = np.rint((t - t[0]) / step).astype(np.int64)
    gaps = np.flatnonzero(np.diff(pos) > 1000)
    if gaps.size:
        keep = slice(gaps[-1] + 1, None)
        t, pos, columns = t[keep], pos[keep] - pos[keep][0], {k: c[keep] for k, c in columns.items()}
    n = int(pos[-1]) + 1
    out = {}
    for name, c in columns.items():
        good = np.isfinite(c)
        cnt = np.bincount(pos[good], minlength=n).astype(np.float64)
        tot = np.bincount(pos[good], weights=c[good], minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            g = tot / cnt
        have = cnt > 0
        if not have.all():
            g = np.interp(np.arange(n), np.flatnonzero(have), g[have]) if have.any() else np.zeros(n)
        out[name] = g
    return int(t[0]), out


def _fallback(forecaster: Forecaster) -> Forecaster:
    """The seasonal naive core with ``forecaster``'s common parameters (imported late: it subclasses us)."""
    from detectors.forecast_naive import SeasonalNaive

    return SeasonalNaive(
        season_lengths=forecaster.season_lengths,
        lower_bound=forecaster.lower_bound,
        upper_bound=forecaster.upper_bound,
        backtest_origins=forecaster.backtest_origins,
        backtest_horizon=forecaster.backtest_horizon,
        seed=forecaster.seed,
    )


# -- parallelism ---------------------------------------------------------------------------------------------
def _load_blas() -> bool:
    try:
        import scipy.linalg  # noqa: F401  (loads SciPy's own OpenBLAS so a limit reaches it too)
        import threadpoolctl  # noqa: F401
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return False
    return True


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """One BLAS thread while fitting many small series in this process.

    Per-series fits are tiny; OpenBLAS threads spinning against each other made statsmodels fits ~4x slower
    here (ENVIRONMENT.md). SciPy ships its own OpenBLAS beside NumPy's; both are limited.
    """
    if not _load_blas():  # pragma: no cover
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def limit_blas_threads(parent: int | None = None) -> None:
    """One BLAS thread for the rest of this (worker) process; a process pool's initializer. With ``parent``
    (the pid that started the pool), the worker also ends once that process is gone (:func:`exit_with_parent`):
    an evaluation killed with SIGKILL does not leave its forecasting workers behind."""
    if parent is not None:
        exit_with_parent(parent)
    if _load_blas():
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")


def _run_chunk(forecaster: Forecaster, method: str, items: list[tuple[Any, ...]]) -> list[Any]:
    call = getattr(forecaster, method)
    return [call(*item) for item in items]


def _map(forecaster: Forecaster, method: str, items: list[tuple[Any, ...]]) -> list[Any]:
    """``forecaster.<method>(*item)`` for every item, in ``n_jobs`` processes when that is worth it.

    Workers get a parameter-only clone (never the fitted states of other series) and are started with
    ``spawn``: forking a process that runs polars' thread pool can deadlock.
    """
    jobs = (os.cpu_count() or 1) if forecaster.n_jobs == -1 else max(1, int(forecaster.n_jobs))
    if jobs == 1 or len(items) < 2:
        with single_threaded_blas():
            return _run_chunk(forecaster, method, items)
    n_chunks = min(len(items), 4 * jobs)
    bounds = np.linspace(0, len(items), n_chunks + 1).astype(int)
    chunks = [items[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    clone = forecaster.clone()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(jobs, n_chunks),
        mp_context=ctx,
        initializer=limit_blas_threads,
        initargs=(os.getpid(),),
    ) as ex:
        results = ex.map(_run_chunk, [clone] * len(chunks), [method] * len(chunks), chunks)
        return [r for chunk in results for r in chunk]
