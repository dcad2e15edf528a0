"""Each notifier's request: payload shape and the target's documented limits (no network here)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from app.alerts.config import RECEIVER_TYPES, AlertingConfig, alerting_from_config
from app.alerts.notifiers import NOTIFIERS, Notification, Notifier, notifier_class
from app.alerts.opsgenie import OpsgenieNotifier
from app.alerts.pagerduty import PagerDutyNotifier
from app.alerts.slack import SlackNotifier, escape, fit
from app.alerts.webhook import WebhookNotifier

LINK = "http://rootwise.example:8050/incident/inc-42"


@pytest.fixture
def config(monkeypatch: pytest.MonkeyPatch) -> AlertingConfig:
    monkeypatch.setenv("T_PD", "pd-routing-key-00000000000000000")
    monkeypatch.setenv("T_OG", "og-api-key-11111111111111111111")
    return alerting_from_config(
        {
            "receivers": [
                {"name": "pd", "type": "pagerduty", "routing_key": "${T_PD}"},
                {
                    "name": "chat",
                    "type": "slack",
                    "url": "https://hooks.slack.example/services/T1/B2/secret-token-xyz",
                },
                {"name": "og", "type": "opsgenie", "api_key": "${T_OG}"},
                {"name": "hook", "type": "webhook", "url": "http://127.0.0.1:9/hook"},
            ]
        }
    )


def incident(**over: Any) -> dict[str, Any]:
    base = {
        "id": "inc-42",
        "service": "llm-gateway",
        "metric": "ttft_p95",
        "labels": {"model": "llama-70b", "region": "eu-west"},
        "start": "2026-03-01T10:00:00",
        "end": "2026-03-01T10:30:00",
        "severity": "page",
        "status": "open",
        "peak": 9.5,
        "causes": [
            {
                "rank": r,
                "kind": "change",
                "service": "llm-gateway",
                "metric": None,
                "labels": {},
                "event_id": f"e{r}",
                "score": 1.0 / r,
                "evidence": {"explanation": f"cause number {r}: deploy v{r} <b>&</b>"},
            }
            for r in (3, 1, 2, 4, 5, 6, 7)
        ],
    }
    return {**base, **over}


def note(event: str = "trigger", **over: Any) -> Notification:
    return Notification("ob_1", "r", event, "inc-42", incident(**over), LINK, group_key='{}/{}:{service="x"}')


def test_explicit_list_covers_every_receiver_type() -> None:
    assert list(NOTIFIERS) == list(RECEIVER_TYPES)
    for t in RECEIVER_TYPES:
        cls = notifier_class(t)
        assert issubclass(cls, Notifier) and cls.type == t
        assert {"trigger", "resolve"} <= cls.events


# -- PagerDuty -------------------------------------------------------------------------------------------
def test_pagerduty_trigger(config: AlertingConfig) -> None:
    req = PagerDutyNotifier(config.receivers["pd"]).request(note())
    body = req.json()
    assert req.url == "https://events.pagerduty.com/v2/enqueue"
    assert body["routing_key"] == "pd-routing-key-00000000000000000"
    assert (body["event_action"], body["dedup_key"]) == ("trigger", "inc-42")
    p = body["payload"]
    assert set(p) >= {"summary", "source", "severity", "timestamp", "custom_details"}
    assert (
        p["severity"] == "critical"
        and p["source"] == "llm-gateway"
        and p["timestamp"] == "2026-03-01T10:00:00Z"
    )
    assert (
        body["links"] == [{"href": LINK, "text": "Rootwise incident inc-42"}] and body["client_url"] == LINK
    )
    top = p["custom_details"]["top_causes"]
    assert [c["rank"] for c in top] == [1, 2, 3, 4, 5]
    assert top[0]["explanation"].startswith("cause number 1")
    assert "cause number 1" in p["summary"]
    ticket = PagerDutyNotifier(config.receivers["pd"]).request(note(severity="ticket")).json()
    assert ticket["payload"]["severity"] == "warning"


def test_pagerduty_summary_limit_and_resolve(config: AlertingConfig) -> None:
    pd = PagerDutyNotifier(config.receivers["pd"])
    huge = note(labels={f"k{i}": "v" * 100 for i in range(50)}, service="s" * 3000)
    assert len(pd.request(huge).json()["payload"]["summary"]) <= 1024
    for event in ("resolve", "acknowledge"):
        body = pd.request(note(event)).json()
        assert body == {
            "routing_key": "pd-routing-key-00000000000000000",
            "event_action": event,
            "dedup_key": "inc-42",
        }
    long_key = Notification("ob", "pd", "trigger", "k" * 400, incident(), LINK)
    assert len(pd.request(long_key).json()["dedup_key"]) <= 255


# -- Slack -----------------------------------------------------------------------------------------------
def _texts(blocks: list[dict]) -> list[tuple[str, str]]:
    """(kind, text) of every text object in the blocks."""
    out = []
    for b in blocks:
        if "text" in b:
            out.append((b["type"], b["text"]["text"]))
        for f in b.get("fields", []):
            out.append(("field", f["text"]))
        for e in b.get("elements", []):
            if e.get("type") == "mrkdwn":
                out.append(("context", e["text"]))
    return out


def test_slack_block_kit_shape_and_escaping(config: AlertingConfig) -> None:
    n = note(service="api <!channel> & co", labels={"q": "a>b"})
    body = SlackNotifier(config.receivers["chat"]).request(n).json()
    blocks = body["blocks"]
    assert blocks[0]["type"] == "header" and blocks[0]["text"]["type"] == "plain_text"
    mrkdwn = [t for kind, t in _texts(blocks) if kind != "header"]
    joined = "\n".join(mrkdwn)
    assert "<!channel>" not in joined and "&lt;!channel&gt; &amp; co" in joined
    assert "a&gt;b" in joined and "<b>" not in joined and "&lt;b&gt;&amp;&lt;/b&gt;" in joined
    assert f"<{LINK}|Open incident inc-42>" in joined  # our own link stays a link
    assert "cause number 1" in joined and "cause number 5" in joined
    assert "<!channel>" not in body["text"]
    actions = [b for b in blocks if b["type"] == "actions"]
    assert actions[0]["elements"][0]["url"] == LINK
    resolved = SlackNotifier(config.receivers["chat"]).request(note("resolve")).json()
    assert "Resolved" in resolved["blocks"][0]["text"]["text"]


def test_slack_limits_hold_for_huge_incidents(config: AlertingConfig) -> None:
    causes = [
        {"rank": i, "kind": "log", "evidence": {"explanation": "<&>" * 2000 + str(i)}, "score": 0.5}
        for i in range(1, 500)
    ]
    n = Notification(
        "ob",
        "chat",
        "trigger",
        "k",
        incident(
            causes=causes,
            service="&" * 5000,
            metric="<" * 5000,
            labels={f"l{i}": ">" * 500 for i in range(40)},
        ),
        LINK,
    )
    body = SlackNotifier(config.receivers["chat"]).request(n).json()
    blocks = body["blocks"]
    assert len(blocks) <= 50
    for kind, text in _texts(blocks):
        assert len(text) <= (150 if kind == "header" else 3000), kind
        # never a truncated entity such as "&am…"
        assert not re.search(r"&(?!amp;|lt;|gt;)", text.replace(f"<{LINK}|", "")) or kind == "header"
    for b in blocks:
        assert len(b.get("fields", [])) <= 10
        assert all(len(f["text"]) <= 2000 for f in b.get("fields", []))
    assert len(body["text"]) <= 3000


def test_slack_fit_never_splits_entities() -> None:
    text = "a&b<c>d" * 50
    for limit in range(2, 120):
        out = fit(text, limit)
        assert len(out) <= limit
        assert out.rstrip("…") == escape(text)[: len(out.rstrip("…"))]


# -- Opsgenie --------------------------------------------------------------------------------------------
def test_opsgenie_create_and_close(config: AlertingConfig) -> None:
    og = OpsgenieNotifier(config.receivers["og"])
    req = og.request(note(service="x" * 500))
    body = req.json()
    assert req.url == "https://api.opsgenie.com/v2/alerts"
    assert req.headers["Authorization"] == "GenieKey og-api-key-11111111111111111111"
    assert len(body["message"]) <= 130 and body["alias"] == "inc-42" and body["priority"] == "P1"
    assert all(isinstance(v, str) for v in body["details"].values())
    assert body["details"]["incident_url"] == LINK and body["details"]["label.model"] == "llama-70b"
    assert len(body["description"]) <= 15000 and "cause number 1" in body["description"]
    assert len(body["tags"]) <= 20 and all(len(t) <= 50 for t in body["tags"])
    close = og.request(note("resolve"))
    assert close.url == "https://api.opsgenie.com/v2/alerts/inc-42/close?identifierType=alias"
    assert close.json()["source"] == "Rootwise" and LINK in close.json()["note"]
    ack = og.request(note("acknowledge"))
    assert ack.url.endswith("/v2/alerts/inc-42/acknowledge?identifierType=alias")
    assert og.request(note(severity="ticket")).json()["priority"] == "P3"


# -- generic webhook (Alertmanager v4) -------------------------------------------------------------------
def test_webhook_alertmanager_v4_body(config: AlertingConfig) -> None:
    hook = WebhookNotifier(config.receivers["hook"])
    n = Notification(
        "ob_1",
        "hook",
        "trigger",
        "inc-42",
        incident(),
        LINK,
        group_key='{}/{severity="page"}:{service="llm-gateway"}',
        group_labels={"service": "llm-gateway"},
        external_url="http://rootwise.example:8050",
    )
    req = hook.request(n)
    body = req.json()
    assert set(body) == {
        "version",
        "groupKey",
        "truncatedAlerts",
        "status",
        "receiver",
        "groupLabels",
        "commonLabels",
        "commonAnnotations",
        "externalURL",
        "alerts",
    }
    assert body["version"] == "4" and body["status"] == "firing" and body["truncatedAlerts"] == 0
    assert body["groupKey"] == '{}/{severity="page"}:{service="llm-gateway"}'
    assert (
        body["groupLabels"] == {"service": "llm-gateway"}
        and body["externalURL"] == "http://rootwise.example:8050"
    )
    (alert,) = body["alerts"]
    assert set(alert) == {
        "status",
        "labels",
        "annotations",
        "startsAt",
        "endsAt",
        "generatorURL",
        "fingerprint",
    }
    assert alert["labels"]["alertname"] == "ttft_p95" and alert["labels"]["model"] == "llama-70b"
    assert all(isinstance(v, str) for v in {**alert["labels"], **alert["annotations"]}.values())
    assert alert["startsAt"] == "2026-03-01T10:00:00Z" and alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert alert["generatorURL"] == LINK and re.fullmatch(r"[0-9a-f]{16}", alert["fingerprint"])
    assert json.loads(alert["annotations"]["causes"])[0]["rank"] == 1
    assert "webhook-signature" not in req.headers  # no secret configured: unsigned
    resolved = hook.request(Notification("ob_2", "hook", "resolve", "inc-42", incident(), LINK)).json()
    assert resolved["status"] == "resolved" and resolved["alerts"][0]["endsAt"] == "2026-03-01T10:30:00Z"
    assert resolved["alerts"][0]["fingerprint"] == alert["fingerprint"]


def test_unsupported_event_is_refused_not_sent(config: AlertingConfig) -> None:
    result = SlackNotifier(config.receivers["chat"]).send(note("acknowledge"))
    assert not result.ok and not result.retryable and "acknowledge" in (result.error or "")
