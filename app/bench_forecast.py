"""``rootwise bench forecast``: forecasting speed on hourly demand-like series.

``series`` hourly series with ``days`` of history (daily and weekly shape, level spread over two orders of
magnitude, multiplicative noise, a little trend), forecast ``horizon`` hours ahead with the default (``auto``)
forecaster in ``workers`` processes — the issue's figure is 1,000 × 90 days × 14 days ahead in ≤ 120 s — then
series/s per family on a sample (Prophet included).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl


def demand_frame(series: int, days: int, seed: int = 0) -> pl.DataFrame:
    """Hourly demand-like series: ``series_id, ts, value``."""
    rng = np.random.default_rng(seed)
    n = days * 24
    ts = (np.datetime64("2026-01-01T00:00", "us") + np.arange(n).astype("timedelta64[h]")).astype(
        "datetime64[us]"
    )
    i = np.arange(n)
    parts = []
    for s in range(series):
        level = rng.uniform(10, 1000)
        shape = 1 + 0.4 * np.sin(2 * np.pi * (i + rng.integers(24)) / 24) + 0.15 * (i % 168 < 120)
        y = level * shape * np.exp(rng.normal(0, 0.1, n)) + level * 0.001 * i * rng.normal()
        parts.append(
            pl.DataFrame({"series_id": np.full(n, s, dtype=np.int64), "ts": ts, "value": np.maximum(y, 0)})
        )
    return pl.concat(parts)


def _time(name: str, frame: pl.DataFrame, horizon: int, workers: int) -> dict[str, Any]:
    from detectors.forecast_registry import make_forecaster

    started = time.perf_counter()
    f = make_forecaster(name, n_jobs=workers).fit(frame)
    fitted = time.perf_counter()
    out = f.predict(horizon)
    done = time.perf_counter()
    n = frame["series_id"].n_unique()
    return {
        "series": n,
        "fit_seconds": round(fitted - started, 1),
        "predict_seconds": round(done - fitted, 1),
        "seconds": round(done - started, 1),
        "series_per_second": round(n / (done - started), 1),
        "rows": out.height,
    }


def bench_forecast(
    *,
    series: int = 1000,
    days: int = 90,
    horizon: int = 14 * 24,
    workers: int = 2,
    sample: int = 40,
    out: Path,
) -> dict[str, Any]:
    """All figures of the forecasting benchmark; written to ``out`` as JSON."""
    from detectors.forecast_registry import FORECASTERS

    frame = demand_frame(series, days)
    results: dict[str, Any] = {"series": series, "days": days, "horizon": horizon, "workers": workers}
    results["default"] = {"forecaster": "auto", **_time("auto", frame, horizon, workers)}
    small = frame.filter(pl.col("series_id") < min(sample, series))
    results["families"] = {name: _time(name, small, horizon, workers) for name in FORECASTERS}
    d = results["default"]
    results["summary"] = "\n".join(
        [
            f"auto: {series} hourly series x {days} days, horizon {horizon}: {d['seconds']} s "
            f"(fit {d['fit_seconds']} s, predict {d['predict_seconds']} s) with {workers} workers; target <= 120 s",
            f"families on {sample} series (series/s): "
            + ", ".join(f"{k} {v['series_per_second']}" for k, v in results["families"].items()),
        ]
    )
    results["date"] = datetime.now().isoformat(timespec="seconds")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results
