"""Lazy registry of forecasters: name → ``"module:Class"`` (STYLE.md rule 3).

Nothing heavy is imported until a forecaster is made: Prophet and statsmodels load only with the family that
uses them.

Examples
--------
>>> f = make_forecaster("naive", season=168)
>>> type(f).__name__, f.season, f.name
('SeasonalNaive', 168, 'naive')
"""

from __future__ import annotations

import importlib
from typing import Any

FORECASTERS: dict[str, str] = {
    "naive": "detectors.forecast_naive:SeasonalNaive",
    "mstl": "detectors.forecast_mstl:MstlForecaster",
    "ets": "detectors.forecast_ets:EtsForecaster",
    "arima": "detectors.forecast_arima:ArimaForecaster",
    "prophet": "detectors.forecast_prophet:ProphetForecaster",
    "auto": "detectors.forecast_auto:AutoForecaster",
}

DEFAULT = "auto"


class UnknownForecasterError(KeyError):
    """A forecaster name that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


def forecaster_class(name: str) -> type:
    """The class registered under ``name`` (imports its module now)."""
    try:
        target = FORECASTERS[name]
    except KeyError:
        raise UnknownForecasterError(
            f"unknown forecaster {name!r}; registered: {', '.join(sorted(FORECASTERS))}"
        ) from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def make_forecaster(name: str = DEFAULT, **params: Any) -> Any:
    """A new, unfitted forecaster ``name`` with keyword ``params``."""
    return forecaster_class(name)(**params)


def available() -> list[str]:
    """Registered names whose module imports (a missing optional dependency hides its forecaster)."""
    names = []
    for name in FORECASTERS:
        try:
            forecaster_class(name)
        except (ImportError, AttributeError):
            continue
        names.append(name)
    return names
