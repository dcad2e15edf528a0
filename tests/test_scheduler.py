"""The scheduler of ``rootwise serve`` in-process: a pass over an empty store, the capacity report's delivery to
Slack and webhook receivers (real loopback receiver) and its page, and the config checks."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import flask
import pytest
from alerting_support import Receiver
from standardwebhooks.webhooks import Webhook

from app.alerts.config import alerting_from_config, check_config
from app.config import ConfigError
from app.scheduler import (
    SCORING_NICE,
    Scheduler,
    SchedulerSettings,
    report_receiver_errors,
    scheduler_settings,
)
from ingest.store import Store

SECRET = "whsec_" + base64.b64encode(b"scheduler-test-key-0123456789abc").decode()


def test_settings_parse_and_name_bad_keys() -> None:
    s = scheduler_settings(
        {"scheduler": {"detect_interval": "30s", "report_interval": "0s", "detect_workers": 2}}
    )
    assert (
        s.detect_interval == timedelta(seconds=30)
        and s.report_interval == timedelta(0)
        and s.detect_workers == 2
    )
    with pytest.raises(ConfigError, match="scheduler.detect_interval: expected a duration"):
        scheduler_settings({"scheduler": {"detect_interval": 60}})
    with pytest.raises(ConfigError, match="scheduler: unknown key 'every'"):
        scheduler_settings({"scheduler": {"every": "1m"}})


def test_report_receivers_must_be_chat_or_webhook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_PD", "0123456789abcdef0123456789abcdef")
    alerting = alerting_from_config(
        {"receivers": [{"name": "pd", "type": "pagerduty", "routing_key": "${T_PD}"}]}
    )
    errors = report_receiver_errors(SchedulerSettings(report_receivers=("pd", "nope")), alerting)
    assert "scheduler.report_receivers[0]: 'pd' is a pagerduty receiver" in errors[0]
    assert "no receiver named 'nope'" in errors[1]
    cfg = tmp_path / "rootwise.toml"
    cfg.write_text('[scheduler]\nreport_receivers = ["nope"]\n')
    assert any("report_receivers[0]" in e for e in check_config(cfg)[0])


def test_pass_on_an_empty_store_and_report_delivery(tmp_path: Path, receiver: Receiver, monkeypatch) -> None:
    monkeypatch.setenv("T_SECRET", SECRET)
    alerting = alerting_from_config(
        {
            "receivers": [
                {"name": "chat", "type": "slack", "url": f"{receiver.url}/slack/T/B/x"},
                {"name": "hook", "type": "webhook", "url": f"{receiver.url}/hook", "secret": "${T_SECRET}"},
            ],
            "alerting": {"external_url": "http://rootwise.test"},
        }
    )
    with Store(tmp_path / "s.duckdb") as store:
        sched = Scheduler(
            store,
            settings=SchedulerSettings(report_receivers=("chat", "hook")),
            alerting=alerting,
            db_path=tmp_path / "s.duckdb",
        )
        out = sched.run_pass()
        assert "error" not in out and out["detect"]["series"] == 0
        assert sched.stats.passes["ok"] == 1 and sched.stats.reports["skipped"] == 1  # no demand data yet
        assert 'rootwise_scheduler_passes_total{outcome="ok"} 1' in sched.prometheus()
        # a written report goes to both receivers from the outbox, and is served at /reports/<name>
        sched.report_dir.mkdir(parents=True, exist_ok=True)
        (sched.report_dir / "capacity-x.html").write_text("<html>report</html>")
        summary = {
            "created": "2026-03-01T00:00:00",
            "bottom_line": "GPU quota in us-east runs out around 2026-04-02 (P90 2026-03-25).",
            "resources": [
                {"name": "gpus/us-east", "p50": "2026-04-02", "p90": "2026-03-25", "action": "add 8 GPUs"}
            ],
        }
        now = datetime.now(UTC).replace(tzinfo=None)
        sched._enqueue_report("capacity-x.html", summary, now)
        sched._enqueue_report("capacity-x.html", summary, now)  # idempotent
        assert sched.deliver_once(now) == {
            "delivered": 2,
            "retrying": 0,
            "failed": 0,
            "dead": 0,
            "deferred": 0,
            "skipped": 0,
        }
        (slack,) = receiver.ok("/slack")
        text = slack.body.decode()
        assert (
            "Capacity report" in text
            and "gpus/us-east" in text
            and "http://rootwise.test/reports/capacity-x.html" in text
        )
        (hook,) = receiver.ok("/hook")
        body = Webhook(SECRET).verify(hook.body, hook.headers)
        assert body["type"] == "capacity_report" and body["report"]["bottom_line"].startswith("GPU quota")
        app = flask.Flask("t")
        sched.mount(app)
        client = app.test_client()
        assert client.get("/reports/capacity-x.html").data == b"<html>report</html>"
        assert client.get("/reports/..%2Fs.duckdb").status_code == 404


def test_a_pass_rolls_up_the_complete_hours(tmp_path: Path) -> None:
    from ingest.batch import MetricBuilder

    b = MetricBuilder("t")
    sid = b.series("queue_depth", "api", "gauge", "1", {})
    t0 = datetime(2026, 3, 1)
    for i in range(3 * 60):
        b.point(sid, int((t0 + timedelta(minutes=i)).replace(tzinfo=UTC).timestamp() * 1e9), float(i), "p")
    with Store(tmp_path / "s.duckdb") as store:
        store.append(b.build())
        out = Scheduler(store, settings=SchedulerSettings(report_interval=timedelta(0))).run_pass()
        assert "error" not in out
        assert out["rollup"]["rolled_to"] == "2026-03-01T02:00:00"  # 02:59 minus 10 minutes of grace
        assert (store.count("points_1h"), store.count("points_5m"), store.count("points")) == (2, 24, 180)


def test_passes_keep_their_scoring_processes_until_stop(tmp_path: Path) -> None:
    from app.detect import DetectConfig
    from ingest.batch import MetricBuilder

    b = MetricBuilder("t")
    t0 = datetime(2026, 3, 1)
    for k in range(3):
        sid = b.series("queue_depth", f"api-{k}", "gauge", "1", {})
        for i in range(60):
            ns = int((t0 + timedelta(minutes=i)).replace(tzinfo=UTC).timestamp() * 1e9)
            b.point(sid, ns, float(i % 7), "p")
    with Store(tmp_path / "s.duckdb") as store:
        store.append(b.build())
        sched = Scheduler(
            store,
            settings=SchedulerSettings(report_interval=timedelta(0)),
            detect_config=DetectConfig(batch=1, workers=2),  # three batches: scored in the processes
        )
        assert sched.run_pass()["detect"]["series"] == 3
        pool = sched._pool
        started = list(pool.started)
        assert len(started) == 2
        base = os.nice(0)  # the scoring processes run below this process's priority
        assert all(nice == min(base + SCORING_NICE, 19) for *_, nice in started)
        assert "error" not in sched.run_pass()
        assert sched._pool is pool and pool.started == started
        sched.stop(flush=False)
        assert sched._pool is None and pool._executor is None
