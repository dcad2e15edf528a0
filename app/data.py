"""The app's thin, cached read layer over :mod:`ingest.queries`.

Callbacks call these functions and nothing else touches the store. The cache is per store (attached to
the Flask app, not a module global) with a short TTL: the receiver keeps writing while people look.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import flask
import polars as pl

from ingest import queries, results
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


def metric_kinds() -> dict[str, str]:
    """Each metric's kind (``gauge``, ``counter``, ``delta``, ``histogram``, ``summary``)."""
    return _cached(
        ("metric_kinds",),
        lambda: dict(
            queries.metrics(_store()).unique("metric", keep="first").select("metric", "kind").iter_rows()
        ),
    )


#: the aggregations Explore offers per metric kind (``auto``: :func:`ingest.queries.resample`'s default; for
#: histograms the p99, the KPI detection scores)
AGGS_BY_KIND = {
    "gauge": ["auto", "avg", "min", "max", "sum", "count", "last"],
    "counter": ["auto", "rate", "increase", "count", "last"],
    "delta": ["auto", "rate", "sum", "avg", "count"],
    "histogram": ["auto", "p50", "p90", "p95", "p99", "mean"],
}
_QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}


def aggs_for(metric: str | None) -> list[str]:
    """The aggregations that apply to ``metric`` (gauge ones for a metric the store does not know)."""
    return AGGS_BY_KIND.get(metric_kinds().get(metric or "", "gauge"), AGGS_BY_KIND["gauge"])


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
    """A resampled metric, at the finest rollup-aligned step giving at most 360 points on the chart (so long
    ranges read the 5-minute or hourly rollups, see :func:`nice_step`); a histogram metric as a quantile of
    each step's observations (``auto``: the p99) or their mean. Raises :class:`ingest.queries.QueryError` for
    an aggregation that does not apply to the metric's kind."""
    step = nice_step(start, end)
    key = ("frame", metric, service, group_by, agg, start, end)

    def compute() -> pl.DataFrame:
        where = {
            "metric": metric,
            "service": service,
            "start": start,
            "end": end,
            "step": step,
            "group_by": group_by,
        }
        if metric_kinds().get(metric) != "histogram":
            return queries.resample(_store(), agg=agg, **where)
        if agg == "mean":
            return queries.histogram_mean(_store(), **where).drop("count")
        if agg not in ("auto", *_QUANTILES):
            raise queries.QueryError(
                f"{agg} does not apply to the histogram metric {metric!r}; use p50-p99 or mean"
            )
        q = _QUANTILES.get(agg, 0.99)
        return queries.histogram_quantiles(_store(), quantiles=(q,), **where).drop("quantile")

    return _cached(key, compute)


# -- incidents (pages/incidents.py, pages/incident.py) --------------------------------------------------
# Incident rows are read through, not cached: responders change their status from the app, and a page that
# still says "open" right after "Acknowledge" would mislead. The telemetry around an incident is cached.


def incident_list(
    service: str | None = None,
    status: str | None = None,
    severity: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """Stored incidents as ``rootwise incidents`` lists them, filtered; most recent first.

    ``since`` and ``until``: the incidents active in that window (last point at or after ``since``, start
    before ``until``).
    """
    rows = results.list_incidents(_store(), status=status, service=service, since=since)
    return [
        r
        for r in rows
        if (severity is None or r["severity"] == severity)
        and (until is None or r["start"] is None or _as_datetime(r["start"]) < until)
    ]


def _as_datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def incident(incident_id: str) -> dict[str, Any] | None:
    """One stored incident (``results.get_incident``), or ``None`` when the id is unknown."""
    return results.get_incident(_store(), incident_id)


def incident_series(incident_id: str) -> pl.DataFrame:
    """The incident's affected series, highest peak first."""
    return _cached(("incident_series", incident_id), lambda: results.incident_series(_store(), incident_id))


def chart_step(start: datetime, end: datetime, points: int = 300) -> timedelta:
    """A whole-minute step giving about ``points`` buckets between ``start`` and ``end``."""
    step = max(timedelta(minutes=1), (end - start) / points)
    return timedelta(minutes=round(step.total_seconds() / 60) or 1)


def series_kpi(
    service: str, metric: str, labels: tuple[tuple[str, str], ...], start: datetime, end: datetime
) -> tuple[pl.DataFrame, str]:
    """One affected series on the chart grid, the way detection scored it.

    Gauges average, counters and deltas as a per-second rate, histograms as their p99 (or their mean for
    detection's ``stat=mean`` series). Detection's own catalog entries (kind ``derived``: aggregates, stitched
    series, ``stat``) hold no points and the queries refuse to mix kinds: their labels are dropped from the
    selection, and what remains is narrowed to one kind (:func:`_one_kind_of`).

    Returns
    -------
    tuple[pl.DataFrame, str]
        ``ts, value`` and what the value is (``"avg"``, ``"rate /s"``, ``"p99"``, ``"mean"``).
    """
    from app.detect import AGGREGATE_LABEL, HISTOGRAM_STAT_LABEL

    step = chart_step(start, end)

    def compute() -> tuple[pl.DataFrame, str]:
        store = _store()
        own = dict(labels)
        known = set(queries.label_names(store, metric))
        derived = {AGGREGATE_LABEL, HISTOGRAM_STAT_LABEL}
        matchers = [queries.Matcher(k, "=", v) for k, v in own.items() if k not in derived]
        matchers += [queries.Matcher(k, "=", "") for k in sorted(derived & known)]
        found = queries.find_series(store, metric=metric, service=service, matchers=matchers)
        kind, narrow = _one_kind_of(found)
        matchers += narrow
        if kind == "histogram" and own.get(HISTOGRAM_STAT_LABEL) == "mean":
            frame = queries.histogram_mean(
                store, metric=metric, service=service, matchers=matchers, start=start, end=end, step=step
            )
            return frame.select("ts", "value"), "mean"
        if kind == "histogram":
            frame = queries.histogram_quantiles(
                store,
                metric=metric,
                service=service,
                matchers=matchers,
                start=start,
                end=end,
                step=step,
                quantiles=(0.99,),
            )
            return frame.select("ts", "value"), "p99"
        # explicit, so a selection that still mixes kinds fails loudly instead of averaging counters
        agg = "rate" if kind in ("counter", "delta") else "avg"
        frame = queries.resample(
            store, metric=metric, service=service, matchers=matchers, start=start, end=end, step=step, agg=agg
        )
        return frame.select("ts", "value"), ("rate /s" if agg == "rate" else "avg")

    return _cached(("series_kpi", service, metric, labels, start, end), compute)


def _one_kind_of(found: pl.DataFrame) -> tuple[str | None, list[queries.Matcher]]:
    """The most numerous kind of series in ``found`` (``find_series`` rows) and a matcher keeping only it.

    A selection may hold detection's point-less ``derived`` entries (a stitched series has its members'
    labels minus volatile ones such as ``service.version``) and, under one metric name, per-instance counters
    next to per-tenant usage rows (``delta``). The kind kept is the one with the most series (detection
    aggregates a metric because it has many series of one kind); it is selected by a label key that all its
    series have and no other series has, or the reverse. None needed or none found: no matcher (the query
    then says what is mixed).

    Examples
    --------
    >>> rows = pl.DataFrame({"kind": ["counter", "delta", "delta", "derived"], "labels": [
    ...     [{"key": "instance", "value": "a"}], [{"key": "tenant", "value": "t1"}],
    ...     [{"key": "tenant", "value": "t2"}], [{"key": "aggregate", "value": "sum"}]]})
    >>> _one_kind_of(rows)
    ('delta', [Matcher(label='tenant', op='!=', value='')])
    """
    rows = [
        ({e["key"] for e in ls}, kind)
        for ls, kind in zip(found["labels"], found["kind"], strict=True)
        if kind is not None
    ]
    kinds = [kind for _, kind in rows if kind != "derived"]
    if not kinds:
        return None, []
    target = max(sorted(set(kinds)), key=kinds.count)
    if len({kind for _, kind in rows}) == 1:
        return target, []
    ours = [keys for keys, kind in rows if kind == target]
    others = [keys for keys, kind in rows if kind != target]
    for key in sorted(set.intersection(*ours) - set.union(*others)):
        return target, [queries.Matcher(key, "!=", "")]
    for key in sorted(set.intersection(*others) - set.union(*ours)):
        return target, [queries.Matcher(key, "=", "")]
    return target, []


def anomalies(series_ids: tuple[int, ...], start: datetime, end: datetime) -> pl.DataFrame:
    """Anomalous points of the given series in ``[start, end)``."""
    return _cached(
        ("anomalies", series_ids, start, end),
        lambda: results.anomalies_between(_store(), series_ids, start, end),
    )


def events_between(start: datetime, end: datetime) -> pl.DataFrame:
    """Change events in ``[start, end)``, in time order."""
    return _cached(("events_between", start, end), lambda: queries.events(_store(), start, end))


def topology_between(start: datetime, end: datetime) -> pl.DataFrame:
    """The service call graph in ``[start, end)`` plus declared edges."""
    return _cached(("topology", start, end), lambda: queries.topology(_store(), start, end))


class NotAllowed(PermissionError):
    """A viewer tried a responder action (``[app] auth``: see :mod:`app.auth`)."""

    def __init__(self, action: str) -> None:
        super().__init__(f"Only responders may {action}; you are signed in as a viewer.")


def require_responder(action: str) -> None:
    """Raise :class:`NotAllowed` unless this request may act (every action callback calls this first)."""
    from app.auth import can_respond

    if not can_respond():
        raise NotAllowed(action)


def set_incident_status(incident_id: str, status: str) -> bool:
    """Record a responder's status change (``False``: no such incident; :class:`NotAllowed` for a viewer)."""
    require_responder("change an incident's status")
    now = datetime.now(UTC).replace(tzinfo=None)
    return results.set_incident_status(_store(), incident_id, status, now=now)


def explain_incident(incident_id: str) -> list[dict[str, Any]] | None:
    """Run the root-cause engine on a stored incident now, store its causes and return them."""
    require_responder("re-run the root-cause analysis")
    from ingest.rca_view import StoreView
    from rca.combine import explain_incident as explain
    from rca.combine import incident_from_record

    store = _store()
    record = results.get_incident(store, incident_id)
    if record is None:
        return None
    causes = explain(incident_from_record(record), StoreView(store)).to_json()["causes"]
    results.save_causes(store, incident_id, causes)
    return causes


# -- capacity and service pages (pages/capacity.py, pages/service.py) ----------------------------------
# Planning capacity fits and simulates every demand series (11 s on a month of 5,000 series): far too slow for
# a page load, and the answer moves slowly. So the page shows the plan a background thread made
# (CapacityPlanner, one per server), and a what-if only rescales that plan's forecasts (capacity.with_scenario).
CAPACITY_SETTINGS_KEY = "rootwise.capacity_settings"
CAPACITY_PLANNER_KEY = "rootwise.capacity_planner"
#: one planner per server, even when the first two requests race to start it
_PLANNER_LOCK = threading.Lock()
#: usage labels a what-if scenario can match (see :func:`app.capacity.scenario_factor`)
SCENARIO_LABELS = ("tenant", "model", "region")
#: when a metric mixes kinds of series for a service, the kind plotted: instance telemetry before usage rows
_KIND_PREFERENCE = ("histogram", "counter", "gauge", "summary", "delta")
#: chart steps: whole multiples of the 5-minute and hourly rollups, so rollups answer exactly
_STEPS = tuple(timedelta(minutes=m) for m in (1, 5, 15, 30, 60, 180, 360, 720, 1440))
_capacity_log = logging.getLogger("rootwise.capacity")


def attach_capacity_settings(server: flask.Flask, settings: Any) -> None:
    """Give the capacity page the server's ``[capacity]`` settings (``settings_from_config(config.extra)``).

    Without it the page plans with :class:`app.capacity.CapacitySettings` defaults and says so. The background
    planner reads them at each run: attach them before :func:`start_capacity_planner`.
    """
    server.extensions[CAPACITY_SETTINGS_KEY] = settings


def _settings_of(server: flask.Flask) -> tuple[Any, bool]:
    from app.capacity import CapacitySettings

    settings = server.extensions.get(CAPACITY_SETTINGS_KEY)
    return (settings, True) if settings is not None else (CapacitySettings(), False)


def capacity_settings() -> tuple[Any, bool]:
    """The capacity settings, and whether they came from the server's configuration."""
    return _settings_of(flask.current_app)


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class CapacitySnapshot:
    """What the background planner has to show: its latest plan and its latest failure (times in UTC).

    ``plan`` (an :class:`app.capacity.CapacityPlan`) is ``None`` until a run succeeds. A failed run keeps the
    previous plan and sets ``error`` (the message) until a later run succeeds.
    """

    plan: Any = None
    planned: datetime | None = None  # when ``plan`` was made
    seconds: float | None = None  # how long making it took
    error: str | None = None
    failed: datetime | None = None
    running_since: datetime | None = None  # the run in progress (``None``: none)
    next_run: datetime | None = None
    runs: int = 0  # finished runs, failed or not

    @property
    def state(self) -> str:
        """``computing`` (no run has finished yet), ``failed`` (the latest run failed) or ``planned``."""
        return "computing" if self.runs == 0 else ("failed" if self.error else "planned")

    def status(self) -> dict[str, Any]:
        """The snapshot without its plan, as JSON values (``GET /capacity/status``)."""

        def iso(ts: datetime | None) -> str | None:
            return ts.isoformat() + "Z" if ts else None

        return {
            "state": self.state,
            "planned": iso(self.planned),
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "error": self.error,
            "failed": iso(self.failed),
            "running_since": iso(self.running_since),
            "next_run": iso(self.next_run),
            "runs": self.runs,
        }


class CapacityPlanner:
    """Plans capacity over a server's store in a daemon thread: at start, then ``[capacity] refresh`` after each
    run ends; :attr:`snapshot` is the latest result.

    Each run reads the settings attached at that moment (:func:`attach_capacity_settings`). A failed run is
    logged and kept in the snapshot (the page shows it); the next run is the retry.
    """

    def __init__(self, server: flask.Flask) -> None:
        self._server = server
        self._snapshot = CapacitySnapshot()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._store: Store | None = None  # the thread's own connection to the store's file (see _loop)
        self._cursor: Any = None  # the thread's store cursor: stop() interrupts its query
        self._views: dict[Hashable, Any] = {}  # what was drawn from the latest snapshot (view())
        self._thread = threading.Thread(target=self._loop, name="rootwise-capacity", daemon=True)

    @property
    def snapshot(self) -> CapacitySnapshot:
        with self._lock:
            return self._snapshot

    def _set(self, **changes: Any) -> CapacitySnapshot:
        with self._lock:
            self._snapshot = replace(self._snapshot, **changes)
            if "runs" in changes:
                self._views.clear()
            return self._snapshot

    def view(self, snapshot: CapacitySnapshot, key: Hashable, draw: Callable[[], Any]) -> Any:
        """``draw()``, once per finished run and ``key``: what a page draws from ``snapshot`` (taken from this
        planner) stays valid until the next run."""
        with self._lock:
            if (snapshot.runs, key) in self._views:
                return self._views[(snapshot.runs, key)]
        drawn = draw()
        with self._lock:
            if self._snapshot.runs == snapshot.runs:  # not from a snapshot replaced meanwhile
                if len(self._views) >= 64:  # a few what-ifs are looked at; any number could be
                    self._views.clear()
                self._views[(snapshot.runs, key)] = drawn
        return drawn

    def start(self) -> CapacityPlanner:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop planning and wait up to ``timeout`` s for the thread: its queries are interrupted (the one
        running and any the plan still starts), the computing between them runs to its next query."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            cursor = self._cursor
            if cursor is not None:
                try:
                    cursor.interrupt()  # only a running query notices: again until the thread ends
                except Exception:  # closed meanwhile: the thread is ending
                    pass
            self._thread.join(0.05)

    def _stopping(self) -> bool:
        # ``rootwise serve`` sets rootwise_stopping on SIGTERM and then closes the store: plan no more
        return self._stop.is_set() or bool(self._server.extensions.get("rootwise_stopping"))

    def run_once(self) -> CapacitySnapshot:
        """Plan now, in the calling thread, and keep the result."""
        from app.capacity import plan_capacity

        settings, _ = _settings_of(self._server)
        self._set(running_since=_utcnow())
        began = time.monotonic()
        try:
            plan = plan_capacity(self._store or self._server.extensions[STORE_KEY], settings)
        except Exception as exc:  # shown on the page and retried at the next run
            if self._stopping():  # the interrupted query of stop(): nothing to show
                return self._set(running_since=None)
            if isinstance(exc, ValueError):  # QueryError is one; an empty store is another
                message = str(exc)
                _capacity_log.warning("capacity not planned: %s", message)
            else:
                message = f"{type(exc).__name__}: {exc}"
                _capacity_log.exception("capacity planning failed")
            now = _utcnow()
            return self._set(
                error=message,
                failed=now,
                running_since=None,
                next_run=now + settings.refresh,
                runs=self.snapshot.runs + 1,
            )
        now = _utcnow()
        _capacity_log.info("capacity planned in %.1f s", time.monotonic() - began)
        return self._set(
            plan=plan,
            planned=now,
            seconds=time.monotonic() - began,
            error=None,
            failed=None,
            running_since=None,
            next_run=now + settings.refresh,
            runs=self.snapshot.runs + 1,
        )

    def _loop(self) -> None:
        # Its own connection to the file (DuckDB shares the database within the process): ``rootwise serve``
        # closes its Store on SIGTERM without waiting for this thread, and DuckDB refuses to close a connection
        # while one of its cursors runs a query (and a plan queries for seconds).
        shared: Store = self._server.extensions[STORE_KEY]
        try:
            if shared.path != ":memory:":  # a second in-memory Store would be another, empty database
                self._store = Store(shared.path, read_only=shared.read_only)
        except Exception:
            _capacity_log.warning("capacity planner: planning on the shared connection", exc_info=True)
        self._cursor = (self._store or shared).cursor()  # this thread's, as the queries use it
        try:
            while not self._stopping():
                done = self.run_once()
                wait = (done.next_run - _utcnow()).total_seconds() if done.next_run else 0.0
                self._stop.wait(max(0.0, wait))
        finally:
            self._cursor = None
            if self._store is not None:
                try:
                    self._store.close()
                except Exception:  # its CHECKPOINT may meet a writer; the data is the shared Store's
                    _capacity_log.debug("capacity planner's connection closed uncleanly", exc_info=True)


def start_capacity_planner(server: flask.Flask) -> CapacityPlanner:
    """The server's background capacity planner, started on the first call.

    ``rootwise serve`` calls it when it mounts the app, so the first plan is under way before anyone opens the
    page; otherwise the first look at the Capacity page starts it.
    """
    with _PLANNER_LOCK:
        planner = server.extensions.get(CAPACITY_PLANNER_KEY)
        if planner is None:
            planner = server.extensions[CAPACITY_PLANNER_KEY] = CapacityPlanner(server).start()
            # ``rootwise serve`` stops it before closing the store (app.server.ON_STOP_KEY)
            server.extensions.setdefault("rootwise_on_stop", []).append(lambda: stop_capacity_planner(server))
            # a daemon thread still inside DuckDB when the interpreter exits aborts the process (SIGABRT):
            # ``rootwise serve`` returns without knowing of the thread, so the thread is stopped at exit
            atexit.register(planner.stop, 30.0)
    return planner


def stop_capacity_planner(server: flask.Flask, timeout: float = 10.0) -> None:
    """Stop the server's planner, if it has one."""
    with _PLANNER_LOCK:
        planner = server.extensions.pop(CAPACITY_PLANNER_KEY, None)
    if planner is not None:
        atexit.unregister(planner.stop)
        planner.stop(timeout)


def _planner() -> CapacityPlanner:
    return start_capacity_planner(flask.current_app._get_current_object())  # type: ignore[attr-defined]


def capacity_snapshot() -> CapacitySnapshot:
    """The background planner's latest :class:`CapacitySnapshot` (the planner starts if it has not)."""
    return _planner().snapshot


def _with_scenario(snapshot: CapacitySnapshot, scenario: Any) -> CapacitySnapshot:
    from app.capacity import with_scenario

    if scenario is None or snapshot.plan is None:
        return snapshot
    return replace(snapshot, plan=with_scenario(snapshot.plan, scenario))


def capacity_plan(scenario: Any = None) -> CapacitySnapshot:
    """The latest snapshot, its plan with ``scenario`` (an :class:`app.capacity.Scenario`) planned after the
    configured scenarios: :func:`app.capacity.with_scenario` rescales the plan's forecasts, which takes
    milliseconds and gives what planning from scratch with the scenario would."""
    return _with_scenario(capacity_snapshot(), scenario)


def capacity_view(scenario: Any, draw: Callable[[CapacitySnapshot], Any], key: Hashable = ()) -> Any:
    """``draw(capacity_plan(scenario))``, drawn once per planner run, ``scenario`` and ``key`` (what else
    ``draw`` depends on): the page of a plan does not change until the next run, and its figures take a while
    to build (plotly validates every property: about 25 ms a chart on an idle core)."""
    planner = _planner()
    snapshot = planner.snapshot
    if snapshot.state == "computing":  # says since when: cheap, and nothing to keep
        return draw(snapshot)
    return planner.view(snapshot, (repr(scenario), key), lambda: draw(_with_scenario(snapshot, scenario)))


def scenario_values() -> dict[str, list[str]]:
    """Values of each :data:`SCENARIO_LABELS` label in the usage rows (``output_tokens``); empty when absent."""

    def compute() -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for label in SCENARIO_LABELS:
            try:
                out[label] = queries.label_values(_store(), label, metric="output_tokens")
            except queries.QueryError:
                out[label] = []
        return out

    return _cached(("scenario_values",), compute)


def service_metrics(service: str) -> pl.DataFrame:
    """``metric, kind, unit, series`` of one service's telemetry (detection's point-less ``derived`` catalog
    entries left out); empty for a service without metrics."""

    def compute() -> pl.DataFrame:
        try:
            frame = queries.metrics(_store(), service)
        except queries.QueryError:
            return pl.DataFrame(
                schema={"metric": pl.Utf8, "kind": pl.Utf8, "unit": pl.Utf8, "series": pl.Int64}
            )
        return frame.filter(pl.col("kind") != "derived")

    return _cached(("service_metrics", service), compute)


def _catalog(metric: str, service: str) -> pl.DataFrame:
    """``kind, keys`` (label keys) of each series of ``metric`` in ``service``."""

    def compute() -> pl.DataFrame:
        found = queries.find_series(_store(), metric=metric, service=service)
        return found.select(
            "kind", pl.col("labels").list.eval(pl.element().struct.field("key")).alias("keys")
        )

    return _cached(("catalog", metric, service), compute)


def service_metric_labels(metric: str, service: str) -> list[str]:
    """Label keys of ``metric``'s series in ``service`` (what its chart can be grouped by), sorted."""
    cat = _catalog(metric, service).filter(pl.col("kind") != "derived")
    return sorted({k for keys in cat["keys"].to_list() for k in keys})


def _one_kind(metric: str, service: str, by: str | None) -> tuple[queries.Matcher, ...]:
    """Matchers narrowing ``metric`` in ``service`` to one kind of series.

    A metric may hold per-instance counters next to per-tenant usage rows (``delta``) of the same quantity, and
    detection registers point-less ``derived`` catalog entries; the queries refuse to mix kinds (and summing
    counters with usage rows would count requests twice). The kind kept is the first of
    :data:`_KIND_PREFERENCE` whose series carry ``by``; it is selected by a label key that all its series have
    and no other series has (or the reverse). No such key: no matchers (the query then says what is mixed).
    """
    cat = _catalog(metric, service)
    kinds = set(cat["kind"].to_list())
    if len(kinds) <= 1:
        return ()
    sets = {k: [set(keys) for keys in cat.filter(pl.col("kind") == k)["keys"].to_list()] for k in kinds}
    candidates = [k for k in _KIND_PREFERENCE if k in kinds]
    if by:
        candidates = [k for k in candidates if any(by in keys for keys in sets[k])] or candidates
    for kind in candidates:
        ours = sets[kind]
        others = [keys for k, rows in sets.items() if k != kind for keys in rows]
        for key in sorted(set.intersection(*ours)):
            if not any(key in keys for keys in others):
                return (queries.Matcher(key, "!=", ""),)
        for key in sorted(set.intersection(*others) if others else set()):
            if not any(key in keys for keys in ours):
                return (queries.Matcher(key, "=", ""),)
    return ()


def nice_step(start: datetime, end: datetime, points: int = 360) -> timedelta:
    """The finest of :data:`_STEPS` giving at most ``points`` buckets (rollup-aligned, unlike ``chart_step``)."""
    span = end - start
    return next((s for s in _STEPS if span / s <= points), _STEPS[-1])


def service_series(
    metric: str,
    service: str,
    by: str | None,
    start: datetime,
    end: datetime,
    *,
    agg: str = "auto",
    across: str | None = None,
) -> pl.DataFrame:
    """``ts, [by], value`` of a counter/gauge/delta metric of one service on :func:`nice_step` buckets.

    A rate is never taken over a step finer than the data: hourly usage rows on 5-minute buckets would show
    each hour's increase as if it came in 5 minutes (12 times too high). When the buckets holding data are
    further apart than the step, the query is repeated with the step of :data:`_STEPS` that covers the gap.
    """

    def query(step: timedelta) -> pl.DataFrame:
        return queries.resample(
            _store(),
            metric=metric,
            service=service,
            matchers=_one_kind(metric, service, by),
            start=start,
            end=end,
            step=step,
            agg=agg,
            across=across,
            group_by=(by,) if by else (),
        )

    def compute() -> pl.DataFrame:
        step = nice_step(start, end)
        frame = query(step)
        if agg not in ("rate", "increase") or frame.height < 3:
            return frame
        gaps = frame.sort([by, "ts"] if by else ["ts"]).select(
            pl.col("ts").diff().over(by).alias("gap") if by else pl.col("ts").diff().alias("gap")
        )
        gap_us = gaps["gap"].dt.total_microseconds().median()
        if not isinstance(gap_us, int | float) or timedelta(microseconds=gap_us) <= step:
            return frame
        gap = timedelta(microseconds=gap_us)
        return query(next((s for s in _STEPS if s >= gap), _STEPS[-1]))

    return _cached(("service_series", metric, service, by, start, end, agg, across), compute)


def service_quantiles(
    metric: str, service: str, by: str | None, quantiles: tuple[float, ...], start: datetime, end: datetime
) -> pl.DataFrame:
    """``ts, [by], quantile, value`` of a histogram metric of one service."""

    def compute() -> pl.DataFrame:
        return queries.histogram_quantiles(
            _store(),
            metric=metric,
            service=service,
            matchers=_one_kind(metric, service, by),
            start=start,
            end=end,
            step=nice_step(start, end),
            quantiles=quantiles,
            group_by=(by,) if by else (),
        )

    return _cached(("service_quantiles", metric, service, by, quantiles, start, end), compute)


def service_histogram_mean(
    metric: str, service: str, by: str | None, start: datetime, end: datetime
) -> pl.DataFrame:
    """``ts, [by], value, count``: the mean observation of a histogram metric of one service."""

    def compute() -> pl.DataFrame:
        return queries.histogram_mean(
            _store(),
            metric=metric,
            service=service,
            matchers=_one_kind(metric, service, by),
            start=start,
            end=end,
            step=nice_step(start, end),
            group_by=(by,) if by else (),
        )

    return _cached(("service_histogram_mean", metric, service, by, start, end), compute)


def service_error_ratio(service: str, by: str | None, start: datetime, end: datetime) -> pl.DataFrame:
    """``ts, [by], value``: errors / requests of one service per bucket (buckets without requests absent)."""
    keys = ["ts", by] if by else ["ts"]
    errors = service_series("errors", service, by, start, end, agg="rate")
    requests = service_series("requests", service, by, start, end, agg="rate")
    return (
        requests.join(errors, on=keys, how="left", suffix="_err", nulls_equal=True)
        .filter(pl.col("value") > 0)
        .select(*keys, (pl.col("value_err").fill_null(0.0) / pl.col("value")).alias("value"))
        .sort(keys, nulls_last=True)
    )


ALERTING_KEY = "rootwise_alerting"


def attach_alerting(server: flask.Flask, alerting: Any) -> None:
    """Give the app the server's :class:`app.alerts.config.AlertingConfig` (receivers, routes, inhibit rules)."""
    server.extensions[ALERTING_KEY] = alerting


def alerting_config() -> Any:
    """The serving process's alerting config, or an empty one (the demo, or no ``--config``)."""
    from app.alerts.config import AlertingConfig

    return flask.current_app.extensions.get(ALERTING_KEY) or AlertingConfig()


# -- alerts (pages/alerts.py) -----------------------------------------------------------------------------
# Read through, not cached: the delivery log changes every second while the scheduler delivers, and a silence
# created or expired from the page must show at once. Writes go through the same functions as the JSON API.


def delivery_log(
    receiver: str | None = None, status: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """The alert outbox as a delivery log, newest first (:func:`ingest.alerts_store.delivery_log`)."""
    from ingest import alerts_store

    return alerts_store.delivery_log(_store(), receiver=receiver, status=status, limit=limit)


def delivery_counts() -> dict[str, int]:
    """Outbox rows per status (``pending``, ``delivered``, ``failed``, ``dead``)."""
    from ingest import alerts_store

    return alerts_store.status_counts(_store())


def alert_holds() -> list[dict[str, Any]]:
    """Incidents whose notifications are held (silence, inhibit, rca), oldest hold first, each with its
    incident's ``service``, ``metric`` and ``status`` (empty when the incident is gone)."""
    from ingest import alerts_store

    store = _store()
    held = alerts_store.holds(store)
    incidents = {i["id"]: i for i in results.list_incidents(store)} if held else {}
    return [
        {
            "incident_id": iid,
            **hold,
            **{k: (incidents.get(iid) or {}).get(k, "") for k in ("service", "metric", "status")},
        }
        for iid, hold in held.items()
    ]


def silences() -> list[Any]:
    """Every silence (:class:`app.alerts.silences.Silence`), newest first; expired ones are kept for history."""
    from app.alerts.silences import silences_from_rows
    from ingest import alerts_store

    return silences_from_rows(alerts_store.silence_rows(_store()))


def create_silence(matchers: list[str], duration: timedelta, created_by: str, comment: str) -> Any:
    """Validate and store a silence starting now; raises ``ValueError`` (``SilenceError``) saying what is wrong."""
    require_responder("create silences")
    from app.api import add_silence

    return add_silence(_store(), matchers, duration=duration, created_by=created_by, comment=comment)


def expire_silence(silence_id: str) -> bool:
    """End a silence now; ``False`` when there is no such silence or it has already ended."""
    require_responder("expire silences")
    from ingest import alerts_store

    return alerts_store.expire_silence(_store(), silence_id, now=datetime.now(UTC).replace(tzinfo=None))


def send_test_notification(receiver: str) -> Any:
    """Send a test notification to the configured ``receiver`` now (:func:`app.alerts.outbox.send_test`);
    ``None`` when no receiver has that name. The result's error is already redacted."""
    require_responder("send test notifications")
    from app.alerts.outbox import send_test

    cfg = alerting_config()
    found = cfg.receivers.get(receiver)
    return None if found is None else send_test(found, external_url=cfg.external_url)
