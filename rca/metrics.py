"""Metric-shift root-cause ranking: which metric moved most at the onset, BARO style.

BARO (Pham, Ha & Zhang, "BARO: Robust Root Cause Analysis for Microservices via Multivariate Bayesian Online
Change Point Detection", FSE 2024) ranks every metric by its *RobustScorer*: fit scikit-learn's
``RobustScaler`` (median, inter-quartile range) on the metric before the anomaly and take the largest scaled
value after it, ``max_t (x_t - median_baseline) / IQR_baseline``; a service ranks by its best metric.
:class:`MetricShiftAnalyser` does the same over the points of a :class:`rca.base.View`, with two changes:

* **Scale floor.** ``RobustScaler`` replaces a zero IQR by 1 *in the metric's unit*, so a flat baseline
  (memory quantised in 4 KiB pages, a pinned latency bucket) scores its first wobble in raw units — which is
  why BARO/RCAEval convert memory to MB before scoring. Here the scale is
  ``max(IQR, relative_floor * |median|)``: a move smaller than ``relative_floor`` (1 %) of the metric's level
  is never worth more than one spread unit, whatever the unit. Only a baseline that is identically 0 falls
  back to 1 unit (BARO's behaviour), where any departure from 0 is a real change.
* **Direction.** BARO's score is signed (the largest *increase*); ``direction`` also allows ``"down"`` or
  ``"both"`` (largest absolute move). ``"up"`` is the default: saturation faults (CPU, memory, latency,
  errors) raise their own metrics, while drops are mostly effects (less traffic behind a slow service) or
  level differences between recording sessions; on the Sock Shop data, ``"both"`` loses AC@1 when the floor
  is small (database memory was lower on the day the anomalous windows were recorded).

The onset is the incident's. When it is only approximate (an alert that fires late), ``onset_search`` moves it
to the most likely common change point within ``± onset_search``: the split that maximises the summed
Gaussian mean-shift likelihood ratio over all series, a one-shot stand-in for BARO's multivariate BOCPD (Adams
& MacKay 2007) that is vectorised over series and candidate splits instead of stepping point by point.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar, Literal

import numpy as np
import polars as pl

from rca.base import Candidate, RcaIncident, RcaResult, View, increments, labels_dict, points_with_totals

Direction = Literal["up", "down", "both"]


@dataclass(frozen=True)
class MetricShiftAnalyser:
    """Rank metrics, then services, by the robustly scaled shift of each metric after the onset.

    Parameters
    ----------
    direction
        ``"up"`` scores the largest rise above the baseline median (BARO), ``"down"`` the largest fall,
        ``"both"`` the larger of the two.
    relative_floor
        Smallest scale, as a fraction of ``|baseline median|``; keeps a zero-IQR (flat or quantised) series
        from scoring a tiny wobble as a huge shift.
    min_points
        Series with fewer baseline or window points are skipped (an IQR of three points is noise).
    onset_search
        When set, the onset is re-estimated as the common change point within ``± onset_search`` of the
        incident's onset (see the module docstring); ``None`` trusts the incident.
    max_metric_candidates
        How many metric candidates the result keeps (service candidates are always all kept).

    Examples
    --------
    >>> from datetime import datetime, timedelta
    >>> from rca.base import FrameView
    >>> t0 = datetime(2026, 1, 1)
    >>> ts = [t0 + timedelta(seconds=i) for i in range(120)]
    >>> s = pl.DataFrame({"series_id": [1, 2], "metric": ["cpu", "cpu"], "service": ["carts", "user"],
    ...                   "kind": ["gauge", "gauge"]})
    >>> wobble = [1.0 + 0.1 * (i % 5) for i in range(120)]
    >>> p = pl.DataFrame({"series_id": [1] * 120 + [2] * 120, "ts": ts * 2,
    ...                   "value": [v + (5.0 if i >= 100 else 0.0) for i, v in enumerate(wobble)] + wobble})
    >>> inc = RcaIncident("front-end", None, ts[100], ts[-1] + timedelta(seconds=1))
    >>> result = MetricShiftAnalyser().explain(inc, FrameView(series=s, points=p))
    >>> rank_services(result)
    ['carts', 'user']
    >>> top = result.ranked()[0]
    >>> top.kind, top.service, top.metric, round(top.score, 1)
    ('metric', 'carts', 'cpu', 26.0)
    """

    direction: Direction = "up"
    relative_floor: float = 0.01
    min_points: int = 10
    onset_search: timedelta | None = None
    max_metric_candidates: int = 100

    name: ClassVar[str] = "metric_shift"

    def __post_init__(self) -> None:
        if self.direction not in ("up", "down", "both"):
            raise ValueError(f"direction must be 'up', 'down' or 'both', not {self.direction!r}")
        if self.relative_floor < 0:
            raise ValueError("relative_floor must be >= 0")

    def explain(self, incident: RcaIncident, view: View) -> RcaResult:
        """Metric and service candidates for ``incident``, scored from the points in ``view``."""
        notes: list[str] = []
        catalog = view.series()
        allowed = candidate_services(incident.service, view.edges())
        if allowed is not None:
            catalog = catalog.filter(pl.col("service").is_in(sorted(allowed)))
            notes.append(f"topology: {len(allowed)} services reachable from {incident.service}")
        catalog = catalog.filter(
            pl.col("kind").is_in(["gauge", "counter", "delta"]) | pl.col("kind").is_null()
        )
        if catalog.is_empty():
            return RcaResult(self.name, (), (*notes, "no metric series for the candidate services"))
        catalog, points = points_with_totals(view, catalog, incident.baseline_start, incident.end)
        points = increments(points, catalog).filter(pl.col("value").is_finite())

        onset = incident.onset
        if self.onset_search is not None:
            found = common_change_point(points, onset - self.onset_search, onset + self.onset_search)
            if found is not None and found != onset:
                notes.append(f"onset moved from {onset:%Y-%m-%d %H:%M:%S} to {found:%Y-%m-%d %H:%M:%S}")
                onset = found

        stats = shift_scores(
            points,
            onset,
            direction=self.direction,
            relative_floor=self.relative_floor,
            min_points=self.min_points,
        )
        skipped = catalog.height - stats.height
        if skipped:
            notes.append(f"{skipped} series skipped: fewer than {self.min_points} baseline or window points")
        if stats.is_empty():
            return RcaResult(self.name, (), (*notes, "no series with both baseline and window points"))
        stats = stats.join(catalog.select("series_id", "service", "metric", "unit", "labels"), on="series_id")
        # order in polars and build Candidate objects only for what is kept (the top metrics and each service's
        # best): a store with 100k series gives ~100k rows here, and Python objects for all of them cost seconds
        label_key = (
            pl.col("labels")
            .list.eval(pl.element().struct.field("key") + "\x00" + pl.element().struct.field("value"))
            .list.sort()
            .list.join("\x01")
        )
        stats = stats.with_columns(label_key.alias("_lk")).sort(
            ["score", "service", "metric", "_lk"], descending=[True, False, False, False], nulls_last=True
        )
        counts = dict(stats.group_by("service").len().iter_rows())
        stats = stats.with_row_index("_r").filter(
            (pl.col("_r") < self.max_metric_candidates) | (pl.col("_r") == pl.col("_r").min().over("service"))
        )
        metrics = [_metric_candidate(row, onset) for row in stats.iter_rows(named=True)]
        metrics.sort(key=lambda c: (-c.score, c.service or "", c.metric or "", sorted(c.labels.items())))
        services = _service_candidates(metrics, counts)
        return RcaResult(self.name, (*metrics[: self.max_metric_candidates], *services), tuple(notes))


def rank_services(result: RcaResult) -> list[str]:
    """Services from most to least likely: the ``service`` candidates in rank order, or, when there are none,
    the services of the metric candidates in order of their best metric.

    Examples
    --------
    >>> r = RcaResult("x", (Candidate("metric", "a", 1.0, "."), Candidate("metric", "b", 3.0, "."),
    ...                     Candidate("metric", "a", 2.0, ".")))
    >>> rank_services(r)
    ['b', 'a']
    """
    ranked = result.ranked()
    kind = "service" if any(c.kind == "service" for c in ranked) else "metric"
    out: dict[str, None] = {}
    for c in ranked:
        if c.kind == kind and c.service is not None:
            out.setdefault(c.service)
    return list(out)


def candidate_services(service: str, edges: pl.DataFrame) -> set[str] | None:
    """The KPI's service and every service it calls, directly or not (``source`` calls ``target``);
    ``None`` (no narrowing) when there is no topology or it does not mention the service.

    Examples
    --------
    >>> e = pl.DataFrame({"source": ["web", "api", "db"], "target": ["api", "db", "cache"]})
    >>> sorted(candidate_services("api", e)), candidate_services("billing", e)
    (['api', 'cache', 'db'], None)
    """
    if edges.is_empty():
        return None
    calls: dict[str, set[str]] = {}
    for source, target in edges.select("source", "target").unique().iter_rows():
        calls.setdefault(source, set()).add(target)
    if service not in calls and service not in edges["target"].to_list():
        return None
    seen, todo = {service}, [service]
    while todo:
        for callee in calls.get(todo.pop(), ()):
            if callee not in seen:
                seen.add(callee)
                todo.append(callee)
    return seen


def shift_scores(
    points: pl.DataFrame,
    onset: datetime,
    *,
    direction: Direction = "up",
    relative_floor: float = 0.01,
    min_points: int = 10,
) -> pl.DataFrame:
    """Per series: baseline median, IQR and scale (points before ``onset``), the peak move after it and its
    score ``move / scale``; one row per series with at least ``min_points`` points on each side.

    Columns: ``series_id, median, iqr, scale, scale_source, n_baseline, n_window, peak, peak_ts, move,
    score``; ``move`` is signed (``peak - median``), ``scale_source`` says which floor set the scale.

    Examples
    --------
    >>> from datetime import datetime, timedelta
    >>> t = [datetime(2026, 1, 1) + timedelta(seconds=i) for i in range(6)]
    >>> p = pl.DataFrame({"series_id": [7] * 6, "ts": t, "value": [100.0, 100, 100, 100, 103, 99]})
    >>> row = shift_scores(p, t[4], min_points=2).row(0, named=True)
    >>> row["iqr"], row["scale"], row["scale_source"], row["score"]
    (0.0, 1.0, 'relative_floor', 3.0)
    """
    value, ts = pl.col("value"), pl.col("ts")
    base = (
        points.filter(ts < onset)
        .group_by("series_id")
        .agg(
            value.median().alias("median"),
            (value.quantile(0.75, "linear") - value.quantile(0.25, "linear")).alias("iqr"),
            pl.len().alias("n_baseline"),
        )
    )
    window = (
        points.filter(ts >= onset)
        .group_by("series_id")
        .agg(
            value.max().alias("hi"),
            value.min().alias("lo"),
            ts.sort_by([value, ts], descending=[True, False]).first().alias("hi_ts"),
            ts.sort_by([value, ts]).first().alias("lo_ts"),
            pl.len().alias("n_window"),
        )
    )
    floor = relative_floor * pl.col("median").abs()
    scale = pl.max_horizontal(pl.col("iqr"), floor)
    up, down = pl.col("hi") - pl.col("median"), pl.col("median") - pl.col("lo")
    take_up = {"up": pl.lit(True), "down": pl.lit(False), "both": up >= down}[direction]
    return (
        base.join(window, on="series_id")
        .filter((pl.col("n_baseline") >= min_points) & (pl.col("n_window") >= min_points))
        .with_columns(
            pl.when(scale > 0).then(scale).otherwise(1.0).alias("scale"),
            pl.when((pl.col("iqr") > 0) & (pl.col("iqr") >= floor))
            .then(pl.lit("iqr"))
            .when(floor > 0)
            .then(pl.lit("relative_floor"))
            .otherwise(pl.lit("unit"))
            .alias("scale_source"),
            pl.when(take_up).then(pl.col("hi")).otherwise(pl.col("lo")).alias("peak"),
            pl.when(take_up).then(pl.col("hi_ts")).otherwise(pl.col("lo_ts")).alias("peak_ts"),
            pl.when(take_up).then(up).otherwise(-down).alias("move"),
            pl.when(take_up).then(up).otherwise(down).alias("_score_move"),
        )
        .with_columns((pl.col("_score_move") / pl.col("scale")).alias("score"))
        .select(
            "series_id",
            "median",
            "iqr",
            "scale",
            "scale_source",
            "n_baseline",
            "n_window",
            "peak",
            "peak_ts",
            "move",
            "score",
        )
        .sort("series_id")
    )


def common_change_point(
    points: pl.DataFrame, lo: datetime, hi: datetime, *, clip: float = 10.0
) -> datetime | None:
    """The timestamp in ``[lo, hi]`` where the most series change level together, or ``None``.

    Each series is standardised with the median and IQR of its points before ``lo`` (clipped at ``± clip`` so a
    single spike cannot decide), laid on the common time grid from ``lo`` on (forward-filled), and every split
    ``k`` of that segment is scored with the Gaussian mean-shift likelihood ratio
    ``(S_k - k S_n / n)^2 n / (k (n - k))`` (``S`` cumulative sums; Hinkley 1971); the ratios add over series
    (independent series) and the best split in ``[lo, hi]`` wins.

    Examples
    --------
    >>> from datetime import datetime, timedelta
    >>> t = [datetime(2026, 1, 1) + timedelta(seconds=i) for i in range(200)]
    >>> y = [float(i % 3) + (6.0 if i >= 130 else 0.0) for i in range(200)]
    >>> p = pl.DataFrame({"series_id": [1] * 200, "ts": t, "value": y})
    >>> common_change_point(p, t[100], t[160]) == t[130]
    True
    """
    ref = (
        points.filter(pl.col("ts") < lo)
        .group_by("series_id")
        .agg(
            pl.col("value").median().alias("m"),
            (pl.col("value").quantile(0.75, "linear") - pl.col("value").quantile(0.25, "linear")).alias("s"),
        )
    )
    if ref.is_empty():
        return None
    seg = points.filter(pl.col("ts") >= lo).join(ref, on="series_id")
    if seg.is_empty():
        return None
    floor = pl.max_horizontal(pl.col("s"), 0.01 * pl.col("m").abs(), pl.lit(1e-12))
    seg = seg.with_columns(((pl.col("value") - pl.col("m")) / floor).clip(-clip, clip).alias("z"))
    wide = seg.pivot(on="series_id", index="ts", values="z", aggregate_function="mean").sort("ts")
    z = wide.drop("ts").fill_null(strategy="forward").fill_null(0.0).to_numpy()
    n = z.shape[0]
    if n < 3:
        return None
    k = np.arange(1, n, dtype=np.float64)[:, None]
    csum = np.cumsum(z, axis=0)[:-1]
    total = csum[-1] + z[-1]
    glr = ((csum - k * total / n) ** 2 * n / (k * (n - k))).sum(axis=1)
    times = wide["ts"].to_list()
    # split k puts times[k] first in the new segment; only splits inside [lo, hi] count
    allowed = np.array([lo < t <= hi for t in times[1:]])
    if not allowed.any():
        return None
    best = int(np.argmax(np.where(allowed, glr, -np.inf)))
    return times[best + 1]


def _label_text(labels: dict[str, str]) -> str:
    return f" ({', '.join(f'{k} {v}' for k, v in sorted(labels.items()))})" if labels else ""


def _unit_text(unit: str | None) -> str:
    """A unit as a person reads it after a number: UCUM annotations such as OpenTelemetry's ``{request}`` are
    the counted thing (``" requests"``), other units stay as they are (``" ms"``).

    Examples
    --------
    >>> _unit_text("{request}"), _unit_text("ms"), _unit_text(None), _unit_text("{tokens}")
    (' requests', ' ms', '', ' tokens')
    """
    if not unit:
        return ""
    if unit.startswith("{") and unit.endswith("}") and len(unit) > 2:
        name = unit[1:-1]
        return f" {name}" if name.endswith("s") else f" {name}s"
    return f" {unit}"


def _metric_candidate(row: dict, onset: datetime) -> Candidate:
    labels = labels_dict(row["labels"])
    moved = "rose" if row["move"] >= 0 else "fell"
    where = "above" if row["move"] >= 0 else "below"
    unit = _unit_text(row["unit"])
    scale = f"{row['scale']:.3g}"
    spread = {
        "iqr": f"IQR {scale}",
        "relative_floor": f"1% of its level, {scale}",
        "unit": "a floor of 1, the baseline did not vary",
    }.get(row["scale_source"], scale)
    explanation = (
        f"{row['service']} {row['metric']}{_label_text(labels)} {moved} to {row['peak']:.4g}{unit} at "
        f"{row['peak_ts']:%H:%M:%S}, {abs(row['score']):.1f} times its baseline spread ({spread}) {where} "
        f"the baseline median {row['median']:.4g}."
    )
    evidence = {
        "onset": onset.isoformat(),
        "baseline_median": float(row["median"]),
        "baseline_iqr": float(row["iqr"]),
        "scale": float(row["scale"]),
        "scale_source": row["scale_source"],
        "peak": float(row["peak"]),
        "peak_ts": row["peak_ts"].isoformat(),
        "move": float(row["move"]),
        "baseline_points": int(row["n_baseline"]),
        "window_points": int(row["n_window"]),
        "series_id": int(row["series_id"]),
    }
    return Candidate(
        kind="metric",
        service=row["service"],
        metric=row["metric"],
        labels=labels,
        score=float(row["score"]),
        evidence=evidence,
        explanation=explanation,
    )


def _service_candidates(
    metrics: Iterable[Candidate], scored: dict[str, int] | None = None
) -> list[Candidate]:
    """One candidate per service, scored by its best metric (``metrics`` sorted best first); ``scored`` is the
    number of metrics scored per service when ``metrics`` holds only the kept ones."""
    best: dict[str, Candidate] = {}
    counts: dict[str, int] = {}
    for c in metrics:
        if c.service is None:
            continue
        best.setdefault(c.service, c)
        counts[c.service] = counts.get(c.service, 0) + 1
    return [
        Candidate(
            kind="service",
            service=service,
            score=top.score,
            explanation=f"{service}: its largest shift is {top.metric}{_label_text(top.labels)}, "
            f"{abs(top.score):.1f} times its baseline spread.",
            evidence={
                "top_metric": top.metric,
                "top_labels": dict(top.labels),
                "metrics": (scored or counts)[service],
            },
        )
        for service, top in best.items()
    ]
