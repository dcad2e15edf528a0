"""Event-level matching of detected incidents against labelled ones (``rootwise eval incidents``'s scorer)."""

from __future__ import annotations

from datetime import datetime

from app.evaluate import match_incidents

LABELS = [
    {"kind": "bad_deploy", "start": "2026-10-02T10:00:00Z", "end": "2026-10-02T10:30:00Z"},
    {"kind": "tenant_surge", "start": "2026-10-02T15:00:00Z", "end": "2026-10-02T15:20:00Z"},
    {"kind": "warmup_fault", "start": "2026-10-01T05:00:00Z", "end": "2026-10-01T05:10:00Z"},  # excluded
]


def _inc(
    service: str,
    start: str,
    severity: str = "page",
    alarms: list[str] | None = None,
    end: str | None = None,
    status: str = "resolved",
) -> dict:
    return {
        "service": service,
        "metric": "latency_ms",
        "start": start,
        "end": end or start,
        "status": status,
        "severity": severity,
        "peak": 8.25,
        "alarm_starts": alarms or [start],
    }


def test_recall_precision_delay_and_what_paged_for_nothing() -> None:
    detected = [
        _inc(
            "api", "2026-10-02T09:50:00", alarms=["2026-10-02T09:50:00", "2026-10-02T10:04:00"]
        ),  # a later alarm hits
        _inc("api", "2026-10-02T12:00:00"),  # outside every window: false
        _inc("gw", "2026-10-02T15:50:30", severity="ticket"),  # after end + 30 min grace, and only a ticket
        _inc("gw", "2026-10-01T05:01:00"),  # in the warm-up: not counted
    ]
    pages = match_incidents(LABELS, detected, evaluate_from=datetime(2026, 10, 2))
    assert (pages["labelled"], pages["detected"], pages["alarms"], pages["false_alarms"]) == (2, 1, 2, 1)
    assert pages["recall"] == 0.5 and pages["precision"] == 0.5
    assert pages["mean_time_to_detect_min"] == 4.0
    assert pages["missed"] == ["tenant_surge@2026-10-02T15:00:00Z"]
    assert pages["false"] == ["api/latency_ms@2026-10-02T12:00:00 (z 8.2)"]
    assert pages["by_kind"] == {"bad_deploy": "1/1", "tenant_surge": "0/1"}
    everything = match_incidents(LABELS, detected, evaluate_from=datetime(2026, 10, 2), pages_only=False)
    assert everything["alarms"] == 3 and everything["false_alarms"] == 2 and everything["recall"] == 0.5


def test_recovery_lag_is_how_long_alarms_went_on_after_the_labelled_end() -> None:
    """Per labelled incident found: the last anomalous point of the incidents that found it minus the labelled
    end; an incident still open when the data ended is counted apart, not as a lag."""
    labels = LABELS + [
        {"kind": "gpu_node_degraded", "start": "2026-10-02T20:00:00Z", "end": "2026-10-02T20:30:00Z"}
    ]
    detected = [
        # bad_deploy (ends 10:30) found by two incidents: the later end counts
        _inc("api", "2026-10-02T10:03:00", end="2026-10-02T10:38:00"),
        _inc("gw", "2026-10-02T10:05:00", end="2026-10-02T11:10:00"),
        # tenant_surge (ends 15:20): alarms stopped 4 minutes before the labelled end
        _inc("gw", "2026-10-02T15:02:00", end="2026-10-02T15:16:00"),
        # gpu_node_degraded: its incident is still open
        _inc("llm", "2026-10-02T20:01:00", end="2026-10-02T20:40:00", status="open"),
    ]
    pages = match_incidents(labels, detected, evaluate_from=datetime(2026, 10, 2))
    assert pages["recall"] == 1.0
    assert pages["still_open"] == 1
    assert pages["recovery_lag_median_min"] == 18.0  # median of 40 and -4
    assert pages["recovery_lag_p90_min"] == 35.6
    none = match_incidents(labels, [], evaluate_from=datetime(2026, 10, 2))
    assert none["recovery_lag_median_min"] is None and none["still_open"] == 0


def test_time_to_page_is_from_the_labelled_start_to_the_first_page_of_an_incident_that_found_it() -> None:
    """Detection time is an incident's first alarm; a ticket pages later, when it grows (``paged_at``)."""
    paged = [
        # bad_deploy (10:00): found at 10:03 by a ticket that paged at 10:12, and by one that paged at 10:09
        {**_inc("api", "2026-10-02T10:03:00"), "paged_at": "2026-10-02T10:12:00"},
        {**_inc("gw", "2026-10-02T10:05:00"), "paged_at": "2026-10-02T10:09:00"},
        # tenant_surge (15:00): paged at its first alarm
        {**_inc("gw", "2026-10-02T15:02:00"), "paged_at": "2026-10-02T15:02:00"},
    ]
    pages = match_incidents(LABELS, paged, evaluate_from=datetime(2026, 10, 2))
    assert pages["mean_time_to_detect_min"] == 2.5  # (3 + 2) / 2
    assert (pages["mean_time_to_page_min"], pages["median_time_to_page_min"]) == (5.5, 5.5)  # (9 + 2) / 2
    assert pages["max_time_to_page_min"] == 9.0
    assert pages["delays"] == {
        "bad_deploy@2026-10-02T10:00:00Z": [3.0, 9.0],
        "tenant_surge@2026-10-02T15:00:00Z": [2.0, 2.0],
    }
    unknown = match_incidents(
        LABELS, [_inc("api", "2026-10-02T10:03:00")], evaluate_from=datetime(2026, 10, 2)
    )
    assert unknown["mean_time_to_page_min"] is None  # no paged_at: not counted as paged at detection


def test_page_time_replays_the_page_rule_on_the_stored_alarm_points(tmp_path) -> None:
    """An incident pages at its first alarm point scoring ``page_z`` or when its ``page_series``-th series
    starts alarming, whichever comes first; never, when neither happens. Stored points that are not alarm
    points of its episodes (not alarming, or outside the episode) do not count."""
    from datetime import timedelta

    import polars as pl

    from app.evaluate import page_time
    from detectors.incidents import Episode, IncidentPolicy, update_incidents
    from ingest.results import incident_series, save_detection
    from ingest.store import Store

    t0 = datetime(2026, 10, 2, 10, 0)
    m = timedelta(minutes=1)
    policy = IncidentPolicy()
    # per series: its episode (first, last minute) and its stored points (minute, score, alarming)
    cases = {
        "hot": {
            1: ((0, 1), [(0, 4.0, True), (1, 5.0, True)]),
            2: ((2, 5), [(2, 6.0, True), (4, 8.0, True)]),
            3: ((6, 6), [(6, 5.0, True)]),
        },
        "wide": {
            1: ((0, 1), [(0, 4.0, True), (1, 5.0, True), (40, 9.0, True)]),
            2: ((2, 4), [(2, 6.0, True), (3, 9.0, False), (4, 6.5, True)]),
            3: ((6, 6), [(6, 5.0, True)]),
        },
        "never": {1: ((0, 1), [(0, 4.0, True), (1, 6.9, True)]), 2: ((3, 3), [(3, 5.0, True)])},
    }
    expected = {"hot": t0 + 4 * m, "wide": t0 + 6 * m, "never": None}
    store = Store(tmp_path / "s.duckdb")
    try:
        for k, (name, series) in enumerate(cases.items()):
            rows, eps = [], []
            for sid, ((a, b), pts) in series.items():
                rows += [(100 * k + sid, t0 + i * m, z, on) for i, z, on in pts]
                peak = max(z for i, z, on in pts if on and a <= i <= b)
                eps.append(
                    Episode(100 * k + sid, f"svc-{name}", "m", {}, t0 + a * m, t0 + b * m, peak, False)
                )
            anomalies = pl.DataFrame(
                {
                    "series_id": [r[0] for r in rows],
                    "ts": [r[1] for r in rows],
                    "score": [r[2] for r in rows],
                    "is_anomaly": [r[3] for r in rows],
                    "expected": [0.0] * len(rows),
                    "lower": [0.0] * len(rows),
                    "upper": [0.0] * len(rows),
                }
            )
            (inc,) = update_incidents([], eps, policy)
            save_detection(store, states={}, anomalies=anomalies, detector="t", incidents=[inc], now=t0)
            starts = incident_series(store, inc.id)["start"].to_list()
            assert page_time(store, inc.id, starts, policy) == expected[name], name
    finally:
        store.close()
