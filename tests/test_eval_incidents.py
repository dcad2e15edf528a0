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
