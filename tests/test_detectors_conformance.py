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
            frame = {
                "series_id": [sid] * n,
                "ts": ts,
                "value": rng.binomial(total.astype(int), 0.01).astype(float),
                "total": total,
            }
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
        assert (
            out.select("series_id", "ts")
            .sort("series_id", "ts")
            .equals(frame.select("series_id", "ts").sort("series_id", "ts"))
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
    new = (
        pl.col("value") * 3 + 100
        if future == "shift"
        else pl.col("value").abs().cum_sum().over("series_id") * 50
    )
    changed = frame.with_columns(value=pl.when(later).then(new).otherwise(pl.col("value")))
    a = (
        make_detector(name)
        .score_online(frame)
        .filter(pl.col("ts") < datetime(2026, 1, 1) + timedelta(minutes=cut))
    )
    b = (
        make_detector(name)
        .score_online(changed)
        .filter(pl.col("ts") < datetime(2026, 1, 1) + timedelta(minutes=cut))
    )
    assert a.height > 0
    np.testing.assert_allclose(a["score"].to_numpy(), b["score"].to_numpy(), rtol=0, atol=1e-9)


def test_get_params_round_trip(name: str) -> None:
    det = make_detector(name, seed=11)
    clone = type(det)(**det.get_params())
    assert clone.get_params() == det.get_params()
    assert det.name == name


def _split(frame: pl.DataFrame, *fractions: float) -> list[pl.DataFrame]:
    """``frame`` cut by time at the given fractions of its timestamps."""
    ts = frame["ts"].unique().sort()
    cuts = [ts[int(f * ts.len())] for f in fractions]
    bounds = [None, *cuts, None]
    return [
        frame.filter(
            (pl.lit(True) if a is None else pl.col("ts") >= a)
            & (pl.lit(True) if b is None else pl.col("ts") < b)
        )
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def test_score_update_is_score_then_update(name: str) -> None:
    """``score_update`` (what ``rootwise detect`` runs on new points) scores like ``score`` and leaves the
    detector as ``update`` would: the next scores agree too."""
    first, second, third = _split(_frame(_kind(name)), 0.6, 0.8)
    a = make_detector(name).fit(first)
    b = pickle.loads(pickle.dumps(a))
    scores_a = a.score(second)
    a.update(second)
    scores_b = b.score_update(second)
    assert scores_b.schema == pl.Schema(SCORES)
    np.testing.assert_allclose(scores_a["score"], scores_b["score"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.score(third)["score"], b.score(third)["score"], rtol=1e-12, atol=1e-12)


def test_fit_score_online_is_score_online_then_fit(name: str) -> None:
    """``fit_score_online`` (``rootwise detect`` on series seen for the first time) gives the causal scores
    of ``score_online`` and a state that scores the next points like ``fit`` does."""
    kind = _kind(name)
    history, rest = _split(_frame(kind, n=3 * 1440 if name in ("ensemble", "stl") else 900), 0.9)
    a = make_detector(name)
    scores_a = a.score_online(history)
    a.fit(history)
    b = make_detector(name)
    scores_b = b.fit_score_online(history)
    np.testing.assert_allclose(scores_a["score"], scores_b["score"], rtol=0, atol=0)
    np.testing.assert_allclose(a.score(rest)["score"], b.score(rest)["score"], rtol=1e-12, atol=1e-12)


#: the families whose state continues the stream exactly, run after run (the streaming detector, the
#: ensemble's streaming member, NAB's windowed Gaussian)
_CONTINUED = ("streaming", "windowed-gaussian", "ensemble")


def test_score_update_in_runs_of_mixed_sizes(name: str) -> None:
    """``rootwise detect`` scores whatever arrived since its last run — a few points, or hours of catch-up —
    with ``score_update``: runs of mixed sizes score like one run, and causal families like one causal pass
    over the whole stream (an independent computation: no state, no incremental path)."""
    if name not in _CONTINUED:
        pytest.skip("its state does not continue the stream point for point")
    det = make_detector(name)
    frame = _frame(_kind(name), n=5 * 1440 if name == "ensemble" else 900)
    # the ensemble's history is long enough for its seasonal member; one run is longer than its calibration
    # window, others are a few points or just below or above the calibration's switch to a rolling pass
    cuts = (0.45, 0.4505, 0.7, 0.71, 0.73) if name == "ensemble" else (0.2, 0.203, 0.5, 0.6, 0.62)
    history, *runs = _split(frame, *cuts)
    assert all(run.height for run in runs)
    whole = pl.concat(runs)
    a = make_detector(name).fit(history)
    b = pickle.loads(pickle.dumps(a))
    one_run = a.score_update(whole).sort("series_id", "ts")
    pieces = []
    for run in runs:
        pieces.append(b.score_update(run))
        b = pickle.loads(pickle.dumps(b))  # the state goes through the store between runs
    in_runs = pl.concat(pieces).sort("series_id", "ts")
    assert in_runs.select("series_id", "ts").equals(one_run.select("series_id", "ts"))
    np.testing.assert_allclose(in_runs["score"], one_run["score"], rtol=1e-12, atol=1e-12)
    # and the states agree: whatever comes next scores the same
    np.testing.assert_allclose(a.score(whole)["score"], b.score(whole)["score"], rtol=1e-12, atol=1e-12)
    if det.causal:
        online = (
            make_detector(name)
            .score_online(frame)
            .join(in_runs.select("series_id", "ts"), on=["series_id", "ts"])
        )
        np.testing.assert_allclose(
            in_runs["score"], online.sort("series_id", "ts")["score"], rtol=1e-12, atol=1e-12
        )
