"""Slack incoming webhook: a Block Kit message per firing or resolved incident.

Block Kit limits respected here: at most 50 blocks per message, a section's text at most 3000 characters, a
header's plain text at most 150, a section's fields at most 10 of 2000 characters each, a button's text 75.
Telemetry text (service, metric, labels, cause explanations) is escaped for ``mrkdwn``: Slack parses ``&``,
``<`` and ``>`` as control characters (links, mentions such as ``<!channel>``), so they become ``&amp;``,
``&lt;`` and ``&gt;``. The webhook URL is the credential and is never printed.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from app.alerts.notifiers import HttpRequest, Notification, Notifier, cause_text, isoformat, truncate

MAX_BLOCKS = 50
SECTION_LIMIT = 3000
HEADER_LIMIT = 150
FIELD_LIMIT = 2000
MAX_FIELDS = 10
MAX_CAUSE_BLOCKS = 10


def escape(text: str) -> str:
    """Escape Slack's three control characters for ``mrkdwn`` text.

    Examples
    --------
    >>> escape("p95 > 2s & <!channel>")
    'p95 &gt; 2s &amp; &lt;!channel&gt;'
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def fit(text: str, limit: int) -> str:
    """``escape(text)`` cut to ``limit`` characters without splitting an entity such as ``&amp;``.

    Examples
    --------
    >>> fit("a&b", 4), fit("a&b", 7)
    ('a…', 'a&amp;b')
    """
    escaped = escape(text)
    if len(escaped) <= limit:
        return escaped
    lo, hi = 0, min(len(text), limit)  # the longest prefix whose escaped form leaves room for "…"
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(escape(text[:mid])) <= limit - 1:
            lo = mid
        else:
            hi = mid - 1
    return escape(text[:lo]) + "…"


def _section(mrkdwn: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn}}


class SlackNotifier(Notifier):
    """Block Kit messages for a ``type = "slack"`` receiver (its ``url`` is the incoming-webhook URL).

    Examples
    --------
    >>> from app.alerts.config import alerting_from_config
    >>> cfg = alerting_from_config({"receivers": [{"name": "s", "type": "slack", "url": "https://hooks.example/T/B/x"}]})
    >>> n = Notification("ob1", "s", "trigger", "i1", {"id": "i1", "service": "a<b>", "metric": "m",
    ...     "severity": "ticket", "labels": {}}, "http://rootwise/incident/i1")
    >>> body = SlackNotifier(cfg.receivers["s"]).request(n).json()
    >>> body["blocks"][0]["type"], "a&lt;b&gt;" in body["blocks"][1]["text"]["text"]
    ('header', True)
    """

    type: ClassVar[str] = "slack"
    batches: ClassVar[bool] = True
    events: ClassVar[frozenset[str]] = frozenset({"trigger", "resolve", "report"})

    def report_blocks(self, n: Notification) -> list[dict[str, Any]]:
        """The weekly capacity report: its bottom line, each constrained resource, a button to the report."""
        rep = n.incident
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": "📈 Capacity report", "emoji": True}},
            _section(fit(str(rep.get("bottom_line") or ""), SECTION_LIMIT)),
        ]
        rows = [r for r in rep.get("resources") or [] if isinstance(r, dict)]
        for r in rows[: MAX_BLOCKS - 4]:
            when = f"P50 {str(r.get('p50') or '—')[:10]} · P90 {str(r.get('p90') or '—')[:10]}"
            blocks.append(
                _section(fit(f"*{r.get('name')}*: {when} — {r.get('action') or ''}", SECTION_LIMIT))
            )
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {"type": "button", "text": {"type": "plain_text", "text": "Open report"}, "url": n.link}
                ],
            }
        )
        return blocks[:MAX_BLOCKS]

    def blocks(self, n: Notification) -> list[dict[str, Any]]:
        inc = n.incident
        severity = str(inc.get("severity") or "alert")
        state = {"trigger": "🔴 Firing", "resolve": "✅ Resolved"}.get(n.event, n.event)
        header = truncate(
            f"{state} · {severity.upper()} · {inc.get('service')} · {inc.get('metric')}", HEADER_LIMIT
        )
        link = f"<{n.link}|Open incident {escape(str(inc.get('id')))}>"
        summary = fit(n.summary(), SECTION_LIMIT - len(link) - 1) + "\n" + link
        labels = ", ".join(f"{k}={v}" for k, v in sorted((inc.get("labels") or {}).items())) or "—"
        fields = [
            ("Service", inc.get("service")),
            ("Metric", inc.get("metric")),
            ("Severity", severity),
            ("Started", isoformat(inc.get("start"))),
            ("Ended", isoformat(inc.get("end")) if n.event == "resolve" else None),
            ("Labels", labels),
        ]
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}},
            _section(summary),
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{k}*\n" + fit(str(v), FIELD_LIMIT - len(k) - 3)}
                    for k, v in fields[:MAX_FIELDS]
                    if v is not None
                ],
            },
        ]
        causes = n.causes(MAX_CAUSE_BLOCKS) if n.event != "resolve" else []
        tail = [
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"Rootwise · incident {escape(str(inc.get('id')))}"}],
            },
            {
                "type": "actions",
                "elements": [
                    {"type": "button", "text": {"type": "plain_text", "text": "Open incident"}, "url": n.link}
                ],
            },
        ]
        if causes:
            blocks.append({"type": "divider"})
            blocks.append(_section("*Top causes*"))
            room = MAX_BLOCKS - len(blocks) - len(tail) - 1  # one left for "and N more"
            for i, c in enumerate(causes[:room], 1):
                score = c.get("score")
                scored = f" _(score {score:.2f})_" if isinstance(score, int | float) else ""
                prefix = f"{i}. *{escape(str(c.get('kind') or 'cause'))}*{scored} "
                blocks.append(_section(prefix + fit(cause_text(c), SECTION_LIMIT - len(prefix))))
            hidden = len(n.causes(10**6)) - min(len(causes), room)
            if hidden > 0:
                blocks.append(
                    {
                        "type": "context",
                        "elements": [{"type": "mrkdwn", "text": f"and {hidden} more in Rootwise"}],
                    }
                )
        if n.members:
            # the rest of the group, one line each, in the room left (the tail stays last)
            room = MAX_BLOCKS - len(blocks) - len(tail) - 2
            blocks.append({"type": "divider"})
            blocks.append(_section(f"*Also in this group: {len(n.members)}*"))
            for m in n.members[: max(0, room)]:
                link = f"<{m.link}|open>"
                blocks.append(_section(fit(m.summary(), SECTION_LIMIT - len(link) - 1) + " " + link))
        return (blocks + tail)[:MAX_BLOCKS]

    def request(self, n: Notification) -> HttpRequest:
        if n.is_report:
            text = fit(f"Capacity report: {n.incident.get('bottom_line') or ''}", SECTION_LIMIT)
            body = {"text": text, "blocks": self.report_blocks(n)}
        else:
            body = {"text": fit(n.summary(), SECTION_LIMIT), "blocks": self.blocks(n)}
        data = json.dumps(body, ensure_ascii=False).encode()
        return HttpRequest(
            self.receiver.url.reveal(), data, {"Content-Type": "application/json; charset=utf-8"}
        )
