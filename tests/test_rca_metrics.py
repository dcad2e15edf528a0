"""MetricShiftAnalyser on small labelled synthetic incidents."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from rca.base import KINDS, FrameView, RcaIncident, RcaResult
from rca.metrics import MetricShiftAnalyser, common_change_point, rank_services, shift_scores

T0 = datetime(2026, 3, 1, 12, 0)
N_BASE, N_WIN = 300, 120
ONSET = T0 + timedelta(seconds=N_BASE)
END = ONSET + timedelta(seconds=N_WIN)


def _incident(onset: datetime = ONSET) -> RcaIncident:
    return RcaIncident("front-end", None, onset, END, baseline=onset - T0)


def _frames(
    cause: tuple[str, str] = ("payment", "cpu"), shift: float = 8.0, seed: int = 0, drop: bool = False
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Four services x (cpu, memory, latency), Gaussian noise; ``cause`` moves by ``shift`` sigmas at ONSET
    (down when ``drop``), and every other metric gets a smaller echo so the ranking is not trivial."""
    rng = np.random.default_rng(seed)
    services = ["front-end", "carts", "payment", "user"]
    metrics = {"cpu": (20.0, 2.0), "memory": (3e8, 2e6), "latency_p99": (0.2, 0.02)}
    n = N_BASE + N_WIN
    ts = [T0 + timedelta(seconds=i) for i in range(n)]
    rows, points = [], []
    sid = 0
    for service in services:
        for metric, (level, sigma) in metrics.items():
            sid += 1
            rows.append({"series_id": sid, "metric": metric, "service": service, "kind": "gauge"})
            y = level + sigma * rng.standard_normal(n)
            if (service, metric) == cause:
                y[N_BASE:] += (-1 if drop else 1) * shift * sigma
            else:
                y[N_BASE:] += 1.5 * sigma * rng.random()
            points.append(pl.DataFrame({"series_id": sid, "ts": ts, "value": y}))
    return pl.DataFrame(rows), pl.concat(points)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cause", [("payment", "cpu"), ("carts", "latency_p99"), ("user", "memory")])
def test_known_cause_metric_is_top1(cause: tuple[str, str], seed: int) -> None:
    series, points = _frames(cause=cause, seed=seed)
    result = MetricShiftAnalyser().explain(_incident(), FrameView(series=series, points=points))
    top = next(c for c in result.ranked() if c.kind == "metric")
    assert (top.service, top.metric) == cause
    assert rank_services(result)[0] == cause[0]


def test_zero_iqr_series_does_not_dominate() -> None:
    series, points = _frames(cause=("payment", "cpu"), shift=5.0)
    # memory quantised in 4 KiB pages: flat for the whole baseline, then one page more (IQR 0) ...
    flat = np.full(N_BASE + N_WIN, 3e8)
    flat[N_BASE + 10 :] += 4096.0
    # ... and a series that is identically 0 before the onset and barely moves after it
    zero = np.zeros(N_BASE + N_WIN)
    zero[N_BASE + 5] = 0.02
    ts = [T0 + timedelta(seconds=i) for i in range(N_BASE + N_WIN)]
    series = pl.concat(
        [
            series,
            pl.DataFrame(
                {
                    "series_id": [100, 101],
                    "metric": ["memory", "error_ratio"],
                    "service": ["user", "carts"],
                    "kind": ["gauge", "gauge"],
                }
            ),
        ]
    )
    points = pl.concat(
        [
            points,
            pl.DataFrame({"series_id": 100, "ts": ts, "value": flat}),
            pl.DataFrame({"series_id": 101, "ts": ts, "value": zero}),
        ]
    )
    result = MetricShiftAnalyser().explain(_incident(), FrameView(series=series, points=points))
    ranked = [c for c in result.ranked() if c.kind == "metric"]
    assert (ranked[0].service, ranked[0].metric) == ("payment", "cpu")
    by_id = {c.evidence["series_id"]: c for c in ranked}
    assert by_id[100].evidence["scale_source"] == "relative_floor"
    assert by_id[100].score < 1.0  # 4 KiB on 300 MB is far below 1 % of the level
    assert by_id[101].evidence["scale_source"] == "unit"
    assert by_id[101].score == pytest.approx(0.02)
    # the explanation says which spread it used, once (it used to read "(1 unit 1)")
    assert "baseline spread (a floor of 1, the baseline did not vary)" in by_id[101].explanation
    assert "baseline spread (1% of its level, 3e+06)" in by_id[100].explanation
    # without the floor the flat memory series would have been scored in bytes
    raw = shift_scores(points, ONSET, relative_floor=0.0).filter(pl.col("series_id") == 100)
    assert raw["score"][0] == pytest.approx(4096.0)


def test_direction_down_finds_a_drop_and_up_does_not() -> None:
    series, points = _frames(cause=("carts", "cpu"), shift=10.0, drop=True)
    view = FrameView(series=series, points=points)
    down = MetricShiftAnalyser(direction="down").explain(_incident(), view)
    both = MetricShiftAnalyser(direction="both").explain(_incident(), view)
    up = MetricShiftAnalyser(direction="up").explain(_incident(), view)
    assert rank_services(down)[0] == "carts"
    assert rank_services(both)[0] == "carts"
    top_down = next(c for c in down.ranked() if c.kind == "metric")
    assert top_down.evidence["move"] < 0 and "fell" in top_down.explanation
    assert rank_services(up)[0] != "carts"


def test_deterministic_and_does_not_mutate_inputs() -> None:
    series, points = _frames()
    before = points.clone()
    view = FrameView(series=series, points=points)
    a = MetricShiftAnalyser().explain(_incident(), view).to_json()
    b = MetricShiftAnalyser().explain(_incident(), view).to_json()
    assert a == b
    assert points.equals(before)


def test_candidate_schema() -> None:
    series, points = _frames()
    result = MetricShiftAnalyser().explain(_incident(), FrameView(series=series, points=points))
    assert result.analyser == "metric_shift"
    metrics = [c for c in result.candidates if c.kind == "metric"]
    services = [c for c in result.candidates if c.kind == "service"]
    assert len(metrics) == series.height
    assert sorted(c.service for c in services) == sorted(series["service"].unique().to_list())
    for c in result.candidates:
        assert c.kind in KINDS
        assert isinstance(c.score, float) and math.isfinite(c.score)
        assert c.explanation and c.explanation.endswith(".")
        json.dumps(c.evidence)
    for c in metrics:
        assert c.metric is not None
        assert {"baseline_median", "baseline_iqr", "scale", "peak", "peak_ts", "move"} <= set(c.evidence)
    for s in services:
        assert s.score == max(c.score for c in metrics if c.service == s.service)
    json.dumps(result.to_json())


def test_topology_narrows_candidate_services() -> None:
    series, points = _frames(cause=("user", "cpu"))
    edges = pl.DataFrame({"source": ["front-end", "front-end"], "target": ["carts", "payment"]})
    view = FrameView(series=series, points=points, edges=edges)
    result = MetricShiftAnalyser().explain(_incident(), view)
    assert set(rank_services(result)) == {"front-end", "carts", "payment"}
    assert any("topology" in n for n in result.notes)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_onset_search_recovers_a_late_alert(seed: int) -> None:
    series, points = _frames(cause=("payment", "cpu"), shift=8.0, seed=seed)
    view = FrameView(series=series, points=points)
    late = _incident(ONSET + timedelta(seconds=100))

    def cause_score(result: RcaResult) -> float:
        return next(c.score for c in result.candidates if (c.service, c.metric) == ("payment", "cpu"))

    # 100 of 120 anomalous points counted as baseline: the cause hides in its own inflated IQR ...
    blind = MetricShiftAnalyser().explain(late, view)
    found = MetricShiftAnalyser(onset_search=timedelta(seconds=120)).explain(late, view)
    # ... until the common change point puts the onset back where it was
    assert f"to {ONSET:%Y-%m-%d %H:%M:%S}" in " ".join(found.notes)
    assert rank_services(found)[0] == "payment"
    assert cause_score(found) > 2 * cause_score(blind)
    assert common_change_point(points, ONSET - timedelta(seconds=60), ONSET + timedelta(seconds=100)) == ONSET


def test_counters_are_scored_on_their_increments() -> None:
    ts = [T0 + timedelta(seconds=i) for i in range(N_BASE + N_WIN)]
    rate = np.where(np.arange(N_BASE + N_WIN) >= N_BASE, 30.0, 10.0) + np.arange(N_BASE + N_WIN) % 3
    series = pl.DataFrame(
        {
            "series_id": [1, 2],
            "metric": ["errors", "cpu"],
            "service": ["carts", "user"],
            "kind": ["counter", "gauge"],
        }
    )
    points = pl.concat(
        [
            pl.DataFrame({"series_id": 1, "ts": ts, "value": np.cumsum(rate)}),
            pl.DataFrame({"series_id": 2, "ts": ts, "value": 5.0 + np.arange(N_BASE + N_WIN) % 4}),
        ]
    )
    result = MetricShiftAnalyser().explain(_incident(), FrameView(series=series, points=points))
    top = result.ranked()[0]
    assert (top.service, top.metric) == ("carts", "errors")
    assert top.evidence["baseline_median"] == pytest.approx(11.0)


def test_short_series_are_skipped_and_bad_parameters_rejected() -> None:
    series, points = _frames()
    short = points.filter((pl.col("series_id") != 1) | (pl.col("ts") >= ONSET - timedelta(seconds=3)))
    result = MetricShiftAnalyser().explain(_incident(), FrameView(series=series, points=short))
    assert all(c.evidence.get("series_id") != 1 for c in result.candidates)
    assert any("1 series skipped" in n for n in result.notes)
    empty = MetricShiftAnalyser().explain(_incident(), FrameView())
    assert empty.candidates == () and empty.notes
    with pytest.raises(ValueError, match="direction"):
        MetricShiftAnalyser(direction="sideways")  # type: ignore[arg-type]
