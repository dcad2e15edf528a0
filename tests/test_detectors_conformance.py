"""One conformance suite over every registered detector (STYLE.md rule 10).

Schema of ``score``, no input mutation, determinism by seed, pickling, scoring never mutates the detector,
causality of ``score_online`` (a point's score does not change when later points change).
"""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from detectors.registry import DETECTORS, available, make_detector
from ingest.schema import SCORES


def _frame(kind: str, n: int = 900, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    ts = [datetime(2026, 1, 1) + timedelta(minutes=i) for i in range(n)]
    rows = []
    ids = (1, 2, 3) if kind == "multivariate" else (1, 2)
    for sid in ids:
        y = 50 + 10 * np.sin(np.arange(n) / 60) + rng.normal(0, 1, n)
        y[int(n * 0.8) : int(n * 0.8) + 10] += 15
        frame = {"series_id": [sid] * n, "ts": ts, "value": y}
        if kind == "ratio":
            total = rng.poisson(1000, n).astype(float)
            frame = {"series_id": [sid] * n, "ts": ts, "value": rng.binomial(total.astype(int), 0.01).astype(float),
                     "total": total}
        rows.append(pl.DataFrame(frame))
    return pl.concat(rows)


def _kind(name: str) -> str:
    return getattr(make_detector(name), "input_kind", "points")


def test_every_registered_detector_imports() -> None:
    assert available() == list(DETECTORS)


@pytest.fixture(params=sorted(DETECTORS))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_score_schema_and_row_count(name: str) -> None:
    kind = _kind(name)
    frame = _frame(kind)
    det = make_detector(name, seed=3).fit(frame[: frame.height // 2] if kind != "multivariate" else frame)
    out = det.score(frame)
    assert out.schema == pl.Schema(SCORES)
    if kind == "multivariate":
        assert out.height == frame["ts"].n_unique()
    else:
        assert out.height == frame.height
        assert out.select("series_id", "ts").sort("series_id", "ts").equals(
            frame.select("series_id", "ts").sort("series_id", "ts")
        )
    assert out["score"].is_not_nan().all()
    assert (out["is_anomaly"] == (out["score"] >= det.threshold.z)).all()


def test_no_input_mutation_and_scoring_leaves_detector_unchanged(name: str) -> None:
    frame = _frame(_kind(name))
    before = frame.clone()
    det = make_detector(name).fit(frame)
    state = pickle.dumps(det)
    det.score(frame)
    det.score_online(frame)
    assert frame.equals(before)
    assert pickle.dumps(det) == state


def test_deterministic_by_seed_and_picklable(name: str) -> None:
    frame = _frame(_kind(name))
    a = make_detector(name, seed=7).fit(frame).score(frame)
    det = make_detector(name, seed=7).fit(frame)
    b = pickle.loads(pickle.dumps(det)).score(frame)
    assert a.equals(b)


@pytest.mark.parametrize("future", ["shift", "counter-like"])
def test_score_online_is_causal(name: str, future: str) -> None:
    """Later points — a big shift, or a shape that would change a per-series choice (counter-like growth) —
    leave every earlier score unchanged."""
    kind = _kind(name)
    frame = _frame(kind, n=3 * 1440 if name in ("ensemble", "stl") else 900)
    cut = frame["ts"].n_unique() * 2 // 3
    later = pl.col("ts") >= datetime(2026, 1, 1) + timedelta(minutes=cut)
    new = pl.col("value") * 3 + 100 if future == "shift" else pl.col("value").abs().cum_sum().over("series_id") * 50
    changed = frame.with_columns(value=pl.when(later).then(new).otherwise(pl.col("value")))
    a = make_detector(name).score_online(frame).filter(pl.col("ts") < datetime(2026, 1, 1) + timedelta(minutes=cut))
    b = make_detector(name).score_online(changed).filter(pl.col("ts") < datetime(2026, 1, 1) + timedelta(minutes=cut))
    assert a.height > 0
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), rtol=0, atol=1e-9)


def test_get_params_round_trip(name: str) -> None:
    det = make_detector(name, seed=11)
    clone = type(det)(**det.get_params())
    assert clone.get_params() == det.get_params()
    assert det.name == name
