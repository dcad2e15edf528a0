"""Query helpers against a real DuckDB file: catalog, matchers, resampling, histograms, spans/topology."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from ingest import queries as q
from ingest import schema
from ingest.batch import MetricBuilder, TelemetryBatch, labels_list
from ingest.queries import Matcher, QueryError, UnknownNameError

T0 = datetime(2024, 3, 1)
MIN = timedelta(minutes=1)


def ns(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1)) // timedelta(microseconds=1) * 1000


def add_series(
    b: MetricBuilder,
    metric: str,
    kind: str,
    labels: dict[str, str],
    values,
    *,
    service="api",
    start=T0,
    every=MIN,
) -> int:
    sid = b.series(metric, service, kind, "1", labels)
    for i, v in enumerate(values):
        if v is not None:
            assert b.point(sid, ns(start + i * every), float(v), f"{metric}:{i}")
    return sid


@pytest.fixture
def catalog_store(store):
    """Three series of a gauge with tenant/region labels (one without region) plus a counter elsewhere."""
    b = MetricBuilder("test")
    add_series(b, "latency", "gauge", {"tenant": "acme", "region": "eu"}, [1, 2, 3])
    add_series(b, "latency", "gauge", {"tenant": "globex", "region": "us"}, [4, 5, 6])
    add_series(b, "latency", "gauge", {"tenant": "initech"}, [7, 8, 9])
    add_series(b, "requests", "counter", {"tenant": "acme", "model": "m1"}, [0, 5, 10], service="router")
    store.append(b.build())
    return store


# -- catalog -------------------------------------------------------------------------------------------
def test_catalog_lists_services_metrics_labels_and_values(catalog_store):
    s = catalog_store
    assert q.services(s) == ["api", "router"]
    m = q.metrics(s)
    assert m.columns == ["metric", "kind", "unit", "series"]
    assert m.rows() == [("latency", "gauge", "1", 3), ("requests", "counter", "1", 1)]
    assert q.metrics(s, service="router")["metric"].to_list() == ["requests"]
    assert q.label_names(s) == ["model", "region", "tenant"]
    assert q.label_names(s, "latency") == ["region", "tenant"]
    assert q.label_values(s, "tenant") == ["acme", "globex", "initech"]
    assert q.label_values(s, "tenant", metric="requests") == ["acme"]
    assert q.label_values(s, "region", service="api", limit=1) == ["eu"]
    assert q.label_values(s, q.SERVICE_LABEL) == ["api", "router"]
    assert q.time_range(s) == (T0, T0 + 2 * MIN)


def test_time_range_of_empty_store_is_none(store):
    assert q.time_range(store) is None
    assert q.services(store) == []
    assert q.metrics(store).height == 0


def test_unknown_names_fail_with_the_known_ones(catalog_store):
    with pytest.raises(UnknownNameError, match=r"unknown label 'tenat' \(did you mean 'tenant'\?\)") as err:
        q.find_series(catalog_store, metric="latency", matchers={"tenat": "acme"})
    # the metric's own labels first, then the others
    assert "known labels: region, tenant, model, __service__" in str(err.value)
    with pytest.raises(UnknownNameError, match="unknown label 'zone'; known labels: region, tenant"):
        q.resample(catalog_store, metric="latency", start=T0, end=T0 + 3 * MIN, step=MIN, group_by=["zone"])
    with pytest.raises(UnknownNameError, match=r"no such metric 'latncy' \(did you mean 'latency'\?\)"):
        q.resample(catalog_store, metric="latncy", start=T0, end=T0 + 3 * MIN, step=MIN)
    with pytest.raises(UnknownNameError, match="no such service 'payments'; known services: api, router"):
        q.metrics(catalog_store, service="payments")
    with pytest.raises(UnknownNameError, match="unknown label"):
        q.label_values(catalog_store, "colour")


# -- matchers ------------------------------------------------------------------------------------------
def _tenants(frame: pl.DataFrame) -> list[str]:
    return sorted(
        next(kv["value"] for kv in labels if kv["key"] == "tenant") for labels in frame["labels"].to_list()
    )


@pytest.mark.parametrize(
    ("matchers", "expected"),
    [
        ([Matcher("tenant", "=", "acme")], ["acme"]),
        ({"tenant": "globex"}, ["globex"]),
        ([Matcher("tenant", "!=", "acme")], ["globex", "initech"]),
        ([Matcher("tenant", "=~", "acme|glob.*")], ["acme", "globex"]),
        ([Matcher("tenant", "=~", "acm")], []),  # fully anchored, like PromQL
        ([Matcher("tenant", "!~", "acme|globex")], ["initech"]),
        # a missing label is the empty string (PromQL): != keeps, ="" selects series without region
        ([Matcher("region", "!=", "eu")], ["globex", "initech"]),
        ([Matcher("region", "=", "")], ["initech"]),
        ([Matcher("region", "=~", ".+")], ["acme", "globex"]),
        ([Matcher("region", "=~", "eu|us"), Matcher("tenant", "!=", "acme")], ["globex"]),
    ],
)
def test_matchers(catalog_store, matchers, expected):
    found = q.find_series(catalog_store, metric="latency", matchers=matchers)
    assert _tenants(found) == expected


def test_find_series_frame_and_service_pseudo_label(catalog_store):
    found = q.find_series(catalog_store, matchers=[Matcher(q.SERVICE_LABEL, "=~", "rout.*")])
    assert found.schema == pl.Schema(schema.SERIES)
    assert found.height == 1
    row = found.row(0, named=True)
    assert (row["metric"], row["service"], row["kind"]) == ("requests", "router", "counter")
    assert row["labels"] == labels_list({"tenant": "acme", "model": "m1"})
    assert q.find_series(catalog_store, metric="latency", service="api").height == 3


def test_matcher_validation(catalog_store):
    with pytest.raises(QueryError, match="operator"):
        Matcher("tenant", "==", "x")
    with pytest.raises(QueryError, match="invalid regular expression"):
        q.find_series(catalog_store, matchers=[Matcher("tenant", "=~", "a((")])
    with pytest.raises(QueryError, match="sequence of Matcher"):
        q.find_series(catalog_store, matchers="tenant=acme")


def test_sql_injection_is_harmless(catalog_store):
    s = catalog_store
    points = s.count("points")
    # values are bound parameters: they match nothing and change nothing
    for evil in ["acme' OR '1'='1", "'; DROP TABLE points; --", "acme\\' OR 1=1 --"]:
        assert q.find_series(s, metric="latency", matchers={"tenant": evil}).height == 0
        assert q.find_series(s, matchers=[Matcher("tenant", "=~", f".*{evil}")]).height == 0
        out = q.resample(s, metric="latency", matchers={"tenant": evil}, start=T0, end=T0 + 3 * MIN, step=MIN)
        assert out.height == 0
    # names are checked against the catalog first
    for evil in ["tenant'] OR 1=1 --", 'tenant" FROM series; DROP TABLE points; --']:
        with pytest.raises(UnknownNameError, match="unknown label"):
            q.find_series(s, matchers={evil: "x"})
        with pytest.raises(UnknownNameError, match="unknown label"):
            q.resample(s, metric="latency", start=T0, end=T0 + 3 * MIN, step=MIN, group_by=[evil])
    with pytest.raises(UnknownNameError, match="no such metric"):
        q.resample(s, metric="latency' OR 1=1; DROP TABLE points; --", start=T0, end=T0 + MIN, step=MIN)
    assert s.count("points") == points
    assert s.count("series") == 4


# -- resample ------------------------------------------------------------------------------------------
@pytest.fixture
def gauge_store(store):
    """Two gauge series sampled every minute for 10 minutes: a = 0..9, b = 10 * (0..9)."""
    b = MetricBuilder("test")
    add_series(b, "gpu_util", "gauge", {"tenant": "a", "model": "m1"}, range(10))
    add_series(b, "gpu_util", "gauge", {"tenant": "b", "model": "m1"}, [10 * i for i in range(10)])
    store.append(b.build())
    return store


def _resample(store, **kw):
    kw.setdefault("start", T0)
    kw.setdefault("end", T0 + 10 * MIN)
    kw.setdefault("step", 5 * MIN)
    return q.resample(store, **kw)


def test_resample_gauge_aggregations_by_hand(gauge_store):
    s = gauge_store
    by = ["tenant"]
    out = _resample(s, metric="gpu_util", group_by=by)  # auto = avg for gauges
    assert out.columns == ["ts", "tenant", "value"]
    assert out.rows() == [
        (T0, "a", 2.0),
        (T0, "b", 20.0),
        (T0 + 5 * MIN, "a", 7.0),
        (T0 + 5 * MIN, "b", 70.0),
    ]
    assert _resample(s, metric="gpu_util", agg="sum", group_by=by)["value"].to_list() == [10, 100, 35, 350]
    assert _resample(s, metric="gpu_util", agg="min", group_by=by)["value"].to_list() == [0, 0, 5, 50]
    assert _resample(s, metric="gpu_util", agg="max", group_by=by)["value"].to_list() == [4, 40, 9, 90]
    assert _resample(s, metric="gpu_util", agg="count", group_by=by)["value"].to_list() == [5, 5, 5, 5]
    assert _resample(s, metric="gpu_util", agg="last", group_by=by)["value"].to_list() == [4, 40, 9, 90]
    # across series: avg of all samples; sum of per-series averages; max of per-series maxima
    assert _resample(s, metric="gpu_util")["value"].to_list() == [11.0, 38.5]
    assert _resample(s, metric="gpu_util", agg="avg", across="sum")["value"].to_list() == [22.0, 77.0]
    assert _resample(s, metric="gpu_util", agg="last", across="max")["value"].to_list() == [40.0, 90.0]
    assert _resample(s, metric="gpu_util", agg="sum")["value"].to_list() == [110.0, 385.0]


def test_resample_aligns_buckets_to_the_epoch(gauge_store):
    # start/end inside buckets are floored/ceiled to whole 5-minute buckets
    out = _resample(
        gauge_store, metric="gpu_util", start=T0 + 2 * MIN, end=T0 + 6 * MIN, matchers={"tenant": "a"}
    )
    assert out.rows() == [(T0, 2.0), (T0 + 5 * MIN, 7.0)]
    # a 7-minute step starts at multiples of 7 minutes since 1970-01-01, not at the query start
    out = _resample(gauge_store, metric="gpu_util", step=7 * MIN, matchers={"tenant": "a"}, agg="count")
    first = (ns(T0) // 1000) // (7 * 60_000_000) * (7 * 60_000_000)
    assert out["ts"][0] == datetime(1970, 1, 1) + timedelta(microseconds=first)
    assert out["value"].sum() == 10
    # aware datetimes are converted to UTC
    aware = _resample(gauge_store, metric="gpu_util", start=T0.replace(tzinfo=UTC), end=T0 + 10 * MIN)
    assert aware["value"].to_list() == [11.0, 38.5]


def test_resample_group_by_two_labels_and_null_group(store):
    b = MetricBuilder("test")
    add_series(b, "tokens", "gauge", {"tenant": "a", "model": "m1"}, [1, 1])
    add_series(b, "tokens", "gauge", {"tenant": "a", "model": "m2"}, [2, 2])
    add_series(b, "tokens", "gauge", {"tenant": "b", "model": "m1"}, [3, 3])
    add_series(b, "tokens", "gauge", {"tenant": "b", "model": "m1", "zone": "z"}, [5, 5])
    add_series(b, "tokens", "gauge", {"model": "m2"}, [4, 4])  # no tenant: null group
    store.append(b.build())
    out = q.resample(
        store,
        metric="tokens",
        start=T0,
        end=T0 + 2 * MIN,
        step=2 * MIN,
        agg="avg",
        across="sum",
        group_by=["tenant", "model"],
    )
    assert out.columns == ["ts", "tenant", "model", "value"]
    assert out.rows() == [
        (T0, "a", "m1", 1.0),
        (T0, "a", "m2", 2.0),
        (T0, "b", "m1", 8.0),
        (T0, None, "m2", 4.0),
    ]
    with pytest.raises(QueryError, match="repeats"):
        q.resample(store, metric="tokens", start=T0, end=T0 + MIN, step=MIN, group_by=["tenant", "tenant"])
    with pytest.raises(QueryError, match="sequence of label names"):
        q.resample(store, metric="tokens", start=T0, end=T0 + MIN, step=MIN, group_by="tenant")


def test_counter_rate_and_increase_by_hand(store):
    b = MetricBuilder("test")
    # every minute; increases 10, 10, 10, 10 | 20, 20, 20, 20, 20 (first sample has no predecessor)
    add_series(b, "req_total", "counter", {"tenant": "a"}, [0, 10, 20, 30, 40, 60, 80, 100, 120, 140])
    add_series(b, "req_total", "counter", {"tenant": "b"}, [5] * 10)  # flat: rate 0
    store.append(b.build())
    kw = dict(metric="req_total", start=T0, end=T0 + 10 * MIN, step=5 * MIN, group_by=["tenant"])
    out = q.resample(store, **kw)  # auto = rate
    assert out.rows() == [
        (T0, "a", 40 / 300),
        (T0, "b", 0.0),
        (T0 + 5 * MIN, "a", 100 / 300),
        (T0 + 5 * MIN, "b", 0.0),
    ]
    assert q.resample(store, **{**kw, "agg": "increase"})["value"].to_list() == [40, 0, 100, 0]
    # a window starting later takes the sample just before it as the first predecessor
    later = q.resample(store, **{**kw, "start": T0 + 5 * MIN, "agg": "increase"})
    assert later.rows() == [(T0 + 5 * MIN, "a", 100.0), (T0 + 5 * MIN, "b", 0.0)]
    # raw cumulative values are still available: max is the counter's value
    assert q.resample(store, **{**kw, "agg": "max"})["value"].to_list() == [40, 5, 140, 5]


def test_counter_reset_follows_prometheus(store):
    b = MetricBuilder("test")
    # 0, 10, 20 | restart: 3, 8, 18 | 28: increases 10, 10, 3 (the drop counts the new value), 5, 10, 10
    add_series(b, "req_total", "counter", {}, [0, 10, 20, 3, 8, 18, 28])
    store.append(b.build())
    out = q.resample(
        store, metric="req_total", start=T0, end=T0 + 7 * MIN, step=timedelta(hours=1), agg="increase"
    )
    assert out["value"].to_list() == [48.0]
    per_min = q.resample(store, metric="req_total", start=T0, end=T0 + 7 * MIN, step=MIN, agg="rate")
    assert per_min["value"].to_list() == pytest.approx([10 / 60, 10 / 60, 3 / 60, 5 / 60, 10 / 60, 10 / 60])
    assert per_min["ts"][0] == T0 + MIN  # the first sample alone has no rate


def test_delta_rate_sums_increments(store):
    b = MetricBuilder("test")
    add_series(b, "req", "delta", {"tenant": "a"}, [1, 2, 3, 4, 5, 6])
    add_series(b, "req", "delta", {"tenant": "b"}, [10, 10, 10, 10, 10, 10])
    store.append(b.build())
    out = q.resample(store, metric="req", start=T0, end=T0 + 6 * MIN, step=3 * MIN)
    assert out["value"].to_list() == pytest.approx([36 / 180, 45 / 180])
    inc = q.resample(
        store, metric="req", start=T0, end=T0 + 6 * MIN, step=3 * MIN, agg="increase", group_by=["tenant"]
    )
    assert inc["value"].to_list() == [6, 30, 15, 30]


def test_counter_and_delta_series_of_one_metric_combine(store):
    b = MetricBuilder("test")
    add_series(b, "req", "counter", {"src": "prom"}, [100, 110, 120, 130])
    add_series(b, "req", "delta", {"src": "otlp"}, [1, 2, 3, 4])
    store.append(b.build())
    out = q.resample(
        store, metric="req", start=T0, end=T0 + 4 * MIN, step=4 * MIN, agg="increase", group_by=["src"]
    )
    assert out.rows() == [(T0, "otlp", 10.0), (T0, "prom", 30.0)]


def test_resample_series_is_per_series(gauge_store):
    out = q.resample_series(gauge_store, metric="gpu_util", start=T0, end=T0 + 10 * MIN, step=5 * MIN)
    assert out.columns == ["series_id", "ts", "value"]
    ids = q.find_series(gauge_store, metric="gpu_util").select("series_id", "labels")
    joined = out.join(ids, on="series_id").sort("value")
    assert joined["value"].to_list() == [2.0, 7.0, 20.0, 70.0]


def test_resample_rejects_bad_requests(gauge_store, store):
    s = gauge_store
    with pytest.raises(QueryError, match="rate needs a counter or delta metric; 'gpu_util' is gauge"):
        _resample(s, metric="gpu_util", agg="rate")
    with pytest.raises(QueryError, match="agg must be one of"):
        _resample(s, metric="gpu_util", agg="p99")
    with pytest.raises(QueryError, match="across must be one of"):
        _resample(s, metric="gpu_util", across="median")
    with pytest.raises(QueryError, match="must be after start"):
        _resample(s, metric="gpu_util", end=T0)
    with pytest.raises(QueryError, match="positive timedelta"):
        _resample(s, metric="gpu_util", step=timedelta(0))
    with pytest.raises(QueryError, match="buckets"):
        _resample(s, metric="gpu_util", end=T0 + timedelta(days=400), step=timedelta(seconds=1))
    # no matching series: an empty, typed frame
    empty = _resample(s, metric="gpu_util", matchers={"tenant": "zzz"}, group_by=["model"])
    assert empty.schema == pl.Schema({"ts": schema.TS, "model": pl.Utf8, "value": pl.Float64})


def test_series_points(gauge_store):
    ids = q.find_series(gauge_store, metric="gpu_util", matchers={"tenant": "b"})["series_id"].to_list()
    pts = q.series_points(gauge_store, ids, start=T0 + 2 * MIN, end=T0 + 4 * MIN)
    assert pts.schema == pl.Schema(schema.POINTS)
    assert pts["value"].to_list() == [20.0, 30.0]
    assert q.series_points(gauge_store, []).height == 0


# -- histograms ----------------------------------------------------------------------------------------
def prometheus_quantile(q_: float, bounds: list[float], counts: np.ndarray) -> float:
    """Reference: Prometheus bucketQuantile on per-bucket counts (last = +Inf bucket), numpy only."""
    cum = np.cumsum(counts)
    total = cum[-1]
    rank = q_ * total
    b = int(np.searchsorted(cum[:-1], rank, side="left"))  # first bucket with cum >= rank, +Inf excluded
    if b == len(bounds):
        return bounds[-1]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start = bounds[b - 1] if b > 0 else 0.0
    below = cum[b - 1] if b > 0 else 0.0
    return start + (bounds[b] - start) * (rank - below) / (cum[b] - below)


def add_histograms(store, rows, metric="latency_seconds", labels=None):
    """rows: (minute, bounds, per-bucket counts, cumulative) for one series."""
    b = MetricBuilder("test")
    sid = b.series(metric, "api", "histogram", "s", labels or {})
    for minute, bounds, counts, cumulative in rows:
        total = float(sum(counts))
        assert b.histogram(
            sid,
            ns(T0 + minute * MIN),
            total,
            total * 0.1,
            None,
            None,
            list(bounds),
            [float(c) for c in counts],
            cumulative,
            "h",
        )
    store.append(b.build())


def test_histogram_quantile_matches_prometheus_hand_example(store):
    # delta histogram, bounds 0.1, 0.2, 1 (+Inf): 50, 20, 40, 10 observations (cumulative 50, 70, 110, 120)
    add_histograms(store, [(0, [0.1, 0.2, 1.0], [50, 20, 40, 10], False)])
    out = q.histogram_quantiles(
        store,
        metric="latency_seconds",
        start=T0,
        end=T0 + MIN,
        step=MIN,
        quantiles=(0.25, 0.5, 0.75, 0.95, 1.0),
    )
    assert out.columns == ["ts", "quantile", "value"]
    # rank 30 in the first bucket [0, 0.1]: 0.1 * 30/50; rank 60 in (0.1, 0.2]: 0.1 + 0.1 * 10/20;
    # rank 90 in (0.2, 1]: 0.2 + 0.8 * 20/40; ranks 114 and 120 fall in +Inf: the highest finite bound
    assert out["value"].to_list() == pytest.approx([0.06, 0.15, 0.6, 1.0, 1.0])


def test_histogram_quantile_non_positive_lowest_bucket(store):
    add_histograms(store, [(0, [-1.0, 0.0, 1.0], [4, 2, 4, 0], False)])
    out = q.histogram_quantiles(
        store, metric="latency_seconds", start=T0, end=T0 + MIN, step=MIN, quantiles=(0.2, 0.5, 0.8)
    )
    # lowest bucket with upper bound <= 0 returns that bound; then linear inside (-1, 0] and (0, 1]
    assert out["value"].to_list() == pytest.approx([-1.0, -0.5, 0.5])


def test_histogram_quantiles_vs_numpy_reference(store):
    rng = np.random.default_rng(7)
    bounds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
    minutes = 20
    samples = {
        s: [rng.lognormal(-2.0 + s, 0.8, size=int(rng.integers(50, 200))) for _ in range(minutes)]
        for s in range(2)
    }

    def per_bucket(x):
        return np.bincount(np.searchsorted(bounds, x, side="left"), minlength=len(bounds) + 1)

    # series 0 exports cumulative counts and restarts (counter reset) at minute 12; series 1 exports deltas
    cum_rows, acc = [], np.zeros(len(bounds) + 1)
    for m in range(minutes):
        acc = per_bucket(samples[0][m]) if m == 12 else acc + per_bucket(samples[0][m])
        cum_rows.append((m, bounds, acc.copy(), True))
    add_histograms(store, cum_rows, labels={"pod": "p0"})
    add_histograms(
        store, [(m, bounds, per_bucket(samples[1][m]), False) for m in range(minutes)], labels={"pod": "p1"}
    )

    qs = (0.5, 0.9, 0.99)
    out = q.histogram_quantiles(
        store, metric="latency_seconds", start=T0, end=T0 + minutes * MIN, step=5 * MIN, quantiles=qs
    )
    assert out.height == 4 * len(qs)
    for k in range(4):
        minutes_in = range(5 * k, 5 * k + 5)
        # cumulative series: the first point has no predecessor, so minute 0's observations are not counted
        obs = [samples[0][m] for m in minutes_in if m > 0] + [samples[1][m] for m in minutes_in]
        x = np.concatenate(obs)
        counts = per_bucket(x)
        got = out.filter(pl.col("ts") == T0 + 5 * k * MIN).sort("quantile")["value"].to_numpy()
        want = [prometheus_quantile(qq, bounds, counts) for qq in qs]
        np.testing.assert_allclose(got, want, rtol=1e-9)
        # and the estimate is within a bucket of the exact sample quantile
        exact = np.quantile(x, qs)
        gap = np.searchsorted(bounds, got, side="left") - np.searchsorted(bounds, exact, side="left")
        assert (np.abs(gap) <= 1).all()

    by_pod = q.histogram_quantiles(
        store,
        metric="latency_seconds",
        start=T0,
        end=T0 + minutes * MIN,
        step=5 * MIN,
        quantiles=[0.5],
        group_by=["pod"],
    )
    assert by_pod.columns == ["ts", "pod", "quantile", "value"]
    assert by_pod.height == 8
    x = np.concatenate(samples[1][:5])
    p1 = by_pod.filter((pl.col("pod") == "p1") & (pl.col("ts") == T0))["value"].item()
    assert p1 == pytest.approx(prometheus_quantile(0.5, bounds, per_bucket(x)))


def test_histograms_with_different_bounds_merge_like_sum_by_le(store):
    add_histograms(store, [(0, [1.0, 2.0], [2, 2, 0], False)], labels={"pod": "a"})
    add_histograms(store, [(0, [2.0, 4.0], [4, 4, 0], False)], labels={"pod": "b"})
    out = q.histogram_quantiles(
        store, metric="latency_seconds", start=T0, end=T0 + MIN, step=MIN, quantiles=(0.1, 0.5, 0.9)
    )
    # cumulative counts per distinct le: 1 -> 2 (a only), 2 -> 4 + 4, 4 -> 8 (b only: a's 4 observations are
    # not counted there, as with Prometheus `sum by (le)`), +Inf -> 12.
    # q=0.1: rank 1.2 in [0, 1]; q=0.5: rank 6 in (1, 2]; q=0.9: rank 10.8 lands in +Inf -> 4
    assert out["value"].to_list() == pytest.approx([0.6, 1 + (6 - 2) / (8 - 2), 4.0])


def test_histogram_mean_and_kind_checks(store):
    add_histograms(store, [(0, [1.0], [1, 0], True), (1, [1.0], [4, 1], True), (2, [1.0], [6, 4], True)])
    out = q.histogram_mean(store, metric="latency_seconds", start=T0, end=T0 + 3 * MIN, step=3 * MIN)
    # sum is 0.1 * count: mean 0.1; observations 9 (from 1 to 10)
    assert out.rows() == [(T0, pytest.approx(0.1), 9.0)]
    b = MetricBuilder("test")
    add_series(b, "gpu_util", "gauge", {}, [1])
    store.append(b.build())
    with pytest.raises(QueryError, match="not a histogram"):
        q.histogram_quantiles(store, metric="gpu_util", start=T0, end=T0 + MIN, step=MIN)
    with pytest.raises(QueryError, match="histogram_quantiles"):
        q.resample(store, metric="latency_seconds", start=T0, end=T0 + MIN, step=MIN)
    with pytest.raises(QueryError, match=r"in \[0, 1\]"):
        q.histogram_quantiles(
            store, metric="latency_seconds", start=T0, end=T0 + MIN, step=MIN, quantiles=[95]
        )


# -- spans, topology, events, logs, rejects ---------------------------------------------------------------
def _span(trace, span, parent, service, start_min, duration, status="ok", **extra):
    row = {c: None for c in schema.SPANS}
    row.update(
        trace_id=trace,
        span_id=span,
        parent_span_id=parent,
        service=service,
        name=f"{service} op",
        kind="server",
        start=T0 + start_min * MIN,
        duration=float(duration),
        status=status,
        attributes=[],
        resource=[],
        events="[]",
    )
    row.update(extra)
    return row


@pytest.fixture
def span_store(store):
    rows = []
    for i in range(10):
        t = f"ab{i:030x}"
        rows.append(_span(t, f"{i:014x}01", None, "gateway", i, 100))
        rows.append(_span(t, f"{i:014x}02", f"{i:014x}01", "router", i, 50 + i, "error" if i < 2 else "ok"))
        rows.append(_span(t, f"{i:014x}03", f"{i:014x}02", "vllm", i, 40))
        rows.append(_span(t, f"{i:014x}04", f"{i:014x}03", "vllm", i, 10))  # same service: no edge
    spans = pl.DataFrame(rows, schema=schema.SPANS)
    edges = pl.DataFrame(
        {
            "source": ["router", "router"],
            "target": ["vllm", "feature-store"],
            "origin": ["config", "mesh"],
            "ts": [T0, T0],
        },
        schema=schema.EDGES,
    )
    events = pl.DataFrame(
        {
            "event_id": ["e1", "e2", "e3"],
            "ts": [T0, T0 + MIN, T0 + 2 * MIN],
            "service": ["router", "vllm", "router"],
            "kind": ["deploy", "model_rollout", "config"],
            "title": ["v2", "m2", "flag"],
            "attributes": [labels_list({"version": "2"}), [], []],
        },
        schema=schema.EVENTS,
    )
    logs = pl.DataFrame(
        {
            "log_id": ["l1", "l2", "l3", "l4"],
            "ts": [T0, T0 + MIN, T0 + 2 * MIN, T0 + 3 * MIN],
            "service": ["router"] * 4,
            "severity": ["INFO", "ERROR", "warn", "DEBUG"],
            "severity_number": [9, 17, None, None],
            "body": ["ok", "boom", "slow", "x"],
            "trace_id": [None] * 4,
            "span_id": [None] * 4,
            "tenant": [None] * 4,
            "attributes": [[]] * 4,
            "template_id": [None] * 4,
        },
        schema=schema.LOGS,
    )
    store.append(TelemetryBatch(spans=spans, edges=edges, events=events, logs=logs))
    return store


def test_topology_merges_span_and_declared_edges(span_store):
    topo = q.topology(span_store)
    assert topo.columns == ["source", "target", "calls", "errors", "p50_duration", "p95_duration", "origin"]
    rows = {(r["source"], r["target"]): r for r in topo.iter_rows(named=True)}
    assert set(rows) == {("gateway", "router"), ("router", "vllm"), ("router", "feature-store")}
    gw = rows[("gateway", "router")]
    assert (gw["calls"], gw["errors"], gw["origin"]) == (10, 2, "spans")
    assert gw["p50_duration"] == pytest.approx(np.quantile(np.arange(50, 60), 0.5))
    assert gw["p95_duration"] == pytest.approx(np.quantile(np.arange(50, 60), 0.95))
    assert (rows[("router", "vllm")]["calls"], rows[("router", "vllm")]["origin"]) == (10, "both")
    fs = rows[("router", "feature-store")]
    assert (fs["calls"], fs["origin"], fs["p50_duration"]) == (0, "config", None)
    window = q.topology(span_store, start=T0 + 5 * MIN, end=T0 + 7 * MIN)
    assert window.filter(pl.col("source") == "gateway")["calls"].item() == 2


def test_span_attributes_round_trip(store):
    """Regression: the store once inserted span columns out of order (events before the two maps)."""
    row = _span(
        "c" * 32,
        "d" * 16,
        None,
        "api",
        0,
        1.0,
        attributes=labels_list({"tenant": "acme"}),
        resource=labels_list({"host": "h1"}),
        events='[{"name": "retry"}]',
    )
    store.append(TelemetryBatch(spans=pl.DataFrame([row], schema=schema.SPANS)))
    got = q.spans(store).row(0, named=True)
    assert got["attributes"] == labels_list({"tenant": "acme"})
    assert got["resource"] == labels_list({"host": "h1"})
    assert got["events"] == '[{"name": "retry"}]'


def test_spans_events_logs_filters(span_store):
    s = span_store
    assert q.spans(s, T0, T0 + 2 * MIN).height == 8
    one = q.spans(s, service="router", status="error")
    assert one.schema == pl.Schema(schema.SPANS) and one.height == 2
    assert q.spans(s, trace_id=f"AB{3:030x}").height == 4  # trace ids are compared lowercase
    assert q.spans(s, limit=3)["start"].to_list() == [T0] * 3
    ev = q.events(s, service="router")
    assert ev["event_id"].to_list() == ["e1", "e3"]
    assert ev["attributes"][0].to_list() == [{"key": "version", "value": "2"}]
    assert q.events(s, kinds=["model_rollout"], service=["vllm", "router"])["event_id"].to_list() == ["e2"]
    assert q.events(s, start=T0 + MIN, end=T0 + 2 * MIN)["event_id"].to_list() == ["e2"]
    with pytest.raises(QueryError, match="unknown event kind 'deploys'"):
        q.events(s, kinds=["deploys"])
    assert q.logs(s, severity="warn")["log_id"].to_list() == ["l2", "l3"]  # text fallback for "warn"
    assert q.logs(s, severity="ERROR")["log_id"].to_list() == ["l2"]
    assert q.logs(s, T0, T0 + 2 * MIN).height == 2
    with pytest.raises(QueryError, match="unknown severity"):
        q.logs(s, severity="loud")


def test_rejects_newest_first(store):
    b = MetricBuilder("feed.txt")
    sid = b.series("m", "api", "gauge", "", {})
    b.point(sid, ns(T0), float("nan"), "line 1")
    b.point(sid, ns(T0), float("inf"), "line 2")
    store.append(b.build())
    out = q.rejects(store, limit=1)
    assert out.height == 1
    assert out["location"].item() == "line 2"
    assert "not a finite number" in out["reason"].item()


def test_queries_from_several_threads_while_appending(gauge_store):
    """Each thread reads through its own cursor; appends from another thread do not disturb reads."""
    from concurrent.futures import ThreadPoolExecutor

    def read(_):
        out = _resample(gauge_store, metric="gpu_util", group_by=["tenant"])
        return out.filter(pl.col("ts") == T0)["value"].to_list()

    def write(i):
        b = MetricBuilder("bg")
        add_series(b, "other", "gauge", {"tenant": "z"}, [i], start=T0 + timedelta(hours=1 + i))
        gauge_store.append(b.build())
        return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: write(i) if i % 4 == 0 else read(i), range(24)))
    assert all(r == [2.0, 20.0] for r in results if r is not None)
    assert gauge_store.count("points") == 20 + 6


def test_service_overview_counts_per_service(store):

    b = MetricBuilder(source="t")
    for svc, n in (("api", 3), ("db", 1)):
        for i in range(n):
            sid = b.series("requests", svc, "counter", "1", {"tenant": f"t{i}"})
            b.point(sid, 1_767_225_600 * 10**9, 1.0, "x")
    store.append(b.build())
    ov = q.service_overview(store)
    assert ov["service"].to_list() == ["api", "db"]
    assert ov["series"].to_list() == [3, 1]
    assert ov["last_point"].to_list()[0] == datetime(2026, 1, 1)
