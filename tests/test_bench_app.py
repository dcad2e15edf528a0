"""``rootwise bench app`` end to end on a tiny simulated store: every page is measured in headless Chromium.

No timing threshold here (speed is asserted only by the benchmark itself); skipped only when /usr/bin/chromium
is absent outside CI, like the other browser tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from app.bench_app import TARGET_INCIDENT_SECONDS, TARGET_PAGE_SECONDS, _figures, bench_app
from app.cli import build_parser

CHROMIUM = "/usr/bin/chromium"
PAGES = {"overview", "incidents", "incident", "service", "explore", "capacity"}

browser = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason="Debian chromium not installed"
)


def test_figures_quantiles_and_target():
    loads = [{"seconds": s} for s in (0.2, 0.4, 0.6, 0.8, 1.0)] + [{"seconds": None}]
    f = _figures(loads, 1.5)
    assert (f["loads"], f["failed"], f["p50"], f["p95"], f["max"]) == (6, 1, 0.6, 0.96, 1.0)
    assert f["met"] is False  # a failed load misses the target whatever the times
    assert _figures(loads[:5], 0.9)["met"] is False and _figures(loads[:5], 1.0)["met"] is True
    assert _figures([{"seconds": None}], 1.5)["p95"] is None


def test_cli_has_bench_app():
    args = build_parser().parse_args(["bench", "app", "--series", "200", "--days", "1", "--keep"])
    assert (args.what, args.series, args.days, args.keep) == ("app", 200, 1.0, True)


@browser
@pytest.mark.slow
def test_bench_app_measures_every_page(tmp_path):
    out = tmp_path / "results" / "app.json"
    work = tmp_path / "work"
    # one server mode keeps the test near a minute: ``cached`` is plain ``rootwise serve`` measured the same way,
    # ``uncached`` also exercises the bench's own launcher
    result = bench_app(
        series=200, days=1.0, out=out, workdir=work, repeats=1, incidents=1, explain=2, modes=("uncached",)
    )
    saved = json.loads(out.read_text())
    assert saved["summary"] == result["summary"]
    store = saved["store"]
    assert store["series"] > 100 and store["days"] == pytest.approx(
        1.0, abs=0.05
    )  # rollup hours start up to 1 h early
    assert store["incidents_with_causes"] >= 1
    assert set(saved["measured"]) == {"uncached"} and set(saved["met"]) == {"uncached"}
    for mode, measured in saved["measured"].items():
        assert set(measured["pages"]) == PAGES
        for kind, f in measured["pages"].items():
            assert f["target"] == (TARGET_INCIDENT_SECONDS if kind == "incident" else TARGET_PAGE_SECONDS)
            assert f["failed"] == 0 and f["loads"] == f["urls"]
            assert 0 < f["p50"] <= f["p95"] <= f["max"] and f["first_max_s"] > 0
            assert isinstance(f["met"], bool)
        for url in measured["urls"]:
            assert url["first_s"] > 0 and url["errors"] == [] and url["failures"] == []
            # every load ran at least the page-layout callback, and the browser saw it
            assert url["slowest_callbacks"] and url["slowest_callbacks"][0]["median_ms"] > 0
        assert measured["server"]["rss_mb_max"] > 0
        assert f"server {mode}" in saved["summary"]
    assert not list(work.glob("app-bench.duckdb*"))  # the store is removed without keep
