"""Multi-dimensional root-cause localisation: which label combinations explain a KPI's deviation.

A KPI aggregated over labels (tenant, model, model_version, region, ...) deviates from its expected value; the
*leaves* are the finest label combinations, each with an actual and an expected value. An *element* fixes up to
``max_order`` labels (``{"model_version": "v42"}``, ``{"tenant": "t1", "region": "eu"}``) and covers the leaves
that match; the root cause is a small set of elements.

The method (our own; ideas from the papers named):

* **Surprise as a likelihood ratio.** Each leaf's actual count ``x`` is compared with the count ``e`` the
  baseline predicts. For a derived ratio KPI (errors / requests) ``e`` is the leaf's *actual* denominator times
  its baseline ratio, so traffic shifts are not mistaken for failures (the trap that makes additive methods
  fail on derived KPIs). Baseline ratios of small leaves are shrunk towards the overall ratio
  (empirical Bayes), so one error on a leaf with no history is not a 100% error rate. An element's score is
  the Poisson log-likelihood ratio of "its rate changed by one common factor" against "nothing changed",
  ``x log(x/e) - x + e`` over its summed counts: the scan statistic of Kulldorff (1997), a KL-divergence
  surprise in the spirit of Adtributor's, and a vectorised group-by per label subset (cuboid).
* **Ripple effect.** The scan favours the element whose leaves deviate *together*; a finer element wins when
  only part of a broader one is affected. When the true cause is broad but uneven (one child worse than its
  siblings), the scan picks the child; we then *generalise*: move to a parent when the siblings outside the
  child also deviate in the same direction with a comparable relative change (``min_lift``), a real share of
  the child's excess (``min_share``) and significance (``min_z``) -- HotSpot's and Squeeze's ripple effect,
  RiskLoc's 2-way partition of deviating vs normal leaves.
* **A few elements.** The chosen element's leaves are then treated as explained (their expectation set to
  the actuals) and the scan repeats within the first element's cuboid (Squeeze's assumption that the
  elements of one root cause share their labels); a further element is kept only while its surprise is a
  sizeable share of the first one's (``min_relative_score``) and it accounts for ``min_explained`` of the
  deviation, up to ``max_elements``.

Evidence per element: actual and expected KPI inside the element, their ratio, the share of the total
deviation it explains (Adtributor's explanatory power) and the total KPI without it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

from rca.base import Candidate, RcaIncident, RcaResult, View

Direction = Literal["auto", "up", "down", "both"]

#: smallest expected count of a leaf: keeps ``log(x / e)`` finite for leaves with no baseline
_TINY = 1e-9


@dataclass(frozen=True)
class DimensionCause:
    """One element of the root-cause set, with its evidence.

    ``labels`` is the label combination; ``score`` the scan statistic (Poisson log-likelihood ratio, higher =
    more surprising); ``actual``/``expected`` the KPI inside the element (a sum for additive KPIs, a ratio for
    derived ones) and ``change`` their ratio; ``explained`` the share of the total deviation it accounts for
    (can exceed 1 when other leaves moved the other way); ``total_actual``, ``total_expected`` and
    ``total_without`` the whole KPI now, at baseline, and with this element back at its baseline; ``leaves``
    how many leaves it covers.
    """

    labels: dict[str, str]
    score: float
    actual: float
    expected: float
    change: float
    explained: float
    total_actual: float
    total_expected: float
    total_without: float
    leaves: int

    def key(self) -> str:
        """The element as ``a=1&b=2`` with labels sorted (RiskLoc's notation)."""
        return "&".join(f"{k}={v}" for k, v in sorted(self.labels.items()))

    def evidence(self) -> dict[str, Any]:
        """JSON-ready evidence."""
        return {
            "actual": self.actual,
            "expected": self.expected,
            "change": self.change,
            "explained": self.explained,
            "surprise": self.score,
            "kpi_actual": self.total_actual,
            "kpi_expected": self.total_expected,
            "kpi_without": self.total_without,
            "leaves": self.leaves,
        }


def localize_dimensions(
    leaves: pl.DataFrame,
    dims: Sequence[str],
    *,
    actual: str = "actual",
    expected: str = "expected",
    denominator: tuple[str, str] | None = None,
    max_order: int = 3,
    max_elements: int = 3,
    direction: Direction = "auto",
    prior_weight: float = 20.0,
    min_lift: float = 0.2,
    min_share: float = 0.05,
    min_z: float = 3.0,
    min_relative_score: float = 0.2,
    min_explained: float = 0.1,
) -> list[DimensionCause]:
    """The root-cause set of a deviating KPI, most surprising element first.

    Parameters
    ----------
    leaves
        One row per leaf label combination: the ``dims`` columns plus value columns.
    dims
        Label columns to search (constant ones are skipped).
    actual, expected
        Actual and expected value of the KPI (additive) or of its numerator (derived ratio).
    denominator
        For a ratio KPI (error rate = errors / requests): the actual and expected denominator columns.
    max_order
        Most labels combined in one element.
    max_elements
        Most elements in the set.
    direction
        Which deviations count: ``"up"`` (more than expected, e.g. errors), ``"down"``, ``"both"``, or
        ``"auto"`` (the direction of the whole KPI's deviation).
    prior_weight
        Ratio KPIs: weight, in denominator units, of the overall baseline ratio in each leaf's baseline ratio.
    min_lift, min_share, min_z
        Generalisation: a parent replaces an element when the parent's other leaves changed by at least
        ``min_lift`` of the element's relative change (on a log scale), add ``min_share`` of its excess and
        are ``min_z`` Poisson standard deviations from expected.
    min_relative_score, min_explained
        A further element needs at least ``min_relative_score`` of the first element's score and must
        account for ``min_explained`` of the whole KPI's deviation.

    Examples
    --------
    An additive KPI (requests) where tenant ``t2`` on ``eu`` doubled:

    >>> leaves = pl.DataFrame({
    ...     "tenant": ["t1", "t1", "t2", "t2"], "region": ["eu", "us", "eu", "us"],
    ...     "actual": [100.0, 101.0, 200.0, 99.0], "expected": [100.0, 100.0, 100.0, 100.0]})
    >>> causes = localize_dimensions(leaves, ["tenant", "region"])
    >>> [c.key() for c in causes], round(causes[0].explained, 2)
    (['region=eu&tenant=t2'], 1.0)
    """
    if max_order < 1 or max_elements < 1:
        raise ValueError("max_order and max_elements must be at least 1")
    missing = [c for c in (*dims, actual, expected, *(denominator or ())) if c not in leaves.columns]
    if missing:
        raise ValueError(f"leaf frame has no column(s) {', '.join(missing)}")
    model, values = _leaf_model(leaves, dims, actual, expected, denominator, prior_weight)
    codes = [c for c in values if len(values[c][1]) > 1]  # a constant label explains nothing
    if model.height == 0 or not codes:
        return []
    total_x, total_e = _sums(model, pl.lit(True))
    deviation = total_x - total_e
    if direction == "auto":
        direction = "up" if deviation >= 0 else "down"
    deviation = abs(deviation)

    cuboids = [
        list(subset)
        for order in range(1, min(max_order, len(codes)) + 1)
        for subset in itertools.combinations(codes, order)
    ]
    chosen: list[dict[str, int]] = []
    scores: list[float] = []
    work = model
    for _ in range(max_elements):
        best = _best_element(work, cuboids, direction)
        if best is None:
            break
        element, score = best
        if not chosen:
            element, score = _generalise(work, element, score, min_lift, min_share, min_z)
            # further elements come from the first one's cuboid (Squeeze's assumption: the elements of one
            # root cause share their labels), so a global shift cannot pass as a second cause
            cuboids = [[c for c in codes if c in element]]
        elif score < min_relative_score * scores[0] or _excess(model, element) < min_explained * deviation:
            break
        chosen.append(element)
        scores.append(score)
        inside = _matches(element)
        work = work.with_columns(pl.when(inside).then(pl.col("x")).otherwise(pl.col("e")).alias("e"))
    return [_cause(model, e, s, values, denominator is not None) for e, s in zip(chosen, scores, strict=True)]


def _leaf_model(
    leaves: pl.DataFrame,
    dims: Sequence[str],
    actual: str,
    expected: str,
    denominator: tuple[str, str] | None,
    prior_weight: float,
) -> tuple[pl.DataFrame, dict[str, tuple[str, list[str]]]]:
    """Leaves with each dim as dense codes in column ``d<i>`` (codes follow the sorted values, so ties break
    the same way every run) and the counts the scan needs: ``x`` actual, ``e`` expected under the baseline,
    plus the raw sums for evidence. Also returns ``d<i>`` → (label name, sorted values)."""
    names = [f"d{i}" for i in range(len(dims))]
    text = leaves.select(
        *[pl.col(d).cast(pl.Utf8).fill_null("").alias(n) for d, n in zip(dims, names, strict=True)],
        pl.col(actual).cast(pl.Float64).fill_null(0.0).alias("na"),
        pl.col(expected).cast(pl.Float64).fill_null(0.0).alias("ne"),
        *(
            [
                pl.col(denominator[0]).cast(pl.Float64).fill_null(0.0).alias("da"),
                pl.col(denominator[1]).cast(pl.Float64).fill_null(0.0).alias("de"),
            ]
            if denominator
            else [pl.lit(0.0).alias("da"), pl.lit(0.0).alias("de")]
        ),
    )
    values = {n: (d, text[n].unique().sort().to_list()) for d, n in zip(dims, names, strict=True)}
    coded = text.with_columns(*[(pl.col(n).rank("dense") - 1).cast(pl.UInt32) for n in names])
    if denominator:
        # baseline ratio per leaf, shrunk towards the overall baseline ratio (empirical Bayes)
        overall = float(coded["ne"].sum()) / max(float(coded["de"].sum()), _TINY)
        rate = (pl.col("ne") + prior_weight * overall) / (pl.col("de") + prior_weight)
        model = coded.with_columns(pl.col("na").alias("x"), (pl.col("da") * rate).alias("e"))
    else:
        model = coded.with_columns(pl.col("na").alias("x"), pl.col("ne").alias("e"))
    model = model.with_columns(pl.col("x").clip(0.0), pl.col("e").clip(_TINY))
    return model, values


def _llr(x: pl.Expr, e: pl.Expr) -> pl.Expr:
    """Poisson log-likelihood ratio of rate ``x/e`` against rate 1 (0 when ``x = e``)."""
    return pl.when(x > 0).then(x * (x / e).log()).otherwise(0.0) - x + e


def _rank_key(score: pl.Expr) -> pl.Expr:
    """Scores rounded to 9 significant digits, so float noise from summation order never breaks a tie
    between elements covering the same leaves."""
    magnitude = pl.lit(10.0).pow(score.abs().clip(1e-300).log10().floor() - 8).fill_nan(1.0).fill_null(1.0)
    return (score / magnitude).round(0) * magnitude


def _best_element(
    model: pl.DataFrame, cuboids: Sequence[Sequence[str]], direction: str
) -> tuple[dict[str, int], float] | None:
    """The highest-scoring element of the given cuboids (ties: fewer labels, then smaller codes)."""
    queries = []
    for subset in cuboids:
        q = model.lazy().group_by(subset).agg(pl.col("x").sum(), pl.col("e").sum())
        if direction == "up":
            q = q.filter(pl.col("x") > pl.col("e"))
        elif direction == "down":
            q = q.filter(pl.col("x") < pl.col("e"))
        q = (
            q.with_columns(_llr(pl.col("x"), pl.col("e")).alias("score"), pl.lit(len(subset)).alias("order"))
            .with_columns(_rank_key(pl.col("score")).alias("key"))
            .sort(["key", *subset], descending=[True, *[False] * len(subset)])
            .head(1)
            .select("key", "score", "order", *subset)
        )
        queries.append(q)
    tops = pl.concat(pl.collect_all(queries), how="diagonal")
    if tops.height == 0:
        return None
    codes = [c for c in model.columns if c in tops.columns and c not in ("key", "score", "order")]
    tops = tops.sort(
        ["key", "order", *codes], descending=[True, False, *[False] * len(codes)], nulls_last=True
    )
    row = tops.row(0, named=True)
    if row["score"] <= 0:
        return None
    return {c: int(row[c]) for c in codes if row[c] is not None}, float(row["score"])


def _matches(element: dict[str, int]) -> pl.Expr:
    return pl.all_horizontal([pl.col(d) == v for d, v in element.items()])


def _sums(model: pl.DataFrame, where: pl.Expr) -> tuple[float, float]:
    s = model.filter(where).select(pl.col("x").sum(), pl.col("e").sum())
    return float(s["x"][0]), float(s["e"][0])


def _excess(model: pl.DataFrame, element: dict[str, int]) -> float:
    x, e = _sums(model, _matches(element))
    return abs(x - e)


def _generalise(
    model: pl.DataFrame,
    element: dict[str, int],
    score: float,
    min_lift: float,
    min_share: float,
    min_z: float,
) -> tuple[dict[str, int], float]:
    """Walk up to a parent while the parent's other leaves deviate like the element (ripple effect)."""
    total_x, total_e = _sums(model, pl.lit(True))
    while len(element) > 1:
        x, e = _sums(model, _matches(element))
        best: tuple[float, dict[str, int]] | None = None
        for drop in sorted(element):
            parent = {d: v for d, v in element.items() if d != drop}
            px, pe = _sums(model, _matches(parent))
            rest_x, rest_e = px - x, pe - e
            out_x, out_e = total_x - px, total_e - pe
            if rest_e <= _TINY or out_e <= _TINY:
                continue
            # drift of everything outside the parent is the reference (a service-wide shift is no cause)
            theta_out = max(out_x, 0.5) / out_e
            base = rest_e * theta_out
            excess, child_excess = rest_x - base, x - e * theta_out
            theta_child = max(x, 1e-3) / e / theta_out
            theta_rest = max(rest_x, 1e-3) / rest_e / theta_out
            if abs(math.log(theta_child)) < 1e-12:
                continue
            lift = math.log(theta_rest) / math.log(theta_child)
            share = excess / child_excess if child_excess else 0.0
            z = abs(excess) / math.sqrt(base)
            if lift >= min_lift and share >= min_share and z >= min_z:
                parent_score = _llr_value(px, pe)
                if best is None or parent_score > best[0]:
                    best = (parent_score, parent)
        if best is None:
            break
        score, element = best
    return element, score


def _llr_value(x: float, e: float) -> float:
    e = max(e, _TINY)
    return (x * math.log(x / e) if x > 0 else 0.0) - x + e


def _cause(
    model: pl.DataFrame,
    element: dict[str, int],
    score: float,
    values: dict[str, tuple[str, list[str]]],
    ratio: bool,
) -> DimensionCause:
    cols = ["x", "e", "na", "ne", "da", "de"]
    tot = model.select(pl.col(cols).sum()).row(0, named=True)
    sub = model.filter(_matches(element)).select(pl.col(cols).sum(), pl.len().alias("n")).row(0, named=True)
    deviation = tot["x"] - tot["e"]
    explained = (sub["x"] - sub["e"]) / deviation if abs(deviation) > _TINY else 0.0
    if ratio:
        actual = sub["na"] / sub["da"] if sub["da"] > 0 else math.nan
        expected = sub["ne"] / sub["de"] if sub["de"] > 0 else sub["e"] / max(sub["da"], _TINY)
        total_actual = tot["na"] / tot["da"] if tot["da"] > 0 else math.nan
        total_expected = tot["ne"] / tot["de"] if tot["de"] > 0 else math.nan
        total_without = (tot["na"] - sub["x"] + sub["e"]) / tot["da"] if tot["da"] > 0 else math.nan
    else:
        actual, expected = sub["na"], sub["ne"]
        total_actual, total_expected = tot["na"], tot["ne"]
        total_without = tot["na"] - sub["na"] + sub["ne"]
    change = actual / expected if expected else math.inf
    return DimensionCause(
        labels=dict(sorted((values[n][0], values[n][1][c]) for n, c in element.items())),
        score=score,
        actual=actual,
        expected=expected,
        change=change,
        explained=explained,
        total_actual=total_actual,
        total_expected=total_expected,
        total_without=total_without,
        leaves=int(sub["n"]),
    )


#: value columns of the leaf frame ``DimensionAnalyser`` builds (underscored: label names rarely are)
_ACT, _EXP, _ACT_DEN, _EXP_DEN = "_actual", "_expected", "_actual_den", "_expected_den"


@dataclass(frozen=True, kw_only=True)
class DimensionAnalyser:
    """Explain an incident by the label combinations of its KPI that deviate (see :func:`localize_dimensions`).

    The leaves are the series of ``incident.metric`` of ``incident.service`` (within ``incident.labels``),
    keyed by their labels; a leaf's actual value is its sum over the incident window ``[onset, end)``
    (counters as increments; gauges as the mean), its expected value the same over the baseline window
    ``[baseline_start, onset)`` scaled to the incident window's length (by intervals seen, so one missing
    point does not read as a change). For a ratio KPI name the
    ``numerator`` and ``denominator`` metrics (e.g. ``errors_total`` / ``requests_total``); their series are
    matched on the labels they share.

    Parameters
    ----------
    numerator, denominator
        Metrics of a ratio KPI; both ``None`` for an additive KPI (``incident.metric`` itself).
    dims
        Labels to search; ``None``: every label of the series except those fixed by ``incident.labels``.
    kpi_name
        What the explanation calls the KPI; default ``incident.metric`` with spaces for underscores.
    max_order, max_elements, direction
        As in :func:`localize_dimensions`.

    Examples
    --------
    Requests of tenant ``t2`` on model ``m1`` triple after 01:00:

    >>> from datetime import datetime, timedelta
    >>> from rca.base import FrameView
    >>> combos = [("t1", "m1"), ("t1", "m2"), ("t2", "m1"), ("t2", "m2")]
    >>> series = pl.DataFrame({
    ...     "series_id": [1, 2, 3, 4], "metric": "requests", "service": "rag-api", "kind": "delta",
    ...     "labels": [[{"key": "tenant", "value": t}, {"key": "model", "value": m}] for t, m in combos]})
    >>> t0 = datetime(2026, 1, 1)
    >>> points = pl.DataFrame([
    ...     {"series_id": s, "ts": t0 + timedelta(minutes=i), "value": 30.0 if (s == 3 and i >= 60) else 10.0}
    ...     for s in (1, 2, 3, 4) for i in range(90)])
    >>> view = FrameView(series=series, points=points)
    >>> incident = RcaIncident("rag-api", "requests", t0 + timedelta(minutes=60), t0 + timedelta(minutes=90))
    >>> top = DimensionAnalyser().explain(incident, view).ranked()[0]
    >>> top.labels, top.explanation
    ({'model': 'm1', 'tenant': 't2'}, 'requests of rag-api is 900 for model=m1, tenant=t2 (baseline 300), explaining 100% of the rise')
    """

    numerator: str | None = None
    denominator: str | None = None
    dims: tuple[str, ...] | None = None
    kpi_name: str | None = None
    max_order: int = 3
    max_elements: int = 3
    direction: Direction = "auto"

    name = "dimensions"

    def explain(self, incident: RcaIncident, view: View) -> RcaResult:
        ratio = self.numerator is not None and self.denominator is not None
        metric = self.numerator if ratio else incident.metric
        if metric is None:
            return RcaResult(self.name, notes=("dimensions: the incident names no metric to localise",))
        numerator = _window_values(view, incident, metric)
        if numerator is None:
            return RcaResult(self.name, notes=(f"dimensions: no series of {metric} for {incident.service}",))
        frame, keys = numerator
        if ratio:
            assert self.denominator is not None
            denominator = _window_values(view, incident, self.denominator)
            if denominator is None:
                return RcaResult(
                    self.name, notes=(f"dimensions: no series of {self.denominator} for {incident.service}",)
                )
            den_frame, den_keys = denominator
            keys = [k for k in keys if k in den_keys]
        dims = [k for k in (self.dims or keys) if k in keys and k not in incident.labels]
        if not dims:
            return RcaResult(
                self.name, notes=(f"dimensions: the series of {metric} have no labels to search",)
            )
        leaves = _by_dims(frame, dims, _ACT, _EXP)
        if ratio:
            den = _by_dims(den_frame, dims, _ACT_DEN, _EXP_DEN)
            leaves = leaves.join(den, on=dims, how="full", coalesce=True, nulls_equal=True).fill_null(0.0)
        causes = localize_dimensions(
            leaves,
            dims,
            actual=_ACT,
            expected=_EXP,
            denominator=(_ACT_DEN, _EXP_DEN) if ratio else None,
            max_order=self.max_order,
            max_elements=self.max_elements,
            direction=self.direction,
        )
        kpi = self.kpi_name or (incident.metric or f"{self.numerator}/{self.denominator}").replace("_", " ")
        candidates = tuple(
            Candidate(
                kind="dimension",
                service=incident.service,
                metric=incident.metric,
                labels=dict(cause.labels),
                score=max(0.0, min(1.0, cause.explained)),
                evidence=cause.evidence(),
                explanation=_sentence(kpi, incident.service, cause, ratio),
            )
            for cause in causes
        )
        notes = () if candidates else (f"dimensions: no label combination of {metric} deviates",)
        return RcaResult(self.name, candidates, notes)


def _window_values(view: View, incident: RcaIncident, metric: str) -> tuple[pl.DataFrame, list[str]] | None:
    """Per series of ``metric``: its labels as columns, the incident-window value and the scaled baseline."""
    series = view.series(metric=metric, service=incident.service)
    if series.height == 0:
        return None
    labels = (
        series.select("series_id", "labels")
        .explode("labels")
        .unnest("labels")
        .filter(pl.col("key").is_not_null())
        .unique(["series_id", "key"], keep="first")
    )
    keys = sorted(labels["key"].unique().to_list())
    wide = series.select("series_id")
    if keys:
        wide = wide.join(
            labels.pivot(on="key", index="series_id", values="value"), on="series_id", how="left"
        )
    for key, value in incident.labels.items():  # scope: series carrying every incident label
        wide = wide.filter(pl.col(key) == value) if key in wide.columns else wide.clear()
    if wide.height == 0:
        return None
    start, onset, end = incident.baseline_start, incident.onset, incident.end
    # the view sums each series over both windows where the data lives (DuckDB for the store)
    sums = view.window_sums(wide["series_id"].to_list(), start, onset, end)
    sums = sums.join(series.select("series_id", "kind"), on="series_id", how="left")
    # sums are scaled by intervals seen (a counter's first point in the window yields no increment), or by
    # duration when the series stopped reporting
    duration = (end - onset) / (onset - start) if onset > start else 0.0
    n_now, n_before = pl.col("n_now"), pl.col("n_before")
    scale = pl.when((n_now > 0) & (n_before > 0)).then(n_now / n_before).otherwise(duration)
    additive = pl.col("kind").is_in(["counter", "delta"])
    values = sums.select(
        "series_id",
        pl.when(additive).then(pl.col("sum_now")).otherwise(pl.col("sum_now") / n_now).alias("_now"),
        pl.when(additive)
        .then(pl.col("sum_before") * scale)
        .otherwise(pl.col("sum_before") / n_before)
        .alias("_before"),
    )
    frame = wide.join(values, on="series_id", how="left").with_columns(
        pl.col("_now", "_before").fill_null(0.0).fill_nan(0.0)
    )
    return frame, keys


def _by_dims(frame: pl.DataFrame, dims: list[str], actual: str, expected: str) -> pl.DataFrame:
    return (
        frame.with_columns(pl.col(dims).fill_null(""))
        .group_by(dims)
        .agg(pl.col("_now").sum().alias(actual), pl.col("_before").sum().alias(expected))
    )


def _fmt(value: float, ratio: bool) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if ratio and 0.0 <= value <= 1.0:
        return f"{value:.1%}" if value >= 0.001 else f"{value:.2%}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _sentence(kpi: str, service: str, cause: DimensionCause, ratio: bool) -> str:
    where = ", ".join(f"{k}={v}" for k, v in cause.labels.items())
    moved = "rise" if cause.total_actual >= cause.total_expected else "drop"
    # above 100 %: the rest moved the other way a little ("explaining 101 %" reads as an error)
    share = f"{cause.explained:.0%}" if cause.explained < 1.005 else "all"
    against = " (the rest moved the other way)" if cause.explained >= 1.05 else ""
    return (
        f"{kpi} of {service} is {_fmt(cause.actual, ratio)} for {where} "
        f"(baseline {_fmt(cause.expected, ratio)}), explaining {share} of the {moved}{against}"
    )
