"""One alerting pass: from the incidents' state to queued notifications — routes, silences, inhibition, grouping.

:func:`route_incidents` is what ``rootwise serve``'s scheduler runs after each detection and RCA pass (and what a
test runs with a chosen ``now``). It is idempotent: it derives the notifications from the incidents' state, and
the outbox only adds state transitions (:mod:`ingest.alerts_store`), so running it twice queues nothing twice.

For every incident that is firing (``open``/``acknowledged``) or changed recently:

1. **Labels**: :func:`app.alerts.notifiers.alert_labels`, plus ``root_cause_service`` when RCA's top cause lies
   in another service, so a route can page that service's owner.
2. **Hold** — a held incident queues no *new* trigger (a resolve or acknowledge of a trigger already sent still
   goes out, so nothing is left open at the receiver):

   * **silence**: an active silence matches the labels (:mod:`app.alerts.silences`);
   * **inhibit**: an ``[[inhibit_rules]]`` rule with a firing source incident (Alertmanager's semantics);
   * **rca** (RCA-aware inhibition, ``[alerting] rca_inhibition``, on by default): RCA's top cause names another
     service, and that service has a firing incident that started no later than this one (plus
     :data:`RCA_ONSET_SLACK`). Its pages are held; the root incident's notification says which pages it holds,
     so its owner knows the blast radius and the downstream on-call engineers are not woken for a symptom.
     Chains follow to the root (``gateway`` ← ``rag-api`` ← ``retriever`` holds both under ``retriever``).
   Holds are stored (``alert_holds``) for the app. When the holding incident resolves or the silence ends, the
   held incident (if it still fires) is queued at the next pass.
3. **Grouping** (Alertmanager's timers per route): a trigger or resolve for a group that has nothing pending waits
   ``group_wait`` when the group is new (nothing delivered within ``repeat_interval``) and otherwise until
   ``group_interval`` after the group's last delivery; a notification for a group with a batch already pending
   joins that batch. Acknowledgements go at once. Slack and generic webhooks send a due batch as one message.
4. **Reminders**: an open, unacknowledged, unheld incident whose last trigger was delivered ``repeat_interval``
   ago is triggered again (PagerDuty and Opsgenie de-duplicate it; chat receivers see a reminder).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from app.alerts.config import AlertingConfig, ReceiverConfig, RouteConfig
from app.alerts.notifiers import alert_labels, notifier_class
from app.alerts.outbox import EVENTS_FOR_STATUS, _payload, incident_link, utc_naive
from app.alerts.silences import Silence, silences_from_rows, silencing
from ingest import alerts_store
from ingest.alerts_store import DELIVERED, NewNotification
from ingest.store import Store

FIRING = ("open", "acknowledged")
#: a root incident may start this much after the incident it explains (detection merges at minute resolution)
RCA_ONSET_SLACK = timedelta(minutes=10)
#: resolved incidents older than this (by their last update) are not looked at again
RESOLVED_LOOKBACK = timedelta(days=2)


@dataclass(frozen=True)
class Hold:
    kind: str  # silence | inhibit | rca
    source_id: str | None
    reason: str


@dataclass
class RoutingReport:
    """What one pass did."""

    considered: int = 0
    queued: list[str] = field(default_factory=list)
    held: dict[str, Hold] = field(default_factory=dict)
    reminders: int = 0

    def to_dict(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for h in self.held.values():
            kinds[h.kind] = kinds.get(h.kind, 0) + 1
        return {
            "considered": self.considered,
            "queued": len(self.queued),
            "held": kinds,
            "reminders": self.reminders,
        }


def load_silences(store: Store, now: datetime) -> list[Silence]:
    """The silences that are active or yet to start."""
    return silences_from_rows(alerts_store.silence_rows(store, ended_after=now))


def root_cause_service(incident: Mapping[str, Any]) -> str | None:
    """The service RCA's top cause lies in, when it is another service than the incident's."""
    causes = [c for c in incident.get("causes") or [] if isinstance(c, dict)]
    if not causes:
        return None
    top = min(causes, key=lambda c: (c.get("rank") is None, c.get("rank") or 0))
    svc = top.get("service")
    return str(svc) if svc and svc != incident.get("service") else None


def incident_labels(incident: Mapping[str, Any]) -> dict[str, str]:
    labels = alert_labels(incident)
    root = root_cause_service(incident)
    if root:
        labels["root_cause_service"] = root
    return labels


def _start(incident: Mapping[str, Any]) -> datetime:
    value = incident.get("start")
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value)) if value else datetime.min


def compute_holds(
    incidents: Sequence[Mapping[str, Any]],
    config: AlertingConfig,
    silences: Sequence[Silence],
    now: datetime,
) -> dict[str, Hold]:
    """The hold of each held incident, by id (see the module docstring for the order: silence, inhibit, rca)."""
    firing = [i for i in incidents if i.get("status") in FIRING]
    labels = {str(i["id"]): incident_labels(i) for i in incidents}
    holds: dict[str, Hold] = {}
    # RCA: follow each incident's root-cause service to a firing incident there, to the end of the chain
    by_service: dict[str, list[Mapping[str, Any]]] = {}
    for inc in firing:
        by_service.setdefault(str(inc.get("service")), []).append(inc)

    def holder(inc: Mapping[str, Any]) -> Mapping[str, Any] | None:
        root = root_cause_service(inc)
        if not root:
            return None
        candidates = [
            s
            for s in by_service.get(root, [])
            if _start(s) <= _start(inc) + RCA_ONSET_SLACK and s["id"] != inc["id"]
        ]
        return min(candidates, key=_start) if candidates else None

    for inc in incidents:
        iid = str(inc["id"])
        s = silencing(silences, labels[iid], now)
        if s is not None:
            holds[iid] = Hold("silence", s.id, f"silenced by {s.describe()} until {s.ends_at.isoformat()}")
            continue
        rule_source = next(
            (
                src
                for rule in config.inhibit_rules
                for src in firing
                if src["id"] != inc["id"] and rule.inhibits(labels[str(src["id"])], labels[iid])
            ),
            None,
        )
        if rule_source is not None:
            holds[iid] = Hold(
                "inhibit",
                str(rule_source["id"]),
                f"inhibited while {rule_source.get('service')} {rule_source.get('metric')} fires "
                f"(incident {rule_source['id']})",
            )
            continue
        if not config.rca_inhibition or inc.get("status") not in FIRING:
            continue
        root, seen = holder(inc), {iid}
        while root is not None and str(root["id"]) not in seen:
            seen.add(str(root["id"]))
            nxt = holder(root)
            if nxt is None or str(nxt["id"]) in seen:
                break
            root = nxt
        if root is not None and str(root["id"]) != iid:
            holds[iid] = Hold(
                "rca",
                str(root["id"]),
                f"{inc.get('service')} only suffers from {root.get('service')} (RCA's top cause), whose "
                f"incident {root['id']} pages its owner",
            )
    return holds


def _not_before(
    store: Store, receiver: ReceiverConfig, route: RouteConfig, group_key: str, event: str, now: datetime
) -> datetime | None:
    if event == "acknowledge":
        return None
    gs = alerts_store.group_state(store, receiver.name, group_key)
    if gs.pending_due is not None:
        return max(now, gs.pending_due)
    if gs.last_delivered is None or now - gs.last_delivered > route.repeat_interval:
        return now + route.group_wait
    return max(now, gs.last_delivered + route.group_interval)


def _payload_incident(
    incident: Mapping[str, Any], holding: Sequence[Mapping[str, Any]], labels: Mapping[str, str]
) -> dict[str, Any]:
    inc = dict(incident)
    inc["alert_labels"] = dict(labels)
    if holding:
        inc["holding"] = [
            {"id": h["id"], "service": h.get("service"), "metric": h.get("metric")} for h in holding
        ]
    return inc


def route_incidents(
    store: Store,
    config: AlertingConfig,
    *,
    now: datetime,
    incidents: Sequence[Mapping[str, Any]] | None = None,
) -> RoutingReport:
    """Queue what the incidents' state calls for; record holds. ``incidents`` defaults to the firing ones plus
    those updated within :data:`RESOLVED_LOOKBACK`."""
    from ingest.results import list_incidents

    now = utc_naive(now)
    if incidents is None:
        incidents = list_incidents(store, firing_or_updated_since=now - RESOLVED_LOOKBACK)
    report = RoutingReport(considered=len(incidents))
    silences = load_silences(store, now)
    holds = compute_holds(incidents, config, silences, now)
    report.held = holds
    alerts_store.set_holds(
        store,
        {k: (h.kind, h.source_id, h.reason) for k, h in holds.items()},
        considered=[str(i["id"]) for i in incidents],
        now=now,
    )
    holding: dict[str, list[Mapping[str, Any]]] = {}
    by_id = {str(i["id"]): i for i in incidents}
    for iid, h in holds.items():
        if h.kind == "rca" and h.source_id is not None:
            holding.setdefault(h.source_id, []).append(by_id[iid])
    last = alerts_store.last_events(store, [str(i["id"]) for i in incidents if i.get("status") == "open"])
    items: list[NewNotification] = []
    for inc in incidents:
        iid = str(inc["id"])
        labels = incident_labels(inc)
        events = EVENTS_FOR_STATUS.get(str(inc.get("status")), ())
        if iid in holds:
            events = tuple(e for e in events if e != "trigger")
        for receiver, route in config.route(labels):
            group_key = route.group_key(labels)
            body = _payload(
                _payload_incident(inc, holding.get(iid, ()), labels),
                incident_link(config.external_url, iid),
                config.external_url,
                {k: labels.get(k, "") for k in route.group_by},
            )
            supported = notifier_class(receiver.type).events
            for event in events:
                if event not in supported:
                    continue
                items.append(
                    NewNotification(
                        receiver=receiver.name,
                        dedup_key=iid,
                        event=event,
                        incident_id=iid,
                        group_key=group_key,
                        payload=body,
                        dead_after=now + receiver.deadline,
                        not_before=_not_before(store, receiver, route, group_key, event, now),
                    )
                )
            prev = last.get((receiver.name, iid))
            if (
                inc.get("status") == "open"
                and iid not in holds
                and prev is not None
                and prev.event == "trigger"
                and prev.status == DELIVERED
                and prev.delivered is not None
                and now - prev.delivered >= route.repeat_interval
            ):
                items.append(
                    NewNotification(
                        receiver=receiver.name,
                        dedup_key=iid,
                        event="trigger",
                        incident_id=iid,
                        group_key=group_key,
                        payload=body,
                        dead_after=now + receiver.deadline,
                        repeat=True,
                    )
                )
                report.reminders += 1
    report.queued = alerts_store.enqueue(store, items, now=now)
    return report
