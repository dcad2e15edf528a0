"""Silences: label matchers with a time window; an incident they match sends no notification meanwhile.

As in Prometheus Alertmanager, a silence is a list of matchers (``name="value"``, ``name!="value"``,
``name=~"regex"``, ``name!~"regex"``; regexes are fully anchored) that must *all* match an alert's labels
(:func:`app.alerts.notifiers.alert_labels`: the incident's own labels plus ``alertname``, ``service``,
``metric``, ``severity``, ``incident_id``), and a window ``[starts_at, ends_at)``. Expiring a silence sets
``ends_at`` to now; silences are never deleted, so the app can show what was silenced when.

A silenced incident's trigger is not queued. When the silence ends and the incident still fires, the next
scheduler pass queues it (enqueueing is driven by the incident's state, see :mod:`app.alerts.router`).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

OPERATORS = ("=~", "!~", "!=", "=")
#: label names as Prometheus allows them
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$", re.S)
MAX_DURATION = timedelta(days=90)


class SilenceError(ValueError):
    """A malformed silence (the message names the matcher or field and what was expected)."""


@dataclass(frozen=True)
class Matcher:
    """One label matcher: ``name op value`` with ``op`` in ``=``, ``!=``, ``=~``, ``!~``."""

    name: str
    op: str
    value: str

    def __post_init__(self) -> None:
        if not _LABEL.match(self.name):
            raise SilenceError(f"matcher label {self.name!r}: expected a label name ([A-Za-z_][A-Za-z0-9_]*)")
        if self.op not in OPERATORS:
            raise SilenceError(f"matcher {self.name}: operator must be one of {', '.join(OPERATORS)}")
        if self.op in ("=~", "!~"):
            try:
                re.compile(self.value)
            except re.error as exc:
                raise SilenceError(
                    f"matcher {self.name}{self.op}: invalid regular expression: {exc}"
                ) from exc

    def matches(self, labels: Mapping[str, str]) -> bool:
        """A missing label is the empty string (Alertmanager's rule: ``team!="db"`` matches no ``team``)."""
        value = labels.get(self.name, "")
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        hit = re.fullmatch(self.value, value) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f"{self.name}{self.op}{json.dumps(self.value)}"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "op": self.op, "value": self.value}


def parse_matcher(text: str) -> Matcher:
    """``service="rag-api"``, ``tenant=~"t-1.*"``, ``severity!=ticket`` (quotes optional).

    Examples
    --------
    >>> parse_matcher('tenant=~"t-1.*"')
    Matcher(name='tenant', op='=~', value='t-1.*')
    >>> parse_matcher("severity != ticket").matches({"severity": "page"})
    True
    >>> parse_matcher("model")
    Traceback (most recent call last):
    ...
    app.alerts.silences.SilenceError: matcher 'model': expected name=value, name!=value, name=~regex or name!~regex
    """
    m = _MATCHER.match(text)
    if not m:
        raise SilenceError(f"matcher {text!r}: expected name=value, name!=value, name=~regex or name!~regex")
    name, op, value = m.groups()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SilenceError(f"matcher {text!r}: bad quoted value: {exc.msg}") from exc
    return Matcher(name, op, value)


def matchers_from(items: Sequence[Any]) -> tuple[Matcher, ...]:
    """Matchers from strings (``'service="api"'``) or dicts (``{"name", "op", "value"}``); at least one, and at
    least one that does not match the empty string (a silence must not silence everything by accident)."""
    out: list[Matcher] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(parse_matcher(item))
        elif isinstance(item, Mapping):
            try:
                out.append(Matcher(str(item["name"]), str(item.get("op", "=")), str(item["value"])))
            except KeyError as exc:
                raise SilenceError(f"matchers[{i}]: missing {exc.args[0]!r}") from exc
        else:
            raise SilenceError(f"matchers[{i}]: expected a string or a table, got {type(item).__name__}")
    if not out:
        raise SilenceError("a silence needs at least one matcher")
    if all(m.matches({}) for m in out):
        raise SilenceError(
            "every matcher also matches an empty label set; add one that names what to silence "
            '(e.g. service="rag-api")'
        )
    # service!="" or service=~".+" alone matches every alert too (every alert has a service): a silence must
    # name something, so some matcher must fail for a value nobody uses
    probe = {m.name: "\u2400rootwise-probe" for m in out}
    if all(m.matches(probe) for m in out):
        raise SilenceError(
            "these matchers match any value of their labels, so they would silence every alert; add one that "
            'names what to silence (e.g. service="rag-api")'
        )
    return tuple(out)


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime
    created_by: str = ""
    comment: str = ""
    created: datetime | None = None

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)

    def state(self, now: datetime) -> str:
        """``pending`` (not started), ``active`` or ``expired``."""
        if now < self.starts_at:
            return "pending"
        return "active" if now < self.ends_at else "expired"

    def describe(self) -> str:
        return ", ".join(str(m) for m in self.matchers)

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        out = {
            "id": self.id,
            "matchers": [m.to_dict() for m in self.matchers],
            "text": self.describe(),
            "starts_at": self.starts_at.isoformat(),
            "ends_at": self.ends_at.isoformat(),
            "created_by": self.created_by,
            "comment": self.comment,
            "created": self.created.isoformat() if self.created else None,
        }
        if now is not None:
            out["state"] = self.state(now)
        return out


def new_silence(
    matchers: Sequence[Any],
    *,
    now: datetime,
    duration: timedelta | None = None,
    ends_at: datetime | None = None,
    starts_at: datetime | None = None,
    created_by: str = "",
    comment: str = "",
) -> Silence:
    """A validated new silence (``duration`` or ``ends_at``; it starts now unless ``starts_at`` is given)."""
    start = starts_at or now
    if (duration is None) == (ends_at is None):
        raise SilenceError("give either a duration or an end time")
    end = ends_at if ends_at is not None else start + duration  # type: ignore[operator]
    if end <= start:
        raise SilenceError("the silence must end after it starts")
    if end - start > MAX_DURATION:
        raise SilenceError(
            f"a silence lasts at most {MAX_DURATION.days} days; renew it if it must last longer"
        )
    if len(comment) > 1000 or len(created_by) > 200:
        raise SilenceError("comment (≤ 1000 characters) or created_by (≤ 200) is too long")
    return Silence(
        id=f"sil_{secrets.token_hex(8)}",
        matchers=matchers_from(matchers),
        starts_at=start,
        ends_at=end,
        created_by=created_by,
        comment=comment,
        created=now,
    )


def silencing(silences: Sequence[Silence], labels: Mapping[str, str], now: datetime) -> Silence | None:
    """The first active silence matching ``labels``, if any."""
    for s in silences:
        if s.active(now) and s.matches(labels):
            return s
    return None


def silences_from_rows(rows: Sequence[Sequence[Any]]) -> list[Silence]:
    """Silences from :func:`ingest.alerts_store.silence_rows`."""
    return [
        Silence(
            id=r[0],
            matchers=matchers_from(json.loads(r[1])),
            starts_at=r[2],
            ends_at=r[3],
            created_by=r[4] or "",
            comment=r[5] or "",
            created=r[6],
        )
        for r in rows
    ]
