"""``rootwise`` command line.

Starts fast: only argparse and the standard library are imported at module level; each command imports
what it needs (polars, DuckDB, Dash, ...) when it runs. Scripts call the CLI hundreds of times.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

DEFAULT_DB = "rootwise.duckdb"


class CliError(Exception):
    """An error to print as ``rootwise: error: ...`` with exit code 2."""


# -- output ----------------------------------------------------------------------------------------------
def emit(data: Any, fmt: str, human: Callable[[Any], str]) -> None:
    """Print ``data`` as JSON, CSV (a list of flat dicts) or human text."""
    if fmt == "json":
        print(json.dumps(data, indent=2, default=str))
    elif fmt == "csv":
        rows = data if isinstance(data, list) else [data]
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in row.items()}
                )
        print(buf.getvalue(), end="")
    else:
        print(human(data))


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` → timedelta.

    Examples
    --------
    >>> parse_duration("30d")
    datetime.timedelta(days=30)
    """
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    text = text.strip()
    if len(text) < 2 or text[-1] not in units or not text[:-1].replace(".", "", 1).isdigit():
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 15m, 12h, 30d or 2w, got {text!r}")
    return timedelta(**{units[text[-1]]: float(text[:-1])})


def _open_store(db: str, *, read_only: bool = False) -> Any:
    from ingest.store import Store, StoreError

    try:
        return Store(db, read_only=read_only)
    except StoreError as exc:
        raise CliError(str(exc)) from exc


# -- commands --------------------------------------------------------------------------------------------
def cmd_ingest(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise CliError(f"no such file or directory: {', '.join(missing)}")
    from ingest.files import ingest_paths

    store = _open_store(args.db)
    try:
        report = ingest_paths(
            store,
            paths,
            progress=args.progress and sys.stderr.isatty(),
            tenant_attribute=args.tenant_attribute,
        )
    finally:
        store.close()
    data = report.to_dict()

    def human(d: dict[str, Any]) -> str:
        lines = [f"accepted {d['accepted']:,} records, rejected {d['rejected']:,} (into ingest_rejects)"]
        for f in d["files"]:
            status = (
                f"error: {f['error']}"
                if f.get("error")
                else f"{f['accepted']:,} accepted, {f['rejected']:,} rejected"
            )
            lines.append(f"  {f['path']} [{f['format']}]: {status}")
            lines.extend(f"    - {r}" for r in f.get("first_reasons", []))
        return "\n".join(lines)

    emit(data if args.format != "csv" else data["files"], args.format, human)
    return 0 if report.ok else 1


def cmd_simulate(args: argparse.Namespace) -> int:
    from ingest.simulator import simulate

    manifest = simulate(
        Path(args.out), days=args.days, seed=args.seed, scale=args.scale, progress=sys.stderr.isatty()
    )

    def human(m: dict[str, Any]) -> str:
        return (
            f"wrote {len(m.get('files', []))} files to {args.out}/telemetry "
            f"({m.get('points', 0):,} points, {m.get('spans', 0):,} spans, {m.get('logs', 0):,} logs, "
            f"{m.get('events', 0):,} events); ground truth: {args.out}/labels/incidents.json "
            f"({m.get('incidents', 0)} incidents)"
        )

    emit(manifest, args.format, human)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from app.config import ConfigError, load_config
    from app.server import serve

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc)) from exc
    from app.dashboard import mount_dashboard
    from ingest.scrape import ScrapeTarget

    targets = [ScrapeTarget(url=s.url, service=s.service, labels=s.labels) for s in config.scrape]
    serve(
        args.db,
        host=args.host,
        port=args.port,
        token=config.token.reveal() if config.token else None,
        tenant_attribute=config.tenant_attribute,
        mount=mount_dashboard,
        scrape=targets,
        # one schedule for every target: the shortest interval any target asks for
        scrape_interval_s=min((s.interval_s for s in config.scrape), default=15.0),
        max_body_bytes=config.max_body_bytes,
        decode_workers=args.decode_workers,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo

    return run_demo(
        db=args.db,
        port=args.port,
        host=args.host,
        days=args.days,
        seed=args.seed,
        scale=args.scale,
        serve=not args.no_serve,
        fmt=args.format,
    )


def cmd_retention(args: argparse.Namespace) -> int:
    store = _open_store(args.db)
    from ingest.retention import apply_retention

    try:
        report = apply_retention(store, raw_max_age=args.raw_max_age)
    finally:
        store.close()
    emit(report.to_dict(), args.format, lambda d: "\n".join(f"{k}: {v}" for k, v in d.items()))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from app.bench import bench_ingest

    if args.what != "ingest":
        raise CliError(f"unknown benchmark {args.what!r}; available: ingest")
    results = bench_ingest(points=args.points, big_points=args.big_points, out=Path(args.out))
    emit(results, args.format, lambda r: r["summary"])
    return 0


# -- parser ----------------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, *, db: bool = True) -> None:
    if db:
        p.add_argument(
            "--db",
            default=os.environ.get("ROOTWISE_DB", DEFAULT_DB),
            help=f"DuckDB file (default ./{DEFAULT_DB}, or $ROOTWISE_DB)",
        )
    p.add_argument("--format", choices=("text", "json", "csv"), default="text", help="output format")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rootwise", description="Observability and root-cause analysis for ML services."
    )
    parser.add_argument("--version", action="version", version="rootwise 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="simulate an ML platform with incidents, ingest it, serve the app")
    _common(p)
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--days", type=float, default=3.0, help="days of telemetry to simulate (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="platform size multiplier (default 1)")
    p.add_argument(
        "--no-serve", action="store_true", help="stop after the pipeline instead of serving the app"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("simulate", help="write simulated telemetry (public formats) and ground-truth labels")
    _common(p, db=False)
    p.add_argument("--out", required=True, help="output folder (telemetry/ and labels/ are written inside)")
    p.add_argument("--days", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("ingest", help="ingest files or folders (format detected from content)")
    _common(p)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument(
        "--tenant-attribute",
        default="rootwise.tenant.id",
        help="attribute holding the tenant id (falls back to 'tenant')",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("serve", help="OTLP/HTTP receiver and the app in one process")
    _common(p)
    p.add_argument("--config", default=None, help="rootwise.toml")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--decode-workers", type=int, default=None,
                   help="processes decoding OTLP bodies (default: one per core; 0: in the request threads)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("retention", help="roll raw points up to 5m/1h and drop raw points past an age")
    _common(p)
    p.add_argument(
        "--raw-max-age",
        type=parse_duration,
        default=timedelta(days=14),
        help="keep raw points this long (e.g. 14d; default 14d)",
    )
    p.set_defaults(func=cmd_retention)

    p = sub.add_parser("bench", help="benchmarks; print figures and write JSON")
    _common(p, db=False)
    p.add_argument("what", choices=("ingest",))
    p.add_argument("--points", type=int, default=20_000_000, help="points per measured path (default 20M)")
    p.add_argument(
        "--big-points",
        type=int,
        default=100_000_000,
        help="points in the streamed Parquet file for the peak-RSS check (0 to skip)",
    )
    p.add_argument("--out", default="bench-results/ingest.json", help="JSON results file")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"rootwise: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
