"""Alarm post-rules (fire after repeated hits, hysteresis, re-fire suppression) and the incident builder
(open, merge, resolve, reopen instead of flapping)."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

from detectors.alarms import AlarmRule, AlarmState
from detectors.incidents import Episode, IncidentPolicy, update_incidents

T0 = datetime(2026, 11, 1, 2, 0)


def test_single_hit_does_not_fire_two_of_five_do() -> None:
    rule = AlarmRule(z=5, min_hits=2, window=5, resolve_z=3, resolve_after=3)
    active, onset, _ = rule.apply(np.array([0, 6, 0, 0, 0, 0, 0, 0.0]))
    assert not active.any()
    active, onset, _ = rule.apply(np.array([0, 6, 0, 0, 6, 0, 0, 0.0]))
    assert onset.tolist().index(True) == 4 and onset.sum() == 1


def test_hysteresis_keeps_the_alarm_through_a_dip_and_resolves_after_cold_points() -> None:
    rule = AlarmRule(z=5, min_hits=2, window=5, resolve_z=3, resolve_after=3)
    score = np.array([6, 6, 4, 3.5, 2, 2, 4, 2, 2, 2, 0, 0.0])
    active, onset, state = rule.apply(score)
    # 4 and 3.5 are below the firing bar but above the resolve bar; two cold points then a warm one restart the count
    assert active.tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert onset.sum() == 1 and not state.active


def test_flapping_metric_gives_one_alarm_with_refire_suppression() -> None:
    rule = AlarmRule(z=5, min_hits=1, window=1, resolve_z=5, resolve_after=1, refire_after=10)
    score = np.tile([6.0, 0.0], 8)  # crosses the threshold every other point
    active, onset, _ = rule.apply(score)
    assert onset.sum() == 2  # at 0 and once more after the 10-point suppression, not 8 times
    assert onset.tolist().index(True) == 0


def test_alarm_state_carries_across_calls_exactly() -> None:
    rule = AlarmRule()
    rng = np.random.default_rng(0)
    score = rng.normal(2, 2.5, 500)
    a_all, o_all, s_all = rule.apply(score)
    state = AlarmState()
    parts_a, parts_o = [], []
    for a, b in ((0, 7), (7, 130), (130, 131), (131, 500)):
        act, ons, state = rule.apply(score[a:b], state)
        parts_a.append(act)
        parts_o.append(ons)
    assert (np.concatenate(parts_a) == a_all).all() and (np.concatenate(parts_o) == o_all).all()
    assert state == s_all


def _ep(sid: int, service: str, start: int, last: int, peak: float, active: bool, **labels: str) -> Episode:
    return Episode(
        sid,
        service,
        f"m{sid}",
        labels,
        T0 + timedelta(minutes=start),
        T0 + timedelta(minutes=last),
        peak,
        active,
    )


def test_overlapping_alarms_on_one_service_merge_other_services_do_not() -> None:
    out = update_incidents(
        [],
        [
            _ep(1, "rag-api", 0, 10, 6, True, region="us"),
            _ep(2, "rag-api", 5, 20, 9, True, region="us"),
            _ep(3, "embedder", 6, 8, 6, False),
        ],
    )
    by_service = {i.service: i for i in out}
    assert set(by_service) == {"rag-api", "embedder"}
    rag = by_service["rag-api"]
    assert sorted(rag.series) == [1, 2] and rag.metric == "m2" and rag.labels == {"region": "us"}
    assert rag.start == T0 and rag.status == "open" and rag.severity == "page"
    assert by_service["embedder"].status == "resolved" and by_service["embedder"].severity == "ticket"


def test_incident_resolves_when_all_alarms_end_and_reopens_within_the_window() -> None:
    policy = IncidentPolicy(merge_gap=timedelta(minutes=15), reopen_within=timedelta(minutes=30))
    (inc,) = update_incidents([], [_ep(1, "api", 0, 10, 6, True)], policy)
    (inc,) = update_incidents([inc], [_ep(1, "api", 0, 12, 6, False)], policy)
    assert inc.status == "resolved" and inc.end == T0 + timedelta(minutes=12)
    # the same metric fires again 20 minutes after the end: the incident reopens (same id), no new incident
    (again,) = update_incidents([inc], [_ep(1, "api", 32, 35, 6, True)], policy)
    assert again.id == inc.id and again.status == "open" and again.start == T0
    # an hour later it is a new incident
    (later,) = update_incidents(
        [again.__class__(**{**again.__dict__, "status": "resolved"})],
        [_ep(1, "api", 120, 125, 6, True)],
        policy,
    )
    assert later.id != inc.id


def test_page_is_never_downgraded_and_ids_are_stable() -> None:
    (inc,) = update_incidents([], [_ep(1, "api", 0, 5, 9, True)])
    assert inc.severity == "page"
    (inc2,) = update_incidents([inc], [_ep(2, "api", 3, 6, 5.5, True)])
    assert inc2.severity == "page" and inc2.id == inc.id
    (same,) = update_incidents([], [_ep(1, "api", 0, 5, 9, True)])
    assert same.id == inc.id
