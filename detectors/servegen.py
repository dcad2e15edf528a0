"""ServeGen: a rolling-origin backtest of forecasters on real LLM-serving request rates.

Data: ServeGen (Xiang et al., *ServeGen: Workload Characterization and Generation of Large Language Model
Serving in Production*, arXiv:2505.09999, 2025; ``github.com/alibaba/ServeGen``), per-client request rates of
Alibaba Cloud Model Studio in 10-minute windows. ``derived/aggregate_rate_<category>_<model>.csv``
(``window_start_s, total_rate_rps, active_clients``) sums all clients of a model: the language models
(``m-large``, ``m-mid``, ``m-small``) have 14 days (2,016 windows), ``mm-image`` and ``deepseek-r1`` one day.
``data/<category>/<model>/chunk-<i>-trace.csv`` (headerless: ``window_start_s, rate, cv, family, p1, p2``)
are the per-client series; only ``m-small``'s are in the shared copy.

The traces carry no calendar date: :func:`load_servegen` puts window 0 at :data:`SERVEGEN_START` (a Monday,
midnight UTC). Only relative positions matter to every model here except Prophet, which sees an arbitrary
weekday phase.

Backtest (:func:`evaluate_servegen`): for each horizon ``h`` the origins are ``n - k h`` for
``k = 1 .. origins`` (non-overlapping windows ending at the last point) that leave at least ``min_history``
points before them; every forecaster is refitted on the points before each origin only and forecasts ``h``
steps. Scores are the M4 ones of :mod:`detectors.m4` with the daily seasonality ``m = 144`` (MASE and MSIS
scale: the in-sample mean absolute difference to the same window one day earlier), averaged over
(series, origin); coverage is the share of all forecast points inside the interval. On 14 days a 7-day
horizon fits once, with 7 days of history; and since a season is used only with two full cycles of history
(:mod:`detectors.forecast_base`), no origin has the 2,016 points the weekly season (1,008 steps) needs: every
model here sees the daily season only.

Measured with ``python -m detectors.servegen naive mstl ets auto trend prophet`` (the three 14-day language
aggregates; one process on a shared 2-core machine; ``seconds``: fit + predict summed over the origins;
sMAPE leaves out windows where both rate and forecast are 0):

===========  ==========  =====  =====  =====  =====  =====  =======
horizon      forecaster  sMAPE  MASE   cov80  cov95  MSIS   seconds
===========  ==========  =====  =====  =====  =====  =====  =======
1 day, 5     naive       44.98  1.598  0.687  0.872  15.21      0.2
origins      mstl        45.66  1.598  0.626  0.829  16.19      6.7
             ets         41.88  1.508  0.624  0.832  14.87     45.8
             auto        44.60  1.560  0.770  0.921  12.63      8.2
             trend       36.66  1.341  0.738  0.869  15.42      4.3
             prophet     42.69  1.491  0.780  0.909  12.81     23.1
7 days, 1    naive       38.20  1.529  0.752  0.893  15.00      0.0
origin       mstl        43.31  1.687  0.836  0.917  16.43      0.8
             ets         36.22  1.454  0.835  0.976  12.58      5.6
             auto        37.42  1.477  0.817  0.918  12.68      0.4
             trend       33.32  1.393  0.649  0.732  22.45      0.7
             prophet     63.82  2.696  0.437  0.587  40.52      2.2
===========  ==========  =====  =====  =====  =====  =====  =======

Every MASE is above 1: a day ahead is harder than the in-sample day-over-day change (daily volumes swing by a
factor of 2.6 over the fortnight on ``m-large``, and ``m-mid`` / ``m-small`` have outage windows at 0). The 95 %
intervals, calibrated on the history, cover 83-92 % one day ahead. ``mm-image`` and ``deepseek-r1`` (one day)
are too short for any origin and are listed in ``skipped``.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from detectors.forecast_base import limit_blas_threads
from detectors.m4 import coverage, mase, msis, smape
from ingest.schema import TS

if TYPE_CHECKING:
    from polars._typing import PolarsDataType

#: window 0 of every trace (the traces have no dates); a Monday, midnight UTC
SERVEGEN_START = datetime(2025, 1, 6)
#: seconds per window
STEP_S = 600
#: steps per day: the MASE / MSIS seasonality
SEASON = 144
#: one day and one week ahead
HORIZONS = (SEASON, 7 * SEASON)

_AGG_HEADER = ["window_start_s", "total_rate_rps", "active_clients"]
_FRAME: dict[str, PolarsDataType] = {"series_id": pl.Utf8, "ts": TS, "value": pl.Float64}


class ServeGenError(ValueError):
    """A ServeGen file is missing or malformed; the message names the file and line."""


# -- loading ---------------------------------------------------------------------------------------------
def _folder(root: str | Path, sub: str) -> Path:
    """``root`` may be the ServeGen folder or the ``sub`` folder itself."""
    path = Path(root)
    return path / sub if (path / sub).is_dir() else path


def _number(text: str, path: Path, line: int, column: str, *, integer: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ServeGenError(f"{path}:{line}: {column} is not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ServeGenError(f"{path}:{line}: {column} must be a finite number >= 0, got {text!r}")
    if integer and value != int(value):
        raise ServeGenError(f"{path}:{line}: {column} must be a whole number, got {text!r}")
    return value


def _read_rates(path: Path, *, header: list[str] | None, value_column: int) -> tuple[np.ndarray, np.ndarray]:
    """``(window_start_s, rate)`` of one CSV; every row checked, errors name ``path:line``."""
    starts: list[float] = []
    rates: list[float] = []
    name = header[value_column] if header else "rate"
    with path.open(newline="") as fh:
        rows = csv.reader(fh)
        if header is not None:
            first = next(rows, None)
            if first != header:
                raise ServeGenError(f"{path}:1: expected header {','.join(header)}, got {first!r}")
        width = len(header) if header else 2
        for row in rows:
            line = rows.line_num
            if not row:
                continue
            if len(row) < width or (header is not None and len(row) != width):
                raise ServeGenError(f"{path}:{line}: expected {width} fields, got {len(row)}: {row!r}")
            start = _number(row[0], path, line, "window_start_s", integer=True)
            if start % STEP_S:
                raise ServeGenError(f"{path}:{line}: window_start_s {row[0]} is not a multiple of {STEP_S}")
            if starts and start <= starts[-1]:
                raise ServeGenError(
                    f"{path}:{line}: window_start_s {row[0]} does not follow {starts[-1]:.0f} (rows must be "
                    "in increasing time order, without duplicates)"
                )
            starts.append(start)
            rates.append(_number(row[value_column], path, line, name))
            if header is not None:
                _number(row[2], path, line, header[2], integer=True)
    if not starts:
        raise ServeGenError(f"{path}: no data rows")
    return np.asarray(starts, dtype=np.int64), np.asarray(rates, dtype=np.float64)


def _frame(parts: list[tuple[str, np.ndarray, np.ndarray]]) -> pl.DataFrame:
    if not parts:
        return pl.DataFrame(schema=_FRAME)
    start_us = int(np.datetime64(SERVEGEN_START, "us").astype(np.int64))
    return pl.DataFrame(
        {
            "series_id": [sid for sid, s, _ in parts for _ in range(s.size)],
            "ts": np.concatenate([start_us + s * 1_000_000 for _, s, _ in parts]).astype("datetime64[us]"),
            "value": np.concatenate([v for _, _, v in parts]),
        },
        schema=_FRAME,
    )


def load_servegen(root: str | Path) -> pl.DataFrame:
    """The aggregate request rate of every model: a long frame ``series_id, ts, value`` (requests/s).

    ``root`` is the ServeGen folder (or its ``derived`` folder). ``series_id`` is ``<category>/<model>``
    (``language/m-large``); ``ts`` is :data:`SERVEGEN_START` plus ``window_start_s``. Raises
    :class:`ServeGenError` naming the file and line of a malformed row, or when no file is found.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "aggregate_rate_language_m-tiny.csv").write_text(
    ...     "window_start_s,total_rate_rps,active_clients\\n0,1.5,3\\n600,2.0,3\\n")
    >>> load_servegen(root).rows()
    [('language/m-tiny', datetime.datetime(2025, 1, 6, 0, 0), 1.5), ('language/m-tiny', datetime.datetime(2025, 1, 6, 0, 10), 2.0)]
    >>> _ = (root / "aggregate_rate_language_m-tiny.csv").write_text(
    ...     "window_start_s,total_rate_rps,active_clients\\n0,1.5,3\\n600,fast,3\\n")
    >>> load_servegen(root)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    detectors.servegen.ServeGenError: .../aggregate_rate_language_m-tiny.csv:3: total_rate_rps is not a number: 'fast'
    """
    folder = _folder(root, "derived")
    files = sorted(folder.glob("aggregate_rate_*.csv"))
    if not files:
        raise ServeGenError(f"{folder}: no aggregate_rate_<category>_<model>.csv files")
    parts = []
    for path in files:
        category, _, model = path.stem.removeprefix("aggregate_rate_").partition("_")
        if not model:
            raise ServeGenError(f"{path}: file name is not aggregate_rate_<category>_<model>.csv")
        starts, rates = _read_rates(path, header=_AGG_HEADER, value_column=1)
        parts.append((f"{category}/{model}", starts, rates))
    return _frame(parts)


def load_servegen_clients(
    root: str | Path, min_mean_rps: float = 5.0, min_active: float = 0.9
) -> pl.DataFrame:
    """Per-client request rates with enough volume to forecast: a long frame ``series_id, ts, value``.

    Reads every ``data/<category>/<model>/chunk-<i>-trace.csv`` under ``root`` and keeps a client when its
    mean rate is at least ``min_mean_rps`` and it is active (rate > 0) in at least ``min_active`` of its
    windows; most clients are tiny or intermittent. ``series_id`` is ``<category>/<model>/chunk-<i>``.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "language" / "m-tiny").mkdir(parents=True)
    >>> _ = (root / "language" / "m-tiny" / "chunk-1-trace.csv").write_text("0,6.0,1.1,Gamma,1,2\\n600,8.0,0.9,,,\\n")
    >>> _ = (root / "language" / "m-tiny" / "chunk-2-trace.csv").write_text("0,0.1,0,,0,0\\n600,0,0,,0,0\\n")
    >>> load_servegen_clients(root)["series_id"].unique().to_list()
    ['language/m-tiny/chunk-1']
    """
    folder = _folder(root, "data")
    files = sorted(folder.glob("*/*/chunk-*-trace.csv"))
    if not files:
        raise ServeGenError(f"{folder}: no <category>/<model>/chunk-<i>-trace.csv files")
    parts = []
    for path in files:
        starts, rates = _read_rates(path, header=None, value_column=1)
        if rates.mean() >= min_mean_rps and np.mean(rates > 0) >= min_active:
            client = path.name.removesuffix("-trace.csv")
            parts.append((f"{path.parent.parent.name}/{path.parent.name}/{client}", starts, rates))
    return _frame(sorted(parts, key=lambda p: p[0]))


# -- backtest --------------------------------------------------------------------------------------------
def _fit_predict(
    name: str, params: dict[str, Any], train: pl.DataFrame, horizon: int
) -> tuple[pl.DataFrame, float]:
    """Fit ``name`` on ``train`` and forecast ``horizon`` steps; also the wall time it took."""
    from detectors.forecast_registry import make_forecaster

    t0 = time.perf_counter()
    out = make_forecaster(name, **params).fit(train).predict(horizon)
    return out, time.perf_counter() - t0


def backtest_origins(n: int, horizon: int, origins: int, min_history: int) -> list[int]:
    """Rolling origins (positions of the first forecast point), latest first: ``n - k * horizon`` for
    ``k = 1 .. origins`` that leave at least ``min_history`` points before them.

    Examples
    --------
    >>> backtest_origins(2016, 144, 5, 1008), backtest_origins(2016, 1008, 5, 1008), backtest_origins(144, 144, 5, 1008)
    ([1872, 1728, 1584, 1440, 1296], [1008], [])
    """
    return [n - k * horizon for k in range(1, origins + 1) if n - k * horizon >= min_history]


def _score(actual: np.ndarray, fc: pl.DataFrame, insample: np.ndarray) -> dict[str, Any]:
    yhat = fc["yhat"].to_numpy()
    lo80, hi80, lo95, hi95 = (fc[c].to_numpy() for c in ("lo80", "hi80", "lo95", "hi95"))
    # windows where both the rate and its forecast are 0 (outages) have no sMAPE (0/0); M4 has no zeros
    defined = (np.abs(actual) + np.abs(yhat)) > 0
    return {
        "smape": smape(actual[defined], yhat[defined]) if defined.any() else 0.0,
        "mase": mase(actual, yhat, insample, m=SEASON),
        "msis": msis(actual, lo95, hi95, insample, m=SEASON),
        "coverage80": coverage(actual, lo80, hi80),
        "coverage95": coverage(actual, lo95, hi95),
    }


def evaluate_servegen(
    root: str | Path,
    forecasters: Sequence[str],
    horizons: Sequence[int] = HORIZONS,
    origins: int = 5,
    n_jobs: int = 1,
    *,
    min_history: int = 7 * SEASON,
    series: Sequence[str] | None = None,
    clients: bool = False,
    params: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Rolling-origin backtest of registered forecasters on ServeGen request rates (module docstring).

    Parameters
    ----------
    root
        The ServeGen folder.
    forecasters
        Registered forecaster names.
    horizons
        Steps ahead (10-minute windows): one day (144) and one week (1,008) by default.
    origins
        Most origins per horizon; fewer are used when the history before them would be shorter than
        ``min_history`` (the result says how many fitted).
    n_jobs
        Worker processes over the (forecaster, horizon, origin) fits; 1 runs in this process.
    min_history
        Fewest points before an origin (default 7 days). Series too short for any origin are skipped and
        listed in ``skipped``.
    series
        Only these series ids (default: all).
    clients
        Per-client series (:func:`load_servegen_clients`) instead of the per-model aggregates.
    params
        Keyword parameters per forecaster name.

    Returns
    -------
    dict
        ``{"dataset", "season", "series", "skipped", "notes", "horizons": {h: {origins, history_days,
        series}}, "forecasters": {name: {h: {smape, mase, msis, coverage80, coverage95, seconds, forecasts,
        models, per_series_mase}}}}`` with horizons as strings. sMAPE, MASE and MSIS are means over
        (series, origin); ``seconds`` is fit + predict wall time summed over the origins (comparable across
        ``n_jobs``); ``models`` counts the ``model`` column's values per forecast.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> t = np.arange(4 * 144)
    >>> y = 100 + 0.1 * t + 50 * np.sin(2 * np.pi * t / 144)  # the seasonal naive misses one day's growth
    >>> _ = (root / "aggregate_rate_language_m-tiny.csv").write_text("window_start_s,total_rate_rps,active_clients\\n"
    ...     + "".join(f"{600 * i},{v},1\\n" for i, v in enumerate(y)))
    >>> r = evaluate_servegen(root, ["naive"], horizons=(144,), origins=2, min_history=288)
    >>> r["horizons"]["144"]["origins"], round(r["forecasters"]["naive"]["144"]["mase"], 6)
    (2, 1.0)
    """
    frame = load_servegen_clients(root) if clients else load_servegen(root)
    if series is not None:
        unknown = sorted(set(series) - set(frame["series_id"].unique().to_list()))
        if unknown:
            raise ServeGenError(
                f"unknown series {unknown}; the data has {sorted(frame['series_id'].unique())}"
            )
        frame = frame.filter(pl.col("series_id").is_in(list(series)))
    by_id = {str(k[0]): g.sort("ts") for k, g in frame.group_by("series_id")}
    ids = sorted(by_id)
    values = {sid: by_id[sid]["value"].to_numpy() for sid in ids}

    plan: dict[int, dict[int, list[str]]] = {}  # horizon -> origin position -> series fitted there
    skipped: dict[str, str] = {}
    for h in horizons:
        plan[h] = {}
        for sid in ids:
            for origin in backtest_origins(values[sid].size, h, origins, min_history):
                plan[h].setdefault(origin, []).append(sid)
    for sid in ids:
        if not any(sid in s for h in horizons for s in plan[h].values()):
            skipped[sid] = (
                f"{values[sid].size} points: too short for a {min(horizons)}-step horizon after "
                f"{min_history} points of history"
            )
    tasks = [
        (name, h, origin, pl.concat([by_id[sid].head(origin) for sid in sids]))
        for name in forecasters
        for h in horizons
        for origin, sids in sorted(plan[h].items())
    ]
    kw = params or {}
    if n_jobs <= 1:
        outputs = [_fit_predict(name, kw.get(name, {}), train, h) for name, h, _, train in tasks]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=n_jobs, mp_context=ctx, initializer=limit_blas_threads, initargs=(os.getpid(),)
        ) as ex:
            futures = [
                ex.submit(_fit_predict, name, kw.get(name, {}), train, h) for name, h, _, train in tasks
            ]
            outputs = [f.result() for f in futures]

    results: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in forecasters}
    scored: dict[tuple[str, int], list[tuple[str, dict[str, Any]]]] = {}
    seconds: dict[tuple[str, int], float] = {}
    models: dict[tuple[str, int], Counter[str]] = {}
    for (name, h, origin, _), (fc, secs) in zip(tasks, outputs, strict=True):
        seconds[(name, h)] = seconds.get((name, h), 0.0) + secs
        for sid in plan[h][origin]:
            part = fc.filter(pl.col("series_id") == sid).sort("ts")
            y = values[sid]
            scored.setdefault((name, h), []).append((sid, _score(y[origin : origin + h], part, y[:origin])))
            models.setdefault((name, h), Counter())[str(part["model"][0])] += 1
    for name in forecasters:
        for h in horizons:
            rows = scored.get((name, h), [])
            if not rows:
                continue
            per_series: dict[str, list[float]] = {}
            for sid, s in rows:
                per_series.setdefault(sid, []).append(s["mase"])
            results[name][str(h)] = {
                "smape": float(np.mean([s["smape"] for _, s in rows])),
                "mase": float(np.mean([s["mase"] for _, s in rows])),
                "msis": float(np.mean([s["msis"] for _, s in rows])),
                # every forecast has h points: the mean of the coverages is the share of all points
                "coverage80": float(np.mean([s["coverage80"] for _, s in rows])),
                "coverage95": float(np.mean([s["coverage95"] for _, s in rows])),
                "seconds": float(seconds[(name, h)]),
                "forecasts": len(rows),
                "models": dict(models[(name, h)].most_common()),
                "per_series_mase": {sid: float(np.mean(v)) for sid, v in sorted(per_series.items())},
            }

    horizon_info = {}
    notes = []
    for h in horizons:
        starts = sorted(plan[h])
        horizon_info[str(h)] = {
            "days": h / SEASON,
            "origins": len(starts),
            "history_days": [starts[0] / SEASON, starts[-1] / SEASON] if starts else [],
            "series": sorted({sid for s in plan[h].values() for sid in s}),
        }
        if len(starts) < origins:
            notes.append(
                f"{h}-step horizon: {len(starts)} of {origins} origins fit with at least {min_history} points "
                "of history before them"
            )
    longest = max((o for h in horizons for o in plan[h]), default=0)
    if longest and longest < 2 * 7 * SEASON:
        notes.append(
            f"the longest history before an origin is {longest} points ({longest / SEASON:g} days): fewer than "
            f"two weekly cycles ({2 * 7 * SEASON}), so no model uses the weekly season, only the daily one"
        )
    return {
        "dataset": "ServeGen per-client request rates" if clients else "ServeGen aggregate request rates",
        "season": SEASON,
        "series": [sid for sid in ids if sid not in skipped],
        "skipped": skipped,
        "notes": notes,
        "horizons": horizon_info,
        "forecasters": results,
    }


def format_servegen_table(result: dict[str, Any]) -> str:
    """The backtest as plain text: one block per horizon, one row per forecaster.

    Examples
    --------
    >>> r = {"dataset": "ServeGen aggregate request rates", "season": 144, "series": ["language/m-large"],
    ...      "skipped": {}, "notes": [], "horizons": {"144": {"days": 1.0, "origins": 5, "history_days": [9.0, 13.0],
    ...      "series": ["language/m-large"]}}, "forecasters": {"naive": {"144": {"smape": 20.0, "mase": 1.0,
    ...      "msis": 9.0, "coverage80": 0.8, "coverage95": 0.95, "seconds": 0.5}}}}
    >>> print(format_servegen_table(r))
    ServeGen aggregate request rates: 1 series, MASE/MSIS seasonality 144
    <BLANKLINE>
    horizon 144 steps (1 day): 5 origins, 9-13 days of history, 1 series
    forecaster   sMAPE    MASE   cov80   cov95    MSIS  seconds
    naive        20.00   1.000   0.800   0.950    9.00      0.5
    """
    lines = [f"{result['dataset']}: {len(result['series'])} series, MASE/MSIS seasonality {result['season']}"]
    for h, info in result["horizons"].items():
        days = info["history_days"]
        hist = (
            f"{min(days):g}-{max(days):g}"
            if days and min(days) != max(days)
            else (f"{days[0]:g}" if days else "no")
        )
        lines += [
            "",
            f"horizon {h} steps ({info['days']:g} day{'s' if info['days'] != 1 else ''}): {info['origins']} "
            f"origin{'s' if info['origins'] != 1 else ''}, {hist} days of history, {len(info['series'])} series",
            f"{'forecaster':<10} {'sMAPE':>7} {'MASE':>7} {'cov80':>7} {'cov95':>7} {'MSIS':>7} {'seconds':>8}",
        ]
        for name, by_h in result["forecasters"].items():
            r = by_h.get(h)
            if r is None:
                continue
            lines.append(
                f"{name:<10} {r['smape']:>7.2f} {r['mase']:>7.3f} {r['coverage80']:>7.3f} {r['coverage95']:>7.3f} "
                f"{r['msis']:>7.2f} {r['seconds']:>8.1f}"
            )
    if result["skipped"]:
        lines += ["", "skipped: " + "; ".join(f"{k} ({v})" for k, v in result["skipped"].items())]
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m detectors.servegen [NAME ...] [--clients] [--jobs N] [--out FILE.json]``: print the table."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m detectors.servegen", description=main.__doc__)
    parser.add_argument("names", nargs="*", default=["naive", "mstl", "ets", "auto", "trend"])
    parser.add_argument(
        "--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "servegen")
    )
    parser.add_argument("--origins", type=int, default=5)
    parser.add_argument("--clients", action="store_true", help="per-client series instead of aggregates")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    result = evaluate_servegen(
        args.root, args.names, origins=args.origins, n_jobs=args.jobs, clients=args.clients
    )
    print(format_servegen_table(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
