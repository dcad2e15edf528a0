"""The RCA view over the store: :class:`rca.base.View` implemented with DuckDB queries.

Analysers ask for a time window of one or a few metrics; the filtering (series, window) runs in DuckDB and
only the needed points come back as Arrow. Every value is a bound parameter. Spans and logs are capped per
call (``span_limit``, ``log_limit``) so a busy window cannot exhaust memory: RCA needs the shape of the
traffic, not every span of a 100k-request minute.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl

from ingest import queries as q
from ingest import schema
from ingest.schema import WINDOW_SUMS
from ingest.store import Store


class StoreView:
    """Read-only telemetry of a :class:`ingest.store.Store` for the RCA analysers.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from ingest.batch import MetricBuilder
    >>> store = Store(pathlib.Path(tempfile.mkdtemp()) / "v.duckdb")
    >>> b = MetricBuilder("doc")
    >>> sid = b.series("cpu", "carts", "gauge", "1", {"region": "eu"})
    >>> b.point(sid, 1_700_000_000_000_000_000, 0.5, "p1")
    True
    >>> _ = store.append(b.build())
    >>> view = StoreView(store)
    >>> view.series(metric="cpu")["service"].to_list(), view.points(None, None, None)["value"].to_list()
    (['carts'], [0.5])
    >>> view.series(metric="no-such-metric").height
    0
    >>> store.close()
    """

    def __init__(self, store: Store, *, span_limit: int = 200_000, log_limit: int = 200_000) -> None:
        self.store = store
        self.span_limit = span_limit
        self.log_limit = log_limit
        self._spans: tuple[tuple[datetime | None, datetime | None], pl.DataFrame] | None = None
        self._catalog: pl.DataFrame | None = None
        self._sums: dict[tuple, pl.DataFrame] = {}

    def series(self, metric: str | None = None, service: str | None = None) -> pl.DataFrame:
        # the catalog is read once per view (one view serves one incident's analysers) and filtered here
        if self._catalog is None:
            self._catalog = q.find_series(self.store)
        out = self._catalog
        if metric is not None:
            out = out.filter(pl.col("metric") == metric)
        if service is not None:
            out = out.filter(pl.col("service") == service)
        return out

    def points(
        self, series_ids: Sequence[int] | None, start: datetime | None, end: datetime | None
    ) -> pl.DataFrame:
        conds, params = ["TRUE"], {}
        if series_ids is not None:
            if len(series_ids) == 0:
                return schema.empty(schema.POINTS)
            conds.append("series_id IN (SELECT unnest($ids::BIGINT[]))")
            params["ids"] = [int(i) for i in series_ids]
        if start is not None:
            conds.append("ts >= $start")
            params["start"] = start
        if end is not None:
            conds.append("ts < $end")
            params["end"] = end
        sql = f"SELECT series_id, ts, value FROM points WHERE {' AND '.join(conds)}"  # stored in time order; sorting costs more than the read
        cur = self.store.cursor()
        cur.complete()
        df = cur.sql(sql, params=params or None).pl()
        return df.cast(pl.Schema(schema.POINTS)) if df.height else schema.empty(schema.POINTS)

    def window_sums(
        self, series_ids: Sequence[int], start: datetime, onset: datetime, end: datetime
    ) -> pl.DataFrame:
        """Per series: count and sum before and from ``onset``, counters differenced (reset rule) in SQL."""
        key = (tuple(series_ids), start, onset, end)
        if key not in self._sums:  # the requests sums serve both the error-rate and the requests KPI
            self._sums[key] = self._window_sums(series_ids, start, onset, end)
        return self._sums[key]

    def _window_sums(
        self, series_ids: Sequence[int], start: datetime, onset: datetime, end: datetime
    ) -> pl.DataFrame:
        sql = """
            WITH ids AS (SELECT unnest($ids::BIGINT[]) AS series_id),
            k AS (SELECT s.series_id, s.kind = 'counter' AS counter FROM series s SEMI JOIN ids USING (series_id)),
            plain AS (
                SELECT p.series_id, p.ts, p.value FROM points p
                WHERE p.series_id IN (SELECT series_id FROM k WHERE NOT counter) AND p.ts >= $start AND p.ts < $end
            ),
            cnt AS (
                SELECT series_id, ts, CASE WHEN value >= prev THEN value - prev ELSE value END AS value FROM (
                    SELECT p.series_id, p.ts, p.value,
                        lag(p.value) OVER (PARTITION BY p.series_id ORDER BY p.ts) AS prev
                    FROM points p
                    WHERE p.series_id IN (SELECT series_id FROM k WHERE counter) AND p.ts >= $start AND p.ts < $end
                ) WHERE prev IS NOT NULL
            )
            SELECT series_id,
                count(*) FILTER (ts < $onset) AS n_before, count(*) FILTER (ts >= $onset) AS n_now,
                coalesce(sum(value) FILTER (ts < $onset), 0) AS sum_before,
                coalesce(sum(value) FILTER (ts >= $onset), 0) AS sum_now
            FROM (SELECT * FROM plain UNION ALL SELECT * FROM cnt) GROUP BY series_id ORDER BY series_id
        """
        cur = self.store.cursor()
        cur.complete()
        params = {"ids": [int(i) for i in series_ids], "start": start, "onset": onset, "end": end}
        df = cur.sql(sql, params=params).pl()
        return df.cast(pl.Schema(WINDOW_SUMS)) if df.height else schema.empty(WINDOW_SUMS)

    def group_sums(
        self, series_ids: Sequence[int], group_ids: Sequence[int], start: datetime, end: datetime
    ) -> pl.DataFrame:
        """Points summed per (group, ts) in DuckDB; ``series_id`` of the result is the group id."""
        key = ("group", tuple(series_ids), tuple(group_ids), start, end)
        if key not in self._sums:  # metrics and topology ask for the same totals
            sql = """
                WITH g AS (SELECT unnest($ids::BIGINT[]) AS series_id, unnest($gids::BIGINT[]) AS gid)
                SELECT g.gid AS series_id, p.ts, sum(p.value) AS value
                FROM points p JOIN g USING (series_id)
                WHERE p.ts >= $start AND p.ts < $end
                GROUP BY ALL ORDER BY 1, 2
            """
            cur = self.store.cursor()
            cur.complete()
            params = {
                "ids": [int(i) for i in series_ids],
                "gids": [int(i) for i in group_ids],
                "start": start,
                "end": end,
            }
            df = cur.sql(sql, params=params).pl()
            self._sums[key] = df.cast(pl.Schema(schema.POINTS)) if df.height else schema.empty(schema.POINTS)
        return self._sums[key]

    def events(self, start: datetime | None, end: datetime | None) -> pl.DataFrame:
        return q.events(self.store, start, end)

    def spans(self, start: datetime | None, end: datetime | None) -> pl.DataFrame:
        # several analysers of one incident ask for the same window: read it once
        if self._spans is None or self._spans[0] != (start, end):
            self._spans = ((start, end), q.spans(self.store, start, end, limit=self.span_limit))
        return self._spans[1]

    def logs(self, start: datetime | None, end: datetime | None) -> pl.DataFrame:
        return q.logs(self.store, start, end, limit=self.log_limit)

    def edges(self) -> pl.DataFrame:
        cur = self.store.cursor()
        cur.complete()
        df = cur.sql("SELECT source, target, origin, ts FROM topology_edges").pl()
        return df.cast(pl.Schema(schema.EDGES)) if df.height else schema.empty(schema.EDGES)
