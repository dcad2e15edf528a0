"""The Dash app: multi-page (``app/pages/``), mounted on the same Flask server as the receiver."""

from __future__ import annotations

from pathlib import Path

import dash
import flask
from dash import dcc, html

from app import data
from ingest.store import Store

PAGES = Path(__file__).with_name("pages")


def create_dash(server: flask.Flask, store: Store) -> dash.Dash:
    """Build the app on ``server`` reading from ``store``."""
    data.attach(server, store)
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
    nav = html.Nav(
        [html.Strong("Rootwise", className="brand")]
        + [
            dcc.Link(page["name"], href=page["relative_path"], className="nav-link")
            for page in dash.page_registry.values()
            if not page.get("hide_from_nav")  # the incident page is reached from the incident list
        ],
        className="topnav",
    )
    app.layout = html.Div([nav, html.Main(dash.page_container)])
    return app


def mount_dashboard(server: flask.Flask, store: Store) -> None:
    """Attach the Dash app to the serving Flask app (used by ``rootwise serve`` and the demo)."""
    create_dash(server, store)
