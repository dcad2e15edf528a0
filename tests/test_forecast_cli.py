"""``rootwise forecast`` (long CSV and store) and ``rootwise eval forecast`` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from detectors.forecast_registry import FORECASTERS
from ingest.store import Store


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, check=False
    )


def _long_csv(path: Path, days: int = 21) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for sid, base in (("gpu-us-east", 100.0), ("gpu-eu-west", 40.0)):
        n = 24 * days
        t = np.arange(n)
        y = base + 0.2 * base * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.02 * base, n) + 0.01 * t
        ts = pl.datetime_range(
            pl.datetime(2026, 10, 1), pl.datetime(2026, 10, 1) + pl.duration(hours=n - 1), "1h", eager=True
        )
        rows.append(
            pl.DataFrame(
                {"series_id": [sid] * n, "timestamp": ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": y}
            )
        )
    pl.concat(rows).write_csv(path)


def test_forecast_file_prints_the_contract_columns_with_ordered_intervals(tmp_path: Path) -> None:
    f = tmp_path / "demand.csv"
    _long_csv(f)
    p = _run("forecast", str(f), "--horizon", "48", "--format", "csv")
    assert p.returncode == 0, p.stderr
    out = pl.read_csv(p.stdout.encode())
    assert out.columns == ["series_id", "timestamp", "yhat", "lo80", "hi80", "lo95", "hi95", "model"]
    assert out.height == 2 * 48 and set(out["series_id"]) == {"gpu-us-east", "gpu-eu-west"}
    assert (out["lo95"] <= out["lo80"]).all() and (out["lo80"] <= out["yhat"]).all()
    assert (out["yhat"] <= out["hi80"]).all() and (out["hi80"] <= out["hi95"]).all()
    first = out.filter(pl.col("series_id") == "gpu-us-east")["timestamp"][0]
    assert first == "2026-10-22T00:00:00"  # one step after the last input hour
    # the daily shape is forecast, not a flat line
    us = out.filter(pl.col("series_id") == "gpu-us-east")["yhat"]
    assert us.max() - us.min() > 20


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("sid,timestamp,value\na,2026-01-01,1\n", "missing column(s) series_id"),
        ("series_id,timestamp,value\na,2026-01-01T00:00:00,x\n", "line 2: column 'value'"),
    ],
)
def test_forecast_bad_input_is_named(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "bad.csv"
    f.write_text(content)
    p = _run("forecast", str(f), "--horizon", "3")
    assert p.returncode == 2 and message in p.stderr and str(f) in p.stderr


def test_forecast_file_warns_about_a_series_without_values(tmp_path: Path) -> None:
    f = tmp_path / "g.csv"
    f.write_text(
        "series_id,timestamp,value\n"
        + "".join(f"a,2026-01-01T{h:02d}:00:00,{h}\n" for h in range(6))
        + "b,2026-01-01T00:00:00,nan\nb,2026-01-01T01:00:00,\n"
    )
    p = _run("forecast", str(f), "--horizon", "2", "--forecaster", "naive", "--format", "csv")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("\na,") == 2 and "\nb," not in p.stdout
    assert f"{f}: no forecast for b (no values to fit)" in p.stderr


@pytest.mark.slow
def test_forecast_store_writes_the_forecasts_table(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    p = _run("simulate", "--out", str(tmp_path / "sim"), "--days", "2", "--scale", "0.05")
    assert p.returncode == 0, p.stderr
    # the metrics are what is forecast (traces, logs and Prometheus snapshots would only slow the test down)
    assert _run("ingest", "--db", str(db), str(tmp_path / "sim" / "telemetry" / "metrics")).returncode == 0
    p = _run("forecast", "--db", str(db), "--horizon", "24", "--forecaster", "naive", "--format", "json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["series"] > 10 and report["forecasts"] == report["series"] * 24
    s = Store(db, read_only=True)
    n, models, created = (
        s.cursor()
        .execute("SELECT count(*), count(DISTINCT model), count(DISTINCT created) FROM forecasts")
        .fetchone()
    )
    s.close()
    assert n == report["forecasts"] and models >= 1 and created == 1
    # once retention has rolled the raw points up (the simulated days are weeks old), plain series are forecast
    # from the rollups; what needs raw points (histograms, stitched series) is not
    assert _run("retention", "--db", str(db), "--raw-max-age", "1d", "--histograms-max-age", "1d").returncode == 0
    s = Store(db, read_only=True)
    assert s.cursor().execute("SELECT count(*) FROM points").fetchone()[0] == 0
    s.close()
    p = _run("forecast", "--db", str(db), "--horizon", "24", "--forecaster", "naive", "--format", "json")
    assert p.returncode == 0, p.stderr
    after = json.loads(p.stdout)
    assert 10 < after["series"] < report["series"] and after["forecasts"] == after["series"] * 24


def test_eval_forecast_on_an_m4_sample(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "m4.json"
    p = _run(
        "eval",
        "forecast",
        "--data",
        str(shared_data / "M4"),
        "--forecasters",
        "naive,auto",
        "--limit",
        "12",
        "--workers",
        "1",
        "--out",
        str(out),
        "--format",
        "json",
    )
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert r["series"] == 12 and set(r["forecasters"]) == {"naive", "auto"}
    assert r["forecasters"]["auto"]["mase"] < r["forecasters"]["naive"]["mase"]


@pytest.mark.slow
def test_bench_forecast_small(tmp_path: Path) -> None:
    out = tmp_path / "bf.json"
    p = _run("bench", "forecast", "--series", "4", "--days", "21", "--out", str(out), "--format", "json")
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert r["default"]["series"] == 4 and r["default"]["rows"] == 4 * 14 * 24
    assert set(r["families"]) == set(FORECASTERS)  # every registered family, Prophet included
