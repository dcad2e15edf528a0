"""Generic webhook: an Alertmanager-v4-compatible body, signed per Standard Webhooks.

The body is what Prometheus Alertmanager's ``webhook_config`` posts (``version: "4"``, ``groupKey``,
``truncatedAlerts``, ``status``, ``receiver``, ``groupLabels``, ``commonLabels``, ``commonAnnotations``,
``externalURL`` and ``alerts[]`` with ``status``, ``labels``, ``annotations``, ``startsAt``, ``endsAt``,
``generatorURL``, ``fingerprint``), so any tool that already receives Alertmanager webhooks receives Rootwise.

With a ``secret`` (``whsec_`` + base64) the request carries the Standard Webhooks headers: ``webhook-id`` (the
outbox row id: the same on every retry, so receivers can de-duplicate), ``webhook-timestamp`` (Unix seconds of
this attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with the
base64-decoded bytes after ``whsec_``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC
from typing import Any, ClassVar

from app.alerts.notifiers import HttpRequest, Notification, Notifier, compact_cause, isoformat

#: Alertmanager's "zero time", sent as endsAt while an alert fires
ZERO_TIME = "0001-01-01T00:00:00Z"


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``v1`` signature of one message.

    Examples
    --------
    >>> sign("whsec_" + base64.b64encode(b"k" * 24).decode(), "msg_1", 1700000000, b"{}")[:3]
    'v1,'
    """
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class WebhookNotifier(Notifier):
    """Alertmanager v4 bodies for a ``type = "webhook"`` receiver.

    Examples
    --------
    >>> from app.alerts.config import alerting_from_config
    >>> cfg = alerting_from_config({"receivers": [{"name": "h", "type": "webhook", "url": "http://127.0.0.1:9/h"}]})
    >>> n = Notification("ob1", "h", "trigger", "i1", {"id": "i1", "service": "api", "metric": "p95",
    ...     "severity": "page", "labels": {}, "start": "2026-01-01T00:00:00"}, "http://r/incident/i1")
    >>> body = WebhookNotifier(cfg.receivers["h"]).request(n).json()
    >>> body["version"], body["status"], body["alerts"][0]["startsAt"], body["alerts"][0]["endsAt"]
    ('4', 'firing', '2026-01-01T00:00:00Z', '0001-01-01T00:00:00Z')
    """

    type: ClassVar[str] = "webhook"

    batches: ClassVar[bool] = True
    events: ClassVar[frozenset[str]] = frozenset({"trigger", "resolve", "report"})

    def body(self, n: Notification) -> dict[str, Any]:
        if n.is_report:  # not an alert: its own small document, signed the same way
            return {
                "type": "capacity_report",
                "url": n.link,
                "externalURL": n.external_url,
                "report": dict(n.incident),
            }
        alerts = [self.alert(m) for m in n.batch]
        firing = any(m.status == "firing" for m in n.batch)
        common = dict(alerts[0]["labels"])
        for a in alerts[1:]:
            common = {k: v for k, v in common.items() if a["labels"].get(k) == v}
        return {
            "version": "4",
            "groupKey": n.group_key,
            "truncatedAlerts": 0,
            "status": "firing" if firing else "resolved",
            "receiver": n.receiver,
            "groupLabels": dict(n.group_labels),
            "commonLabels": common,
            "commonAnnotations": alerts[0]["annotations"] if len(alerts) == 1 else {},
            "externalURL": n.external_url,
            "alerts": alerts,
        }

    def alert(self, n: Notification) -> dict[str, Any]:
        """One entry of ``alerts[]``."""
        inc = n.incident
        labels = n.labels
        annotations = {
            "summary": n.summary(),
            "description": f"{inc.get('metric')} on {inc.get('service')} is abnormal; see {n.link}",
            "incident_url": n.link,
            "causes": json.dumps([compact_cause(c) for c in n.causes()], default=str),
        }
        return {
            "status": n.status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": isoformat(inc.get("start")) or ZERO_TIME,
            "endsAt": (isoformat(inc.get("end")) or ZERO_TIME) if n.status == "resolved" else ZERO_TIME,
            "generatorURL": n.link,
            "fingerprint": n.fingerprint(),
        }

    def request(self, n: Notification) -> HttpRequest:
        data = json.dumps(self.body(n), separators=(",", ":"), default=str).encode()
        headers = {"Content-Type": "application/json"}
        if self.receiver.secret is not None:
            sent = n.sent_at if n.sent_at.tzinfo else n.sent_at.replace(tzinfo=UTC)
            ts = int(sent.timestamp())
            msg_id = f"msg_{n.message_id}"
            headers.update(
                {
                    "webhook-id": msg_id,
                    "webhook-timestamp": str(ts),
                    "webhook-signature": sign(self.receiver.secret.reveal(), msg_id, ts, data),
                }
            )
        return HttpRequest(self.receiver.url.reveal(), data, headers)
