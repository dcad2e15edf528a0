"""Overview: every service with its telemetry, the changes in the nav's time range, ingest health."""

from __future__ import annotations

import dash
import polars as pl
from dash import dash_table, html

from app import data, timerange

dash.register_page(__name__, path="/", name="Overview", order=0)
EVENTS_SHOWN = 20


def _table(frame, table_id: str) -> dash_table.DataTable:
    return dash_table.DataTable(
        id=table_id,
        data=frame.to_dicts(),
        columns=[{"name": c, "id": c} for c in frame.columns],
        page_size=20,
        sort_action="native",
        style_table={"overflowX": "auto"},
        style_cell={"textAlign": "left", "fontFamily": "system-ui", "fontSize": 13},
    )


def _changes(token: str | None) -> pl.DataFrame:
    """The latest changes in the range: a preset keeps everything since its start (a change may come after the
    newest metric point), a custom window only what is inside it."""
    preset, start, end = timerange.parse_token(token)
    if start is not None and end is not None:
        return data.events_between(start, end).sort("ts", descending=True).head(EVENTS_SHOWN)
    events = data.recent_events(EVENTS_SHOWN)
    span = timerange.window(token, data.data_range(), clip=False)
    return events if preset == "all" or span is None else events.filter(pl.col("ts") >= span[0])


def layout(range: str | None = None, **_query: str) -> html.Div:  # noqa: A002 (URL key)
    services = data.services_overview()
    if "last_point" in services.columns:
        services = services.with_columns(pl.col("last_point").dt.strftime("%Y-%m-%d %H:%M")).rename(
            {"last_point": "last point (UTC)"}
        )
    token = timerange.token_from_query(range, _query.get("from"), _query.get("to"))
    events = _changes(token).select(
        pl.col("ts").dt.strftime("%Y-%m-%d %H:%M").alias("time (UTC)"), "service", "kind", "title"
    )
    return html.Div(
        [
            html.H2("Services"),
            html.P(
                f"{services.height} services; {data.reject_count():,} rejected records in ingest_rejects."
            ),
            _table(services, "services-table"),
            html.H2("Latest changes in the range"),
            _table(events, "events-table")
            if events.height
            else html.P("No change events in this range.", className="muted", id="events-none"),
        ]
    )
