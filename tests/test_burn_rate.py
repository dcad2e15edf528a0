"""Multiwindow multi-burn-rate alerts against hand-computed burn rates (SRE workbook, ch. 5)."""

from __future__ import annotations

import tomllib
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from detectors.burn_rate import (
    DEFAULT_WINDOWS,
    PAGE,
    TICKET,
    BurnWindow,
    Slo,
    SloConfigError,
    burn_rate_alerts,
    slos_from_config,
)

T0 = datetime(2024, 3, 1)
MIN = timedelta(minutes=1)
QUIET = 3 * 24 * 60  # three days of clean traffic first, so every window is full of history


@pytest.fixture
def slo() -> Slo:
    return Slo("chat-availability", 0.999, service="chat-api", bad_metric="errors", total_metric="requests")


def minutes(n: int) -> list[datetime]:
    return [T0 + i * MIN for i in range(n)]


def fired(out: pl.DataFrame, severity: str, long: timedelta) -> np.ndarray:
    """Indexes (minutes) at which the window fires."""
    rows = out.filter((pl.col("severity") == severity) & (pl.col("long_window") == long))
    return np.flatnonzero(rows["firing"].to_numpy())


def window(out: pl.DataFrame, long: timedelta) -> pl.DataFrame:
    return out.filter(pl.col("long_window") == long)


def test_defaults_are_the_workbook_table():
    assert [(w.long, w.short, w.burn, w.severity) for w in DEFAULT_WINDOWS] == [
        (timedelta(hours=1), timedelta(minutes=5), 14.4, "page"),
        (timedelta(hours=6), timedelta(minutes=30), 6.0, "page"),
        (timedelta(days=1), timedelta(hours=2), 3.0, "ticket"),
        (timedelta(days=3), timedelta(hours=6), 1.0, "ticket"),
    ]
    assert DEFAULT_WINDOWS == PAGE + TICKET


def test_two_percent_burst_pages_from_the_one_hour_window_and_stops_within_the_short_window(slo):
    # 1000 requests a minute; a 90-minute burst of 2 % errors (burn rate 20) after three quiet days
    burst = 90
    n = QUIET + burst + 60
    total = np.full(n, 1000.0)
    bad = np.zeros(n)
    bad[QUIET : QUIET + burst] = 20.0
    out = burn_rate_alerts(minutes(n), bad, total, slo)
    assert out.columns == ["ts", "severity", "long_window", "burn_rate_long", "burn_rate_short", "firing"]
    assert out.height == 4 * n

    one_hour = window(out, timedelta(hours=1))
    # by hand, m minutes into the burst: 1 h ratio = 20 m / 60,000 -> burn m / 3; 5 m ratio = 2 % -> burn 20
    m30 = QUIET + 29
    assert one_hour["burn_rate_long"][m30] == pytest.approx(10.0)
    assert one_hour["burn_rate_short"][m30] == pytest.approx(20.0)
    # it pages when m / 3 > 14.4, i.e. at the 44th minute of the burst (the 1 h window needs 2 % of the budget)
    hits = fired(out, "page", timedelta(hours=1))
    assert hits[0] == QUIET + 43
    # after the burst the 5 m window empties: burn 4 (5 - j) at j minutes after — below 14.4 from j = 2,
    # although the 1 h burn is still 58 / 3 = 19.3 then
    end = QUIET + burst - 1
    assert hits[-1] == end + 1
    assert one_hour["burn_rate_long"][end + 2] == pytest.approx(58 / 3)
    assert one_hour["burn_rate_short"][end + 2] == pytest.approx(12.0)
    # 6 h window: burn m / 18 reaches 5 at most (< 6); ticket windows: 1 d burn 1.25 (< 3), 3 d 0.42 (< 1)
    assert fired(out, "page", timedelta(hours=6)).size == 0
    assert window(out, timedelta(hours=6))["burn_rate_long"].max() == pytest.approx(90 * 20 / 360_000 / 0.001)
    assert fired(out, "ticket", timedelta(days=1)).size == 0
    assert fired(out, "ticket", timedelta(days=3)).size == 0


def test_a_slow_burn_of_0_15_percent_only_opens_a_ticket(slo):
    # 0.15 % errors (burn 1.5) for three days after three clean days, 10,000 requests a minute
    n = 2 * QUIET
    total = np.full(n, 10_000.0)
    bad = np.zeros(n)
    bad[QUIET:] = 15.0
    out = burn_rate_alerts(minutes(n), bad, total, slo)
    assert fired(out, "page", timedelta(hours=1)).size == 0
    assert fired(out, "page", timedelta(hours=6)).size == 0
    assert fired(out, "ticket", timedelta(days=1)).size == 0  # needs burn 3
    # 3 d window: burn 1.5 m / 4320 > 1 once more than 2/3 of the window burns: m > 2880 minutes (48 h)
    hits = fired(out, "ticket", timedelta(days=3))
    assert hits.size and hits[0] == QUIET + 2880
    three_days = window(out, timedelta(days=3))
    assert three_days["burn_rate_long"][QUIET + 1439] == pytest.approx(0.5)
    assert three_days["burn_rate_short"][QUIET + 1439] == pytest.approx(1.5)


def test_latency_slo_counts_and_custom_windows():
    slo = Slo("chat-latency", 0.99, kind="latency", threshold_ms=800.0, metric="http_request_duration_ms")
    # every 5 minutes: 600 requests, 60 slower than 800 ms (10 %, burn 10)
    ts = [T0 + i * timedelta(minutes=5) for i in range(48)]
    fast = BurnWindow(timedelta(hours=1), timedelta(minutes=10), 8.0, "page")
    out = burn_rate_alerts(ts, [60.0] * 48, [600.0] * 48, slo, [fast])
    assert out["burn_rate_long"].to_list() == pytest.approx([10.0] * 48)
    assert out["firing"].all()


def test_empty_windows_and_missing_counts_burn_nothing(slo):
    out = burn_rate_alerts(minutes(3), [np.nan, 0.0, 0.0], [0.0, np.nan, 0.0], slo, PAGE)
    assert out["burn_rate_long"].to_list() == [0.0] * 6
    assert not out["firing"].any()


def test_unsorted_input_is_sorted_and_bad_input_is_an_error(slo):
    ts = minutes(3)[::-1]
    out = burn_rate_alerts(ts, [0.0, 0.0, 30.0], [1000.0] * 3, slo, PAGE[:1])
    assert out["ts"].is_sorted()
    assert out["burn_rate_long"].to_list() == pytest.approx([30.0, 15.0, 10.0])
    with pytest.raises(ValueError, match="differ in length"):
        burn_rate_alerts(ts, [0.0], [1.0] * 3, slo)
    with pytest.raises(ValueError, match="datetimes"):
        burn_rate_alerts([1, 2, 3], [0.0] * 3, [1.0] * 3, slo)


# -- configuration ----------------------------------------------------------------------------------------
CONFIG = """
[[slos]]
name = "chat-availability"
service = "chat-api"
objective = 0.999
bad_metric = "http_requests_errors_total"
total_metric = "http_requests_total"

[[slos]]
name = "chat-latency"
service = "chat-api"
objective = 0.99
kind = "latency"
metric = "http_request_duration_ms"
threshold_ms = 800
"""


def test_slos_from_config_reads_slos_tables():
    slos = slos_from_config(tomllib.loads(CONFIG))
    assert slos == [
        Slo(
            "chat-availability",
            0.999,
            service="chat-api",
            bad_metric="http_requests_errors_total",
            total_metric="http_requests_total",
        ),
        Slo("chat-latency", 0.99, kind="latency", threshold_ms=800.0, service="chat-api",
            metric="http_request_duration_ms"),
    ]  # fmt: skip
    assert slos_from_config({}) == []


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"objective": 0.999, "bad_metric": "e", "total_metric": "r"}, r"slos\[0\]: missing key 'name'"),
        ({"name": "a", "bad_metric": "e", "total_metric": "r"}, r"slos\[0\]: missing key 'objective'"),
        (
            {"name": "a", "objective": 99.9, "bad_metric": "e", "total_metric": "r"},
            r"slos\[0\]\.objective: .*0\.999",
        ),
        ({"name": "a", "objective": "high", "bad_metric": "e", "total_metric": "r"}, r"slos\[0\]\.objective"),
        ({"name": "a", "objective": 0.9, "bad_metric": "e"}, r"missing key 'total_metric'"),
        ({"name": "a", "objective": 0.9, "kind": "latency", "metric": "m"}, r"slos\[0\]\.threshold_ms"),
        ({"name": "a", "objective": 0.9, "kind": "latency", "threshold_ms": 5}, r"missing key 'metric'"),
        (
            {"name": "a", "objective": 0.9, "kind": "apdex", "metric": "m"},
            r"slos\[0\]\.kind: expected one of",
        ),
        (
            {"name": "a", "objective": 0.9, "bad_metric": "e", "total_metric": "r", "treshold_ms": 1},
            "'treshold_ms'",
        ),
        (
            {"name": "a", "objective": 0.9, "bad_metric": "e", "total_metric": "r", "metric": "m"},
            r"\.metric: only",
        ),
    ],
)
def test_slo_config_errors_name_the_key(table, message):
    with pytest.raises(SloConfigError, match=message):
        slos_from_config({"slos": [table]})


def test_slo_config_rejects_duplicates_and_non_tables():
    dup = {"name": "a", "objective": 0.9, "bad_metric": "e", "total_metric": "r"}
    with pytest.raises(SloConfigError, match=r"slos\[1\]\.name: duplicate"):
        slos_from_config({"slos": [dup, dup]})
    with pytest.raises(SloConfigError, match="array of tables"):
        slos_from_config({"slos": {"name": "a"}})
