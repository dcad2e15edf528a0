"""``rootwise forecast``: forecasts with calibrated intervals, from a long CSV or over the store.

* ``rootwise forecast FILE.csv --horizon H``: input columns ``series_id,timestamp,value`` (long), output
  ``series_id,timestamp,yhat,lo80,hi80,lo95,hi95,model`` (DESIGN.md).
* ``rootwise forecast --db DB --horizon H``: every detected logical series (the ones ``rootwise detect``
  scores), resampled to ``--step`` (hourly by default; gauges as means, counters as per-step increases with
  Prometheus' reset rule, deltas as sums, histograms as their p99), forecast and written to the ``forecasts``
  table with the creation time, so later reports can compare forecasts with what happened. Plain series are
  read through :mod:`ingest.queries`, so history that retention has rolled up still counts; histograms and
  stitched series need the raw points.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from ingest.schema import TS

OUTPUT_COLUMNS = ("series_id", "timestamp", "yhat", "lo80", "hi80", "lo95", "hi95", "model")
#: how a plain series of each kind becomes one value per step for planning (``ingest.queries.resample``)
_AGG = {"gauge": "avg", "counter": "increase", "delta": "sum"}


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
    from ingest import queries as q
    from ingest import results

    started = time.perf_counter()
    catalog = results.detection_catalog(store).filter(
        pl.col("kind").is_in(("gauge", "counter", "delta", "histogram"))
    )
    meta = _plan(store, catalog, DetectConfig())
    span = q.time_range(store)  # raw points and the rollups that replaced older ones
    if span is None or not meta:
        return {"series": 0, "forecasts": 0, "seconds": 0.0}
    end = span[1] + timedelta(microseconds=1)
    start = end - history
    # plain series through the query layer: one bucket per step, counter increases across resets, and the
    # 5-minute / hourly rollups where retention has removed the raw points (``rootwise retention``)
    plain: dict[tuple[str, str, str], list[int]] = {}
    # stitched, aggregated and histogram KPIs as detection reads them (raw points)
    rest: dict[int, dict[str, Any]] = {}
    for sid, m in meta.items():
        if m["how"] == "series" and m["kind"] in _AGG:
            plain.setdefault((m["service"], m["metric"], m["kind"]), []).append(sid)
        else:
            rest[sid] = m
    frames = [
        q.resample_series(
            store, metric=metric, service=service, start=start, end=end, step=step, agg=_AGG[kind]
        ).filter(pl.col("series_id").is_in(ids))
        for (service, metric, kind), ids in plain.items()
    ]
    if rest:
        points = _read_points(store, dict.fromkeys(rest, start), rest, DetectConfig())
        # (detection reads a stitched counter as its per-step increases already: a mean per step, as for gauges)
        frames.append(
            points.sort("series_id", "ts")
            .group_by_dynamic("ts", every=f"{int(step.total_seconds())}s", group_by="series_id")
            .agg(pl.col("value").mean())
        )
    resampled = pl.concat([f.select("series_id", pl.col("ts").cast(TS), "value") for f in frames])
    resampled = resampled.filter(pl.col("value").is_not_null() & pl.col("value").is_finite())
    if resampled.height == 0:
        return {"series": 0, "forecasts": 0, "seconds": round(time.perf_counter() - started, 1)}
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
