"""``[[receivers]]`` and ``[[routes]]`` of ``rootwise.toml``: parsing, validation and routing.

Secrets (PagerDuty ``routing_key``, Opsgenie ``api_key``, the Standard Webhooks ``secret``) must be written as
``${ENV_VAR}`` and become :class:`app.config.Secret`, which prints as ``***``. Receiver URLs are kept as secrets
too: a Slack incoming-webhook URL *is* its credential, and webhook URLs often carry tokens in their query.
No error message ever repeats a secret or a URL; every error names the table and the key.

Routes are a flat, ordered list (Alertmanager's routing tree with one level): an alert goes to the first route
whose ``match`` labels all equal the alert's labels, and on to later routes only while the matched route has
``continue = true``. Without any ``[[routes]]`` every receiver gets every alert.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.config import ConfigError, Secret, _resolve, parse_config

RECEIVER_TYPES = ("pagerduty", "slack", "opsgenie", "webhook")

#: where a receiver posts when ``url`` is not given (Slack and generic webhooks have no default)
DEFAULT_URLS = {
    "pagerduty": "https://events.pagerduty.com/v2/enqueue",
    "opsgenie": "https://api.opsgenie.com",
}
#: per-receiver token-bucket rate; PagerDuty documents about 120 events/min per routing key, Slack incoming
#: webhooks about one message per second
DEFAULT_RATE_PER_MINUTE = {"pagerduty": 120.0, "slack": 60.0, "opsgenie": 120.0, "webhook": 600.0}

_COMMON_KEYS = ("name", "type", "url", "rate_limit_per_minute", "deadline", "timeout")
_TYPE_KEYS = {"pagerduty": ("routing_key",), "slack": (), "opsgenie": ("api_key",), "webhook": ("secret",)}
_ROUTE_KEYS = ("receiver", "match", "group_by", "group_wait", "group_interval", "repeat_interval", "continue")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Prometheus' form: each unit at most once, largest first ("1h30m"; "2h2h" or "30m1h" is a typo, not 4 h)
_DURATION = re.compile(
    r"^(?=.)"
    + "".join(
        rf"(?:\d+(?:\.\d+)?{u}(?!s))?" if u == "m" else rf"(?:\d+(?:\.\d+)?{u})?"
        for u in ("w", "d", "h", "m", "s", "ms")
    )
    + "$"
)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


class AlertConfigError(ConfigError):
    """One or more problems in ``[[receivers]]`` / ``[[routes]]``; ``errors`` lists each, naming its key."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


def parse_duration(text: str) -> timedelta:
    """Alertmanager-style durations: ``30s``, ``5m``, ``4h``, ``1d``, ``1h30m``.

    Examples
    --------
    >>> parse_duration("1h30m"), parse_duration("24h"), parse_duration("250ms")
    (datetime.timedelta(seconds=5400), datetime.timedelta(days=1), datetime.timedelta(microseconds=250000))
    >>> parse_duration("2h2h")
    Traceback (most recent call last):
    ...
    ValueError: expected a duration such as 30s, 5m, 4h, 1d or 1h30m (each unit once, largest first), got '2h2h'
    """
    text = text.strip()
    if not _DURATION.match(text):
        raise ValueError(
            f"expected a duration such as 30s, 5m, 4h, 1d or 1h30m (each unit once, largest first), got {text!r}"
        )
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text)))


@dataclass(frozen=True)
class ReceiverConfig:
    """One ``[[receivers]]`` table.

    ``url`` is the endpoint (a secret: never printed); ``url_display`` is its scheme and host only, for logs and
    the app. ``rate_key`` names the token bucket this receiver draws from: PagerDuty's limit is per routing key and
    Slack's per webhook, so two receivers sharing one share the bucket.
    """

    name: str
    type: str
    url: Secret
    url_display: str
    routing_key: Secret | None = None
    api_key: Secret | None = None
    secret: Secret | None = None
    rate_limit_per_minute: float = 60.0
    deadline: timedelta = timedelta(hours=24)
    timeout: timedelta = timedelta(seconds=15)
    rate_key: str = field(default="", repr=False)

    def secrets(self) -> tuple[str, ...]:
        """Every secret string of this receiver (the URL included), for redacting error text."""
        values = [
            s.reveal() for s in (self.url, self.routing_key, self.api_key, self.secret) if s is not None
        ]
        parts = urlsplit(self.url.reveal())
        tail = parts.path + (f"?{parts.query}" if parts.query else "")
        if len(tail) >= 8:  # a Slack hook path is its token; a short path such as /hook carries no secret
            values.append(tail)
        values += [p for p in re.split(r"[/?&=]", tail) if len(p) >= 16]
        if self.secret is not None and self.secret.reveal().startswith("whsec_"):
            values.append(self.secret.reveal().removeprefix("whsec_"))
        return tuple(sorted({v for v in values if v}, key=len, reverse=True))


@dataclass(frozen=True)
class RouteConfig:
    """One ``[[routes]]`` table; ``group_*`` timings follow Alertmanager's defaults (30s / 5m / 4h)."""

    receiver: str
    match: Mapping[str, str] = field(default_factory=dict)
    group_by: tuple[str, ...] = ()
    group_wait: timedelta = timedelta(seconds=30)
    group_interval: timedelta = timedelta(minutes=5)
    repeat_interval: timedelta = timedelta(hours=4)
    continue_: bool = False

    def matches(self, labels: Mapping[str, str]) -> bool:
        """All ``match`` labels equal the alert's (an empty ``match`` matches everything)."""
        return all(labels.get(k) == v for k, v in self.match.items())

    def group_key(self, labels: Mapping[str, str]) -> str:
        """Alertmanager-style group key: the route's matchers, then the alert's values of ``group_by``.

        Examples
        --------
        >>> RouteConfig("oncall", {"severity": "page"}, ("service",)).group_key({"service": "api"})
        '{}/{severity="page"}:{service="api"}'
        """
        matchers = ",".join(f'{k}="{v}"' for k, v in sorted(self.match.items()))
        grouped = ",".join(f'{k}="{labels.get(k, "")}"' for k in self.group_by)
        return f"{{}}/{{{matchers}}}:{{{grouped}}}"


@dataclass(frozen=True)
class InhibitRule:
    """One ``[[inhibit_rules]]`` table (Alertmanager's): while an incident matching ``source_match`` fires, hold
    the notifications of incidents matching ``target_match`` that have the same values of the ``equal`` labels.

    Examples
    --------
    >>> rule = InhibitRule({"severity": "page"}, {"severity": "ticket"}, ("service",))
    >>> rule.inhibits({"severity": "page", "service": "api"}, {"severity": "ticket", "service": "api"})
    True
    >>> rule.inhibits({"severity": "page", "service": "api"}, {"severity": "ticket", "service": "db"})
    False
    """

    source_match: Mapping[str, str] = field(default_factory=dict)
    target_match: Mapping[str, str] = field(default_factory=dict)
    equal: tuple[str, ...] = ()

    def inhibits(self, source: Mapping[str, str], target: Mapping[str, str]) -> bool:
        return (
            all(source.get(k) == v for k, v in self.source_match.items())
            and all(target.get(k) == v for k, v in self.target_match.items())
            and all(source.get(k, "") == target.get(k, "") for k in self.equal)
        )


@dataclass(frozen=True)
class AlertingConfig:
    """Receivers by name, the ordered routes and the inhibit rules; ``external_url`` is where the app is reached
    (for links); ``rca_inhibition`` holds the pages of services that only suffer from another firing incident's
    service (see :mod:`app.alerts.router`)."""

    receivers: Mapping[str, ReceiverConfig] = field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = ()
    external_url: str = "http://127.0.0.1:8050"
    inhibit_rules: tuple[InhibitRule, ...] = ()
    rca_inhibition: bool = True

    def route(self, labels: Mapping[str, str]) -> list[tuple[ReceiverConfig, RouteConfig]]:
        """The receivers an alert with these labels goes to, each with the route that chose it.

        Examples
        --------
        >>> cfg = alerting_from_config({"receivers": [{"name": "hook", "type": "webhook",
        ...     "url": "http://127.0.0.1:9/h"}], "routes": [{"receiver": "hook", "match": {"severity": "page"}}]})
        >>> [r.name for r, _ in cfg.route({"severity": "page"})], cfg.route({"severity": "ticket"})
        (['hook'], [])
        """
        if not self.routes:
            return [(r, RouteConfig(r.name)) for r in self.receivers.values()]
        out: list[tuple[ReceiverConfig, RouteConfig]] = []
        for route in self.routes:
            if route.matches(labels):
                out.append((self.receivers[route.receiver], route))
                if not route.continue_:
                    break
        return out


class _Errors:
    """Collects every problem instead of stopping at the first, so ``config check`` lists them all."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, msg: str) -> None:
        self.items.append(msg)


def _url(value: Any, where: str, errors: _Errors) -> tuple[Secret, str] | None:
    if not isinstance(value, str):
        errors.add(f"{where}: expected an http(s) URL string, got {type(value).__name__}")
        return None
    try:
        resolved = _resolve(value, where)
    except ConfigError as exc:
        errors.add(str(exc))
        return None
    # the URL may be a credential (Slack): errors describe it, never repeat it
    try:
        parts = urlsplit(resolved)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        errors.add(f"{where}: expected an http(s) URL")
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        errors.add(f"{where}: expected an http(s) URL")
        return None
    if parts.username is not None or parts.password is not None:
        errors.add(f"{where}: credentials in the URL are not supported; use the receiver's secret keys")
        return None
    return Secret(resolved), f"{parts.scheme}://{parts.netloc}"


def _secret(
    item: Mapping[str, Any], key: str, where: str, errors: _Errors, *, required: bool
) -> Secret | None:
    w = f"{where}.{key}"
    if key not in item:
        if required:
            errors.add(f'{w}: required; write it as "${{ENV_VAR}}" and set the variable')
        return None
    value = item[key]
    if not isinstance(value, str) or "${" not in value:
        # DESIGN.md: secrets live in the environment, not in the file (the value itself is never echoed)
        errors.add(f'{w}: write secrets as "${{ENV_VAR}}" references, not inline values')
        return None
    try:
        resolved = _resolve(value, w)
    except ConfigError as exc:
        errors.add(str(exc))
        return None
    if not resolved:
        errors.add(f"{w}: the environment variable is empty")
        return None
    return Secret(resolved)


def _webhook_secret_ok(secret: Secret, where: str, errors: _Errors) -> None:
    """Standard Webhooks symmetric secrets: ``whsec_`` + base64 of 24 to 64 random bytes."""
    value = secret.reveal()
    if not value.startswith("whsec_"):
        errors.add(f"{where}: expected a Standard Webhooks secret (whsec_ followed by base64)")
        return
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        errors.add(f"{where}: the part after whsec_ is not valid base64")
        return
    if not 24 <= len(key) <= 64:
        errors.add(f"{where}: the key must decode to 24-64 bytes, got {len(key)}")


def _duration(
    item: Mapping[str, Any], key: str, where: str, default: timedelta, errors: _Errors
) -> timedelta:
    if key not in item:
        return default
    value = item[key]
    try:
        if not isinstance(value, str):
            raise ValueError(f"expected a duration string such as 30s, 5m or 4h, got {value!r}")
        d = parse_duration(value)
    except ValueError as exc:
        errors.add(f"{where}.{key}: {exc}")
        return default
    if d <= timedelta(0):
        errors.add(f"{where}.{key}: expected a positive duration, got {value!r}")
        return default
    return d


def _receiver(i: int, item: Any, errors: _Errors) -> ReceiverConfig | None:
    where = f"receivers[{i}]"
    if not isinstance(item, dict):
        errors.add(f"{where}: expected a table ([[receivers]]), got {type(item).__name__}")
        return None
    n_before = len(errors.items)
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        errors.add(f"{where}.name: expected 1-64 characters of letters, digits, '_', '.' or '-'")
        name = None
    typ = item.get("type")
    if typ not in RECEIVER_TYPES:
        errors.add(f"{where}.type: expected one of {', '.join(RECEIVER_TYPES)}, got {typ!r}")
        return None
    allowed = _COMMON_KEYS + _TYPE_KEYS[typ]
    unknown = [k for k in item if k not in allowed]
    if unknown:
        errors.add(
            f"{where}: unknown key {', '.join(map(repr, unknown))} for type {typ}; expected one of {', '.join(allowed)}"
        )
    if "url" in item:
        url = _url(item["url"], f"{where}.url", errors)
    elif typ in DEFAULT_URLS:
        default = urlsplit(DEFAULT_URLS[typ])
        url = (Secret(DEFAULT_URLS[typ]), f"{default.scheme}://{default.netloc}")
    else:
        errors.add(f"{where}.url: required for a {typ} receiver (an http(s) URL)")
        url = None
    routing_key = _secret(item, "routing_key", where, errors, required=True) if typ == "pagerduty" else None
    api_key = _secret(item, "api_key", where, errors, required=True) if typ == "opsgenie" else None
    secret = _secret(item, "secret", where, errors, required=False) if typ == "webhook" else None
    if secret is not None:
        _webhook_secret_ok(secret, f"{where}.secret", errors)
    rate = item.get("rate_limit_per_minute", DEFAULT_RATE_PER_MINUTE[typ])
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
        errors.add(f"{where}.rate_limit_per_minute: expected a positive number, got {rate!r}")
        rate = DEFAULT_RATE_PER_MINUTE[typ]
    deadline = _duration(item, "deadline", where, timedelta(hours=24), errors)
    timeout = _duration(item, "timeout", where, timedelta(seconds=15), errors)
    if len(errors.items) > n_before or name is None or url is None:
        return None
    # one bucket per credential, named by a hash so the credential never appears in the bucket's name
    basis = {"pagerduty": routing_key, "slack": url[0]}.get(typ)
    rate_key = (
        f"{typ}:{hashlib.sha256(basis.reveal().encode()).hexdigest()[:16]}" if basis else f"{typ}:{name}"
    )
    return ReceiverConfig(
        name=name,
        type=typ,
        url=url[0],
        url_display=url[1],
        routing_key=routing_key,
        api_key=api_key,
        secret=secret,
        rate_limit_per_minute=float(rate),
        deadline=deadline,
        timeout=timeout,
        rate_key=rate_key,
    )


def _route(i: int, item: Any, names: set[str], errors: _Errors) -> RouteConfig | None:
    where = f"routes[{i}]"
    if not isinstance(item, dict):
        errors.add(f"{where}: expected a table ([[routes]]), got {type(item).__name__}")
        return None
    n_before = len(errors.items)
    unknown = [k for k in item if k not in _ROUTE_KEYS]
    if unknown:
        errors.add(
            f"{where}: unknown key {', '.join(map(repr, unknown))}; expected one of {', '.join(_ROUTE_KEYS)}"
        )
    receiver = item.get("receiver")
    if not isinstance(receiver, str):
        errors.add(f"{where}.receiver: required, the name of a [[receivers]] table")
    elif receiver not in names:
        known = ", ".join(sorted(names)) or "none defined"
        errors.add(f"{where}.receiver: no receiver named {receiver!r} (receivers: {known})")
    match = item.get("match", {})
    if not isinstance(match, dict) or not all(isinstance(v, str) for v in match.values()):
        errors.add(f'{where}.match: expected a table of label = "value", got {match!r}')
        match = {}
    group_by = item.get("group_by", [])
    if not isinstance(group_by, list) or not all(isinstance(v, str) for v in group_by):
        errors.add(f"{where}.group_by: expected an array of label names, got {group_by!r}")
        group_by = []
    cont = item.get("continue", False)
    if not isinstance(cont, bool):
        errors.add(f"{where}.continue: expected true or false, got {cont!r}")
    route = RouteConfig(
        receiver=str(receiver),
        match=dict(match),
        group_by=tuple(group_by),
        group_wait=_duration(item, "group_wait", where, timedelta(seconds=30), errors),
        group_interval=_duration(item, "group_interval", where, timedelta(minutes=5), errors),
        repeat_interval=_duration(item, "repeat_interval", where, timedelta(hours=4), errors),
        continue_=bool(cont),
    )
    return None if len(errors.items) > n_before else route


def _inhibit_rule(i: int, item: Any, errors: _Errors) -> InhibitRule | None:
    where = f"inhibit_rules[{i}]"
    if not isinstance(item, dict):
        errors.add(f"{where}: expected a table ([[inhibit_rules]]), got {type(item).__name__}")
        return None
    n_before = len(errors.items)
    allowed = ("source_match", "target_match", "equal")
    unknown = [k for k in item if k not in allowed]
    if unknown:
        errors.add(
            f"{where}: unknown key {', '.join(map(repr, unknown))}; expected one of {', '.join(allowed)}"
        )
    tables = {}
    for key in ("source_match", "target_match"):
        value = item.get(key)
        if not isinstance(value, dict) or not value or not all(isinstance(v, str) for v in value.values()):
            errors.add(f'{where}.{key}: required, a non-empty table of label = "value"')
            value = {}
        tables[key] = dict(value)
    equal = item.get("equal", [])
    if not isinstance(equal, list) or not all(isinstance(v, str) for v in equal):
        errors.add(f"{where}.equal: expected an array of label names, got {equal!r}")
        equal = []
    if len(errors.items) > n_before:
        return None
    return InhibitRule(tables["source_match"], tables["target_match"], tuple(equal))


def alerting_from_config(extra: Mapping[str, Any]) -> AlertingConfig:
    """Receivers and routes from a parsed ``rootwise.toml`` (``Config.extra``); raises :class:`AlertConfigError`
    listing every problem.

    Examples
    --------
    >>> import os; os.environ["DOC_PD_KEY"] = "0123456789abcdef0123456789abcdef"
    >>> cfg = alerting_from_config({"receivers": [{"name": "pd", "type": "pagerduty",
    ...                                            "routing_key": "${DOC_PD_KEY}"}]})
    >>> cfg.receivers["pd"].routing_key, cfg.receivers["pd"].url_display
    (Secret(***), 'https://events.pagerduty.com')
    >>> alerting_from_config({"receivers": [{"name": "x", "type": "webhook", "url": "ftp://h/"}]})
    Traceback (most recent call last):
    ...
    app.alerts.config.AlertConfigError: receivers[0].url: expected an http(s) URL
    """
    errors = _Errors()
    raw_receivers = extra.get("receivers", [])
    raw_routes = extra.get("routes", [])
    receivers: dict[str, ReceiverConfig] = {}
    names: set[str] = set()
    if not isinstance(raw_receivers, list):
        errors.add(
            f"receivers: expected an array of tables ([[receivers]]), got {type(raw_receivers).__name__}"
        )
        raw_receivers = []
    for i, item in enumerate(raw_receivers):
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str):
            if name in names:
                errors.add(f"receivers[{i}].name: duplicate receiver name {name!r}")
            names.add(name)
        r = _receiver(i, item, errors)
        if r is not None and r.name not in receivers:
            receivers[r.name] = r
    routes: list[RouteConfig] = []
    if not isinstance(raw_routes, list):
        errors.add(f"routes: expected an array of tables ([[routes]]), got {type(raw_routes).__name__}")
        raw_routes = []
    for i, item in enumerate(raw_routes):
        route = _route(i, item, names, errors)
        if route is not None:
            routes.append(route)
    raw_rules = extra.get("inhibit_rules", [])
    rules: list[InhibitRule] = []
    if not isinstance(raw_rules, list):
        errors.add(
            f"inhibit_rules: expected an array of tables ([[inhibit_rules]]), got {type(raw_rules).__name__}"
        )
        raw_rules = []
    for i, item in enumerate(raw_rules):
        rule = _inhibit_rule(i, item, errors)
        if rule is not None:
            rules.append(rule)
    alerting = extra.get("alerting", {})
    external_url = "http://127.0.0.1:8050"
    rca_inhibition = True
    if not isinstance(alerting, dict):
        errors.add(f"alerting: expected a table ([alerting]), got {type(alerting).__name__}")
    else:
        unknown = [k for k in alerting if k not in ("external_url", "rca_inhibition")]
        if unknown:
            errors.add(
                f"alerting: unknown key {', '.join(map(repr, unknown))}; expected external_url or rca_inhibition"
            )
        value = alerting.get("external_url", external_url)
        if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https"):
            errors.add(f"alerting.external_url: expected an http(s) URL, got {value!r}")
        else:
            external_url = value.rstrip("/")
        rca_inhibition = alerting.get("rca_inhibition", True)
        if not isinstance(rca_inhibition, bool):
            errors.add(f"alerting.rca_inhibition: expected true or false, got {rca_inhibition!r}")
            rca_inhibition = True
    if errors.items:
        raise AlertConfigError(errors.items)
    return AlertingConfig(
        receivers=receivers,
        routes=tuple(routes),
        external_url=external_url,
        inhibit_rules=tuple(rules),
        rca_inhibition=rca_inhibition,
    )


def check_config(path: str | Path) -> tuple[list[str], dict[str, int]]:
    """Validate a whole ``rootwise.toml``: server/ingest/scrape, ``[capacity]``, ``[[slos]]``, receivers, routes.

    Returns
    -------
    tuple[list[str], dict[str, int]]
        The problems found (empty when the file is valid) and what it defines (counts per section).
    """
    from app.capacity import CapacityConfigError, settings_from_config
    from detectors.burn_rate import SloConfigError, slos_from_config

    try:
        config, problems = parse_config(path)
    except ConfigError as exc:  # the file itself: not found, not TOML
        return [str(exc)], {}
    # every problem at once: those of server/ingest/scrape (already naming the file), then the other tables'
    errors: list[str] = []
    counts = {"scrape": len(config.scrape)}
    try:
        settings_from_config(config.extra)
        counts["capacity"] = int("capacity" in config.extra)
    except (CapacityConfigError, ValueError, TypeError) as exc:
        errors.append(str(exc))
    try:
        counts["slos"] = len(slos_from_config(config.extra))
    except (SloConfigError, ValueError, TypeError) as exc:
        errors.append(str(exc))
    from app.auth import auth_from_config
    from app.scheduler import report_receiver_errors, scheduler_settings

    try:
        auth_from_config(config.extra)
        counts["app"] = int("app" in config.extra)
    except ConfigError as exc:
        errors.append(str(exc))

    schedule = None
    try:
        schedule = scheduler_settings(config.extra)
        counts["scheduler"] = int("scheduler" in config.extra)
    except ConfigError as exc:
        errors.append(str(exc))
    try:
        alerting = alerting_from_config(config.extra)
        counts["receivers"] = len(alerting.receivers)
        counts["routes"] = len(alerting.routes)
        counts["inhibit_rules"] = len(alerting.inhibit_rules)
        if schedule is not None:
            errors.extend(report_receiver_errors(schedule, alerting))
    except AlertConfigError as exc:
        errors.extend(exc.errors)
    return [*problems, *(f"{config.path}: {e}" for e in errors)], counts
