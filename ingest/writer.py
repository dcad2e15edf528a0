"""The write queue: one thread owns all appends, coalescing queued batches into one transaction.

Receiver threads decode in parallel and :meth:`BatchWriter.submit` their batches; the writer thread takes
whatever is queued (up to ``max_points_per_commit`` records), appends it with one
:meth:`ingest.store.Store.append` and resolves every submitter's future. A request is acknowledged only after
its future resolves, i.e. after the commit: an acknowledged write survives a crash (DuckDB's WAL).
The queue is bounded; a full queue raises :class:`QueueFull` at once so the receiver can answer 429 instead
of letting memory grow.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

from ingest.batch import TelemetryBatch
from ingest.store import AppendResult, Store


class QueueFull(RuntimeError):
    """The bounded write queue holds ``max_queue_batches`` batches already; retry later."""


class WriterStopped(RuntimeError):
    """The writer is closed or has failed and takes no more batches."""


_STOP = object()


class BatchWriter:
    """A single writer thread in front of a :class:`~ingest.store.Store`.

    Parameters
    ----------
    store
        The store every batch is appended to.
    max_queue_batches
        Batches that may wait; :meth:`submit` raises :class:`QueueFull` beyond this.
    max_points_per_commit
        Records (points, histogram points, spans, logs, events, edges, rejects) coalesced into one
        transaction; a single larger batch is still written whole.

    Examples
    --------
    >>> store = Store(":memory:")
    >>> writer = BatchWriter(store)
    >>> writer.submit(TelemetryBatch()).result(timeout=10).accepted_total
    0
    >>> writer.close(timeout=10)
    True
    >>> store.close()
    """

    def __init__(
        self, store: Store, *, max_queue_batches: int = 64, max_points_per_commit: int = 500_000
    ) -> None:
        if max_queue_batches < 1:
            raise ValueError(f"max_queue_batches must be >= 1, got {max_queue_batches}")
        self.store = store
        self.max_queue_batches = max_queue_batches
        self.max_points_per_commit = max_points_per_commit
        # unbounded underneath: the bound is enforced under the lock in submit, so close() can always enqueue
        # its stop marker after the last accepted batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._depth = 0
        self._lock = threading.Lock()
        self._closed = False
        self._error: BaseException | None = None
        self.counters: dict[str, float] = {
            "batches_submitted": 0,
            "batches_committed": 0,
            "batches_failed": 0,
            "queue_full": 0,
            "commits": 0,
            "commit_failures": 0,
            "records_committed": 0,
            "rejects_committed": 0,
            "commit_seconds": 0.0,
        }
        self._thread = threading.Thread(target=self._run, name="rootwise-batch-writer", daemon=True)
        self._thread.start()

    # -- submitting ------------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Batches waiting (not counting the group being written)."""
        return self._depth

    @property
    def running(self) -> bool:
        """True while the writer takes batches."""
        return not self._closed and self._error is None and self._thread.is_alive()

    def submit(self, batch: TelemetryBatch) -> Future[AppendResult]:
        """Queue ``batch``; the future resolves after the transaction holding it commits.

        Raises
        ------
        QueueFull
            When ``max_queue_batches`` batches are waiting.
        WriterStopped
            When the writer is closed or has failed.
        """
        future: Future[AppendResult] = Future()
        with self._lock:
            if self._closed or self._error is not None or not self._thread.is_alive():
                raise WriterStopped(self._stopped_reason())
            if self._depth >= self.max_queue_batches:
                self.counters["queue_full"] += 1
                raise QueueFull(f"write queue is full ({self._depth} batches waiting)")
            self._depth += 1
            self.counters["batches_submitted"] += 1
            self._queue.put((batch, future))
        return future

    def _stopped_reason(self) -> str:
        if self._error is not None:
            return f"writer failed: {type(self._error).__name__}: {self._error}"
        return "writer is closed"

    def close(self, timeout: float | None = 30.0) -> bool:
        """Stop taking batches, write everything already queued, stop the thread.

        Returns
        -------
        bool
            True when the queue was flushed and the thread ended within ``timeout`` seconds.
        """
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stats(self) -> dict[str, float]:
        """Counters plus the current queue depth (for the receiver's ``/metrics``)."""
        with self._lock:
            return {**self.counters, "queue_depth": self._depth, "running": float(self.running)}

    # -- the writer thread -----------------------------------------------------------------------------------
    def _take(self, first: tuple) -> tuple[list[tuple], bool]:
        """``first`` plus whatever else is queued, up to the record cap; True when the stop marker was met."""
        group = [first]
        size = _size(first[0])
        while size < self.max_points_per_commit:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return group, True
            group.append(item)
            size += _size(item[0])
        return group, False

    def _run(self) -> None:
        stop = False
        try:
            while not stop:
                item = self._queue.get()
                if item is _STOP:
                    break
                group, stop = self._take(item)
                with self._lock:
                    self._depth -= len(group)
                self._write(group)
        except BaseException as exc:  # a bug in this loop: fail loudly, never leave futures hanging
            with self._lock:
                self._error = exc
            self._fail_pending(exc)
            raise

    def _write(self, group: list[tuple]) -> None:
        batches = [b for b, _ in group]
        futures = [f for _, f in group]
        started = time.perf_counter()
        try:
            result = self.store.append(TelemetryBatch.concat(batches))
        except Exception as exc:
            self.counters["commit_failures"] += 1
            self.counters["batches_failed"] += len(group)
            for f in futures:
                _resolve(f, exc=exc)
            if _is_fatal(exc):
                with (
                    self._lock
                ):  # submit checks _error under the same lock: nothing is queued after the drain
                    self._error = exc
                self._fail_pending(exc)
            return
        self.counters["commit_seconds"] += time.perf_counter() - started
        self.counters["commits"] += 1
        self.counters["batches_committed"] += len(group)
        self.counters["records_committed"] += result.accepted_total
        self.counters["rejects_committed"] += result.rejected
        for b, f in group:
            # each submitter gets its own offered/rejected counts; ``inserted`` is the whole transaction's
            # (rows of a coalesced group cannot be attributed to one batch after the anti-join)
            _resolve(
                f, AppendResult(accepted=b.counts(), inserted=dict(result.inserted), rejected=b.rejected)
            )

    def _fail_pending(self, exc: BaseException) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                with self._lock:
                    self._depth -= 1
                _resolve(item[1], exc=WriterStopped(f"writer failed: {type(exc).__name__}: {exc}"))


def _resolve(future: Future, result: AppendResult | None = None, exc: BaseException | None = None) -> None:
    """Settle a future unless its submitter cancelled it."""
    if future.set_running_or_notify_cancel():
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)


def _size(batch: TelemetryBatch) -> int:
    return batch.accepted + batch.rejected


def _is_fatal(exc: BaseException) -> bool:
    """A store error after which no later append can succeed (DuckDB invalidates the database)."""
    text = str(exc).lower()
    return (
        type(exc).__name__ in {"FatalException", "ConnectionException"}
        or "database has been invalidated" in text
    )
