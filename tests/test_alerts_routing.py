"""The alerting pass (:mod:`app.alerts.router`): silences, inhibit rules, RCA-aware inhibition, grouping timers,
reminders — on a DuckDB file, delivered to a real HTTP receiver on 127.0.0.1 on a simulated clock."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from alerting_support import T0, Receiver, incident

from app.alerts.config import AlertingConfig, alerting_from_config
from app.alerts.notifiers import build_notifiers
from app.alerts.outbox import RateLimiter, deliver_due, delivery_log
from app.alerts.router import compute_holds, load_silences, route_incidents
from app.alerts.silences import SilenceError, new_silence, parse_matcher
from app.api import add_silence
from detectors.incidents import Incident
from ingest import alerts_store
from ingest.results import list_incidents, save_causes, save_detection
from ingest.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "rootwise.duckdb")
    yield s
    s.close()


def config(receiver: Receiver, **alerting: Any) -> AlertingConfig:
    return alerting_from_config(
        {
            "receivers": [
                {"name": "hook", "type": "webhook", "url": f"{receiver.url}/hook"},
                {"name": "db-team", "type": "webhook", "url": f"{receiver.url}/db-team"},
            ],
            "routes": [
                {"receiver": "db-team", "match": {"root_cause_service": "vector-db"}},
                {
                    "receiver": "hook",
                    "group_by": ["service"],
                    "group_wait": "30s",
                    "group_interval": "5m",
                    "repeat_interval": "4h",
                },
            ],
            **({"alerting": alerting} if alerting else {}),
        }
    )


def deliver(store: Store, cfg: AlertingConfig, now: datetime) -> None:
    deliver_due(store, build_notifiers(cfg), now, rng=random.Random(1), limiter=RateLimiter())


def alerts_at(receiver: Receiver, path: str) -> list[tuple[str, str]]:
    return [(a["labels"]["incident_id"], a["status"]) for r in receiver.ok(path) for a in r.json()["alerts"]]


def cause(service: str) -> list[dict[str, Any]]:
    return [
        {"rank": 1, "kind": "service", "service": service, "evidence": {"explanation": f"{service} slow"}}
    ]


# -- silences ------------------------------------------------------------------------------------------------
def test_matchers_parse_and_refuse_what_would_silence_everything() -> None:
    assert parse_matcher('tenant=~"t-1.*"').matches({"tenant": "t-12"})
    assert not parse_matcher('tenant=~"t-1.*"').matches({"tenant": "xt-12"})  # anchored
    assert parse_matcher("team!=db").matches({})  # a missing label is ""
    with pytest.raises(SilenceError, match="invalid regular expression"):
        parse_matcher("service=~(")
    with pytest.raises(SilenceError, match="empty label set"):
        new_silence(["service=~.*"], now=T0, duration=timedelta(hours=1))
    with pytest.raises(SilenceError, match="at most 90 days"):
        new_silence(["service=api"], now=T0, duration=timedelta(days=91))
    # every alert has a service: matchers that take any of its values would silence everything as well
    for everything in (['service!=""'], ['service=~".+"'], ['service!=""', 'tenant=~".+"']):
        with pytest.raises(SilenceError, match="would silence every alert"):
            new_silence(everything, now=T0, duration=timedelta(hours=1))
    assert new_silence(['service!=""', 'tenant="t-1"'], now=T0, duration=timedelta(hours=1))


def test_silence_holds_the_trigger_until_it_is_expired(receiver: Receiver, store: Store) -> None:
    cfg = config(receiver)
    sil = add_silence(
        store, ['service="llm-gateway"'], duration=timedelta(hours=2), created_by="alice", now=T0
    )
    incs = [incident(1), incident(2, service="rag-api")]
    report = route_incidents(store, cfg, now=T0, incidents=incs)
    assert report.to_dict()["held"] == {"silence": 1}
    assert alerts_store.holds(store)["inc-1"]["kind"] == "silence"
    deliver(store, cfg, T0 + timedelta(minutes=1))
    assert alerts_at(receiver, "/hook") == [("inc-2", "firing")]
    # expiring it releases the incident: the next pass queues and the group timer sends it
    assert alerts_store.expire_silence(store, sil.id, now=T0 + timedelta(minutes=2))
    assert not alerts_store.expire_silence(store, sil.id, now=T0 + timedelta(minutes=2))
    assert load_silences(store, T0 + timedelta(minutes=3)) == []
    route_incidents(store, cfg, now=T0 + timedelta(minutes=3), incidents=incs)
    assert "inc-1" not in alerts_store.holds(store)
    deliver(store, cfg, T0 + timedelta(minutes=4))
    assert alerts_at(receiver, "/hook") == [("inc-2", "firing"), ("inc-1", "firing")]


# -- inhibition ------------------------------------------------------------------------------------------------
def test_inhibit_rule_holds_tickets_of_a_paging_service(receiver: Receiver, store: Store) -> None:
    cfg = alerting_from_config(
        {
            "receivers": [{"name": "hook", "type": "webhook", "url": f"{receiver.url}/hook"}],
            "inhibit_rules": [
                {
                    "source_match": {"severity": "page"},
                    "target_match": {"severity": "ticket"},
                    "equal": ["service"],
                }
            ],
        }
    )
    page = incident(1)
    ticket_same = incident(2, severity="ticket", metric="error_rate")
    ticket_other = incident(3, severity="ticket", service="embedder")
    holds = compute_holds([page, ticket_same, ticket_other], cfg, [], T0)
    assert (
        set(holds) == {"inc-2"} and holds["inc-2"].kind == "inhibit" and holds["inc-2"].source_id == "inc-1"
    )
    # the source resolved: nothing held any more
    assert compute_holds([incident(1, "resolved"), ticket_same], cfg, [], T0) == {}


def test_rca_aware_inhibition_pages_the_root_and_holds_its_victims(receiver: Receiver, store: Store) -> None:
    """vector-db fails; rag-api and the gateway suffer. One page, for vector-db, saying what it holds; the
    route on root_cause_service sends nothing for the held ones; after vector-db resolves, a still-firing
    victim pages on its own."""
    cfg = config(receiver)
    root = incident(
        1,
        service="vector-db",
        metric="query_p99",
        causes=[{"rank": 1, "kind": "change", "service": "vector-db"}],
    )
    rag = incident(2, service="rag-api", start="2026-03-01T11:52:00", causes=cause("vector-db"))
    gateway = incident(3, service="gateway", start="2026-03-01T11:53:00", causes=cause("rag-api"))
    unrelated = incident(4, service="embedder", causes=cause("gpu-pool"))  # its root has no incident
    route_incidents(store, cfg, now=T0, incidents=[root, rag, gateway, unrelated])
    holds = alerts_store.holds(store)
    assert {k: (v["kind"], v["source_id"]) for k, v in holds.items()} == {
        "inc-2": ("rca", "inc-1"),
        "inc-3": ("rca", "inc-1"),  # the chain gateway ← rag-api ← vector-db ends at the root
    }
    deliver(store, cfg, T0 + timedelta(seconds=30))
    (msg,) = [r.json() for r in receiver.ok("/hook") if r.json()["groupLabels"] == {"service": "vector-db"}]
    summary = msg["alerts"][0]["annotations"]["summary"]
    assert "holding 2 downstream pages (gateway, rag-api)" in summary
    assert sorted(alerts_at(receiver, "/hook")) == [("inc-1", "firing"), ("inc-4", "firing")]
    assert receiver.ok("/db-team") == []  # rag-api (root cause vector-db) is held, not sent to the db team
    # vector-db resolves; rag-api still fires → it pages now, routed to the vector-db owners by its RCA label
    route_incidents(
        store, cfg, now=T0 + timedelta(minutes=10), incidents=[incident(1, "resolved"), rag, gateway]
    )
    deliver(store, cfg, T0 + timedelta(minutes=11))
    assert alerts_at(receiver, "/db-team") == [("inc-2", "firing")]
    assert receiver.ok("/db-team")[0].json()["alerts"][0]["labels"]["root_cause_service"] == "vector-db"
    assert alerts_store.holds(store)["inc-3"]["source_id"] == "inc-2"  # the gateway is now held by rag-api


def test_rca_inhibition_can_be_switched_off(receiver: Receiver) -> None:
    root = incident(1, service="vector-db")
    rag = incident(2, service="rag-api", causes=cause("vector-db"))
    assert compute_holds([root, rag], config(receiver, rca_inhibition=False), [], T0) == {}
    assert set(compute_holds([root, rag], config(receiver), [], T0)) == {"inc-2"}
    # a root incident that started long after the victim does not explain it
    late = incident(1, service="vector-db", start="2026-03-01T12:30:00")
    assert compute_holds([late, rag], config(receiver), [], T0) == {}


# -- grouping ------------------------------------------------------------------------------------------------
def test_group_wait_batches_then_group_interval_spaces(receiver: Receiver, store: Store) -> None:
    cfg = config(receiver)
    route_incidents(store, cfg, now=T0, incidents=[incident(1), incident(2, metric="error_rate")])
    deliver(store, cfg, T0 + timedelta(seconds=10))
    assert receiver.ok("/hook") == []  # group_wait 30 s
    deliver(store, cfg, T0 + timedelta(seconds=31))
    (first,) = receiver.ok("/hook")
    assert sorted(a["labels"]["incident_id"] for a in first.json()["alerts"]) == ["inc-1", "inc-2"]
    # a third alert for the same group waits for group_interval after that delivery
    later = T0 + timedelta(minutes=1)
    route_incidents(
        store,
        cfg,
        now=later,
        incidents=[incident(1), incident(2, metric="error_rate"), incident(3, metric="ttft")],
    )
    deliver(store, cfg, later + timedelta(minutes=1))
    assert len(receiver.ok("/hook")) == 1
    deliver(store, cfg, T0 + timedelta(seconds=31) + timedelta(minutes=5))
    assert [a["labels"]["incident_id"] for a in receiver.ok("/hook")[1].json()["alerts"]] == ["inc-3"]
    # idempotent: the same state again queues nothing
    again = route_incidents(
        store,
        cfg,
        now=later + timedelta(minutes=6),
        incidents=[incident(1), incident(2, metric="error_rate"), incident(3, metric="ttft")],
    )
    assert again.queued == []


def test_reminder_after_repeat_interval_only_while_open_and_unacknowledged(
    receiver: Receiver, store: Store
) -> None:
    cfg = config(receiver)
    route_incidents(store, cfg, now=T0, incidents=[incident(1), incident(2, service="x")])
    deliver(store, cfg, T0 + timedelta(minutes=1))
    assert route_incidents(store, cfg, now=T0 + timedelta(hours=2), incidents=[incident(1)]).reminders == 0
    later = T0 + timedelta(hours=4, minutes=2)
    report = route_incidents(
        store, cfg, now=later, incidents=[incident(1), incident(2, "acknowledged", service="x")]
    )
    assert report.reminders == 1
    deliver(store, cfg, later + timedelta(minutes=1))
    assert alerts_at(receiver, "/hook").count(("inc-1", "firing")) == 2
    assert alerts_at(receiver, "/hook").count(("inc-2", "firing")) == 1


def test_routes_from_the_store_and_resolves(receiver: Receiver, store: Store) -> None:
    """From the incidents table (with RCA stored) to the receiver: trigger, then resolve when detection
    resolves it."""
    cfg = config(receiver)
    now = datetime.now().replace(microsecond=0)
    inc = Incident("inc-s", "rag-api", "p99", {"model": "m"}, now, None, "page", "open", {})
    save_detection(store, states={}, anomalies=pl.DataFrame(), detector="t", incidents=[inc], now=now)
    save_causes(store, "inc-s", cause("vector-db"))
    route_incidents(store, cfg, now=now)
    deliver(store, cfg, now + timedelta(minutes=1))
    assert alerts_at(receiver, "/db-team") == [("inc-s", "firing")]
    done = Incident(
        "inc-s", "rag-api", "p99", {"model": "m"}, now, now + timedelta(minutes=9), "page", "resolved", {}
    )
    save_detection(store, states={}, anomalies=pl.DataFrame(), detector="t", incidents=[done], now=now)
    assert list_incidents(store)[0]["status"] == "resolved"
    route_incidents(store, cfg, now=now + timedelta(minutes=10))
    deliver(store, cfg, now + timedelta(minutes=20))
    assert alerts_at(receiver, "/db-team") == [("inc-s", "firing"), ("inc-s", "resolved")]
    assert {r["status"] for r in delivery_log(store)} == {"delivered"}
