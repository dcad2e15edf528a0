"""Multi-dimensional root-cause localisation (rca/dimensions.py) on synthetic leaves and through a FrameView."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from app.rca_eval.dimensions import synthetic_leaves
from rca.base import FrameView, RcaIncident
from rca.dimensions import DimensionAnalyser, localize_dimensions


def _additive_leaves(seed: int = 1) -> pl.DataFrame:
    """Requests per tenant x region x model; tenant t3 in region eu triples, everything else is noise."""
    rng = np.random.default_rng(seed)
    rows = [
        (f"t{t}", r, f"m{m}") for t in range(10) for r in ("eu", "us", "ap", "sa", "af") for m in range(4)
    ]
    frame = pl.DataFrame(rows, schema=["tenant", "region", "model"], orient="row")
    expected = rng.gamma(2.0, 500.0, frame.height)
    actual = expected * rng.normal(1.0, 0.02, frame.height)
    cause = ((frame["tenant"] == "t3") & (frame["region"] == "eu")).to_numpy()
    return frame.with_columns(
        pl.Series("actual", np.where(cause, actual * 3, actual)), pl.Series("expected", expected)
    )


def _error_rate_leaves(seed: int = 2) -> pl.DataFrame:
    """Errors / requests per tenant x model_version x region. v42 fails at ~8% (baseline 0.4%); tenant
    ``big`` carries most traffic and doubles it, so its error *count* rises, but its rate is healthy."""
    rng = np.random.default_rng(seed)
    tenants = ["big", *[f"t{i}" for i in range(12)]]
    rows = [(t, v, r) for t in tenants for v in ("v40", "v41", "v42") for r in ("eu", "us", "ap")]
    frame = pl.DataFrame(rows, schema=["tenant", "model_version", "region"], orient="row")
    big = (frame["tenant"] == "big").to_numpy()
    v42 = (frame["model_version"] == "v42").to_numpy()
    base_requests = np.where(big, 50_000.0, 300.0) * rng.uniform(0.5, 1.5, frame.height)
    base_requests = np.where(v42, base_requests * 0.02, base_requests)  # v42 is a canary: little traffic
    requests = np.where(big, base_requests * 2.0, base_requests)
    rate = np.full(frame.height, 0.004)
    errors = rng.poisson(requests * np.where(v42, 0.08, rate)).astype(float)
    base_errors = rng.poisson(base_requests * rate).astype(float)
    return frame.with_columns(
        pl.Series("errors", errors),
        pl.Series("errors_before", base_errors),
        pl.Series("requests", requests),
        pl.Series("requests_before", base_requests),
    )


def _ratio(frame: pl.DataFrame, **kwargs):
    return localize_dimensions(
        frame,
        ["tenant", "model_version", "region"],
        actual="errors",
        expected="errors_before",
        denominator=("requests", "requests_before"),
        **kwargs,
    )


def test_additive_two_label_cause_found_exactly():
    causes = localize_dimensions(_additive_leaves(), ["tenant", "region", "model"])
    assert [c.key() for c in causes] == ["region=eu&tenant=t3"]
    top = causes[0]
    assert top.labels == {"region": "eu", "tenant": "t3"}
    assert top.explained == pytest.approx(1.0, abs=0.05)
    assert top.change == pytest.approx(3.0, rel=0.05)
    assert top.leaves == 4
    assert top.total_without == pytest.approx(top.total_expected, rel=0.01)


def test_derived_error_rate_blames_the_version_not_the_big_tenant():
    frame = _error_rate_leaves()
    # the trap for explanatory power on counts: the big tenant's errors rise more than v42's (its traffic
    # doubled), yet its error rate is unchanged
    rise = frame.group_by(pl.col("tenant") == "big").agg((pl.col("errors") - pl.col("errors_before")).sum())
    v42 = frame.filter(pl.col("model_version") == "v42")
    assert rise.filter(pl.col("tenant"))["errors"][0] > (v42["errors"] - v42["errors_before"]).sum()
    causes = _ratio(frame)
    assert causes[0].labels == {"model_version": "v42"}
    assert all(c.labels.get("tenant") != "big" for c in causes)
    assert causes[0].actual == pytest.approx(0.08, rel=0.15)
    assert causes[0].expected == pytest.approx(0.004, rel=0.3)
    assert causes[0].explained > 0.8


def test_drop_in_an_additive_kpi():
    frame = _additive_leaves().with_columns(
        pl.when(pl.col("region") == "us")
        .then(pl.col("expected") * 0.2)
        .otherwise(pl.col("actual"))
        .alias("actual")
    )
    causes = localize_dimensions(frame, ["tenant", "region", "model"], direction="down")
    assert causes[0].labels == {"region": "us"}
    assert causes[0].change == pytest.approx(0.2, rel=0.01)


def test_two_elements_of_one_cuboid():
    frame = _additive_leaves().with_columns(
        pl.when(pl.col("region").is_in(["eu", "ap"]))
        .then(pl.col("expected") * pl.when(pl.col("region") == "eu").then(4.0).otherwise(2.5))
        .otherwise(pl.col("actual"))
        .alias("actual")
    )
    causes = localize_dimensions(frame, ["tenant", "region", "model"])
    assert [c.key() for c in causes] == ["region=eu", "region=ap"]
    assert sum(c.explained for c in causes) == pytest.approx(1.0, abs=0.02)


def test_five_labels_with_a_thousand_values_each():
    frame, dims, cause = synthetic_leaves(labels=5, values=1000, leaves=50_000, seed=3)
    assert all(frame[d].n_unique() == 1000 for d in dims)
    causes = localize_dimensions(frame, dims, denominator=("requests", "expected_requests"))
    assert causes[0].labels == cause


def test_deterministic_and_independent_of_row_order():
    frame = _error_rate_leaves()
    first = _ratio(frame)
    again = _ratio(frame)
    shuffled = _ratio(frame.sample(fraction=1.0, shuffle=True, seed=7))

    # parallel float sums may differ in the last bits between runs: same causes, same scores to 9 digits
    def key(causes):
        return [(c.labels, float(f"{c.score:.9g}"), float(f"{c.explained:.9g}"), c.leaves) for c in causes]

    assert key(first) == key(again) == key(shuffled)


def test_input_not_mutated_and_edge_cases():
    frame = _additive_leaves()
    copy = frame.clone()
    localize_dimensions(frame, ["tenant", "region", "model"])
    assert frame.equals(copy)
    assert localize_dimensions(frame.clear(), ["tenant", "region"]) == []
    assert localize_dimensions(frame.with_columns(pl.lit("x").alias("tenant")), ["tenant"]) == []
    with pytest.raises(ValueError, match="no column"):
        localize_dimensions(frame, ["tenant", "zone"])
    # nothing deviates upwards: nothing to report
    flat = frame.with_columns(pl.col("expected").alias("actual"))
    assert localize_dimensions(flat, ["tenant", "region"], direction="up") == []


def _view(t0: datetime, onset: datetime, end: datetime) -> FrameView:
    """Cumulative counters errors_total / requests_total per tenant x model_version for rag-api, one point a
    minute; from ``onset`` model_version v42 fails 8% of requests (0.4% before) and tenant big doubles traffic."""
    rng = np.random.default_rng(5)
    combos = [(t, v) for t in ("big", "a", "b", "c") for v in ("v41", "v42")]
    series, points = [], []
    for i, (tenant, version) in enumerate(combos):
        labels = [{"key": "tenant", "value": tenant}, {"key": "model_version", "value": version}]
        for metric, offset in (("requests_total", 0), ("errors_total", 100)):
            series.append(
                {
                    "series_id": i + offset,
                    "metric": metric,
                    "service": "rag-api",
                    "kind": "counter",
                    "labels": labels,
                }
            )
        requests = errors = 0.0
        ts = t0
        while ts < end:
            rate = 60.0 * (10 if tenant == "big" else 1) * (2 if tenant == "big" and ts >= onset else 1)
            new = float(rng.poisson(rate))
            requests += new
            errors += float(rng.binomial(int(new), 0.08 if version == "v42" and ts >= onset else 0.004))
            points += [
                {"series_id": i, "ts": ts, "value": requests},
                {"series_id": i + 100, "ts": ts, "value": errors},
            ]
            ts += timedelta(minutes=1)
    # an unrelated service's series must be ignored
    series.append(
        {"series_id": 999, "metric": "errors_total", "service": "other", "kind": "counter", "labels": []}
    )
    points.append({"series_id": 999, "ts": t0, "value": 1.0})
    return FrameView(series=pl.DataFrame(series), points=pl.DataFrame(points))


def test_explain_over_a_frame_view():
    t0 = datetime(2026, 1, 1)
    onset, end = t0 + timedelta(minutes=60), t0 + timedelta(minutes=80)
    view = _view(t0, onset, end)
    incident = RcaIncident("rag-api", "error_rate", onset, end)
    analyser = DimensionAnalyser(numerator="errors_total", denominator="requests_total")
    result = analyser.explain(incident, view)
    assert result.analyser == "dimensions"
    top = result.ranked()[0]
    assert top.kind == "dimension"
    assert (top.service, top.metric, top.labels) == ("rag-api", "error_rate", {"model_version": "v42"})
    assert 0.0 < top.score <= 1.0
    assert top.evidence["actual"] == pytest.approx(0.08, rel=0.25)
    assert top.explanation.startswith("error rate of rag-api is ")
    assert "for model_version=v42 (baseline 0." in top.explanation
    assert top.explanation.endswith("of the rise")
    assert all(c.labels.get("tenant") != "big" for c in result.candidates)
    assert result.to_json()["causes"][0]["labels"] == {"model_version": "v42"}

    # scoped to one tenant, the version is still the cause and the tenant label is not searched
    scoped = analyser.explain(RcaIncident("rag-api", "error_rate", onset, end, labels={"tenant": "a"}), view)
    assert scoped.ranked()[0].labels == {"model_version": "v42"}

    # additive: requests rose because tenant big doubled
    requests = DimensionAnalyser().explain(RcaIncident("rag-api", "requests_total", onset, end), view)
    assert requests.ranked()[0].labels == {"tenant": "big"}


def test_explain_notes_when_there_is_nothing_to_search():
    t0 = datetime(2026, 1, 1)
    view = _view(t0, t0 + timedelta(minutes=60), t0 + timedelta(minutes=70))
    incident = RcaIncident("rag-api", "latency", t0 + timedelta(minutes=60), t0 + timedelta(minutes=70))
    result = DimensionAnalyser().explain(incident, view)
    assert result.candidates == () and "no series of latency" in result.notes[0]
    no_metric = RcaIncident("rag-api", None, t0, t0 + timedelta(minutes=5))
    assert DimensionAnalyser().explain(no_metric, view).notes


def test_a_share_above_all_of_the_change_is_worded_as_such():
    from rca.dimensions import DimensionCause, _sentence

    def cause(explained: float) -> DimensionCause:
        return DimensionCause(
            labels={"region": "us-west"}, score=10.0, actual=0.6, expected=0.01, change=60.0, explained=explained,
            total_actual=0.2, total_expected=0.01, total_without=0.0, leaves=3,
        )

    assert _sentence("error rate", "api", cause(0.42), True).endswith("explaining 42% of the rise")
    assert _sentence("error rate", "api", cause(1.003), True).endswith("explaining 100% of the rise")
    assert _sentence("error rate", "api", cause(1.01), True).endswith("explaining all of the rise")
    assert _sentence("error rate", "api", cause(1.3), True).endswith(
        "explaining all of the rise (the rest moved the other way)"
    )
