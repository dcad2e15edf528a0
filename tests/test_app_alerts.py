"""The Alerts page in a real headless Chromium, against a real webhook receiver on 127.0.0.1.

Two open incidents (``svc-silenced`` and ``svc-other``) are in the store. The server first runs without its
scheduler: the page shows the receiver (host only, never the signing secret), "Send test" posts to the
receiver, bad matchers are refused with their reason, and a silence for ``svc-silenced`` is created and listed
as active. The server then restarts on the same file with the scheduler on: ``svc-other`` pages, ``svc-silenced``
does not and the page shows it held by the silence; expiring the silence from the page lets its page through.
A second test: with ``[app] auth = "basic"`` a viewer is refused the actions and a responder is recorded.

Skipped only when /usr/bin/chromium is absent outside CI (like tests/test_app_browser.py).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from alerting_support import Receiver

from detectors.incidents import Incident
from ingest.results import save_causes, save_detection
from ingest.store import Store

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason="Debian chromium not installed"
)

WH_KEY = base64.b64encode(b"alerts-page-webhook-key-32-bytes").decode()
WH_SECRET = "whsec_" + WH_KEY
SILENCED, OTHER = "inc-svc-silenced", "inc-svc-other"
EVIL = '<img src=x onerror="alert(1)"> planned <b>failover</b>'


def _seed(db: Path) -> None:
    """Two open paging incidents, explained (so the scheduler's RCA leaves them alone), on two services."""
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    incidents = [
        Incident(
            iid, svc, "p99_latency", {"model": "m"}, now - timedelta(minutes=5), None, "page", "open", {}
        )
        for iid, svc in ((SILENCED, "svc-silenced"), (OTHER, "svc-other"))
    ]
    with Store(db) as store:
        save_detection(store, states={}, anomalies=pl.DataFrame(), detector="t", incidents=incidents, now=now)
        for inc in incidents:  # a cause outside any firing service: no RCA hold between the two
            cause = {"rank": 1, "kind": "service", "service": "gpu-pool", "evidence": {"explanation": "slow"}}
            save_causes(store, inc.id, [cause])


def _config(path: Path, receiver: Receiver, extra: str = "") -> Path:
    path.write_text(
        f"""
[scheduler]
detect_interval = "1s"
deliver_interval = "200ms"
report_interval = "0s"

[alerting]
external_url = "http://rootwise.test:8050"

[[receivers]]
name = "hook"
type = "webhook"
url = "{receiver.url}/hook"
secret = "${{ALERTS_PAGE_WH_SECRET}}"

[[routes]]
receiver = "hook"
group_by = ["service"]
group_wait = "1s"
group_interval = "1s"
{extra}"""
    )
    return path


def _no_dash_errors(page) -> None:
    assert page.locator(".dash-fe-error, .dash-fe-error__title").count() == 0
    assert page.errors == [], page.errors
    assert page.dialogs == [], page.dialogs


def _triggers(receiver: Receiver) -> list[str]:
    """Incident ids of the firing alerts the receiver accepted, in order."""
    return [
        a["labels"]["incident_id"]
        for r in receiver.ok("/hook")
        for a in r.json()["alerts"]
        if a["status"] == "firing"
    ]


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def _stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


@pytest.mark.slow
def test_alerts_page_silence_holds_deliveries_until_expired(
    tmp_path, serve_process, browser_page, receiver, screenshot
):
    db = tmp_path / "alerts.duckdb"
    _seed(db)
    cfg = _config(tmp_path / "rootwise.toml", receiver)
    env = {"ALERTS_PAGE_WH_SECRET": WH_SECRET}
    page = browser_page

    # -- 1. no scheduler: configuration, send test, silences ------------------------------------------------
    url, proc = serve_process(db, "--config", str(cfg), "--decode-workers", "0", env=env, scheduler=False)
    page.goto(url + "/alerts")
    page.wait_for_selector("#al-receivers")
    receivers = page.inner_text("#al-receivers")
    assert "hook" in receivers and "webhook" in receivers and receiver.url in receivers
    assert "600 / min" in receivers and "1d" in receivers  # the webhook default rate limit and deadline
    routes = page.inner_text("#al-routes")
    assert "service" in routes and "1s" in routes and "4h" in routes
    assert "Alerts" in page.inner_text(".topnav")  # registered: in the nav
    with urllib.request.urlopen(
        url + "/_dash-layout"
    ) as resp:  # every prop the browser gets, hidden ones too
        served = resp.read().decode()
    for shown in (page.content(), served):
        assert WH_SECRET not in shown and WH_KEY not in shown and "/hook" not in shown

    # send test: a real signed POST at the receiver, "delivered" on the page
    page.click("#al-receivers button:has-text('Send test')")
    page.wait_for_function("document.querySelector('#al-test-msg')?.innerText.includes('delivered')")
    assert "Test to hook: delivered (HTTP 202)" in page.inner_text("#al-test-msg")
    (test_post,) = receiver.ok("/hook")
    assert test_post.json()["alerts"][0]["labels"]["test"] == "true"
    assert test_post.headers.get("webhook-signature", "").startswith("v1,")

    # bad matchers are refused with their reason; nothing is stored
    for typed, reason in (("service=~(", "invalid regular expression"), ('service=~".*"', "empty label set")):
        page.fill("#al-sil-matchers", typed)
        page.click("#al-sil-create")
        page.wait_for_function(
            f"document.querySelector('#al-sil-msg')?.innerText.includes({json.dumps(reason)})"
        )
        assert page.inner_text("#al-sil-msg").startswith("Silence not created:")
    assert "No silences." in page.inner_text("#al-silences-box")

    # a silence for the incident's service, with an untrusted comment, is listed as active
    page.fill("#al-sil-matchers", 'service="svc-silenced"')
    page.fill("#al-sil-duration", "2h")
    page.fill("#al-sil-by", "alice")
    page.fill("#al-sil-comment", EVIL)
    page.click("#al-sil-create")
    page.wait_for_selector("#al-silences")
    assert "created" in page.inner_text("#al-sil-msg")
    row = page.locator("#al-silences tbody tr").first
    assert "active" in row.inner_text() and 'service="svc-silenced"' in row.inner_text()
    assert EVIL in row.inner_text() and "alice" in row.inner_text()
    assert page.locator("img[src=x], b:text('failover')").count() == 0
    assert "No notification is held." in page.inner_text("#al-holds-box")
    assert "0 pending · 0 delivered" in page.inner_text("#al-counts")
    screenshot(page, "alerts-silence-created.png")
    _no_dash_errors(page)
    page.goto("about:blank")  # the page polls every 5 s: it must not poll a stopped server
    _stop(proc)

    # -- 2. the same store with the scheduler: the silence holds svc-silenced's page -------------------------
    url, proc = serve_process(db, "--config", str(cfg), "--decode-workers", "0", env=env, scheduler=True)
    _wait_for(lambda: OTHER in _triggers(receiver), 20, "svc-other's page at the receiver")
    time.sleep(3)  # three more detection + alerting passes
    assert SILENCED not in _triggers(receiver), "a silenced incident was delivered"
    page.goto(url + "/alerts")
    page.wait_for_selector("#al-holds")
    held = page.locator("#al-holds tbody tr", has_text=SILENCED)
    assert held.count() == 1 and "silence" in held.inner_text()
    assert "svc-silenced" in held.inner_text() and "silenced by" in held.inner_text()
    page.wait_for_selector(f"#al-log td[data-dash-column=incident_id]:has-text('{OTHER}')")
    log_row = page.locator("#al-log tr", has_text=OTHER)
    assert "delivered" in log_row.inner_text() and "trigger" in log_row.inner_text()
    screenshot(page, "alerts-held.png")

    # -- 3. expire it from the page: the held page goes out; the receiver is busy at first (retry state) ----
    receiver.reply = lambda path, headers, body: (503, {"Retry-After": "8"}, b"busy")
    page.click("#al-silences button:has-text('Expire')")
    page.wait_for_function("document.querySelector('#al-sil-msg')?.innerText.includes('expired')")
    page.wait_for_function(
        "document.querySelector('#al-silences tbody tr')?.innerText.includes('expired')", timeout=10_000
    )
    _wait_for(lambda: any(r.status == 503 for r in receiver.received), 15, "the first attempt after expiry")
    retrying = page.locator("#al-log tr", has_text=SILENCED)
    page.wait_for_function(  # the 5 s refresh shows the pending retry and its error
        "[...document.querySelectorAll('#al-log tr')].some(r => r.innerText.includes('retrying: attempt 2'))",
        timeout=10_000,
    )
    assert "pending" in retrying.inner_text() and "503" in retrying.inner_text()
    assert SILENCED not in _triggers(receiver)
    screenshot(page, "alerts-retrying.png")
    receiver.reply = lambda path, headers, body: (202, {}, b'{"status":"ok"}')
    _wait_for(lambda: SILENCED in _triggers(receiver), 20, "svc-silenced's page after the Retry-After")
    assert _triggers(receiver).count(SILENCED) == 1 and _triggers(receiver).count(OTHER) == 1
    # the refresh shows it delivered on the second attempt and no longer held
    page.wait_for_function(
        "[...document.querySelectorAll('#al-log tr')].some(r => r.innerText.includes("
        f"{json.dumps(SILENCED)}) && r.innerText.includes('delivered'))",
        timeout=15_000,
    )
    delivered = page.locator("#al-log tr", has_text=SILENCED)
    assert delivered.locator("td[data-dash-column=attempts]").inner_text().strip() == "2"
    page.wait_for_function(
        "document.querySelector('#al-holds-box')?.innerText.includes('No notification is held.')",
        timeout=15_000,
    )
    assert "0 pending · 2 delivered" in page.inner_text("#al-counts")
    screenshot(page, "alerts-expired.png")
    page.click("#rw-theme-toggle")  # the shared theme: the page's tables follow it and nothing overflows
    page.wait_for_function("document.documentElement.classList.contains('theme-dark')")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1366
    screenshot(page, "alerts-dark.png")
    _no_dash_errors(page)
    _stop(proc)


def test_alerts_page_viewer_is_refused_and_empty_config_says_so(
    tmp_path, serve_process, browser_page, receiver, screenshot
):
    db = tmp_path / "auth.duckdb"
    _seed(db)
    users = """
[app]
auth = "basic"
[[app.users]]
name = "vera"
password = "${ALERTS_PAGE_VIEWER_PW}"
role = "viewer"
[[app.users]]
name = "alice"
password = "${ALERTS_PAGE_RESPONDER_PW}"
role = "responder"
"""
    cfg = _config(tmp_path / "rootwise.toml", receiver, users)
    env = {
        "ALERTS_PAGE_WH_SECRET": WH_SECRET,
        "ALERTS_PAGE_VIEWER_PW": "viewer-password-1",
        "ALERTS_PAGE_RESPONDER_PW": "responder-password-1",
    }
    url, proc = serve_process(db, "--config", str(cfg), "--decode-workers", "0", env=env)
    browser = browser_page.context.browser

    def signed_in(name: str, password: str):
        token = base64.b64encode(f"{name}:{password}".encode()).decode()
        context = browser.new_context(
            viewport={"width": 1366, "height": 768}, extra_http_headers={"Authorization": f"Basic {token}"}
        )
        pg = context.new_page()
        pg.errors, pg.dialogs = [], []
        pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
        pg.goto(url + "/alerts")
        pg.wait_for_selector("#al-receivers")
        return pg

    # a viewer sees everything and may do nothing: the actions disabled, saying why; nothing sent or stored
    viewer = signed_in("vera", "viewer-password-1")
    assert "Read-only" in viewer.inner_text("#al-read-only")
    for selector in ("#al-receivers button:has-text('Send test')", "#al-sil-create"):
        action = viewer.locator(selector)
        assert action.is_disabled() and "responder role" in (action.get_attribute("title") or "")
    assert viewer.is_disabled("#al-sil-matchers") and viewer.is_disabled("#al-sil-comment")
    # clicks sent anyway (disabled only on the page) are refused by the server
    props = "window.dash_clientside.set_props"
    viewer.evaluate(f"{props}({{type: 'al-test', receiver: 'hook'}}, {{n_clicks: 1}})")
    viewer.wait_for_function("document.querySelector('#al-test-msg')?.innerText.includes('Not allowed')")
    viewer.evaluate(f"{props}('al-sil-matchers', {{value: 'service=\"svc-silenced\"'}})")
    viewer.evaluate(f"{props}('al-sil-create', {{n_clicks: 1}})")
    viewer.wait_for_function("document.querySelector('#al-sil-msg')?.innerText.includes('Not allowed')")
    viewer.wait_for_timeout(500)
    assert receiver.received == []
    assert "No silences." in viewer.inner_text("#al-silences-box")
    screenshot(viewer, "alerts-viewer.png")
    _no_dash_errors(viewer)

    # a responder may; the silence records the signed-in user, whatever the form says
    responder = signed_in("alice", "responder-password-1")
    assert responder.locator("#al-read-only").count() == 0
    assert responder.input_value("#al-sil-by") == "alice" and responder.is_disabled("#al-sil-by")
    responder.fill("#al-sil-matchers", 'service="svc-silenced", model=~"m|n"')
    responder.click("#al-sil-create")
    responder.wait_for_selector("#al-silences")
    row = responder.locator("#al-silences tbody tr").first.inner_text()
    assert "active" in row and "alice" in row and 'model=~"m|n"' in row
    assert responder.locator("#al-silences button:has-text('Expire')").is_enabled()
    _no_dash_errors(responder)
    viewer.reload()  # the viewer sees the silence, and its Expire disabled
    expire = viewer.locator("#al-silences button:has-text('Expire')")
    expire.wait_for()
    assert expire.is_disabled() and "responder role" in (expire.get_attribute("title") or "")
    _no_dash_errors(viewer)
    _stop(proc)

    # no receivers configured: a pointer to the README, not a broken page
    url, proc = serve_process(db, "--decode-workers", "0")
    browser_page.goto(url + "/alerts")
    browser_page.wait_for_selector("#al-no-receivers")
    assert "No receivers configured — see README 'Alerting'" in browser_page.inner_text("#al-no-receivers")
    browser_page.wait_for_selector("#al-silences")  # the silences created above are still listed
    screenshot(browser_page, "alerts-unconfigured.png")
    _no_dash_errors(browser_page)
    _stop(proc)
