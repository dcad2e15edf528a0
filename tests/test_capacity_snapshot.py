"""The capacity plan the app shows: a what-if added to a finished plan, and the background planner.

The store is the Capacity page's (``test_app_capacity.py``): four weeks of growing vLLM demand on two replicas of
``m-big``, two tenants sharing the usage.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
import urllib.request
from datetime import datetime, timedelta

import flask
import polars as pl
import pytest
from test_app_capacity import REGION, T0, add_vllm_growth

from app import data
from app.capacity import (
    Budget,
    CapacityConfigError,
    CapacitySettings,
    Scenario,
    plan_capacity,
    settings_from_config,
    with_scenario,
)
from ingest.batch import MetricBuilder
from ingest.store import Store


@pytest.fixture
def growth(store):
    b = MetricBuilder("test")
    add_vllm_growth(b)
    store.append(b.build())
    return store


def _assert_same(a, b, where: str = "plan") -> None:
    """``a`` and ``b`` equal field by field; frames equal in schema and values (missing values included)."""
    if isinstance(a, pl.DataFrame):
        assert isinstance(b, pl.DataFrame) and a.schema == b.schema and a.equals(b), where
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            _assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_a_what_if_on_a_plan_is_what_planning_it_from_scratch_gives(growth):
    settings = CapacitySettings(
        gpu_quota={REGION: 3},
        budgets=(Budget("all", 900.0),),
        scenarios=(Scenario("t-big doubles", {"tenant": "t-big"}, factor=2.0),),
    )
    baseline = plan_capacity(growth, settings)
    what_ifs = (
        Scenario(
            "What-if: tenant=t-small x3 from 2026-04-10",
            {"tenant": "t-small"},
            factor=3.0,
            start=datetime(2026, 4, 10),
        ),  # fmt: skip
        Scenario("What-if: model=m-big x1.5", {"model": "m-big"}, factor=1.5, add=50.0),
        Scenario(
            "t-big doubles", {"tenant": "t-big"}, factor=4.0
        ),  # a configured name: replaced, as from scratch
        Scenario("elsewhere", {"region": "nowhere"}, factor=9.0),  # matches nothing
    )
    for what_if in what_ifs:
        scratch = plan_capacity(
            growth, dataclasses.replace(settings, scenarios=(*settings.scenarios, what_if))
        )
        reused = with_scenario(baseline, what_if)
        _assert_same(reused, scratch)
        assert reused.scenarios[what_if.name]  # the GPU resource under the what-if is there
    # and the baseline plan is left as it was
    _assert_same(baseline, plan_capacity(growth, settings))
    moved = with_scenario(baseline, what_ifs[1]).scenarios[what_ifs[1].name][0]
    gpu = next(r for r in baseline.resources if r.kind == "gpu")
    assert moved.p90 is not None and gpu.p90 is not None and moved.p90 < gpu.p90


def test_refresh_is_a_duration_of_at_least_a_minute():
    assert CapacitySettings().refresh == timedelta(minutes=15)
    assert settings_from_config({"capacity": {"refresh": "5m"}}).refresh == timedelta(minutes=5)
    for bad in ("30s", "soon", 15, "0m"):
        with pytest.raises(CapacityConfigError, match=r"^capacity\.refresh: "):
            settings_from_config({"capacity": {"refresh": bad}})


def _server(store, settings: CapacitySettings | None = None) -> flask.Flask:
    server = flask.Flask("test")
    data.attach(server, store)
    if settings is not None:
        data.attach_capacity_settings(server, settings)
    return server


def _wait_for(planner: data.CapacityPlanner, runs: int, timeout_s: float = 120.0) -> data.CapacitySnapshot:
    deadline = time.monotonic() + timeout_s
    while planner.snapshot.runs < runs:
        assert time.monotonic() < deadline, f"planner stuck at {planner.snapshot}"
        time.sleep(0.05)
    return planner.snapshot


def _planner_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "rootwise-capacity"]


def test_planner_plans_at_start_and_again_every_refresh(growth):
    settings = CapacitySettings(refresh=timedelta(seconds=0.2))
    server = _server(growth, settings)
    planner = data.start_capacity_planner(server)
    try:
        assert data.start_capacity_planner(server) is planner  # one per server
        first = _wait_for(planner, 1)
        assert first.state == "planned" and first.error is None and first.seconds > 0
        assert first.plan.settings is settings and first.plan.created == T0 + timedelta(days=28) - timedelta(
            hours=1
        )
        assert first.next_run >= first.planned + settings.refresh
        second = _wait_for(planner, 2)
        assert second.planned > first.planned and second.plan is not first.plan
        _assert_same(second.plan.resources, first.plan.resources)  # the same store plans the same
    finally:
        data.stop_capacity_planner(server)
    assert not _planner_threads() and data.CAPACITY_PLANNER_KEY not in server.extensions


def test_a_failed_run_is_shown_and_retried_at_the_next_refresh(store):
    server = _server(store, CapacitySettings(refresh=timedelta(seconds=0.2)))
    planner = data.start_capacity_planner(server)
    try:
        failed = _wait_for(planner, 1)
        assert failed.state == "failed" and failed.plan is None and "no points" in failed.error
        assert failed.status()["state"] == "failed" and failed.status()["error"] == failed.error
        b = MetricBuilder("test")  # telemetry arrives: the next run plans
        add_vllm_growth(b)
        store.append(b.build())
        deadline = time.monotonic() + 120
        while planner.snapshot.state != "planned":
            assert time.monotonic() < deadline, planner.snapshot
            time.sleep(0.05)
        assert planner.snapshot.error is None and planner.snapshot.plan.resources
    finally:
        data.stop_capacity_planner(server)


def test_stopping_ends_the_planner_so_the_store_closes(growth):
    server = _server(growth)
    planner = data.start_capacity_planner(server)
    deadline = time.monotonic() + 30
    while planner.snapshot.running_since is None and planner.snapshot.runs == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    data.stop_capacity_planner(server, timeout=60)  # interrupts a running query, waits for the rest
    assert not _planner_threads()
    growth.close()  # DuckDB refuses to close while a cursor is busy: nothing is


def test_serve_stopped_while_planning_exits_cleanly(tmp_path, serve_process):
    db = tmp_path / "growth.duckdb"
    with Store(db) as store:
        b = MetricBuilder("test")
        add_vllm_growth(b)
        store.append(b.build())
    url, proc = serve_process(db)
    with urllib.request.urlopen(url + "/capacity/status", timeout=10) as resp:
        status = json.load(resp)
    proc.send_signal(signal.SIGTERM)  # the first plan (a few seconds) has started when the server listens
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert "Traceback" not in proc.stderr.read()
    assert status["state"] in ("computing", "planned")
