"""SIGKILL in the middle of a file ingest: the store holds whole batches only, and a re-run completes it exactly.

The child process ingests a long-format Parquet file through :func:`ingest.files.ingest_paths` and prints one
line after each committed batch (DuckDB locks the file, so the parent cannot poll the database). The parent
kills it with SIGKILL after a few commits, then opens the database, checks it, re-runs the ingest and compares
every stored point with the file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from ingest.files import ingest_paths
from ingest.longformat import iter_long_file, long_frame_to_batch
from ingest.store import Store

BATCH_ROWS = 50_000
N_SERIES = 1_000
N_STEPS = 4_000  # 4M points: 80 batches of 50,000, ~4 s for the child to ingest
KILL_AFTER = 3

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import ingest.files as files
    from ingest.store import Store

    files.BATCH_ROWS = int(sys.argv[3])


    class ReportingStore(Store):
        def append(self, batch):
            result = super().append(batch)  # returns once the transaction is committed
            print(f"committed {batch.points.height}", flush=True)
            return result


    store = ReportingStore(sys.argv[1])
    files.ingest_paths(store, [Path(sys.argv[2])])
    print("done", flush=True)
    """
)


def _write_input(path: Path) -> None:
    rng = np.random.default_rng(7)
    n = N_SERIES * N_STEPS
    step = np.repeat(np.arange(N_STEPS), N_SERIES)
    sidx = np.tile(np.arange(N_SERIES), N_STEPS)
    base = datetime(2025, 5, 1)
    pl.DataFrame(
        {
            "ts": pl.Series(step * 15_000_000, dtype=pl.Int64).cast(pl.Duration("us")) + base,
            "metric": np.array(["latency_ms", "tokens"])[sidx % 2],
            "value": rng.normal(100, 10, n),
            "service": np.array(["vllm", "router", "gateway", "triton"])[sidx % 4],
            "tenant": np.array([f"tenant-{i}" for i in range(37)])[sidx % 37],
            "instance": np.array([f"pod-{i}" for i in range(N_SERIES)])[sidx],
        }
    ).write_parquet(path, row_group_size=25_000)


def _expected(path: Path) -> pl.DataFrame:
    parts = [long_frame_to_batch(df, str(path)).points for df in iter_long_file(path)]
    return pl.concat(parts).sort("series_id", "ts")


def test_sigkill_mid_ingest_keeps_whole_batches_and_rerun_completes(tmp_path: Path):
    data = tmp_path / "big.parquet"
    db = tmp_path / "rootwise.duckdb"
    _write_input(data)
    total = N_SERIES * N_STEPS

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(data), str(BATCH_ROWS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(tmp_path),
    )
    reported: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(reported) < KILL_AFTER:
            line = child.stdout.readline()
            assert line, f"child exited early: {child.wait()} {child.stderr.read()}"
            assert line.startswith("committed "), line
            reported.append(int(line.split()[1]))
            assert time.monotonic() < deadline
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert "done" not in rest, "the child finished before it was killed; make the input bigger"
    reported += [int(x.split()[1]) for x in rest.splitlines() if x.startswith("committed ")]
    committed = sum(reported)
    assert committed < total

    # the killed file opens (WAL replayed) and holds whole batches only
    with Store(db) as store:
        cur = store.cursor()
        n_points, n_distinct = cur.execute(
            "SELECT count(*), count(DISTINCT (series_id, ts)) FROM points"
        ).fetchone()
        # a batch can commit between the child's last print and the kill: then exactly one more batch is there
        assert n_points in (committed, committed + BATCH_ROWS)
        assert n_points % BATCH_ROWS == 0 and n_points == n_distinct
        orphans = cur.execute(
            "SELECT count(*) FROM (SELECT DISTINCT series_id FROM points) p ANTI JOIN series s USING (series_id)"
        ).fetchone()[0]
        assert orphans == 0  # series rows commit with their points
        assert store.count("ingest_rejects") == 0

        # re-running the same ingest completes the file: nothing missing, nothing doubled
        report = ingest_paths(store, [data])
        assert report.ok and report.accepted == total and report.rejected == 0
        assert report.inserted == total - n_points
        stored = pl.from_arrow(
            cur.sql("SELECT series_id, ts, value FROM points ORDER BY series_id, ts").to_arrow_table()
        )
        assert store.count("series") == N_SERIES
    expected = _expected(data)
    assert stored.height == total
    assert stored.equals(expected.select(stored.columns))
