"""What every chart of the app shares: Plotly's toolbar (the *modebar*) and the strip of the figure it sits in.

Plotly draws its modebar over the top right corner of a chart when the pointer is on it. Left there, it covers
lines, a legend, a title or a change annotation, and in the dark theme its icons are lost among them. So every
figure's top margin gets a strip of :data:`MODEBAR_ROOM` pixels above what the figure drew there itself, the
title (if any) starts below that strip, and the modebar holds only what an on-call engineer uses: save as PNG,
box zoom, pan and reset. Plotly's own "Share chart" button, which uploads the chart's data to a third party, is
not among them. The modebar's colours follow the theme (``assets/style.css``).

A page builds its figure, passes it through :func:`fit_modebar` once, and gives its ``dcc.Graph``
``config=`` :data:`CONFIG` (or :data:`NO_MODEBAR` for a small chart with nothing to zoom).
"""

from __future__ import annotations

import html
from typing import Any, TypeVar

import plotly.graph_objects as go

#: the strip the modebar needs at the top of a figure, in px: Plotly draws it 2 px from the top and 23 px tall
MODEBAR_ROOM = 30
#: the ``config`` of every chart with a modebar
CONFIG: dict[str, Any] = {
    "displaylogo": False,
    "displayModeBar": "hover",
    "modeBarButtons": [["toImage"], ["zoom2d", "pan2d", "resetScale2d"]],
    "toImageButtonOptions": {"format": "png", "filename": "rootwise-chart", "scale": 2},
}
#: the ``config`` of a chart without one
NO_MODEBAR: dict[str, Any] = {"displayModeBar": False}

Figure = TypeVar("Figure", go.Figure, dict)


def modebar_layout(top: int | None, titled: bool) -> dict[str, Any]:
    """The layout changes that keep the modebar off a figure whose own top margin is ``top`` px (``None``
    counts as 0: a figure sets its margin, Plotly's default of 100 px wastes a chart's height).

    Examples
    --------
    >>> modebar_layout(10, False)
    {'margin': {'t': 40}, 'modebar': {'bgcolor': 'rgba(0,0,0,0)'}}
    >>> modebar_layout(24, True)["title"]
    {'yref': 'container', 'y': 1, 'yanchor': 'top', 'pad': {'t': 30}}
    """
    out: dict[str, Any] = {
        "margin": {"t": (top or 0) + MODEBAR_ROOM},
        "modebar": {"bgcolor": "rgba(0,0,0,0)"},
    }
    if titled:  # at the top of the margin, under the strip (by default it is centred in the whole margin)
        out["title"] = {"yref": "container", "y": 1, "yanchor": "top", "pad": {"t": MODEBAR_ROOM}}
    return out


def fit_modebar(figure: Figure) -> Figure:
    """``figure`` (a ``go.Figure`` or a plain figure dict) with the modebar's strip added to its top margin.

    Call it once, after the figure's own layout is set: each call adds the strip again.

    Examples
    --------
    >>> fig = fit_modebar({"data": [], "layout": {"margin": {"l": 40, "t": 10}, "title": {"text": "x"}}})
    >>> fig["layout"]["margin"], fig["layout"]["title"]["text"], fig["layout"]["title"]["pad"]
    ({'l': 40, 't': 40}, 'x', {'t': 30})
    >>> fit_modebar(go.Figure(layout={"margin": {"t": 10}})).layout.margin.t
    40
    """
    if isinstance(figure, go.Figure):
        figure.update_layout(modebar_layout(figure.layout.margin.t, bool(figure.layout.title.text)))
        return figure
    layout = figure.setdefault("layout", {})
    title = layout.get("title")
    if isinstance(title, str):
        title = layout["title"] = {"text": title}
    changes = modebar_layout(layout.get("margin", {}).get("t"), bool(title and title.get("text")))
    for key, value in changes.items():
        layout[key] = {**layout.get(key, {}), **value}
    return figure


def plot_text(text: Any) -> str:
    """Telemetry text (metric, service and label values, messages naming them) for a Plotly title, legend, label or
    annotation: entity-escaped, because Plotly reads ``<b>``, ``<a href>`` ... in them.

    Examples
    --------
    >>> plot_text("tenant=<b>t-1</b> & co")
    'tenant=&lt;b&gt;t-1&lt;/b&gt; &amp; co'
    """
    return html.escape(str(text), quote=False)
