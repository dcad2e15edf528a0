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
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

DEFAULT_DB = "rootwise.duckdb"


class CliError(Exception):
    """An error to print as ``rootwise: error: ...`` with exit code 2."""


# -- output ----------------------------------------------------------------------------------------------
def emit(data: Any, fmt: str, human: Callable[[Any], str], *, fields: Sequence[str] = ()) -> None:
    """Print ``data`` as JSON, CSV (a list of flat dicts; ``fields`` is the header when there are no rows) or
    human text."""
    if fmt == "json":
        print(json.dumps(data, indent=2, default=str))
    elif fmt == "csv":
        rows = data if isinstance(data, list) else [data]
        buf = io.StringIO()
        if not rows and fields:
            buf.write(",".join(fields) + "\n")
        if rows:
            writer = csv.DictWriter(
                buf, fieldnames=list(rows[0].keys()), extrasaction="ignore", lineterminator="\n"
            )
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


def positive_duration(text: str) -> timedelta:
    """A :func:`parse_duration` that must be at least a second (an age or a step of 0 means nothing)."""
    d = parse_duration(text)
    if d < timedelta(seconds=1):
        raise argparse.ArgumentTypeError(f"expected a duration of at least 1s, got {text!r}")
    return d


def number(*, positive: bool = False) -> Callable[[str], float]:
    """A finite number, ``> 0`` with ``positive`` (an argparse type; NaN and infinities are refused)."""
    what = "a positive" if positive else "a finite"

    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            x = float("nan")
        if not (-float("inf") < x < float("inf")) or (positive and x <= 0):
            raise argparse.ArgumentTypeError(f"expected {what} number, got {text!r}")
        return x

    return parse


positive_number = number(positive=True)
finite_number = number()


def count(minimum: int) -> Callable[[str], int]:
    """An integer of at least ``minimum`` (an argparse type)."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = minimum - 1
        if n < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return n

    return parse


def _check_names(store: Any, db: str, **names: str | None) -> None:
    """Names typed on the command line (``service``, ``metric``) must be known to the store: a usage error with
    the close matches otherwise (:func:`ingest.queries.check_names`)."""
    from ingest.queries import QueryError, check_names

    try:
        check_names(store, **names)
    except QueryError as exc:
        raise CliError(f"{exc} (in {db})") from exc


def _serve_error(exc: Exception) -> CliError:
    """A server that could not start (:class:`app.server.ServeError`, e.g. its port is taken), as a usage error."""
    return CliError(f"{exc} (is another server on it? choose a port with --port)")


def _open_store(db: str, *, read_only: bool = False, held: str | None = None) -> Any:
    """The store at ``db``; ``held`` says where a read command finds the same answer while ``rootwise serve``
    holds the file (the store's own message is about sending data)."""
    from ingest.store import Store, StoreError, StoreLockedError

    try:
        return Store(db, read_only=read_only)
    except StoreLockedError as exc:
        raise CliError(f"{exc} {held}" if held else str(exc)) from exc
    except StoreError as exc:
        raise CliError(str(exc)) from exc


# -- commands --------------------------------------------------------------------------------------------
def cmd_ingest(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise CliError(f"no such file or directory: {', '.join(missing)}")
    from ingest.files import expand_paths, ingest_paths

    empty = [str(p) for p in paths if p.is_dir() and not expand_paths([p], exclude=[Path(args.db)])]
    if empty:
        raise CliError(f"no input files found in {', '.join(empty)} (hidden files are skipped)")

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

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise CliError(f"--out {args.out}: is a file, expected a folder (telemetry/ and labels/ go inside)")
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
    from app.alerts.config import alerting_from_config
    from app.auth import auth_from_config, install
    from app.capacity import CapacityConfigError, settings_from_config
    from app.config import ConfigError, load_config
    from app.scheduler import Scheduler, report_receiver_errors, scheduler_settings
    from app.server import ServeError
    from app.server import serve as _serve

    try:
        config = load_config(args.config)
        capacity = settings_from_config(config.extra) if "capacity" in config.extra else None
        # a malformed config is refused before anything starts, naming every bad key
        alerting = alerting_from_config(config.extra)
        schedule = scheduler_settings(config.extra)
        app_auth = auth_from_config(config.extra)
    except (ConfigError, CapacityConfigError) as exc:
        where = f"{args.config or 'config'}: "
        raise CliError(str(exc) if str(exc).startswith(where) else where + str(exc)) from exc
    problems = report_receiver_errors(schedule, alerting)
    if problems:
        raise CliError(f"{args.config}: " + "; ".join(problems))
    if args.no_scheduler:
        schedule = replace(schedule, enabled=False)
    from app import data
    from app.dashboard import mount_dashboard
    from ingest.scrape import ScrapeTarget

    def mount(server: Any, store: Any) -> None:
        install(server, app_auth)  # [app] auth: basic or SSO header, viewers and responders
        mount_dashboard(server, store)
        if capacity is not None:  # the capacity page plans with the configured limits, budgets, scenarios
            data.attach_capacity_settings(server, capacity)
        data.attach_alerting(server, alerting)  # the Alerts page shows routes and receivers (secrets masked)
        # the Capacity page's plan is made in the background from now on (with or without --no-scheduler)
        data.start_capacity_planner(server)

    targets = [ScrapeTarget(url=s.url, service=s.service, labels=s.labels) for s in config.scrape]
    try:
        _serve(
            args.db,
            host=args.host,
            port=args.port,
            token=config.token.reveal() if config.token else None,
            tenant_attribute=config.tenant_attribute,
            mount=mount,
            scrape=targets,
            # one schedule for every target: the shortest interval any target asks for
            scrape_interval_s=min((s.interval_s for s in config.scrape), default=15.0),
            max_body_bytes=config.max_body_bytes,
            decode_workers=args.decode_workers,
            scheduler=lambda store: Scheduler(
                store, settings=schedule, alerting=alerting, capacity=capacity, db_path=args.db
            ),
        )
    except ServeError as exc:
        raise _serve_error(exc) from exc
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import DemoError, run_demo
    from app.server import ServeError
    from ingest.store import StoreError

    try:
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
    except ServeError as exc:
        raise _serve_error(exc) from exc
    except (DemoError, StoreError) as exc:
        raise CliError(str(exc)) from exc


def cmd_retention(args: argparse.Namespace) -> int:
    store = _open_store(args.db)
    from ingest.retention import apply_retention

    try:
        report = apply_retention(
            store,
            raw_max_age=args.raw_max_age,
            rollup_max_age_5m=args.rollup_5m_max_age,
            histograms_max_age=args.histograms_max_age,
            spans_max_age=args.spans_max_age,
            logs_max_age=args.logs_max_age,
        )
    finally:
        store.close()
    emit(report.to_dict(), args.format, lambda d: "\n".join(f"{k}: {v}" for k, v in d.items()))
    return 0


def cmd_rollup(args: argparse.Namespace) -> int:
    store = _open_store(args.db)
    from ingest.retention import roll_up_recent

    try:
        report = roll_up_recent(store)
    finally:
        store.close()
    emit(report.to_dict(), args.format, lambda d: "\n".join(f"{k}: {v}" for k, v in d.items()))
    return 0


def _bench_runs(args: argparse.Namespace) -> dict[str, tuple[str, str, Callable[[], dict[str, Any]]]]:
    """Per benchmark: its module, its function and the keyword arguments (with its defaults) from the options."""
    workdir = Path(args.workdir) if args.workdir else None
    return {
        "app": ("app.bench_app", "bench_app", lambda: dict(
            series=args.series or 5000, days=args.days or 30.0, workdir=workdir, keep=args.keep)),
        "forecast": ("app.bench_forecast", "bench_forecast", lambda: dict(
            series=args.series or 1000, days=int(args.days or 90))),
        "detect": ("app.bench_detect", "bench_detect", lambda: dict(
            series=args.series or 10_000, days=args.days or 7.0, nab_root=_shared_data() / "NAB")),
        "rca": ("app.bench_rca", "bench_rca", lambda: dict(
            series=args.series or 100_000, days=args.days or 7.0, workdir=workdir, keep=args.keep)),
        "serve": ("app.bench_serve", "bench_serve", lambda: dict(
            series=args.series or 10_000, seconds=args.seconds, rate=args.rate,
            detect_interval=args.detect_interval, detect_workers=args.detect_workers, workdir=workdir)),
        "ingest": ("app.bench", "bench_ingest", lambda: dict(points=args.points, big_points=args.big_points)),
    }  # fmt: skip


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    module, function, kwargs = _bench_runs(args)[args.what]
    # each benchmark writes bench-results/<what>.json unless --out names another file
    out = args.out if args.out != "bench-results/ingest.json" else f"bench-results/{args.what}.json"
    results = getattr(importlib.import_module(module), function)(**kwargs(), out=Path(out))
    emit(results, args.format, lambda r: r["summary"])
    return 0


def _progress_bar(label: str) -> Any:
    """A rich progress callback ``(done, total)`` on stderr, or None when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task(label, total=None)
    bar.start()

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)
        if done >= total:
            bar.stop()

    return update


def cmd_detect(args: argparse.Namespace) -> int:
    from app.detect import DetectConfig, run_detection
    from detectors.registry import UnknownDetectorError, detector_class

    try:
        detector_class(args.detector)
    except UnknownDetectorError as exc:
        raise CliError(str(exc)) from exc
    store = _open_store(args.db)
    try:
        report = run_detection(
            store,
            DetectConfig(detector=args.detector),
            progress=_progress_bar("detecting") if args.progress else None,
        )
        out = report.to_dict()
        if not args.no_rca:
            from app.explain import explain_new_incidents

            out["rca"] = explain_new_incidents(store)
    finally:
        store.close()
    emit(out, args.format, lambda d: "\n".join(f"{k}: {v}" for k, v in d.items()))
    return 0


def cmd_incidents(args: argparse.Namespace) -> int:
    from ingest.results import INCIDENT_FIELDS, list_incidents

    store = _open_store(
        args.db,
        read_only=True,
        held="While it runs, the server gives the same list: GET /api/v1/incidents?status=&service=&limit= "
        "(bearer token from [server] token).",
    )
    try:
        if args.service is not None:  # a typo is not "no incidents"
            _check_names(store, args.db, service=args.service)
        rows = list_incidents(store, status=args.status, service=args.service, limit=args.limit)
    finally:
        store.close()

    def human(items: list[dict[str, Any]]) -> str:
        if not items:
            return "no incidents"
        lines = [f"{'start':19}  {'severity':8} {'status':12} {'service':16} metric"]
        for i in items:
            lines.append(
                f"{i['start'][:19]:19}  {i['severity']:8} {i['status']:12} {i['service']:16} {i['metric']}  [{i['id']}]"
            )
        return "\n".join(lines)

    emit(rows, args.format, human, fields=INCIDENT_FIELDS)
    return 0


def _timestamp(text: str, flag: str) -> Any:
    from datetime import UTC, datetime

    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CliError(
            f"{flag}: expected an ISO 8601 time such as 2026-11-01T02:41:00Z, got {text!r}"
        ) from exc
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts


def cmd_rca(args: argparse.Namespace) -> int:
    from ingest.rca_view import StoreView
    from ingest.results import get_incident, save_causes
    from rca.base import RcaIncident
    from rca.combine import explain_incident, incident_from_record

    by_window = [args.service, args.metric, args.start, args.end]
    if args.incident and any(by_window):
        raise CliError("give either --incident ID or --service/--metric/--start/--end, not both")
    if not args.incident and not all(by_window):
        raise CliError("give --incident ID, or all of --service S --metric M --start T --end T")
    store = _open_store(
        args.db,
        read_only=not args.incident or args.no_store,
        held="While it runs, the server explains each new incident itself: its causes are on the app's "
        "incident page (/incident/ID).",
    )
    try:
        if args.incident:
            record = get_incident(store, args.incident)
            if record is None:
                raise CliError(
                    f"no incident {args.incident!r} in {args.db}; list them with rootwise incidents"
                )
            incident = incident_from_record(record)
        else:
            start, end = _timestamp(args.start, "--start"), _timestamp(args.end, "--end")
            if end <= start:
                raise CliError(f"--end ({args.end}) must be after --start ({args.start})")
            # a typo must not get a plausible ranking of some other service's causes
            _check_names(store, args.db, service=args.service, metric=args.metric)
            incident = RcaIncident(service=args.service, metric=args.metric, onset=start, end=end)
        result = explain_incident(incident, StoreView(store))
        out = result.to_json()
        if args.incident and not args.no_store:
            save_causes(store, args.incident, out["causes"])
    finally:
        store.close()

    def human(d: dict[str, Any]) -> str:
        lines = [
            f"root causes of {incident.service} {incident.metric or ''} from {incident.onset:%Y-%m-%d %H:%M}:"
        ]
        for c in d["causes"]:
            lines.append(
                f"{c['rank']:>3}. [{c['kind']}] {c['evidence']['explanation']}  (score {c['score']:.2f})"
            )
        lines.extend(f"     note: {n}" for n in d["notes"])
        return "\n".join(lines)

    if args.format == "csv":  # one row per cause, its explanation as a column (the rest of evidence as JSON)
        rows = [
            {
                **{k: v for k, v in c.items() if k != "evidence"},
                "explanation": c["evidence"].get("explanation", ""),
                "evidence": c["evidence"],
            }
            for c in out["causes"]
        ]
        emit(rows, "csv", human)
        return 0
    emit(out, args.format, human)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import numpy as np
    import polars as pl

    from detectors.base import Threshold
    from detectors.registry import UnknownDetectorError, make_detector
    from ingest.csvtable import CsvInputError, read_csv_table

    try:
        raw, cols = read_csv_table(Path(args.file), {"timestamp": "time", "value": "number"})
    except CsvInputError as exc:
        raise CliError(str(exc)) from exc
    ts, values = cols["timestamp"], cols["value"]
    params: dict[str, Any] = {}
    if args.threshold is not None:
        params["threshold"] = Threshold(args.threshold)
    try:
        det = make_detector(args.detector, **params)
    except UnknownDetectorError as exc:
        raise CliError(str(exc)) from exc
    if getattr(det, "input_kind", "points") != "points":
        raise CliError(
            f"detector {args.detector!r} needs {det.input_kind} input, not one timestamp,value series"
        )
    # score in file order (a causal scorer must not be handed a re-sorted series); the ts column only labels rows
    n = raw.height
    clock = np.arange(n).astype("datetime64[s]").astype("datetime64[us]")
    order_ok = bool(ts.is_sorted())
    frame = pl.DataFrame(
        {"series_id": np.zeros(n, np.int64), "ts": ts if order_ok else clock, "value": values}
    )
    if not order_ok:
        print(
            f"rootwise: warning: {args.file}: timestamps are not in order; scoring rows in file order",
            file=sys.stderr,
        )
    scored = det.score_online(frame)
    out = raw.select("timestamp", "value").with_columns(
        score=scored["score"].round(6), is_anomaly=scored["is_anomaly"]
    )
    if args.format == "json":  # values as numbers (the CSV echoes the file's own text)
        print(json.dumps(out.with_columns(value=values).to_dicts(), default=str))
    elif args.format == "csv":
        print(out.with_columns(pl.col("is_anomaly").cast(pl.Int8)).write_csv(), end="")
    else:
        flagged = out.filter(pl.col("is_anomaly"))
        print(f"{n} points, {flagged.height} anomalous (detector {args.detector})")
        for r in flagged.head(50).iter_rows(named=True):
            print(f"  {r['timestamp']}  value={r['value']}  score={r['score']:.2f}")
    return 0


def _json_option(text: str | None, flag: str) -> dict[str, Any]:
    """A JSON object given on the command line (``{}`` when absent)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{flag}: not valid JSON ({exc.msg} at character {exc.pos}): {text!r}") from exc
    if not isinstance(value, dict):
        raise CliError(f'{flag}: expected a JSON object such as {{"name": value}}, got {text!r}')
    return value


def cmd_eval(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path("bench-results") / f"eval-{args.what}.json"
    if args.what == "nab":
        from app.evaluate import eval_nab, eval_nab_loco

        root = Path(args.data) if args.data else _shared_data() / "NAB"
        if not (root / "labels" / "combined_windows.json").exists():
            raise CliError(f"{root}: not a NAB checkout (labels/combined_windows.json missing)")
        from detectors.registry import UnknownDetectorError, make_detector

        # everything is checked before the corpus is scored (a bad --loco used to fail after the whole run)
        params, grid = _json_option(args.params, "--params"), _json_option(args.loco, "--loco")
        if any(not isinstance(v, list) or not v for v in grid.values()):
            raise CliError(
                f'--loco: expected lists of values to try, such as {{"tail_q": [0.98, 0.99]}}, got {args.loco!r}'
            )
        try:
            make_detector(args.detector, **params)
        except UnknownDetectorError as exc:
            raise CliError(str(exc)) from exc
        except (TypeError, ValueError) as exc:
            raise CliError(f"--params: {exc}") from exc
        result = eval_nab(
            root, args.detector, params, workers=args.workers, progress=_progress_bar("scoring NAB")
        )
        if grid:
            result["loco"] = eval_nab_loco(root, args.detector, grid, workers=args.workers)
    elif args.what == "forecast" and (
        args.data == "servegen" or (args.data and list(Path(args.data).glob("derived/aggregate_rate_*.csv")))
    ):
        from detectors.servegen import evaluate_servegen

        root = _shared_data() / "servegen" if args.data == "servegen" else Path(args.data)
        names = [n.strip() for n in args.forecasters.split(",") if n.strip()]
        result = evaluate_servegen(root, names, n_jobs=args.workers)
    elif args.what == "capacity":
        from app.eval_capacity import eval_capacity

        result = eval_capacity(runs=args.runs, history_days=args.history_days, seed=args.seed)
    elif args.what == "forecast":
        from detectors.m4 import evaluate_m4

        root = Path(args.data) if args.data else _shared_data() / "M4"
        if not (root / "Hourly-train.csv").exists():
            raise CliError(f"{root}: M4 Hourly-train.csv not found")
        names = [n.strip() for n in args.forecasters.split(",") if n.strip()]
        result = evaluate_m4(root, names, limit=args.limit, progress=sys.stderr.isatty(), n_jobs=args.workers)
    elif args.what == "incidents":
        from app.evaluate import eval_incidents

        if args.data and not (Path(args.data) / "manifest.json").exists():
            raise CliError(
                f"{args.data}: not a simulator output (manifest.json missing; see rootwise simulate)"
            )
        result = eval_incidents(
            days=args.days,
            seed=args.seed,
            scale=args.scale,
            data=Path(args.data) if args.data else None,
            progress=sys.stderr.isatty(),
        )
    elif args.what == "rca":
        from app.rca_eval.suite import DATASETS, eval_rca

        names = tuple(n.strip() for n in args.datasets.split(",") if n.strip())
        bad = [n for n in names if n not in DATASETS]
        if bad:
            raise CliError(f"unknown RCA data set {bad[0]!r}; choose from {', '.join(DATASETS)}")
        try:
            seeds = tuple(int(x) for x in args.seeds.split(",") if x.strip())
        except ValueError as exc:
            raise CliError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from exc
        root = Path(args.data) if args.data else _shared_data()
        result = eval_rca(names, root, limit=args.limit, seeds=seeds, days=args.days)
    else:  # argparse restricts choices
        raise CliError(f"unknown evaluation {args.what!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))

    def human(r: dict[str, Any]) -> str:
        if args.what == "rca":
            from app.rca_eval.suite import format_rca

            return format_rca(r)
        if args.what == "forecast" and "horizons" in r:
            from detectors.servegen import format_servegen_table

            return format_servegen_table(r)
        if args.what == "capacity":
            from app.eval_capacity import format_capacity_eval

            return format_capacity_eval(r)
        if args.what == "forecast":
            from detectors.m4 import format_table

            lines = [format_table(r)]
        elif args.what == "nab":
            lines = [f"NAB v1.1, detector {r['detector']}: {r['points']} points in {r['seconds']} s"]
            for name, p in r["profiles"].items():
                lines.append(
                    f"  {name:20} {p['score']:7.2f}  (windows {p['detected_windows']}/{p['windows']})"
                )
            lines.append(
                "  per category (standard): "
                + ", ".join(f"{k} {v}" for k, v in r["profiles"]["standard"]["categories"].items())
            )
            if "loco" in r:
                lines.append(f"  leave-one-category-out ({r['loco']['profile']}): {r['loco']['loco_score']}")
        else:
            p = r["pages"]
            lines = [
                f"simulator ({r['days']} days, seed {r['seed']}, scale {r['scale']}): "
                f"recall {p['recall']}, precision {p['precision']}, MTTD {p['mean_time_to_detect_min']} min, "
                f"false pages/series-week {r['false_pages_per_series_week']}",
                f"  time to page: mean {p['mean_time_to_page_min']} min, median {p['median_time_to_page_min']} min, "
                f"max {p['max_time_to_page_min']} min (from the labelled start; an incident opens as a ticket "
                "at its first alarm and pages when it grows)",
                f"  alarms went on after the labelled end: median {p['recovery_lag_median_min']} min, "
                f"90th percentile {p['recovery_lag_p90_min']} min (still open at the end: {p['still_open']})",
            ]
            if p["missed"]:
                lines.append("  missed: " + ", ".join(p["missed"]))
            if p.get("false"):
                lines.append("  false pages: " + ", ".join(p["false"]))
        lines.append(f"  written to {out}")
        return "\n".join(lines)

    emit(result, args.format, human)
    return 0


def cmd_forecast(args: argparse.Namespace) -> int:
    import polars as pl

    from detectors.forecast_registry import FORECASTERS

    if args.forecaster not in FORECASTERS:
        raise CliError(f"unknown forecaster {args.forecaster!r}; registered: {', '.join(FORECASTERS)}")
    if args.horizon < 1:
        raise CliError(f"--horizon must be at least 1, got {args.horizon}")
    if args.file:
        from app.forecast import forecast_frame, read_long_csv
        from ingest.csvtable import CsvInputError

        try:
            frame = read_long_csv(Path(args.file))
        except CsvInputError as exc:
            raise CliError(str(exc)) from exc
        out = forecast_frame(frame, args.horizon, args.forecaster)
        dropped = sorted(set(frame["series_id"].unique()) - set(out["series_id"].unique()))
        if dropped:
            shown = ", ".join(map(str, dropped[:10])) + (
                f" and {len(dropped) - 10} more" if len(dropped) > 10 else ""
            )
            print(
                f"rootwise: warning: {args.file}: no forecast for {shown} (no values to fit)", file=sys.stderr
            )
        if args.format == "json":
            print(
                json.dumps(out.with_columns(pl.col("timestamp").dt.to_string("%Y-%m-%dT%H:%M:%S")).to_dicts())
            )
        elif args.format == "csv":
            print(out.write_csv(datetime_format="%Y-%m-%dT%H:%M:%S"), end="")
        else:
            print(out)
        return 0
    from app.forecast import forecast_store

    store = _open_store(args.db)
    try:
        report = forecast_store(store, horizon=args.horizon, step=args.step, forecaster=args.forecaster)
    finally:
        store.close()
    emit(report, args.format, lambda d: "\n".join(f"{k}: {v}" for k, v in d.items()))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from app.capacity import CapacityConfigError, settings_from_config
    from app.config import ConfigError, load_config
    from app.report import ReportError, report_capacity

    try:
        settings = settings_from_config(load_config(args.config).extra)
    except (ConfigError, CapacityConfigError) as exc:
        raise CliError(str(exc)) from exc
    if args.horizon is not None:
        if args.horizon < 1:
            raise CliError(f"--horizon must be at least 1 day, got {args.horizon}")
        settings = replace(settings, horizon_days=args.horizon)
    out = Path(args.out)
    store = _open_store(args.db)
    try:
        summary = report_capacity(store, settings, out, record=not args.no_record)
    except (ReportError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    finally:
        store.close()

    def human(d: dict[str, Any]) -> str:
        lines = [f"wrote {d['out']} ({d['bytes']:,} bytes)", d["bottom_line"]]
        for r in d["resources"]:
            lines.append(
                f"  {r['name']:36} P50 {(r['p50'] or '-')[:10]:10}  P90 {(r['p90'] or '-')[:10]:10}  {r['action']}"
            )
        return "\n".join(lines)

    emit(summary, args.format, human)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from app.alerts.config import check_config

    errors, counts = check_config(args.config)
    if args.format == "json":
        print(
            json.dumps(
                {"ok": not errors, "config": args.config, "errors": errors, "defines": counts}, indent=2
            )
        )
    elif errors:
        for e in errors:
            print(f"rootwise: error: {e}", file=sys.stderr)
    else:
        print(f"OK {args.config}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 2 if errors else 0


def cmd_silence(args: argparse.Namespace) -> int:
    """``silence add|list|expire``: on the store file, or through a running server's API with ``--server``."""
    from datetime import UTC, datetime

    from app.alerts.config import parse_duration

    now = datetime.now(UTC).replace(tzinfo=None)
    if args.action == "add":
        if not args.matchers:
            raise CliError('silence add needs at least one matcher, e.g. service="rag-api"')
        try:
            duration = parse_duration(args.duration)
        except ValueError as exc:
            raise CliError(f"--duration: {exc}") from exc
    if args.action == "expire" and not args.id:
        raise CliError("silence expire needs the silence id (see rootwise silence list)")
    if args.server:
        out = _silence_via_api(args)
    else:
        out = _silence_on_file(args, now, duration if args.action == "add" else None)

    def human(d: Any) -> str:
        if args.action == "list":
            if not d:
                return "no silences"
            return "\n".join(
                f"{s['id']}  {s.get('state', ''):8} until {s['ends_at'][:16]}  {s['text']}"
                + (f"  ({s['comment']})" if s.get("comment") else "")
                for s in d
            )
        if args.action == "add":
            return f"{d['id']}: silencing {d['text']} until {d['ends_at'][:16]} UTC"
        return f"{d['id']}: expired"

    emit(out, args.format, human)
    return 0


def _silence_on_file(args: argparse.Namespace, now: Any, duration: Any) -> Any:
    from app.alerts.silences import SilenceError, silences_from_rows
    from app.api import add_silence
    from ingest import alerts_store
    from ingest.store import StoreLockedError

    try:
        store = _open_store(args.db)
    except CliError as exc:
        if isinstance(exc.__cause__, StoreLockedError):
            raise CliError(
                f"{exc} For silences use --server http://HOST:PORT (the server's /api/v1/silences)."
            ) from exc
        raise
    try:
        if args.action == "list":
            return [s.to_dict(now) for s in silences_from_rows(alerts_store.silence_rows(store))]
        if args.action == "add":
            try:
                s = add_silence(
                    store, args.matchers, duration=duration, created_by=args.by, comment=args.comment, now=now
                )
            except SilenceError as exc:
                raise CliError(str(exc)) from exc
            return s.to_dict(now)
        if not alerts_store.expire_silence(store, args.id, now=now):
            raise CliError(f"no active silence {args.id!r} in {args.db}")
        return {"id": args.id, "expired": True}
    finally:
        store.close()


def _silence_via_api(args: argparse.Namespace) -> Any:
    import urllib.error
    import urllib.request

    base = args.server.rstrip("/") + "/api/v1/silences"
    headers = {"Content-Type": "application/json"}
    token = os.environ.get("ROOTWISE_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if args.action == "list":
        req = urllib.request.Request(base, headers=headers)
    elif args.action == "add":
        body = {
            "matchers": args.matchers,
            "duration": args.duration,
            "comment": args.comment,
            "created_by": args.by,
        }
        req = urllib.request.Request(base, data=json.dumps(body).encode(), headers=headers, method="POST")
    else:
        req = urllib.request.Request(f"{base}/{args.id}", headers=headers, method="DELETE")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", "")
        except (ValueError, AttributeError):
            message = ""
        raise CliError(f"{args.server}: HTTP {exc.code}" + (f": {message}" if message else "")) from exc
    except urllib.error.URLError as exc:
        raise CliError(f"cannot reach {args.server}: {exc.reason}") from exc


def _shared_data() -> Path:
    return Path(
        os.environ.get("ROOTWISE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
    )


# -- parser ----------------------------------------------------------------------------------------------
def _port(text: str) -> int:
    """A TCP port; 0 lets the system pick a free one."""
    n = count(0)(text)
    if n > 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 0-65535, got {text!r}")
    return n


def _common(p: argparse.ArgumentParser, *, db: bool = True) -> None:
    if db:
        p.add_argument(
            "--db",
            default=os.environ.get("ROOTWISE_DB", DEFAULT_DB),
            help=f"DuckDB file (default ./{DEFAULT_DB}, or $ROOTWISE_DB)",
        )
    p.add_argument("--format", choices=("text", "json", "csv"), default="text", help="output format")


def build_parser() -> argparse.ArgumentParser:
    from detectors.registry import DETECTORS  # names only: the registry imports no detector module

    parser = argparse.ArgumentParser(
        prog="rootwise", description="Observability and root-cause analysis for ML services."
    )
    parser.add_argument("--version", action="version", version="rootwise 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="simulate an ML platform with incidents, ingest it, serve the app")
    _common(p)
    p.add_argument("--port", type=_port, default=8050)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--days", type=positive_number, default=3.0, help="days of telemetry to simulate (default 3)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=positive_number, default=1.0, help="platform size multiplier (default 1)")
    p.add_argument(
        "--no-serve", action="store_true", help="stop after the pipeline instead of serving the app"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("simulate", help="write simulated telemetry (public formats) and ground-truth labels")
    _common(p, db=False)
    p.add_argument("--out", required=True, help="output folder (telemetry/ and labels/ are written inside)")
    p.add_argument("--days", type=positive_number, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=positive_number, default=1.0)
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
    p.add_argument("--port", type=_port, default=8050)
    p.add_argument(
        "--decode-workers",
        type=count(0),
        default=None,
        help="processes decoding OTLP bodies (default: one per core; 0: in the request threads)",
    )
    p.add_argument(
        "--no-scheduler",
        action="store_true",
        help="receive and show only: no detection, RCA, alerting or reports (as [scheduler] enabled = false)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("retention", help="roll raw points up to 5m/1h and drop raw points past an age")
    _common(p)
    p.add_argument(
        "--raw-max-age",
        type=positive_duration,
        default=timedelta(days=14),
        help="keep raw points this long (e.g. 14d; default 14d)",
    )
    for flag, what in (
        ("--rollup-5m-max-age", "5-minute rollups (hourly ones stay)"),
        ("--histograms-max-age", "raw histogram points (their hours are rolled up first)"),
        ("--spans-max-age", "spans"),
        ("--logs-max-age", "logs"),
    ):
        p.add_argument(
            flag, type=positive_duration, default=None, help=f"keep {what} this long (default: forever)"
        )
    p.set_defaults(func=cmd_retention)

    p = sub.add_parser(
        "rollup", help="roll new complete hours of raw points into the 5m/1h rollups (raw points kept)"
    )
    _common(p)
    p.set_defaults(func=cmd_rollup)

    p = sub.add_parser("bench", help="benchmarks; print figures and write JSON")
    _common(p, db=False)
    p.add_argument("what", choices=("ingest", "detect", "forecast", "rca", "app", "serve"))
    p.add_argument(
        "--workdir",
        default=None,
        help="rca: folder for the store (about 10.5 GB at 100k series x 7 days; default a temporary folder)",
    )
    p.add_argument(
        "--keep", action="store_true", help="rca: keep the store; a later run of the same size reuses it"
    )
    p.add_argument(
        "--series",
        type=int,
        default=None,
        help="detect: fleet series (default 10,000); forecast: series (default 1,000)",
    )
    p.add_argument(
        "--days",
        type=float,
        default=None,
        help="detect: days at 1-minute resolution (default 7); forecast: days of hourly history (default 90)",
    )
    p.add_argument(
        "--seconds", type=float, default=300.0, help="serve: how long to sustain the load (default 300)"
    )
    p.add_argument(
        "--rate", type=float, default=100_000.0, help="serve: target OTLP points/s (default 100,000)"
    )
    p.add_argument(
        "--detect-interval",
        default="20s",
        help="serve: the scheduler's detection interval (default 20s, the scheduler's)",
    )
    p.add_argument(
        "--detect-workers",
        type=int,
        default=None,
        help="serve: scoring processes per detection pass (default: the scheduler's, 2)",
    )
    p.add_argument("--points", type=int, default=20_000_000, help="points per measured path (default 20M)")
    p.add_argument(
        "--big-points",
        type=int,
        default=100_000_000,
        help="points in the streamed Parquet file for the peak-RSS check (0 to skip)",
    )
    p.add_argument("--out", default="bench-results/ingest.json", help="JSON results file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "detect", help="run detectors over what is stored; record anomalies, open/resolve incidents"
    )
    _common(p)
    p.add_argument("--detector", default="ensemble", help="registered detector (default: ensemble)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument(
        "--no-rca", action="store_true", help="do not explain new incidents (rootwise rca does it later)"
    )
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("incidents", help="list incidents")
    _common(p)
    p.add_argument("--status", choices=("open", "acknowledged", "resolved"), default=None)
    p.add_argument("--service", default=None)
    p.add_argument("--limit", type=count(1), default=None, help="the newest N incidents")
    p.set_defaults(func=cmd_incidents)

    p = sub.add_parser("score", help="score one series (CSV timestamp,value) causally")
    _common(p, db=False)
    p.add_argument("file", metavar="FILE.csv")
    p.add_argument(
        "--detector",
        default="streaming",
        help="registered detector (default: streaming): " + ", ".join(DETECTORS),
    )
    p.add_argument("--threshold", type=finite_number, default=None, help="calibrated z threshold (default 5)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser(
        "forecast", help="forecast a long CSV (series_id,timestamp,value) or the store's series"
    )
    _common(p)
    p.add_argument("file", nargs="?", metavar="FILE.csv", help="long CSV; without it the store is forecast")
    p.add_argument("--horizon", type=count(1), required=True, help="steps ahead")
    p.add_argument("--forecaster", default="auto", help="registered forecaster (default: auto)")
    p.add_argument(
        "--step",
        type=positive_duration,
        default=timedelta(hours=1),
        help="store: resampling step (default 1h)",
    )
    p.set_defaults(func=cmd_forecast)

    p = sub.add_parser("rca", help="rank the root causes of an incident, or of a KPI over a time window")
    _common(p)
    p.add_argument("--incident", default=None, help="a stored incident id (see rootwise incidents)")
    p.add_argument("--service", default=None)
    p.add_argument("--metric", default=None)
    p.add_argument("--start", default=None, help="onset, ISO 8601 (UTC unless an offset is given)")
    p.add_argument("--end", default=None, help="end of the abnormal window, ISO 8601")
    p.add_argument("--no-store", action="store_true", help="--incident: do not store the causes with it")
    p.set_defaults(func=cmd_rca)

    p = sub.add_parser("report", help="the leadership capacity report (HTML or PDF)")
    _common(p)
    p.add_argument("what", choices=("capacity",))
    p.add_argument(
        "--out", required=True, metavar="FILE.html|FILE.pdf", help="report file; the suffix picks the format"
    )
    p.add_argument(
        "--config", default=None, help="rootwise.toml with a [capacity] table (limits, budgets, scenarios)"
    )
    p.add_argument(
        "--horizon", type=int, default=None, help="days ahead (default: capacity.horizon_days or 90)"
    )
    p.add_argument(
        "--no-record", action="store_true", help="do not store this report's forecasts for the next report"
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "eval", help="evaluations (NAB, simulated incidents, M4); print figures and write JSON"
    )
    _common(p, db=False)
    p.add_argument("what", choices=("nab", "incidents", "forecast", "rca", "capacity"))
    p.add_argument(
        "--runs", type=count(1), default=200, help="capacity: simulated growth scenarios (default 200)"
    )
    p.add_argument("--history-days", type=count(1), default=28, help="capacity: days of history per scenario")
    p.add_argument(
        "--datasets",
        default="sockshop,riskloc,squeeze,nezha,simulator",
        help="rca: comma-separated benchmarks (sockshop, riskloc, squeeze, nezha, simulator)",
    )
    p.add_argument("--seeds", default="1,2,3", help="rca simulator: comma-separated seeds")
    p.add_argument(
        "--forecasters",
        default="naive,mstl,ets,arima,prophet,auto",
        help="forecast: comma-separated forecasters (default: all)",
    )
    p.add_argument("--limit", type=int, default=None, help="forecast: first N M4 series only")
    p.add_argument("--detector", default="streaming", help="nab: registered detector (default: streaming)")
    p.add_argument("--params", default=None, help="nab: detector parameters as JSON")
    p.add_argument(
        "--loco", default=None, help='nab: JSON grid {"param": [values]} for the leave-one-category-out check'
    )
    p.add_argument("--workers", type=count(1), default=2)
    p.add_argument(
        "--data",
        default=None,
        help="nab: NAB folder; forecast: M4 folder, or servegen (the ServeGen folder); "
        "incidents: an existing simulator output",
    )
    p.add_argument("--days", type=positive_number, default=4.0, help="incidents: simulated days (default 4)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scale", type=positive_number, default=0.5)
    p.add_argument("--out", default=None, help="JSON results file (default bench-results/eval-WHAT.json)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "silence",
        help="add, list or expire alert silences (on --db, or on a running server with --server URL)",
    )
    _common(p)
    p.add_argument("action", choices=("add", "list", "expire"))
    p.add_argument("matchers", nargs="*", help='add: label matchers, e.g. service="rag-api" tenant=~"t-1.*"')
    p.add_argument("--id", default=None, help="expire: the silence id")
    p.add_argument("--duration", default="2h", help="add: how long (e.g. 30m, 2h, 1d; default 2h)")
    p.add_argument("--comment", default="", help="add: why")
    p.add_argument("--by", default=os.environ.get("USER", ""), help="add: who (default $USER)")
    p.add_argument(
        "--server",
        default=None,
        help="a running rootwise serve (http://HOST:PORT); token from $ROOTWISE_TOKEN",
    )
    p.set_defaults(func=cmd_silence)

    p = sub.add_parser(
        "config", help="validate rootwise.toml (server, scrape, capacity, slos, receivers, routes)"
    )
    _common(p, db=False)
    p.add_argument("action", choices=("check",))
    p.add_argument("--config", default="rootwise.toml", help="config file (default ./rootwise.toml)")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        for line in str(exc).splitlines() or [""]:  # a config with several problems: one line each
            print(f"rootwise: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (``rootwise incidents --format json | head``): no traceback; stdout is pointed at
        # /dev/null so the interpreter's final flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
