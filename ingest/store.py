"""The DuckDB telemetry store: opening, migrations, thread-safe cursors and idempotent batched appends.

Concurrency model
-----------------
DuckDB allows one read-write *process* per database file. Rootwise therefore has exactly one owner
process per file (``rootwise serve``, or a one-shot CLI command when no server runs). Inside that process
any number of threads share the one :class:`Store`: each thread gets its own cursor
(:meth:`Store.cursor`), reads run concurrently, and appends are serialised by a lock so a batch is
one transaction that either lands whole or not at all. A crash (even SIGKILL) at any moment leaves the
file at the last committed batch; DuckDB's write-ahead log replays on the next open.

Idempotency
-----------
Series ids are content hashes (:func:`ingest.batch.series_id`), so the same series always gets the same id.
Points and histogram points are unique by ``(series_id, ts)``, spans by ``(trace_id, span_id)``, logs by a
content hash and events by id: a re-ingested file or re-sent OTLP payload adds nothing.
"""

from __future__ import annotations

import contextlib
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from ingest import schema
from ingest.batch import TelemetryBatch
from ingest.migrations import LATEST, MIGRATIONS

#: write-ahead log size at which DuckDB checkpoints (see ``Store.__init__``)
CHECKPOINT_THRESHOLD = "256MB"
#: a DuckDB database file starts with an 8-byte checksum followed by these magic bytes (DuckDB's storage
#: format, ``MainHeader::MAGIC_BYTES``); the tests check it, the store does not read the file itself
DUCKDB_MAGIC = b"DUCK"
DUCKDB_MAGIC_OFFSET = 8


class StoreError(RuntimeError):
    """A store problem with a message meant for the user."""


class StoreLockedError(StoreError):
    """Another process holds the database file."""


def _not_duckdb(path: Path) -> StoreError:
    return StoreError(
        f"cannot open {path}: the file exists but is not a valid DuckDB database file "
        "(expected a Rootwise store; give a path that does not exist yet to create one)"
    )


def _make_way(path: Path, *, read_only: bool) -> None:
    """An empty file (what ``mktemp`` hands out) is removed so a new store is created in its place (read-write
    only; read-only it is an error, there is nothing to read); DuckDB itself refuses an empty file.

    The file is only ``stat``-ed, never opened: closing any descriptor of a file releases every POSIX record
    lock this process holds on it, DuckDB's writer lock included, so a second :class:`Store` opened in the
    process that serves the file (the scheduler's, the app's) would let other processes write to it too.
    """
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return  # a new store
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        if read_only:
            raise StoreError(f"cannot open {path}: the file is empty (expected a DuckDB database file)")
        path.unlink()


@dataclass
class AppendResult:
    """What one append did: records offered per kind, rows actually inserted, rejects dead-lettered."""

    accepted: dict[str, int] = field(default_factory=dict)
    inserted: dict[str, int] = field(default_factory=dict)
    rejected: int = 0

    @property
    def accepted_total(self) -> int:
        return sum(self.accepted.values())


def _unique_points(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` without repeated ``(series_id, ts)`` (the last value wins).

    A cheap key of the pair (``series_id XOR ts``) is checked first: when all keys differ all pairs differ,
    which is the common case and costs one vectorised pass instead of a group-by over the whole batch; a key
    collision only sends the batch to the exact (slower) path.
    """
    key = pl.col("series_id") ^ pl.col("ts").cast(pl.Int64)
    if frame.select(key.n_unique()).item() == frame.height:
        return frame
    return frame.unique(subset=["series_id", "ts"], keep="last", maintain_order=True)


def _arrow(frame: pl.DataFrame, columns: dict[str, pl.DataType]) -> Any:
    return frame.select([pl.col(c).cast(t) for c, t in columns.items()]).to_arrow()


# Insert statements per batch part; ``b`` is the registered Arrow table of the part.
# Points/histograms: de-duplicate within the batch, then anti-join against stored rows of the same series in
# the batch's time range (zone maps prune the scan to the row groups that can match).
_INSERT = {
    "series": """
        INSERT INTO series (series_id, metric, service, kind, unit, labels)
        SELECT series_id, metric, service, kind, unit, map_from_entries(labels)
        FROM b WHERE series_id NOT IN (SELECT series_id FROM series)
    """,
    "points": """
        INSERT INTO points
        SELECT d.series_id, d.ts, d.value FROM b d
        ANTI JOIN (SELECT series_id, ts FROM points WHERE ts BETWEEN $lo AND $hi) p
            ON p.series_id = d.series_id AND p.ts = d.ts
    """,
    "histograms": """
        INSERT INTO histograms
        SELECT d.* FROM (SELECT DISTINCT ON (series_id, ts) * FROM b) d
        ANTI JOIN (SELECT series_id, ts FROM histograms WHERE ts BETWEEN $lo AND $hi) p
            ON p.series_id = d.series_id AND p.ts = d.ts
    """,
    "spans": """
        INSERT INTO spans
        SELECT d.* REPLACE (map_from_entries(d.attributes) AS attributes, map_from_entries(d.resource) AS resource)
        FROM (SELECT DISTINCT ON (trace_id, span_id) * FROM b) d
        ANTI JOIN (SELECT trace_id, span_id FROM spans WHERE start BETWEEN $lo AND $hi) s
            ON s.trace_id = d.trace_id AND s.span_id = d.span_id
    """,
    "logs": """
        INSERT INTO logs
        SELECT d.* REPLACE (map_from_entries(d.attributes) AS attributes)
        FROM (SELECT DISTINCT ON (log_id) * FROM b) d
        ANTI JOIN (SELECT log_id FROM logs WHERE ts BETWEEN $lo AND $hi) l ON l.log_id = d.log_id
    """,
    "events": """
        INSERT OR IGNORE INTO events
        SELECT DISTINCT ON (event_id) event_id, ts, service, kind, title, map_from_entries(attributes) FROM b
    """,
    "edges": """
        INSERT INTO topology_edges SELECT DISTINCT ON (source, target, origin) * FROM b
        ON CONFLICT DO UPDATE SET ts = greatest(ts, excluded.ts)
    """,
}
# Points for hours the rollups already cover (see :func:`ingest.retention.roll_up_recent`): the next rollup
# pass rebuilds those series' rollups from their raw points (the next hour too: a counter's first increase
# there depends on its predecessor)
_LATE = """
    INSERT INTO rollup_dirty
    SELECT DISTINCT series_id, h FROM (
        SELECT series_id, date_trunc('hour', ts) AS h FROM b WHERE ts < $to
        UNION ALL
        SELECT series_id, date_trunc('hour', ts) + INTERVAL 1 HOUR FROM b WHERE ts < $to - INTERVAL 1 HOUR
    )
"""


@dataclass(frozen=True)
class RollupState:
    """How far the rollups reach (table ``rollup_state``, written by :mod:`ingest.retention`).

    ``raw_from``: raw points before it were deleted by retention (``None``: never); ``rolled_to``: every raw
    point before it is represented in ``points_5m`` and ``points_1h`` (``None``: nothing rolled yet), except late
    arrivals listed in ``rollup_dirty`` that the next rollup pass takes in; ``histograms_to``: the same for
    histogram points in ``histograms_5m`` and ``histograms_1h``. All sit on hour boundaries.
    """

    raw_from: datetime | None
    rolled_to: datetime | None
    histograms_to: datetime | None = None


def rollup_state(cur: Any) -> RollupState | None:
    """The store's rollup state (``None`` before any rollup pass or retention run)."""
    rows = cur.execute("SELECT raw_from, rolled_to, histograms_to FROM rollup_state WHERE id = 1").fetchall()
    return RollupState(*rows[0]) if rows else None


def _mark_late(cur: duckdb.DuckDBPyConnection, lo: Any, part: str) -> None:
    state = rollup_state(cur)
    bound = None if state is None else state.histograms_to if part == "histograms" else state.rolled_to
    if bound is not None and lo < bound:
        cur.execute(_LATE, {"to": bound})


_TIME_COL = {"points": "ts", "histograms": "ts", "spans": "start", "logs": "ts"}
# the column order of the Arrow table handed to DuckDB must match the table for the SELECT * inserts
_ORDER = ("series", "points", "histograms", "spans", "logs", "events", "edges")


class Store:
    """One DuckDB file (or ``":memory:"``), migrated to the latest schema on open.

    Examples
    --------
    >>> store = Store(":memory:")
    >>> store.schema_version() == LATEST
    True
    >>> store.close()
    """

    def __init__(self, path: str | Path = "rootwise.duckdb", *, read_only: bool = False) -> None:
        self.path = str(path)
        self._closed = False
        self.read_only = read_only
        if self.path != ":memory:":
            _make_way(Path(self.path), read_only=read_only)
            if not read_only:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = duckdb.connect(self.path, read_only=read_only)
        except (duckdb.IOException, duckdb.CatalogException) as exc:
            text = str(exc)
            if isinstance(exc, duckdb.IOException) and "lock" in text.lower():
                raise StoreLockedError(
                    f"{self.path} is held by another process (DuckDB allows one writer per file). If "
                    "`rootwise serve` owns it, send data to its HTTP API instead (POST /v1/metrics, "
                    "/v1/traces, /v1/logs) or stop it first."
                ) from exc
            in_memory = isinstance(exc, duckdb.CatalogException) and "in-memory database" in text
            if "not a valid DuckDB database file" in text or in_memory:  # in_memory: see the view check below
                raise _not_duckdb(Path(self.path)) from exc
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        if self.path != ":memory:" and self._conn.execute(
            "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
        ).fetchone() in (None, (None,)):
            # DuckDB opens an existing .csv, .parquet or .json file as an in-memory database with a view over
            # the file: an ingest would report its records accepted and store nothing
            self._conn.close()
            raise _not_duckdb(Path(self.path))
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._conn.execute("SET TimeZone = 'UTC'")
        if read_only:
            if self.schema_version() < LATEST:
                raise StoreError(
                    f"{self.path} has schema version {self.schema_version()}, this Rootwise needs {LATEST}; "
                    "open it read-write once to migrate"
                )
        else:
            # DuckDB checkpoints when the write-ahead log passes 16 MB; a detection pass rewrites every series'
            # state (~9 KB each), so at the default a 10,000-series pass paid three or four checkpoints, each
            # rewriting the state table (profiled: 4.4 s of a 12.4 s pass; 1.2 s with 256 MB). Replaying a WAL
            # this size after a crash takes seconds
            self._conn.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
            self.migrate()

    # -- connection management -------------------------------------------------------------------
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor on the shared connection (DuckDB cursors are not thread-safe)."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._conn.cursor()
            cur.execute("SET TimeZone = 'UTC'")
            self._local.cursor = cur
        return cur

    def close(self) -> None:
        """Checkpoint and close the file (closing twice is a no-op)."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.read_only:
                self._conn.execute("CHECKPOINT")
        finally:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- migrations --------------------------------------------------------------------------------
    def schema_version(self) -> int:
        cur = self.cursor()
        exists = cur.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations'"
        ).fetchall()
        if not exists[0][0]:
            return 0
        return int(cur.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchall()[0][0])

    def migrate(self) -> list[int]:
        """Apply pending migrations in order, each in its own transaction; returns versions applied."""
        cur = self.cursor()
        cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR, "
            "applied TIMESTAMP DEFAULT (now()::TIMESTAMP))"
        )
        current = self.schema_version()
        if current > LATEST:
            raise StoreError(f"{self.path} has schema version {current}, newer than this Rootwise ({LATEST})")
        applied = []
        for m in MIGRATIONS:
            if m.version <= current:
                continue
            cur.begin()
            try:
                cur.execute(m.sql)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [m.version, m.name]
                )
                cur.commit()
            except Exception:
                cur.rollback()
                raise
            applied.append(m.version)
        return applied

    # -- writes ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def write_transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """This thread's cursor inside one write transaction, serialised with every other writer.

        Commits when the block ends, rolls back if it raises.
        """
        with self._write_lock:
            cur = self.cursor()
            cur.begin()
            try:
                yield cur
                cur.commit()
            except BaseException:
                cur.rollback()
                raise

    def append(self, batch: TelemetryBatch) -> AppendResult:
        """Append a batch in one transaction; returns what was offered and what was new."""
        result = AppendResult(accepted=batch.counts(), rejected=batch.rejected)
        with self.write_transaction() as cur:
            for part in _ORDER:
                frame: pl.DataFrame = getattr(batch, part)
                if frame.height == 0:
                    continue
                _, columns = schema.TABLES[part]
                if part == "points":
                    frame = _unique_points(frame)
                cur.register("b", _arrow(frame, columns))
                params: dict[str, Any] = {}
                if part in _TIME_COL:
                    col = frame.get_column(_TIME_COL[part])
                    params = {"lo": col.min(), "hi": col.max()}
                rows = cur.execute(_INSERT[part], params or None).fetchall()
                if part in ("points", "histograms"):
                    _mark_late(cur, params["lo"], part)
                cur.unregister("b")
                if part != "series":
                    result.inserted[part] = int(rows[0][0]) if rows else 0
            if batch.rejects:
                cur.register("b", _arrow(batch.rejects_frame(), schema.REJECTS))
                # keyed by content so re-running an ingest (after a crash, or by mistake) does not double them
                cur.execute(
                    """
                    INSERT INTO ingest_rejects (received, source, location, reason, raw, reject_key)
                    SELECT received, source, location, reason, raw, k FROM (
                        SELECT *, md5(concat_ws('|', source, location, reason, hex(raw))) AS k,
                               row_number() OVER () AS i
                        FROM b
                    )
                    WHERE k NOT IN (SELECT reject_key FROM ingest_rejects WHERE reject_key IS NOT NULL)
                    QUALIFY row_number() OVER (PARTITION BY k ORDER BY i) = 1
                    ORDER BY i
                    """
                ).fetchall()
                cur.unregister("b")
        return result

    # -- small conveniences used by tests and the CLI -----------------------------------------------
    def count(self, table: str) -> int:
        """Row count of a known table (the name is checked against the schema, never interpolated blindly)."""
        known = {t for t, _ in schema.TABLES.values()} | {
            "points_5m",
            "points_1h",
            "histograms_5m",
            "histograms_1h",
            "anomalies",
            "incidents",
            "forecasts",
            "alert_outbox",
            "detector_state",
            "incident_series",
            "capacity_forecasts",
        }
        if table not in known:
            raise StoreError(f"unknown table {table!r}; expected one of {sorted(known)}")
        rows = self.cursor().execute(f'SELECT count(*) FROM "{table}"').fetchall()
        return int(rows[0][0])
