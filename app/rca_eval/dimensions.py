"""Multi-dimensional root-cause localisation on RiskLoc's RS and Squeeze's data sets.

Scoring follows RiskLoc's ``utils/evaluation.py``: predicted and true elements are compared as exact
strings (``a=1&b=2``, labels sorted); per case TP = true elements predicted, FP = predicted elements beyond
those, FN = true elements missed; precision, recall and F1 are computed from the summed TP/FP/FN of a group
(RiskLoc's ``result_post_processing``). The truth is read by the adapter and only used here, never passed to
the localiser.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ingest.datasets.riskloc import DimensionCase, RootCauseSet, element_key, iter_riskloc_rs
from ingest.datasets.squeeze import iter_squeeze
from rca.dimensions import DimensionCause, localize_dimensions

Localiser = Callable[[DimensionCase], list[DimensionCause]]


@dataclass(frozen=True)
class SetOutcome:
    """One evaluated case: the predicted and true element sets and the time the localiser took."""

    case: str
    group: str
    truth: tuple[str, ...]
    predicted: tuple[str, ...]
    seconds: float

    @property
    def tp(self) -> int:
        return len(set(self.truth) & set(self.predicted))

    @property
    def fp(self) -> int:
        return len(set(self.predicted)) - self.tp

    @property
    def fn(self) -> int:
        return len(set(self.truth)) - self.tp


def set_scores(outcomes: Sequence[SetOutcome]) -> dict[str, float]:
    """Precision, recall and F1 over the summed TP/FP/FN, and mean seconds per case.

    Examples
    --------
    >>> o = [SetOutcome("a", "g", ("x=1",), ("x=1",), 0.1), SetOutcome("b", "g", ("x=1",), ("x=2", "y=1"), 0.3)]
    >>> {k: round(v, 3) for k, v in set_scores(o).items()}
    {'cases': 2, 'precision': 0.333, 'recall': 0.5, 'f1': 0.4, 'exact': 0.5, 'mean_seconds': 0.2}
    """
    tp = sum(o.tp for o in outcomes)
    fp = sum(o.fp for o in outcomes)
    fn = sum(o.fn for o in outcomes)
    return {
        "cases": len(outcomes),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "exact": sum(o.fp == 0 and o.fn == 0 for o in outcomes) / max(len(outcomes), 1),
        "mean_seconds": sum(o.seconds for o in outcomes) / max(len(outcomes), 1),
    }


def summarise_sets(outcomes: Sequence[SetOutcome]) -> list[dict[str, object]]:
    """One row per group (sorted) and a pooled ``all`` row last, each with :func:`set_scores`."""
    groups: dict[str, list[SetOutcome]] = {}
    for o in outcomes:
        groups.setdefault(o.group, []).append(o)
    rows: list[dict[str, object]] = [{"group": g, **set_scores(groups[g])} for g in sorted(groups)]
    rows.append({"group": "all", **set_scores(outcomes)})
    return rows


def default_localiser(case: DimensionCase) -> list[DimensionCause]:
    """``localize_dimensions`` with its defaults; ratio KPIs here are failure rates, so only rises count."""
    return localize_dimensions(
        case.leaves,
        case.dims,
        denominator=case.denominator,
        direction="up" if case.kpi == "ratio" else "auto",
    )


def evaluate_cases(
    cases: Iterable[tuple[DimensionCase, RootCauseSet]],
    localiser: Localiser = default_localiser,
    group: Callable[[DimensionCase, RootCauseSet], str] | None = None,
) -> list[SetOutcome]:
    """Run ``localiser`` on each case (the truth stays here) and score its element set."""
    outcomes = []
    for case, truth in cases:
        start = time.perf_counter()
        causes = localiser(case)
        seconds = time.perf_counter() - start
        outcomes.append(
            SetOutcome(
                case=case.name,
                group=group(case, truth) if group else case.group,
                truth=truth.keys(),
                predicted=tuple(dict.fromkeys(element_key(c.labels) for c in causes)),
                seconds=seconds,
            )
        )
    return outcomes


def _rs_group(case: DimensionCase, truth: RootCauseSet) -> str:
    # RS has no folders; RiskLoc's paper breaks results down by cuboid layer and number of elements
    return f"layer_{truth.layer}_elements_{len(truth.elements)}"


def eval_riskloc(
    root: Path, *, localiser: Localiser = default_localiser, limit: int | None = None
) -> tuple[list[SetOutcome], list[dict[str, object]]]:
    """Evaluate on RS (``root`` is the data set folder, its ``data/RS`` or ``RS``); ``limit`` keeps the first
    cases. Returns per-case outcomes and :func:`summarise_sets` rows by truth layer and element count."""
    cases = iter_riskloc_rs(Path(root))
    if limit is not None:
        cases = (c for i, c in enumerate(cases) if i < limit)
    outcomes = evaluate_cases(cases, localiser, _rs_group)
    return outcomes, summarise_sets(outcomes)


def eval_squeeze(
    root: Path, *, localiser: Localiser = default_localiser, limit: int | None = None
) -> tuple[list[SetOutcome], list[dict[str, object]]]:
    """Evaluate on a Squeeze data set folder (settings folders with ``injection_info.csv``), by folder."""
    cases = iter_squeeze(Path(root))
    if limit is not None:
        cases = (c for i, c in enumerate(cases) if i < limit)
    outcomes = evaluate_cases(cases, localiser)
    return outcomes, summarise_sets(outcomes)


def synthetic_leaves(
    labels: int = 5, values: int = 1000, leaves: int = 50_000, seed: int = 0
) -> tuple[pl.DataFrame, list[str], dict[str, str]]:
    """A ratio KPI over ``labels`` labels with ``values`` values each, one leaf per row (combinations drawn at
    random, Zipf-like volumes), and an injected cause on two labels whose error rate rises tenfold.

    Examples
    --------
    >>> frame, dims, cause = synthetic_leaves(labels=3, values=20, leaves=500)
    >>> frame.columns, dims, cause
    (['l0', 'l1', 'l2', 'actual', 'expected', 'requests', 'expected_requests'], ['l0', 'l1', 'l2'], {'l0': 'v1', 'l1': 'v2'})
    """
    rng = np.random.default_rng(seed)
    dims = [f"l{i}" for i in range(labels)]
    codes = {d: rng.zipf(1.3, leaves) % values for d in dims}
    for d in dims:  # every value occurs at least once
        codes[d][: min(values, leaves)] = rng.permutation(values)[: min(values, leaves)]
    frame = pl.DataFrame({d: [f"v{c}" for c in codes[d]] for d in dims}).unique(maintain_order=True)
    n = frame.height
    requests = rng.gamma(0.5, 200.0, n) + 1.0
    rate = rng.uniform(0.005, 0.02, n)
    cause = {dims[0]: "v1", dims[1]: "v2"}
    inside = (frame[dims[0]] == "v1") & (frame[dims[1]] == "v2")
    actual_rate = np.where(inside.to_numpy(), rate * 10, rate)
    frame = frame.with_columns(
        pl.Series("actual", rng.poisson(requests * actual_rate).astype(float)),
        pl.Series("expected", requests * rate),
        pl.Series("requests", requests),
        pl.Series("expected_requests", requests),
    )
    return frame, dims, cause


def bench_dimensions(
    labels: int = 5, values: int = 1000, leaves: int = 50_000, seed: int = 0
) -> dict[str, object]:
    """Time ``localize_dimensions`` (default settings, ratio KPI) on :func:`synthetic_leaves`; returns the
    leaf count, seconds and whether the injected cause came first."""
    frame, dims, cause = synthetic_leaves(labels, values, leaves, seed)
    start = time.perf_counter()
    causes = localize_dimensions(frame, dims, denominator=("requests", "expected_requests"))
    seconds = time.perf_counter() - start
    return {
        "leaves": frame.height,
        "labels": labels,
        "values": values,
        "seconds": seconds,
        "found": bool(causes) and causes[0].labels == cause,
    }
