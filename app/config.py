"""``rootwise.toml``: loading, ``${ENV_VAR}`` substitution and validation.

Secrets are written as ``${ENV_VAR}`` and resolved at load time; a :class:`Secret` never shows its value
in ``repr``/``str``, so it cannot leak into logs or error messages.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(ValueError):
    """A configuration problem; the message names the file, the key and what was expected."""


@dataclass(frozen=True)
class Secret:
    """A secret value that never prints itself.

    Examples
    --------
    >>> s = Secret("hunter2")
    >>> str(s), repr(s), s.reveal()
    ('***', 'Secret(***)', 'hunter2')
    """

    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return "***"

    def __repr__(self) -> str:
        return "Secret(***)"


@dataclass(frozen=True)
class ScrapeConfig:
    url: str
    service: str | None = None
    interval_s: float = 15.0
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """The parts of ``rootwise.toml`` this version uses; unknown tables are kept in ``extra``."""

    path: str | None = None
    token: Secret | None = None  # bearer token for ingest and the JSON API
    tenant_attribute: str = "rootwise.tenant.id"
    max_body_bytes: int = 16 * 1024 * 1024
    scrape: tuple[ScrapeConfig, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def _resolve(value: str, where: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise ConfigError(f"{where}: environment variable {name} is not set (referenced as ${{{name}}})")
        return os.environ[name]

    return _ENV_REF.sub(sub, value)


def _expect(table: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str, default: Any) -> Any:
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, typ):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise ConfigError(f"{where}.{key}: expected {names}, got {type(value).__name__} {value!r}")
    return value


def load_config(path: str | Path | None) -> Config:
    """Load and validate a config file; ``None`` gives the defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: config file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    where = str(p)
    server = _expect(raw, "server", dict, where, {})
    ingest = _expect(raw, "ingest", dict, where, {})
    token_raw = _expect(server, "token", str, f"{where}: server", None)
    token = Secret(_resolve(token_raw, f"{where}: server.token")) if token_raw else None
    scrapes = []
    for i, item in enumerate(_expect(raw, "scrape", list, where, [])):
        w = f"{where}: scrape[{i}]"
        if not isinstance(item, dict) or "url" not in item:
            raise ConfigError(f'{w}: expected a table with at least url = "http://host:port/metrics"')
        url = _expect(item, "url", str, w, "")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{w}.url: expected an http(s) URL, got {url!r}")
        labels = _expect(item, "labels", dict, w, {})
        scrapes.append(
            ScrapeConfig(
                url=url,
                service=_expect(item, "service", str, w, None),
                interval_s=float(_expect(item, "interval_s", (int, float), w, 15.0)),
                labels={str(k): str(v) for k, v in labels.items()},
            )
        )
    max_body = _expect(ingest, "max_body_bytes", int, f"{where}: ingest", 16 * 1024 * 1024)
    if max_body <= 0:
        raise ConfigError(f"{where}: ingest.max_body_bytes: expected a positive integer, got {max_body}")
    extra = {k: v for k, v in raw.items() if k not in {"server", "ingest", "scrape"}}
    return Config(
        path=str(p),
        token=token,
        tenant_attribute=_expect(ingest, "tenant_attribute", str, f"{where}: ingest", "rootwise.tenant.id"),
        max_body_bytes=max_body,
        scrape=tuple(scrapes),
        extra=extra,
    )
