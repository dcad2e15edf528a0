"""Explore: any metric, optionally one service, grouped by any label; the query lives in the URL."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

import dash
import plotly.graph_objects as go
from dash import Input, Output, State, callback, dcc, html

from app import data

dash.register_page(__name__, path="/explore", name="Explore", order=10)

RANGES = {
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(days=1),
    "3d": timedelta(days=3),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
AGGS = ["auto", "avg", "sum", "min", "max", "count", "last", "rate"]


def layout(
    metric: str | None = None,
    service: str | None = None,
    by: str | None = None,
    agg: str = "auto",
    range: str = "24h",
    **_query: str,
) -> html.Div:  # noqa: A002 (URL key)
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
                    dcc.Dropdown(labels, by if by in labels else None, id="x-by", placeholder="group by label"),
                    dcc.Dropdown(AGGS, agg if agg in AGGS else "auto", id="x-agg", clearable=False),
                    dcc.Dropdown(
                        list(RANGES), range if range in RANGES else "24h", id="x-range", clearable=False
                    ),
                ],
                className="controls",
                style={"display": "grid", "gridTemplateColumns": "3fr 2fr 2fr 1fr 1fr", "gap": "8px"},
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
    Input("x-range", "value"),
    State("x-url", "search"),
)
def _plot(metric, service, by, agg, rng, _search):
    fig = go.Figure()
    fig.update_layout(
        margin={"l": 40, "r": 10, "t": 30, "b": 30}, xaxis_title="time (UTC)", legend={"orientation": "h"}
    )
    if not metric:
        return fig, ""
    bounds = data.data_range()
    if bounds is None:
        return fig, ""
    end = bounds[1]
    start = max(bounds[0], end - RANGES.get(rng, RANGES["24h"]))
    group_by = (by,) if by else ()
    frame = data.metric_frame(metric, service, group_by, agg or "auto", start, end)
    if by and frame.height:
        for key, part in frame.group_by(by, maintain_order=True):
            fig.add_scatter(x=part["ts"], y=part["value"], mode="lines", name=f"{by}={key[0]}")
    else:
        fig.add_scatter(x=frame["ts"], y=frame["value"], mode="lines", name=metric)
    fig.update_layout(title=f"{agg or 'auto'}({metric})" + (f" by {by}" if by else ""))
    query = {
        k: v
        for k, v in {"metric": metric, "service": service, "by": by, "agg": agg, "range": rng}.items()
        if v
    }
    return fig, "?" + urlencode(query)
