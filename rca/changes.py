"""Change-event root-cause ranking: which deploy, rollout, config or flag change most likely caused the incident.

Most outages follow a change (Google SRE book, ch. 1: "roughly 70% of outages are due to changes in a live
system"), so every change recorded in ``events`` in ``[onset - lookback, onset + slack)`` is a candidate. The
slack lets a change stamped a few minutes *after* the onset in: event clocks and detection lag differ. Each
candidate's score is a product of independent factors, like a naive-Bayes likelihood ratio:

``score = time × topology × kind_prior × agreement``

* **time** ``= 0.5 ** (|minutes before onset| / half_life)`` (half-life 15 min): a change just before the
  onset is more suspicious than one 90 minutes earlier. Inside the slack the clocks are not trusted to the
  minute, so distance counts both ways.
* **topology** ``= 1`` on the incident's own service, ``hop_decay ** hops`` (0.5 per hop) on a service it
  calls directly or not (a callee's change propagates up to the caller), ``upstream_penalty × hop_decay **
  hops`` on a service that calls it (a gateway's rate limit can also hurt), never less than ``unrelated`` (0.1),
  the factor of a service with no known path. The graph is the declared edges plus the span-derived ones
  (parent span's service → child span's service); without topology only same-service changes get the bonus.
* **kind_prior** (:data:`KIND_PRIOR`, 0.4 … 1): deploys and model rollouts change code or weights (1.0);
  config and flags change behaviour (0.9); infra events (node drain, network) are real causes but often
  shared and hard to attribute (0.7); unknown kinds 0.5; scale events are often *reactions* to the incident
  (an autoscaler following the load), so 0.4. Small spread on purpose: time and topology decide first.
* **agreement** ``= 1 + dimension_boost × d + label_boost × l``: ``d`` is the best fraction of a localised
  dimension combination's ``key=value`` pairs that the change mentions (e.g. ``model_version=v42`` from
  :mod:`rca.dimensions`), ``l`` is 1 when it mentions one of the incident's own labels. A change "mentions" a
  value when one of its attribute values equals it, whatever the key (``version=v42`` matches
  ``model_version=v42``), or when its title contains it as a whole token; both case-insensitive. A change to
  the very thing the data localised is strong evidence, so ``dimension_boost`` is 3 (×4 at full match).

Without agreement the score is in ``(0, 1]``; agreement multiplies it by up to ``1 + dimension_boost +
label_boost`` (5 by default).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import ClassVar

import polars as pl

from ingest import schema
from rca.base import Candidate, RcaIncident, RcaResult, View, labels_dict

#: prior weight of each change kind (:data:`ingest.schema.EVENT_KINDS`); unknown or missing kinds use ``other``
KIND_PRIOR: Mapping[str, float] = {
    "deploy": 1.0,
    "model_rollout": 1.0,
    "config": 0.9,
    "feature_flag": 0.9,
    "infra": 0.7,
    "other": 0.5,
    "scale": 0.4,
}

#: columns of :func:`score_changes` after the event columns
SCORE_COLUMNS = (
    "minutes_before_onset",
    "time_factor",
    "direction",
    "hops",
    "topology_factor",
    "kind_prior",
    "dimension_match",
    "matched_dimensions",
    "matched_labels",
    "agreement",
    "score",
)

Dimension = Mapping[str, str] | Candidate


@dataclass(frozen=True)
class ChangeWeights:
    """The weights of :func:`score_changes` (see the module docstring for why each has its value).

    Parameters
    ----------
    half_life
        Time distance from the onset at which the time factor halves.
    hop_decay
        Topology factor per hop along the call graph.
    upstream_penalty
        Extra factor for a service that calls the incident's service (reverse direction).
    unrelated
        Topology factor of a service with no known path to the incident's service (also the floor).
    kind_prior
        Prior weight per change kind; the ``other`` entry is used for unknown or missing kinds.
    dimension_boost, label_boost
        Agreement bonus for a full match of a localised dimension combination, and for a match of one of
        the incident's labels.
    """

    half_life: timedelta = timedelta(minutes=15)
    hop_decay: float = 0.5
    upstream_penalty: float = 0.5
    unrelated: float = 0.1
    kind_prior: Mapping[str, float] = field(default_factory=lambda: dict(KIND_PRIOR))
    dimension_boost: float = 3.0
    label_boost: float = 1.0

    def __post_init__(self) -> None:
        if self.half_life <= timedelta(0):
            raise ValueError("half_life must be positive")
        for name in ("hop_decay", "upstream_penalty", "unrelated"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.dimension_boost < 0 or self.label_boost < 0:
            raise ValueError("dimension_boost and label_boost must be >= 0")
        if "other" not in self.kind_prior:
            raise ValueError("kind_prior needs an 'other' entry (used for unknown kinds)")


@dataclass(frozen=True)
class ChangeAnalyser:
    """Rank the change events before the onset by time, topology, kind and agreement with localised dimensions.

    Parameters
    ----------
    dimensions
        Label combinations another analyser localised, e.g. ``({"model_version": "v42"},)``: mappings, or
        :class:`Candidate` objects (only ``dimension`` candidates count; their labels are used). The
        incident's own labels are matched anyway; do not add them here.
    lookback
        How far before the onset changes are considered.
    slack
        How far after the onset a change still counts (event clocks and detection lag differ).
    weights
        Scoring weights (:class:`ChangeWeights`).
    max_candidates
        How many candidates the result keeps (best first); a note says when some were left out.

    Examples
    --------
    >>> from datetime import datetime, timedelta
    >>> from rca.base import FrameView
    >>> onset = datetime(2026, 1, 1, 3, 0)
    >>> events = pl.DataFrame({
    ...     "event_id": ["e1", "e2"],
    ...     "ts": [onset - timedelta(minutes=90), onset - timedelta(minutes=3)],
    ...     "service": ["billing", "llm-serving"],
    ...     "kind": ["deploy", "model_rollout"],
    ...     "title": ["Deploy billing 1.4", "Promote m-large v42"],
    ...     "attributes": [[], [{"key": "model_version", "value": "v42"}]],
    ... })
    >>> inc = RcaIncident("llm-serving", "latency_p99", onset, onset + timedelta(minutes=20))
    >>> analyser = ChangeAnalyser(dimensions=({"model_version": "v42"},))
    >>> result = analyser.explain(inc, FrameView(events=events))
    >>> [c.event_id for c in result.ranked()]
    ['e2', 'e1']
    >>> result.ranked()[0].explanation
    "model_rollout 'Promote m-large v42' on llm-serving 3 min before onset; matches model_version=v42"
    >>> ChangeAnalyser().explain(inc, FrameView()).notes[0][:40]
    'No change (deploy, rollout, config, flag'
    """

    dimensions: tuple[Dimension, ...] = ()
    lookback: timedelta = timedelta(hours=2)
    slack: timedelta = timedelta(minutes=5)
    weights: ChangeWeights = field(default_factory=ChangeWeights)
    max_candidates: int = 50

    name: ClassVar[str] = "changes"

    def __post_init__(self) -> None:
        if self.lookback <= timedelta(0):
            raise ValueError("lookback must be positive")
        if self.slack < timedelta(0):
            raise ValueError("slack must be >= 0")

    def explain(self, incident: RcaIncident, view: View) -> RcaResult:
        """Change candidates for ``incident``, scored from the events and topology in ``view``."""
        events = changes_before(incident, view, self.lookback, slack=self.slack)
        if events.is_empty():
            return RcaResult(self.name, (), (_no_change_note(self.lookback),))
        notes: list[str] = []
        graph = service_graph(view, incident.onset - self.lookback, incident.end)
        if incident.service not in set(graph["source"].to_list()) | set(graph["target"].to_list()):
            notes.append(
                f"topology: {incident.service} is not in the service graph; "
                "only changes on it get the topology bonus"
            )
        scored = score_changes(events, incident, graph, self.dimensions, weights=self.weights)
        if scored.height > self.max_candidates:
            notes.append(f"{scored.height - self.max_candidates} lower-scored changes left out")
        candidates = tuple(
            _candidate(row, incident) for row in scored.head(self.max_candidates).iter_rows(named=True)
        )
        return RcaResult(self.name, candidates, tuple(notes))


def changes_before(
    incident: RcaIncident,
    view: View,
    window: timedelta = timedelta(hours=2),
    *,
    slack: timedelta = timedelta(minutes=5),
) -> pl.DataFrame:
    """Change events in ``[onset - window, onset + slack)``, by time then ``event_id``.

    Returns
    -------
    pl.DataFrame
        :data:`ingest.schema.EVENTS` columns.

    Examples
    --------
    >>> from datetime import datetime, timedelta
    >>> from rca.base import FrameView
    >>> onset = datetime(2026, 1, 1, 3, 0)
    >>> ev = pl.DataFrame({"event_id": ["old", "in", "late"], "service": ["a"] * 3,
    ...                    "ts": [onset - timedelta(hours=3), onset, onset + timedelta(minutes=6)]})
    >>> inc = RcaIncident("a", None, onset, onset + timedelta(minutes=10))
    >>> changes_before(inc, FrameView(events=ev))["event_id"].to_list()
    ['in']
    """
    events = view.events(incident.onset - window, incident.onset + slack)
    return events.select(list(schema.EVENTS)).sort("ts", "event_id", nulls_last=True)


def service_graph(view: View, start: datetime | None, end: datetime | None) -> pl.DataFrame:
    """Caller → callee edges: the view's declared edges plus those of spans starting in ``[start, end)``
    (a parent span's service calls its child span's service, joined on ``trace_id`` and
    ``parent_span_id = span_id``).

    Returns
    -------
    pl.DataFrame
        ``source, target, origin`` (``declared``, ``spans`` or ``both``), one row per edge, sorted.

    Examples
    --------
    >>> from rca.base import FrameView
    >>> spans = pl.DataFrame({"trace_id": ["t", "t"], "span_id": ["a", "b"], "parent_span_id": [None, "a"],
    ...                       "service": ["rag-api", "vector-db"]})
    >>> edges = pl.DataFrame({"source": ["gateway"], "target": ["rag-api"]})
    >>> service_graph(FrameView(spans=spans, edges=edges), None, None).rows()
    [('gateway', 'rag-api', 'declared'), ('rag-api', 'vector-db', 'spans')]
    """
    declared = view.edges().select("source", "target").drop_nulls().unique()
    spans = view.spans(start, end).select("trace_id", "span_id", "parent_span_id", "service")
    parents = spans.select("trace_id", "span_id", pl.col("service").alias("source")).drop_nulls()
    observed = (
        spans.drop_nulls(["trace_id", "parent_span_id", "service"])
        .join(parents, left_on=["trace_id", "parent_span_id"], right_on=["trace_id", "span_id"])
        .filter(pl.col("source") != pl.col("service"))
        .select("source", pl.col("service").alias("target"))
        .unique()
    )
    return (
        declared.with_columns(pl.lit(True).alias("_declared"))
        .join(
            observed.with_columns(pl.lit(True).alias("_spans")),
            on=["source", "target"],
            how="full",
            coalesce=True,
        )
        .select(
            "source",
            "target",
            pl.when(pl.col("_declared") & pl.col("_spans"))
            .then(pl.lit("both"))
            .when(pl.col("_declared"))
            .then(pl.lit("declared"))
            .otherwise(pl.lit("spans"))
            .alias("origin"),
        )
        .sort("source", "target")
    )


def service_hops(graph: pl.DataFrame, service: str) -> pl.DataFrame:
    """Shortest hop counts from ``service``: ``downstream_hops`` following caller → callee edges (services it
    calls, directly or not) and ``upstream_hops`` against them (services that call it); ``service`` itself has
    0 both ways. Services reachable neither way are absent.

    Examples
    --------
    >>> g = pl.DataFrame({"source": ["gateway", "rag-api", "vector-db"],
    ...                   "target": ["rag-api", "vector-db", "disk"]})
    >>> service_hops(g, "rag-api").rows()
    [('disk', 2, None), ('gateway', None, 1), ('rag-api', 0, 0), ('vector-db', 1, None)]
    """
    calls: dict[str, list[str]] = {}
    callers: dict[str, list[str]] = {}
    for source, target in graph.select("source", "target").unique().sort("source", "target").iter_rows():
        calls.setdefault(source, []).append(target)
        callers.setdefault(target, []).append(source)
    down, up = _bfs(calls, service), _bfs(callers, service)
    names = sorted(set(down) | set(up))
    return pl.DataFrame(
        {
            "service": names,
            "downstream_hops": [down.get(n) for n in names],
            "upstream_hops": [up.get(n) for n in names],
        },
        schema={"service": pl.Utf8, "downstream_hops": pl.Int64, "upstream_hops": pl.Int64},
    )


def score_changes(
    events: pl.DataFrame,
    incident: RcaIncident,
    graph: pl.DataFrame,
    dimensions: Sequence[Dimension] = (),
    *,
    weights: ChangeWeights | None = None,
) -> pl.DataFrame:
    """Score change events against an incident, one factor per column (see the module docstring).

    Parameters
    ----------
    events
        Change events (:data:`ingest.schema.EVENTS` columns), e.g. from :func:`changes_before`.
    graph
        Caller → callee edges (``source, target``), e.g. from :func:`service_graph`; may be empty.
    dimensions
        Localised label combinations: mappings, or :class:`Candidate` objects (only ``dimension``
        candidates count; their labels are used).

    Returns
    -------
    pl.DataFrame
        The event columns plus :data:`SCORE_COLUMNS`, best first (ties: later change first, then
        ``event_id``). ``minutes_before_onset`` is negative after the onset; ``direction`` is ``self``,
        ``downstream``, ``upstream`` or ``unrelated``; ``hops`` is null when unrelated.

    Examples
    --------
    >>> from datetime import datetime, timedelta
    >>> onset = datetime(2026, 1, 1, 3, 0)
    >>> ev = pl.DataFrame({"event_id": ["e1", "e2"], "ts": [onset - timedelta(minutes=15)] * 2,
    ...                    "service": ["vector-db", "billing"], "kind": ["config", "config"],
    ...                    "title": ["Lower ef_search", "Rotate keys"]})
    >>> graph = pl.DataFrame({"source": ["rag-api"], "target": ["vector-db"]})
    >>> inc = RcaIncident("rag-api", None, onset, onset + timedelta(minutes=10))
    >>> scored = score_changes(ev, inc, graph).with_columns(pl.col("score").round(4))
    >>> scored.select("event_id", "direction", "topology_factor", "score").rows()
    [('e1', 'downstream', 0.5, 0.225), ('e2', 'unrelated', 0.1, 0.045)]
    """
    w = weights or ChangeWeights()
    columns = schema.empty(schema.EVENTS).schema
    missing = [pl.lit(None, dtype=t).alias(c) for c, t in columns.items() if c not in events.columns]
    events = events.with_columns(missing).select([pl.col(c).cast(t) for c, t in columns.items()])
    hops = service_hops(graph, incident.service)
    minutes = (pl.lit(incident.onset, dtype=schema.TS) - pl.col("ts")).dt.total_microseconds() / 60e6
    down = w.hop_decay ** pl.col("downstream_hops").cast(pl.Float64)
    up = w.upstream_penalty * w.hop_decay ** pl.col("upstream_hops").cast(pl.Float64)
    down_wins = pl.col("upstream_hops").is_null() | (down >= up)
    pairs, groups = _dimension_pairs(dimensions)
    label_pairs = [(k, v) for k, v in sorted(incident.labels.items()) if v != ""]
    hit = {pair: _mentions(pair[1]) for pair in dict.fromkeys(pairs + label_pairs)}
    d = (
        pl.max_horizontal([pl.mean_horizontal([hit[p].cast(pl.Float64) for p in g]) for g in groups])
        if groups
        else pl.lit(0.0)
    )
    has_label = pl.any_horizontal([hit[p] for p in label_pairs]) if label_pairs else pl.lit(False)

    return (
        events.with_columns(
            pl.col("attributes")
            .list.eval(pl.element().struct.field("value").str.to_lowercase())
            .alias("_values"),
            pl.col("title").str.to_lowercase().alias("_title"),
        )
        .join(hops, on="service", how="left")
        .with_columns(
            minutes.alias("minutes_before_onset"),
            (0.5 ** (minutes.abs() / (w.half_life.total_seconds() / 60.0))).alias("time_factor"),
            pl.when(pl.col("service") == incident.service)
            .then(pl.lit("self"))
            .when(pl.col("downstream_hops").is_not_null() & down_wins)
            .then(pl.lit("downstream"))
            .when(pl.col("upstream_hops").is_not_null())
            .then(pl.lit("upstream"))
            .otherwise(pl.lit("unrelated"))
            .alias("direction"),
            pl.max_horizontal(down, up, pl.lit(w.unrelated)).alias("topology_factor"),
            pl.col("kind")
            .replace_strict(dict(w.kind_prior), default=w.kind_prior["other"], return_dtype=pl.Float64)
            .alias("kind_prior"),
            d.fill_null(0.0).alias("dimension_match"),
            _matched(pairs, hit).alias("matched_dimensions"),
            _matched(label_pairs, hit).alias("matched_labels"),
            has_label.fill_null(False).alias("_label_match"),
        )
        .with_columns(
            pl.when(pl.col("direction") == "self")
            .then(pl.lit(0, dtype=pl.Int64))
            .when(pl.col("direction") == "downstream")
            .then(pl.col("downstream_hops"))
            .when(pl.col("direction") == "upstream")
            .then(pl.col("upstream_hops"))
            .alias("hops"),
            (
                1.0
                + w.dimension_boost * pl.col("dimension_match")
                + w.label_boost * pl.col("_label_match").cast(pl.Float64)
            ).alias("agreement"),
        )
        .with_columns(
            (
                pl.col("time_factor") * pl.col("topology_factor") * pl.col("kind_prior") * pl.col("agreement")
            ).alias("score")
        )
        .sort(["score", "ts", "event_id"], descending=[True, True, False], nulls_last=True)
        .select(*schema.EVENTS, *SCORE_COLUMNS)
    )


def _bfs(adjacency: Mapping[str, Sequence[str]], start: str) -> dict[str, int]:
    dist = {start: 0}
    todo = deque([start])
    while todo:
        node = todo.popleft()
        for nxt in adjacency.get(node, ()):
            if nxt not in dist:
                dist[nxt] = dist[node] + 1
                todo.append(nxt)
    return dist


def _dimension_pairs(
    dimensions: Sequence[Dimension],
) -> tuple[list[tuple[str, str]], list[list[tuple[str, str]]]]:
    """Distinct ``(key, value)`` pairs in first-seen order, and each combination's pairs (empty values and
    non-``dimension`` candidates dropped)."""
    groups: list[list[tuple[str, str]]] = []
    for dim in dimensions:
        if isinstance(dim, Candidate):
            if dim.kind != "dimension":
                continue
            dim = dim.labels
        group = [(str(k), str(v)) for k, v in dim.items() if str(v) != ""]
        if group:
            groups.append(group)
    pairs = list(dict.fromkeys(p for g in groups for p in g))
    return pairs, groups


def _mentions(value: str) -> pl.Expr:
    """True where an attribute value equals ``value`` or the title contains it as a whole token (both
    case-insensitive). Every character is written as a ``\\x{..}`` escape, so no value is read as regex."""
    needle = value.lower()
    literal = "".join(f"\\x{{{ord(c):x}}}" for c in needle)
    in_title = pl.col("_title").str.contains(rf"(?:^|[^\p{{L}}\p{{N}}]){literal}(?:$|[^\p{{L}}\p{{N}}])")
    return (pl.col("_values").list.contains(needle).fill_null(False) | in_title.fill_null(False)).fill_null(
        False
    )


def _matched(pairs: Sequence[tuple[str, str]], hit: Mapping[tuple[str, str], pl.Expr]) -> pl.Expr:
    """The ``key=value`` texts of the pairs a change mentions, in the pairs' order."""
    if not pairs:
        return pl.lit([], dtype=pl.List(pl.Utf8))
    texts = [
        pl.when(hit[p]).then(pl.lit(f"{p[0]}={p[1]}")).otherwise(pl.lit(None, dtype=pl.Utf8)) for p in pairs
    ]
    return pl.concat_list(texts).list.drop_nulls()


def _no_change_note(lookback: timedelta) -> str:
    hours = lookback.total_seconds() / 3600
    span = f"{hours:g} h" if hours >= 1 else f"{lookback.total_seconds() / 60:g} min"
    return (
        f"No change (deploy, rollout, config, flag, scale, infra) in the {span} before onset; "
        "most outages follow a change — check changes not recorded in Rootwise."
    )


def _when(minutes: float) -> str:
    if abs(minutes) < 0.5:
        return "at onset"
    return f"{abs(minutes):.0f} min {'before' if minutes > 0 else 'after'} onset"


def _where(row: dict, incident: RcaIncident) -> str:
    service = row["service"] if row["service"] is not None else "an unknown service"
    direction, hops = row["direction"], row["hops"]
    plural = "" if hops == 1 else "s"
    if direction == "downstream":
        return f"on {service} (called by {incident.service}, {hops} hop{plural})"
    if direction == "upstream":
        return f"on {service} (calls {incident.service}, {hops} hop{plural})"
    if direction == "unrelated":
        return f"on {service} (no known path to {incident.service})"
    return f"on {service}"


def _candidate(row: dict, incident: RcaIncident) -> Candidate:
    matched = [*row["matched_dimensions"], *row["matched_labels"]]
    explanation = f"{row['kind'] or 'change'} '{row['title'] or row['event_id']}' {_where(row, incident)} {_when(row['minutes_before_onset'])}"
    if matched:
        explanation += f"; matches {', '.join(matched)}"
    evidence = {
        "ts": row["ts"].isoformat() if row["ts"] is not None else None,
        "minutes_before_onset": round(float(row["minutes_before_onset"]), 2),
        "kind": row["kind"],
        "title": row["title"],
        "hops": row["hops"],
        "direction": row["direction"],
        "matched_dimensions": list(row["matched_dimensions"]),
        "matched_labels": list(row["matched_labels"]),
        "time_factor": round(float(row["time_factor"]), 6),
        "topology_factor": round(float(row["topology_factor"]), 6),
        "kind_prior": float(row["kind_prior"]),
        "agreement": round(float(row["agreement"]), 6),
    }
    return Candidate(
        kind="change",
        service=row["service"],
        event_id=row["event_id"],
        labels=labels_dict(row["attributes"]),
        score=float(row["score"]),
        evidence=evidence,
        explanation=explanation,
    )
