"""The Rootwise HTTP server process: OTLP receiver (and, through ``mount``, the app) on waitress.

Shutdown on SIGTERM or SIGINT: stop accepting connections, let requests in flight finish and their replies
go out, flush the write queue, checkpoint and close the DuckDB file, return (exit status 0).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

import flask
from waitress import wasyncore
from waitress.server import create_server

from app.receiver import MAX_BODY_BYTES, otlp_blueprint
from ingest.batch import TelemetryBatch
from ingest.genai import DEFAULT_TENANT_ATTRIBUTE
from ingest.procs import exit_with_parent
from ingest.scrape import Scraper, ScrapeTarget
from ingest.store import Store
from ingest.writer import BatchWriter, QueueFull

#: seconds SIGTERM waits for requests in flight (their commit included) before closing connections
DRAIN_SECONDS = 20.0


class ServeError(RuntimeError):
    """The server could not start (e.g. its port is taken); the message says why."""


class _InFlight:
    """WSGI middleware counting requests whose response has not been fully produced yet."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        with self._lock:
            self.count += 1
        try:
            body = self.app(environ, start_response)
        except BaseException:
            self._done()
            raise
        return _Closing(body, self._done)

    def _done(self) -> None:
        with self._lock:
            self.count -= 1


class _Closing:
    """A response iterable that reports when the server closes it (the response is complete)."""

    def __init__(self, body: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self.body = body
        self.on_close = on_close

    def __iter__(self):
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.on_close()


def create_server_app(
    store: Store,
    *,
    token: str | None = None,
    tenant_attribute: str = DEFAULT_TENANT_ATTRIBUTE,
    mount: Callable[[flask.Flask, Store], None] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    decode_pool: Executor | None = None,
) -> tuple[flask.Flask, BatchWriter]:
    """A Flask app with the OTLP receiver, and its started :class:`BatchWriter`.

    Parameters
    ----------
    store
        The open store; the caller closes it after ``writer.close()``.
    token
        Bearer token for the OTLP endpoints (``None``: no authentication).
    tenant_attribute
        Attribute naming the tenant.
    mount
        Called as ``mount(app, store)`` to attach more (``app.dashboard.mount_dashboard``: the Dash app reads
        the same store).
    """
    app = flask.Flask("rootwise")
    writer = BatchWriter(store)
    app.register_blueprint(
        otlp_blueprint(
            writer,
            token=token,
            tenant_attribute=tenant_attribute,
            max_body_bytes=max_body_bytes,
            decode_pool=decode_pool,
        )
    )
    from app.api import api_blueprint

    app.register_blueprint(api_blueprint(store, token=token))
    if mount is not None:
        mount(app, store)
    app.extensions.setdefault("rootwise_ready", [lambda: (writer.running, {"writer": writer.running})])

    @app.get("/readyz")
    def readyz() -> flask.Response:
        """503 until every part is up, and from the moment shutdown starts; the body says which part."""
        body: dict[str, Any] = {"stopping": bool(app.extensions.get("rootwise_stopping"))}
        ok = not body["stopping"]
        for check in app.extensions["rootwise_ready"]:
            part_ok, part = check()
            ok = ok and part_ok
            body.update(part)
        body["status"] = "ready" if ok else "not ready"
        return flask.Response(
            json.dumps(body, default=str), status=200 if ok else 503, content_type="application/json"
        )

    return app, writer


#: ``app.extensions[ON_STOP_KEY]``: callables run at shutdown after the scheduler and before the store closes
ON_STOP_KEY = "rootwise_on_stop"


def serve(
    db: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8050,
    token: str | None = None,
    tenant_attribute: str = DEFAULT_TENANT_ATTRIBUTE,
    mount: Callable[[flask.Flask, Store], None] | None = None,
    threads: int = 8,
    scrape: Sequence[ScrapeTarget] = (),
    scrape_interval_s: float = 15.0,
    max_body_bytes: int = MAX_BODY_BYTES,
    decode_workers: int | None = None,
    scheduler: Callable[[Store], Any] | None = None,
) -> None:
    """Open ``db``, serve the receiver (and whatever ``mount`` adds) on ``host:port`` until SIGTERM/SIGINT.

    Prints one line with the URL once listening (``port=0`` picks a free port and prints it). Must run in the
    main thread (it installs signal handlers). ``scrape`` targets are scraped every ``scrape_interval_s``
    seconds into the same writer as the OTLP receiver. OTLP bodies are decoded in ``decode_workers`` worker
    processes (default: one per core, measured best on 2 cores; 0 decodes in the request threads).
    ``scheduler(store)`` builds the :class:`app.scheduler.Scheduler` (detection, RCA, alerting, reports): it
    starts once the server listens and stops after the write queue is flushed, with a last delivery pass.
    """
    if decode_workers is None:
        decode_workers = os.cpu_count() or 1
    # spawn, not fork: this process runs threads and holds the DuckDB file
    pool = (
        ProcessPoolExecutor(
            decode_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=exit_with_parent,
            initargs=(os.getpid(),),
        )
        if decode_workers > 0
        else None
    )
    if pool is not None:
        # start every worker (imports included) now rather than on the first requests
        list(pool.map(_warm_decoder, [0.2] * decode_workers))
    store = Store(db)
    try:
        app, writer = create_server_app(
            store,
            token=token,
            tenant_attribute=tenant_attribute,
            mount=mount,
            max_body_bytes=max_body_bytes,
            decode_pool=pool,
        )
    except BaseException:
        store.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        raise
    inflight = _InFlight(app.wsgi_app)
    app.wsgi_app = inflight  # type: ignore[method-assign]
    socket_map: dict = {}
    try:
        server = create_server(
            app,
            map=socket_map,
            host=host,
            port=port,
            threads=threads,
            max_request_body_size=max_body_bytes + 1024,
            ident="rootwise",
        )
    except BaseException as exc:
        _abort(app, writer, store, pool)
        if isinstance(exc, OSError):  # the port is taken, the host is not ours
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        raise
    sched = None
    if scheduler is not None:
        try:
            sched = scheduler(store)
        except BaseException:
            server.close()
            _abort(app, writer, store, pool)
            raise
        sched.mount(app)
        app.extensions["rootwise_metrics"] = [*app.extensions.get("rootwise_metrics", []), sched.prometheus]
        app.extensions["rootwise_ready"] = [*app.extensions["rootwise_ready"], sched.ready]
    stop = threading.Event()
    scraper = (
        Scraper(list(scrape), sink=_writer_sink(writer, stop), interval_s=scrape_interval_s)
        if scrape
        else None
    )
    if scraper is not None:
        scraper.start()
    if sched is not None:
        sched.start()

    def on_signal(signum: int, frame: Any) -> None:
        app.extensions["rootwise_stopping"] = True
        stop.set()
        server.pull_trigger()  # wake the loop now instead of at its next timeout

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(f"Rootwise listening on http://{host}:{server.effective_port}", flush=True)
        while not stop.is_set():
            wasyncore.loop(timeout=1.0, map=socket_map, count=1)
        # stop accepting (the listening socket only; the trigger stays for the workers' replies) and drain
        wasyncore.dispatcher.close(server)
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline and (inflight.count > 0 or _pending_output(socket_map)):
            wasyncore.loop(timeout=0.05, map=socket_map, count=1)
    finally:
        if scraper is not None:
            scraper.stop()
        server.task_dispatcher.shutdown(timeout=5)
        server.close()
        wasyncore.close_all(socket_map)
        writer.close(timeout=60)
        if sched is not None:
            sched.stop(flush=True)  # the current pass ends, then one last delivery pass
        # what the mounted app runs in the background (the capacity planner) stops before the store closes:
        # closing the database under a running query aborts the process
        for stop_background in app.extensions.get(ON_STOP_KEY, []):
            stop_background()
        store.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _abort(app: flask.Flask, writer: BatchWriter, store: Store, pool: ProcessPoolExecutor | None) -> None:
    """Undo a start that failed after the app was built: what it runs in the background (the capacity
    planner) stops before the store closes (closing it under a running query fails and would hide the cause)."""
    for stop_background in app.extensions.get(ON_STOP_KEY, []):
        stop_background()
    writer.close(timeout=60)
    store.close()
    if pool is not None:
        pool.shutdown(cancel_futures=True)


def _warm_decoder(linger_s: float) -> None:
    """Run in each decode worker at start: import the decoders, then linger so the next task starts another."""
    import ingest.otlp  # noqa: F401

    time.sleep(linger_s)


def _writer_sink(writer: BatchWriter, stop: threading.Event) -> Callable[[TelemetryBatch], object]:
    """A scraper sink that waits for queue space (scrapes are not urgent) and for the commit."""

    def sink(batch: TelemetryBatch) -> object:
        while True:
            try:
                return writer.submit(batch).result(timeout=120)
            except QueueFull:
                if stop.wait(0.2):
                    raise

    return sink


def _pending_output(socket_map: dict) -> bool:
    """True while a connection has a request waiting for a worker or reply bytes still to send."""
    return any(
        getattr(ch, "requests", None) or getattr(ch, "total_outbufs_len", 0) > 0
        for ch in list(socket_map.values())
    )
