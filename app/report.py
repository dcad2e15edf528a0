"""The leadership capacity report: one self-contained HTML file (interactive plotly) or a PDF (static charts).

Page one is the executive summary: every constrained resource with its exhaustion date at P50 and P90, the
action needed and what it costs. Then the detail per resource (history, forecast bands, limit), demand per
service and model, what one replica sustains, scenarios, how the previous report's forecasts compared with
what happened, and the method.

The PDF is the same document printed by headless Chromium (Debian ``chromium``; ``ROOTWISE_CHROMIUM`` points
elsewhere) with every chart made static, so what leadership prints is what the HTML shows. Every string
that comes from telemetry (model, region, tenant names) is escaped.
"""

from __future__ import annotations

import html
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import polars as pl

from app.capacity import CapacityPlan, Resource
from app.charts import CONFIG, fit_modebar

CHROMIUM = "/usr/bin/chromium"

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; color: #1f2933; margin: 24px;
       max-width: 1100px; }
h1 { font-size: 24px; margin: 0 0 4px 0; } h2 { font-size: 18px; border-bottom: 2px solid #d9e2ec;
     padding-bottom: 4px; margin-top: 28px; } h3 { font-size: 15px; margin: 18px 0 4px 0; }
.meta { color: #52606d; font-size: 12px; margin-bottom: 12px; }
.bottom-line { font-size: 15px; background: #f0f4f8; border-left: 4px solid #3e4c59; padding: 8px 12px; }
table { border-collapse: collapse; width: 100%; font-size: 12px; margin: 8px 0; }
th, td { border-bottom: 1px solid #d9e2ec; padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: #f5f7fa; } td.num { text-align: right; white-space: nowrap; }
.soon { color: #ab091e; font-weight: 600; } .ok { color: #2f8132; } .note { color: #52606d; font-size: 12px; }
.summary { page-break-after: always; break-after: page; }
.chart { page-break-inside: avoid; break-inside: avoid; }
@media print { body { margin: 0; max-width: none; } }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _date(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%d") if ts else "not within horizon"


def _days(ts: datetime | None, now: datetime) -> str:
    return f" ({(ts - now).days} d)" if ts else ""


def _num(v: float | None, digits: int = 0) -> str:
    return "" if v is None else f"{v:,.{digits}f}"


def _utilisation(r: Resource) -> str:
    u = r.utilisation(30)
    return "" if u is None else f"{u[0]:.0%} / {u[1]:.0%}"


def bottom_line(plan: CapacityPlan, scenario: str | None = None) -> str:
    """One sentence: how many resources run out within the horizon, and the first one; with ``scenario`` (the
    name of one of ``plan.scenarios``), under that what-if."""
    horizon = plan.settings.horizon_days
    resources = list(plan.scenarios.get(scenario, ())) if scenario else plan.resources
    lead = f"With {scenario}: " if scenario else ""
    short = [r for r in resources if r.p90 is not None]
    if not resources:
        return lead + "No constrained resource could be planned from this store (see the notes)."
    if not short:
        return (
            lead
            + f"No resource runs out within {horizon} days, even at P90 demand ({len(resources)} planned)."
        )
    first = min(short, key=lambda r: r.p90 or datetime.max)
    return lead + (
        f"{len(short)} of {len(resources)} resources may run out within {horizon} days (P90). "
        f"First: {first.name} on {_date(first.p90)} at P90, {_date(first.p50)} at P50. {first.action}"
    )


def _summary_table(plan: CapacityPlan) -> str:
    rows = []
    for r in plan.resources:
        soon = r.p90 is not None
        rows.append(
            "<tr>"
            f"<td>{_e(r.name)}</td><td class='num'>{_num(r.limit)} {_e(r.unit)}</td>"
            f"<td class='num'>{_num(r.current)} ({r.headroom:.0%} headroom)</td>"
            f"<td class='num'>{_utilisation(r)}</td>"
            f"<td class='{'soon' if r.p50 else 'ok'}'>{_date(r.p50)}{_days(r.p50, plan.created)}</td>"
            f"<td class='{'soon' if soon else 'ok'}'>{_date(r.p90)}{_days(r.p90, plan.created)}</td>"
            f"<td>{_e(r.action)}</td><td class='num'>{_num(r.monthly_cost)}</td>"
            "</tr>"
        )
    head = (
        "<tr><th>Resource</th><th>Limit</th><th>Now (latest daily peak)</th><th>Use in 30 days, P50 / P90</th>"
        "<th>Runs out, P50</th>"
        "<th>Runs out, P90</th><th>Action needed</th><th>Cost, USD/month</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def band_figure(
    title: str,
    history: pl.DataFrame,
    forecast: pl.DataFrame,
    limit: float | None,
    unit: str,
    marks: Resource | None,
) -> go.Figure:
    """History, forecast with its 80 % and 95 % bands, the limit and the P50/P90 exhaustion dates.

    Used by the report and by the app's capacity page; ``title`` and ``unit`` are escaped (telemetry text).
    """
    fig = go.Figure()
    if forecast.height:
        ts = forecast["ts"].to_list()
        for lo, hi, name, alpha in (
            ("lo95", "hi95", "95% interval", 0.15),
            ("lo80", "hi80", "80% interval (P10–P90)", 0.3),
        ):
            fig.add_trace(
                go.Scatter(
                    x=ts + ts[::-1],
                    y=forecast[hi].to_list() + forecast[lo].to_list()[::-1],
                    fill="toself",
                    fillcolor=f"rgba(31,119,180,{alpha})",
                    line={"width": 0},
                    name=name,
                    hoverinfo="skip",
                )
            )
        fig.add_trace(
            go.Scatter(
                x=ts,
                y=forecast["yhat"].to_list(),
                name="forecast (P50)",
                line={"color": "#1f77b4", "dash": "dash"},
            )
        )
    if history.height:
        fig.add_trace(
            go.Scatter(
                x=history["ts"].to_list(), y=history["value"].to_list(), name="actual", line={"color": "#111"}
            )
        )
    if limit is not None:
        fig.add_hline(
            y=limit, line={"color": "#ab091e", "dash": "dot"}, annotation_text=f"limit {limit:,.0f}"
        )
    if marks is not None:
        for ts, name in ((marks.p50, "P50"), (marks.p90, "P90")):
            if ts is not None:
                fig.add_vline(
                    x=ts, line={"color": "#ab091e", "width": 1}, annotation_text=f"{name} {ts:%b %d}"
                )
    fig.update_layout(
        title={"text": html.escape(title), "font": {"size": 14}},
        height=300,
        margin={"l": 50, "r": 20, "t": 40, "b": 30},
        yaxis_title=html.escape(unit),
        legend={"orientation": "h", "y": -0.15},
        template="plotly_white",
    )
    return fig


def _demand_figure(title: str, history: pl.DataFrame, forecast: pl.DataFrame, top: int = 8) -> go.Figure:
    fig = go.Figure()
    ids = (
        history.group_by("series_id")
        .agg(pl.col("value").max())
        .sort("value", descending=True)["series_id"]
        .head(top)
        if history.height
        else []
    )
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    for i, sid in enumerate(ids):
        color = palette[i % len(palette)]
        h = history.filter(pl.col("series_id") == sid)
        f = forecast.filter(pl.col("series_id") == sid)
        fig.add_trace(
            go.Scatter(
                x=h["ts"].to_list(), y=h["value"].to_list(), name=html.escape(str(sid)), line={"color": color}
            )
        )
        fig.add_trace(
            go.Scatter(
                x=f["ts"].to_list(),
                y=f["yhat"].to_list(),
                showlegend=False,
                line={"color": color, "dash": "dash"},
                name=html.escape(f"{sid} forecast"),
            )
        )
    fig.update_layout(
        title={"text": html.escape(title), "font": {"size": 14}},
        height=320,
        margin={"l": 50, "r": 20, "t": 40, "b": 30},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.15},
    )
    return fig


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(plan: CapacityPlan, *, static: bool = False) -> str:
    """The report as one self-contained HTML document (plotly.js inline); ``static`` freezes the charts."""
    from plotly.offline import get_plotlyjs

    # interactive: the app's toolbar (download PNG, zoom, pan, reset; no lasso or select, no Plotly logo) in its
    # own strip above the plot, shown on hover, so it never covers a title, a limit or a P50/P90 mark
    config = {"staticPlot": True} if static else {**CONFIG, "responsive": True}
    charts: list[str] = []

    def chart(fig: go.Figure) -> str:
        if static:
            fig.update_layout(width=1000)
        else:
            fit_modebar(fig)
        div = fig.to_html(
            full_html=False, include_plotlyjs=False, config=config, div_id=f"chart-{len(charts)}"
        )
        charts.append(div)
        return f"<div class='chart'>{div}</div>"

    s = plan.settings
    parts = [
        "<div class='summary'>",
        "<h1>Capacity report</h1>",
        f"<div class='meta'>Created {plan.created:%Y-%m-%d %H:%M} UTC · history {plan.history_start:%Y-%m-%d} – "
        f"{plan.history_end:%Y-%m-%d} · horizon {s.horizon_days} days · P50 date: half of the simulated "
        "futures have run out by then; P90 date: one in ten has</div>",
        "<h2>Executive summary</h2>",
        f"<p class='bottom-line'>{_e(bottom_line(plan))}</p>",
        _summary_table(plan),
    ]
    for note in plan.notes:
        parts.append(f"<p class='note'>Note: {_e(note)}</p>")
    parts.append("</div>")

    parts.append("<h2>Resources in detail</h2>")
    for r in plan.resources:
        parts.append(f"<h3>{_e(r.name)}</h3><p class='note'>{_e(r.note)}. {_e(r.action)}</p>")
        parts.append(
            chart(
                band_figure(r.name, r.history, r.forecast, r.limit if r.kind != "budget" else None, r.unit, r)
            )
        )
        if r.kind == "budget":
            parts.append(
                "<p class='note'>Budget lines are monthly: the dates are when month-to-date spend (actual, then "
                "forecast) passes the monthly budget; the chart shows daily spend.</p>"
            )

    parts.append("<h2>Demand by service and model</h2>")
    for title, (hist, fc) in plan.demand.items():
        if hist.height:
            parts.append(chart(_demand_figure(title, hist, fc)))

    parts.append("<h2>What one replica sustains</h2>")
    if plan.replicas:
        parts.append(
            _table(
                [
                    "Model",
                    "Tokens/s per replica",
                    "Limited by",
                    "Latency-SLO knee",
                    "KV-cache limit",
                    "Highest observed",
                    "Samples",
                ],
                [
                    [
                        c.model,
                        _num(c.tokens_per_s),
                        c.basis,
                        _num(c.latency_limit),
                        _num(c.kv_limit),
                        _num(c.observed_max),
                        c.samples,
                    ]
                    for c in plan.replicas
                ],
            )
        )
        parts.append(
            f"<p class='note'>Latency SLO: {_e(s.latency_metric)} p{s.latency_quantile * 100:.0f} ≤ "
            f"{s.latency_slo_ms:g} ms; KV-cache limit {s.kv_cache_limit:.0%}. 'observed-max' means no limit was reached "
            "in the data, so the capacity is a lower bound.</p>"
        )
    else:
        parts.append("<p class='note'>No replica telemetry (vLLM metrics) in the store.</p>")

    parts.append("<h2>Scenarios</h2>")
    if plan.scenarios:
        base = {r.name: r for r in plan.resources}
        rows = []
        for name, resources in plan.scenarios.items():
            for r in resources:
                b = base.get(r.name)
                rows.append([name, r.name, _date(b.p90 if b else None), _date(r.p50), _date(r.p90)])
        parts.append(_table(["Scenario", "Resource", "Baseline P90", "Scenario P50", "Scenario P90"], rows))
    else:
        parts.append("<p class='note'>No scenarios configured ([[capacity.scenarios]] in rootwise.toml).</p>")

    parts.append("<h2>Forecast vs actual: the previous report</h2>")
    if plan.accuracy:
        parts.append(
            _table(
                ["Resource", "Report of", "Days compared", "MAPE", "Inside 80% band", "Bias"],
                [
                    [
                        a.resource,
                        f"{a.report_created:%Y-%m-%d}",
                        a.days,
                        f"{a.mape:.1%}",
                        f"{a.within80:.0%}",
                        f"{a.bias:+.1%}",
                    ]
                    for a in plan.accuracy
                ],
            )
        )
    else:
        parts.append(
            "<p class='note'>No earlier report in this store covers the days observed since; the next report will "
            "score this one's forecasts.</p>"
        )

    parts.append("<h2>Method</h2>")
    parts.append(
        "<p class='note'>Demand is the daily peak hour of each rate (decode tokens/s per model and region from vLLM, "
        "requests/s per service, concurrent requests per model, daily cost). Each series is forecast with a growth "
        "curve (robust linear and exponential fits averaged with BIC weights, since a few weeks of history rarely tell them apart) with day-of-week effects; its intervals come "
        "from rolling-origin backtests (split conformal), so the 80% band holds 80% of outcomes in backtests. "
        "Exhaustion dates come from 2,000 simulated futures per series (the growth curve, the uncertainty of its "
        "fitted parameters, daily noise): the P50 date is the day half of them have passed the limit, the P90 date "
        "the day one in ten has (the earliest over the growth shapes the data cannot rule out); on simulated growth "
        "demand first passed the limit on or after the P90 date in nine runs out of ten. Budgets run out when "
        "month-to-date spend plus the P50 (P90) daily forecast passes them. One replica's capacity is the decode throughput at which the latency "
        "SLO starts failing or the KV cache reaches its limit, learned from 15-minute samples of the last week. "
        "A resource runs out on the first day its demand passes its limit; actions leave a "
        f"{s.lead_time_days}-day lead time before the P90 date. GPU cost assumes {s.gpu_hour_usd:g} USD per GPU-hour.</p>"
    )
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Rootwise capacity report</title>"
        f"<style>{_CSS}</style><script>{get_plotlyjs()}</script></head><body>{body}</body></html>"
    )


class ReportError(RuntimeError):
    """The report could not be produced (e.g. no Chromium for the PDF)."""


def chromium_path() -> str:
    path = os.environ.get("ROOTWISE_CHROMIUM", CHROMIUM)
    if not Path(path).exists():
        raise ReportError(
            f"PDF output needs Chromium at {path} (Debian: apt-get install chromium; or set ROOTWISE_CHROMIUM); "
            "HTML output does not"
        )
    return path


def write_pdf(document: str, out: Path) -> int:
    """Print an HTML document to ``out`` with headless Chromium; returns the byte size of the PDF."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=exe, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1400})
            page.set_content(document, wait_until="load")
            page.wait_for_function(
                "Array.from(document.querySelectorAll('.plotly-graph-div')).every(d => d.querySelector('.main-svg'))",
                timeout=60_000,
            )
            page.pdf(
                path=str(out),
                format="A4",
                print_background=True,
                margin={"top": "12mm", "bottom": "12mm", "left": "10mm", "right": "10mm"},
            )
        finally:
            browser.close()
    return out.stat().st_size


def write_report(plan: CapacityPlan, out: Path) -> dict[str, Any]:
    """Write the report as HTML or PDF (by the suffix of ``out``); returns a summary for the CLI."""
    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", ".pdf"):
        raise ReportError(
            f"{out}: the report is written as .html or .pdf, not {suffix or 'a file without suffix'}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".pdf":
        size = write_pdf(render_html(plan, static=True), out)
    else:
        out.write_text(render_html(plan), encoding="utf-8")
        size = out.stat().st_size
    return {
        "out": str(out),
        "bytes": size,
        "created": plan.created.isoformat(),
        "bottom_line": bottom_line(plan),
        "resources": [
            {
                "name": r.name,
                "kind": r.kind,
                "unit": r.unit,
                "limit": r.limit,
                "current": r.current,
                "p50": r.p50.isoformat() if r.p50 else None,
                "p90": r.p90.isoformat() if r.p90 else None,
                "needed": r.needed,
                "action": r.action,
                "monthly_cost": r.monthly_cost,
                "utilisation_30d": r.utilisation(30),
            }
            for r in plan.resources
        ],
        "notes": list(plan.notes),
    }


def report_capacity(
    store: Any, settings: Any, out: Path, *, now: datetime | None = None, record: bool = True
) -> dict[str, Any]:
    """Plan capacity over the store, write the report, and record its forecasts for the next report's
    forecast-vs-actual section (``record``)."""
    import hashlib

    from app.capacity import plan_capacity
    from ingest import results

    if out.suffix.lower() not in (".html", ".htm", ".pdf"):
        raise ReportError(
            f"{out}: the report is written as .html or .pdf, not {out.suffix or 'a file without suffix'}"
        )
    plan = plan_capacity(store, settings, now=now)
    summary = write_report(plan, out)
    if record:
        report_id = hashlib.sha1(plan.created.isoformat().encode()).hexdigest()[:12]
        frame = plan.forecasts_frame()
        summary["recorded_forecasts"] = (
            results.write_capacity_forecasts(store, frame, report_id=report_id, created=plan.created)
            if frame.height
            else 0
        )
    return summary
