"""M4 Hourly evaluation: sMAPE, MASE, OWA, MSIS and interval coverage, as the M4 competition defines them.

Data: the 414 hourly series of M4 (Makridakis, Spiliotis & Assimakopoulos, *The M4 Competition: 100,000
time series and 61 forecasting methods*, IJF 36(1), 2020), horizon 48, seasonality 24. Definitions follow the
organisers' R code (``Mcompetitions/M4-methods``, ``Benchmarks and Evaluation.R``):

* sMAPE ``= mean(200 |y - f| / (|y| + |f|))``;
* MASE ``= mean|y - f| / mean|x_t - x_{t-24}|`` over the in-sample ``x``;
* OWA ``= (sMAPE / sMAPE_Naive2 + MASE / MASE_Naive2) / 2`` on the means over all series, where Naive2 is
  the naive forecast of the seasonally adjusted series (classical multiplicative decomposition, applied when
  the 90 % autocorrelation test at lag 24 finds seasonality);
* MSIS (``alpha = 0.05``) ``= mean((U - L) + 40 (L - y) 1{y < L} + 40 (y - U) 1{y > U}) / mean|x_t - x_{t-24}|``.

The series have no timestamps in M4; :func:`load_m4_hourly` puts them on an hourly grid starting
:data:`M4_START` (only relative positions matter to every model here; Prophet sees an arbitrary weekday phase).
Forecasters see only the training part.

Measured with ``python -m detectors.m4`` (all 414 series, 2 worker processes on a shared 2-core machine,
default parameters; Naive2 reproduces the published 18.383 / 2.395):

============  =======  =====  =====  =====  =====  =====  =======
forecaster    sMAPE    MASE   OWA    cov80  cov95  MSIS   seconds
============  =======  =====  =====  =====  =====  =====  =======
naive         13.91    1.193  0.628  0.808  0.940   7.65      1.4
mstl          12.47    1.189  0.587  0.822  0.948  10.65    300
ets           17.17    1.651  0.812  0.810  0.940  13.21    148
arima         11.70    0.891  0.504  0.783  0.934   6.99      5.4
prophet       18.06    1.625  0.830  0.801  0.943  10.11    244
auto           9.37    0.764  0.414  0.792  0.939   6.19     18.7
============  =======  =====  =====  =====  =====  =====  =======
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from detectors.forecast_base import limit_blas_threads

HORIZON = 48
SEASON = 24
M4_START = datetime(2017, 1, 1)


def _m4_folder(root: str | Path) -> Path:
    path = Path(root)
    return path / "M4" if (path / "M4" / "Hourly-train.csv").exists() else path


def _read_wide(path: Path) -> dict[str, np.ndarray]:
    wide = pl.read_csv(path, infer_schema_length=0)
    ids = wide[wide.columns[0]].to_list()
    values = wide.drop(wide.columns[0]).cast(pl.Float64).to_numpy()
    return {sid: row[np.isfinite(row)] for sid, row in zip(ids, values, strict=True)}


def load_m4_hourly(
    root: str | Path, limit: int | None = None
) -> tuple[pl.DataFrame, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """M4 Hourly as ``(train frame, train arrays, test arrays)``.

    ``root`` is the folder with ``Hourly-train.csv`` and ``Hourly-test.csv`` (or its parent). The frame is
    long (``series_id`` Utf8 ``"H1"..``, ``ts``, ``value``); the arrays map each id to its in-sample values
    (for the MASE scale) and its 48 test values.

    ``limit`` takes an evenly spaced sample of that many series: the file lists the series by source, so its
    first 20 are one homogeneous block (on which seasonal naive happens to beat every model here), not a
    sample of M4 Hourly.
    """
    folder = _m4_folder(root)
    train = _read_wide(folder / "Hourly-train.csv")
    test = _read_wide(folder / "Hourly-test.csv")
    ids = list(train)
    if limit is not None and limit < len(ids):
        ids = [ids[i] for i in (np.arange(limit) * len(ids)) // limit]
    start = int(np.datetime64(M4_START, "us").astype(np.int64))
    hour = 3_600_000_000
    frame = pl.DataFrame(
        {
            "series_id": np.repeat(np.asarray(ids, dtype=object), [train[i].size for i in ids]).tolist(),
            "ts": np.concatenate(
                [start + np.arange(train[i].size, dtype=np.int64) * hour for i in ids]
            ).astype("datetime64[us]"),
            "value": np.concatenate([train[i] for i in ids]),
        },
        schema={"series_id": pl.Utf8, "ts": pl.Datetime("us"), "value": pl.Float64},
    )
    return frame, {i: train[i] for i in ids}, {i: test[i] for i in ids}


# -- metrics (one series; the M4 score of a method is the mean over series) ----------------------------------
def smape(actual: np.ndarray, forecast: np.ndarray) -> float:
    """Symmetric MAPE in percent (M4 definition).

    Examples
    --------
    >>> round(smape(np.array([100.0, 100.0]), np.array([110.0, 90.0])), 4)
    10.0251
    """
    a, f = np.asarray(actual, float), np.asarray(forecast, float)
    return float(np.mean(200.0 * np.abs(a - f) / (np.abs(a) + np.abs(f))))


def seasonal_scale(insample: np.ndarray, m: int = SEASON) -> float:
    """Mean absolute seasonal difference of the in-sample data: the MASE and MSIS denominator."""
    x = np.asarray(insample, float)
    return float(np.mean(np.abs(x[m:] - x[:-m])))


def mase(actual: np.ndarray, forecast: np.ndarray, insample: np.ndarray, m: int = SEASON) -> float:
    """Mean absolute scaled error against the in-sample seasonal naive (M4 definition, ``m = 24``).

    Examples
    --------
    >>> x = np.tile([0.0, 2.0], 30)
    >>> mase(np.array([1.0, 1.0]), np.array([2.0, 0.0]), x + np.arange(60), m=2)
    0.5
    """
    a, f = np.asarray(actual, float), np.asarray(forecast, float)
    return float(np.mean(np.abs(a - f)) / seasonal_scale(insample, m))


def msis(
    actual: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    insample: np.ndarray,
    m: int = SEASON,
    alpha: float = 0.05,
) -> float:
    """Mean scaled interval score of a ``1 - alpha`` interval (M4 definition).

    Examples
    --------
    >>> x = np.tile([0.0, 2.0], 30) + np.arange(60)
    >>> msis(np.array([1.0, 5.0]), np.array([0.0, 0.0]), np.array([2.0, 4.0]), x, m=2)
    11.5
    """
    a, lo, hi = (np.asarray(v, float) for v in (actual, lower, upper))
    penalty = (2.0 / alpha) * ((lo - a) * (a < lo) + (a - hi) * (a > hi))
    return float(np.mean(hi - lo + penalty) / seasonal_scale(insample, m))


def coverage(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Share of actual values inside ``[lower, upper]``."""
    a = np.asarray(actual, float)
    return float(np.mean((a >= lower) & (a <= upper)))


def seasonality_test(insample: np.ndarray, m: int = SEASON) -> bool:
    """M4's 90 % autocorrelation test: is ``|acf(m)|`` above ``1.645 sqrt((1 + 2 sum_{k<m} acf(k)^2) / n)``?

    Series shorter than three seasons are never seasonal (as in the M4 code).
    """
    x = np.asarray(insample, float)
    n = x.size
    if n < 3 * m:
        return False
    d = x - x.mean()
    denom = float(np.sum(d * d))
    if denom == 0.0:
        return False
    acf = np.array([np.sum(d[: n - k] * d[k:]) / denom for k in range(1, m + 1)])
    limit = 1.645 / np.sqrt(n) * np.sqrt(1.0 + 2.0 * np.sum(acf[: m - 1] ** 2))
    return bool(abs(acf[m - 1]) > limit)


def classical_multiplicative_seasonal(insample: np.ndarray, m: int = SEASON) -> np.ndarray:
    """Seasonal indices of R's ``decompose(type = "multiplicative")``, one per in-sample point.

    Centred moving average trend (``2 x m`` for even ``m``), the mean of ``x / trend`` per position in the
    season, normalised to mean 1.
    """
    x = np.asarray(insample, float)
    n = x.size
    weights = np.r_[0.5, np.ones(m - 1), 0.5] / m if m % 2 == 0 else np.ones(m) / m
    half = weights.size // 2
    trend = np.full(n, np.nan)
    trend[half : n - half] = np.convolve(x, weights, mode="valid")
    ratio = x / trend
    figure = np.array([np.nanmean(ratio[p::m]) for p in range(m)])
    figure = figure / figure.mean()
    return figure[np.arange(n) % m]


def naive2(insample: np.ndarray, horizon: int = HORIZON, m: int = SEASON) -> np.ndarray:
    """M4's Naive2: the last seasonally adjusted value, re-seasonalised (no adjustment when not seasonal)."""
    x = np.asarray(insample, float)
    if not seasonality_test(x, m):
        return np.full(horizon, x[-1])
    seasonal = classical_multiplicative_seasonal(x, m)
    out_index = seasonal[-m:][np.arange(horizon) % m]
    return (x[-1] / seasonal[-1]) * out_index


# -- evaluation ------------------------------------------------------------------------------------------------
def _forecast_chunk(name: str, params: dict[str, Any], frame: pl.DataFrame, horizon: int) -> pl.DataFrame:
    from detectors.forecast_registry import make_forecaster

    return make_forecaster(name, **params).fit(frame).predict(horizon)


def score_forecasts(
    forecasts: pl.DataFrame, train: dict[str, np.ndarray], test: dict[str, np.ndarray]
) -> dict[str, float]:
    """M4 scores of a :data:`~detectors.forecast_base.FORECASTS` frame (sMAPE, MASE, MSIS: means over series;
    coverage: share of all test points)."""
    by_id = {str(k[0]): g for k, g in forecasts.sort("series_id", "ts").group_by("series_id")}
    s, m, ms, c80, c95 = [], [], [], [], []
    for sid, actual in test.items():
        g = by_id[sid]
        yhat = g["yhat"].to_numpy()
        s.append(smape(actual, yhat))
        m.append(mase(actual, yhat, train[sid]))
        ms.append(msis(actual, g["lo95"].to_numpy(), g["hi95"].to_numpy(), train[sid]))
        c80.append((actual >= g["lo80"].to_numpy()) & (actual <= g["hi80"].to_numpy()))
        c95.append((actual >= g["lo95"].to_numpy()) & (actual <= g["hi95"].to_numpy()))
    return {
        "smape": float(np.mean(s)),
        "mase": float(np.mean(m)),
        "msis": float(np.mean(ms)),
        "coverage80": float(np.mean(np.concatenate(c80))),
        "coverage95": float(np.mean(np.concatenate(c95))),
    }


def evaluate_m4(
    root: str | Path,
    forecaster_names: list[str] | tuple[str, ...],
    limit: int | None = None,
    progress: bool = True,
    *,
    n_jobs: int = 2,
    chunk_size: int = 8,
    params: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Forecast M4 Hourly with each registered forecaster and score it.

    Returns ``{"dataset", "series", "horizon", "naive2": {smape, mase}, "forecasters": {name: {smape, mase,
    owa, coverage80, coverage95, msis, seconds}}}``. ``seconds`` is the wall time of fit + predict over all
    series with ``n_jobs`` worker processes (series chunks of ``chunk_size``; ``n_jobs=1`` runs in this
    process). ``params`` gives keyword parameters per forecaster name. ``limit`` evaluates an evenly spaced
    sample of that many series (:func:`load_m4_hourly`).
    """
    frame, train, test = load_m4_hourly(root, limit)
    ids = list(train)
    n2 = [naive2(train[i]) for i in ids]
    base_smape = float(np.mean([smape(test[i], f) for i, f in zip(ids, n2, strict=True)]))
    base_mase = float(np.mean([mase(test[i], f, train[i]) for i, f in zip(ids, n2, strict=True)]))
    chunks = [
        frame.filter(pl.col("series_id").is_in(ids[a : a + chunk_size]))
        for a in range(0, len(ids), chunk_size)
    ]
    results: dict[str, dict[str, float]] = {}
    bar = _progress(progress)
    with bar:
        for name in forecaster_names:
            kw = (params or {}).get(name, {})
            task = bar.add_task(name, total=len(ids)) if bar else None
            t0 = time.perf_counter()
            parts = []
            if n_jobs <= 1:
                for chunk in chunks:  # each fit limits BLAS threads itself
                    parts.append(_forecast_chunk(name, kw, chunk, HORIZON))
                    if bar:
                        bar.advance(task, chunk["series_id"].n_unique())
            else:
                ctx = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(
                    max_workers=n_jobs, mp_context=ctx, initializer=limit_blas_threads, initargs=(os.getpid(),)
                ) as ex:
                    futures = [ex.submit(_forecast_chunk, name, kw, chunk, HORIZON) for chunk in chunks]
                    for fut, chunk in zip(futures, chunks, strict=True):
                        parts.append(fut.result())
                        if bar:
                            bar.advance(task, chunk["series_id"].n_unique())
            seconds = time.perf_counter() - t0
            scores = score_forecasts(pl.concat(parts), train, test)
            scores["owa"] = 0.5 * (scores["smape"] / base_smape + scores["mase"] / base_mase)
            scores["seconds"] = seconds
            results[name] = scores
    return {
        "dataset": "M4 Hourly",
        "series": len(ids),
        "horizon": HORIZON,
        "naive2": {"smape": base_smape, "mase": base_mase},
        "forecasters": results,
    }


def format_table(result: dict[str, Any]) -> str:
    """The evaluation as a plain-text table (one row per forecaster)."""
    head = f"{'forecaster':<10} {'sMAPE':>7} {'MASE':>7} {'OWA':>7} {'cov80':>7} {'cov95':>7} {'MSIS':>7} {'seconds':>8}"
    lines = [f"{result['dataset']}: {result['series']} series, horizon {result['horizon']}", head]
    n2 = result["naive2"]
    lines.append(f"{'Naive2':<10} {n2['smape']:>7.2f} {n2['mase']:>7.3f} {1.0:>7.3f}")
    for name, r in result["forecasters"].items():
        lines.append(
            f"{name:<10} {r['smape']:>7.2f} {r['mase']:>7.3f} {r['owa']:>7.3f} {r['coverage80']:>7.3f} "
            f"{r['coverage95']:>7.3f} {r['msis']:>7.2f} {r['seconds']:>8.1f}"
        )
    return "\n".join(lines)


class _NoProgress:
    def __bool__(self) -> bool:
        return False

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(enabled: bool) -> Any:
    if not enabled:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m detectors.m4 [NAME ...] [--limit N] [--jobs N] [--out FILE.json]``: print the table."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m detectors.m4", description=main.__doc__)
    parser.add_argument("names", nargs="*", default=["naive", "mstl", "ets", "arima", "prophet", "auto"])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    result = evaluate_m4(args.root, args.names, limit=args.limit, progress=True, n_jobs=args.jobs)
    print(format_table(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
