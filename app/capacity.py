"""Capacity model: when do we run out of GPUs, of GPU quota, of budget — at P50 and P90.

It lives in ``app/`` because it wires the three other layers together: demand and supply are read from the
store (:mod:`ingest.queries`), forecast with :class:`detectors.forecast_trend.TrendForecaster`, and combined
with configured limits (``[capacity]`` in ``rootwise.toml``). The pure pieces (:func:`forecast_daily`,
:func:`crossing`, :func:`replica_capacity`) take frames and are what the evaluation exercises.

Method
------
* **Demand** is the daily peak of the hourly rate: decode tokens/s per model and region (vLLM
  ``generation_tokens_total``), requests/s per service, concurrent requests per model, and cost per day per
  tenant and model. Capacity is sized for the busiest hour of each day, so the daily peak is what must fit.
* **Forecast**: a growth curve per series (robust fits of a linear and an exponential curve to log demand,
  averaged with BIC weights because four weeks rarely tell them apart) with day-of-week effects; the point
  forecast and the calibrated 80 % interval are what the charts show.
* **Supply** of one replica (one GPU node serving a model) is learned from telemetry: the decode tokens/s at
  which the latency SLO (``latency_metric`` quantile ≤ ``latency_slo_ms``) starts failing, when the data
  shows it, and the tokens/s at which the KV cache reaches ``kv_cache_limit`` (a robust line through
  15-minute samples of KV-cache use against throughput), whichever is lower. When neither limit is in
  reach of the data, the highest observed throughput is used and flagged as a lower bound.
* **Exhaustion date** of a resource: the first day demand exceeds the limit, simulated on 2,000 futures per
  series (:func:`forecast_daily`); the P50 date is the median of the simulated days, the P90 date their 10th
  percentile (demand passes the limit on or after it nine times in ten).
* **Scenarios** multiply (``factor``) or add to (``add``) the demand that matches their labels from a start
  date; a tenant's share of each model and region's demand comes from the last week's usage. A scenario only
  rescales the fitted forecasts, so one can be added to a finished plan (:func:`with_scenario`) without
  forecasting again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from ingest.schema import TS

HOUR = timedelta(hours=1)
GPU_HOURS_PER_MONTH = 730.0


class CapacityConfigError(ValueError):
    """A ``[capacity]`` setting in ``rootwise.toml`` is wrong; the message names the key."""


@dataclass(frozen=True)
class Scenario:
    """A what-if: demand matching ``match`` (labels such as ``tenant``, ``model``, ``region``) is multiplied by
    ``factor`` and increased by ``add`` (tokens/s) from ``start`` on (``None``: from now)."""

    name: str
    match: dict[str, str] = field(default_factory=dict)
    factor: float = 1.0
    add: float = 0.0
    start: datetime | None = None


@dataclass(frozen=True)
class Budget:
    """A monthly spending limit on the cost that matches ``match`` (``{}``: all cost)."""

    name: str
    monthly_usd: float
    match: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CapacitySettings:
    """``[capacity]`` settings; every field is a key of that table (``gpu_quota``, ``budgets`` and
    ``scenarios`` are sub-tables / arrays of tables).

    ``refresh`` is how long ``rootwise serve`` waits after planning before it plans again for the app's
    Capacity page (``"15m"`` in the file); the CLI report ignores it.
    """

    horizon_days: int = 90
    history_days: int = 28
    latency_metric: str = "gen_ai.server.time_per_output_token"
    latency_quantile: float = 0.95
    latency_slo_ms: float = 100.0
    kv_cache_limit: float = 0.9
    gpu_hour_usd: float = 4.0
    lead_time_days: int = 14
    gpu_quota: dict[str, int] = field(default_factory=dict)
    budgets: tuple[Budget, ...] = ()
    scenarios: tuple[Scenario, ...] = ()
    refresh: timedelta = timedelta(minutes=15)


#: the shortest ``[capacity] refresh``: a plan takes seconds to minutes; planning more often only burns CPU
MIN_REFRESH = timedelta(minutes=1)
_KEYS = {f for f in CapacitySettings.__dataclass_fields__}


def _number(table: Mapping[str, Any], key: str, where: str, *, positive: bool = True) -> float | None:
    if key not in table:
        return None
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or (positive and v <= 0):
        raise CapacityConfigError(
            f"{where}.{key}: expected a {'positive ' if positive else ''}number, got {v!r}"
        )
    return float(v)


def _labels(table: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    v = table.get(key, {})
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise CapacityConfigError(f'{where}.{key}: expected a table of label = "value", got {v!r}')
    return dict(v)


def settings_from_config(extra: Mapping[str, Any]) -> CapacitySettings:
    """Capacity settings from a parsed ``rootwise.toml`` (``Config.extra``); errors name the key.

    Examples
    --------
    >>> s = settings_from_config({"capacity": {"horizon_days": 60, "gpu_quota": {"us-east": 16},
    ...     "budgets": [{"name": "all", "monthly_usd": 50000}],
    ...     "scenarios": [{"name": "t-0007 doubles", "match": {"tenant": "t-0007"}, "factor": 2}]}})
    >>> s.horizon_days, s.gpu_quota, s.budgets[0].monthly_usd, s.scenarios[0].factor
    (60, {'us-east': 16}, 50000.0, 2.0)
    >>> settings_from_config({"capacity": {"refresh": "1h"}}).refresh
    datetime.timedelta(seconds=3600)
    >>> settings_from_config({"capacity": {"horizon": 60}})
    Traceback (most recent call last):
    ...
    app.capacity.CapacityConfigError: capacity: unknown key 'horizon'; expected one of budgets, gpu_hour_usd, gpu_quota, history_days, horizon_days, kv_cache_limit, latency_metric, latency_quantile, latency_slo_ms, lead_time_days, refresh, scenarios
    """
    raw = extra.get("capacity", {})
    if not isinstance(raw, dict):
        raise CapacityConfigError(f"capacity: expected a table ([capacity]), got {type(raw).__name__}")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise CapacityConfigError(
            f"capacity: unknown key {', '.join(map(repr, unknown))}; expected one of {', '.join(sorted(_KEYS))}"
        )
    kw: dict[str, Any] = {}
    for key in ("horizon_days", "history_days", "lead_time_days"):
        if (v := _number(raw, key, "capacity")) is not None:
            if v != int(v):
                raise CapacityConfigError(f"capacity.{key}: expected a whole number of days, got {v}")
            kw[key] = int(v)
    for key in ("latency_slo_ms", "gpu_hour_usd"):
        if (v := _number(raw, key, "capacity")) is not None:
            kw[key] = v
    for key in ("latency_quantile", "kv_cache_limit"):
        if (v := _number(raw, key, "capacity")) is not None:
            if not 0 < v < 1:
                raise CapacityConfigError(f"capacity.{key}: expected a fraction between 0 and 1, got {v}")
            kw[key] = v
    if "latency_metric" in raw:
        if not isinstance(raw["latency_metric"], str):
            raise CapacityConfigError(
                f"capacity.latency_metric: expected a metric name, got {raw['latency_metric']!r}"
            )
        kw["latency_metric"] = raw["latency_metric"]
    if "refresh" in raw:
        kw["refresh"] = _refresh(raw["refresh"])
    quota = raw.get("gpu_quota", {})
    if not isinstance(quota, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in quota.values()
    ):
        raise CapacityConfigError(f"capacity.gpu_quota: expected region = positive GPU count, got {quota!r}")
    kw["gpu_quota"] = dict(quota)
    budgets = []
    for i, b in enumerate(_array(raw, "budgets")):
        where = f"capacity.budgets[{i}]"
        _only(b, {"name", "monthly_usd", "match"}, where)
        usd = _number(b, "monthly_usd", where)
        if usd is None:
            raise CapacityConfigError(f"{where}: missing key 'monthly_usd'")
        budgets.append(
            Budget(
                name=str(b.get("name", f"budget {i + 1}")), monthly_usd=usd, match=_labels(b, "match", where)
            )
        )
    kw["budgets"] = tuple(budgets)
    scenarios = []
    for i, s in enumerate(_array(raw, "scenarios")):
        where = f"capacity.scenarios[{i}]"
        _only(s, {"name", "match", "factor", "add", "start"}, where)
        if "name" not in s:
            raise CapacityConfigError(f"{where}: missing key 'name'")
        start = s.get("start")
        if start is not None:
            if isinstance(start, date) and not isinstance(start, datetime):
                start = datetime(start.year, start.month, start.day)
            if not isinstance(start, datetime):
                raise CapacityConfigError(
                    f"{where}.start: expected a TOML date such as 2026-12-01, got {start!r}"
                )
            start = start.replace(tzinfo=None)
        add = _number(s, "add", where, positive=False)
        scenarios.append(
            Scenario(
                name=str(s["name"]),
                match=_labels(s, "match", where),
                factor=_number(s, "factor", where) or 1.0,
                add=add or 0.0,
                start=start,
            )
        )
    kw["scenarios"] = tuple(scenarios)
    return CapacitySettings(**kw)


def _refresh(value: Any) -> timedelta:
    from app.alerts.config import parse_duration

    try:
        if not isinstance(value, str):
            raise ValueError(f"expected a duration such as 15m or 1h, got {value!r}")
        refresh = parse_duration(value)
    except ValueError as exc:
        raise CapacityConfigError(f"capacity.refresh: {exc}") from exc
    if refresh < MIN_REFRESH:
        raise CapacityConfigError(f"capacity.refresh: expected at least 1m, got {value!r}")
    return refresh


def _array(raw: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    v = raw.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise CapacityConfigError(f"capacity.{key}: expected an array of tables ([[capacity.{key}]])")
    return v


def _only(table: Mapping[str, Any], keys: set[str], where: str) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        raise CapacityConfigError(
            f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(keys))}"
        )


# -- pure pieces -------------------------------------------------------------------------------------------
def daily_peaks(hourly: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """``ts, <keys>, value`` hourly → ``series_id, ts, value``: each day's highest hour per key.

    ``series_id`` joins the key values with ``" / "`` (use :func:`key_labels` to get them back). Days with fewer than 12 hours of data (the partial first
    and last day) are dropped: their peak would understate demand.
    """
    if hourly.height == 0:
        return pl.DataFrame(schema={"series_id": pl.Utf8, "ts": TS, "value": pl.Float64})
    sid = pl.concat_str([pl.col(k).fill_null("") for k in keys], separator=" / ") if keys else pl.lit("all")
    return (
        hourly.with_columns(sid.alias("series_id"), pl.col("ts").dt.truncate("1d").alias("day"))
        .group_by("series_id", "day")
        .agg(pl.col("value").max(), pl.len().alias("hours"))
        .filter(pl.col("hours") >= 12)
        .select("series_id", pl.col("day").cast(TS).alias("ts"), "value")
        .sort("series_id", "ts")
    )


#: columns :func:`forecast_daily` adds: percentiles of the highest daily value from the first forecast day on
PEAK_COLUMNS = ("max50", "max90")
_FORECAST_COLUMNS = ("yhat", "lo80", "hi80", "lo95", "hi95")
#: simulated futures per series and growth curve behind :data:`PEAK_COLUMNS`
N_PATHS = 2000
#: a growth curve with at least this weight takes part in the P90 date (:func:`forecast_daily`)
_PLAUSIBLE = 0.05


def forecast_daily(daily: pl.DataFrame, horizon_days: int) -> pl.DataFrame:
    """Forecast daily series (``series_id, ts, value``) ``horizon_days`` ahead with the trend family.

    Returns :data:`detectors.forecast_base.FORECASTS` columns (``yhat`` the median, ``hi80`` the 90th
    percentile of each day's demand) and :data:`PEAK_COLUMNS`, what exhaustion dates are read from
    (:func:`crossing`). A resource runs out on the first day demand passes its limit, which is the first day
    the *highest value so far* passes it; so from :data:`N_PATHS` simulated futures
    (:meth:`~detectors.forecast_trend.TrendForecaster.sample_paths`: growth curve, its parameter uncertainty,
    daily noise) ``max50`` is the median of the running maximum and ``max90`` its 90th percentile: the day
    ``max50`` (``max90``) passes a limit is the median (10th percentile) of the simulated exhaustion days.
    ``max90`` is the highest over the mixture and each growth curve with a weight of at least 5 %: a P90 date
    must hold whichever growth shape the data cannot rule out.

    Examples
    --------
    >>> ts = pl.datetime_range(datetime(2026, 1, 1), datetime(2026, 1, 28), "1d", eager=True)
    >>> y = 100.0 + 2.0 * np.arange(28) + np.random.default_rng(0).normal(0, 2, 28)
    >>> fc = forecast_daily(pl.DataFrame({"series_id": "a", "ts": ts, "value": y}), 30)
    >>> bool((fc["max90"] >= fc["max50"]).all() and fc["max50"].is_sorted())
    True
    >>> p50, p90 = crossing(fc, 190.0)  # 100 + 2 t passes 190 on day 45, the 18th forecast day (Feb 15)
    >>> p50.day, p90 <= p50
    (15, True)
    """
    from detectors.forecast_trend import TrendForecaster

    if daily.height == 0:
        from detectors.forecast_base import FORECASTS

        return pl.DataFrame(
            schema={**FORECASTS, "series_id": pl.Utf8, **dict.fromkeys(PEAK_COLUMNS, pl.Float64)}
        )
    model = TrendForecaster(season_lengths=(7,)).fit(daily)
    fc = model.predict(horizon_days)
    mixed = model.sample_paths(horizon_days, N_PATHS)
    by_curve = {g: model.sample_paths(horizon_days, N_PATHS, growth=g) for g in ("linear", "exponential")}
    weights = model.growth_weights()
    peaks = []
    for sid, paths in mixed.items():
        run = np.maximum.accumulate(paths, axis=1)
        max50, max90 = np.quantile(run, (0.5, 0.9), axis=0)
        for g, w in weights[sid].items():
            if _PLAUSIBLE <= w < 1.0:  # a mixture member the data cannot rule out
                max90 = np.maximum(
                    max90, np.quantile(np.maximum.accumulate(by_curve[g][sid], axis=1), 0.9, axis=0)
                )
        peaks.append(
            pl.DataFrame({"series_id": [sid] * horizon_days, "max50": max50, "max90": max90}).with_columns(
                pl.int_range(pl.len()).alias("_step")
            )
        )
    steps = fc.with_columns(pl.int_range(pl.len()).over("series_id").alias("_step"))
    peak = pl.concat(peaks).cast({"series_id": fc.schema["series_id"]})
    return steps.join(peak, on=["series_id", "_step"], how="left").drop("_step")


def _p90_peak(forecast: pl.DataFrame) -> float:
    """The demand to size for: the P90 of the highest value over the horizon (``max90`` at its end), the same
    simulated futures the P90 date comes from, so a resource with a P90 date always needs more than it has
    (sizing on the highest daily 90th percentile, ``hi80``, advised "add 0 replicas" by a P90 date)."""
    col = "max90" if "max90" in forecast.columns else "hi80"
    return float(forecast[col].max())


def crossing(forecast: pl.DataFrame, limit: float | pl.Expr) -> tuple[datetime | None, datetime | None]:
    """P50 and P90 exhaustion dates: the first forecast day whose ``max50`` and whose ``max90`` exceed
    ``limit`` (the median and 10th percentile of the simulated exhaustion days, :func:`forecast_daily`);
    ``None`` if never. A forecast without those columns uses ``yhat`` and ``hi80``.

    Examples
    --------
    >>> f = pl.DataFrame({"ts": [datetime(2026, 1, d) for d in (1, 2, 3)], "yhat": [5.0, 8.0, 11.0],
    ...                   "hi80": [7.0, 10.5, 14.0]})
    >>> crossing(f, 10.0)
    (datetime.datetime(2026, 1, 3, 0, 0), datetime.datetime(2026, 1, 2, 0, 0))
    """
    f = forecast.sort("ts")
    p50, p90 = PEAK_COLUMNS if all(c in f.columns for c in PEAK_COLUMNS) else ("yhat", "hi80")

    def first(col: str) -> datetime | None:
        hit = f.filter(pl.col(col) > limit)
        return hit["ts"][0] if hit.height else None

    return first(p50), first(p90)


@dataclass(frozen=True)
class ReplicaCapacity:
    """What one replica of a model sustains (decode tokens/s) and why."""

    model: str
    tokens_per_s: float
    basis: str  # latency-slo | kv-cache | observed-max (a lower bound)
    latency_limit: float | None
    kv_limit: float | None
    observed_max: float
    samples: int


def replica_capacity(
    samples: pl.DataFrame, *, latency_slo: float, kv_cache_limit: float, model: str = ""
) -> ReplicaCapacity:
    """Sustainable tokens/s of one replica from per-replica samples ``tokens_per_s, latency, kv`` (any may be
    null): the lower of the latency-SLO knee and the KV-cache limit.

    Latency knee: samples sorted by throughput, the first window of ``max(20, n/20)`` neighbours whose 90th
    percentile latency breaks the SLO; the knee is the lowest throughput in it that broke the SLO (one slow
    sample among twenty is noise, not saturation). KV limit: the Theil–Sen line of KV use against throughput, solved for
    ``kv_cache_limit`` (the cache fills roughly in proportion to tokens in flight).

    Examples
    --------
    >>> x = np.linspace(50, 150, 200)
    >>> s = pl.DataFrame({"tokens_per_s": x, "latency": np.full(200, 0.03), "kv": 0.0017 * x})
    >>> c = replica_capacity(s, latency_slo=0.1, kv_cache_limit=0.9)
    >>> c.basis, round(c.tokens_per_s)
    ('kv-cache', 529)
    """
    from scipy.stats import theilslopes

    s = samples.filter(pl.col("tokens_per_s").is_finite() & (pl.col("tokens_per_s") > 0))
    observed = float(s["tokens_per_s"].max()) if s.height else 0.0
    lat_limit = kv_limit = None
    lat = s.filter(pl.col("latency").is_not_null()).sort("tokens_per_s")
    if lat.height >= 50:
        w = max(20, lat.height // 20)
        rolled = lat.with_columns(
            pl.col("latency").rolling_quantile(0.9, window_size=w, interpolation="higher").alias("p90"),
            pl.int_range(pl.len()).alias("i"),
        )
        first = rolled.filter(pl.col("p90") > latency_slo)
        if first.height:
            i = int(first["i"][0])
            window = lat.slice(max(0, i - w + 1), w).filter(pl.col("latency") > latency_slo)
            lat_limit = float(window["tokens_per_s"].min())
    kv = s.filter(pl.col("kv").is_not_null())
    if kv.height >= 50:
        x, y = kv["tokens_per_s"].to_numpy(), kv["kv"].to_numpy()
        if np.ptp(x) > 0:
            slope, intercept, *_ = theilslopes(y, x)
            if slope > 0:
                kv_limit = float((kv_cache_limit - intercept) / slope)
    limits = {
        k: v for k, v in (("latency-slo", lat_limit), ("kv-cache", kv_limit)) if v is not None and v > 0
    }
    if limits:
        basis = min(limits, key=limits.__getitem__)
        value = limits[basis]
    else:
        basis, value = "observed-max", observed
    return ReplicaCapacity(model, value, basis, lat_limit, kv_limit, observed, s.height)


def scenario_factor(
    scenario: Scenario, labels: Mapping[str, str], tenant_share: Mapping[str, float] | None = None
) -> tuple[float, float]:
    """``(multiplier, add)`` a scenario applies to demand with ``labels``.

    A ``tenant`` matcher applies to the tenant's share of the demand (``tenant_share[tenant]``); other
    matchers must equal the demand's labels. ``add`` goes to demand that matches the non-tenant labels.

    Examples
    --------
    >>> scenario_factor(Scenario("t7 x2", {"tenant": "t7"}, factor=2.0), {"model": "m"}, {"t7": 0.25})
    (1.25, 0.0)
    >>> scenario_factor(Scenario("eu", {"region": "eu"}, factor=3.0), {"region": "us"})
    (1.0, 0.0)
    """
    for k, v in scenario.match.items():
        if k != "tenant" and labels.get(k) != v:
            return 1.0, 0.0
    if "tenant" in scenario.match:
        share = (tenant_share or {}).get(scenario.match["tenant"], 0.0)
        return 1.0 + share * (scenario.factor - 1.0), scenario.add * (1.0 if share > 0 else 0.0)
    return scenario.factor, scenario.add


def apply_scenario(
    forecast: pl.DataFrame, scenario: Scenario, multiplier: float, add: float, now: datetime
) -> pl.DataFrame:
    """Forecast columns scaled by ``multiplier`` and shifted by ``add`` from the scenario's start on."""
    start = scenario.start or now
    cols = [c for c in (*_FORECAST_COLUMNS, *PEAK_COLUMNS) if c in forecast.columns]
    on = pl.col("ts") >= start
    return forecast.with_columns(
        [pl.when(on).then(pl.col(c) * multiplier + add).otherwise(pl.col(c)).alias(c) for c in cols]
    )


# -- the plan over the store -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resource:
    """One constrained resource: its demand history and forecast against a limit."""

    name: str
    kind: str  # gpu | quota | budget
    scope: dict[str, str]
    unit: str
    limit: float
    current: float  # the latest daily peak (or month-to-date spend)
    p50: datetime | None
    p90: datetime | None
    needed: float | None  # replicas / GPUs needed at P90 demand over the horizon (gpu, quota)
    action: str
    monthly_cost: float  # cost of the action (USD per month) or forecast spend (budget)
    note: str
    history: pl.DataFrame  # ts, value
    forecast: pl.DataFrame  # ts, yhat, lo80, hi80, lo95, hi95, model

    def utilisation(self, days: int = 30) -> tuple[float, float] | None:
        """Forecast demand / limit ``days`` ahead at P50 and P90 (``None`` past the forecast or for budgets)."""
        if self.kind == "budget" or self.limit <= 0 or self.forecast.height == 0:
            return None
        at = self.forecast.sort("ts").slice(min(days, self.forecast.height) - 1, 1)
        return float(at["yhat"][0]) / self.limit, float(at["hi80"][0]) / self.limit

    @property
    def headroom(self) -> float:
        return 1.0 - self.current / self.limit if self.limit > 0 else float("nan")


@dataclass(frozen=True)
class Accuracy:
    """How the previous report's forecasts of one resource compare with what happened."""

    resource: str
    report_created: datetime
    days: int
    mape: float
    within80: float
    bias: float


@dataclass(frozen=True)
class CapacityPlan:
    """Everything the capacity report shows."""

    created: datetime
    settings: CapacitySettings
    history_start: datetime
    history_end: datetime
    resources: tuple[Resource, ...]
    replicas: tuple[ReplicaCapacity, ...]
    demand: dict[str, tuple[pl.DataFrame, pl.DataFrame]]  # title -> (daily history, forecast) per series_id
    scenarios: dict[str, tuple[Resource, ...]]
    accuracy: tuple[Accuracy, ...]
    notes: tuple[str, ...]
    #: (model, region) -> tenant -> share of the last week's output tokens: how tenant scenarios apply
    tenant_shares: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)

    def forecasts_frame(self) -> pl.DataFrame:
        """Daily forecasts of every resource (what the next report scores)."""
        frames = [
            r.forecast.select("ts", "yhat", "lo80", "hi80", "lo95", "hi95", "model").with_columns(
                pl.lit(r.name).alias("resource"), pl.lit(r.unit).alias("unit")
            )
            for r in self.resources
            if r.kind != "budget" and r.forecast.height
        ]
        return pl.concat(frames) if frames else pl.DataFrame()


def scenario_resources(
    resources: Sequence[Resource],
    scenario: Scenario,
    tenant_shares: Mapping[tuple[str, str], Mapping[str, float]],
    now: datetime,
) -> tuple[Resource, ...]:
    """The GPU throughput ``resources`` under ``scenario``: forecasts rescaled from the scenario's start (``now``
    when it has none), exhaustion dates read again; quota and budgets are not scenario-dependent."""
    out = []
    for r in resources:
        if r.kind != "gpu":
            continue
        share = tenant_shares.get((r.scope["model"], r.scope["region"]), {})
        mult, add = scenario_factor(scenario, r.scope, share)
        fc = apply_scenario(r.forecast, scenario, mult, add, now)
        p50, p90 = crossing(fc, r.limit)
        out.append(Resource(**{**r.__dict__, "p50": p50, "p90": p90, "forecast": fc}))
    return tuple(out)


def with_scenario(plan: CapacityPlan, scenario: Scenario) -> CapacityPlan:
    """``plan`` with ``scenario`` planned after its configured ones: what :func:`plan_capacity` returns with the
    scenario added to its settings, without reading the store or forecasting again (milliseconds, not seconds)."""
    return replace(
        plan,
        settings=replace(plan.settings, scenarios=(*plan.settings.scenarios, scenario)),
        scenarios={
            **plan.scenarios,
            scenario.name: scenario_resources(plan.resources, scenario, plan.tenant_shares, plan.history_end),
        },
    )


def key_labels(hourly: pl.DataFrame, keys: Sequence[str]) -> dict[str, dict[str, str]]:
    """``series_id`` of :func:`daily_peaks` → its key labels (label values may contain any character)."""
    out: dict[str, dict[str, str]] = {}
    for row in hourly.select(keys).unique().iter_rows(named=True):
        out[" / ".join(row[k] or "" for k in keys)] = {k: row[k] or "" for k in keys}
    return out


def _split(frame: pl.DataFrame, sid: str) -> pl.DataFrame:
    return frame.filter(pl.col("series_id") == sid).drop("series_id")


def _replica_samples(store: Any, settings: CapacitySettings, start: datetime, end: datetime) -> pl.DataFrame:
    from ingest import queries as q

    step = timedelta(minutes=15)
    try:
        tok = q.resample(
            store,
            metric="vllm:generation_tokens_total",
            start=start,
            end=end,
            step=step,
            agg="rate",
            group_by=["instance", "model_name"],
        ).rename({"value": "tokens_per_s"})
    except q.QueryError:  # no vLLM telemetry: no replica capacity to learn (plan_capacity says so)
        return pl.DataFrame()
    if tok.height == 0:
        return tok
    out = tok
    try:
        lat = q.histogram_quantiles(
            store,
            metric=settings.latency_metric,
            start=start,
            end=end,
            step=step,
            quantiles=(settings.latency_quantile,),
            group_by=["instance"],
        ).select("ts", "instance", pl.col("value").alias("latency"))
        out = out.join(lat, on=["ts", "instance"], how="left")
    except q.QueryError:
        out = out.with_columns(pl.lit(None, dtype=pl.Float64).alias("latency"))
    try:
        kv = q.resample(
            store, metric="vllm:gpu_cache_usage_perc", start=start, end=end, step=step, group_by=["instance"]
        ).select("ts", "instance", pl.col("value").alias("kv"))
        out = out.join(kv, on=["ts", "instance"], how="left")
    except q.QueryError:
        out = out.with_columns(pl.lit(None, dtype=pl.Float64).alias("kv"))
    return out


def _hourly(
    store: Any, metric: str, start: datetime, end: datetime, group_by: Sequence[str], **kw: Any
) -> pl.DataFrame:
    from ingest import queries as q

    try:
        return q.resample(
            store, metric=metric, start=start, end=end, step=HOUR, group_by=list(group_by), **kw
        )
    except q.QueryError:
        return pl.DataFrame(schema={"ts": TS, **{g: pl.Utf8 for g in group_by}, "value": pl.Float64})


def _tenant_shares(store: Any, start: datetime, end: datetime) -> dict[tuple[str, str], dict[str, float]]:
    """(model, region) → tenant → share of output tokens over ``[start, end)``."""
    usage = _hourly(store, "output_tokens", start, end, ["tenant", "model", "region"], agg="increase")
    if usage.height == 0:
        return {}
    tot = usage.group_by("tenant", "model", "region").agg(pl.col("value").sum())
    tot = tot.with_columns(
        (pl.col("value") / pl.col("value").sum().over("model", "region")).alias("share")
    ).sort("model", "region", "tenant", nulls_last=True)  # the same plan from the same store, dicts included
    out: dict[tuple[str, str], dict[str, float]] = {}
    for row in tot.iter_rows(named=True):
        out.setdefault((row["model"], row["region"]), {})[row["tenant"]] = float(row["share"] or 0.0)
    return out


def _month_end(ts: datetime) -> datetime:
    return datetime(ts.year + ts.month // 12, ts.month % 12 + 1, 1)


def budget_crossing(
    history: pl.DataFrame, forecast: pl.DataFrame, monthly_usd: float
) -> tuple[datetime | None, datetime | None, float, float]:
    """When month-to-date spend crosses a monthly budget, at P50 and P90.

    ``history`` holds actual daily spend (``ts, value``), ``forecast`` the daily forecast; each calendar month
    accumulates actuals, then forecasts (``yhat`` for P50, ``hi80`` for P90); a month already over budget
    returns the day it went over for both. Returns the two dates, the
    spend so far this month, and the P50 spend forecast for the current month.

    Examples
    --------
    >>> h = pl.DataFrame({"ts": [datetime(2026, 1, d) for d in range(1, 11)], "value": [100.0] * 10})
    >>> f = pl.DataFrame({"ts": [datetime(2026, 1, d) for d in range(11, 32)], "yhat": [100.0] * 21,
    ...                   "hi80": [150.0] * 21})
    >>> p50, p90, mtd, month = budget_crossing(h, f, 2500.0)
    >>> p50.day, p90.day, mtd, month
    (26, 21, 1000.0, 3100.0)
    """
    last = history["ts"].max() if history.height else None
    month_start = datetime(last.year, last.month, 1) if last else None
    actual = history.filter(pl.col("ts") >= month_start) if month_start else history.head(0)
    mtd = float(actual["value"].sum()) if actual.height else 0.0
    if mtd > monthly_usd:  # already over: the day it happened, whatever the forecast says
        over = actual.sort("ts").filter(pl.col("value").cum_sum() > monthly_usd)["ts"][0]
        return over, over, mtd, mtd + float(forecast.filter(pl.col("ts") < _month_end(last))["yhat"].sum())
    fut = forecast.sort("ts").with_columns(pl.col("ts").dt.truncate("1mo").alias("month"))
    dates: list[datetime | None] = []
    for col in ("yhat", "hi80"):
        base = fut.with_columns(
            (
                pl.col(col).cum_sum().over("month")
                + pl.when(pl.col("month") == month_start).then(mtd).otherwise(0.0)
            ).alias("cum")
        )
        hit = base.filter(pl.col("cum") > monthly_usd)
        dates.append(hit["ts"][0] if hit.height else None)
    this_month = mtd + float(fut.filter(pl.col("month") == month_start)["yhat"].sum()) if month_start else 0.0
    return dates[0], dates[1], mtd, this_month


def daily_totals(
    store: Any, metric: str, start: datetime, end: datetime, key: str, top: int = 5
) -> pl.DataFrame:
    """Whole days of a usage metric's increase per ``key`` value: the ``top`` values by total, the rest summed as
    ``other`` (tenant groups: the big tenants one by one, the long tail together)."""
    from ingest import queries as q

    try:
        daily = q.resample(
            store, metric=metric, start=start, end=end, step=timedelta(days=1), agg="increase", group_by=[key]
        )
    except q.QueryError:
        return pl.DataFrame(schema={"series_id": pl.Utf8, "ts": TS, "value": pl.Float64})
    daily = daily.filter(pl.col("ts") >= start, pl.col("ts") + timedelta(days=1) <= end)
    big = (
        daily.group_by(key).agg(pl.col("value").sum()).sort("value", descending=True)[key].head(top).to_list()
    )
    return (
        daily.with_columns(
            pl.when(pl.col(key).is_in(big)).then(pl.col(key)).otherwise(pl.lit("other")).alias("series_id")
        )
        .group_by("series_id", "ts")
        .agg(pl.col("value").sum())
        .sort("series_id", "ts")
    )


def plan_capacity(store: Any, settings: CapacitySettings, *, now: datetime | None = None) -> CapacityPlan:
    """Read demand and supply from the store, forecast, and find each resource's exhaustion dates."""
    from ingest import queries as q
    from ingest import results

    rng = q.time_range(store)
    if rng is None:
        raise ValueError("the store holds no points; ingest telemetry before planning capacity")
    end = (now or rng[1]).replace(minute=0, second=0, microsecond=0)
    start = max(rng[0], end - timedelta(days=settings.history_days))
    created = now or end
    horizon = settings.horizon_days
    notes: list[str] = []
    history_days = (end - start).total_seconds() / 86400
    if history_days < 14:
        notes.append(
            f"Only {history_days:.1f} days of history: trends are uncertain and series under 5 days use the "
            "seasonal naive (flat) forecast. Four weeks or more give dependable exhaustion dates."
        )

    # demand: decode tokens/s per model and region
    tokens = _hourly(store, "vllm:generation_tokens_total", start, end, ["model_name", "region"], agg="rate")
    tok_daily = daily_peaks(tokens, ["model_name", "region"])
    tok_fc = forecast_daily(tok_daily, horizon)
    demand: dict[str, tuple[pl.DataFrame, pl.DataFrame]] = {
        "Decode tokens/s (daily peak hour)": (tok_daily, tok_fc)
    }
    for title, metric, keys, kw in (
        ("Requests/s per service (daily peak hour)", "requests", ["__service__"], {"agg": "rate"}),
        (
            "Concurrent requests per model (daily peak hour)",
            "vllm:num_requests_running",
            ["model_name"],
            {"across": "sum"},
        ),
    ):
        hourly = _hourly(
            store, metric, start, end, [k for k in keys if k != "__service__"] or [q.SERVICE_LABEL], **kw
        )
        if keys == ["__service__"]:
            hourly = (
                hourly.rename({q.SERVICE_LABEL: "service"}) if q.SERVICE_LABEL in hourly.columns else hourly
            )
            keys = ["service"]
        d = daily_peaks(hourly, keys)
        demand[title] = (d, forecast_daily(d, horizon))
    for title, metric, key in (
        ("Output tokens per day by tenant group", "output_tokens", "tenant"),
        ("Cost per day by model (USD)", "cost_usd", "model"),
    ):
        d = daily_totals(store, metric, start, end, key)
        if d.height:
            demand[title] = (d, forecast_daily(d, horizon))

    # supply: what one replica sustains, and how many replicas each model has per region
    samples = _replica_samples(store, settings, max(start, end - timedelta(days=7)), end)
    replicas: list[ReplicaCapacity] = []
    per_model: dict[str, ReplicaCapacity] = {}
    count: dict[tuple[str, str], int] = {}
    if samples.height:
        for model in sorted(samples["model_name"].drop_nulls().unique()):
            cap = replica_capacity(
                samples.filter(pl.col("model_name") == model),
                latency_slo=settings.latency_slo_ms / 1000.0,
                kv_cache_limit=settings.kv_cache_limit,
                model=model,
            )
            replicas.append(cap)
            per_model[model] = cap
        recent = _hourly(
            store,
            "vllm:gpu_cache_usage_perc",
            end - timedelta(days=1),
            end,
            ["model_name", "region", "instance"],
        )
        for row in recent.group_by("model_name", "region").agg(pl.col("instance").n_unique()).iter_rows():
            count[(row[0], row[1])] = int(row[2])
    else:
        notes.append(
            "No vLLM metrics in the store: GPU capacity cannot be learned; only budgets are planned."
        )

    shares = _tenant_shares(store, end - timedelta(days=7), end)
    resources: list[Resource] = []
    gpu_forecasts: dict[str, list[pl.DataFrame]] = {}
    tok_keys = key_labels(tokens, ["model_name", "region"])
    for sid in tok_daily["series_id"].unique().sort():
        model, region = tok_keys[sid]["model_name"], tok_keys[sid]["region"]
        cap = per_model.get(model)
        n = count.get((model, region), 0)
        if cap is None or n == 0 or cap.tokens_per_s <= 0:
            continue
        hist, fc = _split(tok_daily, sid), _split(tok_fc, sid)
        limit = n * cap.tokens_per_s
        p50, p90 = crossing(fc, limit)
        needed = math.ceil(_p90_peak(fc) / cap.tokens_per_s) if fc.height else n
        extra = max(0, needed - n)
        if p90 is None:
            action = f"None within {horizon} days ({n} replicas suffice at P90 demand)."
        else:
            by = p90 - timedelta(days=settings.lead_time_days)
            action = f"Add {extra} {model} replica{'s' if extra != 1 else ''} in {region} by {by:%Y-%m-%d}."
        bound = " (lower bound: no limit reached in the data)" if cap.basis == "observed-max" else ""
        resources.append(
            Resource(
                name=f"GPU throughput {model} {region}",
                kind="gpu",
                scope={"model": model, "region": region},
                unit="tokens/s",
                limit=limit,
                current=float(hist["value"][-1]) if hist.height else 0.0,
                p50=p50,
                p90=p90,
                needed=float(needed),
                action=action,
                monthly_cost=extra * settings.gpu_hour_usd * GPU_HOURS_PER_MONTH,
                note=f"{n} replicas x {cap.tokens_per_s:,.0f} tokens/s each ({cap.basis}{bound})",
                history=hist,
                forecast=fc,
            )
        )
        # GPUs needed; the regional sum of the models' running-maximum percentiles (max50, max90) is an
        # upper bound of the sum's, so a quota's dates err early
        gpu = fc.select(
            "ts", *[(pl.col(c) / cap.tokens_per_s).alias(c) for c in (*_FORECAST_COLUMNS, *PEAK_COLUMNS)]
        )
        gpu_forecasts.setdefault(region, []).append(gpu)
    # GPU quota per region: GPUs needed (sum over models) against the configured quota
    for region, quota in sorted(settings.gpu_quota.items()):
        parts = gpu_forecasts.get(region)
        if not parts:
            notes.append(f"GPU quota for {region} is configured but no model serves there.")
            continue
        fc = (
            pl.concat(parts)
            .group_by("ts")
            .agg(pl.all().sum())
            .sort("ts")
            .with_columns(pl.lit("sum").alias("model"))
        )
        now_gpus = sum(v for (m, r), v in count.items() if r == region)
        p50, p90 = crossing(fc, float(quota))
        needed = math.ceil(_p90_peak(fc))
        action = (
            f"Request {max(1, needed - quota)} more GPUs of quota in {region} before {p90 - timedelta(days=settings.lead_time_days):%Y-%m-%d}."
            if p90 is not None
            else f"None within {horizon} days."
        )
        resources.append(
            Resource(
                name=f"GPU quota {region}",
                kind="quota",
                scope={"region": region},
                unit="GPUs",
                limit=float(quota),
                current=float(now_gpus),
                p50=p50,
                p90=p90,
                needed=float(needed),
                action=action,
                monthly_cost=max(0, needed - quota) * settings.gpu_hour_usd * GPU_HOURS_PER_MONTH,
                note=f"{now_gpus} GPUs serving now; needed = P90 demand / per-replica capacity, summed over models",
                history=pl.DataFrame(schema={"ts": TS, "value": pl.Float64}),
                forecast=fc,
            )
        )
    # budgets: daily spend against monthly limits
    for budget in settings.budgets:
        keys = sorted(budget.match)
        try:
            spend = q.resample(
                store,
                metric="cost_usd",
                matchers=dict(budget.match),
                start=start,
                end=end,
                step=timedelta(days=1),
                agg="increase",
            )
        except q.QueryError as exc:
            notes.append(f"Budget {budget.name}: {exc}")
            continue
        hist = spend.filter(pl.col("ts") < end.replace(hour=0)).select("ts", "value")
        fc = forecast_daily(hist.with_columns(pl.lit("spend").alias("series_id")), horizon).drop("series_id")
        # forecasts start the day after the last full day; the budget month runs to its end
        p50, p90, mtd, month = budget_crossing(hist, fc, budget.monthly_usd)
        scope = ", ".join(f"{k}={budget.match[k]}" for k in keys) or "all spend"
        action = (
            f"Over the {budget.monthly_usd:,.0f} USD monthly budget since {p50:%Y-%m-%d}; review usage or raise the budget."
            if p50 is not None and p50 < end
            else f"Spend reaches the {budget.monthly_usd:,.0f} USD monthly budget on {p50:%Y-%m-%d} (P50); review usage or raise the budget."
            if p50 is not None
            else (
                f"At P90 the budget is reached on {p90:%Y-%m-%d}."
                if p90 is not None
                else f"Within budget for {horizon} days."
            )
        )
        resources.append(
            Resource(
                name=f"Budget {budget.name}",
                kind="budget",
                scope=dict(budget.match),
                unit="USD/month",
                limit=budget.monthly_usd,
                current=mtd,
                p50=p50,
                p90=p90,
                needed=None,
                action=action,
                monthly_cost=month,
                note=f"{scope}; month-to-date {mtd:,.0f} USD, this month at P50 {month:,.0f} USD",
                history=hist,
                forecast=fc,
            )
        )
    resources.sort(key=lambda r: (r.p90 is None, r.p90 or datetime.max, r.name))

    scen = {s.name: scenario_resources(resources, s, shares, end) for s in settings.scenarios}

    accuracy = _accuracy(results.previous_capacity_forecasts(store, created), resources, tok_daily)
    return CapacityPlan(
        created=created,
        settings=settings,
        history_start=start,
        history_end=end,
        resources=tuple(resources),
        replicas=tuple(replicas),
        demand=demand,
        scenarios=scen,
        accuracy=accuracy,
        notes=tuple(notes),
        tenant_shares=shares,
    )


def _accuracy(
    previous: pl.DataFrame, resources: Sequence[Resource], _daily: pl.DataFrame
) -> tuple[Accuracy, ...]:
    if previous.height == 0:
        return ()
    out = []
    actual = {r.name: r.history for r in resources if r.history.height}
    for name, group in previous.group_by("resource"):
        hist = actual.get(str(name[0]))
        if hist is None:
            continue
        j = group.join(hist, on="ts", how="inner")
        if j.height == 0:
            continue
        err = (j["value"] - j["yhat"]).to_numpy()
        val = j["value"].to_numpy()
        inside = ((j["value"] >= j["lo80"]) & (j["value"] <= j["hi80"])).mean()
        out.append(
            Accuracy(
                resource=str(name[0]),
                report_created=group["created"][0],
                days=j.height,
                mape=float(np.mean(np.abs(err) / np.maximum(np.abs(val), 1e-9))),
                within80=float(inside or 0.0),
                bias=float(np.mean(-err / np.maximum(np.abs(val), 1e-9))),
            )
        )
    return tuple(sorted(out, key=lambda a: a.resource))
