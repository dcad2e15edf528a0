"""OpenTelemetry GenAI semantic conventions: old and new attribute names to one canonical form.

The GenAI conventions renamed several attributes while instrumentations kept emitting the old names
(semantic-conventions v1.36 and earlier, then the ``gen_ai_latest_experimental`` opt-in; the conventions now live
in the ``open-telemetry/semantic-conventions-genai`` repository). Rootwise accepts both and stores one form:

=============  ====================================================  ==========================================
canonical      new name                                              old name (deprecated)
=============  ====================================================  ==========================================
``model``      ``gen_ai.request.model``                              falls back to ``gen_ai.response.model``
``provider``   ``gen_ai.provider.name``                              ``gen_ai.system`` (values mapped, see below)
``operation``  ``gen_ai.operation.name``                             (unchanged)
``token_type`` ``gen_ai.token.type`` (``input`` / ``output``)        value ``completion`` -> ``output``
``tenant``     the configured tenant attribute                       ``tenant``
input tokens   ``gen_ai.usage.input_tokens``                         ``gen_ai.usage.prompt_tokens``
output tokens  ``gen_ai.usage.output_tokens``                        ``gen_ai.usage.completion_tokens``
TTFT           ``gen_ai.response.time_to_first_chunk`` (s)           ``gen_ai.server.time_to_first_token`` (s)
               or a span event named in :data:`FIRST_TOKEN_EVENTS`
=============  ====================================================  ==========================================

Metric labels (:func:`canonical_labels`): the mapped ``gen_ai.*`` keys are *replaced* by their canonical label,
so a sender on the old names and one on the new names produce the same series; every other attribute,
including unmapped ``gen_ai.*`` ones such as ``gen_ai.request.temperature``, is kept as-is.
``gen_ai.response.model`` is kept unless it was used as ``model`` (it then names the served model version).

What is queryable after ingest
------------------------------
- The GenAI metrics keep their names: ``gen_ai.client.token.usage`` (histogram, ``{token}``, one series per
  ``token_type``), ``gen_ai.client.operation.duration``, ``gen_ai.server.request.duration``,
  ``gen_ai.server.time_to_first_token`` and ``gen_ai.server.time_per_output_token`` (histograms in seconds;
  p50/p95/p99 are computed from the stored buckets), each with labels ``model``, ``provider``, ``operation``,
  ``tenant`` and whatever else the sender attached (``server.address``, ``error.type``...).
- Spans get the columns ``tenant``, ``model``, ``provider``, ``operation``, ``input_tokens``,
  ``output_tokens`` and ``ttft`` (milliseconds) from :func:`span_columns`; their ``attributes`` column keeps
  the raw attributes unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DEFAULT_TENANT_ATTRIBUTE = "rootwise.tenant.id"

# gen_ai.system values renamed when gen_ai.provider.name replaced it (semconv GenAiSystemValues, "Deprecated:
# Replaced by ..." notes)
OLD_PROVIDER_VALUES = {
    "az.ai.inference": "azure.ai.inference",
    "az.ai.openai": "azure.ai.openai",
    "vertex_ai": "gcp.vertex_ai",
    "gemini": "gcp.gemini",
    "xai": "x_ai",
}
# gen_ai.token.type: ``completion`` was deprecated in favour of ``output``
OLD_TOKEN_TYPES = {"completion": "output", "prompt": "input"}

#: span events whose time marks the first generated token (no semantic convention names one; these are the
#: names instrumentations commonly use)
FIRST_TOKEN_EVENTS = frozenset({"gen_ai.first_token", "gen_ai.first_chunk", "first_token", "first_chunk"})

_MAPPED = (
    "gen_ai.request.model",
    "gen_ai.provider.name",
    "gen_ai.system",
    "gen_ai.operation.name",
    "gen_ai.token.type",
)


def canonical_labels(
    attrs: Mapping[str, str], tenant_attribute: str = DEFAULT_TENANT_ATTRIBUTE
) -> dict[str, str]:
    """Metric labels with the GenAI and tenant attributes under their canonical names.

    Parameters
    ----------
    attrs
        Point attributes merged with resource attributes, values already strings.
    tenant_attribute
        Attribute naming the tenant; ``tenant`` is the fallback.

    Examples
    --------
    >>> old = {"gen_ai.system": "az.ai.openai", "gen_ai.request.model": "gpt-4o", "gen_ai.token.type": "completion"}
    >>> new = {"gen_ai.provider.name": "azure.ai.openai", "gen_ai.request.model": "gpt-4o",
    ...        "gen_ai.token.type": "output"}
    >>> canonical_labels(old) == canonical_labels(new)
    True
    >>> canonical_labels(new)
    {'model': 'gpt-4o', 'provider': 'azure.ai.openai', 'token_type': 'output'}
    """
    if (
        not any(k in attrs for k in _MAPPED)
        and tenant_attribute not in attrs
        and "gen_ai.response.model" not in attrs
    ):
        return dict(attrs)
    out = dict(attrs)
    tenant = out.pop(tenant_attribute, None)
    if tenant:
        out["tenant"] = tenant
    model = out.pop("gen_ai.request.model", None)
    if not model:
        model = out.pop("gen_ai.response.model", None)
    if model:
        out["model"] = model
    provider = out.pop("gen_ai.provider.name", None)
    system = out.pop("gen_ai.system", None)
    if not provider and system:
        provider = OLD_PROVIDER_VALUES.get(system, system)
    if provider:
        out["provider"] = provider
    operation = out.pop("gen_ai.operation.name", None)
    if operation:
        out["operation"] = operation
    token_type = out.pop("gen_ai.token.type", None)
    if token_type:
        out["token_type"] = OLD_TOKEN_TYPES.get(token_type, token_type)
    return out


@dataclass(frozen=True)
class SpanGenAI:
    """The GenAI and tenant columns of one span (``None`` when the span does not carry them)."""

    tenant: str | None = None
    model: str | None = None
    provider: str | None = None
    operation: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    ttft: float | None = None  # milliseconds


def _first(attrs: Mapping[str, str], *keys: str) -> str | None:
    for k in keys:
        v = attrs.get(k)
        if v:
            return v
    return None


def _count(value: str | None) -> int | None:
    """A token count from an attribute string (``"12"``; ``"12.0"`` from senders that use doubles)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        try:
            f = float(value)
        except ValueError:
            return None
        return int(f) if math.isfinite(f) and f >= 0 else None


def _seconds_to_ms(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        f = float(value)
    except ValueError:
        return None
    return f * 1000.0 if math.isfinite(f) and f >= 0 else None


def span_columns(
    attrs: Mapping[str, str],
    resource: Mapping[str, str],
    *,
    start_ns: int = 0,
    events: Iterable[tuple[int, str]] = (),
    tenant_attribute: str = DEFAULT_TENANT_ATTRIBUTE,
) -> SpanGenAI:
    """Extract the promoted span columns from span attributes (resource attributes as fallback).

    Parameters
    ----------
    attrs, resource
        Span and resource attributes as strings.
    start_ns
        Span start, used with ``events`` to derive TTFT from a first-token event.
    events
        ``(time_unix_nano, name)`` of the span's events.
    tenant_attribute
        Attribute naming the tenant; ``tenant`` is the fallback.

    Examples
    --------
    >>> c = span_columns({"gen_ai.system": "openai", "gen_ai.usage.prompt_tokens": "12",
    ...                   "gen_ai.response.time_to_first_chunk": "0.25"}, {"rootwise.tenant.id": "acme"})
    >>> (c.provider, c.input_tokens, c.ttft, c.tenant)
    ('openai', 12, 250.0, 'acme')
    """
    tenant = _first(attrs, tenant_attribute, "tenant") or _first(resource, tenant_attribute, "tenant")
    provider = attrs.get("gen_ai.provider.name") or None
    if provider is None:
        system = attrs.get("gen_ai.system")
        provider = OLD_PROVIDER_VALUES.get(system, system) if system else None
    ttft = _seconds_to_ms(
        _first(attrs, "gen_ai.response.time_to_first_chunk", "gen_ai.server.time_to_first_token")
    )
    if ttft is None and start_ns:
        first = [ts for ts, name in events if name in FIRST_TOKEN_EVENTS and ts >= start_ns]
        if first:
            ttft = (min(first) - start_ns) / 1e6
    return SpanGenAI(
        tenant=tenant,
        model=_first(attrs, "gen_ai.request.model", "gen_ai.response.model"),
        provider=provider,
        operation=attrs.get("gen_ai.operation.name") or None,
        input_tokens=_count(_first(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")),
        output_tokens=_count(_first(attrs, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")),
        ttft=ttft,
    )
