"""ServeGen backtest: the loader on the real files, its errors, no look-ahead, and a quality floor on real data."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import detectors.servegen as sg
from detectors.servegen import (
    SERVEGEN_START,
    ServeGenError,
    evaluate_servegen,
    format_servegen_table,
    load_servegen,
    load_servegen_clients,
)

HEADER = "window_start_s,total_rate_rps,active_clients\n"


@pytest.fixture
def servegen(shared_data: Path) -> Path:
    root = shared_data / "servegen"
    if not (root / "derived").is_dir():
        pytest.fail(f"ServeGen data missing: {root}")
    return root


def test_loader_reads_every_aggregate_on_a_10_minute_grid(servegen):
    frame = load_servegen(servegen)
    assert frame.schema == pl.Schema({"series_id": pl.Utf8, "ts": pl.Datetime("us"), "value": pl.Float64})
    sizes = dict(frame.group_by("series_id").len().iter_rows())
    assert sizes == {
        "language/m-large": 2016,
        "language/m-mid": 2016,
        "language/m-small": 2016,
        "multimodal/mm-image": 144,
        "reason/deepseek-r1": 144,
    }
    steps = frame.sort("series_id", "ts").group_by("series_id").agg(pl.col("ts").diff().drop_nulls().unique())
    assert all(s.to_list() == [timedelta(minutes=10)] for s in steps["ts"])
    assert frame["ts"].min() == SERVEGEN_START
    assert frame["value"].min() >= 0
    # the README's mean total rates: m-large 196 rps, m-mid 1,790, deepseek-r1 16
    means = dict(frame.group_by("series_id").agg(pl.col("value").mean()).iter_rows())
    assert means["language/m-large"] == pytest.approx(196, abs=1)
    assert means["language/m-mid"] == pytest.approx(1790, abs=5)
    assert means["reason/deepseek-r1"] == pytest.approx(16, abs=0.5)


def test_client_loader_keeps_busy_clients_that_add_up_to_part_of_the_aggregate(servegen):
    clients = load_servegen_clients(servegen)
    sizes = clients.group_by("series_id").len()
    assert sizes.height == 13 and set(sizes["len"]) == {2016}
    assert all(s.startswith("language/m-small/chunk-") for s in sizes["series_id"])
    total = clients.group_by("ts").agg(pl.col("value").sum()).sort("ts")["value"].to_numpy()
    aggregate = load_servegen(servegen).filter(pl.col("series_id") == "language/m-small")["value"].to_numpy()
    assert np.all(total <= aggregate + 1e-6) and total.sum() > 0.9 * aggregate.sum()


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        ("0,1.0,2\n600,1.5,2\n1200,-3,2\n", 4, "total_rate_rps must be a finite number >= 0"),
        ("0,1.0,2\n600,1.5\n", 3, "expected 3 fields"),
        ("0,1.0,2\n0,1.5,2\n", 3, "increasing time order"),
        ("0,1.0,2\n650,1.5,2\n", 3, "not a multiple of 600"),
        ("0,1.0,2.5\n", 2, "active_clients must be a whole number"),
    ],
)
def test_a_bad_row_names_the_file_and_line(tmp_path, body, line, words):
    path = tmp_path / "derived" / "aggregate_rate_language_m-bad.csv"
    path.parent.mkdir()
    path.write_text(HEADER + body)
    with pytest.raises(ServeGenError) as err:
        load_servegen(tmp_path)
    assert f"{path}:{line}:" in str(err.value) and words in str(err.value)


def test_a_wrong_header_or_an_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ServeGenError, match="no aggregate_rate"):
        load_servegen(tmp_path)
    path = tmp_path / "aggregate_rate_language_m-x.csv"
    path.write_text("window,rate,clients\n0,1,1\n")
    with pytest.raises(ServeGenError, match=rf"{path}:1: expected header window_start_s"):
        load_servegen(tmp_path)


def test_a_client_trace_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "data" / "language" / "m-x" / "chunk-3-trace.csv"
    path.parent.mkdir(parents=True)
    path.write_text("0,1.0,0.5,Gamma,1,2\n600,n/a,0,,0,0\n")
    with pytest.raises(ServeGenError, match=rf"{path}:2: rate is not a number: 'n/a'"):
        load_servegen_clients(tmp_path)


def test_every_fit_sees_only_the_points_before_its_origin(servegen, monkeypatch):
    seen = []
    real = sg._fit_predict

    def spy(name, params, train, horizon):
        out, secs = real(name, params, train, horizon)
        seen.append((train.group_by("series_id").agg(pl.col("ts").max()), out, horizon))
        return out, secs

    monkeypatch.setattr(sg, "_fit_predict", spy)
    r = evaluate_servegen(servegen, ["naive"], horizons=(144, 1008), origins=3, series=["language/m-small"])
    assert [h for *_, h in seen] == [144, 144, 144, 1008]
    last = SERVEGEN_START + timedelta(minutes=10 * 2015)
    for last_train, out, h in seen:
        (end,) = last_train["ts"]
        first = out["ts"].min()
        assert first == end + timedelta(minutes=10) and out.height == h
        assert out["ts"].max() <= last  # every forecast point has an actual to score against
    assert sorted(end for lt, *_ in seen for end in lt["ts"]) == [
        SERVEGEN_START + timedelta(minutes=10 * (n - 1)) for n in (1008, 1584, 1728, 1872)
    ]
    assert r["horizons"]["1008"]["origins"] == 1 and r["horizons"]["144"]["history_days"] == [11.0, 13.0]


def test_auto_beats_seasonal_naive_one_day_ahead_on_m_large(servegen):
    r = evaluate_servegen(
        servegen, ["naive", "auto"], horizons=(144,), origins=2, series=["language/m-large"]
    )
    naive, auto = (r["forecasters"][n]["144"] for n in ("naive", "auto"))
    # measured: auto MASE 1.309, seasonal naive 1.378 (2 origins, the last two days)
    assert auto["mase"] <= 1.309 + 0.07
    assert auto["mase"] <= naive["mase"] - 0.03
    assert auto["coverage95"] >= 0.80 and auto["forecasts"] == 2
    table = format_servegen_table(r)
    assert "horizon 144 steps (1 day): 2 origins" in table and "auto" in table
    assert set(r["skipped"]) == set()  # only the requested series


def test_one_day_series_are_skipped_and_said_so(servegen):
    r = evaluate_servegen(servegen, ["naive"], horizons=(144,), origins=1, series=["reason/deepseek-r1"])
    assert r["series"] == [] and "reason/deepseek-r1" in r["skipped"]
    assert r["forecasters"]["naive"] == {}
    assert "skipped: reason/deepseek-r1" in format_servegen_table(r)
