"""Incident: the page an on-call engineer opens from a page at 3 a.m.

What broke (the KPI around the incident, anomalies marked, changes overlaid), who is affected (the dimension
breakdown and the affected series), why (the ranked root-cause candidates with their evidence and the
dependency graph coloured by them), and the actions (acknowledge, resolve, share, export a postmortem).

Every label value, title and service name comes from telemetry and is untrusted: Dash components render it
as text; figure text is entity-escaped (Plotly reads a subset of HTML in its labels); nothing is rendered as
HTML or Markdown. Evidence is shown in words (:mod:`app.evidence`); keys that look like credentials are masked.
"""

from __future__ import annotations

import html as html_text
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlencode

import dash
import dash_cytoscape as cyto
import plotly.graph_objects as go
import polars as pl
from dash import Input, Output, State, callback, ctx, dcc, html

from app import data, timerange
from app.auth import action_props, can_respond
from app.charts import CONFIG, NO_MODEBAR, fit_modebar, plot_text
from app.evidence import evidence_rows, unit_text
from ingest.queries import QueryError
from ingest.results import IncidentStatusError

# ``path``: where the nav links to (the nav lists every page); without an id the page points to the list
dash.register_page(
    __name__,
    path="/incident",
    path_template="/incident/<incident_id>",
    name="Incident",
    order=90,
    hide_from_nav=True,
)

BEFORE = timedelta(hours=2)
AFTER = timedelta(hours=1)
MAX_LINES = 5
STATUS_BUTTONS = {"inc-ack": "acknowledged", "inc-resolve": "resolved", "inc-reopen": "open"}
EVENT_COLOURS = {
    "deploy": "#6941c6",
    "model_rollout": "#c4320a",
    "config": "#0e7090",
    "feature_flag": "#3f621a",
    "scale": "#475467",
    "infra": "#854a0e",
}
HEALTHY = "#c5cad3"


# -- small formatting helpers -----------------------------------------------------------------------------
def _ts(value: Any) -> str:
    """``2026-05-05 23:01 UTC`` from a datetime or an ISO string (empty for None)."""
    if value is None or value == "":
        return ""
    if not isinstance(value, datetime):
        value = datetime.fromisoformat(str(value))
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _labels_text(labels: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(all)"


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.4g}"


def _labels_of(entries: Any) -> dict[str, str]:
    return {e["key"]: e["value"] for e in entries or []}


def _window(incident: dict[str, Any]) -> tuple[datetime, datetime]:
    start = incident["start"]
    end = incident["end"] or start
    return start - BEFORE, end + AFTER


# -- What: the KPI chart ---------------------------------------------------------------------------------
def kpi_figure(incident: dict[str, Any], series: pl.DataFrame, events: pl.DataFrame) -> tuple[go.Figure, str]:
    """The incident's KPI around it: its top affected series of the incident's metric, anomalies marked, the
    incident shaded, changes as dashed lines.

    Returns the figure and a note (series left out; series that could not be read).
    """
    lo, hi = _window(incident)
    fig = go.Figure()
    notes: list[str] = []
    hows: set[str] = set()
    shared = incident["labels"]
    same = series.filter(pl.col("metric") == incident["metric"])
    top = same.head(MAX_LINES)
    anomalies = data.anomalies(tuple(int(s) for s in top["series_id"]), lo, hi)
    step = data.chart_step(lo, hi)
    lines = [(r["series_id"], r["metric"], _labels_of(r["labels"])) for r in top.iter_rows(named=True)]
    if not lines:  # no affected series recorded (e.g. opened by hand): the KPI over the incident's labels
        lines = [(None, incident["metric"], shared)]
    for series_id, metric, labels in lines:
        name = _labels_text({k: v for k, v in labels.items() if shared.get(k) != v and k != "stat"})
        try:
            frame, how = data.series_kpi(incident["service"], metric, tuple(sorted(labels.items())), lo, hi)
        except QueryError as exc:
            notes.append(f"{name}: {exc}")
            continue
        hows.add(how)
        if how in ("p99", "mean"):  # a histogram's two KPIs share the axis: say which line is which
            name = how if name == "(all)" else f"{how} {name}"
        fig.add_scatter(x=frame["ts"], y=frame["value"], mode="lines", name=plot_text(name))
        marks = (
            anomalies.filter(pl.col("series_id") == series_id)
            .with_columns(pl.col("ts").dt.truncate(step))
            .group_by("ts")
            .agg(pl.col("score").max())
            .join(frame, on="ts")
            .sort("ts")
        )
        if marks.height:
            fig.add_scatter(
                x=marks["ts"],
                y=marks["value"],
                mode="markers",
                marker={"color": "#d92d20", "size": 7, "symbol": "circle-open", "line": {"width": 2}},
                name=plot_text(f"anomalous: {name}"),
                customdata=marks["score"],
                hovertemplate="score %{customdata:.2f}<extra></extra>",
                showlegend=False,
            )
    if same.height > MAX_LINES:
        notes.append(f"{same.height - MAX_LINES} more affected series of {incident['metric']} not drawn")
    others = sorted(set(series["metric"].to_list()) - {incident["metric"]})
    if others:
        notes.append(f"also affected (see the series table): {', '.join(others)}")
    fig.add_vrect(
        x0=incident["start"],
        x1=incident["end"] or incident["start"],
        fillcolor="#d92d20",
        opacity=0.1,
        line_width=0,
        layer="below",
    )
    for i, ev in enumerate(events.iter_rows(named=True)):
        colour = EVENT_COLOURS.get(ev["kind"], "#475467")
        fig.add_shape(
            type="line",
            x0=ev["ts"],
            x1=ev["ts"],
            y0=0,
            y1=1,
            yref="paper",
            line={"color": colour, "width": 1.5, "dash": "dash"},
        )
        title = f"{ev['kind']}: {ev['title'] or ''} ({ev['service']})"
        fig.add_annotation(
            x=ev["ts"],
            y=1 - 0.09 * (i % 4),
            yref="paper",
            text=plot_text(title if len(title) <= 40 else title[:39] + "…"),
            hovertext=plot_text(f"{_ts(ev['ts'])} {title}"),
            showarrow=False,
            xanchor="left",
            font={"size": 11, "color": colour},
            bgcolor="rgba(255,255,255,0.8)",
        )
    fig.update_layout(
        height=340,
        margin={"l": 50, "r": 10, "t": 10, "b": 30},
        xaxis_title="time (UTC)",
        yaxis_title=plot_text(
            f"{incident['metric']} ({', '.join(sorted(hows))})" if hows else incident["metric"]
        ),
        legend={"orientation": "h", "y": -0.2},
        hovermode="x unified",
        plot_bgcolor="#fff",
    )
    # a date axis even without traces: shapes at datetimes on a linear axis draw as NaN paths
    fig.update_xaxes(type="date", range=[lo, hi], gridcolor="#eef0f3")
    fig.update_yaxes(gridcolor="#eef0f3")
    return fig, "; ".join(notes)


# -- Who: dimensions and affected series -----------------------------------------------------------------
def _who(causes: list[dict[str, Any]], series: pl.DataFrame, shared: dict[str, str]) -> list[Any]:
    dims = [c for c in causes if c.get("kind") == "dimension"]
    out: list[Any] = [html.H3("Who is affected")]
    if dims:
        rows = []
        for c in dims:
            ev = c.get("evidence", {})
            explained = ev.get("explained")
            rows.append(
                html.Tr(
                    [
                        html.Td(_labels_text(c.get("labels") or {})),
                        html.Td(_number(ev.get("actual"))),
                        html.Td(_number(ev.get("expected"))),
                        html.Td(f"{explained:.0%}" if isinstance(explained, int | float) else ""),
                    ]
                )
            )
        head = html.Tr([html.Th(h) for h in ("Dimension", "Actual", "Expected", "Share explained")])
        out.append(html.Table([html.Thead(head), html.Tbody(rows)], id="inc-dimensions", className="grid"))
        bars = go.Figure()
        names = [plot_text(_labels_text(c.get("labels") or {})) for c in dims]
        for key, colour in (("expected", "#98a2b3"), ("actual", "#d92d20")):
            bars.add_bar(
                y=names,
                x=[c.get("evidence", {}).get(key) for c in dims],
                name=key,
                orientation="h",
                marker_color=colour,
            )
        bars.update_layout(
            height=80 + 40 * len(dims),
            margin={"l": 10, "r": 10, "t": 24, "b": 20},
            barmode="group",
            legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom"},
            yaxis={"automargin": True},
            plot_bgcolor="#fff",
        )
        out.append(dcc.Graph(figure=bars, config=NO_MODEBAR, id="inc-dim-chart"))
    else:
        out.append(html.P("No dimension combination stands out (or the RCA has not run).", className="muted"))
    rows = [
        html.Tr(
            [
                html.Td(r["metric"]),
                html.Td(
                    _labels_text({k: v for k, v in _labels_of(r["labels"]).items() if shared.get(k) != v})
                ),
                html.Td(_ts(r["start"])),
                html.Td(_ts(r["last"])),
                html.Td(_number(r["peak"])),
            ]
        )
        for r in series.head(20).iter_rows(named=True)
    ]
    head = html.Tr([html.Th(h) for h in ("Metric", "Labels", "From", "Last anomalous", "Peak score")])
    if rows:
        out.append(html.Table([html.Thead(head), html.Tbody(rows)], id="inc-series", className="grid"))
    else:
        out.append(html.P("No affected series recorded for this incident.", className="muted"))
    if series.height > 20:
        out.append(html.P(f"and {series.height - 20} more series", className="muted"))
    return out


# -- Why: ranked causes and the dependency graph ---------------------------------------------------------
def _evidence(c: dict[str, Any]) -> list[tuple[str, str]]:
    """A cause's evidence as (label, value) rows (:mod:`app.evidence`); a metric's values with its unit."""
    unit = None
    if c.get("kind") == "metric" and c.get("service") and c.get("metric"):
        found = data.service_metrics(c["service"]).filter(pl.col("metric") == c["metric"])
        unit = unit_text(found["unit"][0]) if found.height else None
    return evidence_rows(c.get("kind"), c.get("evidence", {}), unit)


def _evidence_table(c: dict[str, Any]) -> html.Table:
    rows = [html.Tr([html.Th(label), html.Td(value)]) for label, value in _evidence(c)]
    return html.Table(html.Tbody(rows), className="evidence")


def _cause(c: dict[str, Any], event: dict[str, Any] | None) -> html.Details:
    ev = c.get("evidence", {})
    summary = html.Summary(
        [
            html.Span(f"#{c.get('rank')}", className="rank"),
            html.Span(c.get("kind", ""), className=f"kind kind-{c.get('kind', '')}"),
            html.Span(c.get("service") or "", className="svc"),
            html.Span(f"score {_number(c.get('score'))}", className="score"),
            html.Span(ev.get("explanation", ""), className="explanation"),
        ]
    )
    body: list[Any] = []
    if c.get("kind") == "change":
        if event is not None:
            body.append(
                html.P(
                    [
                        html.Strong("Change: "),
                        f"{event['kind']} “{event['title'] or ''}” on {event['service']} at {_ts(event['ts'])}",
                        html.Span(f" (event {c.get('event_id')})", className="muted"),
                    ],
                    className="change-event",
                )
            )
        elif c.get("event_id"):
            body.append(html.P(f"Change event {c['event_id']} (outside the chart window)", className="muted"))
    if c.get("metric") or c.get("labels"):
        scope = f"{c.get('metric') or ''} {_labels_text(c.get('labels') or {})}".strip()
        body.append(html.P(f"Scope: {scope}", className="muted small"))
    body.append(_evidence_table(c))
    return html.Details([summary, *body], className="cause", open=c.get("rank") == 1)


def service_scores(causes: list[dict[str, Any]]) -> dict[str, float]:
    """Each service's best cause score, scaled so the best service has 1.

    Examples
    --------
    >>> service_scores([{"service": "a", "score": 2.0}, {"service": "b", "score": 1.0}, {"service": None, "score": 9}])
    {'a': 1.0, 'b': 0.5}
    """
    best: dict[str, float] = {}
    for c in causes:
        if c.get("service") and isinstance(c.get("score"), int | float):
            best[c["service"]] = max(best.get(c["service"], 0.0), float(c["score"]))
    top = max(best.values(), default=0.0)
    return {s: (v / top if top > 0 else 0.0) for s, v in best.items()}


def _heat(x: float) -> str:
    """Amber (weak suspicion) to red (strong) for a scaled score in [0, 1]."""
    lo, hi = (253, 176, 34), (180, 35, 24)
    r, g, b = (round(a + (c - a) * max(0.0, min(1.0, x))) for a, c in zip(lo, hi, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def graph_elements(
    edges: pl.DataFrame, causes: list[dict[str, Any]], incident_service: str
) -> list[dict[str, Any]]:
    """Cytoscape nodes (services, coloured by their RCA score; grey when no cause names them) and edges."""
    scores = service_scores(causes)
    root = causes[0].get("service") if causes else None
    names = set(edges["source"].to_list()) | set(edges["target"].to_list()) | set(scores) | {incident_service}
    nodes = []
    for name in sorted(n for n in names if n):
        classes = ["root" if name == root else "suspect" if name in scores else "healthy"]
        if name == incident_service:
            classes.append("incident")
        share = scores.get(name)
        label = name if share is None else f"{name}\n{share:.0%}" if share >= 0.005 else f"{name}\n<1%"
        colour = _heat(scores[name]) if name in scores else HEALTHY
        nodes.append({"data": {"id": name, "label": label, "colour": colour}, "classes": " ".join(classes)})
    links = [
        {"data": {"source": r["source"], "target": r["target"]}}
        for r in edges.iter_rows(named=True)
        if r["source"] and r["target"]
    ]
    return nodes + links


# readable on both themes (the canvas cannot read the page's CSS): labels on light chips, and the top cause's
# dark border has a white outline around it, which is what shows on a dark background
GRAPH_STYLE = [
    {
        "selector": "node",
        "style": {
            "label": "data(label)",
            "background-color": "data(colour)",
            "text-wrap": "wrap",
            "font-size": 11,
            "color": "#101828",
            "text-background-color": "#ffffff",
            "text-background-opacity": 0.85,
            "text-background-padding": 2,
            "text-background-shape": "roundrectangle",
            "text-valign": "bottom",
            "text-margin-y": 4,
            "width": 26,
            "height": 26,
        },
    },
    {
        "selector": ".root",
        "style": {
            "border-width": 4,
            "border-color": "#101828",
            "outline-width": 2,
            "outline-color": "#ffffff",
            "width": 36,
            "height": 36,
        },
    },
    {"selector": ".incident", "style": {"shape": "diamond"}},
    {
        "selector": "edge",
        "style": {
            "curve-style": "bezier",
            "target-arrow-shape": "triangle",
            "line-color": "#98a2b3",
            "target-arrow-color": "#98a2b3",
            "width": 1.5,
        },
    },
]


def _why(incident: dict[str, Any], causes: list[dict[str, Any]], events: pl.DataFrame) -> list[Any]:
    out: list[Any] = [html.H3("Why: ranked causes")]
    if not causes:
        out += [
            html.P("No root-cause analysis is stored for this incident yet.", className="muted"),
            html.Button("Explain now", id="inc-explain", className="btn primary", **action_props()),
        ]
        return out
    by_id = {e["event_id"]: e for e in events.iter_rows(named=True)}
    out.append(html.Div([_cause(c, by_id.get(c.get("event_id"))) for c in causes[:15]], id="inc-causes"))
    if len(causes) > 15:
        out.append(html.P(f"{len(causes) - 15} weaker candidates not shown", className="muted"))
    return out


def _rca_sections(incident: dict[str, Any], causes: list[dict[str, Any]]) -> list[Any]:
    """Who / Why / dependency graph: everything that depends on the stored causes."""
    lo, hi = _window(incident)
    events = data.events_between(lo, hi)
    series = data.incident_series(incident["id"])
    edges = data.topology_between(lo, hi)
    graph = cyto.Cytoscape(
        id="inc-graph",
        elements=graph_elements(edges, causes, incident["service"]),
        stylesheet=GRAPH_STYLE,
        layout={"name": "breadthfirst", "directed": True, "spacingFactor": 1.1},
        style={"width": "100%", "height": "300px"},
        userZoomingEnabled=False,
        maxZoom=1.5,  # a graph of one or two services is fitted, not blown up
        autoungrabify=True,
    )
    legend = html.P(
        "Arrows point from caller to callee. Red: the RCA's suspects (darker = higher score), thick border: the "
        "top cause, diamond: the incident's service, grey: not implicated.",
        className="muted small",
    )
    return [
        html.Section(_why(incident, causes, events), className="panel why"),
        html.Div(
            [
                html.Section([html.H3("Dependencies"), graph, legend], className="panel"),
                html.Section(_who(causes, series, incident["labels"]), className="panel who"),
            ],
            className="side",
        ),
    ]


# -- Actions: the postmortem export ----------------------------------------------------------------------
def _md(text: Any) -> str:
    """Telemetry text for Markdown: HTML and Markdown syntax characters escaped, so nothing renders as markup."""
    s = html_text.escape(str(text), quote=False)
    return re.sub(r"([\\`*_\[\]|#])", r"\\\1", s).replace("\n", " ")


def postmortem_markdown(
    incident: dict[str, Any],
    series: pl.DataFrame,
    events: pl.DataFrame,
    causes: list[dict[str, Any]],
    exported: datetime,
) -> str:
    """A postmortem draft: summary, timeline (changes, alarms, incident), top causes with their evidence."""
    start, end = incident["start"], incident["end"]
    lines = [
        f"# Postmortem draft: {_md(incident['metric'])} on {_md(incident['service'])}",
        "",
        f"Incident {_md(incident['id'])} · exported {_ts(exported)} · all times UTC.",
        "",
        "## Summary",
        "",
        f"- Service: {_md(incident['service'])}",
        f"- KPI: {_md(incident['metric'])} ({_md(_labels_text(incident['labels']))})",
        f"- Severity: {_md(incident['severity'])}; status: {_md(incident['status'])}",
        f"- Start: {_ts(start)}; last anomalous point: {_ts(end)}",
        f"- Affected series: {series.height}",
    ]
    if causes:
        lines.append(f"- Top cause: {_md(causes[0].get('evidence', {}).get('explanation', ''))}")
    timeline: list[tuple[datetime, str]] = [
        (e["ts"], f"change: {_md(e['kind'])} “{_md(e['title'] or '')}” on {_md(e['service'])}")
        for e in events.iter_rows(named=True)
    ]
    timeline.append((start, f"incident opened ({_md(incident['severity'])})"))
    for r in series.iter_rows(named=True):
        timeline.append(
            (r["start"], f"alarm: {_md(r['metric'])} {{{_md(_labels_text(_labels_of(r['labels'])))}}}")
        )
    if end is not None:
        timeline.append(
            (end, "last anomalous point" + (" (resolved)" if incident["status"] == "resolved" else ""))
        )
    lines += ["", "## Timeline", ""]
    lines += [f"- {_ts(ts)}: {what}" for ts, what in sorted(timeline, key=lambda t: t[0])]
    lines.append(f"- {_ts(exported)}: status at export: {_md(incident['status'])}")
    lines += ["", "## Top causes", ""]
    if not causes:
        lines.append("No root-cause analysis stored.")
    for c in causes[:5]:
        ev = c.get("evidence", {})
        lines.append(
            f"{c.get('rank')}. **{_md(c.get('kind'))}** on {_md(c.get('service') or '?')} "
            f"(score {_number(c.get('score'))}): {_md(ev.get('explanation', ''))}"
        )
        if c.get("event_id"):
            lines.append(f"   - event: {_md(c['event_id'])}")
        for label, value in _evidence(c):
            lines.append(f"   - {_md(label)}: {_md(value)}")
    return "\n".join(lines) + "\n"


# -- layout and callbacks --------------------------------------------------------------------------------
def _status_badge(status: str) -> html.Span:
    return html.Span(status, id="inc-status", className=f"badge status-{status}")


def layout(incident_id: str | None = None, **_query: str) -> html.Div:
    """The incident page, or a clear message when the id is unknown.

    The chart keeps its own window around the incident; the nav's range only rides along to the list.
    """
    token = timerange.token_from_query(_query.get("range"), _query.get("from"), _query.get("to"))
    carried = urlencode(timerange.query(token), safe=":")
    back = "/incidents" + (f"?{carried}" if carried else "")
    if not incident_id:
        return html.Div(
            [
                html.H2("Incident"),
                html.P("Pick an incident from the list.", id="inc-missing"),
                dcc.Link("All incidents", href=back),
            ]
        )
    incident_id = unquote(incident_id)
    incident = data.incident(incident_id)
    if incident is None:
        return html.Div(
            [
                html.H2("Incident not found"),
                html.P(f"No incident {incident_id!r} in this store.", id="inc-missing"),
                dcc.Link("All incidents", href=back),
            ]
        )
    lo, hi = _window(incident)
    series = data.incident_series(incident_id)
    figure, note = kpi_figure(incident, series, data.events_between(lo, hi))
    header = html.Div(
        [
            html.Div(
                [
                    html.H2(f"{incident['metric']} on {incident['service']}", id="inc-title"),
                    html.Span(incident["severity"], className=f"badge sev-{incident['severity']}"),
                    _status_badge(incident["status"]),
                ],
                className="title-row",
            ),
            html.P(
                [
                    f"{_ts(incident['start'])} → {_ts(incident['end'])} · ",
                    f"{_labels_text(incident['labels'])} · {series.height} affected series · ",
                    html.Span(incident_id, className="mono"),
                ],
                className="muted",
            ),
            html.P("All times are UTC.", className="tz-note"),
        ]
    )
    actions = html.Div(
        [
            html.Button("Acknowledge", id="inc-ack", className="btn", **action_props()),
            html.Button("Resolve", id="inc-resolve", className="btn", **action_props()),
            html.Button("Reopen", id="inc-reopen", className="btn", **action_props()),
            html.Span(
                [dcc.Clipboard(id="inc-clip", title="copy a link to this page"), " copy link"],
                className="btn clip",
            ),
            html.Button("Export postmortem (Markdown)", id="inc-export", className="btn"),
            html.Span(id="inc-action-msg", className="muted"),
            dcc.Download(id="inc-download"),
        ],
        className="actions",
    )
    read_only = (
        None
        if can_respond()
        else html.P(
            "Read-only: acknowledging, resolving, reopening and running the root-cause analysis need the "
            "responder role.",
            className="note",
            id="inc-read-only",
        )
    )
    return html.Div(
        [
            dcc.Store(id="inc-id", data=incident_id),
            dcc.Location(id="inc-url", refresh=False),
            dcc.Link("← all incidents", href=back, className="muted", id="inc-back"),
            header,
            actions,
            read_only,
            html.Section(
                [
                    html.H3("What: the KPI around the incident"),
                    dcc.Graph(id="inc-kpi", figure=fit_modebar(figure), config=CONFIG),
                    html.P(note, className="muted small") if note else None,
                ],
                className="panel",
            ),
            dcc.Loading(
                html.Div(_rca_sections(incident, incident["causes"]), id="inc-rca", className="rca-grid"),
                type="dot",
            ),
        ],
        className="incident-page",
    )


@callback(
    Output("inc-status", "children"),
    Output("inc-status", "className"),
    Output("inc-action-msg", "children"),
    Input("inc-ack", "n_clicks"),
    Input("inc-resolve", "n_clicks"),
    Input("inc-reopen", "n_clicks"),
    State("inc-id", "data"),
    prevent_initial_call=True,
)
def _set_status(_ack, _resolve, _reopen, incident_id):
    status = STATUS_BUTTONS[ctx.triggered_id]
    try:
        found = data.set_incident_status(incident_id, status)
    except (data.NotAllowed, IncidentStatusError) as exc:
        return dash.no_update, dash.no_update, str(exc)
    if not found:
        return dash.no_update, dash.no_update, f"No incident {incident_id!r} any more."
    now = _ts(datetime.now(UTC))
    return status, f"badge status-{status}", f"Status set to {status} at {now}."


@callback(
    Output("inc-rca", "children"),
    Input("inc-explain", "n_clicks"),
    State("inc-id", "data"),
    prevent_initial_call=True,
)
def _explain_now(_clicks, incident_id):
    try:
        causes = data.explain_incident(incident_id)
    except data.NotAllowed as exc:
        return html.P(str(exc), className="error")
    incident = data.incident(incident_id)
    if causes is None or incident is None:
        return html.P(f"No incident {incident_id!r} any more.")
    return _rca_sections(incident, causes)


@callback(
    Output("inc-clip", "content"),
    Input("inc-clip", "n_clicks"),
    State("inc-url", "href"),
    prevent_initial_call=True,
)
def _copy_link(_clicks, href):
    return href


@callback(
    Output("inc-download", "data"),
    Input("inc-export", "n_clicks"),
    State("inc-id", "data"),
    prevent_initial_call=True,
)
def _export(_clicks, incident_id):
    incident = data.incident(incident_id)
    if incident is None:
        return dash.no_update
    lo, hi = _window(incident)
    text = postmortem_markdown(
        incident,
        data.incident_series(incident_id),
        data.events_between(lo, hi),
        incident["causes"],
        datetime.now(UTC).replace(tzinfo=None),
    )
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", incident_id)[:80]
    return dcc.send_string(text, f"postmortem-{safe}.md", type="text/markdown")
