"""LogTemplateAnalyser on small labelled fixtures: the faulty service's template changes rank first."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from rca.base import FrameView, RcaIncident
from rca.logs import LogTemplateAnalyser, mask_bodies, mine_templates

T0 = datetime(2026, 3, 1, 12, 0)
ONSET = T0 + timedelta(seconds=200)
INCIDENT = RcaIncident(
    "api", "latency_p90", ONSET, T0 + timedelta(seconds=400), baseline=timedelta(seconds=200)
)


def _shop(*, extra_logs: list[tuple] = ()) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``api`` calls ``payments`` once a second; from the onset ``payments`` fails: a new ERROR line and its
    success line gone; ``api`` logs the failure it receives."""
    logs, spans = [], []
    for i in range(400):
        t = T0 + timedelta(seconds=i)
        trace, api, pay = f"{i:032x}", f"{i:014x}aa", f"{i:014x}bb"
        broken = t >= ONSET
        spans += [
            (trace, api, None, "api", "ApiController.pay", t, 30.0),
            (trace, pay, api, "payments", "PaymentController.charge", t, 20.0),
        ]
        logs.append(
            (
                t,
                "api",
                "INFO",
                f"12:00:{i % 60:02d}.1 INFO ApiController#10 paying order {i} of 12.5 EUR",
                trace,
                api,
            )
        )
        logs.append(
            (t, "payments", "INFO", f"PaymentServiceImpl#40 charging card {i:08x}{i:08x}", trace, pay)
        )
        if broken:
            logs.append(
                (
                    t,
                    "payments",
                    "ERROR",
                    f"PaymentServiceImpl#42 card {i} declined: NullPointerException",
                    trace,
                    pay,
                )
            )
            logs.append((t, "api", "ERROR", f"ApiController#15 payment {i} failed with HTTP 500", trace, api))
        else:
            logs.append((t, "payments", "INFO", f"PaymentServiceImpl#44 charged {i} in 3 ms", trace, pay))
    logs += list(extra_logs)
    log_frame = pl.DataFrame(
        logs, schema=["ts", "service", "severity", "body", "trace_id", "span_id"], orient="row"
    )
    span_frame = pl.DataFrame(
        spans,
        schema=["trace_id", "span_id", "parent_span_id", "service", "name", "start", "duration"],
        orient="row",
    )
    numbers = {"INFO": 9, "WARN": 13, "ERROR": 17}
    log_frame = log_frame.with_columns(
        pl.col("severity").replace_strict(numbers, return_dtype=pl.Int32).alias("severity_number")
    )
    return log_frame, span_frame


def test_new_error_template_of_the_faulty_service_ranks_first() -> None:
    logs, spans = _shop()
    result = LogTemplateAnalyser().explain(INCIDENT, FrameView(logs=logs, spans=spans))
    top = result.ranked()[0]
    assert top.kind == "log" and top.service == "payments"
    assert list(result.service_scores("log"))[0] == "payments"
    assert top.labels["template"] == "PaymentServiceImpl#42 card <NUM> declined: NullPointerException"
    assert top.labels["operation"] == "PaymentController.charge"
    ev = top.evidence
    assert (ev["change"], ev["count_baseline"], ev["count_window"], ev["severity"]) == (
        "new",
        0,
        200,
        "ERROR",
    )
    assert (
        ev["example"].startswith("PaymentServiceImpl#42 card 200 declined") and ev["exposure_unit"] == "calls"
    )
    assert "never before" in top.explanation
    # the vanished success line is found too
    drops = [c for c in result.candidates if c.evidence["change"] == "drop"]
    assert any(c.service == "payments" and "#44" in c.labels["template"] for c in drops)
    # the caller's error happened in the same requests as the callee's change: explained, ranked below
    caller = next(c for c in result.candidates if c.service == "api" and "#15" in c.labels["template"])
    assert caller.evidence["explained_by"] == "payments" and caller.score < top.score / 2
    assert any(
        "api: template changes in the same requests as changes of its dependency payments" in n
        for n in result.notes
    )


def test_one_new_line_in_a_busy_service_is_not_a_surge() -> None:
    rare = [(ONSET + timedelta(seconds=5), "api", "WARN", "ApiController#99 slow client detected", "x", "y")]
    logs, spans = _shop(extra_logs=rare)
    result = LogTemplateAnalyser().explain(INCIDENT, FrameView(logs=logs, spans=spans))
    assert not any("#99" in c.labels["template"] for c in result.candidates)


def test_a_burst_in_one_call_counts_once() -> None:
    # one request logs the same retry line twelve times: one call of 200, not twelve surprising lines
    trace, api = f"{250:032x}", f"{250:014x}aa"
    burst = [
        (ONSET + timedelta(seconds=50), "api", "WARN", f"ApiController#20 retry {k}", trace, api)
        for k in range(12)
    ]
    logs, spans = _shop(extra_logs=burst)
    result = LogTemplateAnalyser().explain(INCIDENT, FrameView(logs=logs, spans=spans))
    assert not any("#20" in c.labels["template"] for c in result.candidates)


def test_without_spans_lines_are_the_exposure() -> None:
    logs, _ = _shop()
    result = LogTemplateAnalyser().explain(INCIDENT, FrameView(logs=logs))
    # without spans neither operations nor the call graph are known: caller and callee both changed
    assert set(list(result.service_scores("log"))[:2]) == {"api", "payments"}
    top = result.ranked()[0]
    assert top.evidence["exposure_unit"] == "lines" and "operation" not in top.labels
    assert all(c.evidence["explained_by"] is None for c in result.candidates)


def test_deterministic_and_inputs_untouched() -> None:
    logs, spans = _shop()
    before = (logs.clone(), spans.clone())
    analyser = LogTemplateAnalyser()
    first = analyser.explain(INCIDENT, FrameView(logs=logs, spans=spans)).to_json()
    second = analyser.explain(
        INCIDENT, FrameView(logs=logs.sample(fraction=1.0, shuffle=True, seed=3), spans=spans)
    ).to_json()
    assert first == second
    assert logs.equals(before[0]) and spans.equals(before[1])


def test_no_logs_is_a_note() -> None:
    result = LogTemplateAnalyser().explain(INCIDENT, FrameView())
    assert result.candidates == () and result.notes == ("no logs in the baseline or the window",)


@pytest.mark.parametrize(
    ("body", "masked"),
    [
        (
            "OrderServiceImpl#324 order 6ac9d457-ba97-485a-9813-4a4fc1d2e502 took 12 ms",
            "OrderServiceImpl#324 order <UUID> took <NUM> ms",
        ),
        ("2023-01-29 08:42:22,383 WARN peer 10.0.0.7:8080 span 439bc949a9eeb0cc4410", "peer <IP> span <HEX>"),
        ("[12:01:02] ERROR: disk /dev/sda1 at 93.5 % (x=-4)", "disk /dev/sda1 at <NUM> % (x=<NUM>)"),
        ("train D1345 seat 12", "train D1345 seat <NUM>"),
    ],
)
def test_masking(body: str, masked: str) -> None:
    assert pl.select(mask_bodies(pl.lit(body))).item() == masked


def test_drain_keeps_code_locations_apart() -> None:
    lines = [f"Service#{n} user <NUM> logged in" for n in (10, 11, 10)]
    ids = [i for i, _ in mine_templates(lines)]
    assert ids[0] == ids[2] != ids[1]
