"""The root-cause engine: every analyser on one incident, combined into one ranked list with explanations.

Order of work (each step may use what the previous found):

1. **Dimensions** over the usage KPIs (error rate, mean latency, requests, tokens, cost per tenant / model /
   version / region …) — which label combinations deviate.
2. **Changes** in the window before onset, told which dimensions were localised (a rollout of ``v42`` and the
   dimension ``model_version=v42`` agree).
3. **Topology**, **metrics** and **logs** — which services are abnormal, in what order, and why.

Combination. Each analyser's scores are first made comparable: ``relative = score / best score of that
analyser`` (so 1 is the analyser's strongest finding) times the analyser's *strength*, a saturating function
of its best raw score (a BARO score of 3 is weak, of 30 strong; a dimension explaining 90 % of a rise is
strong). A **service** gets the weighted sum of the evidence of topology, metrics and logs about it (the
"consensus"). A **change** keeps its own score, boosted when its service is the consensus root-cause service or
it agrees with a localised dimension — the change is then ranked as *the* root cause and the service where it
shows second, because the change is what the on-call engineer can act on (roll it back). Metric and log
candidates are evidence for their services and rank below them. When the top services are linked on the
dependency graph, a service whose own onset is earlier (topology's ordering) stays above its callers: a
symptom never outranks its cause when the cause is in the data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from rca.base import Candidate, RcaIncident, RcaResult, View


@dataclass(frozen=True)
class DimensionKpi:
    """A KPI to localise: a ratio ``numerator / denominator`` or an additive ``metric``, over series of
    ``kinds`` (usage rows are ``delta`` series with tenant/model/region labels)."""

    name: str
    metric: str | None = None
    numerator: str | None = None
    denominator: str | None = None
    kinds: tuple[str, ...] = ("delta", "counter")
    #: rises only by default: a falling error rate or latency is good news, not a cause
    direction: str = "up"


#: usage KPIs in the OpenTelemetry-GenAI / gateway-usage style; any that the store lacks are skipped
DEFAULT_KPIS = (
    DimensionKpi("error rate", numerator="errors", denominator="requests"),
    DimensionKpi("mean latency", numerator="latency_ms_sum", denominator="requests"),
    DimensionKpi("requests", metric="requests"),
    DimensionKpi("input tokens", metric="input_tokens"),
    DimensionKpi("cost", metric="cost_usd"),
)


class KindView:
    """A view that shows only series of some kinds (e.g. usage ``delta`` rows, not per-instance counters)."""

    def __init__(self, view: View, kinds: Sequence[str]) -> None:
        self._view, self._kinds = view, list(kinds)

    def series(self, metric: str | None = None, service: str | None = None) -> pl.DataFrame:
        return self._view.series(metric=metric, service=service).filter(pl.col("kind").is_in(self._kinds))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._view, name)


def _saturate(x: float, half: float) -> float:
    """``x / (x + half)``: 0 for nothing, 0.5 at ``half``, towards 1 for strong findings."""
    return max(0.0, x) / (max(0.0, x) + half) if half > 0 else 1.0


#: per engine step: the analyser's raw best score at which its strength is 0.5
STRENGTH_HALF = {"topology": 1.0, "metrics": 8.0, "logs": 3.0, "dimensions": 0.3, "changes": 0.5}
#: Poisson log-likelihood ratio of a dimension at which its evidence counts half: a 0.00 % -> 0.08 % error rate
#: on a few hundred requests is a big relative move but no evidence
SURPRISE_HALF = 30.0
#: per engine step: its weight in a service's consensus score
CONSENSUS_WEIGHTS = {"topology": 1.0, "metrics": 0.8, "logs": 0.6}


@dataclass(frozen=True)
class RootCauseEngine:
    """Run the analysers on one incident and combine their candidates (see the module docstring).

    Parameters
    ----------
    kpis
        Usage KPIs the dimension analyser localises.
    analysers
        Which steps run (``dimensions``, ``changes``, ``topology``, ``metrics``, ``logs``).
    max_causes
        Length of the combined list.
    """

    kpis: tuple[DimensionKpi, ...] = DEFAULT_KPIS
    analysers: tuple[str, ...] = ("dimensions", "changes", "topology", "metrics", "logs")
    max_causes: int = 15
    change_boost: float = 1.0
    timings: dict[str, float] = field(default_factory=dict, compare=False, hash=False)

    name = "rootwise"

    def explain(self, incident: RcaIncident, view: View) -> RcaResult:
        notes: list[str] = []
        results: dict[str, RcaResult] = {}

        def run(name: str, step: Callable[[], RcaResult | None]) -> None:
            if name.split(":")[0] not in self.analysers:
                return
            t0 = time.perf_counter()
            try:
                result = step()
            except Exception as exc:  # noqa: BLE001 - one failing analyser must not hide the others' findings
                notes.append(f"{name} failed: {type(exc).__name__}: {exc}")
                result = None
            self.timings[name] = round(time.perf_counter() - t0, 4)
            if result is not None:
                results[name] = result
                notes.extend(f"{name}: {n}" if not n.startswith(name) else n for n in result.notes)

        run("dimensions", lambda: self._dimensions(incident, view))
        dims = [c.labels for c in results.get("dimensions", RcaResult("d")).ranked()[:3]]
        run(
            "changes", lambda: _changes(incident, view, [*dims, incident.labels] if incident.labels else dims)
        )
        run("topology", lambda: _analyser("rca.topology", "TopologyAnalyser").explain(incident, view))
        run("metrics", lambda: _analyser("rca.metrics", "MetricShiftAnalyser").explain(incident, view))
        run("logs", lambda: _analyser("rca.logs", "LogTemplateAnalyser").explain(incident, view))
        causes = combine(results)[: self.max_causes]
        return RcaResult(self.name, tuple(causes), tuple(dict.fromkeys(notes)))

    def _dimensions(self, incident: RcaIncident, view: View) -> RcaResult | None:
        """The localisation of the KPI that moved most, among the services near the incident's on the call
        graph (its callees, and callers up to two hops, whose usage rows only count); candidate scores are the share of the move they explain
        times how much the KPI moved (a 2x error rate is strong, the usual 10 % hour-to-hour drift of traffic is
        not: :func:`kpi_strength`) times how surprising the count is (``SURPRISE_HALF``)."""
        from rca.changes import service_graph, service_hops
        from rca.dimensions import DimensionAnalyser

        graph = service_graph(view, incident.baseline_start, incident.end)
        near: set[str] | None = None
        callers: set[str] = set()
        if incident.service in set(graph["source"].to_list()) | set(graph["target"].to_list()):
            hops = service_hops(graph, incident.service)
            near_rows = hops.filter(pl.col("downstream_hops").is_not_null() | (pl.col("upstream_hops") <= 2))
            near = set(near_rows["service"])
            callers = set(hops.filter(pl.col("downstream_hops").is_null())["service"])
        best: RcaResult | None = None
        best_strength = 0.0
        for kpi in self.kpis:
            metric = kpi.numerator or kpi.metric
            kview = KindView(view, kpi.kinds)
            services = kview.series(metric=metric)["service"].unique().sort().to_list()
            for service in services:
                if near is not None and service not in near:
                    continue  # a sibling's usage says nothing about this incident
                # a caller's own per-instance counters show the incident's symptoms (its instances that call the
                # broken service fail); its usage rows (tenant, model, ...) still localise the cause
                kview = KindView(view, ("delta",) if service in callers else kpi.kinds)
                sub = replace(incident, service=service, metric=kpi.metric or kpi.numerator, labels={})
                analyser = DimensionAnalyser(
                    numerator=kpi.numerator,
                    denominator=kpi.denominator,
                    kpi_name=kpi.name,
                    direction=kpi.direction,
                )
                result = analyser.explain(sub, kview)
                if not result.candidates:
                    continue
                top = result.ranked()[0]
                surprise = float(top.evidence.get("surprise") or 0.0)
                strength = kpi_strength(top.evidence.get("kpi_actual"), top.evidence.get("kpi_expected"))
                strength *= _saturate(surprise, SURPRISE_HALF)
                if strength > best_strength:
                    scaled = tuple(
                        replace(
                            c, score=c.score * strength, evidence={**c.evidence, "kpi_strength": strength}
                        )
                        for c in result.candidates
                    )
                    best, best_strength = replace(result, candidates=scaled), strength
        return best


def kpi_strength(actual: float | None, expected: float | None, half: float = 0.5) -> float:
    """How far a KPI moved, in ``[0, 1)``: ``|log(actual / expected)|`` saturated at ``half`` (0.5 ≈ x1.65).

    Examples
    --------
    >>> round(kpi_strength(2.0, 1.0), 2), round(kpi_strength(1.1, 1.0), 2), kpi_strength(None, 1.0)
    (0.58, 0.16, 0.0)
    """
    if actual is None or expected is None or actual < 0 or expected < 0:
        return 0.0
    if actual == expected:
        return 0.0
    if actual == 0 or expected == 0:  # from nothing, or down to nothing: as far as a KPI can move
        return _saturate(50.0, half)
    return _saturate(abs(math.log(actual / expected)), half)


def _analyser(module: str, cls: str) -> Any:
    import importlib

    return getattr(importlib.import_module(module), cls)()


def _changes(incident: RcaIncident, view: View, dimensions: list[dict[str, str]]) -> RcaResult:
    from rca.changes import ChangeAnalyser

    return ChangeAnalyser(dimensions=tuple(dimensions)).explain(incident, view)


def _relative(result: RcaResult, kinds: Sequence[str], step: str) -> list[tuple[Candidate, float]]:
    cands = [c for c in result.ranked() if c.kind in kinds]
    if not cands:
        return []
    top = max(c.score for c in cands)
    if top <= 0:
        return []
    # dimension scores already carry their strength (explained share x KPI move, see _dimensions)
    strength = top if step == "dimensions" else _saturate(top, STRENGTH_HALF.get(step, 1.0))
    return [(c, strength * c.score / top) for c in cands]


def combine(results: dict[str, RcaResult]) -> list[Candidate]:
    """One ranked list from the analysers' results (see the module docstring for the rule)."""
    consensus: dict[str, float] = {}
    evidence: dict[str, list[str]] = {}
    for name, weight in CONSENSUS_WEIGHTS.items():
        result = results.get(name)
        if result is None:
            continue
        best: dict[str, float] = {}
        for c, rel in _relative(result, ("service", "metric", "log"), name):
            if c.service is not None and rel > best.get(c.service, 0.0):
                best[c.service] = rel
        for service, rel in best.items():
            consensus[service] = consensus.get(service, 0.0) + weight * rel
            evidence.setdefault(service, []).append(f"{name} {rel:.2f}")
    total = sum(w for n, w in CONSENSUS_WEIGHTS.items() if n in results) or 1.0
    ranked_services = sorted(consensus, key=lambda s: (-consensus[s], s))
    top_service = ranked_services[0] if ranked_services else None

    out: list[Candidate] = []
    topo = {c.service: c for c in results.get("topology", RcaResult("t")).candidates if c.kind == "service"}
    for service in ranked_services:
        score = consensus[service] / total
        base = topo.get(service)
        healthy = base is not None and base.score <= 0
        explanation = (
            base.explanation
            if base is not None and not healthy
            else f"{service} moved at onset ({', '.join(evidence[service])})"
            + (" although its spans look healthy." if healthy else ".")
        )
        out.append(
            Candidate(
                kind="service",
                service=service,
                score=score,
                explanation=explanation,
                evidence={**(base.evidence if base else {}), "consensus": evidence[service]},
            )
        )
    if "changes" in results:
        dims = results.get("dimensions")
        dim_labels = [c.labels for c in dims.ranked()[:3]] if dims else []
        for c, rel in _relative(results["changes"], ("change",), "changes"):
            agrees = bool(c.evidence.get("matched_dimensions"))
            on_root = c.service is not None and c.service == top_service
            boost = 1.0 + (1.0 if agrees else 0.0) + (0.5 if on_root else 0.0)
            why = []
            if agrees:
                why.append("it matches the localised dimensions")
            if on_root:
                why.append(f"{c.service} is the most abnormal service")
            text = c.explanation
            if why:  # two sentences: the change's own explanation has no full stop
                text = f"{text.rstrip('.')}. Likely root cause: {' and '.join(why)}."
            out.append(
                replace(
                    c, score=rel * boost, explanation=text, evidence={**c.evidence, "dimensions": dim_labels}
                )
            )
    if "dimensions" in results:
        for c, rel in _relative(results["dimensions"], ("dimension",), "dimensions"):
            out.append(replace(c, score=rel))
    for name in ("metrics", "logs"):
        if name in results:
            for c, rel in _relative(results[name], ("metric", "log"), name):
                out.append(replace(c, score=0.5 * rel * (consensus.get(c.service or "", 0.0) / total)))
    out.sort(key=lambda c: (-c.score, c.kind, c.service or "", c.metric or "", sorted(c.labels.items())))
    return out


def explain_incident(incident: RcaIncident, view: View, engine: RootCauseEngine | None = None) -> RcaResult:
    """The combined RCA of one incident (the default engine)."""
    return (engine or RootCauseEngine()).explain(incident, view)


def incident_from_record(
    record: dict[str, Any],
    *,
    min_window: timedelta = timedelta(minutes=10),
    max_window: timedelta = timedelta(minutes=30),
    onset: datetime | None = None,
    metric: str | None = None,
) -> RcaIncident:
    """An :class:`RcaIncident` from a stored incident (``rootwise incidents`` JSON or ``results.get_incident``).

    RCA looks at what changed *at onset*: the window is the first ``max_window`` of the incident (at least
    ``min_window``, so a one-point incident still has data after its onset), whatever its length — an incident
    that stays open for a day is explained by its first half hour. ``onset``/``metric`` override the
    incident's (e.g. a new alarm joining an open incident).

    Examples
    --------
    >>> r = {"id": "i", "service": "api", "metric": "lat", "start": "2026-01-01T00:00:00", "end": "2026-01-02T00:00:00"}
    >>> inc = incident_from_record(r)
    >>> inc.end - inc.onset
    datetime.timedelta(seconds=1800)
    """

    def ts(v: Any) -> datetime:
        return v if isinstance(v, datetime) else datetime.fromisoformat(str(v)).replace(tzinfo=None)

    start = onset or ts(record["start"])
    end = ts(record["end"]) if record.get("end") else start
    end = min(max(end, start + min_window), start + max_window)
    return RcaIncident(
        service=record["service"],
        metric=metric or record.get("metric"),
        onset=start,
        end=end,
        labels={},
        id=record.get("id"),
    )
