"""Logical series with several members (stitched pods or versions, an aggregate over tenants, a histogram's
instances) get the same scores whether the members' points arrive together or a few seconds apart, in separate
passes: detection waits until every live member has sent a minute before it scores that minute."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from app.detect import DetectConfig, run_detection
from ingest.batch import TelemetryBatch, labels_list, series_id
from ingest.schema import HISTOGRAMS, POINTS, SERIES
from ingest.store import Store

START = datetime(2026, 10, 1)
HISTORY = 720  # minutes ingested before the staggered part
STAGGERED = 25  # minutes whose members arrive one pass apart
SHIFT = HISTORY + 10  # every member jumps here (so the compared scores include an alarm)
BOUNDS = [10.0, 20.0, 50.0, 100.0, 200.0]


def _members(case: str) -> tuple[pl.DataFrame, dict[int, pl.DataFrame], str]:
    """The catalog rows, each member's rows (points or histograms) by series id, and the table kind."""
    minutes = HISTORY + STAGGERED
    t = np.arange(minutes)
    ts = [START + timedelta(minutes=int(i)) for i in t]
    rng = np.random.default_rng(7)
    series, rows = [], {}
    if case == "stitched":
        members = [({"k8s.pod.name": f"api-{k}"}, "latency_ms", "gauge") for k in range(2)]
    elif case == "aggregate":
        members = [({"tenant": f"t-{k}"}, "tokens", "delta") for k in range(3)]
    else:
        members = [({"service.instance.id": f"i-{k}"}, "duration_ms", "histogram") for k in range(2)]
    for k, (labels, metric, kind) in enumerate(members):
        sid = series_id(metric, "api", labels)
        series.append((sid, metric, "api", kind, "", labels_list(labels)))
        level = np.where(t >= SHIFT, 3.0, 1.0)
        if kind == "histogram":
            cum = np.zeros(len(BOUNDS) + 1)
            total = count = 0.0
            recs = []
            for i in range(minutes):
                x = rng.gamma(4.0, 10.0 * level[i], 100)
                cum += np.bincount(np.searchsorted(BOUNDS, x), minlength=len(BOUNDS) + 1)
                total, count = total + x.sum(), count + x.size
                recs.append((sid, ts[i], count, total, None, None, BOUNDS, cum.tolist(), True))
            rows[sid] = pl.DataFrame(recs, schema=HISTOGRAMS, orient="row")
        else:
            y = (100.0 + 10 * k) * level + rng.normal(0, 2, minutes)
            rows[sid] = pl.DataFrame(
                {"series_id": np.full(minutes, sid), "ts": ts, "value": y}, schema=POINTS
            )
    table = "histograms" if case == "histogram" else "points"
    return pl.DataFrame(series, schema=SERIES, orient="row"), rows, table


def _append(store: Store, series: pl.DataFrame, frames: list[pl.DataFrame], table: str) -> None:
    if frames:
        store.append(TelemetryBatch(series=series, **{table: pl.concat(frames)}))


def _run(path: Path, case: str, staggered: bool) -> tuple[list, dict[int, datetime]]:
    series, rows, table = _members(case)
    config = DetectConfig(max_series_per_metric=2, workers=1)
    upto = START + timedelta(minutes=HISTORY)
    with Store(path) as store:
        _append(store, series, [r.filter(pl.col("ts") < upto) for r in rows.values()], table)
        run_detection(store, config)
        for i in range(HISTORY, HISTORY + STAGGERED):
            minute = [r.filter(pl.col("ts") == START + timedelta(minutes=i)) for r in rows.values()]
            if staggered:  # each member's minute lands in its own pass, the first member's first
                for part in minute:
                    _append(store, series, [part], table)
                    run_detection(store, config)
            else:
                _append(store, series, minute, table)
                for _ in minute:
                    run_detection(store, config)
        anomalies = (
            store.cursor()
            .execute("SELECT series_id, ts, score, is_anomaly FROM anomalies ORDER BY ALL")
            .fetchall()
        )
        until = dict(store.cursor().execute("SELECT series_id, scored_until FROM detector_state").fetchall())
    return anomalies, until


@pytest.mark.parametrize("case", ["stitched", "aggregate", "histogram"])
def test_members_arriving_in_separate_passes_score_as_if_together(tmp_path: Path, case: str) -> None:
    together = _run(tmp_path / "together.duckdb", case, staggered=False)
    apart = _run(tmp_path / "apart.duckdb", case, staggered=True)
    anomalies, until = together
    assert anomalies and any(a for *_, a in anomalies)  # the shift is an alarm in both runs
    assert [(s, t, a) for s, t, _, a in apart[0]] == [(s, t, a) for s, t, _, a in anomalies]
    # the same values in the same order (a sum over members may differ in its last bits: summation order)
    assert [x[2] for x in apart[0]] == pytest.approx([x[2] for x in anomalies], rel=1e-9)
    assert apart[1] == until


def test_a_member_that_stopped_does_not_hold_the_series_back(store: Store) -> None:
    """A deploy replaced pod api-0 by api-1: once api-0 is more than the grace behind, api-1's points are
    scored up to its newest."""
    series, rows, _ = _members("stitched")
    old, new = rows.values()
    cut = START + timedelta(minutes=HISTORY)
    store.append(TelemetryBatch(series=series, points=pl.concat([old.filter(pl.col("ts") < cut), new])))
    config = DetectConfig(workers=1)
    run_detection(store, config)
    (until,) = store.cursor().execute("SELECT scored_until FROM detector_state").fetchone()
    assert until == START + timedelta(minutes=HISTORY + STAGGERED - 1)


def test_the_newest_minute_waits_for_a_member_within_the_grace(store: Store) -> None:
    series, rows, _ = _members("stitched")
    a, b = rows.values()
    last = START + timedelta(minutes=HISTORY + STAGGERED - 1)
    store.append(TelemetryBatch(series=series, points=pl.concat([a, b.filter(pl.col("ts") < last)])))
    run_detection(store, DetectConfig(workers=1))
    (until,) = store.cursor().execute("SELECT scored_until FROM detector_state").fetchone()
    assert until == last - timedelta(minutes=1)  # api-1 is one minute behind: its minute is awaited
    store.append(TelemetryBatch(series=series, points=b.filter(pl.col("ts") == last)))
    report = run_detection(store, DetectConfig(workers=1))
    (until,) = store.cursor().execute("SELECT scored_until FROM detector_state").fetchone()
    assert until == last and report.points == 1


def test_a_kept_scoring_pool_serves_passes_like_fresh_processes(tmp_path: Path) -> None:
    """``rootwise serve`` keeps its scoring processes between passes: same results as one process, the same
    workers on the next pass (one polars thread each), and a pool whose worker died is replaced."""
    import os
    import signal
    import time
    from concurrent.futures.process import BrokenProcessPool

    from app.detect import ScoringPool

    series, rows, table = _members("aggregate")
    config = DetectConfig(batch=1, workers=2, max_series_per_metric=50)  # three series, three batches
    cut = START + timedelta(minutes=HISTORY)
    dbs = {}
    pool = ScoringPool(2)
    try:
        for name, kept in (("one", None), ("kept", pool)):
            store = Store(tmp_path / f"{name}.duckdb")
            _append(store, series, [r.filter(pl.col("ts") < cut) for r in rows.values()], table)
            run_detection(store, replace(config, workers=1) if kept is None else config, pool=kept)
            dbs[name] = store
        first = list(pool.started)
        assert len(first) == 2 and all(threads == 1 for _, threads, _ in first)
        for store in dbs.values():
            _append(store, series, [r.filter(pl.col("ts") >= cut) for r in rows.values()], table)
        run_detection(dbs["one"], replace(config, workers=1))
        run_detection(dbs["kept"], config, pool=pool)
        assert pool.started == first  # no new processes for the second pass
        one, kept = (
            s.cursor().execute("SELECT series_id, ts, score FROM anomalies ORDER BY ALL").fetchall()
            for s in dbs.values()
        )
        assert kept == one and one
        os.kill(first[0][0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the pool has reaped it (and so knows it is broken)
            try:
                os.kill(first[0][0], 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        _append(dbs["kept"], series, [r.filter(pl.col("ts") >= cut) for r in rows.values()], table)
        with pytest.raises(BrokenProcessPool):
            run_detection(dbs["kept"], config, pool=pool)
        run_detection(dbs["kept"], config, pool=pool)  # the next pass starts new workers
        assert pool.started and {p for p, *_ in pool.started}.isdisjoint({p for p, *_ in first})
    finally:
        pool.close()
        for store in dbs.values():
            store.close()


def _alive(pid: int) -> bool:
    """Running, not a zombie (a zombie's parent, init once re-parented, reaps it)."""
    import os

    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[-1][0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def test_scoring_processes_end_when_their_parent_is_killed() -> None:
    """A parent killed with SIGKILL (an OOM kill of ``rootwise detect``) does not leave its scoring processes
    waiting on the pool forever: they notice they were re-parented and exit (``rootwise serve``'s own
    processes are checked in its SIGKILL test)."""
    import json
    import subprocess
    import sys
    import time

    code = (
        "import json, os, signal\n"
        "from app.detect import ScoringPool\n"
        "pool = ScoringPool(2)\n"
        "pool.executor()\n"
        "print(json.dumps([pid for pid, _, _ in pool.started]), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    root = Path(__file__).resolve().parents[1]
    # stdout to a pipe the workers do not keep open past their exit: run() returns once they are gone
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=60)
    assert out.returncode == -9, out.stderr
    pids = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(pids) == 2
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


#: a process's thread names (``/proc/self/task``), printed as JSON
THREAD_NAMES = (
    "import json, os\n"
    "print(json.dumps(sorted(open(f'/proc/self/task/{t}/comm').read().strip() for t in os.listdir('/proc/self/task'))))\n"
)


@pytest.mark.parametrize("then", ["", "import polars as pl\npl.DataFrame({'a': range(10**5)}).sum()\n"])
def test_the_scoring_fork_server_loads_without_starting_polars_thread_pool(then: str) -> None:
    """Scoring processes are forked from a server that imported ``app.detect_preload``: had that started
    polars' thread pool, the forked processes would have polars without its threads, and their first polars
    call would wait forever. The second case shows the check sees a started pool."""
    import json
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = "import app.detect_preload\n" + then + THREAD_NAMES
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    pool = [n for n in json.loads(out.stdout.splitlines()[-1]) if re.fullmatch(r"polars-\d+", n)]
    assert pool == ([] if not then else ["polars-0"])


def test_a_scoring_pool_started_in_the_background_is_closed_with_its_processes() -> None:
    """``start`` returns at once and starts the processes in a thread (a pass reads meanwhile); starting again
    changes nothing, and ``close`` ends the processes, also right after ``start``."""
    import time

    from app.detect import ScoringPool

    pool = ScoringPool(2)
    t = time.perf_counter()
    pool.start()
    pool.start()
    assert time.perf_counter() - t < 0.5  # the fork server loads for a second or more
    pids = [pid for pid, _, _ in pool.started]
    assert len(set(pids)) == 2 and all(_alive(p) for p in pids)
    pool.close()
    assert not any(_alive(p) for p in pids)
    quick = ScoringPool(1)
    quick.start()
    quick.close()  # waits for the start, then shuts it down
    assert quick._executor is None
