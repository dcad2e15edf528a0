"""Capacity and Service pages in a real headless Chromium (Debian's, driven by Playwright).

The store holds four weeks of growing vLLM demand (the growth fixture of ``test_capacity.py``: two replicas,
KV cache filling with throughput, two tenants sharing the usage) plus two days of golden signals for
``rag-api`` in two regions. Browser tests are skipped only when /usr/bin/chromium is absent and CI is unset.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from test_app_theme import MODEBAR_COVERS_JS

from app import data
from app.dashboard import mount_dashboard
from app.server import create_server_app
from ingest.batch import MetricBuilder
from ingest.store import Store

CHROMIUM = "/usr/bin/chromium"
T0 = datetime(2026, 3, 2)  # a Monday
DAYS = 28
STEP = timedelta(minutes=15)
REGION = "r1<script>alert(1)</script>"  # telemetry text is untrusted: it must never become markup
browser_only = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason="Debian chromium not installed"
)


def _ns(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1)) // timedelta(microseconds=1) * 1000


def _demand(t_days: np.ndarray) -> np.ndarray:
    """Per-replica decode tokens/s: a daily cycle on 400 + 6 tokens/s per day (as in test_capacity.py)."""
    return (400.0 + 6.0 * t_days) * (0.75 + 0.25 * np.sin(2 * np.pi * (t_days % 1.0 - 0.25)))


def add_vllm_growth(b: MetricBuilder) -> None:
    """Two replicas of ``m-big`` whose KV cache is 90 % full at 900 tokens/s; usage split by two tenants."""
    rng = np.random.default_rng(7)
    n = int(DAYS * 86400 / STEP.total_seconds())
    t = np.arange(n) * STEP.total_seconds() / 86400
    for inst in ("gpu-1", "gpu-2"):
        labels = {"model_name": "m-big", "region": REGION, "instance": inst}
        rate = _demand(t) * rng.normal(1.0, 0.02, n)
        tok = b.series("vllm:generation_tokens_total", "llm-serving", "counter", "1", labels)
        kv = b.series("vllm:gpu_cache_usage_perc", "llm-serving", "gauge", "1", labels)
        total = np.cumsum(rate * STEP.total_seconds())
        for i in range(n):
            ts = _ns(T0 + i * STEP)
            b.point(tok, ts, float(total[i]), f"tok:{inst}:{i}")
            b.point(kv, ts, 0.001 * rate[i] + rng.normal(0, 0.01), f"kv:{inst}:{i}")
    for tenant in ("t-big", "t-small"):
        usage = {"tenant": tenant, "model": "m-big", "region": REGION}
        out = b.series("output_tokens", "gateway", "delta", "1", usage)
        cost = b.series("cost_usd", "gateway", "delta", "USD", usage)
        for i in range(0, n, 4):  # hourly usage rows
            ts = _ns(T0 + i * STEP)
            b.point(out, ts, float(_demand(t[i : i + 1])[0]) * 3600, f"out:{tenant}:{i}")
            b.point(cost, ts, 5.0 + 0.1 * t[i], f"cost:{tenant}:{i}")


def add_golden_signals(b: MetricBuilder) -> None:
    """Two days of rag-api requests, errors (counters) and a latency histogram, per region, every 5 minutes."""
    end = T0 + timedelta(days=DAYS)
    start = end - timedelta(days=2)
    bounds = [0.05, 0.1, 0.25, 0.5, 1.0]
    for region, rps, err in (("us-east", 20.0, 0.01), ("eu-west", 8.0, 0.05)):
        labels = {"region": region, "instance": f"rag-{region}"}
        req = b.series("requests", "rag-api", "counter", "{request}", labels)
        errs = b.series("errors", "rag-api", "counter", "{request}", labels)
        dur = b.series("http.server.request.duration", "rag-api", "histogram", "s", labels)
        total = failed = 0.0
        for i in range(int(2 * 86400 / 300)):
            ts = _ns(start + timedelta(minutes=5 * i))
            total += rps * 300
            failed += rps * 300 * err
            b.point(req, ts, total, f"req:{region}:{i}")
            b.point(errs, ts, failed, f"err:{region}:{i}")
            counts = [
                0.2 * rps * 300,
                0.4 * rps * 300,
                0.3 * rps * 300,
                0.08 * rps * 300,
                0.02 * rps * 300,
                0.0,
            ]
            b.histogram(dur, ts, sum(counts), None, None, None, bounds, counts, False, f"dur:{region}:{i}")


@pytest.fixture
def app_db(tmp_path) -> Path:
    db = tmp_path / "app.duckdb"
    with Store(db) as store:
        b = MetricBuilder("test")
        add_vllm_growth(b)
        add_golden_signals(b)
        store.append(b.build())
    return db


@pytest.fixture
def server(app_db, serve_process):
    url, proc = serve_process(app_db)
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def _date(text: str) -> datetime:
    found = re.search(r"\d{4}-\d{2}-\d{2}", text)
    assert found, f"no date in {text!r}"
    return datetime.fromisoformat(found.group(0))


def _no_dash_errors(page) -> None:
    assert page.locator(".dash-fe-error, .dash-fe-error__title").count() == 0
    assert page.errors == [], page.errors
    assert page.dialogs == [], page.dialogs  # an injected alert() would have opened one


def _status(url: str) -> dict:
    with urllib.request.urlopen(url + "/capacity/status", timeout=10) as resp:
        return json.load(resp)


def _body_calls(page) -> list[str]:
    """The request bodies of the page body's callback (its output names ``cap-body``), as they are sent."""
    calls: list[str] = []

    def on_request(request) -> None:
        if "_dash-update-component" in request.url and "cap-body.children" in (request.post_data or ""):
            calls.append(request.post_data)

    page.on("request", on_request)
    return calls


@browser_only
def test_capacity_page_waits_for_the_background_plan_then_plans_once_per_load(server, browser_page):
    page = browser_page
    calls = _body_calls(page)
    # the server plans at start: the page may find the plan being computed, then shows it by itself
    page.goto(server + "/capacity")
    page.locator("#cap-computing, #cap-table").first.wait_for(timeout=30_000)
    if page.locator("#cap-computing").count():
        assert page.is_disabled("#cap-report")  # no report before there is a plan
        assert "being computed" in page.inner_text("#cap-body")
    page.locator("#cap-table").wait_for(timeout=60_000)  # no reload: the page polls until the plan is there
    page.wait_for_timeout(2500)  # a poll (every 2 s) would have come: the body is drawn for good
    assert page.is_enabled("#cap-report")
    assert re.search(r"planned \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", page.inner_text("#cap-meta"))
    assert _status(server)["state"] == "planned"

    # with the plan there, the layout brings the body: a load runs its callback not at all (it ran twice: once
    # on load and once more when the date picker, which reports its date when it mounts, appeared)
    for url in ("/capacity", "/capacity?label=tenant&value=t-big&factor=2&start=2026-03-20"):
        calls.clear()
        page.goto(server + url)
        page.locator("#cap-table").wait_for(timeout=30_000)
        page.locator(".cap-chart .main-svg").first.wait_for(timeout=20_000)
        page.wait_for_timeout(1500)  # what would run late (the picker loads asynchronously) has run
        assert calls == []
    assert "from 2026-03-20" in page.inner_text("#cap-scenario-note")
    # a changed control draws it once
    page.fill("#cap-factor", "3")
    page.press("#cap-factor", "Enter")
    page.wait_for_selector("#cap-scenario-note:has-text('x3')", timeout=30_000)
    page.wait_for_timeout(1000)
    assert len(calls) == 1, calls
    # the +/- stepper steps the factor (it emptied the field: Dash 4.4 clamps to max, which was unset)
    page.click(".dash-input-container:has(#cap-factor) .dash-stepper-increment")
    page.wait_for_selector("#cap-scenario-note:has-text('x3.1')", timeout=30_000)
    assert page.input_value("#cap-factor") == "3.1" and "factor=3.1" in page.url
    page.click(".dash-input-container:has(#cap-factor) .dash-stepper-decrement")
    page.wait_for_selector("#cap-scenario-note:has-text('x3 ')", timeout=30_000)
    page.wait_for_timeout(1000)
    calls.clear()
    calls.clear()  # so does clearing the date
    page.click("#cap-start-wrapper .dash-datepicker-clear")
    page.wait_for_function("!document.querySelector('#cap-scenario-note').innerText.includes('from 2026')")
    page.wait_for_timeout(1000)
    assert len(calls) == 1, calls
    assert "start=" not in page.url
    _no_dash_errors(page)


@browser_only
def test_capacity_page_what_if_moves_the_date_and_downloads_the_report(
    server, browser_page, tmp_path, screenshot
):
    page = browser_page
    page.goto(server + "/capacity?label=tenant&value=t-big")
    p90 = page.locator("#cap-table td[data-dash-column='p90']").first
    p90.wait_for(timeout=60_000)
    baseline = _date(p90.inner_text())
    body = page.inner_text("main")
    assert "UTC" in body and "GPU throughput m-big " + REGION in body  # the label value shown as text
    assert "Settings:" in body  # where the limits come from is said on the page
    page.locator(".cap-chart .main-svg").first.wait_for(timeout=20_000)
    chart = page.locator(".cap-chart").first
    chart.locator(".draglayer .nsewdrag").first.hover()  # the modebar keeps off its limit and P50/P90 marks
    assert chart.locator(".js-plotly-plot").evaluate(MODEBAR_COVERS_JS) == []

    # t-big is half the demand: doubling it is x1.5 overall, so the P90 date comes earlier
    page.fill("#cap-factor", "2")
    page.press("#cap-factor", "Enter")
    what_if = page.locator("#cap-table td[data-dash-column='s_p90']").first
    what_if.wait_for(timeout=30_000)
    assert _date(what_if.inner_text()) < baseline
    assert "factor=2" in page.url  # the what-if is in the URL, to share
    # the headline has a line for the what-if too (it only described the baseline)
    line = page.inner_text("#cap-what-if-line")
    assert line.startswith("With What-if: tenant=t-big x2:") and "may run out" in line, line
    screenshot(page, "capacity.png")

    with page.expect_download(timeout=30_000) as download:
        page.click("#cap-report")
    report = Path(download.value.path()).read_text(encoding="utf-8")
    assert download.value.suggested_filename.endswith(".html")
    assert "Executive summary" in report and "What-if: tenant=t-big x2" in report
    assert "<script>alert(1)</script>" not in report
    _no_dash_errors(page)


@browser_only
def test_service_page_groups_by_the_label_in_the_url(server, browser_page, tmp_path, screenshot):
    page = browser_page
    page.goto(server + "/service/rag-api?range=24h&by=region")
    traces = page.locator("#panel-requests .scatterlayer .trace")
    traces.first.wait_for(state="attached", timeout=30_000)  # flat lines have no height
    for panel in ("requests", "errors", "latency"):  # one line per region, once the last render has landed
        page.wait_for_function(
            f"document.querySelectorAll('#panel-{panel} .scatterlayer .trace').length === 2", timeout=20_000
        )
    assert page.locator("#panel-ttft, #panel-kv, #panel-cost").count() == 0  # rag-api has none of these
    assert "UTC" in page.inner_text("main")
    legend = page.text_content("#panel-requests .legend")
    assert "region=us-east" in legend and "region=eu-west" in legend
    screenshot(page, "service-rag-api.png")

    # the picker goes to the LLM server, keeping range and group-by: its vLLM panels, the label value with
    # markup shown as text
    page.click("#svc-picker")
    page.locator("[role=option]", has_text="llm-serving").click()
    page.wait_for_url("**/service/llm-serving?range=24h&by=region", timeout=20_000)
    page.locator("#panel-kv .scatterlayer .trace").first.wait_for(state="attached", timeout=30_000)
    # panels draw in any order: wait for this one's line too (tokens have no region label: one line)
    page.locator("#panel-tokens_out .scatterlayer .trace").first.wait_for(state="attached", timeout=30_000)
    assert page.locator("#panel-tokens_out .scatterlayer .trace").count() == 1
    assert "region=" + REGION in page.text_content("#panel-kv .legend")
    assert page.locator("#panel-requests").count() == 0  # no request metrics: no broken panel
    screenshot(page, "service-llm-serving.png")
    _no_dash_errors(page)


def _callback(client, output: str, outputs: list[dict], inputs: list[dict]) -> dict:
    """Call one Dash callback over HTTP, as the browser does (see test_app_skeleton.py)."""
    body = {"output": output, "outputs": outputs, "inputs": inputs, "changedPropIds": [], "state": []}
    resp = client.post("/_dash-update-component", data=json.dumps(body), content_type="application/json")
    assert resp.status_code == 200, resp.data[:500]
    return resp.json["response"]


def _capacity_body(
    client, value: str | None, factor: float | None, start: str | None = None
) -> tuple[str, str]:
    out = _callback(
        client,
        "..cap-body.children...cap-url.search..",
        [{"id": "cap-body", "property": "children"}, {"id": "cap-url", "property": "search"}],
        [
            {"id": "cap-label", "property": "value", "value": "tenant"},
            {"id": "cap-value", "property": "value", "value": value},
            {"id": "cap-factor", "property": "value", "value": factor},
            {"id": "cap-start-chosen", "property": "data", "value": start},
            {"id": "cap-runs", "property": "data", "value": 0},
        ],
    )
    return json.dumps(out["cap-body"]["children"]), out["cap-url"]["search"]


def _page_layout(client, path: str = "/capacity", search: str = "") -> str:
    out = _callback(
        client,
        ".._pages_content.children..._pages_store.data..",
        [{"id": "_pages_content", "property": "children"}, {"id": "_pages_store", "property": "data"}],
        [
            {"id": "_pages_location", "property": "pathname", "value": path},
            {"id": "_pages_location", "property": "search", "value": search},
        ],
    )
    return json.dumps(out)


def _component(tree: str, component_id: str) -> dict:
    """The props of the component with ``component_id`` in a serialised layout."""

    def walk(node):
        if isinstance(node, dict):
            if node.get("props", {}).get("id") == component_id:
                return node["props"]
            node = list(node.values())
        if isinstance(node, list):
            for child in node:
                if (found := walk(child)) is not None:
                    return found
        return None

    found = walk(json.loads(tree))
    assert found is not None, f"no {component_id} in the layout"
    return found


def _tick(client, shown: int):
    """The page's poll (``cap-wait``) with ``shown`` planner runs in the body; the raw response."""
    outputs = [
        {"id": "cap-runs", "property": "data"},
        {"id": "cap-wait", "property": "disabled"},
        {"id": "cap-report", "property": "disabled"},
    ]
    body = {
        "output": "..cap-runs.data...cap-wait.disabled...cap-report.disabled..",
        "outputs": outputs,
        "inputs": [{"id": "cap-wait", "property": "n_intervals", "value": 1}],
        "state": [{"id": "cap-runs", "property": "data", "value": shown}],
        "changedPropIds": ["cap-wait.n_intervals"],
    }
    return client.post("/_dash-update-component", data=json.dumps(body), content_type="application/json")


@pytest.fixture
def client_for():
    """``client_for(db, planned=True)``: a Flask test client of the app over the store at ``db``; with
    ``planned``, once the background planner has finished its first run (without, no planner is started)."""
    opened = []

    def make(db: Path, *, planned: bool = True):
        store = Store(db)
        app, writer = create_server_app(store, mount=mount_dashboard)
        opened.append((app, store, writer))
        if planned:
            planner = data.start_capacity_planner(app)
            deadline = time.monotonic() + 120
            while planner.snapshot.state == "computing" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert planner.snapshot.state != "computing"
        return app.test_client()

    yield make
    for app, store, writer in opened:
        data.stop_capacity_planner(app)  # before closing the store: a running query holds it
        writer.close(timeout=10)
        store.close()


def test_what_if_rows_carry_the_scenario_dates(app_db, client_for):
    client = client_for(app_db)
    baseline, search = _capacity_body(client, "t-big", 1)
    assert search == "" and "s_p90" not in baseline and "cap-table" in baseline
    what_if, search = _capacity_body(client, "t-big", 2)
    assert search == "?label=tenant&value=t-big&factor=2"
    (table,) = [c for c in json.loads(what_if) if c["props"].get("id") == "cap-table"]
    (row,) = table["props"]["data"]
    assert row["resource"] == "GPU throughput m-big " + REGION  # the raw text: DataTable shows it as text
    assert _date(row["s_p90"]) < _date(row["p90"]) and _date(row["s_p50"]) < _date(row["p50"])
    later, search = _capacity_body(client, "t-big", 2, "2026-05-01")
    assert search == "?label=tenant&value=t-big&factor=2&start=2026-05-01"
    (table,) = [c for c in json.loads(later) if c["props"].get("id") == "cap-table"]
    assert _date(table["props"]["data"][0]["s_p90"]) >= _date(row["s_p90"])  # a later start: no earlier


def test_page_says_the_plan_is_computed_then_shows_it_with_its_time(app_db, client_for, monkeypatch):
    client = client_for(app_db, planned=False)
    app = client.application
    # a planner that has not run yet (started, it would plan at once)
    planner = data.CapacityPlanner(app)
    app.extensions[data.CAPACITY_PLANNER_KEY] = planner
    layout = _page_layout(client)
    assert _component(layout, "cap-wait")["disabled"] is False  # the page polls...
    assert _component(layout, "cap-report")["disabled"] is True  # ...and offers no report yet
    body, _ = _capacity_body(client, None, 1)
    assert "being computed" in body and "cap-table" not in body
    resp = _tick(client, shown=0)
    assert resp.status_code == 204  # nothing new: the body stays as it is
    assert client.get("/capacity/status").json["state"] == "computing"

    snapshot = planner.run_once()
    assert snapshot.state == "planned" and snapshot.runs == 1
    resp = _tick(client, shown=0)  # the next poll re-renders the body and stops polling
    assert resp.status_code == 200
    runs, polling_off, report_off = (
        resp.json["response"][k][p]
        for k, p in (("cap-runs", "data"), ("cap-wait", "disabled"), ("cap-report", "disabled"))
    )
    assert (runs, polling_off, report_off) == (1, True, False)
    body, _ = _capacity_body(client, None, 1)
    assert "cap-table" in body and f"planned {snapshot.planned:%Y-%m-%d %H:%M} UTC" in body
    assert "every 15 min" in body
    status = client.get("/capacity/status").json
    assert status["state"] == "planned" and status["planned"].startswith(f"{snapshot.planned:%Y-%m-%dT%H:%M}")
    layout = _page_layout(client)
    assert _component(layout, "cap-wait")["disabled"] is True

    # a failed run keeps the last plan on the page and says what failed
    def broken(store, settings, **kw):
        raise RuntimeError("the store went away")

    monkeypatch.setattr("app.capacity.plan_capacity", broken)
    failed = planner.run_once()
    assert failed.state == "failed" and failed.plan is snapshot.plan and failed.runs == 2
    body, _ = _capacity_body(client, None, 1)
    assert "cap-table" in body and "RuntimeError: the store went away" in body
    assert client.get("/capacity/status").json["error"] == "RuntimeError: the store went away"


def test_capacity_without_vllm_metrics_or_points_is_a_message(tmp_path, client_for):
    db = tmp_path / "golden.duckdb"
    with Store(db) as store:
        b = MetricBuilder("test")
        add_golden_signals(b)
        store.append(b.build())
    body, _ = _capacity_body(client_for(db), None, 1)
    # today plan_capacity stops at the missing vLLM metric; either way the page says why, without an error
    assert "vLLM metrics" in body and ("cannot be planned" in body or "No constrained resource" in body)
    with Store(tmp_path / "empty.duckdb"):
        pass
    body, _ = _capacity_body(client_for(tmp_path / "empty.duckdb"), None, 1)
    assert "Capacity cannot be planned from this store" in body and "no points" in body
    assert "Planned again at" in body  # a failure is retried


def test_capacity_and_service_say_which_url_params_they_ignored(app_db, client_for):
    """A what-if or group-by in the URL the controls cannot take falls back to the default, and the page says
    which parameter, the value, what it expected and what it shows instead."""
    client = client_for(app_db, planned=False)
    app = client.application
    app.extensions[data.CAPACITY_PLANNER_KEY] = data.CapacityPlanner(app)  # the layout does not wait for it

    def said(path: str, search: str, notice: str) -> list[str]:
        tree = _page_layout(client, path, search)
        return (
            [p["props"]["children"] for p in _component(tree, notice)["children"]] if notice in tree else []
        )

    assert said("/capacity", "?label=zone&value=t-huge&factor=abc&start=soon", "cap-url-notice") == [
        "Ignored label='zone' in the URL: expected one of tenant, model, region; showing tenant.",
        "Ignored value='t-huge' in the URL: expected a tenant of this store: one of t-big, t-small; showing no "
        "what-if.",
        "Ignored factor='abc' in the URL: expected a number from 0 to 100; showing x1 (no change).",
        "Ignored start='soon' in the URL: expected a date, YYYY-MM-DD; showing from now.",
    ]
    tree = _page_layout(client, "/capacity", "?label=tenant&value=t-big&factor=500")
    assert _component(tree, "cap-factor")["value"] == 1.0  # the control shows the default, not "abc" or 500
    assert "factor='500'" in json.dumps(_component(tree, "cap-url-notice"))
    assert said("/capacity", "?label=tenant&value=t-big&factor=2&start=2026-05-01", "cap-url-notice") == []
    assert said("/service/rag-api", "?by=zone", "svc-url-notice") == [
        "Ignored by='zone' in the URL: expected a label of rag-api's metrics: one of instance, region; "
        "showing no grouping."
    ]
    assert said("/service/rag-api", "?by=region", "svc-url-notice") == []
