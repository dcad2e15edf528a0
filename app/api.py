"""The JSON API of ``rootwise serve`` (``/api/v1/…``): what the CLI and other tools use while the server owns
the DuckDB file.

* ``GET /api/v1/incidents?status=&service=&limit=`` — as ``rootwise incidents --format json``.
* ``GET /api/v1/alerts/log?incident_id=&receiver=&status=&limit=`` — the delivery log (no payloads, no secrets).
* ``GET /api/v1/alerts/holds`` — incidents whose notifications are held (silence, inhibit, rca), by id.
* ``GET /api/v1/silences`` · ``POST /api/v1/silences`` (``{"matchers": ["service=\\"api\\""], "duration": "2h",
  "comment": "…", "created_by": "…"}``) · ``DELETE /api/v1/silences/<id>`` (expire).

With ``[server] token`` set, every request needs ``Authorization: Bearer <token>`` (compared in constant time),
as the OTLP endpoints do. Bodies are limited to 64 KiB; errors are ``{"error": "…"}`` with 400/401/404.
"""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime
from typing import Any

import flask

from ingest.store import Store

MAX_BODY = 64 * 1024
MAX_LIMIT = 1000


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _json(body: Any, status: int = 200) -> flask.Response:
    return flask.Response(json.dumps(body, default=str), status=status, content_type="application/json")


def _limit(default: int) -> int:
    raw = flask.request.args.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        flask.abort(_json({"error": f"limit: expected an integer from 1 to {MAX_LIMIT}, got {raw!r}"}, 400))
    return int(raw)


def api_blueprint(store: Store, *, token: str | None = None) -> flask.Blueprint:
    from app.alerts import silences as sil
    from app.alerts.config import parse_duration
    from ingest import alerts_store
    from ingest.results import list_incidents

    bp = flask.Blueprint("rootwise_api", __name__, url_prefix="/api/v1")

    @bp.before_request
    def authenticate() -> flask.Response | None:
        if token is None:
            return None
        header = flask.request.headers.get("Authorization", "")
        given = header.removeprefix("Bearer ").encode() if header.startswith("Bearer ") else b""
        if not hmac.compare_digest(given, token.encode()):
            return _json({"error": "missing or wrong bearer token"}, 401)
        return None

    @bp.get("/incidents")
    def incidents() -> flask.Response:
        args = flask.request.args
        status = args.get("status")
        if status not in (None, "open", "acknowledged", "resolved"):
            return _json({"error": f"status: expected open, acknowledged or resolved, got {status!r}"}, 400)
        return _json(list_incidents(store, status=status, service=args.get("service"), limit=_limit(200)))

    @bp.get("/alerts/log")
    def alert_log() -> flask.Response:
        args = flask.request.args
        return _json(
            alerts_store.delivery_log(
                store,
                incident_id=args.get("incident_id"),
                receiver=args.get("receiver"),
                status=args.get("status"),
                limit=_limit(200),
            )
        )

    @bp.get("/alerts/holds")
    def holds() -> flask.Response:
        return _json(alerts_store.holds(store))

    @bp.get("/silences")
    def list_silences() -> flask.Response:
        now = _now()
        return _json([s.to_dict(now) for s in sil.silences_from_rows(alerts_store.silence_rows(store))])

    @bp.post("/silences")
    def create_silence() -> flask.Response:
        if (flask.request.content_length or 0) > MAX_BODY:
            return _json({"error": f"body larger than {MAX_BODY} bytes"}, 413)
        body = flask.request.get_json(silent=True)
        if not isinstance(body, dict):
            return _json({"error": "expected a JSON object with matchers and duration"}, 400)
        try:
            duration = parse_duration(str(body.get("duration", "")))
            created = add_silence(
                store,
                body.get("matchers") or [],
                duration=duration,
                created_by=str(body.get("created_by", "")),
                comment=str(body.get("comment", "")),
            )
        except ValueError as exc:  # SilenceError and bad durations
            return _json({"error": str(exc)}, 400)
        return _json(created.to_dict(_now()), 201)

    @bp.delete("/silences/<silence_id>")
    def expire(silence_id: str) -> flask.Response:
        if not alerts_store.expire_silence(store, silence_id, now=_now()):
            return _json({"error": f"no active silence {silence_id!r}"}, 404)
        return _json({"id": silence_id, "expired": True})

    return bp


def add_silence(
    store: Store,
    matchers: list[Any],
    *,
    duration: Any,
    created_by: str = "",
    comment: str = "",
    now: datetime | None = None,
) -> Any:
    """Validate and store a new silence (the API, the CLI and the app's Alerts page all create them here)."""
    from app.alerts.silences import new_silence
    from ingest import alerts_store

    now = now or _now()
    s = new_silence(matchers, now=now, duration=duration, created_by=created_by, comment=comment)
    alerts_store.add_silence(
        store,
        silence_id=s.id,
        matchers_json=json.dumps([m.to_dict() for m in s.matchers]),
        starts_at=s.starts_at,
        ends_at=s.ends_at,
        created_by=s.created_by,
        comment=s.comment,
        created=now,
    )
    return s
