"""Shared by the alerting tests: a real HTTP receiver on 127.0.0.1, a config of every receiver type pointing at
it, sample incidents, and a delivery loop on a simulated clock."""

from __future__ import annotations

import base64
import json
import random
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from app.alerts.config import AlertingConfig, alerting_from_config
from app.alerts.notifiers import build_notifiers
from app.alerts.outbox import RateLimiter, deliver_due
from ingest import alerts_store
from ingest.store import Store

T0 = datetime(2026, 3, 1, 12, 0, 0)
PD_KEY = "pd-routing-key-SECRET-0123456789ab"
OG_KEY = "og-api-key-SECRET-89abcdef01234567"
WH_KEY = b"standard-webhooks-key-32-bytes!!"
WH_SECRET = "whsec_" + base64.b64encode(WH_KEY).decode()
SLACK_TOKEN = "SLACKTOKENSECRETxxxxxxxxxxxx"


# -- a real HTTP receiver --------------------------------------------------------------------------------
@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


Reply = tuple[int, dict[str, str], bytes]


class Receiver:
    """``ThreadingHTTPServer`` on 127.0.0.1 in a thread; ``reply(path, headers, body)`` decides each answer."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.reply: Callable[[str, dict[str, str], bytes], Reply] = lambda p, h, b: (
            202,
            {},
            b'{"status":"ok"}',
        )
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    def start(self) -> Receiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra, answer = owner.reply(self.path, headers, body)
                with owner._lock:
                    owner.received.append(Received(self.path, headers, body, status))
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ok(self, path_prefix: str = "") -> list[Received]:
        return [r for r in self.received if 200 <= r.status < 300 and r.path.startswith(path_prefix)]


def make_config(monkeypatch: pytest.MonkeyPatch, base: str, **overrides: Any) -> AlertingConfig:
    monkeypatch.setenv("T_PD_KEY", PD_KEY)
    monkeypatch.setenv("T_OG_KEY", OG_KEY)
    monkeypatch.setenv("T_WH_SECRET", WH_SECRET)
    receivers = [
        {"name": "pd", "type": "pagerduty", "url": f"{base}/pd", "routing_key": "${T_PD_KEY}"},
        {"name": "chat", "type": "slack", "url": f"{base}/services/T01/B02/{SLACK_TOKEN}"},
        {"name": "og", "type": "opsgenie", "url": f"{base}/og", "api_key": "${T_OG_KEY}"},
        {"name": "hook", "type": "webhook", "url": f"{base}/hook", "secret": "${T_WH_SECRET}"},
    ]
    for r in receivers:
        r.update(overrides.get(r["name"], {}))
    return alerting_from_config(
        {"receivers": receivers, "alerting": {"external_url": "http://rootwise.test:8050"}}
    )


def incident(i: int = 1, status: str = "open", **over: Any) -> dict[str, Any]:
    base = {
        "id": f"inc-{i}",
        "service": "llm-gateway",
        "metric": "ttft_p95",
        "labels": {"model": "llama-70b"},
        "start": "2026-03-01T11:50:00",
        "end": "2026-03-01T11:59:00",
        "severity": "page",
        "status": status,
        "peak": 8.0,
        "causes": [{"rank": 1, "kind": "change", "evidence": {"explanation": "deploy v42"}}],
    }
    return {**base, **over}


def run_until_idle(
    store: Store,
    config: AlertingConfig,
    start: datetime,
    *,
    step_s: float = 15,
    max_passes: int = 400,
    **kw: Any,
) -> datetime:
    """Deliver pass after pass on a simulated clock until nothing is pending; returns the clock."""
    notifiers, rng, limiter, now = build_notifiers(config), random.Random(7), RateLimiter(), start
    for _ in range(max_passes):
        deliver_due(store, notifiers, now, rng=rng, limiter=limiter, **kw)
        if not alerts_store.status_counts(store).get("pending"):
            return now
        now += timedelta(seconds=step_s)
    raise AssertionError(f"still pending after {max_passes} passes: {alerts_store.status_counts(store)}")


# -- rootwise serve with alerting (tests/test_serve_*.py) ------------------------------------------------
SERVE_WH_SECRET = "whsec_" + base64.b64encode(b"e2e-standard-webhooks-key-32byte").decode()
SERVE_PD_KEY = "e2e-pd-routing-key-0123456789abcdef"


def write_config(path: Path, receiver: Receiver, **scheduler: str) -> Path:
    sched = {"detect_interval": "2s", "deliver_interval": "500ms", "report_interval": "0s", **scheduler}
    lines = ["[scheduler]"] + [f'{k} = "{v}"' for k, v in sched.items()]
    lines += [
        "[alerting]",
        'external_url = "http://rootwise.test:8050"',
        "[[receivers]]",
        'name = "pd"',
        'type = "pagerduty"',
        f'url = "{receiver.url}/pd"',
        'routing_key = "${E2E_PD_KEY}"',
        "[[receivers]]",
        'name = "chat"',
        'type = "slack"',
        f'url = "{receiver.url}/slack/T0/B0/xyzSECRETxyz"',
        "[[receivers]]",
        'name = "hook"',
        'type = "webhook"',
        f'url = "{receiver.url}/hook"',
        'secret = "${E2E_WH_SECRET}"',
        "[[routes]]",
        'receiver = "pd"',
        'group_wait = "1s"',
        'group_interval = "2s"',
        "continue = true",
        "[[routes]]",
        'receiver = "chat"',
        'group_by = ["service"]',
        'group_wait = "1s"',
        'group_interval = "2s"',
        "continue = true",
        "[[routes]]",
        'receiver = "hook"',
        'group_by = ["service"]',
        'group_wait = "1s"',
        'group_interval = "2s"',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


SERVE_ENV = {"E2E_PD_KEY": SERVE_PD_KEY, "E2E_WH_SECRET": SERVE_WH_SECRET}


def wait_for(
    check: Callable[[], Any], timeout: float, what: str, proc: subprocess.Popen | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"server exited while waiting for {what}: {proc.stderr.read() if proc.stderr else ''}"
            )
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def pd_events(receiver: Receiver) -> list[tuple[str, str]]:
    return [(r.json()["event_action"], r.json()["dedup_key"]) for r in receiver.ok("/pd")]
