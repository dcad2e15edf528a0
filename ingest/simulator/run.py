"""``simulate()``: one deterministic run of the platform simulator, written in public formats."""

from __future__ import annotations

import contextlib
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson

from ingest.simulator.engine import Engine
from ingest.simulator.logs import build_logs
from ingest.simulator.plan import build_plan
from ingest.simulator.sources import load_sources
from ingest.simulator.traces import build_spans
from ingest.simulator.world import build_world
from ingest.simulator.writers import Writers, rfc3339

#: default end of the simulated period; fixed so that the same arguments always give the same bytes
DEFAULT_END = datetime(2026, 11, 1, tzinfo=UTC)
GENERATOR = "rootwise.simulator"
GENERATOR_VERSION = "1"
#: requests simulated per chunk at most (bounds memory at large scale); chunks divide the hour
CHUNK_REQUEST_BUDGET = 600_000
# random streams: one per purpose, so adding draws to one part does not shift the others
STREAM_WORLD, STREAM_PLAN, STREAM_TELEMETRY = 10, 11, 15


def chunk_minutes(requests_per_minute: float) -> int:
    """Largest divisor of 60 whose chunk holds at most :data:`CHUNK_REQUEST_BUDGET` requests at peak.

    Examples
    --------
    >>> chunk_minutes(3000.0), chunk_minutes(60000.0)
    (60, 6)
    """
    for d in (60, 30, 20, 15, 12, 10, 6, 5, 4, 3, 2, 1):
        if d * requests_per_minute * 1.5 <= CHUNK_REQUEST_BUDGET:
            return d
    return 1


def _prepare(out: Path) -> None:
    """Clear a previous run of the simulator in ``out``; refuse to touch anything else."""
    ours = False
    manifest = out / "manifest.json"
    if manifest.exists():
        with contextlib.suppress(ValueError, OSError):
            ours = orjson.loads(manifest.read_bytes()).get("generator") == GENERATOR
    for sub in ("telemetry", "labels"):
        d = out / sub
        if d.exists() and any(d.iterdir()):
            if not ours:
                raise FileExistsError(
                    f"{d} is not empty and was not written by the simulator; "
                    "choose an empty or new output folder"
                )
            shutil.rmtree(d)
    out.mkdir(parents=True, exist_ok=True)


def simulate(
    out: Path,
    *,
    days: float = 3.0,
    seed: int = 0,
    scale: float = 1.0,
    start: datetime | None = None,
    progress: bool = False,
) -> dict:
    """Simulate an ML platform with injected incidents and write its telemetry and ground truth.

    Parameters
    ----------
    out
        Output folder: ``telemetry/`` (OTLP JSON metrics, traces and logs; Parquet per-tenant usage;
        Prometheus text for GPU nodes; change events and topology as JSONL), ``labels/incidents.json``
        (ground truth, kept apart from the telemetry) and ``manifest.json``.
    days
        Length of the simulated period (1-minute resolution).
    seed
        Seed of every random draw: the same arguments give byte-identical files.
    scale
        Platform size: tenants (200 at scale 1), request volume, instances and sampled traces grow with it.
    start
        Start of the period (UTC; naive values are taken as UTC). Default: ``days`` before
        :data:`DEFAULT_END` (2026-11-01T00:00Z), a constant, so runs do not depend on the wall clock.
    progress
        Show a progress bar on stderr.

    Returns
    -------
    dict
        The manifest (also written to ``out/manifest.json``): files with format, bytes and records, record
        counts (``points``, ``histogram_points``, ``spans``, ``logs``, ``events``), ``incidents``, ``start``,
        ``end``.

    Examples
    --------
    >>> import tempfile
    >>> m = simulate(Path(tempfile.mkdtemp()), days=0.05, scale=0.05)
    >>> m["start"], m["end"], m["incidents"]
    ('2026-10-31T22:48:00Z', '2026-11-01T00:00:00Z', 0)
    """
    if not days > 0 or not scale > 0:
        raise ValueError("days and scale must be positive")
    n_minutes = max(1, round(days * 1440))
    if start is None:
        start = DEFAULT_END - timedelta(minutes=n_minutes)
    elif start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    start = start.astimezone(UTC).replace(second=0, microsecond=0)
    end = start + timedelta(minutes=n_minutes)
    out = Path(out)
    _prepare(out)

    sources = load_sources()
    world = build_world(sources, scale, np.random.default_rng([seed, STREAM_WORLD]))
    plan = build_plan(world, n_minutes, np.random.default_rng([seed, STREAM_PLAN]))
    start_ns = int(start.timestamp()) * 1_000_000_000
    engine = Engine(world, plan, n_minutes, start_ns, seed)
    writers = Writers(out, engine, start)
    step = chunk_minutes(float(world.route_rate.sum()))

    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("simulating"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} min"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
    with bar if bar is not None else contextlib.nullcontext():
        task = bar.add_task("simulate", total=n_minutes) if bar is not None else None
        for c0 in range(0, n_minutes, step):
            c1 = min(n_minutes, c0 + step)
            chunk = engine.step(c0, c1)
            writers.usage(chunk)
            writers.metrics(chunk)
            writers.prometheus(chunk)
            rng = np.random.default_rng([seed, STREAM_TELEMETRY, c0])
            spans, links = build_spans(chunk, engine, rng)
            writers.otlp_items(chunk, spans, "traces")
            writers.otlp_items(chunk, build_logs(chunk, engine, links, rng), "logs")
            if bar is not None and task is not None:
                bar.update(task, completed=c1)

    header = {
        "generator": GENERATOR,
        "seed": seed,
        "scale": scale,
        "days": days,
        "start": rfc3339(start),
        "end": rfc3339(end),
    }
    writers.events(plan)
    writers.topology()
    writers.labels(plan, header)
    c = writers.counts
    manifest = {
        **header,
        "generator_version": GENERATOR_VERSION,
        "token_source": sources.source,
        "chunk_minutes": step,
        "tenants": len(world.tenants),
        "instances": world.n_instances,
        "gpu_nodes": int((world.inst_model >= 0).sum()),
        "points": c["metric_points"] + c["usage_rows"] + c["prometheus_samples"],
        "histogram_points": c["histogram_points"],
        "otlp_points": c["metric_points"],
        "usage_rows": c["usage_rows"],
        "prometheus_samples": c["prometheus_samples"],
        "spans": c["spans"],
        "logs": c["logs"],
        "events": c["events"],
        "edges": c["edges"],
        "incidents": len(plan.incidents),
        "bytes": sum(f["bytes"] for f in writers.files),
        "files": writers.files,
        "labels": "labels/incidents.json",
    }
    (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return manifest
