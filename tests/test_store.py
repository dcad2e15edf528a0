"""The store: migrations, idempotent appends, transactions, threads."""

from __future__ import annotations

import threading
from datetime import datetime

import duckdb
import polars as pl
import pytest

from ingest import schema
from ingest.batch import MetricBuilder, TelemetryBatch, series_id
from ingest.migrations import LATEST, MIGRATIONS
from ingest.store import DUCKDB_MAGIC, DUCKDB_MAGIC_OFFSET, Store, StoreError

T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00Z


def _batch(n: int = 100, offset: int = 0, labels: dict | None = None) -> TelemetryBatch:
    b = MetricBuilder(source="test")
    sid = b.series("requests", "api", "counter", "1", labels or {"tenant": "t1"})
    for i in range(offset, offset + n):
        b.point(sid, T0 + i * 60 * 10**9, float(i), f"row {i}")
    return b.build()


def test_fresh_store_has_every_table_at_latest_version(store):
    assert store.schema_version() == LATEST
    tables = {r[0] for r in store.cursor().execute("SELECT table_name FROM information_schema.tables").fetchall()}
    for name in ("series", "points", "histograms", "spans", "logs", "events", "topology_edges", "ingest_rejects",
                 "points_5m", "points_1h", "anomalies", "incidents", "forecasts", "alert_outbox"):
        assert name in tables


def test_older_database_is_migrated_on_open(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR, applied TIMESTAMP)")
    con.execute(MIGRATIONS[0].sql)
    con.execute("INSERT INTO schema_migrations VALUES (1, 'telemetry tables', now()::TIMESTAMP)")
    con.execute("INSERT INTO points VALUES (1, TIMESTAMP '2026-01-01 00:00:00', 42.0)")
    con.close()
    with Store(path) as s:
        assert s.schema_version() == LATEST
        assert s.count("points") == 1  # old data survives
        assert s.count("forecasts") == 0  # new tables exist


def test_newer_database_is_refused(tmp_path):
    path = tmp_path / "new.duckdb"
    Store(path).close()
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, 'future')", [LATEST + 1])
    con.close()
    with pytest.raises(StoreError, match="newer than this Rootwise"):
        Store(path)



def test_a_store_file_carries_the_duckdb_magic_bytes(tmp_path):
    path = tmp_path / "store.duckdb"
    Store(path).close()
    head = path.read_bytes()[:12]
    assert head[DUCKDB_MAGIC_OFFSET:] == DUCKDB_MAGIC == b"DUCK"


@pytest.mark.parametrize("name", ["data.csv", "data.parquet", "data.json", "notes.txt", "store.duckdb"])
@pytest.mark.parametrize("read_only", [False, True])
def test_an_existing_file_that_is_not_duckdb_is_refused(tmp_path, name, read_only):
    # DuckDB opens a .csv/.parquet/.json file as an in-memory database (writes went nowhere) and refuses the
    # others itself: each is refused the same way, naming the path, and left as it was
    path = tmp_path / name
    content = b"ts,metric,value,service\n2026-01-01T00:00:00Z,m,1,s\n"
    path.write_bytes(content)
    with pytest.raises(StoreError) as exc:
        Store(path, read_only=read_only)
    assert str(exc.value) == (
        f"cannot open {path}: the file exists but is not a valid DuckDB database file "
        "(expected a Rootwise store; give a path that does not exist yet to create one)"
    )
    assert path.read_bytes() == content


@pytest.mark.parametrize("name", ["new.csv", "new.duckdb"])
def test_an_empty_or_absent_path_becomes_a_new_store(tmp_path, name):
    empty, absent = tmp_path / f"empty-{name}", tmp_path / f"absent-{name}"
    empty.touch()
    for path in (empty, absent):
        with Store(path) as s:
            s.append(_batch(3))
        with Store(path, read_only=True) as s:
            assert s.count("points") == 3  # the data is in the file, not in an in-memory database
        assert path.read_bytes()[DUCKDB_MAGIC_OFFSET:12] == DUCKDB_MAGIC


def test_an_empty_file_is_refused_read_only(tmp_path):
    path = tmp_path / "empty.duckdb"
    path.touch()
    with pytest.raises(StoreError) as exc:
        Store(path, read_only=True)
    assert str(exc.value) == f"cannot open {path}: the file is empty (expected a DuckDB database file)"


def test_append_is_idempotent(store):
    first = store.append(_batch())
    second = store.append(_batch())
    assert first.inserted["points"] == 100
    assert second.inserted["points"] == 0
    assert store.count("points") == 100
    assert store.count("series") == 1


def test_overlapping_batches_store_the_union_once(store):
    store.append(_batch(100, 0))
    result = store.append(_batch(100, 50))
    assert result.inserted["points"] == 50
    assert store.count("points") == 150


def test_duplicates_inside_one_batch_are_stored_once(store):
    b = _batch(10)
    doubled = TelemetryBatch(series=b.series, points=pl.concat([b.points, b.points]))
    assert store.append(doubled).inserted["points"] == 10


def test_series_ids_are_content_hashes_and_labels_a_map(store):
    store.append(_batch(labels={"tenant": "t1", "region": "eu"}))
    sid, labels = store.cursor().execute("SELECT series_id, labels FROM series").fetchone()
    assert sid == series_id("requests", "api", {"region": "eu", "tenant": "t1"})
    assert labels == {"region": "eu", "tenant": "t1"}


def test_failed_append_leaves_nothing_behind(store):
    good = _batch(10)
    bad_events = pl.DataFrame(
        {"event_id": ["e1"], "ts": [None], "service": ["api"], "kind": ["deploy"], "title": ["x"],
         "attributes": [[]]},
        schema=schema.EVENTS,
    )  # ts NULL violates NOT NULL after points were inserted in the same transaction
    with pytest.raises(duckdb.Error):
        store.append(TelemetryBatch(series=good.series, points=good.points, events=bad_events))
    assert store.count("points") == 0
    assert store.count("series") == 0


def test_rejects_are_dead_lettered_with_reason_and_raw(store):
    b = MetricBuilder(source="file.csv")
    sid = b.series("m", "svc", "gauge", "", {})
    b.point(sid, T0, float("inf"), "line 7", raw=b"m,svc,inf")
    b.point(sid, 10**9, 1.0, "line 8", raw=b"m,svc,1")  # 1970: out of range
    result = store.append(b.build())
    assert result.rejected == 2
    rows = store.cursor().execute("SELECT source, location, reason, raw FROM ingest_rejects ORDER BY reject_id").fetchall()
    assert rows[0][:2] == ("file.csv", "line 7") and "finite" in rows[0][2] and rows[0][3] == b"m,svc,inf"
    assert "out of accepted range" in rows[1][2]


def test_rejects_of_a_re_ingested_batch_are_stored_once(store):
    b = MetricBuilder(source="file.csv")
    sid = b.series("m", "svc", "gauge", "", {})
    b.point(sid, T0, float("nan"), "line 3", raw=b"m,svc,nan")
    b.point(sid, T0, float("nan"), "line 4", raw=b"m,svc,nan")  # same bytes, another line: a distinct record
    batch = b.build()
    store.append(batch)
    store.append(batch)
    assert store.count("ingest_rejects") == 2


def test_threads_share_the_store_with_their_own_cursors(store):
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for j in range(5):
                store.append(_batch(20, offset=0, labels={"tenant": f"t{k}-{j}"}))
                store.cursor().execute("SELECT count(*) FROM points").fetchone()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.count("points") == 4 * 5 * 20


def test_events_edges_idempotent(store):
    events = pl.DataFrame(
        {"event_id": ["e1", "e1"], "ts": [datetime(2026, 1, 1)] * 2, "service": ["api"] * 2,
         "kind": ["deploy"] * 2, "title": ["v2"] * 2, "attributes": [[{"key": "version", "value": "v2"}]] * 2},
        schema=schema.EVENTS,
    )
    edges = pl.DataFrame({"source": ["a"], "target": ["b"], "origin": ["config"], "ts": [datetime(2026, 1, 1)]},
                         schema=schema.EDGES)
    for _ in range(2):
        store.append(TelemetryBatch(events=events, edges=edges))
    assert store.count("events") == 1
    assert store.count("topology_edges") == 1


def test_unknown_table_name_is_refused(store):
    with pytest.raises(StoreError, match="unknown table"):
        store.count("points; DROP TABLE series")


def test_a_second_store_in_the_holding_process_keeps_the_file_locked(tmp_path):
    """Opening the store again in the process that holds it (the server's scheduler and app do) must not drop
    the writer lock: closing any descriptor of a file releases the process's POSIX locks on it, so reading the
    file's header with open() let a CLI in another process write to a served store."""
    import subprocess
    import sys

    from ingest.store import StoreLockedError

    db = tmp_path / "held.duckdb"
    Store(db).close()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"from ingest.store import Store; s = Store({str(db)!r}); t = Store({str(db)!r}); t.close(); "
         "print('ready', flush=True); input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError):
            Store(db)
    finally:
        holder.communicate("\n", timeout=30)
