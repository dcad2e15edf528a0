"""Scraping Prometheus ``/metrics`` endpoints (vLLM, Triton, DCGM exporter, ...) into the store.

Follows Prometheus' own scrape semantics where they matter: the text format 0.0.4 is requested
(``Accept: text/plain;version=0.0.4``), gzip is accepted, a scrape has one total timeout, samples without a
timestamp get the scrape's start time, target labels override exposed ones (``honor_labels: false``), and every
scrape records ``up`` (1 or 0) and ``scrape_duration_seconds`` for its target. Unlike Prometheus, a page with
some bad lines is not failed whole: its good samples are stored, the bad lines dead-lettered, and ``up`` is 1.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ingest.batch import TelemetryBatch
from ingest.prometheus import parse_scrape

log = logging.getLogger(__name__)

#: what Prometheus sends when it wants the classic text format (exposition_formats.md, "Basic info")
ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
#: a larger body is refused, like Prometheus' ``body_size_limit`` (a runaway exporter must not exhaust memory)
MAX_BODY_BYTES = 64 * 1024 * 1024
_READ_CHUNK = 1 << 16
_POLL_S = 0.05


@dataclass(frozen=True)
class ScrapeTarget:
    """One ``/metrics`` URL; ``labels`` are added to every sample scraped from it.

    ``service`` names the service of every series (default: the samples' ``job`` label, else
    ``"unknown_service"``). An ``instance`` label of ``host:port`` is added unless ``labels`` sets one.
    """

    url: str
    service: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def target_labels(self) -> dict[str, str]:
        labels = dict(self.labels)
        labels.setdefault("instance", urllib.parse.urlsplit(self.url).netloc)
        return labels


@dataclass(frozen=True)
class ScrapeResult:
    """Outcome of scraping one target: ``samples`` accepted (points + histogram points), bad lines rejected."""

    target: ScrapeTarget
    ok: bool
    samples: int
    error: str | None
    duration: float
    rejected: int = 0


def fetch(url: str, timeout_s: float, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    """GET a metrics page (gzip-decoded) within ``timeout_s`` in total; raises ``OSError`` with a clear message.

    Environment proxies are ignored: targets are reached directly, as Prometheus does without ``proxy_url``.
    """
    deadline = time.monotonic() + timeout_s
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        url, headers={"Accept": ACCEPT, "Accept-Encoding": "gzip", "User-Agent": "rootwise-scraper"}
    )
    try:
        with opener.open(request, timeout=timeout_s) as response:
            chunks: list[bytes] = []
            size = 0
            while chunk := response.read(_READ_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise OSError(f"response larger than {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunks.append(chunk)
            body = b"".join(chunks)
            if response.headers.get("Content-Encoding", "").strip().lower() == "gzip":
                # bounded decompression: a small gzip body must not expand past the size limit
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                body = inflater.decompress(body, max_bytes + 1)
                if len(body) > max_bytes or inflater.unconsumed_tail:
                    raise OSError(f"decompressed response larger than {max_bytes} bytes")
                if not inflater.eof:
                    raise OSError("bad gzip body: truncated stream")
            return body
    except urllib.error.HTTPError as exc:
        raise OSError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise OSError(f"timed out after {timeout_s:g}s") from None
        raise OSError(f"cannot connect: {exc.reason}") from None
    except TimeoutError:
        raise OSError(f"timed out after {timeout_s:g}s") from None
    except (zlib.error, gzip.BadGzipFile, EOFError) as exc:
        raise OSError(f"bad gzip body: {exc}") from None


class Scraper:
    """Scrapes targets every ``interval_s`` and hands each round's batch to ``sink`` (e.g. ``Store.append``).

    Rounds start at a fixed phase (a hash of the target URLs, so several scrapers spread out) on a grid of
    ``interval_s`` from the monotonic clock: a slow round delays nothing after it, missed ticks are skipped.

    Examples
    --------
    >>> batches = []
    >>> scraper = Scraper([ScrapeTarget("http://127.0.0.1:9/metrics", service="demo")], sink=batches.append,
    ...                   timeout_s=0.5)
    >>> [result] = scraper.scrape_once()
    >>> result.ok, result.error.startswith("cannot connect")
    (False, True)
    >>> batches[0].points["value"].to_list()[0]  # up
    0.0
    """

    def __init__(
        self,
        targets: list[ScrapeTarget],
        *,
        sink: Callable[[TelemetryBatch], object],
        interval_s: float = 15.0,
        timeout_s: float = 5.0,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0:
            raise ValueError("interval_s and timeout_s must be positive")
        self.targets = list(targets)
        self.sink = sink
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.last_results: list[ScrapeResult] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one round ---------------------------------------------------------------------------------------
    def scrape_once(self) -> list[ScrapeResult]:
        """Scrape every target concurrently, pass one batch to the sink, and return the results."""
        start_ns = time.time_ns() // 1_000_000 * 1_000_000  # Prometheus stamps samples with the scrape start
        answers = self._fetch_all()
        if answers is None:  # stopped mid-round: nothing is handed to the sink
            return []
        batches, results = [], []
        for target, (body, error, duration) in zip(self.targets, answers, strict=True):
            labels = target.target_labels()
            samples = rejected = 0
            if body is not None:
                batch = parse_scrape(
                    body, target.url, service=target.service, default_ts_ns=start_ns, target_labels=labels
                )
                samples, rejected = batch.accepted, batch.rejected
                batches.append(batch)
            bookkeeping = f"up {0 if error else 1}\nscrape_duration_seconds {duration:.6f}\n"
            batches.append(
                parse_scrape(
                    bookkeeping,
                    target.url,
                    service=target.service,
                    default_ts_ns=start_ns,
                    target_labels=labels,
                )
            )
            results.append(ScrapeResult(target, error is None, samples, error, duration, rejected))
        if batches:
            self.sink(TelemetryBatch.concat(batches))
        self.last_results = results
        return results

    def _fetch_all(self) -> list[tuple[bytes | None, str | None, float]] | None:
        """Fetch all targets in parallel threads; ``None`` when stopped before they all answered."""
        answers: list[tuple[bytes | None, str | None, float] | None] = [None] * len(self.targets)
        done: queue.Queue[int] = queue.Queue()

        def work(i: int, url: str) -> None:
            t0 = time.monotonic()
            try:
                answers[i] = (fetch(url, self.timeout_s), None, time.monotonic() - t0)
            except Exception as exc:  # any failure of a target is that target's error, never the round's
                answers[i] = (None, str(exc) or type(exc).__name__, time.monotonic() - t0)
            done.put(i)

        # daemon threads: a hung target never keeps the process alive or delays stop()
        for i, target in enumerate(self.targets):
            threading.Thread(target=work, args=(i, target.url), name="rootwise-scrape", daemon=True).start()
        deadline = time.monotonic() + self.timeout_s + 1.0
        pending = len(self.targets)
        while pending:
            if self._stop.is_set():
                return None
            try:
                done.get(timeout=_POLL_S)
                pending -= 1
            except queue.Empty:
                if time.monotonic() > deadline:
                    break
        timeout = f"timed out after {self.timeout_s:g}s"
        return [a if a is not None else (None, timeout, self.timeout_s) for a in answers]

    # -- the background loop ------------------------------------------------------------------------------
    def start(self) -> None:
        """Scrape in a daemon thread until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rootwise-scraper", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the loop and wait for it to end; the sink is not called after this returns.

        A round still waiting for targets is abandoned (not handed to the sink), so this takes at most a
        poll interval plus the time of a sink call already under way.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _phase(self) -> float:
        """Offset in [0, interval) of this scraper's rounds, stable for a set of targets."""
        digest = hashlib.blake2b(
            "\n".join(sorted(t.url for t in self.targets)).encode(), digest_size=8
        ).digest()
        return int.from_bytes(digest, "little") / 2**64 * self.interval_s

    def _run(self) -> None:
        origin = time.monotonic() + self._phase()
        tick = 0
        while not self._stop.wait(max(0.0, origin + tick * self.interval_s - time.monotonic())):
            try:
                self.scrape_once()
            except Exception:
                log.exception("scrape round failed")
            # the next tick on the grid that is still ahead: no drift, and missed ticks are skipped
            elapsed = time.monotonic() - origin
            tick = max(tick + 1, int(elapsed // self.interval_s) + 1)
