"""``rootwise bench rca``: root-cause analysis of one incident on a fleet-sized store.

The store holds ``series`` series at 1-minute resolution over ``days`` days (100,000 × 7 days ≈ 1.0 billion
points by default):

* usage rows of ``llm-gateway`` (80 % of the series; 40,000 leaves at the default size): per leaf, ``delta``
  series ``requests`` and ``errors`` with labels tenant (1,000 values), model (10), model_version (50), region
  (8) and operation (4) — the label space the dimension analyser searches; Zipf-like volumes (0.2 to 30
  requests a minute), a daily cycle, error rates of 0.5–2 %;
* per-instance gauges ``latency_ms`` and ``cpu_util`` on 20 other services (the other 20 %), six of them
  called by the gateway (declared topology edges), the others unrelated;
* ten sampled traces per minute through gateway → router → inference / vector-db, change events every three
  hours, and the incident: model version ``model-3-v2``'s error rate rises twelvefold at a known onset on the
  last day, three minutes after a ``model_rollout`` event of that version on ``llm-gateway``. No logs.

Why SQL and not the ingest path: the tables are written with ``INSERT … SELECT … FROM range(…)``, every value a
deterministic hash of (series, minute), in time order one day per statement (as live ingest would write them,
so DuckDB's zone maps on ``ts`` prune a window query to its row groups). Ingesting a billion points through
files or OTLP would take far longer than the RCA it is here to measure; ingest has its own benchmark
(``rootwise bench ingest``). The store is opened with :class:`ingest.store.Store`, so it has the real schema;
series ids are a 64-bit hash of the series' index (not the ingest path's content hash, but as random, so
the ``points`` column compresses as it would in production).

Measured: the full :class:`rca.combine.RootCauseEngine` on the incident through
:class:`ingest.rca_view.StoreView` — cold (first call on a freshly opened store; the OS page cache may still
hold the file) and warm (median of ``repeats``), per engine step and per view call (rows and seconds, so a
slow step is split into "reading" and "analysing") — and :func:`app.rca_eval.dimensions.bench_dimensions` on
5 labels × 1,000 values.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from ingest.store import Store

START = datetime(2026, 3, 1)
#: the issue's targets on a 2-core machine (seconds)
TARGET_RCA_SECONDS = 2.0
TARGET_DIMENSIONS_SECONDS = 1.0

GATEWAY = "llm-gateway"
#: gauge services; the first six are called by the gateway (directly or not), the rest are unrelated
GAUGE_SERVICES = (
    "router",
    "inference-0",
    "inference-1",
    "inference-2",
    "inference-3",
    "vector-db",
    "web",
    "auth",
    "billing",
    "billing-db",
    "search",
    "search-index",
    "catalog",
    "cache",
    "notifications",
    "batch-eval",
    "feature-store",
    "embeddings",
    "scheduler",
    "ingest-worker",
)
EDGES = (
    ("web", GATEWAY),
    (GATEWAY, "router"),
    *(("router", f"inference-{i}") for i in range(4)),
    ("router", "vector-db"),
    ("web", "auth"),
    ("web", "catalog"),
    ("web", "search"),
    ("catalog", "cache"),
    ("search", "search-index"),
    ("search", "embeddings"),
    ("billing", "billing-db"),
    ("batch-eval", "feature-store"),
    ("scheduler", "ingest-worker"),
)
REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-south-1", "ap-northeast-1", "sa-east-1",
           "ca-central-1")  # fmt: skip
OPERATIONS = ("chat", "completion", "embedding", "rerank")
TENANTS, VERSIONS = 1000, 50
#: the faulty model version (code ``v`` → model ``model-{v // 5}``, version ``model-{v // 5}-v{v % 5}``)
BAD_VERSION = 17
ERROR_FACTOR = 12
INCIDENT_MINUTES = 120
TRACES_PER_MINUTE = 10
#: share of the series that are usage rows (requests + errors of one leaf each)
USAGE_SHARE = 0.8

# Pseudo-random numbers and label codes as SQL macros, so every value is computed inside DuckDB.
_MACROS = f"""
CREATE OR REPLACE TEMP MACRO rb_u(a, b) AS (hash(a, b) % 1000000)::DOUBLE / 1e6;
CREATE OR REPLACE TEMP MACRO rb_sid(s) AS (hash(s, 'rootwise-bench-rca') >> 1)::BIGINT;
CREATE OR REPLACE TEMP MACRO rb_version(j) AS ((j // {TENANTS}) + 7 * (j % {TENANTS})) % {VERSIONS};
CREATE OR REPLACE TEMP MACRO rb_vname(v) AS 'model-' || (v // 5) || '-v' || (v % 5);
CREATE OR REPLACE TEMP MACRO rb_day(m) AS 1 + 0.35 * sin(2 * pi() * (m % 1440) / 1440);
CREATE OR REPLACE TEMP MACRO rb_requests(j, m) AS
    floor((0.2 + 30 * pow(rb_u(j, -1), 3)) * rb_day(m) + rb_u(j, m));
"""


def _layout(series: int) -> dict[str, int]:
    """Series counts: ``leaves`` usage leaves (2 series each) and ``gauges`` gauge series."""
    if series < 100:
        raise ValueError("series must be at least 100")
    leaves = int(series * USAGE_SHARE) // 2
    return {"series": series, "leaves": leaves, "gauges": series - 2 * leaves}


def incident_times(days: float) -> tuple[datetime, datetime]:
    """Onset (14:00 of the last day, or 10 h before the end) and the end of the data."""
    minutes = int(round(days * 1440))
    if minutes < 12 * 60:
        raise ValueError("days must cover at least 12 hours")
    return START + timedelta(minutes=minutes - 600), START + timedelta(minutes=minutes)


def build_store(path: Path, *, series: int, days: float) -> dict[str, Any]:
    """Write the benchmark store at ``path`` (see the module docstring); returns counts and seconds.

    Parameters
    ----------
    path
        A DuckDB file that does not exist yet.
    series, days
        Series count and days of 1-minute points.
    """
    lay = _layout(series)
    minutes = int(round(days * 1440))
    onset, _ = incident_times(days)
    onset_m = int((onset - START) / timedelta(minutes=1))
    store = Store(path)
    cur = store.cursor()
    cur.execute(_MACROS)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    n_usage = 2 * lay["leaves"]
    regions = "[" + ", ".join(f"'{r}'" for r in REGIONS) + "]"
    operations = "[" + ", ".join(f"'{o}'" for o in OPERATIONS) + "]"
    services = "[" + ", ".join(f"'{s}'" for s in GAUGE_SERVICES) + "]"
    cur.execute(
        f"""
        INSERT INTO series (series_id, metric, service, kind, unit, labels)
        SELECT rb_sid(s),
            CASE WHEN s < {n_usage} THEN (CASE WHEN s % 2 = 0 THEN 'requests' ELSE 'errors' END)
                 ELSE (CASE WHEN g % 2 = 0 THEN 'latency_ms' ELSE 'cpu_util' END) END,
            CASE WHEN s < {n_usage} THEN '{GATEWAY}' ELSE {services}[1 + i % {len(GAUGE_SERVICES)}] END,
            CASE WHEN s < {n_usage} THEN 'delta' ELSE 'gauge' END,
            CASE WHEN s < {n_usage} THEN '1' WHEN g % 2 = 0 THEN 'ms' ELSE '1' END,
            CASE WHEN s < {n_usage} THEN MAP {{
                    'tenant': 'tenant-' || lpad((j % {TENANTS})::VARCHAR, 4, '0'),
                    'model': 'model-' || (rb_version(j) // 5),
                    'model_version': rb_vname(rb_version(j)),
                    'region': {regions}[1 + ((j // {TENANTS * VERSIONS}) + j % {TENANTS}) % {len(REGIONS)}],
                    'operation': {operations}[1 + ((j // {TENANTS * VERSIONS * len(REGIONS)}) + j % {TENANTS})
                                             % {len(OPERATIONS)}]}}
                 ELSE MAP {{
                    'instance': {services}[1 + i % {len(GAUGE_SERVICES)}] || '-' || lpad(i::VARCHAR, 5, '0'),
                    'region': {regions}[1 + i % {len(REGIONS)}]}} END
        FROM (SELECT s, s // 2 AS j, s - {n_usage} AS g, (s - {n_usage}) // 2 AS i FROM range({series}) r(s))
        """
    )
    timings["series"] = time.perf_counter() - started
    # One statement per day, rows in (minute, series) order: the order live ingest writes them in.
    value = f"""
        CASE WHEN s >= {n_usage} THEN (CASE
                WHEN (s - {n_usage}) % 2 = 0 THEN round((80 + 40 * rb_u(s, -1)) * rb_day(m) + 8 * rb_u(s, m), 2)
                ELSE round((0.2 + 0.4 * rb_u(s, -1)) * rb_day(m) + 0.05 * rb_u(s, m), 4) END)
             WHEN s % 2 = 0 THEN rb_requests(s // 2, m)
             ELSE least(rb_requests(s // 2, m), floor(rb_requests(s // 2, m) * (0.005 + 0.015 * rb_u(s // 2, -2))
                  * (CASE WHEN rb_version(s // 2) = {BAD_VERSION} AND m >= {onset_m}
                          AND m < {onset_m + INCIDENT_MINUTES} THEN {ERROR_FACTOR} ELSE 1 END)
                  + rb_u(s, m))) END
    """
    t0 = time.perf_counter()
    for day in range(0, minutes, 1440):
        n = min(1440, minutes - day)
        cur.execute(
            f"""
            INSERT INTO points
            SELECT rb_sid(s), TIMESTAMP '{START:%Y-%m-%d %H:%M:%S}' + to_minutes(m), {value}
            FROM (SELECT {day} + i // {series} AS m, i % {series} AS s FROM range({n * series}) r(i))
            """
        )
    timings["points"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _write_traces(cur, minutes, onset_m)
    _write_events(cur, minutes, onset_m)
    cur.executemany(
        "INSERT INTO topology_edges VALUES (?, ?, 'declared', ?)", [(a, b, START) for a, b in EDGES]
    )
    timings["spans_events_edges"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.close()  # checkpoints
    timings["checkpoint"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started
    return {
        **lay,
        "days": days,
        "minutes": minutes,
        "points": series * minutes,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "onset": onset.isoformat(),
        "bad_model_version": _version_name(BAD_VERSION),
    }


def _version_name(v: int) -> str:
    return f"model-{v // 5}-v{v % 5}"


def _write_traces(cur: Any, minutes: int, onset_m: int) -> None:
    """``TRACES_PER_MINUTE`` traces per minute: gateway → router → inference-k and router → vector-db; calls of
    the bad version fail in the incident window (on the gateway and inference spans)."""
    step_ms = 60_000 // TRACES_PER_MINUTE
    cur.execute(
        f"""
        INSERT INTO spans (trace_id, span_id, parent_span_id, service, name, kind, start, duration, status,
                           tenant, model, operation, attributes)
        WITH t AS (
            SELECT tr, m, TIMESTAMP '{START:%Y-%m-%d %H:%M:%S}' + to_minutes(m)
                       + to_milliseconds((tr % {TRACES_PER_MINUTE}) * {step_ms}) AS t0,
                (hash(tr, 'v') % {VERSIONS})::INTEGER AS v, 15 + 10 * rb_u(tr, 'd') AS vdb,
                300 + 400 * rb_u(tr, 'c') AS inf, md5('trace' || tr) AS trace_id
            FROM (SELECT i AS tr, i // {TRACES_PER_MINUTE} AS m FROM range({minutes * TRACES_PER_MINUTE}) r(i))
        ), f AS (
            SELECT *, (v = {BAD_VERSION} AND m >= {onset_m} AND m < {onset_m + INCIDENT_MINUTES})
                      OR rb_u(tr, 'e') < 0.005 AS failed
            FROM t
        )
        SELECT trace_id, substr(md5(trace_id || x.part), 1, 16),
            CASE x.part WHEN 'a' THEN NULL WHEN 'b' THEN substr(md5(trace_id || 'a'), 1, 16)
                 ELSE substr(md5(trace_id || 'b'), 1, 16) END,
            CASE x.part WHEN 'a' THEN '{GATEWAY}' WHEN 'b' THEN 'router' WHEN 'c' THEN 'inference-' || (tr % 4)
                 ELSE 'vector-db' END,
            CASE x.part WHEN 'a' THEN 'POST /v1/chat' WHEN 'b' THEN 'route' WHEN 'c' THEN 'generate'
                 ELSE 'search' END,
            'server',
            CASE x.part WHEN 'a' THEN t0 WHEN 'b' THEN t0 + INTERVAL 2 MILLISECOND
                 WHEN 'd' THEN t0 + INTERVAL 3 MILLISECOND
                 ELSE t0 + to_microseconds(((4 + vdb) * 1000)::BIGINT) END,
            CASE x.part WHEN 'a' THEN inf + vdb + 12 WHEN 'b' THEN inf + vdb + 5 WHEN 'c' THEN inf ELSE vdb END,
            CASE WHEN failed AND x.part IN ('a', 'c') THEN 'error' ELSE 'ok' END,
            'tenant-' || lpad((tr % {TENANTS})::VARCHAR, 4, '0'), 'model-' || (v // 5), 'chat',
            MAP {{'model_version': rb_vname(v)}}
        FROM f, (VALUES ('a'), ('b'), ('c'), ('d')) x(part)
        ORDER BY 7, 1, 2
        """
    )


def _write_events(cur: Any, minutes: int, onset_m: int) -> None:
    """Background changes every three hours on unrelated services, the rollout 3 minutes before onset and
    three distractors around it."""
    at = START + timedelta(minutes=onset_m)
    rows: list[tuple[Any, ...]] = []
    kinds = ("deploy", "config", "feature_flag", "scale", "infra")
    for n, m in enumerate(range(90, minutes, 180)):
        service = GAUGE_SERVICES[6 + n % (len(GAUGE_SERVICES) - 6)]
        rows.append(
            (
                f"bg-{n:04d}",
                START + timedelta(minutes=m),
                service,
                kinds[n % 5],
                f"{kinds[n % 5]} {service}",
                {},
            )
        )
    bad = _version_name(BAD_VERSION)
    rows += [
        (
            "rollout-incident",
            at - timedelta(minutes=3),
            GATEWAY,
            "model_rollout",
            f"Roll out {bad} to 100%",
            {"model": f"model-{BAD_VERSION // 5}", "model_version": bad},
        ),
        ("deploy-billing", at - timedelta(minutes=25), "billing", "deploy", "Deploy billing 4.2", {}),
        ("config-router", at - timedelta(minutes=70), "router", "config", "Raise router timeout", {}),
        ("scale-inference", at + timedelta(minutes=4), "inference-1", "scale", "Scale inference-1 to 12", {}),
    ]
    rows = [r for r in rows if r[1] < START + timedelta(minutes=minutes)]
    cur.executemany(
        "INSERT INTO events VALUES (?, ?, ?, ?, ?, map_from_entries(?::STRUCT(k VARCHAR, v VARCHAR)[]))",
        [(*r[:5], [{"k": k, "v": v} for k, v in r[5].items()]) for r in rows],
    )


class TimedView:
    """A :class:`ingest.rca_view.StoreView` that records each call: engine step, method, rows, seconds.

    The step is read from the engine's ``run(name, ...)`` frame on the call stack (bench-only introspection,
    so the engine itself needs no hooks).
    """

    def __init__(self, view: Any) -> None:
        self._view = view
        self.calls: list[dict[str, Any]] = []

    def _timed(self, method: str) -> Callable[..., pl.DataFrame]:
        inner = getattr(self._view, method)

        def call(*args: Any, **kwargs: Any) -> pl.DataFrame:
            t0 = time.perf_counter()
            frame = inner(*args, **kwargs)
            self.calls.append(
                {
                    "step": _engine_step(),
                    "method": method,
                    "rows": frame.height,
                    "seconds": time.perf_counter() - t0,
                }
            )
            return frame

        return call

    def __getattr__(self, name: str) -> Any:
        if name in ("series", "points", "events", "spans", "logs", "edges"):
            return self._timed(name)
        return getattr(self._view, name)

    def summary(self) -> list[dict[str, Any]]:
        """Calls grouped by step and method: count, rows, seconds (rounded), slowest first."""
        if not self.calls:
            return []
        frame = (
            pl.DataFrame(self.calls)
            .group_by("step", "method")
            .agg(pl.len().alias("calls"), pl.col("rows").sum(), pl.col("seconds").sum().round(3))
            .sort("seconds", descending=True)
        )
        return frame.to_dicts()


def _engine_step() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "run" and frame.f_globals.get("__name__") == "rca.combine":
            return str(frame.f_locals.get("name", "?"))
        frame = frame.f_back
    return "other"


def _cause_json(cause: Any) -> dict[str, Any]:
    return {
        "kind": cause.kind,
        "service": cause.service,
        "labels": dict(cause.labels),
        "event_id": cause.event_id,
        "score": round(float(cause.score), 4),
        "explanation": cause.explanation,
    }


def measure_rca(path: Path, *, days: float, repeats: int = 3) -> dict[str, Any]:
    """Run the full engine on the benchmark incident: once cold (store just opened), ``repeats`` times warm.

    Returns
    -------
    dict
        ``cold``/``warm`` (wall and CPU seconds in total, wall seconds per step; warm values are medians
        over the repeats), ``view_calls`` of the cold and of the last warm run (per step and method),
        ``top_causes`` and ``top_cause_ok`` (the rollout or the ``model_version`` dimension ranked first),
        ``imports_seconds``.
    """
    t0 = time.perf_counter()
    from ingest.rca_view import StoreView
    from rca.base import RcaIncident
    from rca.combine import RootCauseEngine

    for module in ("rca.changes", "rca.dimensions", "rca.topology", "rca.metrics", "rca.logs"):
        importlib.import_module(module)  # import cost is not query cost: the server has them loaded
    imports = time.perf_counter() - t0
    onset, _ = incident_times(days)
    incident = RcaIncident(GATEWAY, "errors", onset, onset + timedelta(minutes=15))
    store = Store(path, read_only=True)
    runs: list[dict[str, Any]] = []
    try:
        for _ in range(1 + repeats):
            engine = RootCauseEngine()
            view = TimedView(StoreView(store))
            t0, c0 = time.perf_counter(), time.process_time()
            result = engine.explain(incident, view)
            total, cpu = time.perf_counter() - t0, time.process_time() - c0
            runs.append(
                {"total": total, "cpu": cpu, "steps": dict(engine.timings), "view": view, "result": result}
            )
    finally:
        store.close()
    cold, warm = runs[0], runs[1:]
    steps = list(cold["steps"])
    ranked = cold["result"].ranked()
    top = ranked[0] if ranked else None
    bad = _version_name(BAD_VERSION)
    ok = top is not None and (
        top.event_id == "rollout-incident"
        or (top.kind == "dimension" and top.labels.get("model_version") == bad)
    )
    return {
        "incident": {"service": GATEWAY, "metric": "errors", "onset": onset.isoformat(), "minutes": 15},
        "imports_seconds": round(imports, 2),
        "cold": {
            "total": round(cold["total"], 3),
            "cpu": round(cold["cpu"], 3),
            "steps": {k: round(v, 3) for k, v in cold["steps"].items()},
        },
        "warm": {
            "total": round(statistics.median(r["total"] for r in warm), 3) if warm else None,
            "cpu": round(statistics.median(r["cpu"] for r in warm), 3) if warm else None,
            "steps": {k: round(statistics.median(r["steps"][k] for r in warm), 3) for k in steps}
            if warm
            else {},
            "repeats": repeats,
        },
        "view_calls": {
            "cold": cold["view"].summary(),
            "warm": (warm[-1] if warm else cold)["view"].summary(),
        },
        "top_causes": [_cause_json(c) for c in ranked[:5]],
        "top_cause_ok": ok,
        "notes": list(cold["result"].notes),
    }


def measure_dimensions(
    *, labels: int = 5, values: int = 1000, leaves: int = 50_000, repeats: int = 3
) -> dict[str, Any]:
    """:func:`app.rca_eval.dimensions.bench_dimensions` ``repeats`` times; the median seconds."""
    from app.rca_eval.dimensions import bench_dimensions

    runs = [bench_dimensions(labels=labels, values=values, leaves=leaves) for _ in range(repeats)]
    return {
        **{k: runs[0][k] for k in ("labels", "values", "leaves")},
        "seconds": round(statistics.median(float(r["seconds"]) for r in runs), 3),
        "runs": [round(float(r["seconds"]), 3) for r in runs],
        "found": all(bool(r["found"]) for r in runs),
    }


def _code_version() -> dict[str, Any]:
    """The commit measured, and whether ``rca/`` or ``ingest/`` had uncommitted changes (None without git)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip()

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--", "rca", "ingest")
    return {"commit": commit, "rca_ingest_modified": bool(changes) if changes is not None else None}


def _store_stats(path: Path) -> dict[str, Any]:
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    store = Store(path, read_only=True)
    try:
        rows = {t: store.count(t) for t in ("series", "points", "spans", "events", "topology_edges", "logs")}
    finally:
        store.close()
    return {"bytes": size, "gb": round(size / 1e9, 2), "rows": rows}


def bench_rca(
    series: int = 100_000,
    days: float = 7.0,
    out: Path = Path("bench-results/rca.json"),
    workdir: Path | None = None,
    keep: bool = False,
    *,
    repeats: int = 3,
    dimension_leaves: int = 50_000,
) -> dict[str, Any]:
    """All figures of the RCA benchmark; written to ``out`` as JSON and returned.

    Parameters
    ----------
    series, days
        Store size: series at 1-minute resolution over days.
    out
        JSON results file.
    workdir
        Where the store is written (default: a new temporary folder). A store left there by an earlier run
        with ``keep`` and the same ``series``/``days`` is reused (its build figures come from that run).
    keep
        Keep the store afterwards (otherwise the folder's store is deleted, and a temporary folder removed).
    repeats
        Warm RCA runs and dimension-localisation runs (medians are reported).
    dimension_leaves
        Leaves drawn for the 5 labels × 1,000 values localisation.
    """
    own_dir = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="rootwise-bench-rca-")) if workdir is None else Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    db, meta = folder / "rca-bench.duckdb", folder / "rca-bench.json"
    # other work on a shared machine shows in the load average: keep it next to the timings
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_before": [round(x, 2) for x in os.getloadavg()]},
        "series": series,
        "days": days,
        "code": _code_version(),
    }
    try:
        previous = json.loads(meta.read_text()) if meta.exists() and db.exists() else None
        if previous and previous.get("series") == series and previous.get("days") == days:
            results["build"] = {**previous["build"], "reused": True}
        else:
            for p in folder.glob(db.name + "*"):
                p.unlink()
            results["build"] = build_store(db, series=series, days=days)
            meta.write_text(json.dumps({"series": series, "days": days, "build": results["build"]}))
        results["store"] = _store_stats(db)
        results["rca"] = measure_rca(db, days=days, repeats=repeats)
        results["dimensions"] = measure_dimensions(leaves=dimension_leaves, repeats=repeats)
    finally:
        if not keep:
            for p in [*folder.glob(db.name + "*"), meta]:
                p.unlink(missing_ok=True)
            if own_dir:
                shutil.rmtree(folder, ignore_errors=True)
    results["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    results["targets"] = {
        "rca_seconds": TARGET_RCA_SECONDS,
        "dimensions_seconds": TARGET_DIMENSIONS_SECONDS,
        "rca_warm_met": results["rca"]["warm"]["total"] is not None
        and results["rca"]["warm"]["total"] <= TARGET_RCA_SECONDS,
        "rca_cold_met": results["rca"]["cold"]["total"] <= TARGET_RCA_SECONDS,
        "dimensions_met": results["dimensions"]["seconds"] <= TARGET_DIMENSIONS_SECONDS,
    }
    results["summary"] = format_bench_rca(results)
    results["date"] = datetime.now().isoformat(timespec="seconds")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results


def format_bench_rca(result: dict[str, Any]) -> str:
    """A short table of the figures of :func:`bench_rca`."""
    build, store, rca, dims = result["build"], result["store"], result["rca"], result["dimensions"]
    steps = list(rca["cold"]["steps"])
    lines = [
        f"store: {build['series']:,} series x {build['days']:g} days = {store['rows']['points']:,} points, "
        f"{store['gb']} GB; built in {build['seconds']['total']} s"
        + (" (reused)" if build.get("reused") else ""),
        f"incident: {rca['incident']['service']} errors at {rca['incident']['onset']}",
        f"{'RCA step':<12}{'cold s':>9}{'warm s':>9}",
        *(
            f"{s:<12}{rca['cold']['steps'][s]:>9.3f}{rca['warm']['steps'].get(s, float('nan')):>9.3f}"
            for s in steps
        ),
        f"{'total':<12}{rca['cold']['total']:>9.3f}{(rca['warm']['total'] or float('nan')):>9.3f}"
        f"   (target <= {TARGET_RCA_SECONDS:g} s)",
        f"{'(CPU s)':<12}{rca['cold']['cpu']:>9.3f}{(rca['warm']['cpu'] or float('nan')):>9.3f}"
        f"   load average {result['machine']['load_before'][0]:g} before, {result['machine']['load_after'][0]:g} after",
    ]
    slow = [c for c in rca["view_calls"]["warm"] if c["seconds"] >= 0.05][:5]
    if slow:
        lines.append(
            "slowest view reads (warm): "
            + "; ".join(f"{c['step']}.{c['method']} {c['rows']:,} rows {c['seconds']:.2f} s" for c in slow)
        )
    top = rca["top_causes"][0] if rca["top_causes"] else None
    if top is not None:
        what = top["event_id"] or ", ".join(f"{k}={v}" for k, v in top["labels"].items()) or top["service"]
        lines.append(
            f"top cause: {top['kind']} {what} ({'injected' if rca['top_cause_ok'] else 'NOT the injected one'})"
        )
    lines.append(
        f"dimension localisation {dims['labels']} labels x {dims['values']} values ({dims['leaves']:,} leaves): "
        f"{dims['seconds']:.3f} s median (target <= {TARGET_DIMENSIONS_SECONDS:g} s), found={dims['found']}"
    )
    return "\n".join(lines)
