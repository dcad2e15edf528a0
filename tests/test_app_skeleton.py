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


def _layout(client, path: str, search: str) -> dict:
    """The page Dash renders for ``path?search`` (the ``_pages_content`` callback, as the browser calls it)."""
    return _callback(
        client,
        ".._pages_content.children..._pages_store.data..",
        [{"id": "_pages_content", "property": "children"}, {"id": "_pages_store", "property": "data"}],
        [
            {"id": "_pages_location", "property": "pathname", "value": path},
            {"id": "_pages_location", "property": "search", "value": search},
        ],
    )["_pages_content"]["children"]


def _find(tree, component_id: str) -> dict | None:
    """The props of the component ``component_id`` in a serialised layout."""
    if isinstance(tree, dict):
        props = tree.get("props", {})
        if props.get("id") == component_id:
            return props
        tree = list(props.values()) if "props" in tree else list(tree.values())
    if isinstance(tree, list):
        for child in tree:
            if (found := _find(child, component_id)) is not None:
                return found
    return None


def _notices(client, path: str, search: str, notice_id: str) -> list[str]:
    """The sentences of a page's notice of ignored URL parameters (none: no notice)."""
    notice = _find(_layout(client, path, search), notice_id)
    return [p["props"]["children"] for p in notice["children"]] if notice else []


def test_explore_says_which_url_params_it_ignored(client):
    """A pasted metric, service, group-by or aggregation the page cannot use falls back to the default, and the
    page says which parameter, the value, what it expected and what it shows instead."""
    said = _notices(client, "/explore", "?metric=nope_metric", "x-url-notice")
    assert said == [
        "Ignored metric='nope_metric' in the URL: expected a metric in this store; showing latency_ms."
    ]
    search = "?metric=latency_ms&service=ghost&by=zone&agg=bogus"
    page = _layout(client, "/explore", search)
    said = [p["props"]["children"] for p in _find(page, "x-url-notice")["children"]]
    assert said == [
        "Ignored service='ghost' in the URL: expected one of gateway, rag-api; showing every service.",
        "Ignored by='zone' in the URL: expected a label of latency_ms: one of tenant; showing no grouping.",
        "Ignored agg='bogus' in the URL: expected one of auto, avg, min, max, sum, count, last for latency_ms; "
        "showing auto.",
    ]
    # ...and the controls hold the defaults, so the chart and the URL the page writes are the default ones
    controls = [_find(page, c)["value"] for c in ("x-service", "x-by", "x-agg")]
    assert controls == [None, None, "auto"]
    assert _notices(client, "/explore", "?metric=latency_ms&by=tenant&agg=avg", "x-url-notice") == []


def test_incidents_say_which_url_params_they_ignored(client):
    said = _notices(client, "/incidents", "?status=bogus&severity=sev1&service=rag-api", "il-url-notice")
    assert said == [
        "Ignored status='bogus' in the URL: expected one of open, acknowledged, resolved; showing any status.",
        "Ignored severity='sev1' in the URL: expected one of page, ticket; showing any severity.",
    ]
    page = _layout(client, "/incidents", "?status=bogus")
    assert _find(page, "il-status")["value"] is None  # the list falls back to every status
    assert _notices(client, "/incidents", "?status=open&severity=page", "il-url-notice") == []


def _nav_notice(client, search: str) -> list[str]:
    """What the nav says above the page of its range params (``rw-url-notice``) for a URL's query."""
    body = {
        "output": "..rw-range.value...rw-from.value...rw-to.value...rw-window.children..."
        + '{"path":["ALL"],"type":"rw-nav"}.href...rw-url-notice.children..',
        "outputs": [
            {"id": "rw-range", "property": "value"},
            {"id": "rw-from", "property": "value"},
            {"id": "rw-to", "property": "value"},
            {"id": "rw-window", "property": "children"},
            [],  # the nav links (none here)
            {"id": "rw-url-notice", "property": "children"},
        ],
        "inputs": [{"id": "rw-url", "property": "search", "value": search}],
        "state": [[]],
        "changedPropIds": [],
    }
    resp = client.post("/_dash-update-component", data=json.dumps(body), content_type="application/json")
    assert resp.status_code == 200, resp.data[:500]
    out = resp.json["response"]
    return [p["props"]["children"] for p in out["rw-url-notice"]["children"]], out["rw-range"]["value"]


def test_the_nav_says_which_range_params_it_ignored(client):
    assert _nav_notice(client, "?range=nonsense") == (
        [
            "Ignored range='nonsense' in the URL: expected one of 1h, 6h, 24h, 3d, 7d, 30d, all (or from= and "
            "to=); showing Last 24 hours."
        ],
        "24h",
    )
    said, picked = _nav_notice(client, "?from=2026-01-01T03:00&to=2026-01-01T01:00")
    assert said == [
        "Ignored from='2026-01-01T03:00' and to='2026-01-01T01:00' in the URL: expected the start before the "
        "end; showing Last 24 hours."
    ]
    assert picked == "24h"
    said, _ = _nav_notice(client, "?from=yesterday&to=2026-01-01T01:00")
    assert said == [
        "Ignored from='yesterday' in the URL: expected a UTC time, YYYY-MM-DDTHH:MM; showing Last 24 hours."
    ]
    assert _nav_notice(client, "?range=7d") == ([], "7d")
    assert _nav_notice(client, "?from=2026-01-01T00:00&to=2026-01-01T01:00") == ([], "custom")


def test_explore_label_options_come_from_the_catalog(client):
    out = _callback(client, "x-by.options", {"id": "x-by", "property": "options"},
                    [{"id": "x-metric", "property": "value", "value": "latency_ms"}])
    assert out["x-by"]["options"] == ["tenant"]


def test_explore_shows_telemetry_text_as_text(client):
    """A metric name with markup (a pasted URL, a hostile label) reaches the chart's title and message as text,
    not as the HTML subset Plotly renders there."""
    fig = _explore(client, "<b>boom</b>", "avg")["x-graph"]["figure"]
    title = fig["layout"]["title"]["text"]
    said = " ".join(a["text"] for a in fig["layout"]["annotations"])
    assert "&lt;b&gt;boom&lt;/b&gt;" in title and "<b>" not in title
    assert "&lt;b&gt;boom&lt;/b&gt;" in said and "<b>" not in said
