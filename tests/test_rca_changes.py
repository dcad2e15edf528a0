"""ChangeAnalyser on small labelled change-event fixtures."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import polars as pl
import pytest

from ingest import schema
from rca.base import Candidate, FrameView, RcaIncident
from rca.changes import (
    SCORE_COLUMNS,
    ChangeAnalyser,
    ChangeWeights,
    changes_before,
    score_changes,
    service_graph,
    service_hops,
)

ONSET = datetime(2026, 3, 1, 12, 0)
END = ONSET + timedelta(minutes=30)
NO_CHANGE_NOTE = (
    "No change (deploy, rollout, config, flag, scale, infra) in the 2 h before onset; most outages follow a "
    "change — check changes not recorded in Rootwise."
)


def _incident(service: str = "llm-serving", labels: dict[str, str] | None = None) -> RcaIncident:
    return RcaIncident(service, "latency_p99", ONSET, END, labels=labels or {})


def _events(*rows: tuple[str, float, str, str, str, dict[str, str]]) -> pl.DataFrame:
    """Rows of ``(event_id, minutes_before_onset, service, kind, title, attributes)``."""
    return pl.DataFrame(
        {
            "event_id": [r[0] for r in rows],
            "ts": [ONSET - timedelta(minutes=r[1]) for r in rows],
            "service": [r[2] for r in rows],
            "kind": [r[3] for r in rows],
            "title": [r[4] for r in rows],
            "attributes": [[{"key": k, "value": v} for k, v in r[5].items()] for r in rows],
        },
        schema=schema.EVENTS,
    )


def _spans(*calls: tuple[str, str]) -> pl.DataFrame:
    """One trace per ``(caller, callee)``: a root span on the caller with a child span on the callee."""
    rows = []
    for i, (caller, callee) in enumerate(calls):
        trace = f"{i:032x}"
        start = ONSET - timedelta(minutes=30)
        rows.append(
            {
                "trace_id": trace,
                "span_id": f"{2 * i:016x}",
                "parent_span_id": None,
                "service": caller,
                "start": start,
            }
        )
        rows.append(
            {
                "trace_id": trace,
                "span_id": f"{2 * i + 1:016x}",
                "parent_span_id": f"{2 * i:016x}",
                "service": callee,
                "start": start,
            }
        )
    return pl.DataFrame(rows)


def test_causing_rollout_just_before_onset_ranks_first() -> None:
    events = _events(
        ("old-deploy", 90, "billing", "deploy", "Deploy billing 1.4", {"version": "1.4"}),
        ("rollout", 3, "llm-serving", "model_rollout", "Promote m-large v42", {"model_version": "v42"}),
    )
    result = ChangeAnalyser().explain(_incident(), FrameView(events=events))
    ranked = result.ranked()
    assert [c.event_id for c in ranked] == ["rollout", "old-deploy"]
    top = ranked[0]
    assert top.kind == "change" and top.service == "llm-serving"
    assert top.labels == {"model_version": "v42"}
    assert top.evidence["hops"] == 0 and top.evidence["kind"] == "model_rollout"
    assert top.evidence["minutes_before_onset"] == pytest.approx(3.0)
    assert top.explanation == "model_rollout 'Promote m-large v42' on llm-serving 3 min before onset"
    assert ranked[1].evidence["hops"] is None and ranked[1].evidence["direction"] == "unrelated"
    # unknown topology: a note says only same-service changes get the bonus
    assert any(n.startswith("topology:") for n in result.notes)


def test_downstream_dependency_via_spans_beats_unrelated_service() -> None:
    events = _events(
        ("unrelated", 10, "billing", "model_rollout", "Promote fraud v7", {}),
        ("dependency", 10, "vector-db", "model_rollout", "Swap embedding index", {}),
    )
    spans = _spans(("gateway", "rag-api"), ("rag-api", "vector-db"), ("billing", "ledger"))
    view = FrameView(events=events, spans=spans)
    result = ChangeAnalyser().explain(_incident("rag-api"), view)
    ranked = result.ranked()
    assert [c.event_id for c in ranked] == ["dependency", "unrelated"]
    assert ranked[0].evidence["hops"] == 1 and ranked[0].evidence["direction"] == "downstream"
    assert "called by rag-api, 1 hop" in ranked[0].explanation
    assert not any(n.startswith("topology:") for n in result.notes)


def test_topology_order_self_downstream_upstream_unrelated() -> None:
    events = _events(
        ("self", 10, "rag-api", "config", "c", {}),
        ("callee", 10, "vector-db", "config", "c", {}),
        ("caller", 10, "gateway", "config", "c", {}),
        ("deep", 10, "disk", "config", "c", {}),
        ("other", 10, "billing", "config", "c", {}),
    )
    # declared edges and span edges are combined
    edges = pl.DataFrame({"source": ["gateway", "vector-db"], "target": ["rag-api", "disk"]})
    view = FrameView(events=events, spans=_spans(("rag-api", "vector-db")), edges=edges)
    scored = score_changes(events, _incident("rag-api"), service_graph(view, None, None))
    assert scored["event_id"].to_list() == ["self", "callee", "caller", "deep", "other"]
    assert scored["hops"].to_list() == [0, 1, 1, 2, None]
    assert scored["direction"].to_list() == ["self", "downstream", "upstream", "downstream", "unrelated"]


def test_dimension_agreement_beats_a_closer_change() -> None:
    events = _events(
        ("config", 5, "llm-serving", "config", "Raise max_batch_tokens", {"max_batch_tokens": "8192"}),
        ("rollout", 20, "llm-serving", "model_rollout", "Promote m-large", {"model_version": "v42"}),
    )
    view = FrameView(events=events)
    plain = ChangeAnalyser().explain(_incident(), view).ranked()
    assert plain[0].event_id == "config"  # without localisation the closer change wins
    agreed = ChangeAnalyser(dimensions=({"model_version": "v42"},)).explain(_incident(), view).ranked()
    assert [c.event_id for c in agreed] == ["rollout", "config"]
    assert agreed[0].evidence["matched_dimensions"] == ["model_version=v42"]
    assert agreed[0].explanation.endswith("; matches model_version=v42")
    assert agreed[1].evidence["matched_dimensions"] == []


def test_dimension_matches_other_key_title_token_and_candidates() -> None:
    events = _events(
        ("by-key", 30, "llm-serving", "model_rollout", "Promote", {"version": "V42"}),
        ("by-title", 30, "llm-serving", "model_rollout", "Promote m-large v42 to 100%", {}),
        ("prefix", 30, "llm-serving", "model_rollout", "Promote m-large v420", {}),
        ("tenant", 30, "gateway", "config", "Rate limit t-0165", {}),
    )
    dims = [
        Candidate("dimension", "llm-serving", 0.9, ".", labels={"model_version": "v42"}),
        Candidate("log", "llm-serving", 5.0, ".", labels={"template": "v420"}),  # ignored: not a dimension
        {"tenant": "t-0165"},
    ]
    scored = score_changes(events, _incident(), pl.DataFrame(schema=schema.EDGES), dims)
    matched = dict(zip(scored["event_id"], scored["matched_dimensions"].to_list(), strict=True))
    assert matched == {
        "by-key": ["model_version=v42"],
        "by-title": ["model_version=v42"],
        "prefix": [],
        "tenant": ["tenant=t-0165"],
    }
    assert list(scored.columns) == [*schema.EVENTS, *SCORE_COLUMNS]


def test_analyser_takes_dimension_candidates() -> None:
    events = _events(
        ("config", 5, "llm-serving", "config", "Raise max_batch_tokens", {}),
        ("rollout", 20, "llm-serving", "model_rollout", "Promote m-large", {"model_version": "v42"}),
    )
    dims = (Candidate("dimension", "llm-serving", 0.9, ".", labels={"model_version": "v42"}),)
    ranked = ChangeAnalyser(dimensions=dims).explain(_incident(), FrameView(events=events)).ranked()
    assert ranked[0].event_id == "rollout"


def test_partial_dimension_match_and_incident_labels() -> None:
    events = _events(
        ("both", 30, "llm-serving", "config", "c", {"tenant": "t1", "region": "eu"}),
        ("one", 30, "llm-serving", "config", "c", {"tenant": "t1"}),
        ("label", 30, "llm-serving", "config", "c", {"model": "m-large"}),
        ("none", 30, "llm-serving", "config", "c", {}),
    )
    incident = _incident(labels={"model": "m-large"})
    scored = score_changes(
        events, incident, pl.DataFrame(schema=schema.EDGES), [{"tenant": "t1", "region": "eu"}]
    )
    by_id = {r["event_id"]: r for r in scored.iter_rows(named=True)}
    assert by_id["both"]["dimension_match"] == 1.0 and by_id["one"]["dimension_match"] == 0.5
    assert by_id["label"]["matched_labels"] == ["model=m-large"]
    assert by_id["both"]["score"] > by_id["one"]["score"] > by_id["label"]["score"] > by_id["none"]["score"]


def test_kind_prior_scale_below_deploy() -> None:
    events = _events(
        ("scale", 10, "llm-serving", "scale", "Scale to 12 replicas", {}),
        ("deploy", 10, "llm-serving", "deploy", "Deploy 2.3", {}),
    )
    assert ChangeAnalyser().explain(_incident(), FrameView(events=events)).ranked()[0].event_id == "deploy"


def test_no_events_gives_no_candidates_and_the_note() -> None:
    result = ChangeAnalyser().explain(_incident(), FrameView())
    assert result.candidates == ()
    assert result.notes == (NO_CHANGE_NOTE,)
    # changes outside the window count as none
    old = _events(("old", 180, "llm-serving", "deploy", "Deploy", {}))
    result = ChangeAnalyser().explain(_incident(), FrameView(events=old))
    assert result.candidates == () and result.notes == (NO_CHANGE_NOTE,)
    assert result.to_json() == {"causes": [], "notes": [NO_CHANGE_NOTE]}


def test_events_after_onset_plus_slack_are_excluded() -> None:
    events = _events(
        ("late", -6, "llm-serving", "deploy", "Deploy late", {}),
        ("edge", -5, "llm-serving", "deploy", "Deploy at slack end", {}),  # [start, end): excluded
        ("skewed", -4, "llm-serving", "deploy", "Deploy skewed", {}),
        ("early", 121, "llm-serving", "deploy", "Deploy too early", {}),
        ("first", 120, "llm-serving", "deploy", "Deploy at window start", {}),
    )
    view = FrameView(events=events)
    assert changes_before(_incident(), view)["event_id"].to_list() == ["first", "skewed"]
    ranked = ChangeAnalyser().explain(_incident(), view).ranked()
    assert [c.event_id for c in ranked] == ["skewed", "first"]
    assert ranked[0].evidence["minutes_before_onset"] == pytest.approx(-4.0)
    assert "4 min after onset" in ranked[0].explanation
    narrow = ChangeAnalyser(lookback=timedelta(hours=1), slack=timedelta(0)).explain(_incident(), view)
    assert narrow.candidates == ()
    assert narrow.notes[0].startswith(
        "No change (deploy, rollout, config, flag, scale, infra) in the 1 h before"
    )


def test_deterministic_and_independent_of_row_order() -> None:
    events = _events(
        ("a", 10, "llm-serving", "config", "c", {"k": "v"}),
        ("b", 10, "llm-serving", "config", "c", {"k": "v"}),
        ("c", 40, "vector-db", "deploy", "d", {}),
        ("d", 5, "billing", "scale", "s", {}),
    )
    spans = _spans(("llm-serving", "vector-db"))
    runs = [
        ChangeAnalyser(dimensions=({"k": "v"},)).explain(_incident(), FrameView(events=e, spans=spans))
        for e in (events, events, events.reverse(), events.sample(fraction=1.0, shuffle=True, seed=3))
    ]
    dumps = [json.dumps(r.to_json(), sort_keys=True) for r in runs]
    assert len(set(dumps)) == 1
    # equal scores and times: event_id breaks the tie
    assert [c.event_id for c in runs[0].ranked()] == ["a", "b", "c", "d"]


def test_odd_label_values_are_carried_through_untouched() -> None:
    odd = {"tenant": 't-0165/α β="x",{}', "model.version": "v4.2+(rc)*[1]", "path": "a\\b\nc", "empty": ""}
    events = _events(("odd", 3, "llm-serving", "config", "Config for t-0165/α β", odd))
    analyser = ChangeAnalyser(dimensions=({"v": "V4.2+(RC)*[1]"},))
    result = analyser.explain(_incident(), FrameView(events=events))
    (top,) = result.ranked()
    assert top.labels == odd
    assert top.evidence["matched_dimensions"] == ["v=V4.2+(RC)*[1]"]  # regex characters matched literally
    assert json.loads(json.dumps(result.to_json()))["causes"][0]["labels"] == odd
    # a regex-looking value that is not there does not match anything
    none = ChangeAnalyser(dimensions=({"v": ".*"},)).explain(_incident(), FrameView(events=events))
    assert none.ranked()[0].evidence["matched_dimensions"] == []


def test_service_hops_and_graph_helpers() -> None:
    view = FrameView(
        spans=_spans(("a", "b"), ("b", "c"), ("b", "b")),
        edges=pl.DataFrame({"source": ["a"], "target": ["b"]}),
    )
    graph = service_graph(view, None, None)
    assert graph.rows() == [("a", "b", "both"), ("b", "c", "spans")]
    assert service_hops(graph, "b").rows() == [("a", None, 1), ("b", 0, 0), ("c", 1, None)]
    assert service_hops(pl.DataFrame(schema=schema.EDGES), "x").rows() == [("x", 0, 0)]


def test_weights_are_validated() -> None:
    with pytest.raises(ValueError, match="half_life"):
        ChangeWeights(half_life=timedelta(0))
    with pytest.raises(ValueError, match="other"):
        ChangeWeights(kind_prior={"deploy": 1.0})
    with pytest.raises(ValueError, match="lookback"):
        ChangeAnalyser(lookback=timedelta(0))


def test_max_candidates_keeps_the_best_and_says_so() -> None:
    events = _events(*[(f"e{i}", 10 + i, "llm-serving", "deploy", "d", {}) for i in range(5)])
    result = ChangeAnalyser(max_candidates=2).explain(_incident(), FrameView(events=events))
    assert [c.event_id for c in result.ranked()] == ["e0", "e1"]
    assert "3 lower-scored changes left out" in result.notes
