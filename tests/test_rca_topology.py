"""TopologyAnalyser and service_graph on small labelled fixtures: the dependency in trouble ranks first."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from rca.base import FrameView, RcaIncident
from rca.topology import TopologyAnalyser, downstream, prepare_spans, service_graph

T0 = datetime(2026, 3, 1, 12, 0)
ONSET = T0 + timedelta(seconds=120)
INCIDENT = RcaIncident(
    "web", "latency_p90", ONSET, T0 + timedelta(seconds=240), baseline=timedelta(seconds=120)
)
SPAN_COLUMNS = ["trace_id", "span_id", "parent_span_id", "service", "name", "start", "duration", "status"]


def _frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SPAN_COLUMNS, orient="row")


def _calls(
    *,
    db_extra: float = 0.0,
    auth_gap: float = 0.0,
    api_self: float = 0.0,
    api_to_cache_gap: float = 0.0,
    db_start: datetime = ONSET,
    api_errors: bool = False,
) -> pl.DataFrame:
    """``web`` -> ``api`` -> {``db``, ``cache``}, ``web`` -> ``auth``, ``api`` -> ``auth``: one request per second.

    Each call is a client span in the caller and a server span in the callee; the caller's client span lasts
    the callee's server span plus a small network gap (plus ``auth_gap`` for calls into ``auth``)."""
    rows = []
    for i in range(240):
        t = T0 + timedelta(seconds=i)
        jitter = (i % 5) * 0.2
        db = 8.0 + jitter + (db_extra if t >= db_start else 0.0)
        cache = 1.0 + jitter
        gap_auth = 0.5 + jitter * 0.1 + (auth_gap if t >= ONSET else 0.0)
        gap_cache = 0.4 + jitter * 0.1 + (api_to_cache_gap if t >= ONSET else 0.0)
        auth = 2.0 + jitter
        own_api = 3.0 + jitter + (api_self if t >= ONSET else 0.0)
        api_status = "error" if api_errors and t >= ONSET and i % 2 == 0 else "ok"
        api = own_api + (db + 0.5) + (cache + gap_cache) + (auth + gap_auth)
        web = 2.0 + (api + 0.5) + (auth + gap_auth)
        tr = f"{i:032x}"
        rows += [
            (tr, "w1", None, "web", "GET /checkout", t, web, "ok"),
            (tr, "w2", "w1", "web", "HTTP GET api", t, api + 0.5, "ok"),
            (tr, "w3", "w1", "web", "HTTP GET auth", t, auth + gap_auth, "ok"),
            (tr, "a1", "w2", "api", "GET /items", t, api, api_status),
            (tr, "a2", "a1", "api", "HTTP GET db", t, db + 0.5, "ok"),
            (tr, "a3", "a1", "api", "HTTP GET cache", t, cache + gap_cache, "ok"),
            (tr, "a4", "a1", "api", "HTTP GET auth", t, auth + gap_auth, "ok"),
            (tr, "d1", "a2", "db", "SELECT items", t, db, "ok"),
            (tr, "c1", "a3", "cache", "GET key", t, cache, "ok"),
            (tr, "u1", "w3", "auth", "POST /verify", t, auth, "ok"),
            (tr, "u2", "a4", "auth", "POST /verify", t, auth, "ok"),
        ]
    return _frame(rows)


def _by_service(result) -> dict:
    return {c.service: c for c in result.candidates}


def test_slow_database_ranks_above_the_callers_that_wait_for_it() -> None:
    result = TopologyAnalyser(use_metrics=False).explain(INCIDENT, FrameView(spans=_calls(db_extra=40.0)))
    ranked = result.ranked()
    assert ranked[0].service == "db" and ranked[0].kind == "service"
    assert (
        ranked[0].evidence["status"] == "anomalous" and ranked[0].evidence["signals"]["self_time"]["z"] > 10
    )
    by = _by_service(result)
    for caller in ("api", "web"):
        assert by[caller].evidence["status"] == "explained" and by[caller].evidence["explained_by"] == "db"
        assert by[caller].score < ranked[0].score / 2
    # healthy dependencies are ruled out explicitly, with a score of 0 and a note
    for healthy in ("cache", "auth"):
        assert by[healthy].score == 0.0 and by[healthy].evidence["status"] == "healthy"
    assert any(n.startswith("ruled out") and "cache" in n and "auth" in n for n in result.notes)
    assert "db: own latency (self time, callees excluded) (SELECT items)" in ranked[0].explanation


def test_dependency_whose_trouble_started_first_ranks_above_a_caller_with_its_own_later_rise() -> None:
    # db slows from the onset; api's own work also rises a little, 40 s later
    spans = _calls(db_extra=40.0, db_start=ONSET)
    late = pl.col("start") >= ONSET + timedelta(seconds=40)
    spans = spans.with_columns(
        pl.when(late & (pl.col("span_id") == "a1"))
        .then(pl.col("duration") + 1.5)
        .otherwise(pl.col("duration"))
        .alias("duration")
    )
    result = TopologyAnalyser(use_metrics=False).explain(INCIDENT, FrameView(spans=spans))
    assert list(result.service_scores("service"))[0] == "db"
    db_onset = datetime.fromisoformat(_by_service(result)["db"].evidence["onset"])
    assert ONSET - timedelta(seconds=10) <= db_onset <= ONSET + timedelta(seconds=10)


def test_network_delay_into_a_service_blames_the_service_not_its_callers() -> None:
    result = TopologyAnalyser(use_metrics=False).explain(INCIDENT, FrameView(spans=_calls(auth_gap=60.0)))
    ranked = result.ranked()
    assert ranked[0].service == "auth"
    signals = ranked[0].evidence["signals"]
    assert signals["network_in"]["z"] > 10 and signals.get("self_time", {"z": 0.0})["z"] < 1
    assert _by_service(result)["api"].score < ranked[0].score / 2


def test_starved_caller_keeps_the_gap_of_its_own_calls() -> None:
    # api's own work slows down (CPU) and so does its client side: its call to cache waits longer too
    result = TopologyAnalyser(use_metrics=False).explain(
        INCIDENT, FrameView(spans=_calls(api_self=30.0, api_to_cache_gap=25.0))
    )
    by = _by_service(result)
    assert list(result.service_scores("service"))[0] == "api"
    assert by["cache"].evidence["status"] == "healthy"


def test_errors_of_the_served_calls_count() -> None:
    result = TopologyAnalyser(use_metrics=False).explain(INCIDENT, FrameView(spans=_calls(api_errors=True)))
    top = result.ranked()[0]
    assert top.service == "api" and top.evidence["signals"]["errors"]["window"] == pytest.approx(0.5)


def test_metrics_only_resource_and_edge_latency() -> None:
    series = pl.DataFrame(
        {
            "series_id": [1, 2, 3, 4, 5],
            "metric": [
                "cpu_usage_rate",
                "cpu_usage_rate",
                "cpu_usage_rate",
                "request_latency_p50",
                "request_latency_p50",
            ],
            "service": ["api", "db", "cart", "cart", "cart"],
            "kind": ["gauge"] * 5,
            "unit": ["%", "%", "%", "s", "s"],
            "labels": [
                [],
                [],
                [],
                [{"key": "reporter", "value": "source"}, {"key": "source_workload", "value": "web"}],
                [{"key": "reporter", "value": "destination"}, {"key": "source_workload", "value": "web"}],
            ],
        }
    )
    rows = []
    for i in range(60):
        t = T0 + timedelta(minutes=i)
        after = i >= 50
        rows += [
            (1, t, 20.0 + i % 3),
            (2, t, 30.0 + i % 4 + (60.0 if after else 0.0)),
            (3, t, 10.0 + i % 2),
            (
                4,
                t + timedelta(milliseconds=13),
                0.005 + 0.0002 * (i % 3),
            ),  # both reporters sample the same edge
            (5, t, 0.004 + 0.0002 * (i % 3)),
        ]
    points = pl.DataFrame(rows, schema=["series_id", "ts", "value"], orient="row")
    inc = RcaIncident(
        "web", None, T0 + timedelta(minutes=50), T0 + timedelta(minutes=60), baseline=timedelta(hours=1)
    )
    result = TopologyAnalyser().explain(inc, FrameView(series=series, points=points))
    assert list(result.service_scores("service"))[0] == "db"
    assert result.ranked()[0].evidence["signals"]["resource"]["detail"] == "cpu_usage_rate"
    # now the network into cart: latency seen by the caller rises, the callee's own does not
    slow = pl.when((pl.col("series_id") == 4) & (pl.col("ts") >= inc.onset)).then(pl.col("value") + 0.2)
    points = points.with_columns(slow.otherwise(pl.col("value")).alias("value")).with_columns(
        pl.when(pl.col("series_id") == 2).then(30.0).otherwise(pl.col("value")).alias("value")
    )
    result = TopologyAnalyser().explain(inc, FrameView(series=series, points=points))
    top = result.ranked()[0]
    assert top.service == "cart" and top.evidence["signals"]["network_in"]["detail"] == "web"


def test_service_graph_merges_spans_and_declared_edges() -> None:
    spans = _calls()
    edges = pl.DataFrame({"source": ["api", "web"], "target": ["db", "search"]})
    graph = service_graph(spans, edges)
    rows = {(r["caller"], r["callee"]): r for r in graph.iter_rows(named=True)}
    assert set(rows) == {
        ("web", "api"),
        ("web", "auth"),
        ("api", "db"),
        ("api", "cache"),
        ("api", "auth"),
        ("web", "search"),
    }
    assert (
        rows[("api", "db")]["origin"] == "spans+declared" and rows[("web", "search")]["origin"] == "declared"
    )
    assert rows[("api", "db")]["calls"] == 240 and rows[("web", "search")]["calls"] == 0
    assert rows[("api", "db")]["network_ms"] == pytest.approx(0.5)
    assert 0 < rows[("api", "db")]["latency_share"] < 1
    assert downstream(graph)["web"] == {"api", "auth", "db", "cache", "search"}
    prepared = prepare_spans(spans)
    assert (prepared.filter(pl.col("span_id") == "a2")["remote_children"] == 1).all()


def test_deterministic_and_inputs_untouched() -> None:
    spans = _calls(db_extra=40.0)
    before = spans.clone()
    analyser = TopologyAnalyser(use_metrics=False)
    first = analyser.explain(INCIDENT, FrameView(spans=spans)).to_json()
    shuffled = spans.sample(fraction=1.0, shuffle=True, seed=7)
    assert analyser.explain(INCIDENT, FrameView(spans=shuffled)).to_json() == first
    assert spans.equals(before)


def test_nothing_to_rank() -> None:
    result = TopologyAnalyser().explain(INCIDENT, FrameView())
    assert result.candidates == () and "no services in spans, edges or metrics" in result.notes
    with pytest.raises(ValueError, match="metric_scale"):
        TopologyAnalyser(metric_scale="peak")  # type: ignore[arg-type]


def _with_db_instances(spans: pl.DataFrame, slow: str | None, extra: float = 40.0) -> pl.DataFrame:
    """Requests spread over three db instances (``db-0`` .. ``db-2``, round robin); the calls that ``slow`` serves
    from the onset take ``extra`` ms longer, and so do the api and web spans waiting for them."""
    trace = pl.col("trace_id").rank("dense").cast(pl.Int64) - 1  # one request per trace, in time order
    spans = spans.with_columns(pl.format("db-{}", trace % 3).alias("_db"))
    hit = (pl.col("_db") == (slow or "")) & (pl.col("start") >= ONSET)
    waits = pl.col("span_id").is_in(["d1", "a2", "a1", "w2", "w1"])
    resource = pl.when(pl.col("service") == "db").then(
        pl.concat_list(pl.struct(pl.lit("service.instance.id").alias("key"), pl.col("_db").alias("value")))
    )
    return spans.with_columns(
        pl.when(hit & waits).then(pl.col("duration") + extra).otherwise(pl.col("duration")).alias("duration"),
        resource.alias("resource"),
    ).drop("_db")


def test_one_slow_instance_of_three_is_found_where_pooled_calls_hide_it() -> None:
    """One of three db instances (a region's vector DB) slows down: a third of db's calls, so db's median call —
    and its callers' — hardly moves. Compared per instance, db's own time on db-2 shifted; db ranks first and
    its callers merely suffer. Pooled (per-instance comparison off), db was not even anomalous."""
    spans = _with_db_instances(_calls(), slow="db-2")
    view = FrameView(spans=spans)
    result = TopologyAnalyser(use_metrics=False).explain(INCIDENT, view)
    top = result.ranked()[0]
    assert top.service == "db" and top.evidence["status"] == "anomalous"
    assert top.evidence["signals"]["self_time"]["z"] > 10
    assert "SELECT items on db-2" in top.explanation
    onset = datetime.fromisoformat(top.evidence["onset"])
    assert ONSET - timedelta(seconds=10) <= onset <= ONSET + timedelta(seconds=20)
    by = _by_service(result)
    for caller in ("api", "web"):
        assert by[caller].evidence["status"] != "anomalous" or by[caller].evidence["explained_by"] == "db"
        assert by[caller].score < top.score / 2
    pooled = TopologyAnalyser(use_metrics=False, min_instance_calls=10**6).explain(INCIDENT, view)
    assert _by_service(pooled)["db"].evidence["status"] == "healthy"


def test_per_instance_comparison_does_not_flag_healthy_instances() -> None:
    """Three healthy db instances: the worst of them is no anomaly (every service healthy as before)."""
    view = FrameView(spans=_with_db_instances(_calls(), slow=None))
    result = TopologyAnalyser(use_metrics=False).explain(INCIDENT, view)
    assert all(c.evidence["status"] == "healthy" for c in result.candidates)
