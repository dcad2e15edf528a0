"""``rootwise detect``: score what is stored, record anomalies, open, update and resolve incidents.

Incremental and idempotent: each series has a watermark (``scored_until``) and its fitted detector and alarm
state in ``detector_state``; a run reads only points after the watermark, scores them with the saved state,
advances it and commits anomalies, incidents and states of a batch of series in one transaction. A series
seen for the first time is scored causally over its history (the detector's ``score_online``: every point
only against earlier ones), so the first run over a store finds the incidents already in it. Batch members
(the seasonal baseline) are refitted on the last ``history`` of data once their fit is older than the
detector's refit interval (two days for the ensemble).

What is scored per series kind:

* gauge, delta: the values;
* counter: its per-step increases (a drop is a reset), for a single series as for stitched and aggregated
  ones; the catalog's kind decides, so the detector is told not to guess counters from the data
  (``infer_counters``: a leaking gauge that only grows must not be scored on its steps);
* histogram: the per-interval p99 (Prometheus ``histogram_quantile`` interpolation over the bucket
  increments), the latency KPI on-call engineers page on.

A logical series with several members is scored only up to the newest point every live member has sent
(:func:`_complete_until`); an alarm on a series that went silent while its service goes on is closed
(:func:`_resolve_silent`).

Time in detection is *data* time (the newest point), never the wall clock, so re-running over the same data
gives the same incidents.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from detectors.alarms import AlarmRule, AlarmState
from detectors.base import series_blocks
from detectors.incidents import Episode, Incident, IncidentPolicy, update_incidents
from detectors.registry import make_detector
from ingest import results
from ingest.procs import exit_with_parent
from ingest.schema import POINTS, TS
from ingest.store import Store

DETECTED_KINDS = ("gauge", "counter", "delta", "histogram")


@dataclass(frozen=True)
class DetectConfig:
    """Knobs of a detection run (config ``[detect]`` maps onto these names)."""

    detector: str = "ensemble"
    alarm: AlarmRule = field(default_factory=AlarmRule)
    policy: IncidentPolicy = field(default_factory=IncidentPolicy)
    history: timedelta = timedelta(days=14)
    #: series per batch when each is read from its beginning (a first fit): what bounds a batch's memory
    batch: int = 500
    #: series already scored are batched by their new points instead (:func:`_batches`): a batch holds at most
    #: this many (a first fit counts as ``batch_points / batch``) and at most ``max_batch`` series; within that,
    #: about four batches per scoring process when there is much to score, at least two, and no fewer than 100,000
    #: points each. An incremental pass over a large fleet is then a few batches of thousands of series, not
    #: dozens of 500 that each scan the same new rows and write one transaction
    batch_points: int = 5_000_000
    max_batch: int = 5_000
    min_points: int = 30  # a series with fewer points waits for more before its first fit
    quantile: float = 0.99  # histogram KPI
    workers: int | None = None  # scoring processes (None: one per core; 1: in this process)
    #: the KPI quantile is over the trailing intervals holding about this many observations (0: each interval
    #: alone): the p99 of fewer than 100 is their maximum, which jumps a bucket whenever one slow request lands
    #: (the simulator's false pages on a predictor instance serving ~45 requests a minute); a busy series keeps
    #: one interval
    quantile_min_observations: int = 100
    #: a metric of one service with more series than this (per-tenant usage, ...) is detected on its aggregate
    #: (the KPI); which tenants/models moved is the root-cause engine's dimension analysis, not a page each
    max_series_per_metric: int = 50
    #: a logical series with several members (stitched versions, an aggregate, a histogram's instances) is
    #: scored only up to the newest point every live member has sent, so a member whose export lands a few
    #: seconds after another's is never left out of a scored minute (scores do not depend on when passes run);
    #: a member more than this behind the newest one is taken as gone (an old version, a stopped pod)
    member_grace: timedelta = timedelta(minutes=2)
    #: an alarm on a series that stopped reporting while the rest of its service goes on (a tenant's error
    #: series with no more errors, a pod that was replaced) resolves once the series is this far behind the
    #: service's newest scored point; a service that went silent as a whole keeps its incidents open
    silent_after: timedelta = timedelta(minutes=15)

    def scoring_processes(self) -> int:
        """``workers``, with None read as one per core."""
        return self.workers if self.workers is not None else (os.cpu_count() or 1)


@dataclass
class DetectReport:
    """What one run did."""

    series: int = 0
    points: int = 0
    anomalies: int = 0
    incidents_opened: int = 0
    incidents_updated: int = 0
    incidents_resolved: int = 0
    seconds: float = 0.0

    @property
    def points_per_second(self) -> float:
        return self.points / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "points_per_second": round(self.points_per_second, 1)}


def histogram_quantile_series(
    rows: pl.DataFrame, q: float, series_id: int, *, min_observations: int = 0
) -> pl.DataFrame:
    """The ``q`` quantile per timestamp of the interval distribution summed over the member histograms in
    ``rows`` (Prometheus ``histogram_quantile`` interpolation), as one POINTS series ``series_id``.

    Cumulative rows are differenced against the member's previous row (the first row of each member only
    serves as a base; a drop is a restart and counts the new row whole). Members whose bucket layout differs
    from the newest one are left out. Intervals with no observations give NaN.

    With ``min_observations``, each point's quantile is taken over the trailing intervals that together hold
    about that many observations (at most 15): the p99 of 60 requests is their maximum, pure noise, while the
    p99 of the last ~400 is a latency KPI (causal: only the point's own and earlier intervals).
    """
    if rows.height == 0:
        return pl.DataFrame(schema=POINTS)
    rows = rows.sort("series_id", "ts")
    bounds = np.asarray(rows["bounds"][-1], dtype=np.float64)
    k = bounds.size + 1
    ts_parts, inc_parts = [], []
    for (_,), g in rows.group_by(["series_id"], maintain_order=True):
        ok = np.array([c is not None and len(c) == k for c in g["counts"].to_list()])
        g = g.filter(pl.Series(ok))
        if g.height == 0:
            continue
        m = np.vstack([np.asarray(c, dtype=np.float64) for c in g["counts"].to_list()])
        ts = g["ts"].to_numpy()
        if bool(g["cumulative"][-1]):
            inc = m[1:] - m[:-1]
            reset = (inc < 0).any(axis=1)
            inc[reset] = m[1:][reset]
            m, ts = inc, ts[1:]
        ts_parts.append(ts)
        inc_parts.append(m)
    if not ts_parts:
        return pl.DataFrame(schema=POINTS)
    ts_all = np.concatenate(ts_parts)
    inc_all = np.vstack(inc_parts)
    uniq, inv = np.unique(ts_all, return_inverse=True)
    inc = np.zeros((uniq.size, k))
    np.add.at(inc, inv, inc_all)
    if min_observations:
        per = float(np.median(inc.sum(axis=1))) if uniq.size else 0.0
        span = int(np.clip(np.ceil(min_observations / per), 1, 15)) if per > 0 else 1
        if span > 1:
            cs = np.cumsum(inc, axis=0)
            inc = cs - np.vstack([np.zeros((span, k)), cs[:-span]])
    total = inc.sum(axis=1)
    cum = np.cumsum(inc, axis=1)
    rank = q * total
    idx = np.minimum((cum < rank[:, None]).sum(axis=1), k - 1)
    upper = np.r_[bounds, bounds[-1] if bounds.size else np.nan][idx]
    lower = np.where(idx > 0, np.r_[0.0, bounds][idx], 0.0)
    rows_i = np.arange(idx.size)
    below = np.where(idx > 0, cum[rows_i, np.maximum(idx - 1, 0)], 0.0)
    in_bucket = inc[rows_i, idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(in_bucket > 0, (rank - below) / in_bucket, 1.0)
        v = lower + (upper - lower) * np.clip(frac, 0.0, 1.0)
    v = np.where(total > 0, v, np.nan)
    frame = pl.DataFrame({"series_id": np.full(v.size, series_id, dtype=np.int64), "ts": uniq, "value": v})
    return frame.cast(pl.Schema(POINTS))


def histogram_mean_series(rows: pl.DataFrame, series_id: int) -> pl.DataFrame:
    """Per-timestamp mean of the observations summed over the member histograms (``Δsum / Δcount`` for
    cumulative rows, a restart counting the new row whole), as one POINTS series ``series_id``."""
    if rows.height == 0:
        return pl.DataFrame(schema=POINTS)
    inc = (
        rows.sort("series_id", "ts")
        .with_columns(
            dc=pl.when(pl.col("cumulative"))
            .then(pl.col("count") - pl.col("count").shift(1).over("series_id"))
            .otherwise(pl.col("count")),
            ds=pl.when(pl.col("cumulative"))
            .then(pl.col("sum") - pl.col("sum").shift(1).over("series_id"))
            .otherwise(pl.col("sum")),
        )
        .with_columns(
            dc=pl.when(pl.col("dc") < 0).then(pl.col("count")).otherwise(pl.col("dc")),
            ds=pl.when(pl.col("dc") < 0).then(pl.col("sum")).otherwise(pl.col("ds")),
        )
        .filter(pl.col("dc").is_not_null())
        .group_by("ts")
        .agg(pl.col("dc").sum(), pl.col("ds").sum())
        .sort("ts")
    )
    out = inc.select(
        pl.lit(series_id, dtype=pl.Int64).alias("series_id"),
        "ts",
        pl.when(pl.col("dc") > 0).then(pl.col("ds") / pl.col("dc")).otherwise(None).alias("value"),
    )
    return out.cast(pl.Schema(POINTS))


def _episodes(
    sid: int, meta: dict[str, Any], ts: np.ndarray, score: np.ndarray, rule: AlarmRule, state: AlarmState
) -> tuple[list[Episode], AlarmState, np.ndarray]:
    """Alarm episodes of one series' new scores, the new alarm state and the per-point active flags."""
    was_active = state.active
    active, onset, new_state = rule.apply(score, state)
    eps: list[Episode] = []
    if not active.any():
        if was_active and not new_state.active:
            # the alarm resolved without another active point in this chunk: close it at its last point
            t0 = ts[0] if ts.size else None
            eps.append(Episode(sid, meta["service"], meta["metric"], meta["labels"], t0, t0, 0.0, False))
        return eps, new_state, active
    # split the active points into runs; each run is one episode
    idx = np.flatnonzero(active)
    breaks = np.flatnonzero(np.diff(idx) > 1) + 1
    runs = np.split(idx, breaks)
    for j, run in enumerate(runs):
        hot = run[score[run] >= rule.resolve_z]
        last = ts[hot[-1]] if hot.size else ts[run[-1]]
        still = bool(new_state.active and j == len(runs) - 1 and run[-1] == ts.size - 1)
        eps.append(
            Episode(
                sid,
                meta["service"],
                meta["metric"],
                meta["labels"],
                _dt(ts[run[0]]),
                _dt(last),
                float(score[run].max()),
                still,
            )
        )
    return eps, new_state, active


def _dt(v: Any) -> datetime:
    return v.astype("datetime64[us]").astype(datetime) if isinstance(v, np.datetime64) else v


def run_detection(
    store: Store,
    config: DetectConfig | None = None,
    *,
    series_ids: list[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    pool: ScoringPool | None = None,
) -> DetectReport:
    """One incremental detection pass over the store (see the module docstring).

    The process that owns the store reads each batch and writes its results; scoring runs in ``workers``
    processes (default: one per core), with up to ``workers`` batches in flight. Results are applied in batch
    order, so incidents come out the same as with one process. ``pool`` keeps the processes between passes
    (``rootwise serve``); without it they are started for this pass.
    """
    config = config or DetectConfig()
    started = time.perf_counter()
    report = DetectReport()
    catalog = results.detection_catalog(store).filter(pl.col("kind").is_in(DETECTED_KINDS))
    if series_ids is not None:
        catalog = catalog.filter(pl.col("series_id").is_in(series_ids))
    meta = _plan(store, catalog, config)
    now = datetime.now().replace(microsecond=0)
    incidents: dict[str, Incident] = {}
    ids = list(meta)
    workers = config.scoring_processes()
    batches = _batches(store, ids, meta, config, workers)
    done = 0

    def apply(batch: list[int], result: tuple[Any, pl.DataFrame, list[Episode], int]) -> None:
        nonlocal done
        new_states, anomalies, episodes, points = result
        report.points += points
        changed = update_incidents(list(incidents.values()), episodes, config.policy)
        for inc in changed:
            before = incidents.get(inc.id)
            if before is None:
                report.incidents_opened += 1
            elif before.status != "resolved" and inc.status == "resolved":
                report.incidents_resolved += 1
            else:
                report.incidents_updated += 1
            incidents[inc.id] = inc
        results.save_detection(
            store,
            states=new_states,
            anomalies=anomalies,
            detector=config.detector,
            incidents=changed,
            now=now,
        )
        report.anomalies += anomalies.height
        done += len(batch)
        if progress:
            progress(done, len(ids))

    jobs = (_prepare(store, batch, meta, config) for batch in batches)
    first = True
    if workers <= 1 or len(batches) <= 1:
        for batch, job in zip(batches, jobs, strict=True):
            if first:
                incidents = _recent_incidents(store, job[3], config)
                first = False
            apply(batch, _score_job(*job))
    else:
        from collections import deque
        from concurrent.futures.process import BrokenProcessPool

        own = pool is None
        scoring = ScoringPool(workers) if own else pool
        scoring.start()  # while the first batch is read
        try:
            pending: deque[tuple[list[int], Any]] = deque()
            for batch, job in zip(batches, jobs, strict=True):
                if first:
                    incidents = _recent_incidents(store, job[3], config)
                    first = False
                # asked after the first batch is read: the first call waits for the start
                pending.append((batch, scoring.executor().submit(_score_job, *job)))
                while len(pending) > scoring.workers:
                    b, fut = pending.popleft()
                    apply(b, fut.result())
            while pending:
                b, fut = pending.popleft()
                apply(b, fut.result())
        except BrokenProcessPool:
            scoring.close()  # a worker died (killed, out of memory): the next pass starts new ones
            raise
        finally:
            if own:
                scoring.close()
    report.incidents_resolved += _resolve_silent(store, config, now)
    report.series = len(ids)
    report.seconds = time.perf_counter() - started
    return report


class ScoringPool:
    """Scoring processes for detection passes, started on first use and kept until :meth:`close`.

    ``rootwise serve`` keeps one between passes. The processes are forked from a fork server that imported
    the detectors and loaded numba once (:mod:`app.detect_preload`): each spawned process used to pay ~2
    CPU-seconds of imports on the two cores of the pass it served. Workers run polars with one thread each
    (the parent keeps reading and writing the store). With ``nice``, they run at that lower CPU priority: in
    ``rootwise serve`` the receiver's acknowledgements come first and scoring takes the cores' remaining time.
    """

    def __init__(self, workers: int, *, nice: int = 0) -> None:
        self.workers = workers
        self.nice = nice
        self._executor: Any = None
        self._lock = threading.Lock()
        self._warm: list[Any] = []
        self._starting: threading.Thread | None = None

    def start(self) -> None:
        """Start the processes in a background thread and return at once (:meth:`executor` then waits for
        them): starting the fork server blocks for about a second, which the caller spends reading."""
        with self._lock:
            if self._executor is not None or self._starting is not None:
                return
            self._starting = threading.Thread(target=self._start_quietly, name="rootwise-scoring-start", daemon=True)
            self._starting.start()

    def _start_quietly(self) -> None:
        try:
            self.executor()
        except Exception:  # noqa: BLE001 - executor() raises it again where the caller waits for the pool
            pass

    def executor(self) -> Any:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with self._lock:
            if self._executor is None:
                ctx = mp.get_context("forkserver")
                ctx.set_forkserver_preload(["app.detect_preload"])
                ex = ProcessPoolExecutor(
                    self.workers,
                    mp_context=ctx,
                    initializer=_start_worker,
                    initargs=(self.nice, os.getpid()),
                )
                # each submit with no idle worker starts one: all start now; their warm-up runs while the
                # caller reads its first batch (not waited for here)
                self._warm = [ex.submit(_warm_worker) for _ in range(self.workers)]
                self._executor = ex
            return self._executor

    @property
    def started(self) -> list[tuple[int, int, int]]:
        """(process id, polars threads, niceness) of the workers started last, once they have warmed up
        (after :meth:`start`, once its thread has started them)."""
        self._wait_start()
        return [f.result() for f in self._warm]

    def _wait_start(self) -> None:
        starting = self._starting
        if starting is not None:
            starting.join()

    def close(self) -> None:
        self._wait_start()
        with self._lock:
            ex, self._executor, self._starting = self._executor, None, None
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)


def _start_worker(nice: int, parent: int) -> None:
    exit_with_parent(parent)
    if nice:
        os.nice(nice)


def _warm_worker() -> tuple[int, int, int]:
    """Imports what scoring needs and scores a made-up series once, fitted then continued, so the compiled
    kernels are loaded (about half a second) before the first batch arrives; returns the worker's process
    id, polars thread count and niceness."""
    det = _detector(DetectConfig())
    n, start = 400, datetime(2024, 1, 1)
    frame = pl.DataFrame(
        {
            "series_id": np.zeros(n, dtype=np.int64),
            "ts": pl.datetime_range(start, start + (n - 1) * timedelta(minutes=1), "1m", eager=True),
            "value": np.random.default_rng(0).normal(10.0, 1.0, n),
        },
        schema=POINTS,
    )
    det.fit_score_online(frame.head(n - 5))
    det.score_update(frame.tail(5))
    return os.getpid(), pl.thread_pool_size(), os.nice(0)


def _resolve_silent(store: Store, config: DetectConfig, now: datetime) -> int:
    """Close the alarms of open incidents whose series stopped reporting (``silent_after`` behind the newest
    scored point of the same service) and reset those series' alarm state; returns the incidents resolved."""
    open_ = results.open_incidents(store)
    active = {e.series_id for i in open_ for e in i.series.values() if e.active}
    if not active:
        return 0
    cur = store.cursor()
    cur.complete()
    newest = dict(
        cur.execute(
            "SELECT s.service, max(d.scored_until) FROM detector_state d JOIN series s USING (series_id) "
            "GROUP BY s.service"
        ).fetchall()
    )
    states = results.load_states(store, sorted(active), pickled=True)
    closing, reset = [], {}
    for inc in open_:
        front = newest.get(inc.service)
        for ep in inc.series.values():
            st = states.get(ep.series_id)
            if not ep.active or front is None:
                continue
            if st is None or st.scored_until is None or st.scored_until < front - config.silent_after:
                closing.append(replace(ep, active=False))
                if st is not None:
                    reset[ep.series_id] = replace(st, alarm=AlarmState(since_resolve=0))
    if not closing:
        return 0
    changed = update_incidents(open_, closing, config.policy)
    results.save_detection(
        store, states=reset, anomalies=pl.DataFrame(), detector=config.detector, incidents=changed, now=now
    )
    return sum(1 for i in changed if not i.is_open)


def _recent_incidents(
    store: Store, states: dict[int, results.SeriesState], config: DetectConfig
) -> dict[str, Incident]:
    newest = max((s.scored_until for s in states.values() if s.scored_until), default=None)
    since = (newest or datetime(1970, 1, 1)) - config.policy.reopen_within - config.policy.merge_gap
    return {i.id: i for i in results.recent_incidents(store, since)}


#: see :func:`_batches`
_BATCHES_PER_PROCESS = 4
_MIN_BATCH_POINTS = 100_000


def _batches(
    store: Store, ids: list[int], meta: dict[int, dict[str, Any]], config: DetectConfig, workers: int
) -> list[list[int]]:
    """``ids`` cut into consecutive batches (order kept) by the points each brings: a series never scored counts
    as ``batch_points / batch`` (its whole history), a scored one as its members' rows after its watermark."""
    marks = results.watermarks(store, ids)
    first_fit = config.batch_points / max(config.batch, 1)
    weight = dict.fromkeys(ids, first_fit)
    if marks:
        counts: dict[str, dict[int, datetime]] = {"points": {}, "histograms": {}}
        for s, mark in marks.items():
            table = counts["histograms" if meta[s]["kind"] == "histogram" else "points"]
            for m in meta[s]["members"]:
                table[m] = min(table.get(m, mark), mark)
        new = {
            m: n
            for kind, since in counts.items()
            for m, n in results.new_point_counts(store, since, kind=kind).items()
        }
        for s in marks:
            weight[s] = sum(new.get(m, 0) for m in meta[s]["members"])
    # series: at least two batches per process (one scores while the next is read); points: about
    # _BATCHES_PER_PROCESS batches per process when there is much to score (a pass of a busy server), so the last
    # batch does not leave a process idle for long, but not below _MIN_BATCH_POINTS (each batch scans the new
    # rows and commits once) nor above ``batch_points`` (memory)
    cap = min(config.max_batch, max(config.batch, -(-len(ids) // (2 * workers))))
    budget = sum(weight.values()) / (_BATCHES_PER_PROCESS * workers)
    budget = min(config.batch_points, max(_MIN_BATCH_POINTS, budget))
    batches: list[list[int]] = []
    current: list[int] = []
    total = 0.0
    for s in ids:
        if current and (total + weight[s] > budget or len(current) >= cap):
            batches.append(current)
            current, total = [], 0.0
        current.append(s)
        total += weight[s]
    if current:
        batches.append(current)
    return batches


def _prepare(
    store: Store, batch: list[int], meta: dict[int, dict[str, Any]], config: DetectConfig
) -> tuple[
    pl.DataFrame,
    list[int],
    dict[int, dict[str, Any]],
    dict[int, results.SeriesState],
    DetectConfig,
    pl.DataFrame | None,
]:
    """Everything scoring a batch needs, read from the store: new points, states, history for refits."""
    states = results.load_states(store, batch, pickled=True)  # unpickled where they are scored
    since = {sid: (states[sid].scored_until if sid in states else None) for sid in batch}
    # computed once: the refit history below ends where the new points do
    complete = _complete_until(store, since, meta, config.member_grace)
    frame = _read_points(store, since, meta, config, complete=complete)
    # the one place that decides which batch members are refitted (their fit is older than the detector's
    # refit interval at the newest scored point); the worker refits exactly the series read here
    history = None
    needs = getattr(_detector(config), "needs_refit", None)
    scored = frame.filter(pl.col("value").is_not_null())
    if needs is not None and states and scored.height:
        last = scored.group_by("series_id").agg(pl.col("ts").max())
        last_us = {int(k): _epoch_us(v) for k, v in last.iter_rows()}
        due = [s for s in batch if s in states and s in last_us and needs(_fitted_us(states[s]), last_us[s])]
        if due:
            until = last.filter(pl.col("series_id").is_in(due))["ts"].max()
            history = _read_points(
                store, dict.fromkeys(due, until - config.history), meta, config, complete=complete
            )
    return frame, batch, {s: meta[s] for s in batch}, states, config, history


def _detector(config: DetectConfig) -> Any:
    """The configured detector, told that counters reach it as per-step increases (:func:`_read_points`):
    the catalog knows every series' kind, so a detector that would infer counters from the data does not."""
    det = make_detector(config.detector)
    if hasattr(det, "infer_counters"):
        det.infer_counters = False
    return det


def _epoch_us(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1)) // timedelta(microseconds=1)


def _fitted_us(state: results.SeriesState) -> int:
    """When the series' batch member was last fitted (``fitted_until``: the last point it was fitted on)."""
    return _epoch_us(state.fitted_until) if state.fitted_until is not None else 0


def _unpickled(states: dict[int, results.SeriesState]) -> dict[int, results.SeriesState]:
    return {
        sid: replace(st, state=results.unpickled(st.state), alarm=results.unpickled(st.alarm))
        for sid, st in states.items()
    }


def _score_job(
    frame: pl.DataFrame,
    batch: list[int],
    meta: dict[int, dict[str, Any]],
    states: dict[int, results.SeriesState],
    config: DetectConfig,
    refit_history: pl.DataFrame | None,
) -> tuple[dict[int, results.SeriesState], pl.DataFrame, list[Episode], int]:
    """Score one batch (runs in a worker process): new states (pickled here, as they are stored), anomalies,
    alarm episodes, points scored."""
    report = DetectReport()
    new_states, anomalies, episodes = _score_batch(
        frame, batch, meta, _unpickled(states), config, report, refit_history
    )
    stored = {
        sid: replace(st, state=results.Pickled.of(st.state), alarm=results.Pickled.of(st.alarm))
        for sid, st in new_states.items()
    }
    return stored, anomalies, episodes, report.points


AGGREGATE_LABEL = "aggregate"
HISTOGRAM_STAT_LABEL = "stat"
#: resource labels that change with every deploy or restart: a series that differs only in these is the same
#: logical series (stitched), so a new version is scored against the old one's history — a bad deploy must
#: not hide behind a fresh series id
VOLATILE_LABELS = frozenset(
    {
        "service.version",
        "host.name",
        "service.instance.id",
        "k8s.pod.name",
        "k8s.pod.uid",
        "container.id",
        "process.pid",
    }
)
#: cumulative histograms are differenced against the row before the watermark; this is how far back it is found
HISTOGRAM_LOOKBACK = timedelta(minutes=30)
#: and counters (as :func:`ingest.results.aggregate_points_since` does for stitched and aggregated ones)
COUNTER_LOOKBACK = timedelta(hours=1)


def _plan(store: Store, catalog: pl.DataFrame, config: DetectConfig) -> dict[int, dict[str, Any]]:
    """What to score: logical series (series differing only in volatile labels are stitched into one), except
    that a metric with more than ``max_series_per_metric`` logical series is scored as one aggregate."""
    from ingest.batch import series_id

    logical: dict[tuple[str, str, str, tuple[tuple[str, str], ...]], list[int]] = {}
    for r in catalog.iter_rows(named=True):
        labels = {e["key"]: e["value"] for e in (r["labels"] or [])}
        if AGGREGATE_LABEL in labels or HISTOGRAM_STAT_LABEL in labels:
            continue  # registered by an earlier run of detection itself
        stable = tuple(sorted((k, v) for k, v in labels.items() if k not in VOLATILE_LABELS))
        logical.setdefault((r["service"], r["metric"], r["kind"], stable), []).append(int(r["series_id"]))
    per_metric: dict[tuple[str, str, str], int] = {}
    for service, metric, kind, _ in logical:
        per_metric[(service, metric, kind)] = per_metric.get((service, metric, kind), 0) + 1
    meta: dict[int, dict[str, Any]] = {}
    derived = []
    groups: dict[tuple[str, str, str], list[int]] = {}
    for (service, metric, kind, stable), ids in logical.items():
        if per_metric[(service, metric, kind)] > config.max_series_per_metric and kind != "histogram":
            groups.setdefault((service, metric, kind), []).extend(ids)
            continue
        labels = dict(stable)
        if len(ids) == 1:
            sid, how = ids[0], "series"
        else:
            sid, how = series_id(metric, service, labels), "stitched"
            derived.append((sid, metric, service, "derived", "", labels))
        meta[sid] = {
            "service": service,
            "metric": metric,
            "kind": kind,
            "how": how,
            "labels": labels,
            "members": sorted(ids),
        }
        if kind == "histogram":
            # the distribution's mean is a second KPI: a shift of the whole distribution (prediction-score drift,
            # token lengths) moves the mean while the p99 may stay in its bucket
            mean_labels = {**labels, HISTOGRAM_STAT_LABEL: "mean"}
            mid = series_id(metric, service, mean_labels)
            derived.append((mid, metric, service, "derived", "", mean_labels))
            meta[mid] = {
                "service": service,
                "metric": metric,
                "kind": kind,
                "how": "mean",
                "labels": mean_labels,
                "members": sorted(ids),
            }
    for (service, metric, kind), ids in sorted(groups.items()):
        labels = {AGGREGATE_LABEL: "mean" if kind == "gauge" else "sum"}
        sid = series_id(metric, service, labels)
        derived.append((sid, metric, service, "derived", "", labels))
        meta[sid] = {
            "service": service,
            "metric": metric,
            "kind": kind,
            "how": "aggregate",
            "labels": labels,
            "members": sorted(ids),
        }
    results.register_series(store, derived)
    return meta


def _read_points(
    store: Store,
    since: dict[int, datetime | None],
    meta: dict[int, dict[str, Any]],
    config: DetectConfig,
    *,
    complete: dict[int, datetime] | None = None,
) -> pl.DataFrame:
    """Points after ``since[sid]`` of logical series: stitched and aggregated members combined, histograms
    turned into their quantile series; a series with several members only up to :func:`_complete_until`
    (``complete``, when the caller has it already)."""
    if complete is None:
        complete = _complete_until(store, since, meta, config.member_grace)
    single = {s: v for s, v in since.items() if meta[s]["how"] == "series" and meta[s]["kind"] != "histogram"}
    values = {s: v for s, v in single.items() if meta[s]["kind"] != "counter"}
    frames = [results.points_since(store, values)] if values else []
    counters = {s: v for s, v in single.items() if meta[s]["kind"] == "counter"}
    if counters:
        # per-step increases, as stitched and aggregated counters are read: a counter's level says nothing
        frames.append(results.counter_increases_since(store, counters, lookback=COUNTER_LOOKBACK))
    for s, v in since.items():
        m = meta[s]
        if m["kind"] == "histogram":
            floor = v - HISTOGRAM_LOOKBACK if v is not None else None
            rows = results.points_since(store, dict.fromkeys(m["members"], floor), kind="histograms")
            if m["how"] == "mean":
                q = histogram_mean_series(rows, s)
            else:
                q = histogram_quantile_series(
                    rows, config.quantile, s, min_observations=config.quantile_min_observations
                )
            frames.append(q.filter(pl.col("ts") > v) if v is not None else q)
        elif m["how"] != "series":
            frames.append(results.aggregate_points_since(store, s, m["members"], m["kind"], v))
    frame = pl.concat(frames) if frames else pl.DataFrame(schema=POINTS)
    if complete:
        cut = pl.DataFrame(
            {"series_id": list(complete), "complete": list(complete.values())},
            schema={"series_id": pl.Int64, "complete": TS},
        )
        frame = (
            frame.join(cut, on="series_id", how="left")
            .filter(pl.col("complete").is_null() | (pl.col("ts") <= pl.col("complete")))
            .drop("complete")
        )
    return frame.cast(pl.Schema(POINTS))


def _complete_until(
    store: Store, since: dict[int, datetime | None], meta: dict[int, dict[str, Any]], grace: timedelta
) -> dict[int, datetime]:
    """For each logical series with several members: the newest time every *live* member has reached (a
    member is live if its newest point is within ``grace`` of the newest member's). Points after it wait for
    the next pass, so a minute is scored once all its members are in."""
    multi = {s: meta[s]["members"] for s in since if len(meta[s]["members"]) > 1}
    if not multi:
        return {}
    marks = [since[s] for s in multi]
    floor = (min(marks) if None not in marks else datetime(1970, 1, 1)) - grace
    newest: dict[int, datetime] = {}
    for table, kind in (("points", False), ("histograms", True)):
        ids = sorted({m for s, ms in multi.items() if (meta[s]["kind"] == "histogram") == kind for m in ms})
        if ids:
            cur = store.cursor()
            cur.complete()
            newest.update(
                cur.execute(
                    f"SELECT series_id, max(ts) FROM {table} "
                    "WHERE series_id IN (SELECT unnest($ids::BIGINT[])) AND ts > $floor GROUP BY series_id",
                    {"ids": ids, "floor": floor},
                ).fetchall()
            )
    out: dict[int, datetime] = {}
    for s, members in multi.items():
        lasts = [newest[m] for m in members if m in newest]
        if lasts:
            top = max(lasts)
            out[s] = min(t for t in lasts if t >= top - grace)
    return out


def _score_batch(
    frame: pl.DataFrame,
    batch: list[int],
    meta: dict[int, dict[str, Any]],
    states: dict[int, results.SeriesState],
    config: DetectConfig,
    report: DetectReport,
    refit_history: pl.DataFrame | None,
) -> tuple[dict[int, results.SeriesState], pl.DataFrame, list[Episode]]:
    frame = frame.filter(pl.col("value").is_not_null())
    counts = dict(frame.group_by("series_id").len().iter_rows())
    fresh = [s for s in batch if s not in states and counts.get(s, 0) >= config.min_points]
    known = [s for s in batch if s in states and counts.get(s, 0) > 0]
    det = _detector(config)
    scored = []
    new_states: dict[int, results.SeriesState] = {}
    fitted: dict[int, Any] = {}
    refitted: set[int] = set()
    if fresh:
        f = frame.filter(pl.col("series_id").is_in(fresh))
        scored.append(det.fit_score_online(f))  # causal scores of the whole history, then the fitted state
        fitted.update(det.states_)
    if known:
        f = frame.filter(pl.col("series_id").is_in(known))
        det.states_ = {s: states[s].state for s in known}
        scored.append(det.score_update(f))  # score, then advance the states past the scored points
        fitted.update(det.states_)
        # batch members (the seasonal baseline) due for a refit (decided by _prepare) are refitted on the
        # recent history it read for them
        have = set() if refit_history is None else set(refit_history["series_id"].to_list())
        due = [s for s in known if s in have]
        if refit_history is not None and due:
            refit = _detector(config).fit(refit_history.filter(pl.col("series_id").is_in(due)))
            for s in due:
                if s in refit.states_:
                    fitted[s] = refit.states_[s]
                    refitted.add(s)
    scores = (
        pl.concat(scored)
        if scored
        else pl.DataFrame(schema={"series_id": pl.Int64, "ts": TS, "score": pl.Float64})
    )
    report.points += scores.height
    episodes: list[Episode] = []
    # each series' scores are one block (the detector scores a series at once): sliced with numpy, not a polars
    # group per series (a tenth of a millisecond each, thousands of series per batch)
    sids = scores["series_id"].to_numpy()
    ts_all, sc_all = scores["ts"].to_numpy(), scores["score"].to_numpy()
    blocks = series_blocks(sids)
    if len({int(sids[a]) for a, _ in blocks}) != len(blocks):
        raise AssertionError("a series' scores are not contiguous")  # pragma: no cover
    keep = np.zeros(sids.size, dtype=bool)
    active_all = np.zeros(sids.size, dtype=bool)
    for a, b in blocks:
        sid = int(sids[a])
        prior = states.get(sid)
        alarm_state = prior.alarm if prior is not None and prior.alarm is not None else AlarmState()
        ts, sc = ts_all[a:b], sc_all[a:b]
        eps, alarm_state, active = _episodes(sid, meta[sid], ts, sc, config.alarm, alarm_state)
        episodes.extend(eps)
        keep[a:b] = active | (sc >= config.alarm.z)
        active_all[a:b] = active
        last_ts = _dt(ts[-1])
        renewed = prior is None or sid in fresh or sid in refitted
        fitted_until = last_ts if renewed else prior.fitted_until
        new_states[sid] = results.SeriesState(
            config.detector, fitted[sid], alarm_state, last_ts, fitted_until
        )
    anomalies = (
        scores.filter(pl.Series(keep)).with_columns(is_anomaly=pl.Series(active_all[keep]))
        if keep.any()
        else pl.DataFrame()
    )
    return new_states, anomalies, episodes
