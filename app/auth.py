"""Who may see the app and who may act in it: ``[app]`` of ``rootwise.toml``.

Three modes:

* ``auth = "none"`` (default) — anyone who reaches the port sees and acts (a laptop, the demo).
* ``auth = "basic"`` — HTTP basic auth against ``[[app.users]]`` (``name``, ``password = "${ENV_VAR}"``, ``role``).
* ``auth = "header"`` — a trusted SSO proxy in front sets ``user_header`` (e.g. ``X-Forwarded-User``); requests
  without it are refused. Only run this behind a proxy that strips the header from client requests.

Roles: ``viewer`` sees everything; ``responder`` may also act — acknowledge/resolve/reopen, run RCA, create or
expire silences, send test notifications. Pages call :func:`can_respond` in every action callback and show a
viewer those controls disabled (:func:`action_props`). The telemetry endpoints (``/v1/*``), ``/api/v1/*``
(bearer token, ``[server] token``) and the probes (``/healthz``, ``/readyz``, ``/metrics``) are not behind this
check.

Example::

    [app]
    auth = "basic"
    [[app.users]]
    name = "alice"
    password = "${ROOTWISE_ALICE_PASSWORD}"
    role = "responder"
    [[app.users]]
    name = "viewer"
    password = "${ROOTWISE_VIEWER_PASSWORD}"
    role = "viewer"
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import flask

from app.config import ConfigError, Secret, _resolve

MODES = ("none", "basic", "header")
ROLES = ("viewer", "responder")
OPEN_PREFIXES = ("/v1/", "/api/v1/", "/healthz", "/readyz", "/metrics")
_EXTENSION = "rootwise_auth"


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def responder(self) -> bool:
        return self.role == "responder"


@dataclass(frozen=True)
class AuthConfig:
    mode: str = "none"
    users: Mapping[str, tuple[Secret, str]] = field(default_factory=dict)  # name → (password, role)
    user_header: str = "X-Forwarded-User"
    responders: frozenset[str] = frozenset()
    header_default_role: str = "viewer"


def auth_from_config(extra: Mapping[str, Any]) -> AuthConfig:
    """``[app]`` → :class:`AuthConfig`; raises :class:`ConfigError` naming the key (never a password)."""
    table = extra.get("app", {})
    if not isinstance(table, dict):
        raise ConfigError(f"app: expected a table ([app]), got {type(table).__name__}")
    allowed = ("auth", "users", "user_header", "responders", "header_default_role")
    unknown = [k for k in table if k not in allowed]
    if unknown:
        raise ConfigError(
            f"app: unknown key {', '.join(map(repr, unknown))}; expected one of {', '.join(allowed)}"
        )
    mode = table.get("auth", "none")
    if mode not in MODES:
        raise ConfigError(f"app.auth: expected one of {', '.join(MODES)}, got {mode!r}")
    users: dict[str, tuple[Secret, str]] = {}
    raw_users = table.get("users", [])
    if not isinstance(raw_users, list):
        raise ConfigError("app.users: expected an array of tables ([[app.users]])")
    for i, u in enumerate(raw_users):
        where = f"app.users[{i}]"
        if not isinstance(u, dict):
            raise ConfigError(f"{where}: expected a table")
        name, password, role = u.get("name"), u.get("password"), u.get("role", "viewer")
        if not isinstance(name, str) or not name or ":" in name:
            raise ConfigError(f"{where}.name: expected a user name without ':'")
        if not isinstance(password, str) or "${" not in password:
            raise ConfigError(f'{where}.password: write it as "${{ENV_VAR}}", not inline')
        resolved = _resolve(password, f"{where}.password")
        if len(resolved) < 8:
            raise ConfigError(f"{where}.password: the environment variable must hold at least 8 characters")
        if role not in ROLES:
            raise ConfigError(f"{where}.role: expected viewer or responder, got {role!r}")
        users[name] = (Secret(resolved), role)
    if mode == "basic" and not users:
        raise ConfigError('app.users: auth = "basic" needs at least one [[app.users]]')
    header = table.get("user_header", "X-Forwarded-User")
    if not isinstance(header, str) or not header:
        raise ConfigError("app.user_header: expected a header name")
    responders = table.get("responders", [])
    if not isinstance(responders, list) or not all(isinstance(r, str) for r in responders):
        raise ConfigError("app.responders: expected an array of user names")
    default_role = table.get("header_default_role", "viewer")
    if default_role not in ROLES:
        raise ConfigError(f"app.header_default_role: expected viewer or responder, got {default_role!r}")
    return AuthConfig(mode, users, header, frozenset(responders), default_role)


def _challenge() -> flask.Response:
    return flask.Response(
        "authentication required\n",
        status=401,
        headers={"WWW-Authenticate": 'Basic realm="Rootwise", charset="UTF-8"'},
        content_type="text/plain",
    )


def _basic_user(config: AuthConfig) -> User | None:
    header = flask.request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return None
    try:
        name, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    entry = config.users.get(name)
    # compare even for an unknown user, so timing does not tell which names exist
    expected, role = entry if entry else (Secret("\0" * 16), "viewer")
    ok = hmac.compare_digest(password.encode(), expected.reveal().encode())
    return User(name, role) if ok and entry else None


def install(server: flask.Flask, config: AuthConfig) -> None:
    """Guard every app route of ``server`` according to ``config`` (see the module docstring)."""
    server.extensions[_EXTENSION] = config
    if config.mode == "none":
        return

    @server.before_request
    def guard() -> flask.Response | None:
        path = flask.request.path
        if path.startswith(OPEN_PREFIXES):
            return None
        if config.mode == "basic":
            user = _basic_user(config)
            if user is None:
                return _challenge()
        else:
            name = flask.request.headers.get(config.user_header, "").strip()
            if not name:
                return flask.Response("no user from the SSO proxy\n", status=401, content_type="text/plain")
            role = "responder" if name in config.responders else config.header_default_role
            user = User(name[:200], role)
        flask.g.rootwise_user = user
        return None


def current_user() -> User | None:
    """The signed-in user of this request (None when auth is off)."""
    return flask.g.get("rootwise_user") if flask.has_request_context() else None


def can_respond() -> bool:
    """Whether this request may act (ack, resolve, silence, send test): always with auth off."""
    config = flask.current_app.extensions.get(_EXTENSION) if flask.has_app_context() else None
    if config is None or config.mode == "none":
        return True
    user = current_user()
    return user is not None and user.responder


#: the tooltip of a control a viewer sees but may not use
VIEWER_TITLE = "Needs the responder role: you are signed in as a viewer."


def action_props() -> dict[str, Any]:
    """The props of a button that acts (acknowledge, run RCA, create a silence, ...): for a viewer, disabled and
    titled with why; nothing for a responder.

    Only what the page shows: the action's callback still checks :func:`can_respond` (a viewer's browser can
    send the click anyway).
    """
    return {} if can_respond() else {"disabled": True, "title": VIEWER_TITLE}


def who() -> str:
    """The name to record for an action (``created_by`` of a silence): the user, or ``"anonymous"``."""
    user = current_user()
    return user.name if user else "anonymous"
