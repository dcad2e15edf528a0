"""Capacity: when each constrained resource runs out (P50/P90), what-if scenarios, the leadership report.

The plan is :func:`app.capacity.plan_capacity` over the store with the server's ``[capacity]`` settings (or
the defaults, which the page says), made in the background (:class:`app.data.CapacityPlanner`): the page shows
the latest plan and when it was made; before the first one it says so and polls until it is there. A what-if (a
tenant, model or region's demand times a factor, from a date) is added to that plan as one more scenario
(:func:`app.capacity.with_scenario`); it lives in the URL (``?label=tenant&value=t-7&factor=2``).
"""

from __future__ import annotations

import html as html_text
import math
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import dash
from dash import Input, Output, State, callback, clientside_callback, dash_table, dcc, html
from dash.development.base_component import Component
from dash.exceptions import PreventUpdate

from app import data, notices
from app.capacity import CapacityPlan, Resource, Scenario
from app.charts import CONFIG, fit_modebar
from app.report import band_figure, bottom_line, render_html

dash.register_page(__name__, path="/capacity", name="Capacity", order=30, title="Capacity")
#: how often the page asks whether the first plan is ready
WAIT_MS = 2000


def _day(text: str | None) -> datetime | None:
    """The day ``YYYY-MM-DD...`` names; ``None`` for nothing or a bad date (a hand-edited URL plans from now)."""
    try:
        return datetime.fromisoformat(text[:10]) if text else None
    except ValueError:
        return None


#: the largest demand multiplier the what-if control takes (a tenant 100x its size is already a new platform)
MAX_FACTOR = 100


def _factor(text: str | None) -> float | None:
    """The URL's factor as a number the what-if control takes (0 to :data:`MAX_FACTOR`); ``None`` otherwise."""
    try:
        f = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return f if 0 <= f <= MAX_FACTOR else None


def scenario_from_inputs(
    label: str | None, value: str | None, factor: float | str | None, start: str | None
) -> Scenario | None:
    """The what-if the controls describe; ``None`` when they describe no change (factor 1, no label value).

    (Page modules are not collected for doctests: importing one outside an app fails.)
    """
    try:
        f = float(factor) if factor not in (None, "") else 1.0
    except (TypeError, ValueError):
        return None
    if not label or not value or not math.isfinite(f) or f < 0 or f == 1.0:
        return None
    when = _day(start)
    name = f"What-if: {label}={value} x{f:g}" + (f" from {when:%Y-%m-%d}" if when else "")
    return Scenario(name=name, match={label: value}, factor=f, start=when)


def _date(ts: datetime | None, now: datetime, horizon: int) -> str:
    return f"{ts:%Y-%m-%d} ({(ts - now).days} d)" if ts else f"not within {horizon} d"


def resource_rows(plan: CapacityPlan, scenario: Scenario | None) -> list[dict[str, Any]]:
    """One table row per resource; with a scenario, its P50/P90 next to the baseline's."""
    what_if = {r.name: r for r in plan.scenarios.get(scenario.name, ())} if scenario else {}
    horizon = plan.settings.horizon_days
    rows = []
    for r in plan.resources:
        use = r.utilisation(30)
        row = {
            "resource": r.name,
            "limit": f"{r.limit:,.0f} {r.unit}",
            "now": f"{r.current:,.0f}",
            "headroom": f"{r.headroom:.0%}",
            "use30": "" if use is None else f"{use[0]:.0%} / {use[1]:.0%}",
            "p50": _date(r.p50, plan.created, horizon),
            "p90": _date(r.p90, plan.created, horizon),
            "action": r.action,
            "cost": f"{r.monthly_cost:,.0f}",
        }
        if scenario:
            s = what_if.get(r.name)
            row["s_p50"] = _date(s.p50, plan.created, horizon) if s else "n/a"
            row["s_p90"] = _date(s.p90, plan.created, horizon) if s else "n/a"
        rows.append(row)
    return rows


def _columns(scenario: Scenario | None) -> list[dict[str, str]]:
    cols = [
        ("resource", "Resource"),
        ("limit", "Limit"),
        ("now", "Now (latest daily peak)"),
        ("headroom", "Headroom"),
        ("use30", "Use in 30 d, P50 / P90"),
        ("p50", "Runs out, P50"),
        ("p90", "Runs out, P90"),
    ]
    if scenario:
        cols += [("s_p50", "What-if P50"), ("s_p90", "What-if P90")]
    cols += [("action", "Action"), ("cost", "Cost, USD/month")]
    return [{"id": i, "name": n} for i, n in cols]


def _table(rows: list[dict[str, Any]], columns: list[dict[str, str]], table_id: str) -> Component:
    return dash_table.DataTable(
        id=table_id,
        data=rows,
        columns=columns,
        style_table={"overflowX": "auto"},
        style_cell={
            "textAlign": "left",
            "fontFamily": "system-ui",
            "fontSize": 13,
            "whiteSpace": "normal",
            "height": "auto",
            "maxWidth": 320,
        },
        style_header={"fontWeight": 600, "backgroundColor": "#eef1f5"},
        # a date (with its day count) is a resource that runs out: red, like the report
        style_data_conditional=[
            {"if": {"filter_query": f'{{{c["id"]}}} contains "("', "column_id": c["id"]}, "color": "#ab091e"}
            for c in columns
            if c["id"] in ("p50", "p90", "s_p50", "s_p90")
        ],
    )


def _chart(r: Resource, scenario: Resource | None) -> dcc.Graph:
    shown = scenario or r
    title = r.name + (" (what-if)" if scenario else "")
    fig = band_figure(
        title, shown.history, shown.forecast, r.limit if r.kind != "budget" else None, r.unit, shown
    )
    fig.update_layout(height=330, legend={"y": -0.2}, margin={"b": 50})
    for note in fig.layout.annotations:  # the P50 and P90 marks are often a day apart: keep both readable
        if note.text and note.text.startswith("P50 "):
            note.yshift = -16
    # no "responsive" config: with it Dash draws the chart once at an unknown size (console errors)
    return dcc.Graph(figure=fit_modebar(fig), config=CONFIG, className="cap-chart")


def _every(d: timedelta) -> str:
    minutes = round(d.total_seconds() / 60)
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"


def plan_view(snapshot: data.CapacitySnapshot, scenario: Scenario | None, configured: bool) -> list[Any]:
    """The page body for the planner's snapshot: its plan, or what is happening instead (being computed, failed)."""
    source = (
        "Settings: [capacity] from the server's rootwise.toml."
        if configured
        else "Settings: defaults (no [capacity] settings reached the app: limits come from telemetry only, "
        "no GPU quota and no budgets)."
    )
    plan = snapshot.plan
    if snapshot.state == "computing":
        since = f" (started {snapshot.running_since:%H:%M:%S} UTC)" if snapshot.running_since else ""
        return [
            html.P(
                f"The capacity plan is being computed in the background{since}: every demand series is "
                "forecast and simulated, which takes a while on a big store. This page shows the plan as soon "
                "as it is ready.",
                className="notice",
                id="cap-computing",
            ),
            html.P(source, className="note"),
        ]
    retry = f"Planned again at {snapshot.next_run:%Y-%m-%d %H:%M} UTC." if snapshot.next_run else ""
    if plan is None:
        out = [
            html.P(
                f"Capacity cannot be planned from this store: {snapshot.error}",
                className="notice",
                id="cap-error",
            ),
            html.P(f"Tried {snapshot.failed:%Y-%m-%d %H:%M} UTC. {retry}", className="note"),
        ]
        if "vllm:generation_tokens_total" not in data.metric_names():
            out.append(
                html.P(
                    "GPU capacity is learned from vLLM metrics (vllm:generation_tokens_total, "
                    "vllm:gpu_cache_usage_perc); this store has none.",
                    className="note",
                )
            )
        return [*out, html.P(source, className="note")]
    s = plan.settings
    body: list[Any] = [
        html.P(bottom_line(plan), className="bottom-line", id="cap-bottom-line"),
        *(
            [html.P(bottom_line(plan, scenario.name), className="bottom-line what-if", id="cap-what-if-line")]
            if scenario and scenario.name in plan.scenarios
            else []
        ),
        html.P(
            f"Times in UTC · planned {snapshot.planned:%Y-%m-%d %H:%M} UTC (every {_every(s.refresh)}) from data "
            f"up to {plan.created:%Y-%m-%d %H:%M} · history {plan.history_start:%Y-%m-%d} – "
            f"{plan.history_end:%Y-%m-%d} · horizon {s.horizon_days} days · P50 date: half of the simulated "
            f"futures have run out by then; P90 date: one in ten has · {source}",
            className="meta",
            id="cap-meta",
        ),
    ]
    if snapshot.error:
        body.append(
            html.P(
                f"The latest planning run ({snapshot.failed:%Y-%m-%d %H:%M} UTC) failed: {snapshot.error}. "
                f"Shown: the plan of {snapshot.planned:%Y-%m-%d %H:%M} UTC. {retry}",
                className="notice",
                id="cap-error",
            )
        )
    body += [html.P(f"Note: {n}", className="note") for n in plan.notes]
    if scenario:
        body.append(
            html.P(
                f"{scenario.name}: applied to GPU throughput"
                + (
                    " (a tenant through its share of each model and region's demand)"
                    if "tenant" in scenario.match
                    else ""
                )
                + "; GPU quota and budgets show the baseline.",
                className="note",
                id="cap-scenario-note",
            )
        )
    if not plan.resources:
        body.append(
            html.P(
                "No constrained resource to plan: GPU capacity needs vLLM metrics "
                "(vllm:generation_tokens_total, vllm:gpu_cache_usage_perc), budgets need [[capacity.budgets]].",
                className="notice",
            )
        )
        return body
    body.append(_table(resource_rows(plan, scenario), _columns(scenario), "cap-table"))
    what_if = {r.name: r for r in plan.scenarios.get(scenario.name, ())} if scenario else {}
    body.append(html.H3("Daily peak demand, forecast with 80 % and 95 % intervals (days in UTC)"))
    body.append(html.Div([_chart(r, what_if.get(r.name)) for r in plan.resources], className="cap-charts"))
    if plan.replicas:
        body.append(html.H3("What one replica sustains"))
        body.append(
            _table(
                [
                    {
                        "model": c.model,
                        "tokens": f"{c.tokens_per_s:,.0f}",
                        "basis": c.basis,
                        "observed": f"{c.observed_max:,.0f}",
                        "samples": c.samples,
                    }
                    for c in plan.replicas
                ],
                [
                    {"id": "model", "name": "Model"},
                    {"id": "tokens", "name": "Tokens/s per replica"},
                    {"id": "basis", "name": "Limited by"},
                    {"id": "observed", "name": "Highest observed"},
                    {"id": "samples", "name": "Samples"},
                ],
                "cap-replicas",
            )
        )
    return body


def _body(scenario: Scenario | None) -> list[Any]:
    _, configured = data.capacity_settings()
    return data.capacity_view(
        scenario, lambda snapshot: plan_view(snapshot, scenario, configured), configured
    )


def layout(
    label: str | None = None,
    value: str | None = None,
    factor: str | None = None,
    start: str | None = None,
    **_query: str,
) -> html.Div:
    """The capacity page, drawn from the URL's what-if (the body too: the charts start loading one round trip
    sooner than if a callback drew it; :func:`_plan` redraws it when a control or the plan changes). What of
    the what-if the controls cannot take is ignored and said above them (:mod:`app.notices`)."""
    values = data.scenario_values()
    labels = [k for k in data.SCENARIO_LABELS if values.get(k)]
    chosen = label if label in labels else (labels[0] if labels else None)
    options = values.get(chosen, []) if chosen else []
    picked = value if value in options else None
    when = _day(start)
    day = f"{when:%Y-%m-%d}" if when else None
    number = _factor(factor)
    ignored = []
    if label is not None and label != chosen:
        ignored.append(notices.ignored({"label": label}, notices.one_of(labels), chosen or "no what-if"))
    if value is not None and value != picked:
        expected = f"a {chosen} of this store: {notices.one_of(options)}" if chosen else "no value"
        ignored.append(notices.ignored({"value": value}, expected, "no what-if"))
    if factor is not None and number is None:
        ignored.append(
            notices.ignored({"factor": factor}, f"a number from 0 to {MAX_FACTOR}", "x1 (no change)")
        )
    if start is not None and when is None:
        ignored.append(notices.ignored({"start": start}, "a date, YYYY-MM-DD", "from now"))
    factor_shown = 1.0 if number is None else number
    scenario = scenario_from_inputs(chosen, picked, factor_shown, day)
    snapshot = data.capacity_snapshot()
    waiting = snapshot.state == "computing"
    return html.Div(
        [
            html.H2("Capacity"),
            notices.url_notice(ignored, "cap-url-notice"),
            html.Div(
                [
                    html.Span("What-if:", className="control-label"),
                    dcc.Dropdown(labels, chosen, id="cap-label", clearable=False, placeholder="label"),
                    dcc.Dropdown(options, picked, id="cap-value", placeholder="value"),
                    html.Span("demand x", className="control-label"),
                    # max as well as min: Dash 4.4's +/- stepper clamps to max whenever min is set, and with no
                    # max it set the value to NaN (the field emptied and the what-if was dropped)
                    dcc.Input(
                        id="cap-factor",
                        type="number",
                        value=factor_shown,
                        min=0,
                        max=MAX_FACTOR,
                        step=0.1,
                        debounce=True,
                    ),
                    dcc.DatePickerSingle(
                        id="cap-start",
                        date=day,
                        placeholder="from now",
                        clearable=True,
                        display_format="YYYY-MM-DD",
                    ),
                    html.Button(
                        "Download leadership report (HTML)",
                        id="cap-report",
                        n_clicks=0,
                        disabled=waiting,
                        className="btn primary",
                    ),
                ],
                className="controls cap-controls",
            ),
            dcc.Download(id="cap-download"),
            dcc.Location(id="cap-url", refresh=False),
            # the picker's date as the body uses it ("": none). An empty picker reports a date when it mounts,
            # which must not draw the body again (the clientside callback below); so must a Store holding None
            dcc.Store(id="cap-start-chosen", data=day or ""),
            # the planner runs the body has seen; polled until the first plan (or failure) is there
            dcc.Store(id="cap-runs", data=snapshot.runs),
            dcc.Interval(id="cap-wait", interval=WAIT_MS, disabled=not waiting),
            dcc.Loading(html.Div(_body(scenario), id="cap-body"), type="dot"),
        ]
    )


# Dash 4's DatePickerSingle sets its ``date`` when it mounts if it has none (null -> undefined), which fires
# every callback on it: only a date that differs from the one the body used goes on. (And a dcc.Store whose
# data is None sets it to undefined when it mounts: cap-start-chosen holds "" for no date.)
clientside_callback(
    """function (date, chosen) {
        date = date || "";
        return date === chosen ? window.dash_clientside.no_update : date;
    }""",
    Output("cap-start-chosen", "data"),
    Input("cap-start", "date"),
    State("cap-start-chosen", "data"),
    prevent_initial_call=True,
)


@callback(
    Output("cap-runs", "data"),
    Output("cap-wait", "disabled"),
    Output("cap-report", "disabled"),
    Input("cap-wait", "n_intervals"),
    State("cap-runs", "data"),
    prevent_initial_call=True,
)
def _wait(_ticks, shown):
    runs = data.capacity_snapshot().runs
    if runs == shown:
        raise PreventUpdate
    return runs, True, False


@callback(
    Output("cap-value", "options"),
    Output("cap-value", "value"),
    Input("cap-label", "value"),
    State("cap-value", "value"),
    prevent_initial_call=True,
)
def _value_options(label, value):
    options = data.scenario_values().get(label or "", [])
    return options, value if value in options else None


@callback(
    Output("cap-body", "children"),
    Output("cap-url", "search"),
    Input("cap-label", "value"),
    Input("cap-value", "value"),
    Input("cap-factor", "value"),
    Input("cap-start-chosen", "data"),
    Input("cap-runs", "data"),
    prevent_initial_call=True,  # the layout drew the body
)
def _plan(label, value, factor, start, _runs):
    scenario = scenario_from_inputs(label, value, factor, start)
    query = {"label": label, "value": value, "factor": factor, "start": start} if scenario else {}
    search = "?" + urlencode({k: v for k, v in query.items() if v not in (None, "")}) if query else ""
    return _body(scenario), search


@callback(
    Output("cap-download", "data"),
    Input("cap-report", "n_clicks"),
    State("cap-label", "value"),
    State("cap-value", "value"),
    State("cap-factor", "value"),
    State("cap-start-chosen", "data"),
    prevent_initial_call=True,
)
def _report(_clicks, label, value, factor, start):
    snapshot = data.capacity_plan(scenario_from_inputs(label, value, factor, start))
    if snapshot.plan is None:
        why = (
            f"Capacity cannot be planned from this store: {html_text.escape(snapshot.error)}"
            if snapshot.error
            else "The capacity plan is still being computed; download the report once the page shows it."
        )
        return dcc.send_string(f"<!DOCTYPE html><p>{why}</p>", "rootwise-capacity-error.html")
    plan = snapshot.plan
    return dcc.send_string(
        render_html(plan), f"rootwise-capacity-{plan.created:%Y-%m-%d}.html", type="text/html"
    )
