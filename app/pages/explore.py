"""Explore: any metric, optionally one service, grouped by any label; the query lives in the URL.

The time range is the nav's (:mod:`app.timerange`); the page keeps it in its own query as it found it.
"""

from __future__ import annotations

from urllib.parse import urlencode

import dash
import plotly.graph_objects as go
from dash import Input, Output, State, callback, dcc, html

from app import data, notices, timerange
from app.charts import CONFIG, fit_modebar, plot_text
from ingest.queries import QueryError

dash.register_page(__name__, path="/explore", name="Explore", order=10)


def layout(
    metric: str | None = None,
    service: str | None = None,
    by: str | None = None,
    agg: str | None = None,
    range: str | None = None,  # noqa: A002 (URL key)
    **_query: str,
) -> html.Div:
    """The controls set from the URL; what of it they cannot take is said above them (:mod:`app.notices`)."""
    metrics = data.metric_names()
    asked = metric
    metric = metric if metric in metrics else (metrics[0] if metrics else None)
    ignored = []
    if asked and asked != metric:  # a pasted link with a metric this store does not have
        ignored.append(notices.ignored({"metric": asked}, "a metric in this store", metric or "no metric"))
    # the label options are rendered with the page: a dropdown whose value is not among its options drops it
    labels = data.label_names(metric) if metric else []
    aggs = data.aggs_for(metric)
    services = data.service_names()
    if service and service not in services:
        ignored.append(notices.ignored({"service": service}, notices.one_of(services), "every service"))
        service = None
    if by and by not in labels:
        ignored.append(
            notices.ignored({"by": by}, f"a label of {metric}: {notices.one_of(labels)}", "no grouping")
        )
        by = None
    if agg and agg not in aggs:
        ignored.append(notices.ignored({"agg": agg}, f"{notices.one_of(aggs)} for {metric}", "auto"))
        agg = None
    return html.Div(
        [
            html.H2("Explore"),
            notices.url_notice(ignored, "x-url-notice"),
            html.Div(
                [
                    dcc.Dropdown(metrics, metric, id="x-metric", placeholder="metric", clearable=False),
                    dcc.Dropdown(services, service, id="x-service", placeholder="any service"),
                    dcc.Dropdown(labels, by, id="x-by", placeholder="group by label"),
                    dcc.Dropdown(aggs, agg or "auto", id="x-agg", clearable=False),
                ],
                className="controls x-controls",
            ),
            dcc.Store(
                id="x-range", data=timerange.token_from_query(range, _query.get("from"), _query.get("to"))
            ),
            dcc.Graph(id="x-graph", config=CONFIG, style={"height": "70vh"}),
            dcc.Location(id="x-url", refresh=False),
        ]
    )


@callback(Output("x-by", "options"), Input("x-metric", "value"))
def _label_options(metric: str | None) -> list[str]:
    return data.label_names(metric) if metric else []


@callback(
    Output("x-agg", "options"),
    Output("x-agg", "value"),
    Input("x-metric", "value"),
    State("x-agg", "value"),
    prevent_initial_call=True,
)
def _agg_options(metric: str | None, agg: str | None) -> tuple[list[str], str]:
    """The aggregations of the chosen metric's kind (a rate of a gauge, a mean of a counter mean nothing);
    the chosen one is kept when it still applies."""
    aggs = data.aggs_for(metric)
    return aggs, agg if agg in aggs else "auto"


def _message(fig: go.Figure, text: str) -> go.Figure:
    """The chart says why it is empty instead of drawing empty axes."""
    fig.add_annotation(
        text=plot_text(text), x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font={"size": 15}
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


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
    fig, search = _figure(metric, service, by, agg, rng)
    return fit_modebar(fig), search


def _figure(
    metric: str | None, service: str | None, by: str | None, agg: str | None, rng: str | None
) -> tuple[go.Figure, str]:
    """The chart of the controls' query and the page's URL query for it."""
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
    agg = agg or "auto"
    query = {k: v for k, v in {"metric": metric, "service": service, "by": by, "agg": agg}.items() if v}
    search = "?" + urlencode({**query, **timerange.query(rng)}, safe=":")
    title = f"{agg}({metric})" + (f" of {service}" if service else "") + (f" by {by}" if by else "")
    fig.update_layout(title=plot_text(title))
    try:
        frame = data.metric_frame(metric, service, group_by, agg, start, end)
    except QueryError as exc:  # the chart, its title and the URL still say what was asked
        return _message(fig, str(exc)), search
    if frame.height == 0:
        where = f" for {service}" if service else ""
        return _message(fig, f"No data for {metric}{where} in this time range"), search
    if by:
        for key, part in frame.group_by(by, maintain_order=True):
            fig.add_scatter(x=part["ts"], y=part["value"], mode="lines", name=plot_text(f"{by}={key[0]}"))
    else:
        fig.add_scatter(x=frame["ts"], y=frame["value"], mode="lines", name=plot_text(metric))
    return fig, search
