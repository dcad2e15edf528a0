"""Log-template root-cause candidates: which log patterns of which service changed at the onset.

Log lines are reduced to templates with Drain (He et al., "Drain: An Online Log Parsing Approach with Fixed
Depth Tree", ICWS 2017) through the Drain3 library, in memory and without persistence. Variable parts are
masked first (UUIDs, IPs, long hex ids, times, dates, numbers), vectorised over the frame, so Drain only sees
each distinct masked line once; the order of first appearance keeps mining deterministic. Numbers glued to a
word or to ``#`` (``OrderServiceImpl#324``, a code location) are kept: they tell code paths apart.

Each template's count in the window ``[onset, end)`` is compared with its count in the baseline
``[onset - baseline, onset)`` *relative to an exposure*, so that more or less traffic, or a different mix of
requests, changes nothing by itself:

* with spans in the view, a line belongs to the **operation** of the span it was written in (logs carry
  ``trace_id``/``span_id``), and the exposure is the number of calls of that operation (its spans): "lines of
  this template per call of ``OrderController.getOrderById``". An operation never called in the baseline is
  not judged. (Nezha, FSE'23, likewise compares the event patterns of the same kind of request between the
  fault-free and the fault-suffering phase.)
* without spans, the exposure is the number of lines of the service, and lines of new or surging templates
  are left out of it for the drop test, so a flood of one error does not make every other template look
  like it vanished.

A line written in a span counts once per call: a loop that logs one template twelve times in one request is
one occurrence (log lines come in such bursts, so counting lines would make every data-dependent loop look
significant). With ``E`` the exposure, ``n`` the baseline count and ``k`` the window count, the window count is
compared with its posterior predictive distribution given the baseline — beta-binomial for a share of calls
(share ~ Beta(n + ½, E - n + ½), Jeffreys prior), negative binomial for a rate per line (rate ~ Gamma(n + ½,
E)) — so an unseen template is rare but not impossible and a short baseline (six calls) is not taken for a
certainty; the tails give

* **new / surge**: ``P(X >= k)``: one occurrence of a never-seen template in a busy service is not surprising;
  twenty are;
* **drop**: ``P(X <= k)`` when at least ``min_expected`` lines were expected: a code path that stops logging is
  how an early ``return`` or an exception thrown before a log statement shows.

The significance ``-log10(p)`` (capped) is multiplied by the size of the change (the change of the share of
calls, so a path that every call took and none takes any more counts fully and a data-dependent branch that
moved from 90 % to 50 % of calls counts less), by severity (errors count most; drops are not
severity-weighted, the vanished lines are usually INFO) and by change kind, giving each template's score; a
service's score is its best template's. A caller logs an error, or stops logging its success line, *because*
its callee failed: with spans, a change whose requests (traces) largely carry a change of a service it calls
is **explained** by it and demoted (:meth:`LogTemplateAnalyser._explain_away`). Candidates are ``kind="log"``
with the template in ``labels["template"]`` (and the operation in ``labels["operation"]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

import numpy as np
import polars as pl
from scipy import stats

from rca.base import Candidate, RcaIncident, RcaResult, View

#: (name, regex, replacement) applied in order; ``${1}`` keeps a captured delimiter
MASKS: tuple[tuple[str, str, str], ...] = (
    ("uuid", r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b", "<UUID>"),
    ("ip", r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b", "<IP>"),
    ("datetime", r"\b\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?)?\b", "<DATE>"),
    ("time", r"\b\d{1,2}:\d\d:\d\d(?:[.,]\d+)?\b", "<TIME>"),
    ("hex", r"\b(?:0x)?[0-9a-fA-F]{12,}\b", "<HEX>"),
    # a number standing on its own (not part of a word, a dotted name or a ``Class#line`` location)
    ("number", r"(^|[^\w#.<>-])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", "${1}<NUM>"),
)

#: a leading time stamp and level, removed after masking
PREAMBLE = r"^(?:(?:<DATE>|<TIME>|\[?<DATE>\]?|\[?<TIME>\]?)\s)*\[?(?i:TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|FATAL|CRITICAL)\]?:?\s"

#: weight of a template's significance by the severity of its lines (OpenTelemetry severity numbers)
SEVERITY_WEIGHTS = ((17, 1.0), (13, 0.6), (9, 0.35), (0, 0.25))


def mask_bodies(bodies: pl.Expr) -> pl.Expr:
    """Mask the variable parts of log bodies (see :data:`MASKS`); whitespace runs become one space.

    Examples
    --------
    >>> s = pl.Series(["12:01:02.5 INFO o.OrderServiceImpl#324 Order 6ac9d457-ba97-485a-9813-4a4fc1d2e502 took 12 ms"])
    >>> pl.select(mask_bodies(pl.lit(s))).item()
    'o.OrderServiceImpl#324 Order <UUID> took <NUM> ms'
    """
    out = bodies
    for _, pattern, replacement in MASKS:
        out = out.str.replace_all(pattern, replacement)
    out = out.str.replace_all(r"\s+", " ").str.strip_chars()
    # a leading time stamp and level are the record's ts and severity columns; without them Drain's parse tree
    # keys on the logger / code location, the most telling first token of most application log lines
    return out.str.replace(PREAMBLE, "")


def mine_templates(
    masked: list[str], *, sim_th: float = 0.5, depth: int = 4, max_children: int = 1000
) -> list[tuple[int, str]]:
    """Drain3 cluster id and final template text of each (already masked) line, mined in the given order.

    Examples
    --------
    >>> mine_templates(["user ann logged in", "disk <NUM> is full", "user bob logged in"])
    [(1, 'user <*> logged in'), (2, 'disk <NUM> is full'), (1, 'user <*> logged in')]
    """
    # imported where it is used (drain3 ships no type information)
    from drain3.template_miner import TemplateMiner  # type: ignore[import-untyped]
    from drain3.template_miner_config import TemplateMinerConfig  # type: ignore[import-untyped]

    config = TemplateMinerConfig()
    config.drain_sim_th = sim_th
    config.drain_depth = depth
    config.masking_instructions = []  # masked beforehand, vectorised
    config.parametrize_numeric_tokens = False  # numbers are masked; ``Class#123`` must stay a tree key
    config.profiling_enabled = False
    # code locations are bounded; Drain's default of 100 children per node would push the 101st location of a
    # busy logger into the wildcard branch, where it merges with unrelated lines
    config.drain_max_children = max_children
    miner = TemplateMiner(persistence_handler=None, config=config)
    ids = [miner.add_log_message(line)["cluster_id"] for line in masked]
    final = {c.cluster_id: c.get_template() for c in miner.drain.clusters}
    return [(i, final[i]) for i in ids]


def _severity_weight(number: pl.Expr) -> pl.Expr:
    expr: pl.Expr = pl.lit(SEVERITY_WEIGHTS[-1][1])
    for threshold, weight in reversed(SEVERITY_WEIGHTS[:-1]):
        expr = pl.when(number >= threshold).then(weight).otherwise(expr)
    return expr


@dataclass(frozen=True)
class LogTemplateAnalyser:
    """Rank log templates (and so services) by how their rate per call (or per line) changed at the onset.

    Parameters
    ----------
    sim_th, depth, max_children
        Drain's similarity threshold, parse-tree depth and children per tree node.
    by_operation
        Count lines per call of the operation they were written in, when the view has the spans (see the
        module docstring); ``False`` always uses the service's lines as the exposure.
    alpha
        Templates whose change has a tail probability above ``alpha`` are not candidates.
    min_expected
        A drop is tested only when the template was expected at least this many times in the window.
    drop_weight, new_weight
        Multipliers of the significance of a drop and of a never-seen template (a surge counts 1).
    weigh_effect
        Multiply the significance by the size of the change (see :meth:`_effect`).
    max_significance
        Cap of ``-log10(p)`` so one enormous count cannot drown everything else.
    max_candidates
        How many template candidates the result keeps.
    min_overlap, explain_ratio, explained_factor
        A change sharing at least ``min_overlap`` of its requests with a change (scoring at least
        ``explain_ratio`` of it) of a service it calls is explained: its score is multiplied by
        ``explained_factor`` (see :meth:`_explain_away`).

    Examples
    --------
    >>> from datetime import datetime, timedelta
    >>> from rca.base import FrameView
    >>> t0 = datetime(2026, 1, 1)
    >>> ok = [(t0 + timedelta(seconds=i), "api", "INFO", f"served request {i}") for i in range(200)]
    >>> bad = [(t0 + timedelta(seconds=100 + i), "db", "ERROR", f"connection pool exhausted after {i} ms")
    ...        for i in range(0, 100, 5)]
    >>> calm = [(t0 + timedelta(seconds=i), "db", "INFO", f"query ok in {i} ms") for i in range(0, 200, 2)]
    >>> logs = pl.DataFrame(ok + bad + calm, schema=["ts", "service", "severity", "body"], orient="row")
    >>> inc = RcaIncident("api", "latency", t0 + timedelta(seconds=100), t0 + timedelta(seconds=200),
    ...                   baseline=timedelta(seconds=100))
    >>> top = LogTemplateAnalyser().explain(inc, FrameView(logs=logs)).ranked()[0]
    >>> top.kind, top.service, top.labels["template"], top.evidence["change"]
    ('log', 'db', 'connection pool exhausted after <NUM> ms', 'new')
    """

    sim_th: float = 0.5
    depth: int = 4
    max_children: int = 1000
    by_operation: bool = True
    alpha: float = 1e-2
    min_expected: float = 3.0
    drop_weight: float = 0.6
    new_weight: float = 1.0
    weigh_effect: bool = True
    max_significance: float = 30.0
    max_candidates: int = 200
    min_overlap: float = 0.3
    explain_ratio: float = 0.3
    explained_factor: float = 0.3

    name: ClassVar[str] = "log_templates"

    def explain(self, incident: RcaIncident, view: View) -> RcaResult:
        """Template candidates for ``incident`` from the logs (and spans) in ``view``."""
        logs = view.logs(incident.baseline_start, incident.end).filter(
            pl.col("service").is_not_null() & pl.col("body").is_not_null()
        )
        if logs.is_empty():
            return RcaResult(self.name, (), ("no logs in the baseline or the window",))
        spans = view.spans(incident.baseline_start, incident.end) if self.by_operation else None
        logs, exposure = self._contexts(logs, spans, incident.onset)
        logs = self.templates(logs)
        table = self._counts(logs, exposure, incident.onset)
        notes = []
        unseen = table.filter((pl.col("exposure_base") == 0) & (pl.col("n_win") > 0))
        if not unseen.is_empty():
            groups = unseen.select("service", "operation").unique().sort("service", "operation")
            listed = ", ".join(f"{s} {o}".strip() for s, o in groups.head(8).iter_rows())
            notes.append(
                f"{groups.height} service operation(s) with no baseline to compare with, not scored: {listed}"
                + (" ..." if groups.height > 8 else "")
            )
        scored = self._score(table.filter(pl.col("exposure_base") > 0))
        found = scored.filter(pl.col("p") <= self.alpha).sort(
            ["score", "service", "operation", "template"], descending=[True, False, False, False]
        )
        if found.is_empty():
            notes.append("no log template changed significantly")
        found = found.head(self.max_candidates).with_row_index("_c")
        found, explained = self._explain_away(found, logs, spans, incident.onset)
        notes.extend(explained)
        found = found.sort(
            ["score", "service", "operation", "template"], descending=[True, False, False, False]
        )
        candidates = tuple(self._candidate(row, incident.onset) for row in found.iter_rows(named=True))
        return RcaResult(self.name, candidates, tuple(notes))

    def _explain_away(
        self, found: pl.DataFrame, logs: pl.DataFrame, spans: pl.DataFrame | None, onset: datetime
    ) -> tuple[pl.DataFrame, list[str]]:
        """Demote a template change that happened in the same requests as a change in a service downstream.

        A caller logs an error (or stops logging its success line) *because* its callee failed. The evidence of
        a change is its window requests: the traces of the lines of a new or surging template, the traces of
        the calls of the operation for a drop. When at least ``min_overlap`` of a change's traces also carry a
        change of a service the first one calls (directly or not, per the spans) scoring at least
        ``explain_ratio`` of it, the first is explained: its score is multiplied by ``explained_factor``.
        """
        columns = {"explained_by": pl.Utf8}
        empty = found.with_columns(pl.lit(None, dtype=pl.Utf8).alias("explained_by"))
        if found.height < 2 or spans is None or spans.is_empty() or "trace_id" not in logs.columns:
            return empty, []
        from rca.topology import (
            downstream,
            prepare_spans,
            service_graph,
        )  # the topology analyser's call graph

        no_edges = pl.DataFrame(schema={"source": pl.Utf8, "target": pl.Utf8})
        callees = downstream(service_graph(prepare_spans(spans), no_edges))
        win_logs = logs.filter((pl.col("ts") >= onset) & pl.col("trace_id").is_not_null())
        win_calls = spans.filter((pl.col("start") >= onset) & pl.col("trace_id").is_not_null())
        keys = found.select("_c", "service", "operation", "template_id", "change")
        by_lines = keys.filter(pl.col("change") != "drop").join(
            win_logs.select("service", "operation", "template_id", "trace_id"),
            on=["service", "operation", "template_id"],
        )
        by_calls = keys.filter(pl.col("change") == "drop").join(
            win_calls.select("service", pl.col("name").alias("operation"), "trace_id"),
            on=["service", "operation"],
        )
        traces = pl.concat([by_lines.select("_c", "trace_id"), by_calls.select("_c", "trace_id")]).unique()
        if traces.is_empty():
            return empty, []
        sizes = traces.group_by("_c").agg(pl.len().alias("_n"))
        pairs = (
            traces.join(traces.rename({"_c": "_d"}), on="trace_id")
            .filter(pl.col("_c") != pl.col("_d"))
            .group_by("_c", "_d")
            .agg(pl.len().alias("_shared"))
            .join(sizes, on="_c")
            .filter(pl.col("_shared") >= self.min_overlap * pl.col("_n"))
        )
        info = found.select("_c", "service", "score")
        pairs = pairs.join(info, on="_c").join(
            info.rename({"_c": "_d", "service": "_d_service", "score": "_d_score"}), on="_d"
        )
        pairs = pairs.filter(
            (pl.col("service") != pl.col("_d_service"))
            & (pl.col("_d_score") >= self.explain_ratio * pl.col("score"))
        )
        by: dict[int, tuple[str, float]] = {}
        # one row per pair of candidates; sorted so that ties resolve the same way every time
        ordered = pairs.sort("_c", "_d_score", "_d_service", descending=[False, True, False])
        for c, service, d_service, d_score in ordered.select(
            "_c", "service", "_d_service", "_d_score"
        ).iter_rows():
            if d_service in callees.get(service, ()) and (c not in by or d_score > by[c][1]):
                by[c] = (d_service, d_score)
        if not by:
            return empty, []
        cause = pl.DataFrame(
            {"_c": list(by), "explained_by": [v[0] for v in by.values()]}, schema={"_c": pl.UInt32, **columns}
        )
        out = found.join(cause, on="_c", how="left").with_columns(
            pl.when(pl.col("explained_by").is_not_null())
            .then(pl.col("score") * self.explained_factor)
            .otherwise(pl.col("score"))
            .alias("score")
        )
        services = sorted({(found["service"][c], v[0]) for c, v in by.items()})
        notes = [
            f"{a}: template changes in the same requests as changes of its dependency {b}"
            for a, b in services
        ]
        return out, notes

    def templates(self, logs: pl.DataFrame) -> pl.DataFrame:
        """``logs`` (sorted by time) with ``template_id`` and ``template`` columns."""
        logs = logs.sort("ts", "service", "body").with_columns(mask_bodies(pl.col("body")).alias("_masked"))
        distinct = logs.select("_masked").unique(maintain_order=True)["_masked"].to_list()
        mined = mine_templates(distinct, sim_th=self.sim_th, depth=self.depth, max_children=self.max_children)
        lookup = pl.DataFrame(
            {
                "_masked": distinct,
                "template_id": [f"drain-{i}" for i, _ in mined],
                "template": [t for _, t in mined],
            }
        )
        return logs.drop("template_id", strict=False).join(lookup, on="_masked", how="left").drop("_masked")

    @staticmethod
    def _contexts(
        logs: pl.DataFrame, spans: pl.DataFrame | None, onset: datetime
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """``logs`` with ``operation`` (the name of the span a line was written in, "" without one) and the
        exposure per ``(service, operation)``: calls of the operation, or lines when there is no span."""
        win = pl.col("_t") >= onset
        if spans is not None and not spans.is_empty() and "span_id" in logs.columns:
            named = spans.filter(pl.col("span_id").is_not_null()).unique(
                ["trace_id", "span_id"], keep="first"
            )
            logs = logs.join(
                named.select("trace_id", "span_id", pl.col("name").alias("operation")),
                on=["trace_id", "span_id"],
                how="left",
            ).with_columns(pl.col("operation").fill_null(""))
            calls = named.select("service", pl.col("name").alias("operation"), pl.col("start").alias("_t"))
        else:
            logs = logs.with_columns(pl.lit("").alias("operation"))
            calls = logs.select("service", "operation", pl.col("ts").alias("_t")).head(0)
        lines = logs.filter(pl.col("operation") == "").select(
            "service", "operation", pl.col("ts").alias("_t")
        )
        exposure = (
            pl.concat(
                [
                    calls.with_columns(pl.lit("calls").alias("unit")),
                    lines.with_columns(pl.lit("lines").alias("unit")),
                ]
            )
            .group_by("service", "operation", "unit")
            .agg((~win).sum().alias("exposure_base"), win.sum().alias("exposure_win"))
        )
        return logs, exposure

    @staticmethod
    def _counts(logs: pl.DataFrame, exposure: pl.DataFrame, onset: datetime) -> pl.DataFrame:
        win = pl.col("ts") >= onset
        sev = pl.col("severity_number").fill_null(0) if "severity_number" in logs.columns else pl.lit(0)
        severity = pl.col("severity") if "severity" in logs.columns else pl.lit(None, dtype=pl.Utf8)
        # a line written in a span counts once per call (a loop logging one template twelve times in one
        # request is one occurrence); a line without a span counts for itself
        call: pl.Expr
        if "span_id" in logs.columns:
            call = (
                pl.when(pl.col("operation") != "")
                .then(pl.concat_str([pl.col("trace_id").fill_null(""), pl.col("span_id")], separator="/"))
                .otherwise(None)
            )
        else:
            call = pl.lit(None, dtype=pl.Utf8)
        unit = pl.coalesce(call, pl.int_range(pl.len()).cast(pl.Utf8))
        table = (
            logs.with_columns(
                win.alias("_win"),
                sev.alias("_sev"),
                severity.cast(pl.Utf8).alias("_severity"),
                unit.alias("_unit"),
            )
            .group_by("service", "operation", "template_id")
            .agg(
                pl.col("template").first(),
                pl.col("_unit").filter(~pl.col("_win")).n_unique().alias("n_base"),
                pl.col("_unit").filter(pl.col("_win")).n_unique().alias("n_win"),
                pl.col("_sev").max().alias("severity_number"),
                pl.col("_severity").sort_by("_sev").last().alias("severity"),
                pl.col("body").filter(pl.col("_win")).first().alias("example_window"),
                pl.col("body").filter(~pl.col("_win")).first().alias("example_baseline"),
                pl.col("ts").filter(pl.col("_win")).min().alias("first_seen"),
            )
        )
        out = table.join(exposure, on=["service", "operation"], how="left")
        return out.with_columns(
            pl.col("exposure_base").fill_null(0),
            pl.col("exposure_win").fill_null(0),
            pl.col("unit").fill_null("calls"),
        )

    def _score(self, table: pl.DataFrame) -> pl.DataFrame:
        if table.is_empty():
            return table.with_columns(
                pl.lit(None, dtype=pl.Utf8).alias("change"),
                pl.lit(None, dtype=pl.Float64).alias("p"),
                pl.lit(None, dtype=pl.Float64).alias("expected"),
                pl.lit(None, dtype=pl.Float64).alias("score"),
            )
        calls = (table["unit"] == "calls").to_numpy()
        e_win = table["exposure_win"].to_numpy().astype(np.float64)
        k = table["n_win"].to_numpy().astype(np.float64)
        k = np.where(calls, np.minimum(k, e_win), k)
        n_base = table["n_base"].to_numpy().astype(np.float64)
        e_base = np.maximum(table["exposure_base"].to_numpy().astype(np.float64), 1.0)
        # posterior predictive of the window count given the baseline (Jeffreys prior): beta-binomial for the
        # share of calls, gamma-Poisson (negative binomial) for a rate per line; a short baseline is uncertain
        a, b = n_base + 0.5, np.maximum(e_base - n_base, 0.0) + 0.5
        p_up = np.where(
            k > 0,
            np.where(
                calls,
                stats.betabinom.sf(k - 1, e_win, a, b),
                stats.nbinom.sf(k - 1, a, e_base / (e_base + e_win)),
            ),
            1.0,
        )
        up = p_up <= self.alpha
        # per-line exposure: the drop test leaves out the lines of new and surging templates of the context
        flood = (
            table.with_columns(pl.Series("_up", up))
            .select(pl.col("n_win").filter(pl.col("_up")).sum().over("service", "operation").fill_null(0))
            .to_series()
            .to_numpy()
        )
        e_ref = np.where(calls, e_win, np.maximum(e_win - flood, 0.0))
        lam_down = e_ref * np.where(calls, a / (a + b), a / e_base)
        lam = e_win * np.where(calls, a / (a + b), a / e_base)
        p_down = np.where(
            (lam_down >= self.min_expected) & (k < lam_down),
            np.where(
                calls, stats.betabinom.cdf(k, e_win, a, b), stats.nbinom.cdf(k, a, e_base / (e_base + e_ref))
            ),
            1.0,
        )
        new = (table["n_base"] == 0).to_numpy()
        change = np.where(up, np.where(new, "new", "surge"), np.where(p_down < p_up, "drop", "surge"))
        p = np.where(change == "drop", p_down, p_up)
        significance = np.minimum(-np.log10(np.maximum(p, 1e-300)), self.max_significance)
        kind_weight = np.where(
            change == "drop", self.drop_weight, np.where(change == "new", self.new_weight, 1.0)
        )
        table = table.with_columns(
            pl.Series("change", change),
            pl.Series("p", p),
            pl.Series("expected", np.where(change == "drop", lam_down, lam)),
            pl.Series("_weight", significance * kind_weight * self._effect(calls, k, e_win, n_base, e_base)),
        )
        severity = (
            pl.when(pl.col("change") == "drop")
            .then(1.0)
            .otherwise(_severity_weight(pl.col("severity_number")))
        )
        return table.with_columns((pl.col("_weight") * severity).alias("score"))

    def _effect(
        self, calls: np.ndarray, k: np.ndarray, e_win: np.ndarray, n_base: np.ndarray, e_base: np.ndarray
    ) -> np.ndarray:
        """How much the template changed, in [0, 1]: the change of its share of calls (a code path that every
        call took and none takes any more is 1), or per line the relative change of its rate.

        Significance alone grows with traffic: a busy service's data-dependent branch that shifts from 90 % to
        50 % of calls is as "significant" as a path that vanished, but a fault rarely changes a path halfway.
        """
        if not self.weigh_effect:
            return np.ones_like(k)
        before = n_base / np.maximum(e_base, 1)
        after = k / np.maximum(e_win, 1)
        relative = np.abs(after - before) / np.maximum(np.maximum(after, before), 1e-12)
        return np.clip(np.where(calls, np.abs(after - before), relative), 0.0, 1.0)

    def _candidate(self, row: dict, onset: datetime) -> Candidate:
        change, service, operation = row["change"], row["service"], row["operation"]
        where = f"{service} ({operation})" if operation else service
        before, after = int(row["n_base"]), int(row["n_win"])
        severity = row["severity"] or "unknown-severity"
        per = "calls" if row["unit"] == "calls" else "lines"
        exposure = f"{int(row['exposure_base'])} {per} before, {int(row['exposure_win'])} after"
        if change == "new":
            text = f"{where} logged a new {severity} line {after} times after the onset, never before ({exposure})"
        elif change == "surge":
            text = f"{where} logged the {severity} line {after} times after the onset, {before} times before ({exposure})"
        else:
            text = (
                f"{where} stopped logging a template: {after} times after the onset where {row['expected']:.1f} "
                f"were expected ({before} before; {exposure})"
            )
        evidence = {
            "change": change,
            "operation": operation or None,
            "count_baseline": before,
            "count_window": after,
            "expected_window": round(float(row["expected"]), 3),
            "exposure_unit": per,
            "exposure_baseline": int(row["exposure_base"]),
            "exposure_window": int(row["exposure_win"]),
            "p_value": float(row["p"]),
            "severity": row["severity"],
            "severity_number": int(row["severity_number"]),
            "example": row["example_window"] if change != "drop" else row["example_baseline"],
            "first_seen": row["first_seen"].isoformat() if row["first_seen"] is not None else None,
            "template_id": row["template_id"],
            "explained_by": row.get("explained_by"),
            "onset": onset.isoformat(),
        }
        labels = {"template": row["template"]}
        if operation:
            labels["operation"] = operation
        if row.get("explained_by"):
            text += f"; in the same requests its dependency {row['explained_by']} changed too"
        p_text = "< 1e-30" if row["p"] < 1e-30 else f"= {row['p']:.2g}"
        return Candidate(
            kind="log",
            service=service,
            score=float(row["score"]),
            explanation=f"{text}; p {p_text}.",
            labels=labels,
            evidence=evidence,
        )
