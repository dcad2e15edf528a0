"""``rootwise eval rca``: every RCA benchmark through the same engine, figures per system and fault type.

* ``sockshop`` — RCAEval/RCD Sock Shop (metrics): AC@1, AC@3, Avg@5 of the service ranking.
* ``riskloc`` / ``squeeze`` — multi-dimensional root-cause sets: precision, recall, F1 of the predicted set.
* ``nezha`` — Train Ticket / Online Boutique (metrics, logs, traces where the data has them).
* ``simulator`` — the simulator's incidents of every kind, detected and explained end to end.

Each evaluation reads its ground truth only after the analysers have answered.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

DATASETS = ("sockshop", "riskloc", "squeeze", "nezha", "simulator")


def _rows(summary: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k in keys}
        for row in summary
    ]


def eval_rca(
    datasets: tuple[str, ...],
    data_root: Path,
    *,
    limit: int | None = None,
    seeds: tuple[int, ...] = (1,),
    days: float = 3.0,
) -> dict[str, Any]:
    """Run the chosen benchmarks; returns JSON-ready results keyed by data set."""
    out: dict[str, Any] = {}
    ranking_keys = ("system", "fault_type", "cases", "ac1", "ac3", "avg5", "mean_seconds")
    set_keys = ("group", "cases", "precision", "recall", "f1", "exact", "mean_seconds")
    for name in datasets:
        t0 = time.perf_counter()
        if name == "sockshop":
            from app.rca_eval.sockshop import eval_sockshop
            from rca.combine import RootCauseEngine

            report = eval_sockshop(data_root / "rca" / "sock-shop", RootCauseEngine())
            misses = [
                {"case": o.case, "truth": o.truth, "rank": o.rank(), "top": list(o.ranked[:3])}
                for o in report["outcomes"]
                if o.rank() != 1
            ]
            out[name] = {
                "summary": _rows(report["summary"], ranking_keys),
                "misses": misses,
                "onset": report["onset"],
            }
        elif name == "riskloc":
            from app.rca_eval.dimensions import eval_riskloc

            _, summary = eval_riskloc(data_root / "rca" / "riskloc-rs", limit=limit)
            out[name] = {"summary": _rows(summary, set_keys)}
        elif name == "squeeze":
            from app.rca_eval.dimensions import eval_squeeze

            _, summary = eval_squeeze(data_root / "rca" / "squeeze-sample")
            out[name] = {"summary": _rows(summary, set_keys)}
        elif name == "nezha":
            from app.rca_eval.nezha import eval_nezha

            report = eval_nezha(data_root / "rca" / "nezha", limit=limit)
            out[name] = {"summary": _rows(report["summary"], ranking_keys)}
        elif name == "simulator":
            from app.rca_eval.simulator import eval_simulator

            out[name] = eval_simulator(seeds=seeds, days=days)
        else:
            raise ValueError(f"unknown RCA data set {name!r}; choose from {', '.join(DATASETS)}")
        out[name]["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def format_rca(result: dict[str, Any]) -> str:
    """Human-readable tables of :func:`eval_rca`'s result."""
    lines = []
    for name, r in result.items():
        lines.append(f"{name} ({r['seconds']} s)")
        for row in r.get("summary", []):
            if "ac1" in row:
                lines.append(
                    f"  {row['system']:<14} {row['fault_type']:<22} n={row['cases']:<4} AC@1 {row['ac1']:.2f}  "
                    f"AC@3 {row['ac3']:.2f}  Avg@5 {row['avg5']:.3f}  {row['mean_seconds']:.3f} s/case"
                )
            else:
                lines.append(
                    f"  {row['group']:<24} n={row['cases']:<4} P {row['precision']:.3f}  R {row['recall']:.3f}  "
                    f"F1 {row['f1']:.3f}  exact {row['exact']:.2f}  {row['mean_seconds']:.3f} s/case"
                )
        for key in ("change_first", "detected", "notes"):
            if key in r:
                lines.append(f"  {key}: {r[key]}")
    return "\n".join(lines)
