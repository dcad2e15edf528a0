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


class UnknownDetectorError(KeyError):
    """A detector name that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


def detector_class(name: str) -> type:
    """The class registered under ``name`` (imports its module now)."""
    try:
        target = DETECTORS[name]
    except KeyError:
        raise UnknownDetectorError(
            f"unknown detector {name!r}; registered: {', '.join(sorted(DETECTORS))}"
        ) from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def make_detector(name: str = DEFAULT, **params: Any) -> Any:
    """A new, unfitted detector ``name`` with keyword ``params``."""
    return detector_class(name)(**params)


def available() -> list[str]:
    """Registered names whose module imports (a missing optional dependency hides its detectors)."""
    names = []
    for name in DETECTORS:
        try:
            detector_class(name)
        except (ImportError, AttributeError):
            continue
        names.append(name)
    return names
