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
    """A configuration problem; the message names the file, the key and what was expected. ``problems`` lists
    each one when a file has several (the message is then one per line)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


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


#: the top-level tables of ``rootwise.toml``: this module's, and those the other readers of ``Config.extra`` take
TABLES = frozenset(
    {
        "server",
        "ingest",
        "scrape",
        "capacity",
        "slos",
        "app",
        "scheduler",
        "alerting",
        "receivers",
        "routes",
        "inhibit_rules",
    }
)
_SERVER_KEYS = frozenset({"token"})
_INGEST_KEYS = frozenset({"tenant_attribute", "max_body_bytes"})
_SCRAPE_KEYS = frozenset({"url", "service", "interval_s", "labels"})


def _known(table: dict[str, Any], keys: frozenset[str], where: str, what: str = "key") -> None:
    """A misspelt key is an error, not a silently ignored setting (``tokn`` would leave the API open)."""
    unknown = sorted(set(table) - keys)
    if unknown:
        named = ", ".join(repr(k) for k in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise ConfigError(
            f"{where}: unknown {what}{plural} {named}; expected one of {', '.join(sorted(keys))}"
        )


def load_config(path: str | Path | None) -> Config:
    """Load and validate a config file; ``None`` gives the defaults. Every problem of the server, ingest and
    scrape settings is reported at once (:class:`ConfigError`'s ``problems``), not only the first."""
    if path is None:
        return Config()
    config, problems = parse_config(path)
    if problems:
        raise ConfigError("\n".join(problems), problems)
    return config


def parse_config(path: str | Path) -> tuple[Config, list[str]]:
    """The config of ``path`` and the problems of its server, ingest and scrape settings (a setting with a problem
    keeps its default, so the other tables in ``extra`` can still be checked: ``rootwise config check``).

    Raises :class:`ConfigError` when the file itself cannot be read as TOML."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: config file not found") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{p}: is a directory, expected a rootwise.toml file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the config file: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    where = str(p)
    problems: list[str] = []

    def checked(check: Any, *args: Any, default: Any = None) -> Any:
        try:
            return check(*args)
        except ConfigError as exc:
            problems.append(str(exc))
            return default

    checked(_known, raw, TABLES, where, "table")
    server = checked(_expect, raw, "server", dict, where, {}, default={})
    ingest = checked(_expect, raw, "ingest", dict, where, {}, default={})
    checked(_known, server, _SERVER_KEYS, f"{where}: server")
    checked(_known, ingest, _INGEST_KEYS, f"{where}: ingest")
    token = checked(_token, server, where)
    scrapes = [
        s
        for i, item in enumerate(checked(_expect, raw, "scrape", list, where, [], default=[]))
        if (s := checked(_scrape, item, f"{where}: scrape[{i}]")) is not None
    ]
    # a setting with a problem keeps the default of Config (one place for each default)
    max_body = checked(_max_body, ingest, where, default=Config.max_body_bytes)
    tenant = checked(
        _expect,
        ingest,
        "tenant_attribute",
        str,
        f"{where}: ingest",
        Config.tenant_attribute,
        default=Config.tenant_attribute,
    )
    extra = {k: v for k, v in raw.items() if k not in {"server", "ingest", "scrape"}}
    config = Config(
        path=str(p),
        token=token,
        tenant_attribute=tenant,
        max_body_bytes=max_body,
        scrape=tuple(scrapes),
        extra=extra,
    )
    return config, problems


def _token(server: dict[str, Any], where: str) -> Secret | None:
    token_raw = _expect(server, "token", str, f"{where}: server", None)
    if token_raw is not None and not _ENV_REF.search(token_raw):
        # DESIGN.md: secrets live in the environment, not in the file (the value itself is never echoed)
        raise ConfigError(
            f'{where}: server.token: write secrets as "${{ENV_VAR}}" references, not inline values'
        )
    return Secret(_resolve(token_raw, f"{where}: server.token")) if token_raw else None


def _scrape(item: Any, w: str) -> ScrapeConfig:
    if not isinstance(item, dict) or "url" not in item:
        raise ConfigError(f'{w}: expected a table with at least url = "http://host:port/metrics"')
    _known(item, _SCRAPE_KEYS, w)
    url = _expect(item, "url", str, w, "")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{w}.url: expected an http(s) URL, got {url!r}")
    labels = _expect(item, "labels", dict, w, {})
    interval = float(_expect(item, "interval_s", (int, float), w, 15.0))
    if not interval > 0 or interval == float("inf"):
        raise ConfigError(f"{w}.interval_s: expected a positive number of seconds, got {interval:g}")
    return ScrapeConfig(
        url=url,
        service=_expect(item, "service", str, w, None),
        interval_s=interval,
        labels={str(k): str(v) for k, v in labels.items()},
    )


def _max_body(ingest: dict[str, Any], where: str) -> int:
    max_body = _expect(ingest, "max_body_bytes", int, f"{where}: ingest", Config.max_body_bytes)
    if max_body <= 0:
        raise ConfigError(f"{where}: ingest.max_body_bytes: expected a positive integer, got {max_body}")
    return max_body
