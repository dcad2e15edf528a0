"""``rootwise demo``: simulate an ML platform, ingest it through the real file path, detect, serve the app."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def demo_data_dir(db: str) -> Path:
    """Where the demo keeps its simulated files: beside the DuckDB file."""
    p = Path(db).resolve()
    return p.with_name(p.stem + "-demo-data")


class DemoError(RuntimeError):
    """The demo cannot run as asked (e.g. its store holds someone's real telemetry)."""


def _foreign_store(db: str, data: Path) -> bool:
    """``db`` holds telemetry, and no demo wrote it: a demo store has its simulated files beside it."""
    from ingest.store import Store

    if not Path(db).is_file() or data.is_dir():
        return False
    store = Store(db, read_only=True)
    try:
        return store.count("series") > 0
    finally:
        store.close()


def run_demo(
    *, db: str, port: int, host: str, days: float, seed: int, scale: float, serve: bool, fmt: str = "text"
) -> int:
    """Run the demo pipeline; returns the process exit code.

    A store that already holds telemetry the demo did not write (``./rootwise.duckdb`` may be a real one) is
    refused: simulated incidents would be mixed into it. A demo's own store is written again (ingest is
    idempotent, so a second run with the same seed adds nothing).
    """
    from rich.console import Console

    from ingest.files import ingest_paths
    from ingest.simulator import simulate
    from ingest.store import Store

    console = Console(stderr=True)
    out = demo_data_dir(db)
    if _foreign_store(db, out):
        raise DemoError(
            f"{db} already holds telemetry that no demo wrote (there is no {out.name} beside it); the demo "
            "would mix simulated incidents into it. Give the demo its own file: rootwise demo --db demo.duckdb"
        )
    t0 = time.perf_counter()
    console.print(
        f"[bold]1/4[/] simulating {days:g} days of an ML platform (seed {seed}, scale {scale:g}) → {out}"
    )
    manifest = simulate(out, days=days, seed=seed, scale=scale, progress=sys.stderr.isatty())
    t_sim = time.perf_counter() - t0

    console.print(f"[bold]2/4[/] ingesting {out / 'telemetry'} into {db}")
    t1 = time.perf_counter()
    store = Store(db)
    try:
        report = ingest_paths(store, [out / "telemetry"], progress=sys.stderr.isatty())
        counts = {
            t: store.count(t)
            for t in (
                "series",
                "points",
                "histograms",
                "spans",
                "logs",
                "events",
                "topology_edges",
                "ingest_rejects",
            )
        }
        t2 = time.perf_counter()
        console.print("[bold]3/4[/] detecting anomalies and building incidents (rootwise detect)")
        from app.detect import run_detection
        from ingest.results import list_incidents

        detection = run_detection(store)
        t_detect = time.perf_counter() - t2
        from app.explain import explain_new_incidents

        rca = explain_new_incidents(store)
        incidents = list_incidents(store)
        from app.capacity import CapacitySettings
        from app.report import report_capacity

        report_path = Path(db).with_name(Path(db).stem + "-capacity.html")
        capacity = report_capacity(store, CapacitySettings(), report_path)
    finally:
        store.close()
    t_ingest = t2 - t1

    summary: dict[str, Any] = {
        "db": db,
        "data": str(out),
        "simulated": {k: manifest.get(k) for k in ("points", "spans", "logs", "events", "incidents")},
        "ingest": {"accepted": report.accepted, "rejected": report.rejected, "ok": report.ok},
        "tables": counts,
        "detect": detection.to_dict(),
        "incidents": {
            "total": len(incidents),
            "pages": sum(i["severity"] == "page" for i in incidents),
            "open": sum(i["status"] != "resolved" for i in incidents),
        },
        "seconds": {
            "simulate": round(t_sim, 2),
            "ingest": round(t_ingest, 2),
            "detect": round(t_detect, 2),
            "rca": rca["seconds"],
        },
        # alerting is added to the pipeline by its own issue (6)
        "pipeline": ["simulate", "ingest", "detect", "rca", "capacity report"],
        "capacity_report": capacity["out"],
    }
    if fmt == "json":
        print(json.dumps(summary, indent=2, default=str))
    else:
        pages = [i for i in incidents if i["severity"] == "page"]
        console.print(
            f"[bold]4/4[/] stored {counts['points']:,} points in {counts['series']:,} series, "
            f"{counts['histograms']:,} histogram points, {counts['spans']:,} spans, {counts['logs']:,} logs, "
            f"{counts['events']:,} change events ({report.rejected:,} rejected) in {t_sim + t_ingest:.1f} s; "
            f"detection scored {detection.points:,} points in {t_detect:.1f} s: {len(incidents)} incidents, "
            f"{len(pages)} pages; root causes of {rca['explained']} incidents in {rca['seconds']:.1f} s"
        )
        console.print(f"    capacity report: {capacity['out']}", markup=False)
        for inc in pages[:10]:
            console.print(f"    {inc['start'][:16]}  {inc['service']:14} {inc['metric']}  ({inc['id']})")
            if inc["causes"]:
                top = inc["causes"][0]
                console.print(f"        likely cause: {top['evidence'].get('explanation', '')}", markup=False)
    if not report.ok:
        console.print("[red]some telemetry could not be ingested; see above and the ingest_rejects table[/]")
        return 1
    if serve:
        from app.dashboard import mount_dashboard
        from app.scheduler import Scheduler
        from app.server import serve as serve_app

        # the scheduler keeps detecting and explaining what arrives (nothing is routed: no receivers configured)
        serve_app(
            db,
            host=host,
            port=port,
            mount=mount_dashboard,
            scheduler=lambda store: Scheduler(store, db_path=db),
        )
    return 0
