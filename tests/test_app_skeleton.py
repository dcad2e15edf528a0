"""The app skeleton served with the receiver: pages render from the store through Dash's own HTTP protocol."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from app.dashboard import mount_dashboard
from app.server import create_server_app
from ingest.batch import MetricBuilder

T0 = 1_767_225_600 * 10**9


@pytest.fixture
def client(store):
    b = MetricBuilder("test")
    for tenant in ("t-1", "t-2"):
        sid = b.series("latency_ms", "rag-api", "gauge", "ms", {"tenant": tenant})
        for i in range(120):
            b.point(sid, T0 + i * 60 * 10**9, 10.0 + i + (100 if tenant == "t-2" else 0), "x")
    sid = b.series("requests_total", "gateway", "counter", "1", {})
    for i in range(120):
        b.point(sid, T0 + i * 60 * 10**9, float(i * 60), "x")
    # a cumulative latency histogram: 10 requests a minute, 9 under 100 ms and 1 between 100 and 1,000 ms
    sid = b.series("request_duration_ms", "rag-api", "histogram", "ms", {})
    for i in range(120):
        n = 10.0 * (i + 1)
        b.histogram(sid, T0 + i * 60 * 10**9, n, 150.0 * n, None, None, [100.0, 1000.0],
                    [0.9 * n, 0.1 * n, 0.0], True, "x")
    store.append(b.build())
    app, writer = create_server_app(store, mount=mount_dashboard)
    yield app.test_client()
    writer.close(timeout=10)


def _callback(client, output: str, outputs: list[dict] | dict, inputs: list[dict], state: list[dict] | None = None):
    body = {"output": output, "outputs": outputs, "inputs": inputs, "changedPropIds": [], "state": state or []}
    resp = client.post("/_dash-update-component", data=json.dumps(body), content_type="application/json")
    assert resp.status_code == 200, resp.data[:500]
    return resp.json["response"]


def _values(arr) -> list[float]:
    """Plotly sends big arrays as typed base64 (``{"dtype", "bdata"}``); plain lists otherwise."""
    if isinstance(arr, dict):
        return np.frombuffer(base64.b64decode(arr["bdata"]), dtype=arr["dtype"]).tolist()
    return list(arr)


def _page(client, path: str) -> str:
    out = _callback(
        client,
        ".._pages_content.children..._pages_store.data..",
        [{"id": "_pages_content", "property": "children"}, {"id": "_pages_store", "property": "data"}],
        [{"id": "_pages_location", "property": "pathname", "value": path},
         {"id": "_pages_location", "property": "search", "value": ""}],
    )
    return json.dumps(out)


def test_overview_lists_every_service(client):
    assert client.get("/").status_code == 200
    page = _page(client, "/")
    assert "rag-api" in page and "gateway" in page
    assert "services-table" in page


def test_explore_plots_a_series_grouped_by_label(client):
    assert "x-graph" in _page(client, "/explore")
    out = _callback(
        client,
        "..x-graph.figure...x-url.search..",
        [{"id": "x-graph", "property": "figure"}, {"id": "x-url", "property": "search"}],
        [{"id": "x-metric", "property": "value", "value": "latency_ms"},
         {"id": "x-service", "property": "value", "value": "rag-api"},
         {"id": "x-by", "property": "value", "value": "tenant"},
         {"id": "x-agg", "property": "value", "value": "avg"},
         {"id": "x-range", "property": "value", "value": "24h"}],
        [{"id": "x-url", "property": "search", "value": ""}],
    )
    traces = out["x-graph"]["figure"]["data"]
    assert sorted(t["name"] for t in traces) == ["tenant=t-1", "tenant=t-2"]
    t2 = next(t for t in traces if t["name"] == "tenant=t-2")
    assert min(_values(t2["y"])) >= 110  # the t-2 series really is the one offset by 100
    assert out["x-url"]["search"].startswith("?metric=latency_ms")


def _explore(client, metric: str, agg: str, service: str | None = None) -> dict:
    return _callback(
        client,
        "..x-graph.figure...x-url.search..",
        [{"id": "x-graph", "property": "figure"}, {"id": "x-url", "property": "search"}],
        [{"id": "x-metric", "property": "value", "value": metric},
         {"id": "x-service", "property": "value", "value": service},
         {"id": "x-by", "property": "value", "value": None},
         {"id": "x-agg", "property": "value", "value": agg},
         {"id": "x-range", "property": "value", "value": "24h"}],
        [{"id": "x-url", "property": "search", "value": ""}],
    )


def test_explore_histograms_and_aggregations_by_kind(client):
    """A histogram metric is shown as a quantile or mean of its observations (it used to fail with a server
    error); the aggregations offered follow the metric's kind; one that does not apply, or no data, is said
    on the chart, whose title and URL stay on what was asked."""
    out = _explore(client, "request_duration_ms", "auto")
    y = _values(out["x-graph"]["figure"]["data"][0]["y"])
    assert y and all(100.0 < v <= 1000.0 for v in y)  # the p99 falls in the 100-1,000 ms bucket
    out = _explore(client, "request_duration_ms", "p50")
    assert all(0.0 < v <= 100.0 for v in _values(out["x-graph"]["figure"]["data"][0]["y"]))
    out = _explore(client, "request_duration_ms", "mean")
    mean = _values(out["x-graph"]["figure"]["data"][0]["y"])
    assert len(mean) > 100 and mean == pytest.approx([150.0] * len(mean))
    opts = _callback(
        client,
        "..x-agg.options...x-agg.value..",
        [{"id": "x-agg", "property": "options"}, {"id": "x-agg", "property": "value"}],
        [{"id": "x-metric", "property": "value", "value": "requests_total"}],
        [{"id": "x-agg", "property": "value", "value": "avg"}],
    )
    assert "rate" in opts["x-agg"]["options"] and "avg" not in opts["x-agg"]["options"]
    assert opts["x-agg"]["value"] == "auto"  # avg does not apply to a counter
    out = _explore(client, "latency_ms", "rate")  # e.g. from a pasted URL
    fig = out["x-graph"]["figure"]
    assert not fig["data"] and "rate needs a counter or delta metric" in fig["layout"]["annotations"][0]["text"]
    assert fig["layout"]["title"]["text"] == "rate(latency_ms)" and "agg=rate" in out["x-url"]["search"]
    out = _explore(client, "latency_ms", "avg", service="gateway")
    text = out["x-graph"]["figure"]["layout"]["annotations"][0]["text"]
    assert text == "No data for latency_ms for gateway in this time range"


def test_explore_says_when_a_pasted_metric_is_unknown(client):
    page = _callback(
        client,
        ".._pages_content.children..._pages_store.data..",
        [{"id": "_pages_content", "property": "children"}, {"id": "_pages_store", "property": "data"}],
        [{"id": "_pages_location", "property": "pathname", "value": "/explore"},
         {"id": "_pages_location", "property": "search", "value": "?metric=nope_metric"}],
    )
    assert "No metric 'nope_metric' in this store" in json.dumps(page)


def test_explore_label_options_come_from_the_catalog(client):
    out = _callback(client, "x-by.options", {"id": "x-by", "property": "options"},
                    [{"id": "x-metric", "property": "value", "value": "latency_ms"}])
    assert out["x-by"]["options"] == ["tenant"]
