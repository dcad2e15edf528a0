"""What every notifier shares: the notification it formats, the HTTP send, and the explicit list of notifiers.

After Prometheus Alertmanager's ``notify/`` package: one notifier per target (``pagerduty.py``, ``slack.py``,
``opsgenie.py``, ``webhook.py``), each turning a :class:`Notification` into one HTTP request; the send returns
whether a failure is worth retrying. Retry semantics follow the PagerDuty Events API v2 and Standard Webhooks
guidance: 2xx is delivered; 429, 5xx and network errors are retryable (``Retry-After`` in seconds or as an
HTTP date is passed back); redirects and every other 4xx are not (the request itself is wrong, sending it again
cannot help).

Requests go through ``urllib`` (standard library; no new dependency): it honours ``https_proxy``/``no_proxy``
and verifies TLS by default. Redirects are never followed, so a credential-bearing request cannot be replayed to
another host. Every error string is passed through :func:`redact` with the receiver's secrets, because
receivers do echo requests back in error bodies.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import importlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, NamedTuple
from urllib.parse import quote

from app.alerts.config import AlertingConfig, ReceiverConfig

EVENTS = ("trigger", "acknowledge", "resolve")

#: the explicit list of notifiers, by receiver ``type`` (lazy "module:Class" so importing one imports only it)
NOTIFIERS: dict[str, str] = {
    "pagerduty": "app.alerts.pagerduty:PagerDutyNotifier",
    "slack": "app.alerts.slack:SlackNotifier",
    "opsgenie": "app.alerts.opsgenie:OpsgenieNotifier",
    "webhook": "app.alerts.webhook:WebhookNotifier",
}

USER_AGENT = "Rootwise-Alerting/0.1"
MAX_CAUSES = 5


class SendResult(NamedTuple):
    """What one send did: ``error`` is None when delivered; ``retryable`` says whether to try again, after at
    least ``retry_after`` seconds when the receiver said so (``Retry-After``)."""

    retryable: bool
    error: str | None
    retry_after: float | None = None
    status: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class HttpRequest:
    """One request to a receiver; prints without its URL, headers or body (they carry credentials)."""

    url: str = field(repr=False)
    body: bytes = field(repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    method: str = "POST"

    def __repr__(self) -> str:
        return f"HttpRequest({self.method}, {len(self.body)} bytes)"

    def json(self) -> Any:
        return json.loads(self.body)


def alert_labels(incident: Mapping[str, Any]) -> dict[str, str]:
    """The labels an incident is routed and grouped by: its own labels plus ``alertname`` (the metric),
    ``service``, ``metric``, ``severity`` and ``incident_id``.

    Examples
    --------
    >>> alert_labels({"id": "i1", "service": "api", "metric": "p95", "severity": "page", "labels": {"model": "m"}})
    {'model': 'm', 'alertname': 'p95', 'service': 'api', 'metric': 'p95', 'severity': 'page', 'incident_id': 'i1'}
    """
    out = {str(k): str(v) for k, v in (incident.get("labels") or {}).items()}
    out.update(
        alertname=str(incident.get("metric") or "rootwise_incident"),
        service=str(incident.get("service") or ""),
        metric=str(incident.get("metric") or ""),
        severity=str(incident.get("severity") or ""),
        incident_id=str(incident.get("id") or ""),
    )
    return out


def compact_cause(cause: Mapping[str, Any]) -> dict[str, Any]:
    """A cause as notifications carry it: rank, kind, where, score and the one-sentence explanation."""
    evidence = cause.get("evidence") or {}
    return {
        "rank": cause.get("rank"),
        "kind": cause.get("kind"),
        "service": cause.get("service"),
        "metric": cause.get("metric"),
        "labels": cause.get("labels") or {},
        "score": cause.get("score"),
        "explanation": evidence.get("explanation") if isinstance(evidence, dict) else None,
    }


def cause_text(cause: Mapping[str, Any]) -> str:
    """One line for a cause: its explanation, or what and where it is."""
    c = compact_cause(cause)
    if c["explanation"]:
        return str(c["explanation"])
    where = " ".join(str(x) for x in (c["service"], c["metric"]) if x)
    labels = ", ".join(f"{k}={v}" for k, v in sorted(c["labels"].items()))
    return f"{c['kind'] or 'cause'}: {where}" + (f" ({labels})" if labels else "")


@dataclass(frozen=True)
class Notification:
    """One alert to send: an incident (as :func:`ingest.results.list_incidents` returns it, causes included)
    with the event, its dedup key, a link to the incident page and the time of this attempt.

    ``id`` is the outbox row id: stable across retries, so it is the Standard Webhooks ``webhook-id``.
    """

    id: str
    receiver: str
    event: str
    dedup_key: str
    incident: Mapping[str, Any]
    link: str
    group_key: str = "{}:{}"
    group_labels: Mapping[str, str] = field(default_factory=dict)
    external_url: str = ""
    sent_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: the other notifications of the same receiver and group sent in this one message (Slack, webhook)
    members: tuple[Notification, ...] = ()

    @property
    def batch(self) -> tuple[Notification, ...]:
        """This notification and its group members, in order."""
        return (self, *self.members)

    @property
    def message_id(self) -> str:
        """Stable per message content: the row id, or a hash of the batch's row ids (``webhook-id``)."""
        if not self.members:
            return self.id
        return (
            "grp_" + hashlib.sha256("\x1f".join(sorted(n.id for n in self.batch)).encode()).hexdigest()[:32]
        )

    @property
    def is_report(self) -> bool:
        """A scheduled capacity report rather than an incident (Slack and webhooks only)."""
        return self.event == "report"

    @property
    def status(self) -> str:
        """``firing`` or ``resolved`` (Alertmanager's two states; an acknowledged alert still fires)."""
        return "resolved" if self.event == "resolve" else "firing"

    @property
    def labels(self) -> dict[str, str]:
        """The labels it was routed by (``root_cause_service`` included when the router added it)."""
        routed = self.incident.get("alert_labels")
        return (
            {str(k): str(v) for k, v in routed.items()}
            if isinstance(routed, dict)
            else alert_labels(self.incident)
        )

    def causes(self, n: int = MAX_CAUSES) -> list[dict[str, Any]]:
        """The top ``n`` causes, ranked."""
        causes = [c for c in self.incident.get("causes") or [] if isinstance(c, dict)]
        causes.sort(key=lambda c: (c.get("rank") is None, c.get("rank") or 0))
        return causes[:n]

    def summary(self) -> str:
        """One line: state, severity, where, what; then the top cause.

        Examples
        --------
        >>> n = Notification("x", "r", "trigger", "i1", {"id": "i1", "service": "api", "metric": "p95_latency",
        ...     "severity": "page", "labels": {"model": "m1"}, "causes": [{"rank": 1, "kind": "change",
        ...     "evidence": {"explanation": "deploy v42 of api 3 min before onset"}}]}, "http://h/incident/i1")
        >>> n.summary()
        '[PAGE] api: p95_latency abnormal (model=m1); likely cause: deploy v42 of api 3 min before onset'
        """
        inc = self.incident
        state = {"acknowledge": "[ACKNOWLEDGED] ", "resolve": "[RESOLVED] "}.get(self.event, "")
        labels = ", ".join(f"{k}={v}" for k, v in sorted((inc.get("labels") or {}).items()))
        text = f"{state}[{str(inc.get('severity') or 'alert').upper()}] {inc.get('service')}: {inc.get('metric')} abnormal"
        if labels:
            text += f" ({labels})"
        top = self.causes(1)
        if top and self.event != "resolve":
            text += f"; likely cause: {cause_text(top[0])}"
        held = self.holding()
        if held and self.event != "resolve":
            services = ", ".join(sorted({str(h.get("service")) for h in held}))
            text += f"; holding {len(held)} downstream page{'s' if len(held) != 1 else ''} ({services})"
        return text

    def holding(self) -> list[dict[str, Any]]:
        """The incidents of downstream services whose pages this one holds (RCA-aware inhibition)."""
        return [h for h in self.incident.get("holding") or [] if isinstance(h, dict)]

    def fingerprint(self) -> str:
        """16 hex digits identifying the label set (Alertmanager's ``fingerprint`` field)."""
        canon = json.dumps(sorted(self.labels.items()), separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in an ellipsis when cut.

    Examples
    --------
    >>> truncate("abcdef", 4), truncate("abc", 4)
    ('abc…', 'abc')
    """
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (and its URL-encoded form) replaced by ``***``.

    Examples
    --------
    >>> redact("bad key abc123 in body", ["abc123"])
    'bad key *** in body'
    """
    for s in sorted({s for s in secrets if s}, key=len, reverse=True):
        for form in {s, quote(s, safe=""), quote(s)}:
            text = text.replace(form, "***")
    return text


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header value in seconds: delay-seconds or an HTTP date (RFC 9110 §10.2.3).

    Examples
    --------
    >>> retry_after_seconds("120"), retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0)
    (120.0, 10.0)
    >>> retry_after_seconds("soon") is None
    True
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are failures (Standard Webhooks): the request carries credentials meant for one host."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _body_text(raw: bytes, limit: int = 300) -> str:
    return truncate(" ".join(raw.decode("utf-8", "replace").split()), limit)


def post(
    req: HttpRequest, *, timeout_s: float, secrets: Iterable[str] = (), where: str = "receiver"
) -> SendResult:
    """Send ``req``; classify the outcome. Never raises for HTTP or network failures."""
    secrets = tuple(secrets)
    opener = urllib.request.build_opener(_NoRedirect)
    headers = {"User-Agent": USER_AGENT, **req.headers}
    request = urllib.request.Request(req.url, data=req.body, headers=headers, method=req.method)
    try:
        with opener.open(request, timeout=timeout_s) as resp:
            resp.read(65536)
            return SendResult(False, None, None, resp.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
        try:
            text = _body_text(exc.read(4096))
        except (OSError, http.client.HTTPException):
            text = ""
        finally:
            exc.close()
        retryable = status == 429 or status >= 500
        retry_after = (
            retry_after_seconds(exc.headers.get("Retry-After")) if retryable and exc.headers else None
        )
        if 300 <= status < 400:
            text = "redirects are not followed; configure the final URL"
        msg = f"{where}: HTTP {status}" + (f": {text}" if text else "")
        return SendResult(retryable, redact(msg, secrets), retry_after, status)
    except urllib.error.URLError as exc:
        reason = exc.reason
        return SendResult(
            True, redact(f"{where}: cannot connect: {type(reason).__name__}: {reason}", secrets)
        )
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, truncated responses
        return SendResult(True, redact(f"{where}: {type(exc).__name__}: {exc}", secrets))
    except ValueError as exc:  # a malformed URL: sending again cannot help
        return SendResult(False, redact(f"{where}: invalid request: {exc}", secrets))


class Notifier:
    """The base of every notifier: a receiver's config, the events it takes, and :meth:`send`.

    A subclass implements only :meth:`request` (the target's payload format).
    """

    type: ClassVar[str] = ""
    events: ClassVar[frozenset[str]] = frozenset({"trigger", "resolve"})
    #: whether one request can carry a group's notifications (``Notification.members``)
    batches: ClassVar[bool] = False

    def __init__(self, receiver: ReceiverConfig) -> None:
        if receiver.type != self.type:
            raise ValueError(f"{type(self).__name__} needs a {self.type} receiver, got {receiver.type}")
        self.receiver = receiver

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.receiver.name!r}, url={self.receiver.url_display!r})"

    @property
    def rate_key(self) -> str:
        return self.receiver.rate_key

    def request(self, n: Notification) -> HttpRequest:
        raise NotImplementedError

    def send(self, n: Notification) -> SendResult:
        """Build the request for ``n`` and send it: ``(retryable, error, retry_after, status)``."""
        where = f"{self.receiver.name} ({self.type})"
        if n.event not in self.events:
            return SendResult(False, f"{where}: does not take {n.event!r} events")
        try:
            req = self.request(n)
        except (KeyError, TypeError, ValueError) as exc:  # a payload we cannot format will not format later
            return SendResult(
                False, redact(f"{where}: cannot build the request: {exc}", self.receiver.secrets())
            )
        return post(
            req, timeout_s=self.receiver.timeout.total_seconds(), secrets=self.receiver.secrets(), where=where
        )


def notifier_class(receiver_type: str) -> type[Notifier]:
    """The notifier class of a receiver type (from :data:`NOTIFIERS`)."""
    if receiver_type not in NOTIFIERS:
        raise ValueError(f"unknown receiver type {receiver_type!r}; expected one of {', '.join(NOTIFIERS)}")
    module, _, name = NOTIFIERS[receiver_type].partition(":")
    cls: type[Notifier] = getattr(importlib.import_module(module), name)
    return cls


def build_notifier(receiver: ReceiverConfig) -> Notifier:
    return notifier_class(receiver.type)(receiver)


def build_notifiers(config: AlertingConfig) -> dict[str, Notifier]:
    """One notifier per configured receiver, by receiver name."""
    return {name: build_notifier(r) for name, r in config.receivers.items()}


def isoformat(value: Any) -> str | None:
    """An ISO 8601 UTC string (``...Z``) for a datetime or an ISO string without offset (stored times are UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
