"""Capacity and Service pages in a real headless Chromium (Debian's, driven by Playwright).

The store holds four weeks of growing vLLM demand (the growth fixture of ``test_capacity.py``: two replicas,
KV cache filling with throughput, two tenants sharing the usage) plus two days of golden signals for
``rag-api`` in two regions. Skipped only when /usr/bin/chromium is absent and CI is unset.
"""

from __future__ import annotations

import json
import os
import re
import signal
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

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


@browser_only
def test_capacity_page_what_if_moves_the_date_and_downloads_the_report(
    server, browser_page, tmp_path, screenshot
):
    page = browser_page
    page.goto(server + "/capacity?label=tenant&value=t-big")
    p90 = page.locator("#cap-table td[data-dash-column='p90']").first
    p90.wait_for(timeout=30_000)
    baseline = _date(p90.inner_text())
    body = page.inner_text("main")
    assert "UTC" in body and "GPU throughput m-big " + REGION in body  # the label value shown as text
    assert "Settings:" in body  # where the limits come from is said on the page
    page.locator(".cap-chart .main-svg").first.wait_for(timeout=20_000)

    # t-big is half the demand: doubling it is x1.5 overall, so the P90 date comes earlier
    page.fill("#cap-factor", "2")
    page.press("#cap-factor", "Enter")
    what_if = page.locator("#cap-table td[data-dash-column='s_p90']").first
    what_if.wait_for(timeout=30_000)
    assert _date(what_if.inner_text()) < baseline
    assert "factor=2" in page.url  # the what-if is in the URL, to share
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


def _capacity_body(client, value: str | None, factor: float | None) -> tuple[str, str]:
    out = _callback(
        client,
        "..cap-body.children...cap-url.search..",
        [{"id": "cap-body", "property": "children"}, {"id": "cap-url", "property": "search"}],
        [
            {"id": "cap-label", "property": "value", "value": "tenant"},
            {"id": "cap-value", "property": "value", "value": value},
            {"id": "cap-factor", "property": "value", "value": factor},
            {"id": "cap-start", "property": "date", "value": None},
        ],
    )
    return json.dumps(out["cap-body"]["children"]), out["cap-url"]["search"]


@pytest.fixture
def client_for():
    """``client_for(db)``: a Flask test client of the app over the store at ``db``."""
    opened = []

    def make(db: Path):
        store = Store(db)
        app, writer = create_server_app(store, mount=mount_dashboard)
        opened.append((store, writer))
        return app.test_client()

    yield make
    for store, writer in opened:
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
