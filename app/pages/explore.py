"""Explore: any metric, optionally one service, grouped by any label; the query lives in the URL.

The time range is the nav's (:mod:`app.timerange`); the page keeps it in its own query as it found it.
"""

from __future__ import annotations

from urllib.parse import urlencode

import dash
import plotly.graph_objects as go
from dash import Input, Output, State, callback, dcc, html

from app import data, timerange

dash.register_page(__name__, path="/explore", name="Explore", order=10)

AGGS = ["auto", "avg", "sum", "min", "max", "count", "last", "rate"]


def layout(
    metric: str | None = None,
    service: str | None = None,
    by: str | None = None,
    agg: str = "auto",
    range: str | None = None,  # noqa: A002 (URL key)
    **_query: str,
) -> html.Div:
    metrics = data.metric_names()
    metric = metric if metric in metrics else (metrics[0] if metrics else None)
    # the label options are rendered with the page: a dropdown whose value is not among its options drops it
    labels = data.label_names(metric) if metric else []
    return html.Div(
        [
            html.H2("Explore"),
            html.Div(
                [
                    dcc.Dropdown(
                        metrics,
                        metric or (metrics[0] if metrics else None),
                        id="x-metric",
                        placeholder="metric",
                        clearable=False,
                    ),
                    dcc.Dropdown(data.service_names(), service, id="x-service", placeholder="any service"),
                    dcc.Dropdown(
                        labels, by if by in labels else None, id="x-by", placeholder="group by label"
                    ),
                    dcc.Dropdown(AGGS, agg if agg in AGGS else "auto", id="x-agg", clearable=False),
                ],
                className="controls x-controls",
            ),
            dcc.Store(
                id="x-range", data=timerange.token_from_query(range, _query.get("from"), _query.get("to"))
            ),
            dcc.Graph(id="x-graph", style={"height": "70vh"}),
            dcc.Location(id="x-url", refresh=False),
        ]
    )


@callback(Output("x-by", "options"), Input("x-metric", "value"))
def _label_options(metric: str | None) -> list[str]:
    return data.label_names(metric) if metric else []


@callback(
    Output("x-graph", "figure"),
    Output("x-url", "search"),
    Input("x-metric", "value"),
    Input("x-service", "value"),
    Input("x-by", "value"),
    Input("x-agg", "value"),
    Input("x-range", "data"),
    State("x-url", "search"),
)
def _plot(metric, service, by, agg, rng, _search):
    """``rng``: the range token (``None``: the default, and no range written to the URL)."""
    fig = go.Figure()
    fig.update_layout(
        margin={"l": 40, "r": 10, "t": 30, "b": 30}, xaxis_title="time (UTC)", legend={"orientation": "h"}
    )
    if not metric:
        return fig, ""
    span = timerange.window(rng, data.data_range())
    if span is None:
        return fig, ""
    start, end = span
    group_by = (by,) if by else ()
    frame = data.metric_frame(metric, service, group_by, agg or "auto", start, end)
    if by and frame.height:
        for key, part in frame.group_by(by, maintain_order=True):
            fig.add_scatter(x=part["ts"], y=part["value"], mode="lines", name=f"{by}={key[0]}")
    else:
        fig.add_scatter(x=frame["ts"], y=frame["value"], mode="lines", name=metric)
    fig.update_layout(title=f"{agg or 'auto'}({metric})" + (f" by {by}" if by else ""))
    query = {k: v for k, v in {"metric": metric, "service": service, "by": by, "agg": agg}.items() if v}
    return fig, "?" + urlencode({**query, **timerange.query(rng)}, safe=":")
