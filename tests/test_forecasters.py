"""Forecasters: one conformance suite over every registered family, quality floors on series with known
truth, calibrated coverage, and M4 Hourly (a subset here; the full table: ``python -m detectors.m4``)."""

from __future__ import annotations

import doctest
import importlib
import pickle
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from detectors.forecast_base import FITTED, FORECASTS, ForecastError, conformal_multipliers
from detectors.forecast_registry import FORECASTERS, UnknownForecasterError, make_forecaster
from detectors.m4 import evaluate_m4, load_m4_hourly, mase, naive2, smape

HOUR = timedelta(hours=1)
START = datetime(2026, 3, 2)


def hourly_frame(values: dict[object, np.ndarray], start: datetime = START) -> pl.DataFrame:
    parts = [
        pl.DataFrame(
            {
                "series_id": [sid] * y.size,
                "ts": pl.datetime_range(start, start + (y.size - 1) * HOUR, "1h", eager=True),
                "value": y,
            }
        )
        for sid, y in values.items()
    ]
    frame = pl.concat(parts)
    return frame.with_columns(
        pl.col("series_id").cast(pl.Int64 if isinstance(next(iter(values)), int) else pl.Utf8)
    )


def seasonal_series(n: int, rng: np.random.Generator, level: float = 50.0, trend: float = 0.0) -> np.ndarray:
    i = np.arange(n)
    shape = np.sin(2 * np.pi * i / 24) + 0.3 * np.sin(4 * np.pi * i / 24) + 0.2 * (i % 168 < 120)
    return level * (1 + 0.3 * shape) + trend * i + rng.normal(0, 0.03 * level, n)


def conformance_frame() -> pl.DataFrame:
    """Two series, 12 days hourly: one with gaps (missing rows and NaN), one utilisation near 100 %."""
    rng = np.random.default_rng(0)
    a = seasonal_series(288, rng)
    b = np.clip(85 + 12 * np.sin(2 * np.pi * np.arange(288) / 24) + rng.normal(0, 2, 288), 0, 100)
    frame = hourly_frame({1: a, 2: b})
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) % 97 == 5).then(float("nan")).otherwise(pl.col("value")).alias("value")
    )
    return frame.filter(pl.int_range(pl.len()) % 61 != 7)  # a few missing timestamps


# -- conformance: every registered forecaster --------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FORECASTERS))
def test_conformance(name: str) -> None:
    frame = conformance_frame()
    before = frame.clone()
    params = {"lower_bound": 0.0, "upper_bound": 100.0, "seed": 3}
    if name == "prophet":
        params["backtest_origins"] = 2  # Prophet is slow; two origins still calibrate
    f = make_forecaster(name, **params)
    assert f.fit(frame) is f
    assert frame.equals(before), "fit modified its input"
    out = f.predict(30)

    assert out.schema == pl.Schema(FORECASTS)
    assert out.height == 2 * 30
    assert out.group_by("series_id").len().sort("series_id")["len"].to_list() == [30, 30]
    for sid, g in out.group_by("series_id"):
        last = frame.filter(pl.col("series_id") == sid[0])["ts"].max()
        expected = pl.datetime_range(last + HOUR, last + 30 * HOUR, "1h", eager=True)
        assert g["ts"].to_list() == expected.to_list(), "future timestamps must continue the hourly grid"
    values = out.select("lo95", "lo80", "yhat", "hi80", "hi95").to_numpy()
    assert np.isfinite(values).all()
    assert (np.diff(values, axis=1) >= -1e-9).all(), "lo95 <= lo80 <= yhat <= hi80 <= hi95"
    assert values.min() >= 0.0 and values.max() <= 100.0, "bounds must hold"
    assert out["model"].null_count() == 0

    # determinism by seed, and a pickled forecaster predicts the same
    again = make_forecaster(name, **params).fit(frame).predict(30)
    assert again.equals(out)
    clone = pickle.loads(pickle.dumps(f))
    assert clone.predict(30).equals(out)
    # predict does not change the forecaster
    assert f.predict(30).equals(out)

    fitted = f.fitted()
    assert fitted.schema == pl.Schema(FITTED)
    yhat, scale = f.one_step(1)
    assert yhat.shape == scale.shape == (fitted.filter(pl.col("series_id") == 1).height,)
    assert (scale > 0).all()


def test_string_ids_keep_their_dtype_and_ints_become_int64() -> None:
    rng = np.random.default_rng(1)
    frame = hourly_frame({"api/latency": seasonal_series(240, rng), "gpu/util": seasonal_series(240, rng)})
    out = make_forecaster("auto").fit(frame).predict(5)
    assert out.schema["series_id"] == pl.Utf8
    assert sorted(out["series_id"].unique().to_list()) == ["api/latency", "gpu/util"]
    int32 = frame.with_columns(pl.col("series_id").rank("dense").cast(pl.Int32))
    assert make_forecaster("naive").fit(int32).predict(5).schema["series_id"] == pl.Int64


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ForecastError, match="lacks column"):
        make_forecaster("naive").fit(pl.DataFrame({"series_id": [1], "value": [1.0]}))
    with pytest.raises(ForecastError, match="not fitted"):
        make_forecaster("naive").predict(3)
    with pytest.raises(UnknownForecasterError, match="registered: arima, auto"):
        make_forecaster("nope")


def test_constant_short_and_empty_series() -> None:
    frame = pl.concat(
        [
            hourly_frame({1: np.full(200, 7.0)}),
            hourly_frame({2: np.array([3.0, 4.0, 5.0, 4.0, 3.0])}),
            hourly_frame({3: np.full(10, np.nan)}),
        ]
    )
    f = make_forecaster("auto").fit(frame)
    out = f.predict(24)
    assert sorted(out["series_id"].unique().to_list()) == [1, 2], "a series without values is left out"
    const = out.filter(pl.col("series_id") == 1)
    assert np.allclose(const.select("lo95", "yhat", "hi95").to_numpy(), 7.0)
    short = out.filter(pl.col("series_id") == 2)
    assert np.isfinite(short.select("lo95", "hi95").to_numpy()).all()
    assert "naive" in f.states_[2].fit.model and f.states_[2].calibration == "nominal"
    arima = make_forecaster("arima").fit(frame)
    assert arima.states_[2].fallback and arima.states_[1].note == "constant series"


def test_gaps_are_interpolated_on_the_median_step() -> None:
    rng = np.random.default_rng(2)
    y = seasonal_series(24 * 14, rng)
    frame = hourly_frame({1: y}).filter(~pl.int_range(pl.len()).is_between(100, 105))
    f = make_forecaster("arima").fit(frame)
    grid = f.fitted()
    assert grid.height == y.size and grid["ts"].diff().drop_nulls().unique().to_list() == [HOUR]
    assert np.allclose(grid["value"].to_numpy()[[99, 106]], y[[99, 106]])


def test_nonnegative_history_gives_nonnegative_forecasts_and_bounds_can_be_lifted() -> None:
    y = np.maximum(0.0, 40 - 0.15 * np.arange(300)) + 2 * np.sin(2 * np.pi * np.arange(300) / 24) + 2
    frame = hourly_frame({1: y})
    out = make_forecaster("arima", transform="none").fit(frame).predict(72)
    assert out["lo95"].min() >= 0.0
    free = make_forecaster("arima", transform="none", lower_bound=float("-inf")).fit(frame).predict(72)
    assert free["lo95"].min() < 0.0


def test_auto_records_its_choice() -> None:
    rng = np.random.default_rng(3)
    frame = hourly_frame({1: seasonal_series(24 * 30, rng), 2: seasonal_series(24 * 30, rng, trend=0.05)})
    f = make_forecaster("auto").fit(frame)
    choice = f.choice_
    assert choice.columns == ["series_id", "model", "mase", "chosen"]
    assert choice.group_by("series_id").agg(pl.col("chosen").sum())["chosen"].to_list() == [1, 1]
    assert choice.filter(~pl.col("chosen")).height >= 2 * 4, "every candidate is scored per series"
    chosen = choice.filter("chosen").sort("series_id")
    predicted = f.predict(3).group_by("series_id").agg(pl.col("model").first()).sort("series_id")
    assert [m.split(": ", 1)[1] for m in chosen["model"]] == predicted["model"].to_list()


def test_long_horizon_beyond_the_backtest_widens_intervals() -> None:
    rng = np.random.default_rng(4)
    out = make_forecaster("auto").fit(hourly_frame({1: seasonal_series(24 * 30, rng)})).predict(24 * 14)
    width = (out["hi95"] - out["lo95"]).to_numpy()
    assert width[-24:].mean() > width[:24].mean()


def test_conformal_multipliers_follow_the_finite_sample_rank() -> None:
    assert conformal_multipliers(np.arange(1.0, 101.0), np.full(100, 2.0), (0.5, 0.9)) == (25.5, 45.5)
    assert conformal_multipliers(np.ones(5), np.ones(5)) is None


# -- quality floors on series with known truth ---------------------------------------------------------------
def test_auto_beats_seasonal_naive_on_a_trending_daily_series() -> None:
    rng = np.random.default_rng(5)
    n, h = 24 * 35, 48
    i = np.arange(n + h)
    truth = 200 + 0.4 * i + 40 * np.sin(2 * np.pi * i / 24)
    y = truth + rng.normal(0, 4, n + h)
    frame = hourly_frame({1: y[:n]})
    auto = make_forecaster("auto").fit(frame).predict(h)["yhat"].to_numpy()
    naive = make_forecaster("naive").fit(frame).predict(h)["yhat"].to_numpy()
    assert mase(y[n:], auto, y[:n]) < 1.0
    assert mase(y[n:], auto, y[:n]) < 0.8 * mase(y[n:], naive, y[:n])
    assert np.abs(auto - truth[n:]).mean() < 4.0, "the mean forecast tracks the known truth"


@pytest.mark.parametrize("name", ["naive", "arima", "auto"])
def test_interval_coverage_on_many_synthetic_series(name: str) -> None:
    rng = np.random.default_rng(6)
    n, h, count = 24 * 28, 48, 40
    series, future = {}, {}
    for k in range(count):
        i = np.arange(n + h)
        noise = np.zeros(n + h)
        e = rng.standard_t(5, n + h) * rng.uniform(1, 5)
        for t in range(1, n + h):  # AR(1) noise: errors persist for hours, like real load
            noise[t] = 0.6 * noise[t - 1] + e[t]
        y = rng.uniform(100, 500) * (1 + 0.3 * np.sin(2 * np.pi * i / 24)) + noise
        series[k], future[k] = y[:n], y[n:]
    out = make_forecaster(name).fit(hourly_frame(series)).predict(h).sort("series_id", "ts")
    actual = np.concatenate([future[k] for k in range(count)])
    cover95 = np.mean((actual >= out["lo95"].to_numpy()) & (actual <= out["hi95"].to_numpy()))
    cover80 = np.mean((actual >= out["lo80"].to_numpy()) & (actual <= out["hi80"].to_numpy()))
    assert 0.85 <= cover95 <= 1.0
    assert 0.65 <= cover80 <= 0.95


# -- M4 Hourly ----------------------------------------------------------------------------------------------
def test_naive2_reproduces_the_published_m4_hourly_benchmark(shared_data) -> None:
    _, train, test = load_m4_hourly(shared_data)
    assert len(train) == 414 and all(v.size == 48 for v in test.values())
    s = np.mean([smape(test[i], naive2(train[i])) for i in train])
    m = np.mean([mase(test[i], naive2(train[i]), train[i]) for i in train])
    # Makridakis et al. (2020), table 4: Naive2 on the hourly series, sMAPE 18.383, MASE 2.395
    assert s == pytest.approx(18.383, abs=0.001)
    assert m == pytest.approx(2.395, abs=0.001)


@pytest.mark.slow
def test_auto_beats_seasonal_naive_on_an_m4_subset(shared_data) -> None:
    result = evaluate_m4(shared_data, ["naive", "auto"], limit=20, progress=False, n_jobs=1)
    table = result["forecasters"]
    assert result["series"] == 20
    assert set(table["auto"]) == {"smape", "mase", "owa", "coverage80", "coverage95", "msis", "seconds"}
    assert table["auto"]["mase"] < table["naive"]["mase"]
    assert table["auto"]["owa"] < table["naive"]["owa"] < 1.5
    assert 0.85 <= table["auto"]["coverage95"] <= 1.0


# -- composition, regressors, parallelism, docs ------------------------------------------------------------
@pytest.mark.slow
def test_prophet_uses_regressors_and_needs_their_future() -> None:
    rng = np.random.default_rng(7)
    n = 24 * 10
    promo = (rng.uniform(size=n + 24) < 0.1).astype(float)
    y = 30 + 5 * np.sin(2 * np.pi * np.arange(n + 24) / 24) + 20 * promo + rng.normal(0, 0.5, n + 24)
    frame = hourly_frame({1: y[:n]}).with_columns(promo=pl.Series(promo[:n]))
    f = make_forecaster("prophet", backtest_origins=1).fit(frame)
    with pytest.raises(ForecastError, match="needs `future`"):
        f.predict(24)
    last = frame["ts"].max()
    future = pl.DataFrame(
        {
            "series_id": [1] * 24,
            "ts": pl.datetime_range(last + HOUR, last + 24 * HOUR, "1h", eager=True),
            "promo": promo[n:],
        }
    )
    out = f.predict(24, future=future)
    lift = out["yhat"].to_numpy()[promo[n:] == 1].mean() - out["yhat"].to_numpy()[promo[n:] == 0].mean()
    assert lift > 10, "the regressor's effect shows in the forecast"


@pytest.mark.slow
def test_worker_processes_give_the_same_forecasts() -> None:
    rng = np.random.default_rng(8)
    frame = hourly_frame({k: seasonal_series(24 * 20, rng) for k in range(6)})
    serial = make_forecaster("auto").fit(frame).predict(24)
    parallel = make_forecaster("auto", n_jobs=2).fit(frame).predict(24)
    assert parallel.equals(serial)


@pytest.mark.parametrize(
    "module",
    [
        "detectors.forecast_base",
        "detectors.forecast_naive",
        "detectors.forecast_arima",
        "detectors.forecast_ets",
        "detectors.forecast_mstl",
        "detectors.forecast_prophet",
        "detectors.forecast_auto",
        "detectors.forecast_registry",
        "detectors.m4",
    ],
)
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
