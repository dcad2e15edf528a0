"""Alerts: where notifications go (receivers, routes, inhibit rules), what is held and why (silences, holds), and
what was sent (the delivery log with its retry state); responders create and expire silences and send tests.

The configuration is the server's (``rootwise serve --config rootwise.toml``); receiver secrets and endpoint
paths are never shown, only the scheme and host (``url_display``). Silences, holds and the outbox are read
from the store through :mod:`app.data`, the delivery log every few seconds. Writing (a silence, an expiry, a
test send) needs :func:`app.auth.can_respond`, checked in the callback; reading is always allowed.
Matchers, label values and comments are untrusted text: rendered as text, never parsed as markup.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import dash
from dash import ALL, Input, Output, State, callback, ctx, dash_table, dcc, html

from app import data
from app.alerts.config import parse_duration
from app.auth import action_props, can_respond, current_user

dash.register_page(__name__, path="/alerts", name="Alerts", order=25, title="Alerts")

REFRESH_MS = 5_000
STATUSES = ("pending", "delivered", "failed", "dead")
LOG_COLUMNS = [
    ("created", "Queued (UTC)"),
    ("incident_id", "Incident"),
    ("receiver", "Receiver"),
    ("event", "Event"),
    ("status", "Status"),
    ("attempts", "Attempts"),
    ("retry", "Retry state"),
    ("last_attempt", "Last attempt (UTC)"),
    ("last_error", "Last error"),
]
#: silence states in the badge colours the incident pages use (amber: muting now)
SILENCE_BADGE = {"active": "sev-ticket", "pending": "", "expired": "muted"}
DENIED = "Not allowed: {what} needs the responder role. Viewing works for everyone."


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _when(value: str | datetime | None) -> str:
    """``YYYY-MM-DD HH:MM:SS`` of a naive-UTC time or its ISO text; ``""`` for none."""
    if value is None or value == "":
        return ""
    text = value.isoformat(sep=" ") if isinstance(value, datetime) else str(value).replace("T", " ")
    return text[:19]


def duration_text(d: timedelta) -> str:
    """``1d2h``, ``30m``, ``1.5s``: the config's duration syntax back."""
    total = d.total_seconds()
    if total < 1:
        return f"{total * 1000:g}ms"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        n, total = divmod(total, size)
        if n:
            parts.append(f"{int(n)}{unit}")
    if total:
        parts.append(f"{total:g}s")
    return "".join(parts) or "0s"


def split_matchers(text: str | None) -> list[str]:
    """Matchers typed one per line or separated by commas; a comma inside a quoted value stays in it.

    (Page modules are not collected for doctests: importing one outside an app fails.)
    ``split_matchers('service="a,b", tenant=~"t-1.*"\\nseverity=page')`` is
    ``['service="a,b"', 'tenant=~"t-1.*"', 'severity=page']``.
    """
    out: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text or "":
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch in ",\n" and not quoted:
            out.append("".join(current))
            current = []
            continue
        current.append(ch)
    out.append("".join(current))
    return [m.strip() for m in out if m.strip()]


def retry_state(row: dict[str, Any]) -> str:
    """What the outbox will do next with a delivery-log row, in words."""
    status, attempts = row.get("status"), int(row.get("attempts") or 0)
    if status == "pending" and attempts:
        return f"retrying: attempt {attempts + 1} at {_when(row.get('next_attempt'))}"
    if status == "pending":
        return f"queued: due {_when(row.get('next_attempt'))}"
    if status == "delivered":
        return f"delivered {_when(row.get('delivered'))}"
    if status == "failed":
        return "failed: the receiver refused it (not retried)"
    if status == "dead":
        return f"dead: not delivered by {_when(row.get('dead_after'))}"
    return str(status or "")


def log_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Delivery-log rows for the table: times in UTC text, the retry state spelt out."""
    return [
        {
            "created": _when(r.get("created")),
            "incident_id": r.get("incident_id") or "",
            "receiver": r.get("receiver"),
            "event": r.get("event"),
            "status": r.get("status"),
            "attempts": r.get("attempts"),
            "retry": retry_state(r),
            "last_attempt": _when(r.get("last_attempt")),
            "last_error": r.get("last_error") or "",
        }
        for r in rows
    ]


def _incident_link(incident_id: str | None) -> Any:
    if not incident_id:
        return ""
    return dcc.Link(incident_id, href=f"/incident/{quote(incident_id, safe='')}")


def _table(head: list[str], rows: list[list[Any]], table_id: str) -> html.Table:
    return html.Table(
        [
            html.Thead(html.Tr([html.Th(h) for h in head])),
            html.Tbody([html.Tr([html.Td(c) for c in r]) for r in rows]),
        ],
        id=table_id,
        className="grid",
    )


def receivers_view(cfg: Any) -> list[Any]:
    """The receivers (never a secret: name, type, scheme and host, rate limit, deadline) with "Send test"."""
    if not cfg.receivers:
        return [
            html.P(
                "No receivers configured — see README 'Alerting' (start the server with "
                "--config rootwise.toml holding [[receivers]] and [[routes]]).",
                className="notice",
                id="al-no-receivers",
            )
        ]
    rows = [
        [
            r.name,
            r.type,
            html.Span(r.url_display, className="mono"),
            f"{r.rate_limit_per_minute:g} / min",
            duration_text(r.deadline),
            html.Button(
                "Send test",
                id={"type": "al-test", "receiver": r.name},
                n_clicks=0,
                className="btn",
                **action_props(),
            ),
        ]
        for r in cfg.receivers.values()
    ]
    return [
        _table(["Receiver", "Type", "Endpoint", "Rate limit", "Deadline", ""], rows, "al-receivers"),
        html.Div(id="al-test-msg", className="note", role="status"),
    ]


def routes_view(cfg: Any) -> list[Any]:
    """The routes in order, the inhibit rules and whether RCA-aware inhibition is on."""
    out: list[Any] = []
    if cfg.routes:
        rows = [
            [
                str(i),
                r.receiver,
                html.Span(
                    ", ".join(f'{k}="{v}"' for k, v in sorted(r.match.items())) or "(everything)",
                    className="mono",
                ),
                ", ".join(r.group_by) or "(none)",
                duration_text(r.group_wait),
                duration_text(r.group_interval),
                duration_text(r.repeat_interval),
                "yes" if r.continue_ else "no",
            ]
            for i, r in enumerate(cfg.routes, 1)
        ]
        head = ["#", "Receiver", "Match", "Group by", "Group wait", "Group interval", "Repeat", "Continue"]
        out.append(_table(head, rows, "al-routes"))
        out.append(
            html.P(
                "An alert goes to the first route whose match labels all equal its labels, and on while "
                "that route says continue.",
                className="note",
            )
        )
    elif cfg.receivers:
        out.append(
            html.P("No [[routes]]: every receiver gets every alert.", className="note", id="al-routes")
        )
    else:
        return [html.P("No routes: nothing is sent without receivers.", className="muted", id="al-routes")]
    for rule in cfg.inhibit_rules:
        source = ", ".join(f'{k}="{v}"' for k, v in sorted(rule.source_match.items()))
        target = ", ".join(f'{k}="{v}"' for k, v in sorted(rule.target_match.items()))
        equal = f" with equal {', '.join(rule.equal)}" if rule.equal else ""
        out.append(html.P(f"Inhibit: while {source} fires, hold {target}{equal}.", className="note"))
    out.append(
        html.P(
            f"RCA-aware inhibition: {'on' if cfg.rca_inhibition else 'off'} (a service that only suffers "
            f"from another firing incident's service is held). Links in notifications: {cfg.external_url}",
            className="note",
        )
    )
    return out


def silences_view(silences: list[Any], now: datetime) -> Any:
    """Silences newest first; active and pending ones can be expired."""
    if not silences:
        return html.P("No silences.", className="muted", id="al-silences")
    rows = []
    for s in silences[:100]:
        state = s.state(now)
        rows.append(
            [
                html.Span(state, className=f"badge {SILENCE_BADGE.get(state, '')}"),
                html.Span(s.describe(), className="mono"),
                _when(s.starts_at),
                _when(s.ends_at),
                s.created_by,
                s.comment,
                html.Button(
                    "Expire",
                    id={"type": "al-expire", "silence": s.id},
                    n_clicks=0,
                    className="btn",
                    **action_props(),
                )
                if state != "expired"
                else "",
            ]
        )
    head = ["State", "Matchers", "Starts (UTC)", "Ends (UTC)", "Created by", "Comment", ""]
    return _table(head, rows, "al-silences")


def holds_view(holds: list[dict[str, Any]]) -> Any:
    """Incidents whose notifications are held, with what holds them."""
    if not holds:
        return html.P("No notification is held.", className="muted", id="al-holds")
    rows = [
        [
            _incident_link(h["incident_id"]),
            h.get("service", ""),
            h.get("metric", ""),
            html.Span(h.get("kind", ""), className="badge"),
            _incident_link(h["source_id"]) if h.get("kind") != "silence" else h.get("source_id") or "",
            h.get("reason") or "",
            _when(h.get("since")),
        ]
        for h in holds
    ]
    head = ["Incident", "Service", "Metric", "Held by", "Source", "Reason", "Since (UTC)"]
    return _table(head, rows, "al-holds")


def layout(**_query: str) -> html.Div:
    """The page: configuration (static for the server's life), then silences, holds and the delivery log."""
    cfg = data.alerting_config()
    user = current_user()
    viewer = not can_respond()
    read_only = (
        html.P(
            "Read-only: creating and expiring silences and sending tests need the responder role.",
            className="notice",
            id="al-read-only",
        )
        if viewer
        else None
    )
    return html.Div(
        [
            html.H2("Alerts"),
            html.P(
                "All times UTC. Receivers and routes come from the server's rootwise.toml; secrets are never "
                "shown.",
                className="tz-note",
            ),
            read_only,
            html.H3("Receivers"),
            html.Div(receivers_view(cfg), className="panel"),
            html.H3("Routes"),
            html.Div(routes_view(cfg), className="panel"),
            html.H3("Silences"),
            html.Div(
                [
                    html.Div(
                        [
                            dcc.Textarea(
                                id="al-sil-matchers",
                                placeholder='service="rag-api", tenant=~"t-1.*" (one per line or comma-separated)',
                                style={"width": "100%", "height": 54},
                                disabled=viewer,
                            ),
                            html.Div(
                                [
                                    html.Span("for", className="control-label"),
                                    # widths inline: the shared stylesheet gives inputs their container's
                                    html.Div(
                                        dcc.Input(
                                            id="al-sil-duration", type="text", value="2h", disabled=viewer
                                        ),
                                        style={"width": 90},
                                        title="30m, 2h, 1d, 1h30m (at most 90 days)",
                                    ),
                                    # signed in: the silence records the user, not a typed name
                                    html.Div(
                                        dcc.Input(
                                            id="al-sil-by",
                                            type="text",
                                            placeholder="created by",
                                            value=user.name if user else None,
                                            disabled=user is not None,
                                        ),
                                        style={"width": 180},
                                    ),
                                    html.Div(
                                        dcc.Input(
                                            id="al-sil-comment",
                                            type="text",
                                            placeholder="comment (why)",
                                            disabled=viewer,
                                        ),
                                        style={"flex": "1 1 260px"},
                                    ),
                                    html.Button(
                                        "Create silence",
                                        id="al-sil-create",
                                        n_clicks=0,
                                        className="btn primary",
                                        **action_props(),
                                    ),
                                ],
                                className="actions",
                            ),
                            html.Div(id="al-sil-msg", className="note", role="status"),
                        ]
                    ),
                    html.Div(id="al-silences-box"),
                ],
                className="panel",
            ),
            html.H3("Held notifications"),
            html.Div(html.Div(id="al-holds-box"), className="panel"),
            html.H3("Delivery log"),
            html.Div(
                [
                    html.Div(
                        [
                            dcc.Dropdown(
                                list(cfg.receivers), None, id="al-log-receiver", placeholder="any receiver"
                            ),
                            dcc.Dropdown(list(STATUSES), None, id="al-log-status", placeholder="any status"),
                            html.Span(id="al-counts", className="muted"),
                        ],
                        className="controls cap-controls",
                    ),
                    dash_table.DataTable(
                        id="al-log",
                        columns=[{"name": name, "id": cid} for cid, name in LOG_COLUMNS],
                        data=[],
                        page_size=20,
                        sort_action="native",
                        style_table={"overflowX": "auto"},
                        style_cell={
                            "textAlign": "left",
                            "fontFamily": "system-ui",
                            "fontSize": 13,
                            "whiteSpace": "normal",
                            "height": "auto",
                            "maxWidth": 360,
                        },
                        style_data_conditional=[
                            {
                                "if": {"filter_query": f'{{status}} = "{s}"', "column_id": "status"},
                                "color": "#b42318",
                                "fontWeight": 600,
                            }
                            for s in ("failed", "dead")
                        ],
                    ),
                ],
                className="panel",
            ),
            dcc.Store(id="al-changed", data=0),
            dcc.Interval(id="al-tick", interval=REFRESH_MS),
        ]
    )


@callback(
    Output("al-silences-box", "children"),
    Output("al-holds-box", "children"),
    Input("al-tick", "n_intervals"),
    Input("al-changed", "data"),
)
def _refresh_silences(_tick, _changed):
    return silences_view(data.silences(), _now()), holds_view(data.alert_holds())


@callback(
    Output("al-log", "data"),
    Output("al-counts", "children"),
    Input("al-tick", "n_intervals"),
    Input("al-changed", "data"),
    Input("al-log-receiver", "value"),
    Input("al-log-status", "value"),
)
def _refresh_log(_tick, _changed, receiver, status):
    counts = data.delivery_counts()
    summary = " · ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)
    return log_rows(
        data.delivery_log(receiver=receiver, status=status if status in STATUSES else None)
    ), summary


def _clicked() -> bool:
    """The callback ran because a button was clicked (not because the table it sits in was redrawn)."""
    return bool(ctx.triggered and ctx.triggered[0].get("value"))


@callback(
    Output("al-sil-msg", "children"),
    Output("al-changed", "data"),
    Input("al-sil-create", "n_clicks"),
    Input({"type": "al-expire", "silence": ALL}, "n_clicks"),
    State("al-sil-matchers", "value"),
    State("al-sil-duration", "value"),
    State("al-sil-by", "value"),
    State("al-sil-comment", "value"),
    State("al-changed", "data"),
    prevent_initial_call=True,
)
def _silence_action(_create, _expire, matchers, duration, created_by, comment, changed):
    if not _clicked():
        return dash.no_update, dash.no_update
    expiring = isinstance(ctx.triggered_id, dict)
    if not can_respond():
        return DENIED.format(what="expiring a silence" if expiring else "creating a silence"), dash.no_update
    if expiring:
        silence_id = str(ctx.triggered_id["silence"])
        if not data.expire_silence(silence_id):
            return f"Silence {silence_id} had already ended.", (changed or 0) + 1
        return f"Silence {silence_id} expired: matching incidents notify again at the next pass.", (
            changed or 0
        ) + 1
    try:
        s = data.create_silence(
            split_matchers(matchers),
            duration=parse_duration(duration or ""),
            created_by=user.name if (user := current_user()) else (created_by or "").strip(),
            comment=(comment or "").strip(),
        )
    except ValueError as exc:  # SilenceError names the matcher or field; a bad duration says what it expects
        return f"Silence not created: {exc}", dash.no_update
    return f"Silence {s.id} created: {s.describe()} until {_when(s.ends_at)} UTC.", (changed or 0) + 1


@callback(
    Output("al-test-msg", "children"),
    Input({"type": "al-test", "receiver": ALL}, "n_clicks"),
    prevent_initial_call=True,
)
def _send_test(_clicks):
    if not _clicked() or not isinstance(ctx.triggered_id, dict):
        return dash.no_update
    name = str(ctx.triggered_id["receiver"])
    if not can_respond():
        return DENIED.format(what="sending a test")
    result = data.send_test_notification(name)
    if result is None:
        return f"No receiver {name!r} is configured."
    if result.ok:
        return f"Test to {name}: delivered" + (f" (HTTP {result.status})." if result.status else ".")
    retry = "retryable" if result.retryable else "not retryable"
    return f"Test to {name} failed ({retry}): {result.error}"
