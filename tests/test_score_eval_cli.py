"""``rootwise score`` (causal CSV scoring), ``rootwise eval nab`` and ``rootwise bench detect`` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, check=False
    )


def _write_series(path: Path, values: np.ndarray) -> None:
    ts = pl.datetime_range(
        pl.datetime(2026, 1, 1),
        pl.datetime(2026, 1, 1) + pl.duration(minutes=values.size - 1),
        "1m",
        eager=True,
    )
    pl.DataFrame({"timestamp": ts.dt.strftime("%Y-%m-%d %H:%M:%S"), "value": values}).write_csv(path)


def test_score_prints_timestamp_value_score_is_anomaly_causally(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(10, 1, 2000)
    y[1500:1520] += 12
    f = tmp_path / "s.csv"
    _write_series(f, y)
    p = _run("score", str(f), "--format", "csv")
    assert p.returncode == 0, p.stderr
    out = pl.read_csv(p.stdout.encode())
    assert out.columns == ["timestamp", "value", "score", "is_anomaly"]
    assert out.height == 2000
    flagged = out.filter(pl.col("is_anomaly") == 1)["timestamp"].to_list()
    assert flagged and flagged[0] == "2026-01-02 01:00:00"  # the first shifted point (row 1500)
    assert all(t >= "2026-01-02 01:00:00" for t in flagged)
    # causality: the prefix scored alone gives the same scores
    g = tmp_path / "prefix.csv"
    _write_series(g, y[:1510])
    q = pl.read_csv(_run("score", str(g), "--format", "csv").stdout.encode())
    np.testing.assert_allclose(q["score"].to_numpy(), out["score"].to_numpy()[:1510], atol=1e-6)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("time,value\n2026-01-01,1\n", "missing column(s) timestamp"),
        ("timestamp,value\n2026-01-01 00:00:00,1\n2026-01-01 00:01:00,abc\n", "line 3: column 'value'"),
        ("timestamp,value\nyesterday,1\n", "line 2: column 'timestamp'"),
        # an infinity is no measurement (NaN, like an empty cell, is a missing value)
        ("timestamp,value\n2026-01-01 00:00:00,nan\n2026-01-01 00:01:00,-inf\n", "line 3: column 'value': cannot parse '-inf' (expected a finite number)"),
    ],
)
def test_score_bad_input_names_file_line_and_column(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "bad.csv"
    f.write_text(content)
    p = _run("score", str(f))
    assert p.returncode == 2
    assert str(f) in p.stderr and message in p.stderr


def test_score_choose_detector_and_unknown_detector(tmp_path: Path) -> None:
    f = tmp_path / "s.csv"
    _write_series(f, np.random.default_rng(1).normal(0, 1, 500))
    p = _run("score", str(f), "--detector", "cusum", "--format", "json")
    assert p.returncode == 0
    rows = json.loads(p.stdout)
    assert len(rows) == 500 and all(isinstance(r["value"], float) for r in rows)  # numbers, not the file's text
    p = _run("score", str(f), "--detector", "bogus")
    assert p.returncode == 2 and "unknown detector 'bogus'" in p.stderr


def test_eval_nab_scores_the_corpus_above_a_floor(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "nab.json"
    p = _run("eval", "nab", "--data", str(shared_data / "NAB"), "--out", str(out), "--format", "json")
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    std = r["profiles"]["standard"]
    assert r["points"] == 365_558 and std["windows"] == 116
    # quality floor: well above NAB's windowed-Gaussian anchor (39.6); the figure itself is in README
    assert std["score"] > 50
    assert set(std["categories"]) >= {"realKnownCause", "realTweets", "artificialWithAnomaly"}


@pytest.mark.slow
def test_bench_detect_small(tmp_path: Path) -> None:
    out = tmp_path / "bd.json"
    p = _run("bench", "detect", "--series", "20", "--days", "1", "--out", str(out), "--format", "json")
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    # every 10th series is a counter, scored on its increases: its first point has none
    assert r["first_run"]["points"] == 20 * 1440 - 2
    assert r["incremental_run"]["points"] == 20 * 5
    assert r["warm_pass"]["points"] == 20 * 5 and r["warm_pass"]["pass_seconds"] > 0
    assert "streaming" in r["families"]
