"""Topology-aware service ranking: which service is anomalous *itself*, not merely suffering from a dependency.

The service graph comes from the spans (a span whose parent is in another service is a call from the parent's
service to the span's) merged with the declared edges (:data:`ingest.schema.EDGES`), see :func:`service_graph`.

Every span's time is split once: its **exclusive time** (duration minus its direct children) is either

* the span's service's **own time**, when no child runs in another service (work, database and cache calls of
  an uninstrumented store), or
* the **gap** of a call edge, when a child runs in another service: the caller waited longer than the callee
  worked — the network, queues and (de)serialisation between them (Nezha and MicroRank-style RCA likewise
  separate a service's own latency from its callees').

Each service then gets signals comparing the window ``[onset, end)`` with the baseline ``[onset - baseline,
onset)`` as a robust shift ``z = (window median - baseline median) / spread``:

* ``self_time`` (own): per operation of the service (spread 1.4826 MAD, Rousseeuw & Croux 1993, floored at
  ``relative_floor`` of the median and ``min_spread_ms``), call-weighted over its operations;
* ``network_in`` (own): the gap of the calls *into* the service, median over its callers — from spans, and
  from edge latency metrics reported by both ends (Istio's ``reporter`` = ``source``/``destination`` labels:
  the difference is the network). A gap grows with either end's network and with a starved caller, so an
  edge is left to the caller when the caller's outgoing calls are all slow, or the caller has a strong own
  anomaly (see :meth:`TopologyAnalyser._network_in`);
* ``resource`` (own): CPU, memory, ... metrics (roles by name, :data:`METRIC_ROLES`): the window's median
  point against the baseline median (BARO's RobustScorer, Pham et al. FSE'24, with the median point instead of
  the peak so one-minute spikes do not count), the spread from the point-to-point jitter (robust to earlier
  incidents inside the baseline, which inflate an IQR);
* ``errors``, ``served_latency``, ``served_quality`` (symptoms): error share and duration of the calls the
  service serves, served-latency and success-rate metrics — they rise in every caller of a broken service too,
  so they weigh ``symptom_weight``.

A service's **onset** is the first 10-second bucket (or metric point) where one of its signals reaches
``z_onset``. Ranking: a service's score is its strongest weighted ``log1p(z)``. A service with an anomalous
dependency (direct or indirect) that scores at least ``explain_ratio`` of it and more than the service's own
signals, and started no later, is **explained**: its score is multiplied by ``explained_factor`` — the
dependency whose own trouble started first ranks above the callers that merely suffer. Services with no signal
reaching ``healthy_below`` are returned as ``healthy`` candidates with score 0 (and named in a note): ruled
out, not forgotten.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar, Literal

import numpy as np
import polars as pl
from scipy import stats

from rca.base import Candidate, RcaIncident, RcaResult, View, points_with_totals

#: metric name pattern -> role (first match wins); ``resource`` rises at a saturated service, ``served`` is
#: quality of what a service serves (propagates to its callers), ``served_low`` is served quality where low
#: is bad; ``ignore`` covers host-level, client-side and traffic-volume metrics
METRIC_ROLES: tuple[tuple[str, str], ...] = (
    (r"^node_|^host_|^machine_", "ignore"),
    (r"client", "ignore"),
    (r"workload|request_rate|throughput|_ops$|_total$|syscall|network_(receive|transmit)", "ignore"),
    (r"(^|_)(cpu|memory|mem|heap|gc|threads?|fds?|disk|oom)(_|$)", "resource"),
    (r"success_rate|availability", "served_low"),
    (r"latency|duration|error", "served"),
)

#: signal -> kind: ``own`` signals are the service's own trouble, ``symptom`` ones also show in its callers
SIGNALS: dict[str, str] = {
    "self_time": "own",
    "network_in": "own",
    "resource": "own",
    "errors": "symptom",
    "served_latency": "symptom",
    "served_quality": "symptom",
}

_MS_PER_UNIT = {"s": 1000.0, "seconds": 1000.0, "ms": 1.0, "us": 1e-3, "µs": 1e-3, "ns": 1e-6}

#: each signal in words (explanations here, the evidence on the incident page)
SIGNAL_TEXT = {
    "self_time": "own latency (self time, callees excluded)",
    "network_in": "network time of calls into it",
    "resource": "resource use",
    "errors": "error share of the calls it serves",
    "served_latency": "latency of the calls it serves",
    "served_quality": "served quality",
}


def _label(labels: pl.Expr, key: str) -> pl.Expr:
    return labels.list.eval(
        pl.element().filter(pl.element().struct.field("key") == key).struct.field("value")
    ).list.first()


def prepare_spans(spans: pl.DataFrame) -> pl.DataFrame:
    """Spans with ``caller`` (the parent's service, null for a root), ``parent_duration``, ``exclusive`` (duration
    minus direct children, at least 0), ``remote_children`` (children in another service) and ``entry`` (the
    span's parent is in another service or absent: a call the service serves).

    Examples
    --------
    >>> from datetime import datetime
    >>> t = datetime(2026, 1, 1)
    >>> s = pl.DataFrame({"trace_id": ["t"] * 3, "span_id": ["a", "b", "c"], "parent_span_id": [None, "a", "b"],
    ...                   "service": ["web", "web", "db"], "start": [t] * 3, "duration": [10.0, 8.0, 5.0]})
    >>> prepare_spans(s).select("span_id", "caller", "exclusive", "remote_children", "entry").rows()
    [('a', None, 2.0, 0, True), ('b', 'web', 3.0, 1, False), ('c', 'web', 5.0, 0, True)]
    """
    parents = spans.select(
        "trace_id",
        pl.col("span_id").alias("parent_span_id"),
        pl.col("service").alias("caller"),
        pl.col("duration").alias("parent_duration"),
    ).unique(["trace_id", "parent_span_id"], keep="first")
    out = spans.join(parents, on=["trace_id", "parent_span_id"], how="left")
    children = (
        out.filter(pl.col("parent_span_id").is_not_null())
        .group_by("trace_id", "parent_span_id")
        .agg(
            pl.col("duration").sum().alias("_children"),
            (pl.col("service") != pl.col("caller")).sum().alias("remote_children"),
        )
        .rename({"parent_span_id": "span_id"})
    )
    out = out.join(children, on=["trace_id", "span_id"], how="left")
    return out.with_columns(
        (pl.col("duration") - pl.col("_children").fill_null(0.0)).clip(0.0).alias("exclusive"),
        pl.col("remote_children").fill_null(0).cast(pl.Int64),
        (pl.col("caller").is_null() | (pl.col("caller") != pl.col("service"))).alias("entry"),
    ).drop("_children")


def service_graph(spans: pl.DataFrame, edges: pl.DataFrame) -> pl.DataFrame:
    """Caller -> callee edges from spans merged with declared edges.

    Columns: ``caller, callee, calls, errors, latency_ms`` (mean duration of the calls as the callee served
    them), ``network_ms`` (mean gap between what the caller waited and what the callee served),
    ``latency_share`` (share of the caller's served time spent waiting on this callee) and ``origin``
    (``spans``, ``declared`` or ``spans+declared``).

    Examples
    --------
    >>> from datetime import datetime
    >>> t = datetime(2026, 1, 1)
    >>> s = pl.DataFrame({"trace_id": ["t"] * 3, "span_id": ["a", "b", "c"], "parent_span_id": [None, "a", "b"],
    ...                   "service": ["web", "web", "db"], "start": [t] * 3, "duration": [10.0, 8.0, 5.0],
    ...                   "status": ["ok", "ok", "error"]})
    >>> e = pl.DataFrame({"source": ["web", "web"], "target": ["db", "cache"]})
    >>> service_graph(s, e).select("caller", "callee", "calls", "errors", "network_ms", "origin").rows()
    [('web', 'cache', 0, 0, None, 'declared'), ('web', 'db', 1, 1, 3.0, 'spans+declared')]
    """
    columns = {
        "caller": pl.Utf8,
        "callee": pl.Utf8,
        "calls": pl.Int64,
        "errors": pl.Int64,
        "latency_ms": pl.Float64,
        "network_ms": pl.Float64,
        "latency_share": pl.Float64,
        "origin": pl.Utf8,
    }
    derived = pl.DataFrame(schema=columns)
    if not spans.is_empty():
        sp = spans if "caller" in spans.columns else prepare_spans(spans)
        status = pl.col("status") if "status" in sp.columns else pl.lit(None, dtype=pl.Utf8)
        calls = sp.filter(pl.col("caller").is_not_null() & (pl.col("caller") != pl.col("service")))
        served = sp.filter(pl.col("entry")).group_by("service").agg(pl.col("duration").sum().alias("_served"))
        derived = (
            calls.group_by(pl.col("caller"), pl.col("service").alias("callee"))
            .agg(
                pl.len().cast(pl.Int64).alias("calls"),
                (status == "error").sum().cast(pl.Int64).alias("errors"),
                pl.col("duration").mean().alias("latency_ms"),
                (pl.col("parent_duration") - pl.col("duration")).mean().alias("network_ms"),
                pl.col("parent_duration").sum().alias("_waited"),
            )
            .join(served.rename({"service": "caller"}), on="caller", how="left")
            .with_columns(
                (pl.col("_waited") / pl.col("_served")).alias("latency_share"),
                pl.lit("spans").alias("origin"),
            )
            .select(list(columns))
        )
    declared = pl.DataFrame(schema=columns)
    if not edges.is_empty():
        declared = (
            edges.select(pl.col("source").alias("caller"), pl.col("target").alias("callee"))
            .drop_nulls()
            .unique()
            .with_columns(
                pl.lit(0, dtype=pl.Int64).alias("calls"),
                pl.lit(0, dtype=pl.Int64).alias("errors"),
                pl.lit(None, dtype=pl.Float64).alias("latency_ms"),
                pl.lit(None, dtype=pl.Float64).alias("network_ms"),
                pl.lit(None, dtype=pl.Float64).alias("latency_share"),
                pl.lit("declared").alias("origin"),
            )
            .select(list(columns))
        )
    both = pl.concat([derived, declared])
    merged = both.group_by("caller", "callee").agg(
        pl.col("calls").sum(),
        pl.col("errors").sum(),
        pl.col("latency_ms").drop_nulls().first(),
        pl.col("network_ms").drop_nulls().first(),
        pl.col("latency_share").drop_nulls().first(),
        pl.col("origin").unique().sort(descending=True).str.join("+"),
    )
    return merged.select(list(columns)).sort("caller", "callee")


def _shift(
    frame: pl.DataFrame,
    keys: list[str],
    value: str,
    floor: float,
    min_base: int,
    min_win: int,
    min_spread: float = 1e-9,
) -> pl.DataFrame:
    """Per key: baseline/window counts, medians, spread and ``z`` of the window median (rows with enough of both)."""
    v = pl.col(value)
    base = (
        frame.filter(~pl.col("_win"))
        .group_by(keys)
        .agg(
            pl.len().alias("n_base"),
            v.median().alias("base"),
            ((v - v.median()).abs().median() * 1.4826).alias("_mad"),
        )
        .with_columns(
            pl.max_horizontal(pl.col("_mad"), pl.col("base").abs() * floor, pl.lit(min_spread)).alias(
                "spread"
            )
        )
        .drop("_mad")
    )
    window = (
        frame.filter(pl.col("_win")).group_by(keys).agg(pl.len().alias("n_win"), v.median().alias("window"))
    )
    return (
        base.join(window, on=keys)
        .filter((pl.col("n_base") >= min_base) & (pl.col("n_win") >= min_win))
        .with_columns(((pl.col("window") - pl.col("base")) / pl.col("spread")).alias("z"))
    )


def _call_weighted(ops: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Per ``keys``: the operations' shifts (rises only) weighted by their window calls, with the operation that
    shifted most as ``detail`` and its baseline and window medians."""
    return ops.group_by(keys).agg(
        ((pl.col("z").clip(0.0) * pl.col("n_win")).sum() / pl.col("n_win").sum()).alias("z"),
        pl.col("name").sort_by("z", "name").last().alias("detail"),
        pl.col("base").sort_by("z", "name").last(),
        pl.col("window").sort_by("z", "name").last(),
    )


@dataclass(frozen=True)
class TopologyAnalyser:
    """Rank services by their own anomaly at the onset, dependencies whose trouble started first above callers.

    Parameters
    ----------
    min_calls
        Operations and edges need this many calls in both the baseline and the window to be compared.
    min_points
        Metric series need this many baseline points (and one in the window).
    relative_floor, min_spread_ms
        Smallest spread of span times, as a fraction of the baseline median and in milliseconds (a constant
        baseline is not infinitely sharp).
    metric_floor, level_floor
        The same for metric series (1-minute points are coarser than spans); ``level_floor`` is a fraction of the
        series' mean level over the whole span, so a sparse series (zero most minutes: median, IQR and jitter all
        0) cannot score its first non-zero minute as 1e12 spreads.
    use_metrics
        Also score the services' metrics (roles from ``metric_roles``) and edge latencies reported by both ends.
    metric_roles
        ``(regex, role)`` pairs, first match wins; see :data:`METRIC_ROLES`.
    z_onset
        A bucket (or metric point) whose shift reaches this ``z`` starts a service's anomaly.
    bucket
        Resolution of span onsets.
    tie_ratio, strong_own, starved_ratio
        How a call gap is attributed (see :meth:`_network_in`): the caller keeps it when its outgoing calls'
        median shift times ``tie_ratio`` exceeds the callee's incoming one, or when it has an own shift of at
        least ``strong_own``, larger than the callee's and at least ``starved_ratio`` of the gap's shift.
    explain_ratio, explained_factor
        A service with an anomalous dependency scoring at least ``explain_ratio`` of it and more than its own
        signals, whose onset is not later, is explained: its score is multiplied by ``explained_factor``.
    onset_tolerance
        Onsets this close count as simultaneous.
    healthy_below
        Services whose strongest ``z`` stays below this are healthy (ruled out, score 0).
    symptom_weight
        Weight of symptom signals (served latency, errors, served quality) against own signals.
    min_instance_calls
        A service's own time is also compared per instance (``service.instance.id``, else ``host.name``, of the
        span's resource) for operations with this many calls of the instance in both the baseline and the window;
        the worst instance speaks for the service when it shifted more than the pooled calls. One region's
        dependency slowing down moves a third of a three-region service's calls: pooled, the median hardly moves.
        With at least 10 calls on each side the median of noise moves a few tenths of a spread, so the worst of a
        handful of instances is not a false alarm.
    metric_scale
        Spread of a metric's baseline: ``"jitter"`` (1.4826 MAD of point-to-point differences / sqrt 2, which an
        earlier incident inside the baseline barely moves), ``"iqr"`` (IQR / 1.349, BARO) or ``"min"`` of both.

    Examples
    --------
    A database whose own latency rose, below an API that merely waits for it:

    >>> from datetime import datetime, timedelta
    >>> from rca.base import FrameView
    >>> t0 = datetime(2026, 1, 1)
    >>> rows = []
    >>> for i in range(120):
    ...     slow = 40.0 if i >= 60 else 0.0
    ...     start = t0 + timedelta(seconds=i)
    ...     rows += [(f"t{i}", "a", None, "web", "GET /", start, 20.0 + slow + i % 3),
    ...              (f"t{i}", "b", "a", "api", "GET /items", start, 15.0 + slow + i % 3),
    ...              (f"t{i}", "c", "b", "db", "SELECT", start, 10.0 + slow + i % 3)]
    >>> spans = pl.DataFrame(rows, schema=["trace_id", "span_id", "parent_span_id", "service", "name", "start",
    ...                                    "duration"], orient="row")
    >>> inc = RcaIncident("web", "latency", t0 + timedelta(seconds=60), t0 + timedelta(seconds=120),
    ...                   baseline=timedelta(seconds=60))
    >>> ranked = TopologyAnalyser().explain(inc, FrameView(spans=spans)).ranked()
    >>> [(c.service, c.evidence["status"]) for c in ranked]
    [('db', 'anomalous'), ('api', 'explained'), ('web', 'explained')]
    """

    min_calls: int = 3
    min_points: int = 2
    relative_floor: float = 0.05
    min_spread_ms: float = 0.5
    metric_floor: float = 0.05
    level_floor: float = 0.01
    use_metrics: bool = True
    metric_roles: tuple[tuple[str, str], ...] = METRIC_ROLES
    z_onset: float = 3.0
    bucket: timedelta = timedelta(seconds=10)
    tie_ratio: float = 0.8
    strong_own: float = 6.0
    starved_ratio: float = 0.3
    explain_ratio: float = 0.5
    explained_factor: float = 0.3
    onset_tolerance: timedelta = timedelta(seconds=30)
    healthy_below: float = 3.0
    symptom_weight: float = 0.2
    metric_scale: Literal["jitter", "iqr", "min"] = "jitter"
    min_instance_calls: int = 10

    name: ClassVar[str] = "topology"

    def __post_init__(self) -> None:
        if self.metric_scale not in ("jitter", "iqr", "min"):
            raise ValueError(f"metric_scale must be 'jitter', 'iqr' or 'min', not {self.metric_scale!r}")

    def explain(self, incident: RcaIncident, view: View) -> RcaResult:
        """Service candidates for ``incident`` from the spans, declared edges and (optionally) metrics."""
        notes: list[str] = []
        spans = view.spans(incident.baseline_start, incident.end)
        graph = service_graph(spans, view.edges())
        parts, edge_parts = [], []
        if not spans.is_empty():
            signals, edges = self._span_signals(prepare_spans(spans), incident.onset)
            parts.append(signals)
            edge_parts.append(edges)
        else:
            notes.append("no spans: own latency and call gaps not scored")
        if self.use_metrics:
            signals, edges = self._metric_signals(view, incident)
            parts.append(signals)
            edge_parts.append(edges)
        parts = [p for p in parts if not p.is_empty()]
        signals = pl.concat(parts, how="diagonal") if parts else pl.DataFrame()
        edge_parts = [e for e in edge_parts if not e.is_empty()]
        if edge_parts:
            network = self._network_in(pl.concat(edge_parts, how="diagonal"), signals)
            signals = pl.concat([signals, network], how="diagonal") if not signals.is_empty() else network
        services = sorted(
            set(graph["caller"].to_list())
            | set(graph["callee"].to_list())
            | (set(signals["service"].to_list()) if not signals.is_empty() else set())
        )
        if not services:
            return RcaResult(self.name, (), (*notes, "no services in spans, edges or metrics"))
        if signals.is_empty():
            signals = pl.DataFrame(
                schema={"service": pl.Utf8, "signal": pl.Utf8, "z": pl.Float64, "onset": pl.Datetime("us")}
            )
        candidates, more = self._rank(services, signals, graph, incident)
        return RcaResult(self.name, tuple(candidates), (*notes, *more))

    # -- signals ---------------------------------------------------------------------------------------------
    def _span_signals(self, sp: pl.DataFrame, onset: datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Per-service signals and per-edge gap shifts from the spans."""
        sp = sp.with_columns((pl.col("start") >= onset).alias("_win"))
        out, edge_rows = [], pl.DataFrame()
        own = sp.filter(pl.col("remote_children") == 0)
        ops = _shift(
            own,
            ["service", "name"],
            "exclusive",
            self.relative_floor,
            self.min_calls,
            self.min_calls,
            self.min_spread_ms,
        )
        if not ops.is_empty():
            per_service = _call_weighted(ops, ["service"])
            onsets = self._span_onsets(own, ops, ["service", "name"], "exclusive", onset)
            per_service = per_service.join(onsets, on="service", how="left")
            worst = self._worst_instance(own, onset)
            if not worst.is_empty():
                # the worst instance where it shifted more than all calls together
                per_service = (
                    pl.concat([per_service, worst], how="diagonal")
                    .sort("z", descending=True, maintain_order=True)  # a tie keeps the pooled row
                    .unique("service", keep="first", maintain_order=True)
                )
            out.append(per_service.with_columns(pl.lit("self_time").alias("signal")))
        calls = sp.filter(pl.col("caller").is_not_null() & (pl.col("caller") != pl.col("service")))
        calls = calls.with_columns((pl.col("parent_duration") - pl.col("duration")).clip(0.0).alias("gap"))
        edges = _shift(
            calls,
            ["caller", "service"],
            "gap",
            self.relative_floor,
            self.min_calls,
            self.min_calls,
            self.min_spread_ms,
        )
        if not edges.is_empty():
            onsets = self._span_onsets(calls, edges, ["caller", "service"], "gap", onset)
            edge_rows = edges.join(onsets, on=["caller", "service"], how="left")
        entries = sp.filter(pl.col("entry"))
        served = _shift(
            entries,
            ["service", "name"],
            "duration",
            self.relative_floor,
            self.min_calls,
            self.min_calls,
            self.min_spread_ms,
        )
        if not served.is_empty():
            per_service = _call_weighted(served, ["service"])
            onsets = self._span_onsets(entries, served, ["service", "name"], "duration", onset)
            out.append(
                per_service.join(onsets, on="service", how="left").with_columns(
                    pl.lit("served_latency").alias("signal")
                )
            )
        if "status" in entries.columns and (entries["status"] == "error").any():
            out.append(self._errors(entries))
        return (pl.concat(out, how="diagonal") if out else pl.DataFrame()), edge_rows

    def _worst_instance(self, own: pl.DataFrame, onset: datetime) -> pl.DataFrame:
        """Per service with several instances: its own-time shift on the instance that shifted most (call-weighted
        over that instance's operations, see ``min_instance_calls``), the instance named in ``detail``."""
        if "resource" not in own.columns:
            return pl.DataFrame()
        inst = pl.coalesce(
            _label(pl.col("resource"), "service.instance.id"), _label(pl.col("resource"), "host.name")
        )
        own = own.with_columns(inst.alias("_inst")).filter(pl.col("_inst").is_not_null())
        several = own.group_by("service").agg(pl.col("_inst").n_unique().alias("_n")).filter(pl.col("_n") > 1)
        own = own.join(several.select("service"), on="service")
        if own.is_empty():
            return pl.DataFrame()
        keys = ["service", "_inst", "name"]
        n = self.min_instance_calls
        ops = _shift(own, keys, "exclusive", self.relative_floor, n, n, self.min_spread_ms)
        if ops.is_empty():
            return pl.DataFrame()
        per_instance = _call_weighted(ops, ["service", "_inst"]).join(
            self._span_onsets(own, ops, keys, "exclusive", onset), on=["service", "_inst"], how="left"
        )
        return (
            per_instance.sort("z", "_inst", descending=[True, False])
            .unique("service", keep="first", maintain_order=True)
            .with_columns(pl.format("{} on {}", pl.col("detail"), pl.col("_inst")).alias("detail"))
            .drop("_inst")
        )

    def _network_in(self, edges: pl.DataFrame, signals: pl.DataFrame) -> pl.DataFrame:
        """Per callee: median shift of the gaps of its incoming calls (``network_in``).

        A call's gap grows with the network of either end, and with a starved caller (its client side runs
        slowly too). An edge ``u -> v`` counts for ``v`` unless ``u``'s outgoing calls are more consistently
        slow than ``v``'s incoming ones, or ``u`` has a strong anomaly of its own (self time or resources,
        ``strong_own``), larger than ``v``'s and comparable to the gap's: then it is ``u``'s trouble showing in
        its calls.
        """
        z_in = edges.group_by("service").agg(pl.col("z").median().alias("_in"))
        z_out = edges.group_by(pl.col("caller").alias("service")).agg(pl.col("z").median().alias("_out"))
        own = (
            signals.filter(pl.col("signal").is_in(["self_time", "resource"]))
            .group_by("service")
            .agg(pl.col("z").max().alias("_own"))
            if not signals.is_empty()
            else pl.DataFrame(schema={"service": pl.Utf8, "_own": pl.Float64})
        )
        edges = (
            edges.join(z_in, on="service", how="left")
            .join(z_out.rename({"service": "caller"}), on="caller", how="left")
            .join(own.rename({"service": "caller"}), on="caller", how="left")
            .with_columns(pl.col("_own").fill_null(0.0))
        )
        callee_own = own.rename({"_own": "_callee_own"})
        edges = edges.join(callee_own, on="service", how="left").with_columns(
            pl.col("_callee_own").fill_null(0.0)
        )
        # the caller's outgoing calls are all slow (more consistently than the callee's incoming ones) ...
        consensus = (pl.col("_out") * self.tie_ratio > pl.col("_in")) & (pl.col("_out") >= self.z_onset)
        # ... or the caller is starved itself (its client side is slow too) and more so than the callee
        starved = (
            (pl.col("_own") >= self.strong_own)
            & (pl.col("_own") >= pl.col("_callee_own"))
            & (pl.col("_own") >= self.starved_ratio * pl.col("z"))
        )
        edges = edges.with_columns((consensus | starved).alias("_explained"))
        kept = edges.filter(~pl.col("_explained"))
        return kept.group_by("service").agg(
            pl.col("z").median().alias("z"),
            pl.col("caller").sort_by("z", "caller").last().alias("detail"),
            pl.col("base").sort_by("z", "caller").last(),
            pl.col("window").sort_by("z", "caller").last(),
            pl.col("onset").filter(pl.col("z") >= self.z_onset).min(),
            pl.lit("network_in").alias("signal"),
        )

    def _errors(self, entries: pl.DataFrame) -> pl.DataFrame:
        counts = entries.group_by("service").agg(
            (~pl.col("_win")).sum().alias("n_base"),
            pl.col("_win").sum().alias("n_win"),
            ((pl.col("status") == "error") & ~pl.col("_win")).sum().alias("e_base"),
            ((pl.col("status") == "error") & pl.col("_win")).sum().alias("e_win"),
            pl.col("start").filter((pl.col("status") == "error") & pl.col("_win")).min().alias("onset"),
        )
        counts = counts.filter((pl.col("n_base") >= self.min_calls) & (pl.col("n_win") >= self.min_calls))
        p0 = ((counts["e_base"] + 0.5) / (counts["n_base"] + 1.0)).to_numpy()
        k, n = counts["e_win"].to_numpy(), counts["n_win"].to_numpy()
        p = np.where(k > 0, stats.binom.sf(k - 1, n, p0), 1.0)
        z = stats.norm.isf(np.clip(p, 1e-300, 1.0))
        return counts.select(
            "service",
            pl.Series("z", np.maximum(z, 0.0)),
            (pl.col("e_base") / pl.col("n_base")).alias("base"),
            (pl.col("e_win") / pl.col("n_win")).alias("window"),
            pl.lit("error share").alias("detail"),
            pl.col("onset"),
            pl.lit("errors").alias("signal"),
        )

    def _span_onsets(
        self, frame: pl.DataFrame, stats_: pl.DataFrame, keys: list[str], value: str, onset: datetime
    ) -> pl.DataFrame:
        """First bucket (from ``onset - bucket``) where the median per-call shift reaches ``z_onset``, per ``keys``
        but the last (the operation: per service, or per service and instance), or per edge when ``keys`` starts
        with ``caller``."""
        owner = keys if keys[0] == "caller" else keys[:-1]
        z = (
            frame.filter(pl.col("start") >= onset - self.bucket)
            .join(stats_.select(*keys, "base", "spread"), on=keys)
            .with_columns(((pl.col(value) - pl.col("base")) / pl.col("spread")).alias("_z"))
        )
        buckets = (
            z.with_columns(pl.col("start").dt.truncate(self.bucket).alias("_b"))
            .group_by(*owner, "_b")
            .agg(pl.col("_z").median())
            .filter(pl.col("_z") >= self.z_onset)
        )
        return buckets.group_by(owner).agg(pl.col("_b").min().alias("onset"))

    def _metric_signals(self, view: View, incident: RcaIncident) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Per-service metric signals and per-edge gaps from edge latencies reported by both ends."""
        catalog = view.series()
        if catalog.is_empty():
            return pl.DataFrame(), pl.DataFrame()
        roles = [(re.compile(rx), role) for rx, role in self.metric_roles]
        labelled = catalog.with_columns(
            _label(pl.col("labels"), "reporter").alias("_reporter"),
            _label(pl.col("labels"), "source_workload").alias("_source"),
        )
        edge_series = labelled.filter(
            pl.col("_reporter").is_in(["source", "destination"]) & pl.col("_source").is_not_null()
        )
        plain = labelled.filter(~pl.col("series_id").is_in(edge_series["series_id"].implode()))
        role_of = {
            m: next((r for rx, r in roles if rx.search(m)), "ignore")
            for m in plain["metric"].unique().to_list()
        }
        plain = plain.with_columns(
            pl.col("metric").replace_strict(role_of, return_dtype=pl.Utf8).alias("role")
        )
        plain = plain.filter(pl.col("role") != "ignore")
        out, edge_rows = [], pl.DataFrame()
        ids = plain["series_id"].to_list() + edge_series["series_id"].to_list()
        if not ids:
            return pl.DataFrame(), edge_rows
        # usage rows (per tenant, model, ...) are scored as their service's total (see points_with_totals)
        parts = []
        if not plain.is_empty():
            totals, plain_points = points_with_totals(
                view, plain.drop("role"), incident.baseline_start, incident.end
            )
            plain = totals.with_columns(
                pl.col("metric").replace_strict(role_of, return_dtype=pl.Utf8).alias("role")
            )
            parts.append(plain_points)
        if not edge_series.is_empty():
            parts.append(
                view.points(edge_series["series_id"].to_list(), incident.baseline_start, incident.end)
            )
        points = pl.concat(parts).filter(pl.col("value").is_finite())
        points = points.with_columns((pl.col("ts") >= incident.onset).alias("_win"))
        if not plain.is_empty():
            out.append(self._series_signals(points, plain, incident.onset))
        if not edge_series.is_empty():
            edge_rows = self._edge_metric_gaps(points, edge_series, incident.onset)
        out = [o for o in out if not o.is_empty()]
        return (pl.concat(out, how="diagonal") if out else pl.DataFrame()), edge_rows

    def _series_signals(self, points: pl.DataFrame, plain: pl.DataFrame, onset: datetime) -> pl.DataFrame:
        p = points.join(plain.select("series_id", "service", "metric", "role"), on="series_id")
        diff = pl.col("value").diff()
        base = (
            p.filter(~pl.col("_win"))
            .sort("series_id", "ts")
            .group_by("series_id")
            .agg(
                pl.col("value").median().alias("base"),
                (pl.col("value").quantile(0.75, "linear") - pl.col("value").quantile(0.25, "linear")).alias(
                    "_iqr"
                ),
                ((diff - diff.median()).abs().median() * 1.4826 / np.sqrt(2.0)).alias("_jitter"),
                pl.len().alias("n_base"),
            )
            .filter(pl.col("n_base") >= self.min_points)
        )
        scale = {
            "iqr": pl.col("_iqr") / 1.349,
            "jitter": pl.col("_jitter").fill_null(0.0),
            "min": pl.min_horizontal(
                pl.col("_iqr") / 1.349, pl.col("_jitter").fill_null(pl.col("_iqr") / 1.349)
            ),
        }[self.metric_scale]
        # a sparse series (a per-tenant usage row, zero most minutes) has median, IQR and jitter 0: its level over
        # the whole span (baseline and window) floors the spread, so its first non-zero minute is not 1e12 spreads
        level = p.group_by("series_id").agg(pl.col("value").abs().mean().alias("_level"))
        base = base.join(level, on="series_id", how="left").with_columns(
            pl.max_horizontal(
                scale,
                pl.col("base").abs() * self.metric_floor,
                pl.col("_level").fill_null(0.0) * self.level_floor,
                pl.lit(1e-9),
            ).alias("spread")
        )
        low = pl.col("role") == "served_low"
        win = (
            p.filter(pl.col("_win"))
            .join(base, on="series_id")
            .with_columns(
                (
                    pl.when(low)
                    .then(pl.col("base") - pl.col("value"))
                    .otherwise(pl.col("value") - pl.col("base"))
                    / pl.col("spread")
                ).alias("_z")
            )
        )
        # the window's median point, not its peak: a fault holds for the window, a one-minute spike of a p99 or
        # of a near-idle CPU does not (with three points, one must be matched by a second)
        per_series = win.group_by("series_id", "service", "metric", "role").agg(
            pl.col("_z").median().alias("z"),
            pl.col("base").first(),
            pl.col("value").median().alias("window"),
            pl.col("ts").filter(pl.col("_z") >= self.z_onset).min().alias("onset"),
        )
        signal = pl.col("role").replace_strict(
            {"resource": "resource", "served": "served_quality", "served_low": "served_quality"},
            return_dtype=pl.Utf8,
        )
        return (
            per_series.with_columns(signal.alias("signal"))
            .group_by("service", "signal")
            .agg(
                pl.col("z").max(),
                pl.col("metric").sort_by("z", "metric").last().alias("detail"),
                pl.col("base").sort_by("z", "metric").last(),
                pl.col("window").sort_by("z", "metric").last(),
                pl.col("onset").min(),
            )
        )

    def _edge_metric_gaps(
        self, points: pl.DataFrame, edge_series: pl.DataFrame, onset: datetime
    ) -> pl.DataFrame:
        """Per edge: shift of latency reported by the caller (``source``) minus the callee (``destination``)."""
        p = points.join(
            edge_series.select("series_id", "service", "unit", "_reporter", "_source"), on="series_id"
        )
        # latencies in milliseconds, like span durations (so ``min_spread_ms`` means the same)
        to_ms = pl.col("unit").replace_strict(_MS_PER_UNIT, default=1.0, return_dtype=pl.Float64)
        p = p.with_columns(pl.col("value") * to_ms)
        step = p.sort("series_id", "ts").select(pl.col("ts").diff().over("series_id").median()).item()
        step = (
            timedelta(seconds=max(1, round(step.total_seconds())))
            if isinstance(step, timedelta) and step > timedelta(0)
            else timedelta(minutes=1)
        )
        # both reporters sample the same edge a few ms apart: align them on the sampling step
        p = p.with_columns(pl.col("ts").dt.truncate(step).alias("_t")).with_columns(
            (pl.col("_t") >= onset).alias("_win")
        )
        wide = p.pivot(
            on="_reporter",
            index=["_t", "_source", "service", "_win"],
            values="value",
            aggregate_function="mean",
        )
        if "source" not in wide.columns or "destination" not in wide.columns:
            return pl.DataFrame()
        gaps = wide.with_columns(
            (pl.col("source") - pl.col("destination")).alias("gap"), pl.col("_t").alias("start")
        )
        gaps = gaps.drop_nulls("gap").rename({"_source": "caller"})
        edges = _shift(
            gaps, ["caller", "service"], "gap", self.metric_floor, self.min_points, 1, self.min_spread_ms
        )
        if edges.is_empty():
            return pl.DataFrame()
        onsets = (
            gaps.filter(pl.col("_win"))
            .join(edges.select("caller", "service", "base", "spread"), on=["caller", "service"])
            .filter((pl.col("gap") - pl.col("base")) / pl.col("spread") >= self.z_onset)
            .group_by("caller", "service")
            .agg(pl.col("start").min().alias("onset"))
        )
        return edges.join(onsets, on=["caller", "service"], how="left")

    # -- ranking ---------------------------------------------------------------------------------------------
    def _rank(
        self, services: Sequence[str], signals: pl.DataFrame, graph: pl.DataFrame, incident: RcaIncident
    ) -> tuple[list[Candidate], list[str]]:
        rows: dict[str, dict[str, dict]] = {s: {} for s in services}
        for row in signals.iter_rows(named=True):  # one row per service and signal
            if row["service"] is None or row["z"] is None or not np.isfinite(row["z"]):
                continue
            prev = rows.setdefault(row["service"], {}).get(row["signal"])
            if prev is None or row["z"] > prev["z"]:
                rows[row["service"]][row["signal"]] = row
        base_score, own_score, onset_of = {}, {}, {}
        for service, sigs in rows.items():
            best, own, z_max, onsets = 0.0, 0.0, 0.0, []
            for name, row in sigs.items():
                z = max(float(row["z"]), 0.0)
                z_max = max(z_max, z)
                kind = SIGNALS[name]
                weight = 1.0 if kind == "own" else self.symptom_weight
                best = max(best, weight * float(np.log1p(z)))
                if kind == "own":
                    own = max(own, weight * float(np.log1p(z)))
                if z >= self.z_onset and row.get("onset") is not None:
                    onsets.append(row["onset"])
            base_score[service] = best if z_max >= self.healthy_below else 0.0
            own_score[service] = own if z_max >= self.healthy_below else 0.0
            onset_of[service] = min(onsets) if onsets else None
        callees = downstream(graph)
        explained_by: dict[str, str] = {}
        for service in rows:
            score, start = base_score[service], onset_of[service]
            if score <= 0:
                continue
            for dep in sorted(callees.get(service, ())):
                dep_score = base_score.get(dep, 0.0)
                # a dependency explains a caller whose own trouble is smaller than the dependency's
                if (
                    dep == service
                    or dep_score < self.explain_ratio * score
                    or own_score[service] >= dep_score
                ):
                    continue
                dep_start = onset_of.get(dep)
                if start is None or dep_start is None or dep_start <= start + self.onset_tolerance:
                    if service not in explained_by or base_score[dep] > base_score[explained_by[service]]:
                        explained_by[service] = dep
        healthy = sorted(s for s in rows if base_score[s] <= 0)
        candidates = []
        for service, sigs in rows.items():
            score = base_score[service]
            status = "healthy" if score <= 0 else "anomalous"
            if service in explained_by:
                score *= self.explained_factor
                status = "explained"
            candidates.append(
                self._candidate(
                    service, score, status, sigs, onset_of[service], explained_by.get(service), incident
                )
            )
        notes = []
        if healthy:
            notes.append(f"ruled out (no own or served anomaly in spans or metrics): {', '.join(healthy)}")
        for service, dep in sorted(explained_by.items()):
            notes.append(f"{service} merely suffers: its dependency {dep} is anomalous and started no later")
        return candidates, notes

    def _candidate(
        self,
        service: str,
        score: float,
        status: str,
        sigs: dict[str, dict],
        onset: datetime | None,
        explained_by: str | None,
        incident: RcaIncident,
    ) -> Candidate:
        evidence_signals = {
            name: {
                "z": round(float(row["z"]), 3),
                "baseline": None if row.get("base") is None else float(row["base"]),
                "window": None if row.get("window") is None else float(row["window"]),
                "detail": row.get("detail"),
                "onset": row["onset"].isoformat() if row.get("onset") is not None else None,
            }
            for name, row in sorted(sigs.items())
        }
        if status == "healthy":
            text = f"{service} looks healthy: none of its own or served signals moved at the onset."
        else:
            name, row = max(
                sigs.items(),
                key=lambda kv: (
                    (1.0 if SIGNALS[kv[0]] == "own" else self.symptom_weight)
                    * np.log1p(max(float(kv[1]["z"]), 0.0))
                ),
            )
            what = SIGNAL_TEXT[name]
            detail = f" ({row['detail']})" if row.get("detail") else ""
            since = f" from {onset:%H:%M:%S}" if onset is not None else ""
            text = f"{service}: {what}{detail} shifted {float(row['z']):.1f} spreads{since}"
            if explained_by is not None:
                text += f"; it depends on {explained_by}, anomalous no later, so it probably suffers from it"
            text += "."
        return Candidate(
            kind="service",
            service=service,
            score=float(score),
            explanation=text,
            evidence={
                "status": status,
                "onset": onset.isoformat() if onset is not None else None,
                "explained_by": explained_by,
                "signals": evidence_signals,
                "incident_onset": incident.onset.isoformat(),
            },
        )


def downstream(graph: pl.DataFrame) -> dict[str, set[str]]:
    """Every service's direct and indirect callees, from a :func:`service_graph` frame (``caller, callee``).

    Examples
    --------
    >>> g = pl.DataFrame({"caller": ["web", "api", "api"], "callee": ["api", "db", "cache"]})
    >>> {k: sorted(v) for k, v in sorted(downstream(g).items())}
    {'api': ['cache', 'db'], 'web': ['api', 'cache', 'db']}
    """
    calls: dict[str, set[str]] = {}
    for caller, callee in graph.select("caller", "callee").iter_rows():
        if caller != callee:
            calls.setdefault(caller, set()).add(callee)
    out: dict[str, set[str]] = {}
    for start, first in calls.items():
        seen: set[str] = set()
        todo = list(first)
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(calls.get(node, ()))
        out[start] = seen
    return out
