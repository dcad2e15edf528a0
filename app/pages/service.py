"""One service: golden signals and ML serving signals, each a small chart, grouped by a label, over a range.

The URL carries the service and the view (``/service/rag-api?range=24h&by=region``; the range is the nav's,
:mod:`app.timerange`). A panel is shown only when the service has its metric; each panel has its own group-by
(the labels of its metric), which the page-level group-by sets for every panel whose metric carries that label.
"""

from __future__ import annotations

import textwrap
from datetime import datetime
from typing import Any, NamedTuple
from urllib.parse import quote, unquote, urlencode

import dash
import plotly.io as pio
import polars as pl
from dash import ALL, MATCH, Input, Output, State, callback, dcc, html

from app import data, notices, timerange
from app.charts import CONFIG, fit_modebar, plot_text
from ingest.queries import QueryError

dash.register_page(
    __name__, path="/service", path_template="/service/<name>", name="Service", order=20, title="Service"
)

#: groups drawn per chart; more would be unreadable (the chart says how many there are)
TOP_GROUPS = 12
#: a panel's height in px, the modebar's strip included (``.svc-panel-graph`` in assets/style.css)
PANEL_HEIGHT = 280


class Panel(NamedTuple):
    """One chart: the first of ``metrics`` the service has, computed as ``how``.

    ``how``: ``rate`` (per second, times ``scale``), ``gauge`` (average per series, combined ``across``),
    ``ratio`` (errors / requests), ``quantiles`` (p50 and p99 of a histogram), ``score`` (a histogram's mean
    and its p10–p90 band: a shifting prediction-score distribution is model drift).
    A named tuple, not a dataclass: Dash executes page modules without registering them in ``sys.modules``,
    which dataclasses need to resolve postponed annotations.
    """

    key: str
    title: str
    metrics: tuple[str, ...]
    how: str
    unit: str
    scale: float = 1.0
    across: str | None = None


PANELS = (
    Panel("requests", "Request rate", ("requests",), "rate", "requests/s"),
    Panel("errors", "Error ratio", ("errors",), "ratio", "errors / requests"),
    Panel(
        "latency",
        "Latency p50 / p99",
        ("http.server.request.duration", "gen_ai.server.request.duration"),
        "quantiles",
        "s",
    ),
    Panel("ttft", "Time to first token p50 / p99", ("gen_ai.server.time_to_first_token",), "quantiles", "s"),
    Panel(
        "tpot",
        "Time per output token p50 / p99",
        ("gen_ai.server.time_per_output_token",),
        "quantiles",
        "s",
    ),
    Panel("tokens_in", "Input tokens", ("input_tokens", "vllm:prompt_tokens_total"), "rate", "tokens/s"),
    Panel(
        "tokens_out", "Output tokens", ("output_tokens", "vllm:generation_tokens_total"), "rate", "tokens/s"
    ),
    Panel(
        "queue", "Queue: requests waiting", ("vllm:num_requests_waiting",), "gauge", "requests", across="sum"
    ),
    Panel(
        "kv",
        "KV-cache use (fullest instance)",
        ("vllm:gpu_cache_usage_perc",),
        "gauge",
        "fraction",
        across="max",
    ),
    Panel("gpu_util", "GPU utilisation", ("DCGM_FI_DEV_GPU_UTIL",), "gauge", "%"),
    Panel("gpu_mem", "GPU memory used per GPU", ("DCGM_FI_DEV_FB_USED",), "gauge", "MiB"),
    Panel("cost", "Cost", ("cost_usd",), "rate", "USD/hour", scale=3600.0),
    Panel("score", "Prediction score: mean, p10–p90", ("prediction.score",), "score", "score"),
)
_BY_KEY = {p.key: p for p in PANELS}
_HISTOGRAM = frozenset({"quantiles", "score"})
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def panel_metric(panel: Panel, kinds: dict[str, set[str]]) -> str | None:
    """The metric ``panel`` plots for a service whose metrics have ``kinds`` (``None``: the panel is hidden).

    Quantile and score panels need a histogram, the others a non-histogram; the error ratio needs requests.
    """
    for metric in panel.metrics:
        have = kinds.get(metric, set())
        if not have or (panel.how in _HISTOGRAM) != ("histogram" in have):
            continue
        if panel.how == "ratio" and not kinds.get("requests"):
            continue
        return metric
    return None


def _kinds(service: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for metric, kind in data.service_metrics(service).select("metric", "kind").iter_rows():
        out.setdefault(metric, set()).add(kind)
    return out


def _window(rng: str | None) -> tuple[datetime, datetime] | None:
    return timerange.window(rng, data.data_range())


def _search(rng: str | None, by: str | None) -> str:
    """The page's query: the range as the URL had it, then the group-by."""
    query = {**timerange.query(rng), **({"by": by} if by else {})}
    return f"?{urlencode(query, safe=':')}" if query else ""


def layout(
    name: str | None = None,
    range: str | None = None,  # noqa: A002 (URL key)
    by: str | None = None,
    **_query: str,
) -> html.Div:
    """The page for ``/service/<name>`` (``/service``: the picker alone)."""
    services = data.service_names()
    name = unquote(name) if name else None
    rng = timerange.token_from_query(range, _query.get("from"), _query.get("to"))
    known = name in services
    kinds = _kinds(name) if name and known else {}
    panels = [(p, m) for p in PANELS if (m := panel_metric(p, kinds))]
    labels = {p.key: data.service_metric_labels(m, name) for p, m in panels} if name else {}
    every = sorted({label for values in labels.values() for label in values})
    window = _window(rng) if name and known else None
    ignored = []
    if by and known and by not in every:
        ignored.append(
            notices.ignored(
                {"by": by}, f"a label of {name}'s metrics: {notices.one_of(every)}", "no grouping"
            )
        )
        by = None
    header = [
        html.H2(["Service ", html.Span(name or "", className="svc-name")]),
        notices.url_notice(ignored, "svc-url-notice"),
        html.Div(
            [
                dcc.Dropdown(services, name, id="svc-picker", placeholder="pick a service", clearable=False),
                dcc.Dropdown(
                    every, by if by in every else None, id="svc-by", placeholder="group every chart by label"
                ),
            ],
            className="controls svc-controls",
        ),
        dcc.Location(id="svc-url", refresh=False),
        dcc.Location(id="svc-nav", refresh="callback-nav"),
        dcc.Store(id="svc-name", data=name),
        dcc.Store(id="svc-range", data=rng),
        # the window and each panel's metric, resolved once here: the panels' callbacks (up to 13 at once) do
        # not each ask the store for its time range and catalog again
        dcc.Store(id="svc-window", data=[t.isoformat() for t in window] if window else None),
        dcc.Store(id="svc-metrics", data={p.key: m for p, m in panels}),
    ]
    if not name:
        links = [
            html.Li(dcc.Link(s, href=f"/service/{quote(s, safe='')}{_search(rng, None)}")) for s in services
        ]
        return html.Div(
            [
                *header,
                html.P("Pick a service to see its golden signals and ML serving signals."),
                html.Ul(links),
            ]
        )
    if not known:
        return html.Div([*header, html.P(f"No service named {name!r} in the store.", className="notice")])
    if not panels:
        return html.Div([*header, html.P("This service has no metrics in the store.", className="notice")])
    span = (
        f"{window[0]:%Y-%m-%d %H:%M} – {window[1]:%Y-%m-%d %H:%M} UTC, step {data.nice_step(*window)}"
        if window
        else "no data"
    )
    cards = [
        html.Div(
            [
                html.Div(
                    [
                        html.Span(p.title, className="svc-panel-title"),
                        html.Span(f" {m}", className="svc-panel-metric", title=m),
                        dcc.Dropdown(
                            labels[p.key],
                            by if by in labels[p.key] else None,
                            id={"type": "svc-panel-by", "panel": p.key},
                            placeholder="group by",
                            className="svc-panel-by",
                        ),
                    ],
                    className="svc-panel-head",
                ),
                dcc.Graph(
                    id={"type": "svc-graph", "panel": p.key},
                    config=CONFIG,  # no "responsive": it draws once at no size (console errors)
                    className="svc-panel-graph",
                ),
            ],
            className="svc-panel",
            id=f"panel-{p.key}",
        )
        for p, m in panels
    ]
    return html.Div(
        [*header, html.P(f"Times in UTC · {span}", className="meta"), html.Div(cards, className="svc-panels")]
    )


#: the light template as plain JSON, looked up once: a dict figure skips plotly's validation of every
#: property (and its copy of the whole template), a third of a panel's time with eleven panels at once. Only
#: its layout and scatter defaults: the panels draw nothing else, and the browser parses the rest per figure
_TEMPLATE = {
    key: value if key == "layout" else {"scatter": value["scatter"]}
    for key, value in pio.templates["plotly_white"].to_plotly_json().items()
}


def _figure(traces: list[dict[str, Any]], layout: dict[str, Any]) -> dict[str, Any]:
    return fit_modebar({"data": traces, "layout": {"template": _TEMPLATE, **layout}})


def _empty(message: str) -> dict[str, Any]:
    """An empty chart that says why (query errors name the metric or label; wrapped to fit the panel)."""
    text = "<br>".join(plot_text(line) for line in textwrap.wrap(message, 60)[:6])
    return _figure(
        [],
        {
            "annotations": [{"text": text, "showarrow": False, "xref": "paper", "yref": "paper"}],
            "xaxis": {"visible": False},
            "yaxis": {"visible": False},
            "height": PANEL_HEIGHT,
            "margin": {"l": 10, "r": 10, "t": 10, "b": 10},
        },
    )


def _line(x: list[Any], y: list[Any], name: str, **line: Any) -> dict[str, Any]:
    return {"type": "scatter", "x": x, "y": y, "mode": "lines", "name": name, "line": line}


def _top(frame: pl.DataFrame, by: str) -> tuple[list[str | None], int]:
    """The ``TOP_GROUPS`` groups with the highest mean value, in name order (so a label value keeps its colour
    from panel to panel), and how many groups there are."""
    means = frame.group_by(by).agg(pl.col("value").mean()).sort("value", descending=True, nulls_last=True)
    top = means[by].head(TOP_GROUPS).to_list()
    return sorted(top, key=lambda v: (v is None, v or "")), means.height


def _name(by: str, value: str | None) -> str:
    # legend text is telemetry: escaped, since plotly renders a subset of HTML in trace names
    return plot_text(f"{by}={value}" if value is not None else f"no {by} label")


def panel_figure(
    panel: Panel, metric: str, service: str, by: str | None, window: tuple[datetime, datetime] | None
) -> dict[str, Any]:
    """The figure of one panel (a message in an empty chart when there is nothing to plot)."""
    if window is None:
        return _empty("no data in the store")
    start, end = window
    try:
        if panel.how == "rate":
            frame = data.service_series(metric, service, by, start, end, agg="rate")
            frame = frame.with_columns(pl.col("value") * panel.scale)
        elif panel.how == "gauge":
            frame = data.service_series(metric, service, by, start, end, agg="avg", across=panel.across)
        elif panel.how == "ratio":
            frame = data.service_error_ratio(service, by, start, end)
        elif panel.how == "quantiles":
            qs = (0.99,) if by else (0.5, 0.99)  # grouped: one line per group (p99), readable
            frame = data.service_quantiles(metric, service, by, qs, start, end)
        else:  # score
            frame = data.service_histogram_mean(metric, service, by, start, end)
    except QueryError as exc:
        return _empty(str(exc))
    if frame.height == 0:
        return _empty("no points in this range")
    traces: list[dict[str, Any]] = []
    subtitle = ""  # what the lines are, when the card's title does not say it all
    if by:
        groups, total = _top(frame, by)
        subtitle = (
            "p99 " if panel.how == "quantiles" else "mean " if panel.how == "score" else ""
        ) + f"by {by}"
        if total > len(groups):
            subtitle += f", top {len(groups)} of {total}"
        for i, value in enumerate(groups):
            part = frame.filter(pl.col(by).is_null() if value is None else pl.col(by) == value)
            color = _PALETTE[i % len(_PALETTE)]
            traces.append(
                _line(part["ts"].to_list(), part["value"].to_list(), _name(by, value), color=color, width=1.5)
            )
    elif panel.how == "quantiles":
        for q, dash_style in ((0.5, "solid"), (0.99, "dot")):
            part = frame.filter(pl.col("quantile") == q)
            traces.append(
                _line(
                    part["ts"].to_list(),
                    part["value"].to_list(),
                    f"p{q * 100:g}",
                    color=_PALETTE[0],
                    dash=dash_style,
                    width=1.5,
                )
            )
    elif panel.how == "score":
        band = data.service_quantiles(metric, service, None, (0.1, 0.9), start, end)
        lo, hi = band.filter(pl.col("quantile") == 0.1), band.filter(pl.col("quantile") == 0.9)
        if lo.height and lo.height == hi.height:
            ts = lo["ts"].to_list()
            traces.append(
                {
                    "type": "scatter",
                    "x": ts + ts[::-1],
                    "y": hi["value"].to_list() + lo["value"].to_list()[::-1],
                    "fill": "toself",
                    "fillcolor": "rgba(31,119,180,0.2)",
                    "line": {"width": 0},
                    "name": "p10–p90",
                    "hoverinfo": "skip",
                }
            )
        traces.append(_line(frame["ts"].to_list(), frame["value"].to_list(), "mean", width=1.5))
    else:
        name = plot_text(metric)
        traces.append(
            _line(frame["ts"].to_list(), frame["value"].to_list(), name, color=_PALETTE[0], width=1.5)
        )
    return _figure(
        traces,
        {
            "title": {
                "text": plot_text(subtitle),
                "font": {"size": 11, "color": "#667085"},
                "x": 0.01,
            },
            "height": PANEL_HEIGHT,
            "margin": {"l": 48, "r": 10, "t": 24 if subtitle else 10, "b": 28},
            # the page says "Times in UTC" once
            "xaxis": {"title": {"text": None}, "hoverformat": "%Y-%m-%d %H:%M UTC"},
            "yaxis": {"title": {"text": plot_text(panel.unit)}, "rangemode": "tozero"},
            "legend": {"orientation": "h", "y": -0.18, "font": {"size": 10}},
            "showlegend": bool(by) or panel.how in _HISTOGRAM,
            "hovermode": "x unified",
        },
    )


@callback(
    Output({"type": "svc-graph", "panel": MATCH}, "figure"),
    Input({"type": "svc-panel-by", "panel": MATCH}, "value"),
    Input("svc-window", "data"),
    State({"type": "svc-panel-by", "panel": MATCH}, "id"),
    State("svc-name", "data"),
    State("svc-metrics", "data"),
)
def _plot(by, window, panel_id, service, metrics):
    panel = _BY_KEY[panel_id["panel"]]
    metric = (metrics or {}).get(panel.key)
    if metric is None:
        return _empty("no such metric for this service")
    span = (datetime.fromisoformat(window[0]), datetime.fromisoformat(window[1])) if window else None
    return panel_figure(panel, metric, service, by, span)


@callback(
    Output({"type": "svc-panel-by", "panel": ALL}, "value"),
    Input("svc-by", "value"),
    State({"type": "svc-panel-by", "panel": ALL}, "options"),
    prevent_initial_call=True,
)
def _group_every_panel(by, options):
    return [by if by in (opts or []) else None for opts in options]


@callback(
    Output("svc-url", "search"),
    Input("svc-by", "value"),
    State("svc-range", "data"),
    prevent_initial_call=True,
)
def _sync_url(by, rng):
    return _search(rng, by)


@callback(
    Output("svc-nav", "href"),
    Input("svc-picker", "value"),
    State("svc-name", "data"),
    State("svc-range", "data"),
    State("svc-by", "value"),
    prevent_initial_call=True,
)
def _pick(service, current, rng, by):
    if not service or service == current:
        return dash.no_update
    return f"/service/{quote(service, safe='')}{_search(rng, by)}"
