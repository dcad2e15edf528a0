"""The app behind ``[app] auth``: basic auth with viewers and responders, and a trusted SSO header — over a real
``rootwise serve`` process, with Chromium for the responder actions."""

from __future__ import annotations

import base64
import signal
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from detectors.incidents import Incident
from ingest import results
from ingest.store import Store

INCIDENT = "inc-auth-1"
PASSWORDS = {"ROOTWISE_T_ALICE": "alice-responder-pw", "ROOTWISE_T_VIC": "vic-viewer-pw"}


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "auth.duckdb"
    t = datetime(2026, 3, 1, 12, 0)
    inc = Incident(INCIDENT, "rag-api", "p99_latency", {}, t, t + timedelta(minutes=9), "page", "open")
    with Store(path) as store:
        results.save_detection(
            store, states={}, anomalies=pl.DataFrame(), detector="t", incidents=[inc], now=t
        )
    return path


def test_basic_auth_separates_viewers_from_responders(db, tmp_path, serve_process, browser_page) -> None:
    cfg = tmp_path / "rootwise.toml"
    cfg.write_text(
        '[app]\nauth = "basic"\n'
        '[[app.users]]\nname = "alice"\npassword = "${ROOTWISE_T_ALICE}"\nrole = "responder"\n'
        '[[app.users]]\nname = "vic"\npassword = "${ROOTWISE_T_VIC}"\nrole = "viewer"\n'
    )
    url, proc = serve_process(db, "--config", str(cfg), "--decode-workers", "0", env=PASSWORDS)
    assert _status(url + "/") == 401
    assert _status(url + "/", _basic("vic", "wrong-password")) == 401
    assert _status(url + "/", _basic("mallory", "vic-viewer-pw")) == 401
    assert _status(url + "/", _basic("vic", "vic-viewer-pw")) == 200
    assert _status(url + "/healthz") == 200 and _status(url + "/readyz") == 200  # probes stay open
    assert _status(url + "/api/v1/incidents") == 200  # the API has its own token ([server] token)

    page = browser_page
    viewer = page.context_.browser.new_context(
        http_credentials={"username": "vic", "password": "vic-viewer-pw"}
    )
    vp = viewer.new_page()
    vp.goto(url + f"/incident/{INCIDENT}")
    # a viewer sees the actions disabled, each saying why, and the page says it is read-only
    for action in ("#inc-ack", "#inc-resolve", "#inc-reopen", "#inc-explain"):
        assert vp.is_disabled(action), action
        assert "responder role" in (vp.get_attribute(action, "title") or ""), action
    assert "Read-only" in vp.inner_text("#inc-read-only")
    assert vp.is_enabled("#inc-export")  # reading is not acting: the postmortem export stays
    # a click sent anyway (the button is disabled only on the page) is still refused by the server
    vp.evaluate("window.dash_clientside.set_props('inc-ack', {n_clicks: 1})")
    vp.wait_for_function("document.querySelector('#inc-action-msg')?.innerText.includes('Only responders')")
    assert vp.inner_text("#inc-status") == "open"
    viewer.close()

    responder = page.context_.browser.new_context(
        http_credentials={"username": "alice", "password": "alice-responder-pw"}
    )
    rp = responder.new_page()
    rp.goto(url + f"/incident/{INCIDENT}")
    assert rp.is_enabled("#inc-explain") and rp.get_attribute("#inc-ack", "title") is None
    assert rp.locator("#inc-read-only").count() == 0
    rp.click("#inc-ack")
    rp.wait_for_function("document.querySelector('#inc-status')?.innerText === 'acknowledged'")
    responder.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    with Store(db) as store:
        assert results.get_incident(store, INCIDENT)["status"] == "acknowledged"
    assert not any(p in (proc.stderr.read() or "") for p in PASSWORDS.values())


def test_sso_header_mode(db, tmp_path, serve_process) -> None:
    cfg = tmp_path / "rootwise.toml"
    cfg.write_text('[app]\nauth = "header"\nuser_header = "X-Auth-User"\nresponders = ["alice"]\n')
    url, _ = serve_process(db, "--config", str(cfg), "--decode-workers", "0")
    assert _status(url + "/") == 401
    assert _status(url + "/", {"X-Auth-User": "bob"}) == 200


def test_auth_config_errors_name_the_key(tmp_path) -> None:
    from app.alerts.config import check_config

    cfg = tmp_path / "rootwise.toml"
    cfg.write_text('[app]\nauth = "basic"\n[[app.users]]\nname = "a"\npassword = "plaintext-pw"\n')
    errors, _ = check_config(cfg)
    assert any("app.users[0].password" in e for e in errors) and not any("plaintext-pw" in e for e in errors)
    cfg.write_text('[app]\nauth = "kerberos"\n')
    assert any("app.auth: expected one of none, basic, header" in e for e in check_config(cfg)[0])
