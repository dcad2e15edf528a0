"""The scheduler of ``rootwise serve``: detection, RCA and alert routing every 20 seconds, delivery every second,
the capacity report every week — in threads of the process that owns the DuckDB file.

Two threads:

* **pipeline** — every ``detect_interval``: an incremental detection pass (:func:`app.detect.run_detection`:
  only new points are scored), RCA for incidents without causes (:func:`app.explain.explain_new_incidents`),
  then one alerting pass (:func:`app.alerts.router.route_incidents`: routes, silences, inhibition, grouping),
  then a rollup pass (:func:`ingest.retention.roll_up_recent`: new complete hours into the rollups).
  Every ``report_interval`` (weekly by default, counted from the last recorded report) it writes the capacity
  report into ``report_dir``. A failing pass is logged and counted; the next one runs on schedule.
* **delivery** — every ``deliver_interval``: :func:`app.alerts.outbox.deliver_due`.

Stopping (SIGTERM, after the HTTP server has drained and the write queue has been flushed): the current
pipeline pass finishes, one last delivery pass flushes what is due, and the threads end. Nothing depends on
that flush: the outbox is in the store, so a SIGKILL at any moment loses nothing queued — the next start
delivers it.

``[scheduler]`` in ``rootwise.toml`` (all optional)::

    [scheduler]
    detect_interval = "20s"     # detection + RCA + alert routing (start to start; back to back when longer)
    deliver_interval = "1s"     # alert delivery
    report_interval = "7d"      # capacity report; "0s" disables it
    report_dir = "reports"      # relative to the database file's directory
    report_receivers = []       # Slack or webhook receivers that get each report (served at /reports/<name>)
    detect_workers = 2          # scoring processes, kept between passes (1: in the server process's threads)
    enabled = true              # false: serve receives and shows, but detects and alerts nothing
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app.config import ConfigError

log = logging.getLogger("rootwise.scheduler")

#: CPU priority of the scoring processes below the server's: under load the receiver, whose acknowledgements
#: clients wait for, comes first, and scoring uses the rest of the cores
SCORING_NICE = 10

_KEYS = (
    "detect_interval",
    "deliver_interval",
    "report_interval",
    "report_dir",
    "report_receivers",
    "detect_workers",
    "enabled",
)


@dataclass(frozen=True)
class SchedulerSettings:
    #: start to start. Data stored just after a pass starts waits for the next pass to end: a 1-minute interval
    #: alone makes the detection lag's p95 ~57 s plus a pass, so a pass at least every 20 s (back to back when
    #: one takes longer) is what keeps it under a minute; a pass with nothing new costs milliseconds
    detect_interval: timedelta = timedelta(seconds=20)
    deliver_interval: timedelta = timedelta(seconds=1)
    report_interval: timedelta = timedelta(days=7)
    report_dir: str = "reports"
    #: two scoring processes: under ingest load, scoring in the server process shares the GIL with the
    #: receiver's threads; `rootwise bench serve` measured passes 3x shorter with 2 processes on 2 cores. A pass
    #: with one batch of series (500) still scores in the server process
    detect_workers: int = 2
    enabled: bool = True
    report_receivers: tuple[str, ...] = ()


def scheduler_settings(extra: Mapping[str, Any]) -> SchedulerSettings:
    """``[scheduler]`` of ``rootwise.toml``; raises :class:`ConfigError` naming the key."""
    from app.alerts.config import parse_duration

    table = extra.get("scheduler", {})
    if not isinstance(table, dict):
        raise ConfigError(f"scheduler: expected a table ([scheduler]), got {type(table).__name__}")
    unknown = [k for k in table if k not in _KEYS]
    if unknown:
        raise ConfigError(
            f"scheduler: unknown key {', '.join(map(repr, unknown))}; expected one of {', '.join(_KEYS)}"
        )
    out: dict[str, Any] = {}
    for key in ("detect_interval", "deliver_interval", "report_interval"):
        if key in table:
            value = table[key]
            try:
                if not isinstance(value, str):
                    raise ValueError(f"expected a duration string such as 30s, 1m or 7d, got {value!r}")
                d = parse_duration(value)
            except ValueError as exc:
                raise ConfigError(f"scheduler.{key}: {exc}") from exc
            if d <= timedelta(0) and key != "report_interval":
                raise ConfigError(f"scheduler.{key}: expected a positive duration, got {value!r}")
            out[key] = d
    if "report_dir" in table:
        if not isinstance(table["report_dir"], str) or not table["report_dir"]:
            raise ConfigError("scheduler.report_dir: expected a directory path")
        out["report_dir"] = table["report_dir"]
    if "report_receivers" in table:
        names = table["report_receivers"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError("scheduler.report_receivers: expected an array of receiver names")
        out["report_receivers"] = tuple(names)
    if "detect_workers" in table:
        w = table["detect_workers"]
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ConfigError(f"scheduler.detect_workers: expected a positive integer, got {w!r}")
        out["detect_workers"] = w
    if "enabled" in table:
        if not isinstance(table["enabled"], bool):
            raise ConfigError(f"scheduler.enabled: expected true or false, got {table['enabled']!r}")
        out["enabled"] = table["enabled"]
    return SchedulerSettings(**out)


def report_receiver_errors(settings: SchedulerSettings, alerting: Any) -> list[str]:
    """Problems with ``[scheduler] report_receivers``: each must be a configured Slack or webhook receiver."""
    errors = []
    for i, name in enumerate(settings.report_receivers):
        receiver = alerting.receivers.get(name)
        if receiver is None:
            known = ", ".join(sorted(alerting.receivers)) or "none defined"
            errors.append(f"scheduler.report_receivers[{i}]: no receiver named {name!r} (receivers: {known})")
        elif receiver.type not in ("slack", "webhook"):
            errors.append(
                f"scheduler.report_receivers[{i}]: {name!r} is a {receiver.type} receiver; reports go to slack or "
                "webhook receivers (a report is not an incident to page about)"
            )
    return errors


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class SchedulerStats:
    """What ``/metrics`` and ``/readyz`` show of the scheduler."""

    passes: Counter = field(default_factory=Counter)  # by outcome: ok / error
    last_pass_started: float | None = None  # unix time
    last_pass_ok: float | None = None  # start time of the last pass that completed
    last_pass_seconds: float = 0.0
    last_error: str | None = None
    incidents_opened: int = 0
    incidents_resolved: int = 0
    explained: int = 0
    queued: int = 0
    held: Counter = field(default_factory=Counter)  # by hold kind, last pass
    deliveries: Counter = field(default_factory=Counter)  # by (receiver, outcome)
    reports: Counter = field(default_factory=Counter)  # by outcome
    last_report: str | None = None


class Scheduler:
    """Runs the pipeline and delivery threads over ``store`` (see the module docstring)."""

    def __init__(
        self,
        store: Any,
        *,
        settings: SchedulerSettings | None = None,
        alerting: Any = None,
        capacity: Any = None,
        db_path: str | Path | None = None,
        detect_config: Any = None,
    ) -> None:
        from app.alerts.config import AlertingConfig
        from app.alerts.notifiers import build_notifiers
        from app.alerts.outbox import RateLimiter

        self.store = store
        self.settings = settings or SchedulerSettings()
        self.alerting = alerting if alerting is not None else AlertingConfig()
        self.capacity = capacity
        base = Path(db_path).resolve().parent if db_path else Path.cwd()
        self.report_dir = base / self.settings.report_dir
        self.detect_config = detect_config
        self.notifiers = build_notifiers(self.alerting)
        self.limiter = RateLimiter()
        self.rng = random.Random()
        self.stats = SchedulerStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pipeline_idle = threading.Event()
        self._pipeline_idle.set()
        self._last_report_try: datetime | None = None
        self._pool: Any = None  # app.detect.ScoringPool, kept between passes

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        if not self.settings.enabled:
            log.info("scheduler disabled by [scheduler] enabled = false")
            return
        for name, target in (("pipeline", self._pipeline_loop), ("delivery", self._delivery_loop)):
            t = threading.Thread(target=target, name=f"rootwise-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, *, flush: bool = True, timeout: float | None = None) -> None:
        """Let the current pass finish, end the threads, then (``flush``) deliver what is due once more."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self._threads = []
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if flush and self.settings.enabled:
            self.deliver_once()

    @property
    def running(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Ready once both threads run (or the scheduler is disabled); the body says what it last did."""
        ok = self.running or not self.settings.enabled
        with self._lock:
            body = {
                "scheduler": "disabled" if not self.settings.enabled else ("running" if ok else "stopped"),
                "passes": dict(self.stats.passes),
                "last_error": self.stats.last_error,
                "detection_lag_seconds": self.detection_lag(),
            }
        return ok, body

    # -- the work --------------------------------------------------------------------------------------------
    def _pipeline_loop(self) -> None:
        interval = self.settings.detect_interval.total_seconds()
        while not self._stop.is_set():
            started = time.monotonic()
            self.run_pass()
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def _delivery_loop(self) -> None:
        interval = self.settings.deliver_interval.total_seconds()
        while not self._stop.wait(interval):
            self.deliver_once()

    def run_pass(self, now: datetime | None = None) -> dict[str, Any]:
        """One pipeline pass: detect, explain, route; then the capacity report when it is due."""
        from app.alerts.router import route_incidents
        from app.detect import DetectConfig, run_detection
        from app.explain import explain_new_incidents
        from ingest.retention import roll_up_recent

        self._pipeline_idle.clear()
        t0, wall = time.perf_counter(), time.time()
        with self._lock:
            self.stats.last_pass_started = wall
        out: dict[str, Any] = {}
        try:
            config = self.detect_config or DetectConfig(workers=self.settings.detect_workers)
            detected = run_detection(self.store, config, pool=self._scoring_pool(config.scoring_processes()))
            out["detect"] = detected.to_dict()
            out["rca"] = explain_new_incidents(self.store)
            routed = route_incidents(self.store, self.alerting, now=now or _utcnow())
            out["alerts"] = routed.to_dict()
            # after paging: the new complete hours into the 5-minute and hourly rollups the charts read
            out["rollup"] = roll_up_recent(self.store, now=now).to_dict()
            with self._lock:
                s = self.stats
                s.passes["ok"] += 1
                s.last_pass_ok = wall
                s.last_pass_seconds = time.perf_counter() - t0
                s.incidents_opened += detected.incidents_opened
                s.incidents_resolved += detected.incidents_resolved
                s.explained += int(out["rca"]["explained"])
                s.queued += len(routed.queued)
                s.held = Counter(h.kind for h in routed.held.values())
                s.last_error = None
            self._maybe_report(now or _utcnow())
        except Exception as exc:  # a failed pass must not stop the schedule
            log.exception("scheduler pass failed")
            with self._lock:
                self.stats.passes["error"] += 1
                self.stats.last_pass_seconds = time.perf_counter() - t0
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
            out["error"] = self.stats.last_error
        finally:
            self._pipeline_idle.set()
        return out

    def _scoring_pool(self, workers: int) -> Any:
        """The scoring processes kept between passes (started by the first pass that needs them)."""
        from app.detect import ScoringPool

        if workers <= 1:
            return None
        if self._pool is None or self._pool.workers != workers:
            if self._pool is not None:
                self._pool.close()
            self._pool = ScoringPool(workers, nice=SCORING_NICE)
        return self._pool

    def deliver_once(self, now: datetime | None = None) -> dict[str, int]:
        from app.alerts.outbox import deliver_due

        try:
            report = deliver_due(
                self.store, self.notifiers, now or _utcnow(), rng=self.rng, limiter=self.limiter
            )
        except Exception:
            log.exception("alert delivery pass failed")
            with self._lock:
                self.stats.deliveries["*", "error"] += 1
            return {}
        with self._lock:
            for (receiver, outcome), n in report.by_receiver.items():
                self.stats.deliveries[receiver, outcome] += n
        return report.to_dict()

    def _maybe_report(self, now: datetime) -> None:
        interval = self.settings.report_interval
        if interval <= timedelta(0):
            return
        from ingest.results import last_capacity_report

        last = last_capacity_report(self.store)
        if self._last_report_try is not None and (last is None or self._last_report_try > last):
            last = self._last_report_try  # a report that wrote nothing to record is not retried every pass
        if last is not None and now - last < interval:
            return
        self._last_report_try = now
        from app.capacity import CapacitySettings
        from app.report import ReportError, report_capacity

        self.report_dir.mkdir(parents=True, exist_ok=True)
        out = self.report_dir / f"capacity-{now:%Y%m%dT%H%M}.html"
        try:
            summary = report_capacity(self.store, self.capacity or CapacitySettings(), out)
        except (ReportError, ValueError) as exc:  # e.g. no demand metrics yet: try again next interval
            log.warning("capacity report not written: %s", exc)
            with self._lock:
                self.stats.reports["skipped"] += 1
            return
        with self._lock:
            self.stats.reports["written"] += 1
            self.stats.last_report = out.name
        log.info("capacity report written to %s", out)
        self._enqueue_report(out.name, summary, now)

    def _enqueue_report(self, name: str, summary: Mapping[str, Any], now: datetime) -> None:
        """Queue the report for ``report_receivers`` (delivered like any notification, from the outbox)."""
        import json

        from ingest import alerts_store
        from ingest.alerts_store import NewNotification

        link = f"{self.alerting.external_url.rstrip('/')}/reports/{name}"
        report = {k: summary.get(k) for k in ("created", "bottom_line", "resources")} | {"id": name}
        body = json.dumps(
            {
                "incident": report,
                "link": link,
                "external_url": self.alerting.external_url,
                "group_labels": {},
            },
            default=str,
        )
        items = [
            NewNotification(
                receiver=r,
                dedup_key=f"report-{name}",
                event="report",
                incident_id=None,
                group_key=f"report:{name}",
                payload=body,
                dead_after=now + self.alerting.receivers[r].deadline,
            )
            for r in self.settings.report_receivers
            if r in self.alerting.receivers
        ]
        alerts_store.enqueue(self.store, items, now=now)

    def mount(self, app: Any) -> None:
        """Serve the written reports at ``/reports/<name>`` (behind the app's access control)."""
        import flask

        @app.get("/reports/<name>")
        def report_file(name: str) -> Any:
            return flask.send_from_directory(self.report_dir, name, mimetype="text/html")

    def detection_lag(self) -> float | None:
        """Seconds since the start of the last completed pass: every point stored before then has been scored."""
        last = self.stats.last_pass_ok
        return None if last is None else max(0.0, time.time() - last)

    # -- /metrics --------------------------------------------------------------------------------------------
    def prometheus(self) -> str:
        """Prometheus text exposition of the scheduler's and the alert outbox's state."""
        from ingest import alerts_store

        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {float(v):g}" for labels, v in samples)

        with self._lock:
            s = self.stats
            passes, deliveries, reports = dict(s.passes), dict(s.deliveries), dict(s.reports)
            held = dict(s.held)
            counters = (s.incidents_opened, s.incidents_resolved, s.explained, s.queued)
            last_seconds = s.last_pass_seconds
        lag = self.detection_lag()
        family(
            "rootwise_scheduler_passes_total",
            "counter",
            "Detection + RCA + alert routing passes by outcome.",
            [(f'{{outcome="{k}"}}', v) for k, v in sorted(passes.items())],
        )
        family("rootwise_detection_pass_seconds", "gauge", "Duration of the last pass.", [("", last_seconds)])
        if lag is not None:
            family(
                "rootwise_detection_lag_seconds",
                "gauge",
                "Seconds since the start of the last completed pass (everything stored before it is scored).",
                [("", lag)],
            )
        for name, value, text in zip(
            ("incidents_opened", "incidents_resolved", "incidents_explained", "alerts_queued"),
            counters,
            (
                "Incidents opened.",
                "Incidents resolved.",
                "Incidents explained by RCA.",
                "Notifications queued.",
            ),
            strict=True,
        ):
            family(f"rootwise_{name}_total", "counter", text, [("", value)])
        family(
            "rootwise_alerts_held",
            "gauge",
            "Incidents whose notifications are held, by kind (silence, inhibit, rca), at the last pass.",
            [(f'{{kind="{k}"}}', v) for k, v in sorted(held.items())],
        )
        family(
            "rootwise_alert_deliveries_total",
            "counter",
            "Delivery attempts by receiver and outcome (delivered, retrying, failed, dead, deferred).",
            [(f'{{receiver="{r}",outcome="{o}"}}', v) for (r, o), v in sorted(deliveries.items())],
        )
        pending = alerts_store.pending_count(self.store)
        family(
            "rootwise_alert_queue_depth",
            "gauge",
            "Notifications pending in the outbox, by receiver.",
            [(f'{{receiver="{r}"}}', pending.get(r, 0)) for r in sorted(set(pending) | set(self.notifiers))],
        )
        family(
            "rootwise_capacity_reports_total",
            "counter",
            "Scheduled capacity reports by outcome.",
            [(f'{{outcome="{k}"}}', v) for k, v in sorted(reports.items())],
        )
        return "\n".join(lines) + "\n"
