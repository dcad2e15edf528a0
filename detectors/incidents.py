"""Incident builder: alarms on the same service that overlap in time become one incident.

Pure logic (no store): ``rootwise detect`` loads the open and recently resolved incidents, turns the new
scores into alarm episodes with :class:`detectors.alarms.AlarmRule`, calls :func:`update_incidents`, and
writes back what changed. Rules:

* An episode continues the incident that already holds its series while that incident is open.
* Otherwise it joins an incident of the same service whose span (``start`` … ``end + merge_gap``) covers the
  episode's start; a resolved one within ``reopen_within`` is *reopened* rather than a new incident opened
  (a flapping metric gives one incident, not ten).
* Otherwise it opens a new incident; its id is a hash of service and start, so re-running detection over the
  same data gives the same ids.
* An incident resolves when none of its series has an active alarm; ``end`` is the last anomalous point.
* The incident's ``metric`` is the affected series with the highest peak (the KPI to show first); ``labels``
  are the label pairs every affected series shares; all series are kept in ``series``.
* Severity: ``page`` when the peak score reaches ``page_z`` or ``page_series`` series are affected, else
  ``ticket``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Episode:
    """One alarm on one series: when it started, its last anomalous point, its peak, whether still active."""

    series_id: int
    service: str
    metric: str
    labels: dict[str, str]
    start: datetime
    last: datetime
    peak: float
    active: bool


@dataclass(frozen=True)
class Incident:
    """An incident and its affected series (``series``: series_id → that series' latest episode)."""

    id: str
    service: str
    metric: str
    labels: dict[str, str]
    start: datetime
    end: datetime
    severity: str
    status: str  # open | resolved (| acknowledged, set by responders; detection keeps it)
    series: dict[int, Episode] = field(default_factory=dict)

    @property
    def peak(self) -> float:
        return max((e.peak for e in self.series.values()), default=0.0)

    @property
    def is_open(self) -> bool:
        return self.status != "resolved"


@dataclass(frozen=True)
class IncidentPolicy:
    """How episodes merge and when incidents page."""

    merge_gap: timedelta = timedelta(minutes=15)
    reopen_within: timedelta = timedelta(minutes=30)
    page_z: float = 7.0
    page_series: int = 3


def incident_id(service: str, start: datetime) -> str:
    """Stable id of the incident that ``service`` opened at ``start``.

    Examples
    --------
    >>> incident_id("rag-api", datetime(2026, 11, 1, 2, 41))
    'inc-rag-api-20261101T0241-797a1600'
    """
    digest = hashlib.blake2b(f"{service}|{start.isoformat()}".encode(), digest_size=4).hexdigest()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in service)[:40]
    return f"inc-{safe}-{start:%Y%m%dT%H%M}-{digest}"


def _summarise(inc: Incident, policy: IncidentPolicy) -> Incident:
    eps = list(inc.series.values())
    top = max(eps, key=lambda e: e.peak)
    shared = dict(top.labels)
    for e in eps:
        shared = {k: v for k, v in shared.items() if e.labels.get(k) == v}
    start = min(min(e.start for e in eps), inc.start)
    end = max(e.last for e in eps)
    severity = "page" if top.peak >= policy.page_z or len(eps) >= policy.page_series else "ticket"
    if inc.severity == "page":
        severity = "page"  # never downgrade a page that already went out
    status = inc.status
    if not any(e.active for e in eps):
        status = "resolved"
    elif status == "resolved":
        status = "open"
    return replace(
        inc, metric=top.metric, labels=shared, start=start, end=end, severity=severity, status=status
    )


def update_incidents(
    incidents: list[Incident], episodes: list[Episode], policy: IncidentPolicy | None = None
) -> list[Incident]:
    """Apply new alarm episodes (in time order) to the known incidents; returns every incident that changed.

    Examples
    --------
    >>> t0 = datetime(2026, 11, 1, 2, 41)
    >>> a = Episode(1, "rag-api", "latency_p99", {"model": "m"}, t0, t0 + timedelta(minutes=5), 9.0, True)
    >>> b = Episode(2, "rag-api", "errors", {"model": "m"}, t0 + timedelta(minutes=3), t0 + timedelta(minutes=6), 6.0, False)
    >>> [(i.metric, i.labels, i.severity, i.status, len(i.series)) for i in update_incidents([], [a, b])]
    [('latency_p99', {'model': 'm'}, 'page', 'open', 2)]
    """
    policy = policy or IncidentPolicy()
    by_id = {i.id: i for i in incidents}
    changed: set[str] = set()
    for ep in sorted(episodes, key=lambda e: (e.start, e.series_id)):
        target = next(
            (
                i
                for i in by_id.values()
                if i.is_open and ep.series_id in i.series and i.series[ep.series_id].active
            ),
            None,
        )
        if target is None:
            candidates = [
                i
                for i in by_id.values()
                if i.service == ep.service
                and i.start - policy.merge_gap
                <= ep.start
                <= i.end + (policy.merge_gap if i.is_open else policy.reopen_within)
            ]
            target = max(candidates, key=lambda i: i.end, default=None)
        if target is None:
            target = Incident(
                incident_id(ep.service, ep.start),
                ep.service,
                ep.metric,
                dict(ep.labels),
                ep.start,
                ep.last,
                "ticket",
                "open",
            )
        prev = target.series.get(ep.series_id)
        if prev is not None and not prev.active:
            # a new alarm on a series already in the incident: keep the earlier start and the larger peak
            ep = replace(ep, start=min(prev.start, ep.start), peak=max(prev.peak, ep.peak))
        elif prev is not None:
            ep = replace(ep, start=prev.start, peak=max(prev.peak, ep.peak))
        updated = replace(target, series={**target.series, ep.series_id: ep})
        by_id[target.id] = _summarise(updated, policy)
        changed.add(target.id)
    return [by_id[i] for i in sorted(changed)]
