"""The nav shared by every page, in a real headless Chromium: the time range in the URL, the theme, 1366×768.

The store: ten hours of per-tenant latency and request counters for two services (newest point 09:59 UTC on
2026-01-01), a change event and an incident at 02:00-02:20 opened by hand. Relative ranges end at the newest
data, so "last hour" leaves the incident out, a custom window around it brings it back. Skipped only when
/usr/bin/chromium is absent outside CI (like tests/test_app_browser.py).
"""

from __future__ import annotations

import os
import signal
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from test_app_incidents import _no_dash_errors

from detectors.incidents import Incident
from ingest import results, schema
from ingest.batch import MetricBuilder, TelemetryBatch
from ingest.store import Store

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason="Debian chromium not installed"
)

T0 = datetime(2026, 1, 1)
MINUTES = 600
INCIDENT_ID = "inc-theme-rag-api"
WIDTH = 1366


def _ns(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1)) // timedelta(microseconds=1) * 1000


@pytest.fixture
def server(tmp_path, serve_process):
    db = tmp_path / "theme.duckdb"
    with Store(db) as store:
        b = MetricBuilder("test")
        for svc, tenants in (("rag-api", ("t-1", "t-2")), ("llm-serving", ("t-1",))):
            for tenant in tenants:
                lat = b.series("latency_ms", svc, "gauge", "ms", {"tenant": tenant})
                req = b.series("requests", svc, "counter", "{request}", {"tenant": tenant})
                for i in range(MINUTES):
                    ts = _ns(T0 + timedelta(minutes=i))
                    b.point(lat, ts, 50.0 + (i % 60), f"l{svc}{tenant}{i}")
                    b.point(req, ts, 100.0 * i, f"r{svc}{tenant}{i}")
        event = {
            "event_id": "chg-1",
            "ts": T0 + timedelta(minutes=115),
            "service": "rag-api",
            "kind": "deploy",
            "title": "rag-api v2",
            "attributes": [],
        }
        store.append(b.build())
        store.append(TelemetryBatch(events=pl.DataFrame([event], schema=schema.EVENTS)))
        start = T0 + timedelta(hours=2)
        incident = Incident(
            INCIDENT_ID, "rag-api", "latency_ms", {}, start, start + timedelta(minutes=20), "ticket", "open"
        )
        results.save_detection(
            store, states={}, anomalies=pl.DataFrame(), detector="manual", incidents=[incident], now=start
        )
    url, proc = serve_process(db, "--decode-workers", "0")
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def _pick(page, option: str) -> None:
    page.click("#rw-range")
    page.locator("[role=option]", has_text=option).click()


def _count(page, text: str) -> None:
    page.wait_for_function(f"document.querySelector('#il-count')?.innerText.startsWith({text!r})")


def test_range_lives_in_the_url_and_follows_the_nav(server, browser_page):
    page = browser_page
    # the page's own filter stays in the URL next to the range
    page.goto(server + "/incidents?severity=ticket")
    _count(page, "1 incident")  # the default, last 24 hours of data, holds the incident
    nav = page.inner_text("nav")
    assert "UTC" in nav and "2026-01-01 09:59, ending at the newest data" in nav  # the anchor is shown

    _pick(page, "Last 1 hour")
    page.wait_for_url("**/incidents?severity=ticket&range=1h")
    _count(page, "0 incidents")  # 08:59-09:59 UTC: the 02:00 incident is out, and said to be
    assert "1 open outside this range" in page.inner_text("#il-count")
    assert "2026-01-01 08:59 → 2026-01-01 09:59" in page.inner_text("#rw-window")

    # the nav links carry the range: Explore plots the last hour only
    page.click(".nav-link:text-is('Explore')")
    page.wait_for_url("**/explore?range=1h")
    page.wait_for_selector("#x-graph .scatterlayer .trace", timeout=20_000)
    page.wait_for_url("**/explore?metric=*&range=1h")  # the page wrote its query, keeping the range
    first = page.evaluate("document.querySelector('#x-graph .js-plotly-plot').data[0].x[0]")
    assert str(first) >= "2026-01-01T08:59", first
    assert "Last 1 hour" in page.inner_text("#rw-range")

    page.click(".nav-link:text-is('Incidents')")
    page.wait_for_url("**/incidents?range=1h")
    _count(page, "0 incidents")

    # a custom window (UTC) goes to the URL as from/to and brings the incident back
    _pick(page, "Custom…")
    page.fill("#rw-from", "2026-01-01 01:00")
    page.fill("#rw-to", "2026-01-01 03:00")
    page.click("#rw-apply")
    page.wait_for_url("**/incidents?from=2026-01-01T01:00&to=2026-01-01T03:00")
    _count(page, "1 incident")
    page.reload()  # a shared link opens on the same window
    _count(page, "1 incident")
    assert page.input_value("#rw-from") == "2026-01-01 01:00" and "Custom" in page.inner_text("#rw-range")
    page.fill("#rw-to", "2025-12-31 00:00")  # before the start: said, not applied
    page.click("#rw-apply")
    page.wait_for_selector("#rw-range-error:has-text('before the end')")
    assert "from=2026-01-01T01:00" in page.url

    # the incident's link and its back link keep the window
    page.locator("#il-table a", has_text="view").click()
    page.wait_for_url(f"**/incident/{INCIDENT_ID}?from=2026-01-01T01:00&to=2026-01-01T03:00")
    page.click("#inc-back")
    page.wait_for_url("**/incidents?from=2026-01-01T01:00&to=2026-01-01T03:00")
    _count(page, "1 incident")
    _no_dash_errors(page)


def test_url_params_the_app_ignores_are_said_on_the_page(server, browser_page, screenshot):
    """A bad value in the URL falls back to the default, and the page says so above its content."""
    page = browser_page
    page.goto(server + "/incidents?status=bogus&range=nonsense")
    _count(page, "1 incident")  # the defaults: any status, the last 24 hours of data
    page.wait_for_selector("#rw-url-notice:has-text('nonsense')")
    assert page.locator("#rw-url-notice").is_visible() and page.locator("#il-url-notice").is_visible()
    assert "Ignored range='nonsense' in the URL" in page.inner_text("#rw-url-notice")
    assert "showing Last 24 hours" in page.inner_text("#rw-url-notice")
    assert "Ignored status='bogus' in the URL" in page.inner_text("#il-url-notice")
    assert "Last 24 hours" in page.inner_text("#rw-range")
    screenshot(page, "url-notices.png")
    _pick(page, "Last 7 days")  # a range picked replaces the bad one: nothing is ignored any more
    page.wait_for_url("**/incidents?range=7d")
    page.wait_for_selector("#rw-url-notice", state="hidden")
    # the list's own notice goes with the list's next render, which can land after the range's
    page.wait_for_selector("#il-url-notice", state="detached")
    _no_dash_errors(page)


PAGES = (
    ("overview", "/", "#services-table"),
    ("incidents", "/incidents", "#il-table td"),
    ("incident", f"/incident/{INCIDENT_ID}", "#inc-graph canvas"),
    ("explore", "/explore?metric=latency_ms&by=tenant", "#x-graph .scatterlayer .trace"),
    ("service", "/service/rag-api?by=tenant", "#panel-requests .scatterlayer .trace"),
    ("capacity", "/capacity", "#cap-body p"),
)


def _theme(page) -> str:
    return page.evaluate("document.documentElement.className")


def test_theme_toggle_persists_and_every_page_fits_1366(server, browser_page, screenshot):
    page = browser_page
    assert page.viewport_size == {"width": WIDTH, "height": 768}
    page.emulate_media(color_scheme="light")
    page.goto(server + "/explore?metric=latency_ms")
    page.wait_for_selector("#x-graph .bglayer .bg", timeout=20_000)
    assert _theme(page) == "theme-light"
    plot_bg = "getComputedStyle(document.querySelector('#x-graph .bglayer .bg')).fill"
    light_plot = page.evaluate(plot_bg)

    page.click("#rw-theme-toggle")
    page.wait_for_function("document.documentElement.classList.contains('theme-dark')")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(15, 20, 25)"
    assert page.evaluate(plot_bg) == "rgb(22, 27, 34)" != light_plot  # the figure follows
    page.reload()  # kept in localStorage, applied before the first paint
    page.wait_for_selector("#x-graph .bglayer .bg", timeout=20_000)
    assert _theme(page) == "theme-dark" and "Light" in page.inner_text("#rw-theme-toggle")

    # every page of the nav, the ones added later too (PAGES says when the known ones are drawn)
    known = {path.split("?")[0] for _, path, _ in PAGES}
    hrefs = page.eval_on_selector_all(".nav-link", "links => links.map(a => a.getAttribute('href'))")
    others = [("nav-" + h.split("?")[0].strip("/"), h.split("?")[0], "main > div > *") for h in hrefs]
    pages = [*PAGES, *(p for p in others if p[1] not in known)]
    for theme in ("dark", "light"):
        for name, path, ready in pages:
            page.goto(server + path)
            page.locator(ready).first.wait_for(state="attached", timeout=20_000)
            page.wait_for_timeout(300)  # late callbacks (graph sizes, the picker) settle
            assert _theme(page) == f"theme-{theme}", name
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= WIDTH, f"{name} overflows in {theme}: {width}px"
            assert "UTC" in page.inner_text("nav"), name
            screenshot(page, f"{theme}-{name}.png")
            _no_dash_errors(page)
        if theme == "dark":
            page.click("#rw-theme-toggle")
            page.wait_for_function("document.documentElement.classList.contains('theme-light')")
    page.goto(server + "/")
    page.wait_for_selector("#services-table")
    assert _theme(page) == "theme-light"  # switching back is kept too


def _rgb(css: str) -> tuple[float, ...]:
    """``rgb(...)``/``rgba(...)`` → (r, g, b, alpha)."""
    parts = [float(p) for p in css[css.index("(") + 1 : css.index(")")].replace("/", ",").split(",")]
    return (*parts[:3], parts[3] if len(parts) > 3 else 1.0)


def contrast(fg: str, bg: str) -> float:
    """WCAG 2 contrast ratio of the CSS colour ``fg`` (its alpha blended over ``bg``) on the opaque ``bg``."""
    *f, alpha = _rgb(fg)
    b = _rgb(bg)[:3]
    blended = [alpha * x + (1 - alpha) * y for x, y in zip(f, b, strict=True)]

    def luminance(rgb) -> float:
        c = [v / 255 for v in rgb]
        c = [v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    hi, lo = sorted((luminance(blended), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


#: the colour painted behind an element: the first ancestor's opaque background
BACKGROUND_JS = """(el) => {
    for (let n = el; n; n = n.parentElement) {
        const c = getComputedStyle(n).backgroundColor;
        if (c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent') return c;
    }
    return getComputedStyle(document.documentElement).backgroundColor;
}"""

#: what of a chart its modebar covers: the plot area, the title, the legend, annotations (change events, limits)
MODEBAR_COVERS_JS = """(graph) => {
    const mb = graph.querySelector('.modebar').getBoundingClientRect();
    const hit = (r) => r.width > 0 && r.height > 0 && r.left < mb.right && mb.left < r.right
        && r.top < mb.bottom && mb.top < r.bottom;
    const parts = [['plot area', '.draglayer .nsewdrag'], ['title', '.gtitle'], ['legend', '.legend'],
                   ['annotation', '.annotation']];
    return parts.flatMap(([name, sel]) =>
        [...graph.querySelectorAll(sel)].filter((e) => hit(e.getBoundingClientRect())).map(() => name));
}"""

CHARTS = (
    ("explore", "/explore?metric=latency_ms&by=tenant", "#x-graph"),  # a title and a legend
    ("service", "/service/rag-api?by=tenant", "#panel-requests"),  # a subtitle, a small panel
    ("incident", f"/incident/{INCIDENT_ID}", "#inc-kpi"),  # a change annotated at the top
)


def test_the_modebar_keeps_off_every_chart_in_both_themes(server, browser_page, screenshot):
    """The modebar (Plotly's toolbar, shown on hover) sits in a strip of its own above each chart, holds only
    save / zoom / pan / reset, and its icons stand out from the page in either theme."""
    page = browser_page
    for theme in ("light", "dark"):
        page.emulate_media(color_scheme=theme)
        for name, path, graph in CHARTS:
            page.goto(server + path)
            page.locator(f"{graph} .scatterlayer .trace").first.wait_for(state="attached", timeout=20_000)
            assert _theme(page) == f"theme-{theme}"
            plot = page.locator(f"{graph} .draglayer .nsewdrag").first
            plot.hover()  # the modebar shows while the pointer is on the chart
            modebar = page.locator(f"{graph} .modebar")
            page.wait_for_function(
                "(el) => getComputedStyle(el).opacity === '1'", arg=modebar.element_handle(), timeout=5_000
            )
            buttons = modebar.locator(".modebar-btn").evaluate_all(
                "bs => bs.map(b => b.getAttribute('data-title'))"
            )
            assert buttons == ["Download plot as a PNG", "Zoom", "Pan", "Reset axes"], (name, buttons)
            covered = page.locator(f"{graph} .js-plotly-plot").evaluate(MODEBAR_COVERS_JS)
            assert covered == [], f"{theme} {name}: the modebar covers the {', '.join(covered)}"
            icon = modebar.locator(".modebar-btn path").first
            fill = icon.evaluate("(p) => getComputedStyle(p).fill")
            ratio = contrast(fill, modebar.evaluate(BACKGROUND_JS))
            assert ratio >= 3, f"{theme} {name}: modebar icons at {ratio:.1f}:1 on the page"
            screenshot(page, f"modebar-{theme}-{name}.png")
    _no_dash_errors(page)


def _readable(page, selector: str, pseudo: str | None = None) -> float:
    """The contrast of the text of ``selector`` (or of its ``::placeholder``) on what is painted behind it."""
    el = page.locator(selector).first
    colour = el.evaluate("(e, p) => getComputedStyle(e, p).color", pseudo)
    return contrast(colour, el.evaluate(BACKGROUND_JS))


def test_the_custom_range_is_readable_in_both_themes(server, browser_page, screenshot):
    """The custom range's bounds, placeholders, arrow, UTC chip and error reach WCAG AA (4.5:1) in both themes
    (the bounds were light nav text on a white field: 1.5:1; the placeholders 3.6:1 on the dark one)."""
    page = browser_page
    for theme in ("light", "dark"):
        page.emulate_media(color_scheme=theme)
        page.goto(server + "/incidents?from=2026-01-01T01:00&to=2026-01-01T03:00")
        _count(page, "1 incident")
        assert _theme(page) == f"theme-{theme}" and page.input_value("#rw-from") == "2026-01-01 01:00"
        parts = {
            "from": _readable(page, "#rw-from"),
            "to": _readable(page, "#rw-to"),
            "arrow": _readable(page, "#rw-custom > span"),
            "UTC": _readable(page, ".rw-tz"),
            "Apply": _readable(page, "#rw-apply"),
        }
        page.fill("#rw-from", "")
        parts["placeholder"] = _readable(page, "#rw-from", "::placeholder")
        page.fill("#rw-from", "2026-01-01 04:00")  # after the end: said, in the nav
        page.click("#rw-apply")
        page.wait_for_selector("#rw-range-error:has-text('before the end')")
        parts["error"] = _readable(page, "#rw-range-error")
        screenshot(page, f"custom-range-{theme}.png")
        faint = {k: round(v, 1) for k, v in parts.items() if v < 4.5}
        assert not faint, f"{theme}: below 4.5:1: {faint}"
    _no_dash_errors(page)
