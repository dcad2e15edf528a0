"""SLO burn-rate alerting: multiwindow, multi-burn-rate (Google SRE workbook, "Alerting on SLOs", ch. 5).

The burn rate is how fast the error budget is spent: ``(bad / total over a window) / (1 - objective)``; burn
1 spends exactly the budget over the SLO period. An alert fires when the burn rate exceeds its factor over a
*long* window (enough budget is gone to matter) *and* over a *short* window (it is still happening — so the alert
stops within the short window once the errors stop). The workbook's defaults for a 30-day SLO:

============  ======  ====  =========  ======================
severity      long    short burn rate  budget spent at firing
============  ======  ====  =========  ======================
page          1 h     5 m   14.4       2 %
page          6 h     30 m  6          5 %
ticket        1 d     2 h   3          10 %
ticket        3 d     6 h   1          10 %
============  ======  ====  =========  ======================

SLOs come from ``rootwise.toml``::

    [[slos]]
    name = "chat-availability"
    service = "chat-api"
    objective = 0.999                  # a fraction: 99.9 %
    kind = "error_ratio"               # bad_metric / total_metric: counters of bad and of all events
    bad_metric = "http_requests_errors_total"
    total_metric = "http_requests_total"

    [[slos]]
    name = "chat-latency"
    service = "chat-api"
    objective = 0.99
    kind = "latency"                   # metric: a latency histogram; bad = events slower than threshold_ms
    metric = "http_request_duration_ms"
    threshold_ms = 800
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import polars as pl

from ingest.schema import TS

KINDS = ("error_ratio", "latency")
_KEYS = ("name", "service", "objective", "kind", "metric", "bad_metric", "total_metric", "threshold_ms")


class SloConfigError(ValueError):
    """An SLO definition that cannot be used; the message names the offending key."""


@dataclass(frozen=True)
class Slo:
    """A service level objective: ``objective`` of events are good (``0.999`` = 99.9 %).

    ``kind="error_ratio"``: bad events are counted by ``bad_metric`` out of ``total_metric``.
    ``kind="latency"``: bad events are those of the histogram ``metric`` slower than ``threshold_ms``.

    Examples
    --------
    >>> round(Slo("api", 0.999).error_budget, 6)
    0.001
    >>> Slo("api", 99.9)
    Traceback (most recent call last):
    ...
    detectors.burn_rate.SloConfigError: objective: expected a fraction in (0, 1) such as 0.999, got 99.9 (99.9 % is 0.999)
    """

    name: str
    objective: float
    kind: str = "error_ratio"
    threshold_ms: float | None = None
    service: str | None = None
    metric: str | None = None
    bad_metric: str | None = None
    total_metric: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.objective, bool) or not isinstance(self.objective, int | float):
            raise SloConfigError(f"objective: expected a number such as 0.999, got {self.objective!r}")
        if not 0.0 < self.objective < 1.0:
            hint = (
                f" ({self.objective} % is {self.objective / 100:g})" if 1.0 < self.objective < 100.0 else ""
            )
            raise SloConfigError(
                f"objective: expected a fraction in (0, 1) such as 0.999, got {self.objective!r}{hint}"
            )
        if self.kind not in KINDS:
            raise SloConfigError(f"kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "latency" and (self.threshold_ms is None or not self.threshold_ms > 0):
            raise SloConfigError(
                f"threshold_ms: a latency SLO needs a positive threshold, got {self.threshold_ms!r}"
            )

    @property
    def error_budget(self) -> float:
        """The allowed fraction of bad events, ``1 - objective``."""
        return 1.0 - self.objective


@dataclass(frozen=True)
class BurnWindow:
    """Fire ``severity`` when the burn rate exceeds ``burn`` over both ``long`` and ``short``."""

    long: timedelta
    short: timedelta
    burn: float
    severity: str


PAGE = (
    BurnWindow(timedelta(hours=1), timedelta(minutes=5), 14.4, "page"),
    BurnWindow(timedelta(hours=6), timedelta(minutes=30), 6.0, "page"),
)
TICKET = (
    BurnWindow(timedelta(days=1), timedelta(hours=2), 3.0, "ticket"),
    BurnWindow(timedelta(days=3), timedelta(hours=6), 1.0, "ticket"),
)
DEFAULT_WINDOWS = PAGE + TICKET

ALERTS = {
    "ts": TS,
    "severity": pl.Utf8,
    "long_window": pl.Duration("us"),
    "burn_rate_long": pl.Float64,
    "burn_rate_short": pl.Float64,
    "firing": pl.Boolean,
}


def burn_rate_alerts(
    ts: pl.Series | np.ndarray | Sequence[Any],
    bad: np.ndarray | Sequence[float],
    total: np.ndarray | Sequence[float],
    slo: Slo,
    windows: Sequence[BurnWindow] = DEFAULT_WINDOWS,
) -> pl.DataFrame:
    """Burn rates and firing state of every window at every timestamp, from per-interval counts.

    ``bad`` and ``total`` are the events of each interval ending at ``ts`` (not cumulative counters; missing
    values count as 0). A window ending at ``t`` covers ``(t - width, t]``; the ratio of an empty window is 0.
    ``firing`` is the workbook's rule: ``ratio_long > burn * (1 - objective)`` and
    ``ratio_short > burn * (1 - objective)``.

    Returns one row per timestamp and window, ordered by ``ts`` then by ``windows``: ``ts, severity,
    long_window, burn_rate_long, burn_rate_short, firing``.

    Examples
    --------
    >>> from datetime import datetime
    >>> ts = [datetime(2024, 1, 1, 0, m) for m in range(60)]
    >>> out = burn_rate_alerts(ts, [20.0] * 60, [1000.0] * 60, Slo("api", 0.999), PAGE[:1])
    >>> round(out["burn_rate_long"][-1], 9), bool(out["firing"][-1])
    (20.0, True)
    """
    t_series = pl.Series("ts", ts)
    if not isinstance(t_series.dtype, pl.Datetime):
        raise ValueError(f"ts must be datetimes, got {t_series.dtype}")
    t = t_series.cast(TS).dt.epoch("us").to_numpy()
    b = np.nan_to_num(np.asarray(bad, dtype=np.float64), nan=0.0)
    n = np.nan_to_num(np.asarray(total, dtype=np.float64), nan=0.0)
    if not t.size == b.size == n.size:
        raise ValueError(f"ts, bad and total differ in length: {t.size}, {b.size}, {n.size}")
    order = np.argsort(t, kind="stable")
    t, b, n = t[order], b[order], n[order]
    cb, cn = np.r_[0.0, np.cumsum(b)], np.r_[0.0, np.cumsum(n)]
    budget = slo.error_budget

    # a window ending at t covers (t - width, t]; ``hi`` also takes every row that shares the timestamp t
    hi = np.searchsorted(t, t, side="right")

    def ratio(width: timedelta) -> np.ndarray:
        lo = np.searchsorted(t, t - width // timedelta(microseconds=1), side="right")
        sb, sn = cb[hi] - cb[lo], cn[hi] - cn[lo]
        return np.divide(sb, sn, out=np.zeros_like(sb), where=sn > 0)

    k = len(windows)
    if k == 0 or t.size == 0:
        return pl.DataFrame(schema=ALERTS)
    # (n, k) arrays raveled row-major: ordered by ts, then by window
    long_ = np.empty((t.size, k))
    short = np.empty((t.size, k))
    limit = np.array([w.burn * budget for w in windows])
    for j, w in enumerate(windows):
        long_[:, j], short[:, j] = ratio(w.long), ratio(w.short)
    firing = (long_ > limit) & (short > limit)
    widths = np.array([w.long // timedelta(microseconds=1) for w in windows])
    return pl.DataFrame(
        {
            "ts": np.repeat(t, k).astype("datetime64[us]"),
            "severity": pl.Series([w.severity for w in windows] * t.size, dtype=pl.Utf8),
            "long_window": np.tile(widths, t.size).astype("timedelta64[us]"),
            "burn_rate_long": (long_ / budget).ravel(),
            "burn_rate_short": (short / budget).ravel(),
            "firing": firing.ravel(),
        },
        schema=ALERTS,
    )


def _string(item: dict[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = item.get(key)
    if value is None:
        if required:
            raise SloConfigError(f"{where}: missing key {key!r}")
        return None
    if not isinstance(value, str) or not value:
        raise SloConfigError(f"{where}.{key}: expected a non-empty string, got {value!r}")
    return value


def slos_from_config(extra: dict[str, Any]) -> list[Slo]:
    """SLOs from the ``[[slos]]`` tables of a parsed ``rootwise.toml`` (``Config.extra``).

    Keys: ``name`` (required, unique), ``objective`` (required, a fraction in (0, 1)), ``service``,
    ``kind`` (``"error_ratio"``, the default, or ``"latency"``); an error-ratio SLO needs ``bad_metric`` and
    ``total_metric``, a latency SLO needs ``metric`` and ``threshold_ms``. Unknown keys are errors (a typo would
    otherwise silently drop a setting); every error names the table and the key.

    Examples
    --------
    >>> slos_from_config({"slos": [{"name": "api", "objective": 0.999, "bad_metric": "errors",
    ...                             "total_metric": "requests"}]})[0].error_budget < 0.0011
    True
    >>> slos_from_config({"slos": [{"name": "api", "objetive": 0.999}]})
    Traceback (most recent call last):
    ...
    detectors.burn_rate.SloConfigError: slos[0]: unknown key 'objetive'; expected one of name, service, objective, kind, metric, bad_metric, total_metric, threshold_ms
    """
    raw = extra.get("slos", [])
    if not isinstance(raw, list):
        raise SloConfigError(f"slos: expected an array of tables ([[slos]]), got {type(raw).__name__}")
    out: list[Slo] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"slos[{i}]"
        if not isinstance(item, dict):
            raise SloConfigError(f"{where}: expected a table, got {type(item).__name__}")
        unknown = [k for k in item if k not in _KEYS]
        if unknown:
            raise SloConfigError(
                f"{where}: unknown key {', '.join(map(repr, unknown))}; expected one of {', '.join(_KEYS)}"
            )
        name = _string(item, "name", where, required=True)
        assert name is not None
        if name in seen:
            raise SloConfigError(f"{where}.name: duplicate SLO name {name!r}")
        seen.add(name)
        if "objective" not in item:
            raise SloConfigError(f"{where}: missing key 'objective' (a fraction such as 0.999)")
        kind = _string(item, "kind", where) or "error_ratio"
        threshold = item.get("threshold_ms")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)):
            raise SloConfigError(
                f"{where}.threshold_ms: expected a number of milliseconds, got {threshold!r}"
            )
        fields = {k: _string(item, k, where) for k in ("service", "metric", "bad_metric", "total_metric")}
        if kind == "error_ratio":
            for k in ("bad_metric", "total_metric"):
                if fields[k] is None:
                    raise SloConfigError(
                        f"{where}: missing key {k!r} (an error_ratio SLO counts bad_metric / total_metric)"
                    )
            for k in ("metric", "threshold_ms"):
                if item.get(k) is not None:
                    raise SloConfigError(f'{where}.{k}: only for kind = "latency"')
        elif kind == "latency":
            if fields["metric"] is None:
                raise SloConfigError(
                    f"{where}: missing key 'metric' (the latency histogram of a latency SLO)"
                )
            for k in ("bad_metric", "total_metric"):
                if fields[k] is not None:
                    raise SloConfigError(f'{where}.{k}: only for kind = "error_ratio"')
        try:
            out.append(
                Slo(
                    name=name,
                    objective=item["objective"],
                    kind=kind,
                    threshold_ms=float(threshold) if threshold is not None else None,
                    **fields,
                )
            )
        except SloConfigError as exc:
            raise SloConfigError(f"{where}.{exc}") from None
    return out
