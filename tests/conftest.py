"""Shared fixtures: a real DuckDB file on disk per test."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.fixture
def serve_process():
    """Start `rootwise serve` in a subprocess on a free loopback port: ``start(db, *args, env=None)``.

    Returns ``(base_url, process)`` once the server printed its listening line; any process still running at
    the end of the test is killed.
    """
    procs: list[subprocess.Popen] = []

    def start(db: Path, *args: str, env: dict[str, str] | None = None) -> tuple[str, subprocess.Popen]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--db", str(db), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        procs.append(proc)
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("Rootwise listening on http://127.0.0.1:"):
            proc.kill()
            raise RuntimeError(f"rootwise serve did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
        return line.split(" on ", 1)[1].strip(), proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
