"""RCA evaluation: one module per benchmark, shared ranking metrics here.

Metrics follow RCAEval/BARO: AC@k is the fraction of cases whose true root cause is among the top k
candidates; Avg@5 is the mean of AC@1..AC@5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CaseOutcome:
    """One evaluated case: the system and fault type it belongs to, the truth, the ranking, the time taken."""

    case: str
    system: str
    fault_type: str
    truth: str
    ranked: tuple[str, ...]
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)

    def rank(self) -> int | None:
        """1-based rank of the truth in the ranking, ``None`` when absent."""
        try:
            return self.ranked.index(self.truth) + 1
        except ValueError:
            return None


def accuracy_at(outcomes: Sequence[CaseOutcome], k: int) -> float:
    """AC@k: share of cases with the truth in the top ``k``.

    Examples
    --------
    >>> o = [CaseOutcome("a", "s", "cpu", "x", ("x", "y"), 0.1), CaseOutcome("b", "s", "cpu", "y", ("x", "y"), 0.1)]
    >>> accuracy_at(o, 1), accuracy_at(o, 2)
    (0.5, 1.0)
    """
    if not outcomes:
        return float("nan")
    return sum(1 for o in outcomes if (r := o.rank()) is not None and r <= k) / len(outcomes)


def avg_at(outcomes: Sequence[CaseOutcome], k: int = 5) -> float:
    """Avg@k: mean of AC@1 … AC@k.

    Examples
    --------
    >>> o = [CaseOutcome("a", "s", "cpu", "y", ("x", "y"), 0.1)]
    >>> avg_at(o, 5)
    0.8
    """
    return sum(accuracy_at(outcomes, i) for i in range(1, k + 1)) / k


def summarise(outcomes: Sequence[CaseOutcome]) -> list[dict[str, object]]:
    """Rows ``system, fault_type, cases, ac1, ac3, avg5, mean_seconds``: one per system and fault type, one per
    system (``fault_type = "all"``), and a pooled ``all/all`` row last."""
    groups: dict[tuple[str, str], list[CaseOutcome]] = {}
    for o in outcomes:
        groups.setdefault((o.system, o.fault_type), []).append(o)
        groups.setdefault((o.system, "all"), []).append(o)
    groups[("all", "all")] = list(outcomes)
    rows = []
    for (system, fault), items in sorted(groups.items(), key=lambda kv: (kv[0][0] == "all", kv[0])):
        rows.append(
            {
                "system": system,
                "fault_type": fault,
                "cases": len(items),
                "ac1": accuracy_at(items, 1),
                "ac3": accuracy_at(items, 3),
                "avg5": avg_at(items, 5),
                "mean_seconds": sum(o.seconds for o in items) / max(len(items), 1),
            }
        )
    return rows
