"""``rootwise forecast``: forecasts with calibrated intervals, from a long CSV or over the store.

* ``rootwise forecast FILE.csv --horizon H``: input columns ``series_id,timestamp,value`` (long), output
  ``series_id,timestamp,yhat,lo80,hi80,lo95,hi95,model`` (DESIGN.md).
* ``rootwise forecast --db DB --horizon H``: every detected logical series (the ones ``rootwise detect``
  scores), resampled to ``--step`` (hourly by default; counters as rates, histograms as their p99), forecast
  and written to the ``forecasts`` table with the creation time, so later reports can compare forecasts with
  what happened.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from ingest.schema import TS

OUTPUT_COLUMNS = ("series_id", "timestamp", "yhat", "lo80", "hi80", "lo95", "hi95", "model")


def read_long_csv(path: Path) -> pl.DataFrame:
    """``series_id,timestamp,value`` → a frame ``series_id (Utf8), ts, value``; bad input raises
    :class:`ingest.csvtable.CsvInputError` naming the file, line and column."""
    from ingest.csvtable import read_csv_table

    _, cols = read_csv_table(path, {"series_id": "id", "timestamp": "time", "value": "number"})
    return pl.DataFrame(
        {"series_id": cols["series_id"], "ts": cols["timestamp"].cast(TS), "value": cols["value"]}
    )


def forecast_frame(frame: pl.DataFrame, horizon: int, forecaster: str = "auto") -> pl.DataFrame:
    """Forecast every series of a long frame; output with DESIGN.md's column names and order."""
    from detectors.forecast_registry import make_forecaster

    fc = make_forecaster(forecaster).fit(frame).predict(horizon)
    return fc.rename({"ts": "timestamp"}).select(OUTPUT_COLUMNS)


def forecast_store(
    store: Any,
    *,
    horizon: int,
    step: timedelta = timedelta(hours=1),
    history: timedelta = timedelta(days=28),
    forecaster: str = "auto",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Forecast the store's logical series ``horizon`` steps ahead and write them to ``forecasts``."""
    import time

    from app.detect import DetectConfig, _plan, _read_points
    from ingest import results

    started = time.perf_counter()
    catalog = results.detection_catalog(store).filter(
        pl.col("kind").is_in(("gauge", "counter", "delta", "histogram"))
    )
    meta = _plan(store, catalog, DetectConfig())
    rng = store.cursor().execute("SELECT max(ts) FROM points").fetchone()[0]
    if rng is None:
        return {"series": 0, "forecasts": 0, "seconds": 0.0}
    start = rng - history
    points = _read_points(store, dict.fromkeys(meta, start), meta, DetectConfig())
    # counters are scored on their increments by the detectors; for planning they become per-step increases
    counters = [s for s, m in meta.items() if m["kind"] == "counter" and m["how"] == "series"]
    every = f"{int(step.total_seconds())}s"
    resampled = (
        points.sort("series_id", "ts")
        .group_by_dynamic("ts", every=every, group_by="series_id")
        .agg(value=pl.col("value").mean(), increase=pl.col("value").max() - pl.col("value").min())
        .with_columns(
            value=pl.when(pl.col("series_id").is_in(counters))
            .then(pl.col("increase"))
            .otherwise(pl.col("value"))
        )
        .select("series_id", "ts", "value")
    )
    fc = forecast_frame(resampled, horizon, forecaster)
    created = now or datetime.now().replace(microsecond=0)
    n = results.write_forecasts(store, fc.rename({"timestamp": "ts"}), created=created)
    return {
        "series": fc["series_id"].n_unique(),
        "forecasts": n,
        "step": str(step),
        "horizon": horizon,
        "seconds": round(time.perf_counter() - started, 1),
    }
