"""Incidents: every stored incident, most severe and most recent first, filtered from the URL.

The filters live in the query string (``/incidents?service=rag-api&status=open&severity=page&range=7d``), so
a filtered list can be shared and survives a reload; the range is the nav's (:mod:`app.timerange`): the list
holds the incidents active in it. Each row links to its incident page, carrying the range.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import dash
from dash import Input, Output, callback, dash_table, dcc, html

from app import data, notices, timerange

dash.register_page(__name__, path="/incidents", name="Incidents", order=5)

SEVERITIES = ("page", "ticket")
STATUSES = ("open", "acknowledged", "resolved")
COLUMNS = [
    ("severity", "Severity"),
    ("status", "Status"),
    ("service", "Service"),
    ("metric", "Metric"),
    ("start", "Start (UTC)"),
    ("duration", "Duration (min)"),
    ("series", "Series"),
    ("top_cause", "Top cause"),
    ("link", "Incident"),
]


def _choice(value: str | None, allowed: Any) -> str | None:
    return value if value in allowed else None


def layout(
    service: str | None = None,
    status: str | None = None,
    severity: str | None = None,
    range: str | None = None,  # noqa: A002 (URL key)
    **_query: str,
) -> html.Div:
    """The filter bar (restored from the URL) and the incident table, over the nav's range; a status or
    severity the list does not know is ignored, and said to be."""
    services = sorted({str(i["service"]) for i in data.incident_list()} | ({service} if service else set()))
    ignored = []
    for name, value, allowed in (("status", status, STATUSES), ("severity", severity, SEVERITIES)):
        if value is not None and value not in allowed:
            ignored.append(notices.ignored({name: value}, notices.one_of(allowed), f"any {name}"))
    return html.Div(
        [
            html.H2("Incidents"),
            html.P(
                "All times UTC. Most severe first, then most recent; incidents active in the range picked above.",
                className="tz-note",
            ),
            notices.url_notice(ignored, "il-url-notice"),
            html.Div(
                [
                    dcc.Dropdown(services, service, id="il-service", placeholder="any service"),
                    dcc.Dropdown(
                        list(SEVERITIES),
                        _choice(severity, SEVERITIES),
                        id="il-severity",
                        placeholder="any severity",
                    ),
                    dcc.Dropdown(
                        list(STATUSES), _choice(status, STATUSES), id="il-status", placeholder="any status"
                    ),
                ],
                className="controls incident-filters",
            ),
            dcc.Store(
                id="il-range", data=timerange.token_from_query(range, _query.get("from"), _query.get("to"))
            ),
            html.Div(id="il-count", className="muted"),
            dash_table.DataTable(
                id="il-table",
                columns=[
                    {"name": name, "id": cid, "presentation": "markdown"}
                    if cid == "link"
                    # minutes as a number: the table sorts them by length, not as text ("1 h", "1 min", "18 min")
                    else {"name": name, "id": cid, "type": "numeric"}
                    if cid in ("duration", "series")
                    else {"name": name, "id": cid}
                    for cid, name in COLUMNS
                ],
                data=[],
                page_size=25,
                sort_action="native",
                # only the link column is markdown, and its text is fixed: no telemetry text is ever parsed
                markdown_options={"html": False, "link_target": "_self"},
                style_cell={
                    "textAlign": "left",
                    "fontFamily": "system-ui",
                    "fontSize": 13,
                    "whiteSpace": "normal",
                    "height": "auto",
                    "maxWidth": 420,
                },
                style_data_conditional=[
                    {
                        "if": {"filter_query": '{severity} = "page"', "column_id": "severity"},
                        "color": "#b42318",
                        "fontWeight": 600,
                    },
                    {
                        "if": {"filter_query": '{status} = "open"', "column_id": "status"},
                        "color": "#b42318",
                    },
                ],
            ),
            dcc.Location(id="il-url", refresh=False),
        ]
    )


def _duration(start: str | None, end: str | None) -> int | None:
    """Whole minutes from start to end (``None`` while unknown)."""
    if not start or not end:
        return None
    return int((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds() // 60)


def _top_cause(causes: list[dict[str, Any]]) -> str:
    if not causes:
        return "not explained yet"
    c = causes[0]
    return f"{c.get('kind')}: {c.get('evidence', {}).get('explanation', '')}"


def incident_rows(incidents: list[dict[str, Any]], link_query: str = "") -> list[dict[str, Any]]:
    """Table rows: most severe first, then most recent; the top stored cause in its own column.

    ``link_query`` (``?range=7d``) follows each incident's link, so the range survives the round trip.

    Examples
    --------
    >>> rows = incident_rows([
    ...     {"id": "a", "service": "s", "metric": "m", "start": "2026-01-01T00:00:00", "end": "2026-01-01T01:30:00",
    ...      "severity": "ticket", "status": "open", "series": 1, "causes": []},
    ...     {"id": "b/c", "service": "s", "metric": "m", "start": "2025-12-31T00:00:00", "end": None,
    ...      "severity": "page", "status": "resolved", "series": 2, "causes": []}])
    >>> [r["id"] for r in rows], rows[0]["link"], rows[1]["duration"]
    (['b/c', 'a'], '[view](/incident/b%2Fc)', 90)
    """
    ordered = sorted(incidents, key=lambda i: i["start"] or "", reverse=True)
    ordered.sort(key=lambda i: SEVERITIES.index(i["severity"]) if i["severity"] in SEVERITIES else 9)
    return [
        {
            "id": i["id"],
            "severity": i["severity"],
            "status": i["status"],
            "service": i["service"],
            "metric": i["metric"],
            "start": (i["start"] or "").replace("T", " ")[:16],
            "duration": _duration(i["start"], i["end"]),
            "series": i.get("series"),
            "top_cause": _top_cause(i["causes"]),
            # the id is percent-encoded whole, so no character of it can end the markdown link
            "link": f"[view](/incident/{quote(i['id'], safe='')}{link_query})",
        }
        for i in ordered
    ]


@callback(
    Output("il-table", "data"),
    Output("il-count", "children"),
    Output("il-url", "search"),
    Input("il-service", "value"),
    Input("il-severity", "value"),
    Input("il-status", "value"),
    Input("il-range", "data"),
)
def _filter(service, severity, status, rng):
    """``rng``: the range token; the list holds the incidents active in its window (all when it is "all")."""
    since = until = None
    if timerange.parse_token(rng)[0] != "all":
        span = timerange.window(rng, data.data_range(), clip=False)  # incidents outlive their points
        since, until = span if span else (None, None)
    found = data.incident_list(service=service, status=status, severity=severity, since=since, until=until)
    carried = urlencode(timerange.query(rng), safe=":")
    rows = incident_rows(found, f"?{carried}" if carried else "")
    query = {k: v for k, v in {"service": service, "status": status, "severity": severity}.items() if v}
    search = urlencode({**query, **timerange.query(rng)}, safe=":")
    count = f"{len(rows)} incident{'s' if len(rows) != 1 else ''}"
    if since is not None and status in (None, "open"):  # an on-call must not miss an old open incident
        shown = {i["id"] for i in found}
        older = [
            i
            for i in data.incident_list(service=service, status="open", severity=severity)
            if i["id"] not in shown
        ]
        if older:
            count += f" · {len(older)} open outside this range (pick “All data” to list them)"
    return rows, count, f"?{search}" if search else ""
