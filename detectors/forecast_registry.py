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

from typing import Any

from detectors.registry import UnknownNameError, importable, load_class

FORECASTERS: dict[str, str] = {
    "naive": "detectors.forecast_naive:SeasonalNaive",
    "mstl": "detectors.forecast_mstl:MstlForecaster",
    "ets": "detectors.forecast_ets:EtsForecaster",
    "arima": "detectors.forecast_arima:ArimaForecaster",
    "prophet": "detectors.forecast_prophet:ProphetForecaster",
    "auto": "detectors.forecast_auto:AutoForecaster",
    "trend": "detectors.forecast_trend:TrendForecaster",
}

DEFAULT = "auto"


class UnknownForecasterError(UnknownNameError):
    """A forecaster name that is not registered."""


def forecaster_class(name: str) -> type:
    """The class registered under ``name`` (imports its module now)."""
    return load_class(FORECASTERS, name, "forecaster", UnknownForecasterError)


def make_forecaster(name: str = DEFAULT, **params: Any) -> Any:
    """A new, unfitted forecaster ``name`` with keyword ``params``."""
    return forecaster_class(name)(**params)


def available() -> list[str]:
    """Registered names whose module imports (a missing optional dependency hides its forecaster)."""
    return importable(FORECASTERS, "forecaster")
