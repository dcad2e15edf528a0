"""Opsgenie Alert API v2: create, acknowledge and close alerts by alias.

``trigger`` creates an alert (``POST {url}/v2/alerts``) whose ``alias`` is the dedup key (the incident id), so
Opsgenie de-duplicates repeats; ``acknowledge`` and ``resolve`` post to
``{url}/v2/alerts/{alias}/acknowledge|close?identifierType=alias``. ``url`` is the API base
(``https://api.opsgenie.com``, or ``https://api.eu.opsgenie.com``); the key goes in
``Authorization: GenieKey <api_key>``. Field limits from the API reference: message 130 characters, alias 512,
description 15000, at most 20 tags of 50 characters, details as string values. Opsgenie answers 202 (the request
is processed asynchronously).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar
from urllib.parse import quote

from app.alerts.notifiers import HttpRequest, Notification, Notifier, cause_text, isoformat, truncate

MESSAGE_LIMIT = 130
ALIAS_LIMIT = 512
DESCRIPTION_LIMIT = 15000
NOTE_LIMIT = 25000
TAG_LIMIT = 50
MAX_TAGS = 20
#: Rootwise severity → Opsgenie priority (P1 highest, P3 the API's default)
PRIORITY = {"page": "P1", "ticket": "P3"}


def alias(key: str) -> str:
    """The dedup key, or its SHA-256 when longer than Opsgenie's 512 characters."""
    return key if len(key) <= ALIAS_LIMIT else hashlib.sha256(key.encode()).hexdigest()


class OpsgenieNotifier(Notifier):
    """Alert API requests for a ``type = "opsgenie"`` receiver.

    Examples
    --------
    >>> import os
    >>> from app.alerts.config import alerting_from_config
    >>> os.environ["DOC_OG"] = "00000000-0000-0000-0000-000000000000"
    >>> cfg = alerting_from_config({"receivers": [{"name": "og", "type": "opsgenie", "api_key": "${DOC_OG}"}]})
    >>> og = OpsgenieNotifier(cfg.receivers["og"])
    >>> inc = {"id": "inc/1", "service": "api", "metric": "p95", "severity": "page", "labels": {}}
    >>> body = og.request(Notification("ob1", "og", "trigger", "inc/1", inc, "http://r/incident/inc/1")).json()
    >>> body["alias"], body["priority"], len(body["message"]) <= 130
    ('inc/1', 'P1', True)
    >>> og.request(Notification("ob2", "og", "resolve", "inc/1", inc, "http://r/incident/inc/1")).url
    'https://api.opsgenie.com/v2/alerts/inc%2F1/close?identifierType=alias'
    """

    type: ClassVar[str] = "opsgenie"
    events: ClassVar[frozenset[str]] = frozenset({"trigger", "acknowledge", "resolve"})

    def _headers(self) -> dict[str, str]:
        assert self.receiver.api_key is not None  # required by the config
        return {
            "Content-Type": "application/json",
            "Authorization": f"GenieKey {self.receiver.api_key.reveal()}",
        }

    def request(self, n: Notification) -> HttpRequest:
        base = self.receiver.url.reveal().rstrip("/")
        inc = n.incident
        if n.event != "trigger":
            action = {"acknowledge": "acknowledge", "resolve": "close"}[n.event]
            url = f"{base}/v2/alerts/{quote(alias(n.dedup_key), safe='')}/{action}?identifierType=alias"
            note = f"{'Resolved' if n.event == 'resolve' else 'Acknowledged'} in Rootwise: {n.link}"
            body: dict[str, Any] = {
                "source": "Rootwise",
                "user": "Rootwise",
                "note": truncate(note, NOTE_LIMIT),
            }
            return HttpRequest(url, json.dumps(body).encode(), self._headers())
        lines = [n.summary(), "", f"Incident: {n.link}", f"Started: {isoformat(inc.get('start'))}"]
        causes = n.causes()
        if causes:
            lines += ["", "Top causes:"] + [f"{i}. {cause_text(c)}" for i, c in enumerate(causes, 1)]
        details = {
            "incident_id": str(inc.get("id")),
            "incident_url": n.link,
            "service": str(inc.get("service")),
            "metric": str(inc.get("metric")),
            "severity": str(inc.get("severity")),
            **{f"label.{k}": str(v) for k, v in sorted((inc.get("labels") or {}).items())},
        }
        tags = ["rootwise", str(inc.get("severity") or ""), str(inc.get("service") or "")]
        body = {
            "message": truncate(n.summary(), MESSAGE_LIMIT),
            "alias": alias(n.dedup_key),
            "description": truncate("\n".join(lines), DESCRIPTION_LIMIT),
            "details": details,
            "priority": PRIORITY.get(str(inc.get("severity")), "P3"),
            "source": "Rootwise",
            "entity": truncate(str(inc.get("service") or ""), 512),
            "tags": [truncate(t, TAG_LIMIT) for t in tags if t][:MAX_TAGS],
        }
        return HttpRequest(f"{base}/v2/alerts", json.dumps(body, default=str).encode(), self._headers())
