"""The app's thin, cached read layer over :mod:`ingest.queries`.

Callbacks call these functions and nothing else touches the store. The cache is per store (attached to
the Flask app, not a module global) with a short TTL: the receiver keeps writing while people look.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from datetime import datetime, timedelta
from typing import Any

import flask
import polars as pl

from ingest import queries
from ingest.store import Store

STORE_KEY = "rootwise.store"
CACHE_KEY = "rootwise.cache"
TTL_S = 15.0


class TtlCache:
    """A small thread-safe time-to-live cache."""

    def __init__(self, ttl_s: float = TTL_S, max_items: int = 512) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self._items: dict[Hashable, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
            if hit and now - hit[0] < self.ttl_s:
                return hit[1]
        value = compute()
        with self._lock:
            if len(self._items) >= self.max_items:
                self._items.clear()
            self._items[key] = (now, value)
        return value


def attach(server: flask.Flask, store: Store) -> None:
    """Make ``store`` available to the app's callbacks."""
    server.extensions[STORE_KEY] = store
    server.extensions[CACHE_KEY] = TtlCache()


def _store() -> Store:
    return flask.current_app.extensions[STORE_KEY]


def _cached(key: tuple, compute: Callable[[], Any]) -> Any:
    return flask.current_app.extensions[CACHE_KEY].get(key, compute)


def services_overview() -> pl.DataFrame:
    """Per service: series, metrics, last point time."""
    return _cached(("services_overview",), lambda: queries.service_overview(_store()))


def metric_names() -> list[str]:
    return _cached(("metrics",), lambda: sorted(queries.metrics(_store())["metric"].unique().to_list()))


def service_names() -> list[str]:
    return _cached(("services",), lambda: queries.services(_store()))


def label_names(metric: str | None) -> list[str]:
    return _cached(("labels", metric), lambda: queries.label_names(_store(), metric=metric))


def data_range() -> tuple[datetime, datetime] | None:
    return _cached(("range",), lambda: queries.time_range(_store()))


def recent_events(limit: int = 20) -> pl.DataFrame:
    return _cached(
        ("events", limit), lambda: queries.events(_store()).sort("ts", descending=True).head(limit)
    )


def reject_count() -> int:
    return _cached(("rejects",), lambda: _store().count("ingest_rejects"))


def metric_frame(
    metric: str, service: str | None, group_by: tuple[str, ...], agg: str, start: datetime, end: datetime
) -> pl.DataFrame:
    """A resampled metric, with a step chosen for about 300 points on the chart."""
    span = end - start
    step = max(timedelta(minutes=1), span / 300)
    step = timedelta(minutes=round(step.total_seconds() / 60) or 1)
    key = ("frame", metric, service, group_by, agg, start, end)
    return _cached(
        key,
        lambda: queries.resample(
            _store(),
            metric=metric,
            service=service,
            start=start,
            end=end,
            step=step,
            agg=agg,
            group_by=group_by,
        ),
    )
