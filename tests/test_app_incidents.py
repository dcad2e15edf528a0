"""The Incidents and Incident pages in a real headless Chromium, over a store with a known root cause.

Gateway error counts per tenant x model version; v42's error rate jumps 3 minutes after a model rollout.
Detection opens the incident and the root-cause engine explains it, as ``rootwise detect`` does; the browser
then checks what an on-call engineer relies on: the list and its URL filters, the RCA with the rollout on top,
acknowledging, the postmortem export, and that telemetry text never runs as markup.

Skipped only when /usr/bin/chromium is absent outside CI (like tests/test_app_browser.py).
"""

from __future__ import annotations

import os
import signal
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from app.detect import DetectConfig, run_detection
from app.evidence import LABELS
from app.explain import explain_new_incidents
from detectors.incidents import Incident
from ingest import results, schema
from ingest.batch import MetricBuilder, TelemetryBatch
from ingest.store import Store

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason="Debian chromium not installed"
)

T0 = datetime(2026, 5, 4)
MINUTES = 2 * 1440
ONSET = T0 + timedelta(minutes=MINUTES - 60)
EVIL = "<script>alert(1)</script>"
EVIL_TITLE = 'top_k 20 -> 25 <img src=x onerror="alert(2)"><b>bold</b>'
MANUAL_ID = "inc-manual-gateway"


def _ns(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1)) // timedelta(microseconds=1) * 1000


def _build(store: Store) -> str:
    """Telemetry with a rollout-caused error spike, detected and explained; returns the incident id."""
    rng = np.random.default_rng(3)
    b = MetricBuilder("test")
    for tenant in ("t1", "t2", "t3", EVIL):
        for version in ("v41", "v42"):
            labels = {"tenant": tenant, "model_version": version, "region": "eu"}
            req = b.series("requests", "gateway", "delta", "1", labels)
            err = b.series("errors", "gateway", "delta", "1", labels)
            n = rng.poisson(200, MINUTES).astype(float)
            for i in range(MINUTES):
                ts = T0 + timedelta(minutes=i)
                rate = 0.25 if (version == "v42" and ts >= ONSET) else 0.01
                b.point(req, _ns(ts), n[i], f"r{tenant}{version}{i}")
                b.point(err, _ns(ts), float(rng.binomial(int(n[i]), rate)), f"e{tenant}{version}{i}")
    events = pl.DataFrame(
        [
            {
                "event_id": "chg-rollout",
                "ts": ONSET - timedelta(minutes=3),
                "service": "llm-serving",
                "kind": "model_rollout",
                "title": "Promote m-large v42 to all tenants",
                "attributes": [{"key": "model_version", "value": "v42"}],
            },
            {
                "event_id": "chg-config",
                "ts": ONSET - timedelta(minutes=1),
                "service": "reranker",
                "kind": "config",
                "title": EVIL_TITLE,
                "attributes": [{"key": "parameter", "value": "top_k"}],
            },
        ],
        schema=schema.EVENTS,
    )
    edges = pl.DataFrame(
        {"source": ["gateway"], "target": ["llm-serving"], "origin": ["catalog"], "ts": [T0]},
        schema=schema.EDGES,
    )
    store.append(b.build())
    store.append(TelemetryBatch(events=events, edges=edges))
    run_detection(store, DetectConfig(workers=1))
    explain_new_incidents(store)
    (detected,) = results.list_incidents(store)
    # a second incident of the same KPI, opened by hand and not explained yet: the "Explain now" path
    manual = Incident(
        MANUAL_ID, "gateway", "errors", {}, ONSET, ONSET + timedelta(minutes=20), "ticket", "open"
    )
    results.save_detection(
        store, states={}, anomalies=pl.DataFrame(), detector="manual", incidents=[manual], now=ONSET
    )
    return detected["id"]


@pytest.fixture
def incident_server(tmp_path, serve_process):
    db = tmp_path / "incidents.duckdb"
    with Store(db) as store:
        incident_id = _build(store)
    url, proc = serve_process(db, "--decode-workers", "0")
    yield url, proc, db, incident_id
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _no_dash_errors(page) -> None:
    assert page.locator(".dash-fe-error, .dash-fe-error__title").count() == 0
    assert page.errors == [], page.errors
    assert page.dialogs == [], page.dialogs


def test_incidents_and_incident_page_in_chromium(incident_server, browser_page, tmp_path, screenshot):
    url, proc, db, incident_id = incident_server
    page = browser_page

    # -- the list: filters come from the URL and stay in it
    page.goto(url + "/incidents?service=gateway&severity=page")
    page.wait_for_selector("#il-table td[data-dash-column=top_cause]", timeout=20_000)
    table = page.inner_text("#il-table")
    assert "page" in table and "Promote m-large v42" in table and "ticket" not in table
    assert "severity=page" in page.url and "service=gateway" in page.url
    assert "page" in page.inner_text("#il-severity")
    screenshot(page, "incidents.png")
    page.goto(url + "/incidents?status=open&severity=ticket")
    page.wait_for_function("document.querySelector('#il-count')?.innerText.startsWith('1 incident')")
    assert "not explained yet" in page.inner_text("#il-table")
    page.goto(url + "/incidents")
    page.wait_for_function("document.querySelector('#il-count')?.innerText.startsWith('2 incidents')")
    page.click("#il-status")
    page.click("[role=option]:has(input[value=open])")  # a filter set in the page goes to the URL
    page.wait_for_url("**/incidents?status=open")
    page.goto(url + "/incidents")
    page.wait_for_function("document.querySelector('#il-count')?.innerText.startsWith('2 incidents')")
    # durations are whole minutes, so sorting the column sorts by length (as text, "1 h" came before "1 min")
    durations = page.locator("#il-table td[data-dash-column=duration]").all_inner_texts()
    assert durations and all(d.strip().isdigit() for d in durations if d.strip()), durations
    # most severe first; each row links to its incident page
    first_row = page.locator("#il-table tr").nth(1)
    assert "page" in first_row.inner_text()
    first_row.locator("a", has_text="view").click()
    page.wait_for_url(f"**/incident/{incident_id}")

    # -- the incident: KPI, RCA with the rollout first, the untrusted label rendered as text
    page.wait_for_selector("#inc-causes details", timeout=20_000)
    top = page.locator("#inc-causes details").first
    assert "change" in top.locator("summary .kind").inner_text().lower()
    assert "Promote m-large v42 to all tenants" in top.inner_text()
    assert "chg-rollout" in top.inner_text()
    # the evidence in words with units, not the engine's keys (the top cause is open; the others are folded)
    evidence = top.locator("table.evidence").inner_text()
    assert "Position in the call graph" in evidence and "min before the onset" in evidence, evidence
    raw = [k for k in LABELS if "_" in k and k in page.text_content("#inc-causes")]
    assert not raw, f"raw evidence keys on the page: {raw}"
    assert "model_version=v42" in page.inner_text("#inc-dimensions")
    assert EVIL in page.inner_text("#inc-series")  # shown as text; the dialog handler stays silent
    assert EVIL_TITLE in page.inner_text("#inc-causes")  # the config change, further down the ranking
    assert (
        page.locator("img[src=x], b:text('bold')").count() == 0
    )  # nothing parsed as markup, charts included
    page.wait_for_selector("#inc-kpi .scatterlayer .trace")
    assert page.locator("#inc-kpi .scatterlayer .trace").count() >= 4  # affected series + anomaly markers
    assert page.locator("#inc-graph canvas").count() > 0
    assert "UTC" in page.inner_text(".tz-note")
    screenshot(page, "incident.png")

    # -- actions: reopen and acknowledge (page, reload, store), share link, postmortem export
    page.click("#inc-reopen")  # detection resolved it once the errors stopped
    page.wait_for_function("document.querySelector('#inc-status').innerText === 'open'")
    page.click("#inc-ack")
    page.wait_for_function("document.querySelector('#inc-status').innerText === 'acknowledged'")
    page.reload()
    page.wait_for_selector("#inc-causes details")
    assert page.inner_text("#inc-status") == "acknowledged"
    page.context_.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
    page.click("#inc-clip")
    copied = ""
    for _ in range(50):  # the content arrives from a callback, then is written to the clipboard
        copied = page.evaluate("navigator.clipboard.readText()")
        if copied:
            break
        page.wait_for_timeout(100)
    assert copied == page.url
    with page.expect_download() as download:
        page.click("#inc-export")
    markdown = Path(download.value.path()).read_text()
    assert markdown.startswith("# Postmortem draft: errors on gateway")
    assert "Promote m-large v42 to all tenants" in markdown and "chg-rollout" in markdown
    assert "acknowledged" in markdown and EVIL not in markdown  # escaped: &lt;script&gt;...
    assert "Position in the call graph:" in markdown and "before\\_onset" not in markdown
    (tmp_path / "postmortem.md").write_text(markdown)
    if os.environ.get("ROOTWISE_SCREENSHOTS"):
        Path(os.environ["ROOTWISE_SCREENSHOTS"], "postmortem.md").write_text(markdown)
    _no_dash_errors(page)

    # -- no stored RCA: "Explain now" runs it and stores it
    page.goto(url + f"/incident/{MANUAL_ID}")
    page.click("#inc-explain")
    page.wait_for_selector("#inc-causes details", timeout=30_000)
    # a resolved incident is reopened, not acknowledged (it would leave the resolved list)
    page.click("#inc-resolve")
    page.wait_for_function("document.querySelector('#inc-status').innerText === 'resolved'")
    page.click("#inc-ack")
    page.wait_for_function("document.querySelector('#inc-action-msg').innerText.includes('reopen it')")
    assert page.inner_text("#inc-status") == "resolved"
    assert "Promote m-large v42" in page.locator("#inc-causes details").first.inner_text()
    screenshot(page, "incident-explained.png")

    # -- an unknown id is a message, not a callback error
    page.goto(url + "/incident/nope")
    page.wait_for_selector("#inc-missing")
    assert "No incident 'nope'" in page.inner_text("#inc-missing")
    page.goto(url + "/incident")  # the nav's link: no id
    page.wait_for_selector("#inc-missing")
    assert "Pick an incident" in page.inner_text("#inc-missing")
    screenshot(page, "incident-missing.png")
    _no_dash_errors(page)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    with Store(db) as store:
        assert results.get_incident(store, incident_id)["status"] == "acknowledged"
        assert results.get_incident(store, MANUAL_ID)["causes"][0]["event_id"] == "chg-rollout"
        assert results.get_incident(store, MANUAL_ID)["status"] == "resolved"
