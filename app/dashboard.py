"""The Dash app: multi-page (``app/pages/``), mounted on the same Flask server as the receiver.

The nav is shared by every page: the links, the time-range picker (:mod:`app.timerange`; the range lives in
the URL, and the links carry it from page to page) and the theme toggle (a class on ``<html>``, kept in the
browser's localStorage; ``assets/rootwise.js`` and ``assets/style.css``).
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import dash
import flask
from dash import ALL, ClientsideFunction, Input, Output, State, ctx, dcc, html

from app import data, timerange
from ingest.store import Store

PAGES = Path(__file__).with_name("pages")
_RANGE_OPTIONS = [{"label": label, "value": key} for key, label in timerange.LABELS.items()] + [
    {"label": "Custom…", "value": timerange.CUSTOM}
]


def _range_picker() -> html.Div:
    return html.Div(
        [
            dcc.Dropdown(
                _RANGE_OPTIONS,
                timerange.DEFAULT,
                id="rw-range",
                clearable=False,
                searchable=False,
                className="rw-range",
            ),
            html.Div(
                [
                    dcc.Input(id="rw-from", type="text", placeholder="from YYYY-MM-DD HH:MM", debounce=True),
                    html.Span("→"),
                    dcc.Input(id="rw-to", type="text", placeholder="to YYYY-MM-DD HH:MM", debounce=True),
                    html.Button("Apply", id="rw-apply", className="btn"),
                ],
                id="rw-custom",
                className="rw-custom",
                hidden=True,
            ),
            html.Span("UTC", className="rw-tz", title="All times in the app are UTC"),
            html.Span(id="rw-window", className="rw-window"),
            html.Span(id="rw-range-error", className="rw-range-error", role="alert"),
        ],
        className="rw-picker",
    )


def _nav() -> html.Nav:
    links = [
        dcc.Link(
            page["name"],
            href=page["relative_path"],
            id={"type": "rw-nav", "path": page["relative_path"]},
            className="nav-link",
        )
        for page in dash.page_registry.values()
        if not page.get("hide_from_nav")  # the incident page is reached from the incident list
    ]
    return html.Nav(
        [
            html.Strong("Rootwise", className="brand"),
            html.Div(links, className="nav-links"),
            _range_picker(),
            html.Button(
                id="rw-theme-toggle", className="theme-toggle", title="Switch between light and dark"
            ),
        ],
        className="topnav",
    )


def _range_params(search: str | None) -> tuple[str | None, str | None, str | None]:
    params = {k: v[0] for k, v in parse_qs((search or "").lstrip("?")).items()}
    return params.get("range"), params.get("from"), params.get("to")


def _token(search: str | None) -> str | None:
    return timerange.token_from_query(*_range_params(search))


def create_dash(server: flask.Flask, store: Store) -> dash.Dash:
    """Build the app on ``server`` reading from ``store``.

    ``GET /capacity/status`` says where the Capacity page's background plan is (:meth:`data.CapacitySnapshot.status`:
    ``state`` is ``computing`` until the first plan or failure, then ``planned`` or ``failed``).
    """
    data.attach(server, store)
    server.add_url_rule(
        "/capacity/status",
        "rootwise_capacity_status",
        lambda: flask.jsonify(data.capacity_snapshot().status()),
    )
    app = dash.Dash(
        __name__,
        server=server,
        use_pages=True,
        pages_folder=str(PAGES),
        assets_folder=str(PAGES.with_name("assets")),
        title="Rootwise",
        suppress_callback_exceptions=True,
        update_title=None,
    )
    app.layout = html.Div(
        [
            dcc.Location(id="rw-url", refresh=False),
            dcc.Location(id="rw-range-nav", refresh="callback-nav"),
            dcc.Store(id="rw-range-choice"),
            dcc.Store(id="rw-theme", storage_type="local"),
            _nav(),
            # the range params the nav could not use, said above every page (:func:`timerange.ignored_params`)
            html.Main(
                [
                    html.Div(id="rw-url-notice", className="notice url-notice", role="status"),
                    dash.page_container,
                ]
            ),
        ]
    )

    @app.callback(
        Output("rw-range", "value"),
        Output("rw-from", "value"),
        Output("rw-to", "value"),
        Output("rw-window", "children"),
        Output({"type": "rw-nav", "path": ALL}, "href"),
        Output("rw-url-notice", "children"),
        Input("rw-url", "search"),
        State({"type": "rw-nav", "path": ALL}, "id"),
    )
    def _show_range(search, links):
        """The picker and the nav links follow the URL (a link, the back button, the picker itself); range
        params it cannot use are said above the page."""
        token = _token(search)
        preset, _, _ = timerange.parse_token(token)
        bounds = data.data_range()
        span = timerange.window(token, bounds)
        shown = [f"{t:%Y-%m-%d %H:%M}" for t in span] if span else ["", ""]
        carried = urlencode(timerange.query(token), safe=":")
        hrefs = [link["path"] + (f"?{carried}" if carried else "") for link in links]
        ignored = [html.P(m) for m in timerange.ignored_params(*_range_params(search))]
        return preset or timerange.CUSTOM, *shown, timerange.describe(token, bounds), hrefs, ignored

    @app.callback(
        Output("rw-range-choice", "data"),
        Output("rw-custom", "hidden"),
        Output("rw-range-error", "children"),
        Input("rw-range", "value"),
        Input("rw-apply", "n_clicks"),
        Input("rw-from", "n_submit"),
        Input("rw-to", "n_submit"),
        State("rw-from", "value"),
        State("rw-to", "value"),
        State("rw-url", "search"),
        prevent_initial_call=True,
    )
    def _choose_range(choice, _apply, _submit_from, _submit_to, start, end, search):
        """A range picked in the nav, as URL params for ``rootwise.navigate`` (nothing when it is the URL's)."""
        current = _token(search)
        if choice != timerange.CUSTOM:
            if choice == (current or timerange.DEFAULT):
                return dash.no_update, True, ""
            # a nonce: picking the same range again after going back still navigates
            return {"query": {"range": choice}, "at": time.time()}, True, ""
        if ctx.triggered_id == "rw-range":  # "Custom…" picked: wait for the bounds
            return dash.no_update, False, ""
        lo, hi = timerange.parse_time(start), timerange.parse_time(end)
        if lo is None or hi is None:
            return dash.no_update, False, "Use YYYY-MM-DD HH:MM (UTC) for both bounds."
        if lo >= hi:
            return dash.no_update, False, "The start must be before the end."
        token = timerange.custom_token(lo, hi)
        if token == current:
            return dash.no_update, False, ""
        return {"query": timerange.query(token), "at": time.time()}, False, ""

    app.clientside_callback(
        ClientsideFunction(namespace="rootwise", function_name="navigate"),
        Output("rw-range-nav", "href"),
        Input("rw-range-choice", "data"),
        prevent_initial_call=True,
    )
    app.clientside_callback(
        ClientsideFunction(namespace="rootwise", function_name="toggleTheme"),
        Output("rw-theme", "data"),
        Input("rw-theme-toggle", "n_clicks"),
        prevent_initial_call=True,
    )
    app.clientside_callback(
        ClientsideFunction(namespace="rootwise", function_name="applyTheme"),
        Output("rw-theme-toggle", "children"),
        Input("rw-theme", "data"),
    )
    return app


def mount_dashboard(server: flask.Flask, store: Store) -> None:
    """Attach the Dash app to the serving Flask app (used by ``rootwise serve`` and the demo)."""
    create_dash(server, store)
