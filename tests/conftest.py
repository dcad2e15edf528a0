"""Shared fixtures: a real DuckDB file on disk per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.store import Store

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "rootwise.duckdb")
    yield s
    s.close()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"shared data folder missing: {SHARED_DATA}")
    return SHARED_DATA
