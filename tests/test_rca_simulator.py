"""The combined RCA on simulated incidents of every kind, end to end (simulate → ingest → detect → explain)."""

from __future__ import annotations

import pytest

from app.rca_eval.simulator import eval_simulator


@pytest.mark.slow
def test_rca_names_the_root_cause_of_simulated_incidents_of_every_kind():
    # seed 4 was not used to tune the engine (seeds 2-3 were); 3 days give at least one incident of each kind;
    # scale 0.25 (half the fleet of the evaluation's default) keeps the test short: AC@1 and AC@3 1.00 here too
    result = eval_simulator(seeds=(4,), days=3.0, scale=0.25)
    rows = {r["fault_type"]: r for r in result["summary"] if r["system"] == "simulator"}
    assert {
        "bad_deploy",
        "tenant_surge",
        "gpu_node_degraded",
        "vector_db_latency",
        "kv_cache_exhaustion",
        "token_inflation",
        "prediction_drift",
        "memory_leak",
    } <= set(rows)
    overall = rows["all"]
    # measured 1.00 / 1.00 on this seed; floors leave room for one miss
    assert overall["ac1"] >= 0.85 and overall["ac3"] >= 0.9, result["misses"]
    done, total = (int(x) for x in result["change_first"].split(" ")[0].split("/"))
    assert total >= 5 and done >= total - 1
