"""Lazy registry of detectors: name → ``"module:Class"`` (STYLE.md rule 3).

Nothing heavy is imported until a detector is made, so ``rootwise --help`` and the app stay fast and optional
dependencies (Prophet) are only needed by the detector that uses them.
"""

from __future__ import annotations

import importlib
from typing import Any

DETECTORS: dict[str, str] = {
    "streaming": "detectors.streaming:StreamingDetector",
    "windowed-gaussian": "detectors.streaming:WindowedGaussianDetector",
    "stl": "detectors.seasonal:StlResidualDetector",
    "ets-residual": "detectors.residual:EtsResidualDetector",
    "prophet-residual": "detectors.residual:ProphetResidualDetector",
    "cusum": "detectors.changepoint:CusumDetector",
    "bocpd": "detectors.changepoint:BocpdDetector",
    "ratio": "detectors.rates:RatioDetector",
    "isolation-forest": "detectors.multivariate:IsolationForestDetector",
    "drift": "detectors.drift:DriftDetector",
    "ensemble": "detectors.ensemble:EnsembleDetector",
}

DEFAULT = "ensemble"


class UnknownNameError(KeyError):
    """A name that is not registered (the message lists the registered ones)."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownDetectorError(UnknownNameError):
    """A detector name that is not registered."""


def load_class(table: dict[str, str], name: str, kind: str, error: type[UnknownNameError]) -> type:
    """The class ``table[name]`` names as ``"module:Class"``, imported now; ``error`` if ``name`` is unknown."""
    try:
        target = table[name]
    except KeyError:
        raise error(f"unknown {kind} {name!r}; registered: {', '.join(sorted(table))}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def importable(table: dict[str, str], kind: str) -> list[str]:
    """Registered names whose module imports (a missing optional dependency hides its entries)."""
    names = []
    for name in table:
        try:
            load_class(table, name, kind, UnknownNameError)
        except (ImportError, AttributeError):
            continue
        names.append(name)
    return names


def detector_class(name: str) -> type:
    """The class registered under ``name`` (imports its module now)."""
    return load_class(DETECTORS, name, "detector", UnknownDetectorError)


def make_detector(name: str = DEFAULT, **params: Any) -> Any:
    """A new, unfitted detector ``name`` with keyword ``params``."""
    return detector_class(name)(**params)


def available() -> list[str]:
    """Registered names whose module imports (a missing optional dependency hides its detectors)."""
    return importable(DETECTORS, "detector")
