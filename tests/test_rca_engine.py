"""The combined root-cause engine and `rootwise rca`, on a real DuckDB store with a known cause."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from app.cli import main
from ingest import schema
from ingest.batch import MetricBuilder, TelemetryBatch
from ingest.rca_view import StoreView
from rca.base import Candidate, RcaIncident, RcaResult
from rca.combine import RootCauseEngine, combine

T0 = datetime(2026, 5, 4)
ONSET = T0 + timedelta(hours=2)
ODD = 'tenant "<b>&'  # label values are untrusted text and must come through unchanged


def _ns(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1)) // timedelta(microseconds=1) * 1000


def _events(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(
        [{**r, "attributes": [{"key": k, "value": v} for k, v in r["attributes"].items()]} for r in rows],
        schema=schema.EVENTS,
    )


@pytest.fixture
def rollout_store(store):
    """Gateway usage per tenant x model version; v42's error rate jumps at ONSET, 3 min after its rollout."""
    rng = np.random.default_rng(3)
    b = MetricBuilder("test")
    tenants = ["t1", "t2", "t3", ODD]
    for tenant in tenants:
        for version in ("v41", "v42"):
            labels = {"tenant": tenant, "model_version": version, "region": "eu"}
            req = b.series("requests", "gateway", "delta", "1", labels)
            err = b.series("errors", "gateway", "delta", "1", labels)
            for i in range(180):
                ts = T0 + timedelta(minutes=i)
                n = float(rng.poisson(200))
                rate = 0.25 if (version == "v42" and ts >= ONSET) else 0.01
                b.point(req, _ns(ts), n, f"r{tenant}{version}{i}")
                b.point(err, _ns(ts), float(rng.binomial(int(n), rate)), f"e{tenant}{version}{i}")
    batch = b.build()
    events = _events(
        [
            {
                "event_id": "chg-rollout",
                "ts": ONSET - timedelta(minutes=3),
                "service": "llm-serving",
                "kind": "model_rollout",
                "title": "Promote m-large v42 to all tenants",
                "attributes": {"model": "m-large", "model_version": "v42"},
            },
            {
                "event_id": "chg-config",
                "ts": ONSET - timedelta(minutes=1),
                "service": "reranker",
                "kind": "config",
                "title": "reranker: top_k 20 -> 25",
                "attributes": {"parameter": "top_k"},
            },
        ]
    )
    edges = pl.DataFrame(
        {"source": ["gateway"], "target": ["llm-serving"], "origin": ["catalog"], "ts": [T0]},
        schema=schema.EDGES,
    )
    store.append(batch)
    store.append(TelemetryBatch(events=events, edges=edges))
    return store


def test_engine_ranks_the_rollout_first_with_the_dimension_that_agrees(rollout_store):
    incident = RcaIncident("gateway", "errors", ONSET, ONSET + timedelta(minutes=20))
    result = RootCauseEngine().explain(incident, StoreView(rollout_store))
    ranked = result.ranked()
    assert ranked[0].kind == "change" and ranked[0].event_id == "chg-rollout", ranked[:3]
    assert "matches the localised dimensions" in ranked[0].explanation
    # the change's own explanation and the engine's reason are two sentences
    assert ". Likely root cause: it matches the localised dimensions" in ranked[0].explanation
    assert ranked[0].explanation.endswith(".") and ".." not in ranked[0].explanation
    dims = [c for c in ranked if c.kind == "dimension"]
    assert dims and dims[0].labels == {"model_version": "v42"}
    # the unrelated config change one minute before onset ranks below the rollout
    others = [c.event_id for c in ranked if c.kind == "change"]
    assert others.index("chg-config") > others.index("chg-rollout")
    # deterministic
    again = RootCauseEngine().explain(incident, StoreView(rollout_store)).to_json()
    assert again == result.to_json()


def test_rca_cli_json_shape_and_errors(rollout_store, tmp_path):
    db = rollout_store.path
    rollout_store.close()
    buf = io.StringIO()
    args = ["rca", "--db", db, "--service", "gateway", "--metric", "errors", "--format", "json"]
    window = ["--start", ONSET.isoformat() + "Z", "--end", (ONSET + timedelta(minutes=20)).isoformat() + "Z"]
    with contextlib.redirect_stdout(buf):
        assert main([*args, *window]) == 0
    out = json.loads(buf.getvalue())
    first = out["causes"][0]
    assert set(first) == {"rank", "kind", "service", "metric", "labels", "event_id", "score", "evidence"}
    assert first["rank"] == 1 and first["event_id"] == "chg-rollout"
    assert [c["rank"] for c in out["causes"]] == list(range(1, len(out["causes"]) + 1))
    buf = io.StringIO()  # CSV: one row per cause, with its explanation
    with contextlib.redirect_stdout(buf):
        assert main([*args[:-1], "csv", *window]) == 0
    import csv

    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert [int(r["rank"]) for r in rows] == [c["rank"] for c in out["causes"]]
    assert rows[0]["explanation"] == first["evidence"]["explanation"] and "\r" not in buf.getvalue()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["rca", "--db", db, "--incident", "nope"]) == 2
        assert main([*args, "--start", "yesterday", "--end", "2026-05-04T03:00:00Z"]) == 2
        assert main(["rca", "--db", db, "--service", "gateway"]) == 2
        # names typed by a person are checked against the catalog (a typo used to rank some other causes)
        assert main(["rca", "--db", db, "--service", "gatewya", "--metric", "errors", *window]) == 2
        assert main(["rca", "--db", db, "--service", "gateway", "--metric", "erors", *window]) == 2
    assert "no incident 'nope'" in err.getvalue() and "--start" in err.getvalue()
    assert "no such service 'gatewya' (did you mean 'gateway'?)" in err.getvalue()
    assert "no such metric 'erors' (did you mean 'errors'?)" in err.getvalue()


def test_rca_for_a_stored_incident_is_stored_with_it(rollout_store):
    from ingest.results import get_incident

    with rollout_store.write_transaction() as cur:
        cur.execute(
            'INSERT INTO incidents (id, service, metric, labels, start, "end", severity, status) '
            "VALUES ('inc-1', 'gateway', 'errors', MAP {}, $s, $e, 'page', 'open')",
            {"s": ONSET, "e": ONSET + timedelta(minutes=15)},
        )
    db = rollout_store.path
    rollout_store.close()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["rca", "--db", db, "--incident", "inc-1"]) == 0
    from ingest.store import Store

    with Store(db) as s:
        causes = get_incident(s, "inc-1")["causes"]
    assert causes[0]["event_id"] == "chg-rollout"


def test_combination_keeps_the_earlier_dependency_above_its_caller():
    """Topology says db went first and api suffers; metrics see api move more. The consensus keeps db on top."""
    topo = RcaResult(
        "topology",
        (
            Candidate("service", "db", 3.0, "db latency rose first"),
            Candidate("service", "api", 1.0, "api slow because of db"),
        ),
    )
    metrics = RcaResult(
        "metric_shift",
        (
            Candidate("metric", "api", 12.0, "api latency", metric="lat"),
            Candidate("metric", "db", 10.0, "db", metric="lat"),
        ),
    )
    ranked = combine({"topology": topo, "metrics": metrics})
    services = [c.service for c in ranked if c.kind == "service"]
    assert services == ["db", "api"]
    assert ranked[0].kind == "service" and ranked[0].service == "db"
    # metric candidates are evidence: they rank below the services they belong to
    assert all(c.kind != "metric" for c in ranked[:2])
