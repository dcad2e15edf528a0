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


def test_explore_label_options_come_from_the_catalog(client):
    out = _callback(client, "x-by.options", {"id": "x-by", "property": "options"},
                    [{"id": "x-metric", "property": "value", "value": "latency_ms"}])
    assert out["x-by"]["options"] == ["tenant"]
