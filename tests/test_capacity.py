"""Capacity model and leadership report on a real DuckDB store with growing demand and a known limit."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from app.capacity import (
    PEAK_COLUMNS,
    Budget,
    CapacityConfigError,
    CapacitySettings,
    Scenario,
    crossing,
    forecast_daily,
    plan_capacity,
    replica_capacity,
    settings_from_config,
)
from app.report import render_html, report_capacity
from ingest.batch import MetricBuilder

T0 = datetime(2026, 3, 2)  # a Monday
STEP = timedelta(minutes=15)
DAYS = 28
KV_PER_TOKEN = 0.001  # KV-cache use per decode token/s: one replica fills 90 % at 900 tokens/s
REGION = "r1<script>alert(1)</script>"  # telemetry text is untrusted: it must come out escaped


def _pgm(path: Path) -> np.ndarray:
    """Pixels of a binary PGM (P5) page rendered by pdftoppm -gray."""
    data = path.read_bytes()
    magic, width, height, maxval, rest = data.split(maxsplit=4)
    assert magic == b"P5" and int(maxval) == 255
    return np.frombuffer(rest[: int(width) * int(height)], dtype=np.uint8)


def _ns(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1)) // timedelta(microseconds=1) * 1000


def demand_rate(t_days: np.ndarray) -> np.ndarray:
    """Per-replica decode tokens/s: daily cycle on a linear growth of 6 tokens/s per day from 400."""
    daily = 0.75 + 0.25 * np.sin(2 * np.pi * (t_days % 1.0 - 0.25))
    return (400.0 + 6.0 * t_days) * daily


def true_crossing(limit_per_replica: float = 900.0) -> datetime:
    """First day whose peak per-replica rate passes the KV-cache limit (peak of the cycle = 400 + 6 t)."""
    day = int(np.ceil((limit_per_replica - 400.0) / 6.0))
    return T0 + timedelta(days=day)


@pytest.fixture
def growth_store(store):
    rng = np.random.default_rng(7)
    n = int(DAYS * 86400 / STEP.total_seconds())
    t = np.arange(n) * STEP.total_seconds() / 86400
    b = MetricBuilder("test")
    for inst in ("gpu-1", "gpu-2"):
        labels = {"model_name": "m-big", "region": REGION, "instance": inst}
        rate = demand_rate(t) * rng.normal(1.0, 0.02, n)
        tok = b.series("vllm:generation_tokens_total", "llm-serving", "counter", "1", labels)
        kv = b.series("vllm:gpu_cache_usage_perc", "llm-serving", "gauge", "1", labels)
        total = 0.0
        for i in range(n):
            total += rate[i] * STEP.total_seconds()
            ts = _ns(T0 + i * STEP)
            b.point(tok, ts, total, f"tok:{inst}:{i}")
            b.point(kv, ts, KV_PER_TOKEN * rate[i] + rng.normal(0, 0.01), f"kv:{inst}:{i}")
    for tenant, share in (("t-big", 0.5), ("t-small", 0.5)):
        usage = {"tenant": tenant, "model": "m-big", "region": REGION}
        out = b.series("output_tokens", "gateway", "delta", "1", usage)
        cost = b.series("cost_usd", "gateway", "delta", "USD", usage)
        for i in range(0, n, 4):  # hourly usage rows
            ts = _ns(T0 + i * STEP)
            b.point(out, ts, share * 2 * demand_rate(t[i : i + 1])[0] * 3600, f"out:{tenant}:{i}")
            b.point(cost, ts, share * (10.0 + 0.2 * t[i]), f"cost:{tenant}:{i}")
    store.append(b.build())
    return store


def test_replica_capacity_takes_the_lower_of_latency_knee_and_kv_limit():
    x = np.linspace(100, 1000, 400)
    latency = np.where(x > 700, 0.2, 0.03)  # the SLO (0.1 s) breaks above 700 tokens/s
    s = pl.DataFrame({"tokens_per_s": x, "latency": latency, "kv": 0.001 * x})
    c = replica_capacity(s, latency_slo=0.1, kv_cache_limit=0.9)
    assert c.basis == "latency-slo" and 690 <= c.tokens_per_s <= 720
    assert c.kv_limit == pytest.approx(900, rel=0.01)
    # neither limit reached: the highest observed throughput, flagged as a lower bound
    flat = pl.DataFrame({"tokens_per_s": x, "latency": np.full(400, 0.03), "kv": np.full(400, 0.2)})
    c = replica_capacity(flat, latency_slo=0.1, kv_cache_limit=0.9)
    assert c.basis == "observed-max" and c.tokens_per_s == pytest.approx(1000)


def test_plan_learns_supply_and_finds_the_exhaustion_date(growth_store):
    settings = CapacitySettings(horizon_days=90, gpu_quota={REGION: 2, "elsewhere": 8})
    plan = plan_capacity(growth_store, settings)
    (cap,) = plan.replicas
    assert cap.basis == "kv-cache" and cap.tokens_per_s == pytest.approx(900, rel=0.05)
    gpu = next(r for r in plan.resources if r.kind == "gpu")
    assert gpu.limit == pytest.approx(2 * cap.tokens_per_s)
    truth = true_crossing(cap.tokens_per_s)
    assert gpu.p50 is not None and gpu.p90 is not None
    assert gpu.p90 <= gpu.p50
    assert abs((gpu.p50 - truth).days) <= 9, (gpu.p50, truth)  # within 10 % of the 90-day horizon
    assert gpu.p90 <= truth + timedelta(days=1)
    assert gpu.needed is not None and gpu.needed > 2 and "Add" in gpu.action
    u50, u90 = gpu.utilisation(30)
    assert u90 >= u50 > gpu.current / gpu.limit  # growing demand: fuller in a month, more so at P90
    # a quota of 2 GPUs runs out with the 2 replicas; a region without models is a note, not a resource
    (quota,) = [r for r in plan.resources if r.kind == "quota"]
    assert quota.p90 is not None and abs((quota.p90 - gpu.p90).days) <= 1
    assert any("elsewhere" in n for n in plan.notes)
    # whatever runs out by its P90 date is sized on the same futures: it always needs more than it has
    for r in plan.resources:
        if r.kind in ("gpu", "quota") and r.p90 is not None:
            assert r.needed > r.limit / (cap.tokens_per_s if r.kind == "gpu" else 1.0), (r.name, r.action)
            assert not re.search(r"\b(Add|Request) 0 ", r.action), r.action


def test_scenario_brings_the_date_forward_and_budget_is_tracked(growth_store):
    settings = CapacitySettings(
        horizon_days=90,
        budgets=(Budget("m-big", 700.0, {"model": "m-big"}),),
        scenarios=(Scenario("t-big doubles", {"tenant": "t-big"}, factor=2.0),),
    )
    plan = plan_capacity(growth_store, settings)
    gpu = next(r for r in plan.resources if r.kind == "gpu")
    (scen,) = plan.scenarios["t-big doubles"]
    assert scen.p50 is not None and scen.p50 < gpu.p50  # t-big is half the demand: x1.5 overall
    budget = next(r for r in plan.resources if r.kind == "budget")
    # 2 tenants x 0.5 x (10 + 0.2 t) USD per hour is ~240 USD a day: 700 USD are gone on the 3rd day
    assert budget.p50 == budget.p90 == T0 + timedelta(days=2)
    assert "over" in budget.action.lower() or "reach" in budget.action.lower()


def _first_crossings(paths: np.ndarray, limit: float) -> np.ndarray:
    over = paths > limit
    return np.where(over.any(axis=1), over.argmax(axis=1), paths.shape[1])


def test_exhaustion_dates_are_first_crossings_of_a_known_process():
    # daily peaks 1000 (1 + 0.01 t) with 3 % multiplicative noise and weekends 20 % lower; the noiseless weekday
    # peak reaches the limit 1840 on day 84, 4 weeks after the 8 weeks of history. The truth is the
    # distribution of the first day the noisy peaks pass it (median 24 days ahead, 10th percentile 21),
    # simulated from the process itself.
    rng = np.random.default_rng(5)
    n, horizon, limit = 56, 90, 1840.0
    t = np.arange(n + horizon)
    weekly = np.where(t % 7 >= 5, 0.8, 1.0)
    truth = 1000.0 * (1 + 0.01 * t) * weekly * (1 + 0.03 * rng.standard_normal((4000, t.size)))
    days = _first_crossings(truth[:, n:], limit)
    true50, true10 = np.quantile(days, 0.5), np.quantile(days, 0.1)
    history = pl.DataFrame(
        {
            "series_id": "gpu",
            "ts": pl.datetime_range(T0, T0 + timedelta(days=n - 1), "1d", eager=True),
            "value": truth[0, :n],
        }
    )
    fc = forecast_daily(history, horizon)
    assert set(PEAK_COLUMNS) <= set(fc.columns) and fc.height == horizon
    p50, p90 = crossing(fc, limit)
    origin = T0 + timedelta(days=n)
    d50, d90 = (p50 - origin).days, (p90 - origin).days
    assert abs(d50 - true50) <= 9, (
        d50,
        true50,
    )  # 10 % of the horizon; the slope of 8 noisy weeks is uncertain
    assert d90 <= d50 and true10 - 10 <= d90 <= true10, (d90, true10)
    # the median forecast crosses no earlier than the median first crossing: a noisy day passes the limit first
    yhat50 = (crossing(fc.drop(PEAK_COLUMNS), limit)[0] - origin).days
    assert yhat50 >= d50


def test_sample_paths_are_reproducible_and_follow_the_growth_curve():
    from detectors.forecast_trend import TrendForecaster

    y = 200.0 * 1.01 ** np.arange(42) * (1 + 0.02 * np.random.default_rng(2).standard_normal(42))
    frame = pl.DataFrame(
        {"series_id": 7, "ts": pl.datetime_range(T0, T0 + timedelta(days=41), "1d", eager=True), "value": y}
    )
    f = TrendForecaster(season_lengths=(7,), seed=4).fit(frame)
    a, b = f.sample_paths(30, 400)[7], f.sample_paths(30, 400)[7]
    assert a.shape == (400, 30) and np.array_equal(a, b)
    assert not np.array_equal(
        a, TrendForecaster(season_lengths=(7,), seed=5).fit(frame).sample_paths(30, 400)[7]
    )
    weights = f.growth_weights()[7]
    assert set(weights) == {"linear", "exponential"} and sum(weights.values()) == pytest.approx(1.0)
    # day 30 ahead: 200 * 1.01^71 ~ 405; exponential paths run above linear ones
    lin, exp = (np.median(f.sample_paths(30, 400, growth=g)[7][:, -1]) for g in ("linear", "exponential"))
    assert 360 < lin < exp < 450
    with pytest.raises(ValueError, match="growth"):
        f.sample_paths(30, 10, growth="quadratic")


def test_config_errors_name_the_key():
    with pytest.raises(CapacityConfigError, match=r"capacity.gpu_quota"):
        settings_from_config({"capacity": {"gpu_quota": {"us": -1}}})
    with pytest.raises(CapacityConfigError, match=r"capacity.budgets\[0\]: missing key 'monthly_usd'"):
        settings_from_config({"capacity": {"budgets": [{"name": "x"}]}})
    with pytest.raises(CapacityConfigError, match=r"capacity.scenarios\[0\].start"):
        settings_from_config({"capacity": {"scenarios": [{"name": "x", "start": "soon"}]}})


def test_html_report_is_self_contained_and_escapes_telemetry(growth_store, tmp_path):
    plan = plan_capacity(growth_store, CapacitySettings(horizon_days=60))
    doc = render_html(plan)
    assert "Executive summary" in doc and "GPU throughput m-big" in doc
    assert "<script>alert(1)</script>" not in doc and "&lt;script&gt;alert(1)" in doc
    assert 'src="http' not in doc  # plotly.js is inline: the file works offline
    assert doc.count('class="plotly-graph-div"') >= 2  # the resource and its demand
    # every chart has the app's toolbar, not Plotly's full one (lasso, select, the logo linking out)
    buttons = '"displaylogo": false, "displayModeBar": "hover", "modeBarButtons": [["toImage"], ["zoom2d", "pan2d"'
    assert doc.count(buttons) == doc.count('class="plotly-graph-div"')


def test_second_report_scores_the_first_against_what_happened(growth_store, tmp_path):
    end = T0 + timedelta(days=DAYS)
    first = report_capacity(
        growth_store, CapacitySettings(horizon_days=30), tmp_path / "a.html", now=end - timedelta(days=7)
    )
    assert first["recorded_forecasts"] > 0
    plan = plan_capacity(growth_store, CapacitySettings(horizon_days=30), now=end)
    (acc,) = [a for a in plan.accuracy if a.resource.startswith("GPU throughput")]
    assert acc.days >= 5 and acc.mape < 0.1


@pytest.mark.skipif(  # never skipped in CI: .ci/run installs both
    (not Path("/usr/bin/chromium").exists() or not shutil.which("pdftoppm")) and not os.environ.get("CI"),
    reason="needs Debian chromium and poppler-utils",
)
def test_pdf_report_renders_pages_with_charts(growth_store, tmp_path):
    out = tmp_path / "report.pdf"
    summary = report_capacity(growth_store, CapacitySettings(horizon_days=90, gpu_quota={REGION: 3}), out)
    assert summary["resources"][0]["p90"] is not None
    text = subprocess.run(
        ["pdftotext", "-f", "1", "-l", "1", str(out), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert (
        "Executive summary" in text and "GPU throughput m-big" in text and "<script>" in text
    )  # escaped, printed
    subprocess.run(["pdftoppm", "-r", "40", "-gray", str(out), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page-*.pgm"))
    assert len(pages) >= 2
    ink = [float((_pgm(page) < 200).mean()) for page in pages[:2]]
    assert ink[0] > 0.01  # the summary page has text and a table
    assert ink[1] > ink[0]  # the detail page carries charts (filled bands), more ink than text alone
    shutil.copy(out, Path("bench-results") / "capacity-report-test.pdf") if Path(
        "bench-results"
    ).is_dir() else None


def test_cli_report_capacity_json(growth_store, tmp_path):
    from app.cli import main

    db = growth_store.path
    growth_store.close()  # the CLI opens the file itself
    cfg = tmp_path / "rootwise.toml"
    cfg.write_text('[capacity]\nhorizon_days = 45\n[capacity.gpu_quota]\n"r1" = 4\n')
    out = tmp_path / "r.html"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(
            [
                "report",
                "capacity",
                "--db",
                str(db),
                "--out",
                str(out),
                "--config",
                str(cfg),
                "--format",
                "json",
            ]
        )
    assert rc == 0 and out.exists()
    data = json.loads(buf.getvalue())
    assert {r["kind"] for r in data["resources"]} == {"gpu"}  # quota region r1 has no model: a note, no row
    assert any("r1" in n for n in data["notes"])
    assert main(["report", "capacity", "--db", str(db), "--out", str(tmp_path / "r.txt")]) == 2


def test_store_without_vllm_metrics_still_plans_budgets(store):
    b = MetricBuilder("test")
    sid = b.series("cost_usd", "gateway", "delta", "USD", {"tenant": "t1"})
    for i in range(0, 14 * 24):
        b.point(sid, _ns(T0 + timedelta(hours=i)), 10.0, f"c{i}")
    store.append(b.build())
    plan = plan_capacity(store, CapacitySettings(budgets=(Budget("all", 1_000_000.0),)))
    assert [r.kind for r in plan.resources] == ["budget"]
    assert any("No vLLM metrics" in n for n in plan.notes)


def test_sizing_uses_the_futures_the_p90_date_comes_from():
    """The P90 date is read from the running maximum of simulated futures (max90); sizing on the highest daily
    90th percentile (hi80) instead advised "add 0 replicas" by a P90 date when only the maximum crossed."""
    from app.capacity import _p90_peak

    fc = pl.DataFrame(
        {"ts": [datetime(2026, 1, d) for d in (1, 2, 3)], "yhat": [80.0] * 3, "hi80": [90.0] * 3,
         "max50": [85.0, 92.0, 96.0], "max90": [95.0, 104.0, 110.0]}
    )
    _, p90 = crossing(fc, 100.0)
    assert p90 == datetime(2026, 1, 2) and _p90_peak(fc) == 110.0 > 100.0
    assert _p90_peak(fc.drop("max50", "max90")) == 90.0  # a forecast without the futures: its daily P90
