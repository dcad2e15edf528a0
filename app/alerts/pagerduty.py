"""PagerDuty Events API v2 (``POST https://events.pagerduty.com/v2/enqueue``).

``trigger`` opens (or updates) the PagerDuty alert whose ``dedup_key`` is the incident id, ``acknowledge`` and
``resolve`` act on it. Limits from the API reference: ``summary`` is cut to 1024 characters, ``dedup_key`` to
255 (a longer key is replaced by its hash). The Events API answers 202 when accepted, 400 for a malformed event
(not retried), 429 and 5xx when it should be retried later.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar

from app.alerts.notifiers import (
    HttpRequest,
    Notification,
    Notifier,
    compact_cause,
    isoformat,
    truncate,
)

SUMMARY_LIMIT = 1024
DEDUP_KEY_LIMIT = 255
#: Rootwise severity → PagerDuty severity (``critical``, ``error``, ``warning``, ``info``)
SEVERITY = {"page": "critical", "ticket": "warning"}


def dedup_key(key: str) -> str:
    """The key itself, or its SHA-256 when longer than PagerDuty's 255 characters.

    Examples
    --------
    >>> dedup_key("inc-1"), len(dedup_key("x" * 300))
    ('inc-1', 64)
    """
    return key if len(key) <= DEDUP_KEY_LIMIT else hashlib.sha256(key.encode()).hexdigest()


class PagerDutyNotifier(Notifier):
    """Events API v2 events for a ``type = "pagerduty"`` receiver.

    Examples
    --------
    >>> import os
    >>> from app.alerts.config import alerting_from_config
    >>> os.environ["DOC_PD"] = "0123456789abcdef0123456789abcdef"
    >>> cfg = alerting_from_config({"receivers": [{"name": "pd", "type": "pagerduty", "routing_key": "${DOC_PD}"}]})
    >>> n = Notification("ob1", "pd", "trigger", "inc-1", {"id": "inc-1", "service": "api", "metric": "p95",
    ...     "severity": "page", "start": "2026-01-01T00:00:00", "labels": {}}, "http://rootwise/incident/inc-1")
    >>> body = PagerDutyNotifier(cfg.receivers["pd"]).request(n).json()
    >>> body["event_action"], body["dedup_key"], body["payload"]["severity"], body["links"][0]["href"]
    ('trigger', 'inc-1', 'critical', 'http://rootwise/incident/inc-1')
    """

    type: ClassVar[str] = "pagerduty"
    events: ClassVar[frozenset[str]] = frozenset({"trigger", "acknowledge", "resolve"})

    def request(self, n: Notification) -> HttpRequest:
        assert self.receiver.routing_key is not None  # required by the config
        body: dict[str, Any] = {
            "routing_key": self.receiver.routing_key.reveal(),
            "event_action": n.event,
            "dedup_key": dedup_key(n.dedup_key),
        }
        if n.event == "trigger":
            inc = n.incident
            body.update(
                client="Rootwise",
                client_url=n.link,
                links=[{"href": n.link, "text": f"Rootwise incident {inc.get('id')}"}],
                payload={
                    "summary": truncate(n.summary(), SUMMARY_LIMIT),
                    "source": str(inc.get("service") or "rootwise"),
                    "severity": SEVERITY.get(str(inc.get("severity")), "info"),
                    "timestamp": isoformat(inc.get("start")),
                    "component": inc.get("metric"),
                    "group": inc.get("service"),
                    "class": "anomaly",
                    "custom_details": {
                        "incident_id": inc.get("id"),
                        "incident_url": n.link,
                        "labels": inc.get("labels") or {},
                        "peak": inc.get("peak"),
                        "top_causes": [compact_cause(c) for c in n.causes()],
                    },
                },
            )
        data = json.dumps(body, default=str).encode()
        return HttpRequest(self.receiver.url.reveal(), data, {"Content-Type": "application/json"})
