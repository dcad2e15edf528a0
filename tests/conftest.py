"""Shared fixtures: a real DuckDB file on disk per test."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.store import Store

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# compiled loops (detectors/compiled.py) check every index under test: an out-of-bounds access raises
# IndexError instead of reading or writing past an array. The checked code gets its own cache folder, apart
# from the unchecked code used outside the tests (servers the tests start inherit both settings)
os.environ.setdefault("NUMBA_BOUNDSCHECK", "1")
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "numba"))


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


class Drained:
    """What a child process wrote to one of its pipes, read continuously by a thread.

    A server whose stderr nobody reads blocks once the pipe's buffer (64 KB) is full: its scheduler then stops in
    the middle of a log line and a test waits for a page that never comes. ``read()`` returns everything written
    so far (all of it once the process has exited), like reading the pipe after the end.
    """

    def __init__(self, pipe: Any) -> None:
        self._pipe, self._parts = pipe, []
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        for line in iter(self._pipe.readline, ""):
            self._parts.append(line)

    def read(self) -> str:
        self._thread.join(timeout=5)
        return "".join(self._parts)

    def close(self) -> None:
        self._pipe.close()


@pytest.fixture
def serve_process():
    """Start `rootwise serve` in a subprocess on a free loopback port: ``start(db, *args, env=None,
    scheduler=False)`` (``scheduler=True`` runs detection, RCA and alerting as ``serve`` does by default).

    Returns ``(base_url, process)`` once the server printed its listening line; any process still running at
    the end of the test is killed.
    """
    procs: list[subprocess.Popen] = []

    def start(
        db: Path, *args: str, env: dict[str, str] | None = None, scheduler: bool = False
    ) -> tuple[str, subprocess.Popen]:
        # tests of the app and the receiver do not want detection passes changing the store under them
        extra = () if scheduler else ("--no-scheduler",)
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--db", str(db), "--port", "0", *args, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        procs.append(proc)
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("Rootwise listening on http://127.0.0.1:"):
            proc.kill()
            raise RuntimeError(
                f"rootwise serve did not start: {line}{proc.stderr.read() if proc.stderr else ''}"
            )
        # both pipes are drained from now on (see Drained); ``proc.stderr.read()`` still gives what was logged
        proc.stdout, proc.stderr = Drained(proc.stdout), Drained(proc.stderr)  # type: ignore[assignment]

        def communicate(input: Any = None, timeout: float | None = None) -> tuple[str, str]:  # noqa: A002
            proc.wait(timeout)
            return proc.stdout.read(), proc.stderr.read()

        proc.communicate = communicate  # type: ignore[method-assign]
        return line.split(" on ", 1)[1].strip(), proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser_page():
    """A 1366x768 page of Debian's headless Chromium (Playwright never downloads a browser).

    It records console errors, page errors and HTTP responses >= 500 in ``page.errors`` and every dialog (an
    injected ``alert()`` would open one) in ``page.dialogs``, dismissing it; downloads are accepted.
    """
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1366, "height": 768}, accept_downloads=True)
        pg = context.new_page()
        errors: list[str] = []
        dialogs: list[str] = []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 500 else None)

        def on_dialog(d):
            dialogs.append(d.message)
            d.dismiss()

        pg.on("dialog", on_dialog)
        pg.errors, pg.dialogs, pg.context_ = errors, dialogs, context  # type: ignore[attr-defined]
        yield pg
        browser.close()


@pytest.fixture
def screenshot(tmp_path):
    """``screenshot(page, name)``: a full-page screenshot kept as a test artifact (in ``tmp_path``, and in
    ``$ROOTWISE_SCREENSHOTS`` when set)."""

    def save(page, name: str) -> None:
        page.screenshot(path=str(tmp_path / name), full_page=True)
        if os.environ.get("ROOTWISE_SCREENSHOTS"):
            page.screenshot(path=os.path.join(os.environ["ROOTWISE_SCREENSHOTS"], name), full_page=True)

    return save


@pytest.fixture
def receiver() -> Iterator[Any]:
    """A real HTTP receiver on 127.0.0.1 (``alerting_support.Receiver``) for alert deliveries."""
    from alerting_support import Receiver

    r = Receiver().start()
    yield r
    r.stop()
