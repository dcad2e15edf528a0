"""Overview: every service with its telemetry, the latest changes, ingest health."""

from __future__ import annotations

import dash
from dash import dash_table, html

from app import data

dash.register_page(__name__, path="/", name="Overview", order=0)


def _table(frame, table_id: str) -> dash_table.DataTable:
    return dash_table.DataTable(
        id=table_id,
        data=frame.to_dicts(),
        columns=[{"name": c, "id": c} for c in frame.columns],
        page_size=20,
        sort_action="native",
        style_cell={"textAlign": "left", "fontFamily": "system-ui", "fontSize": 13},
    )


def layout(**_query: str) -> html.Div:
    services = data.services_overview()
    events = data.recent_events().select("ts", "service", "kind", "title")
    return html.Div(
        [
            html.H2("Services"),
            html.P(
                f"{services.height} services; {data.reject_count():,} rejected records in ingest_rejects."
            ),
            _table(services, "services-table"),
            html.H2("Latest changes"),
            _table(events.with_columns(events["ts"].dt.strftime("%Y-%m-%d %H:%M UTC")), "events-table"),
        ]
    )
