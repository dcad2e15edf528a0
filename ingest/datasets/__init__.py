"""Adapters that turn public RCA benchmark data sets into Rootwise frames.

Each adapter yields cases whose telemetry has the columns of :mod:`ingest.schema` (so it can be written to a
store or wrapped in :class:`rca.base.FrameView`) and whose ground truth is a separate object: the analysers
never see the labels.
"""

from pathlib import Path


class DatasetFormatError(ValueError):
    """A benchmark file that cannot be used; the message names the file and, where it applies, line (1 is the
    header) and column."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
