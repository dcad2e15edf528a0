"""File ingestion: every file input format, detected from content, streamed into the store batch by batch.

Formats (DESIGN.md "Inputs"), each optionally gzip-compressed:

========================  =====================================================================================
``parquet``               long schema ``ts, metric, value, service, <labels…>`` (:mod:`ingest.longformat`)
``csv-long``              the same long schema as CSV with a header row
``otlp-json``             OTLP/JSON export requests: one per line (the collector's file exporter) or one
                          document (:mod:`ingest.otlp`)
``prometheus``            Prometheus / OpenMetrics text exposition (:mod:`ingest.prometheus`)
``jsonl-events``          change events ``{"ts", "service", "kind", "title", "attributes"}``
``jsonl-logs``            logs ``{"ts", "service", "severity", "body", "attributes"}``
``jsonl-topology``        service edges ``{"source", "target"}``
``jsonl-long``            long rows as JSON lines ``{"ts", "metric", "value", "service", <labels…>}``
========================  =====================================================================================

Every batch is appended in its own transaction (:meth:`ingest.store.Store.append`), so a crash leaves the
store at the last committed batch and re-running the same command completes it without duplicates (appends
are idempotent). A file that fails is reported and dead-lettered whole (its first bytes with the reason);
it never costs the other files their records.
"""

from __future__ import annotations

import csv
import gzip
import re
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import pyarrow.parquet as pq

from ingest.batch import Reject, TelemetryBatch
from ingest.jsonl import MAX_LINE_BYTES, classify_jsonl_record, iter_jsonl_batches, iter_lines
from ingest.longformat import (
    GZIP_MAGIC,
    REQUIRED_COLUMNS,
    iter_long_csv_lines,
    iter_long_file,
    long_frame_to_batch,
)
from ingest.store import Store

FORMATS = (
    "parquet",
    "otlp-json",
    "prometheus",
    "csv-long",
    "jsonl-events",
    "jsonl-logs",
    "jsonl-topology",
    "jsonl-long",
)
ACCEPTED_TEXT = (
    "Accepted formats (optionally gzip-compressed): Parquet or CSV in the long schema "
    "ts, metric, value, service, <label columns>; OTLP JSON exports (resourceMetrics / resourceSpans / "
    'resourceLogs, one per line or one document); Prometheus text exposition; JSON Lines of events {"ts", '
    '"service", "kind", "title", "attributes"}, logs {"ts", "service", "severity", "body", "attributes"}, '
    'topology edges {"source", "target"} or long rows {"ts", "metric", "value", "service", ...labels}'
)

#: bytes read to detect a format
HEAD_BYTES = 64 << 10
#: bytes of an unreadable file kept in the dead letter
DEAD_LETTER_HEAD_BYTES = 64 << 10
#: long-format rows per appended batch (one transaction each)
BATCH_ROWS = 1_000_000
#: OTLP export lines may be large (a collector batch of thousands of spans)
OTLP_MAX_LINE_BYTES = 256 << 20
#: an OTLP file whose first line is not a JSON value is tried as one document when at most this big
OTLP_MAX_DOCUMENT_BYTES = 1 << 30
#: records gathered from OTLP lines before one append
OTLP_BATCH_RECORDS = 200_000
#: DuckDB buffer pool while ingesting files: DuckDB caches written blocks up to its memory_limit (80% of RAM by
#: default), which would make a long ingest's RSS grow with the data; bounded, it stays flat and as fast
INGEST_MEMORY_LIMIT_BYTES = 512 << 20

_OTLP_KEY_RE = re.compile(rb'"(resourceMetrics|resourceSpans|resourceLogs)"\s*:')
_OTLP_SIGNALS = {b"resourceMetrics": "metrics", b"resourceSpans": "traces", b"resourceLogs": "logs"}


class UnknownFormatError(ValueError):
    """A file whose content matches none of the accepted formats."""


@dataclass
class FileReport:
    """What happened to one file."""

    path: str
    format: str
    accepted: int = 0
    rejected: int = 0
    first_reasons: list[str] = field(default_factory=list)
    error: str | None = None
    inserted: int = 0


@dataclass
class IngestReport:
    """What :func:`ingest_paths` did: records accepted, rejected (dead-lettered) and newly inserted."""

    accepted: int = 0
    rejected: int = 0
    inserted: int = 0
    files: list[FileReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every record was stored or dead-lettered and no file failed."""
        return all(f.error is None for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "inserted": self.inserted,
            "files": [asdict(f) for f in self.files],
        }


# -- detection ---------------------------------------------------------------------------------------------
def read_head(path: Path, n: int = HEAD_BYTES) -> tuple[bytes, bool]:
    """The first ``n`` (decompressed) bytes of a file and whether it is gzip-compressed."""
    with open(path, "rb") as f:
        raw = f.read(n)
    if raw[:2] != GZIP_MAGIC:
        return raw, False
    try:
        return zlib.decompressobj(wbits=31).decompress(raw, n), True
    except zlib.error as exc:
        raise UnknownFormatError(f"{path}: gzip-compressed but the data is corrupt ({exc})") from None


def _open_text_stream(path: Path, raw: IO[bytes]) -> IO[bytes]:
    magic = raw.read(2)
    raw.seek(0)
    if magic == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def detect_format(path: Path) -> str:
    """The format of a file, from its content (the extension is not trusted).

    Returns one of :data:`FORMATS`, or ``"empty"`` for a file without content. Raises
    :class:`UnknownFormatError` naming the file and the accepted formats otherwise.
    """
    path = Path(path)
    head, gz = read_head(path)
    if not head.strip():
        if path.stat().st_size == 0 or gz:
            return "empty"
        raise UnknownFormatError(f"{path}: holds only whitespace. {ACCEPTED_TEXT}")
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if text[:1] in (b"{", b"["):
        return _detect_json(path, head)
    header = _csv_header(text)
    if header is not None and set(REQUIRED_COLUMNS) <= set(header):
        return "csv-long"
    if _looks_like_prometheus(head):
        return "prometheus"
    hint = ""
    if header is not None and len(header) > 1:
        hint = (
            f" It looks like CSV with columns {', '.join(header[:12])}, but the long schema needs "
            f"{', '.join(REQUIRED_COLUMNS)}."
        )
    elif b"\x00" in head[:1024] or _binary_share(head) > 0.1:
        hint = " It looks like binary data."
    raise UnknownFormatError(f"{path}: cannot tell the format from the content.{hint} {ACCEPTED_TEXT}")


def _binary_share(head: bytes) -> float:
    sample = head[:4096]
    if not sample:
        return 0.0
    return sum(1 for b in sample if b < 9 or 13 < b < 32) / len(sample)


def _csv_header(text: bytes) -> list[str] | None:
    first = text.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        line = first.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "," not in line:
        return None
    names = next(csv.reader([line]), [])
    return [n.strip() for n in names]


def _looks_like_prometheus(head: bytes) -> bool:
    try:
        from ingest.prometheus import looks_like_prometheus
    except ImportError:  # the Prometheus decoder is optional here
        return False
    return bool(looks_like_prometheus(head))


def _detect_json(path: Path, head: bytes) -> str:
    """JSON content: an OTLP export (document or lines) or one of the JSON Lines kinds."""
    seen_keys: list[str] = []
    parsed = 0
    with open(path, "rb") as raw:
        stream = _open_text_stream(path, raw)
        for i, line in enumerate(iter_lines(stream, max_bytes=MAX_LINE_BYTES)):
            if i >= 200 or parsed >= 20:
                break
            if line.length > MAX_LINE_BYTES:
                if _OTLP_KEY_RE.search(line.data[:4096]):
                    return "otlp-json"  # one big export per line
                continue
            try:
                obj = orjson.loads(line.data)
            except orjson.JSONDecodeError:
                continue
            parsed += 1
            kind = classify_jsonl_record(obj)
            if kind != "unknown":
                return kind
            if isinstance(obj, dict):
                seen_keys.extend(k for k in obj if k not in seen_keys)
    m = _OTLP_KEY_RE.search(head)
    if m is not None:
        return "otlp-json"  # a pretty-printed document
    found = f" Records have keys {', '.join(seen_keys[:12])}." if seen_keys else ""
    raise UnknownFormatError(
        f"{path}: JSON content matching no accepted record shape.{found} {ACCEPTED_TEXT}"
    )


# -- readers: each yields (batch, bytes of the file consumed so far) -----------------------------------------
def _long_batches(path: Path, fmt: str, size: int) -> Iterator[tuple[TelemetryBatch, int]]:
    source = str(path)
    rows = 0
    series_cache: dict[tuple, tuple] = {}  # each series hashed once per file, not once per batch
    if fmt == "parquet":
        with open(path, "rb") as f:
            gz = f.read(2) == GZIP_MAGIC
        total = 0 if gz else pq.ParquetFile(path).metadata.num_rows
        for df in iter_long_file(path, batch_rows=BATCH_ROWS):
            # Parquet has no lines: rejects are "row N", counting from 1
            batch = long_frame_to_batch(df, source, first_row=rows + 1, series_cache=series_cache)
            rows += df.height
            yield batch, (size * rows // total) if total else 0
        return
    malformed: list[Reject] = []
    with open(path, "rb") as raw:
        stream = _open_text_stream(path, raw)
        for df, lines in iter_long_csv_lines(stream, source=source, batch_rows=BATCH_ROWS, rejects=malformed):
            batch = long_frame_to_batch(
                df, source, row_numbers=lines, location_word="line", series_cache=series_cache
            )
            batch.rejects[:0] = malformed
            malformed.clear()
            yield batch, raw.tell()
    if malformed:
        yield TelemetryBatch(rejects=malformed), size


def _jsonl_batches(path: Path, fmt: str, tenant_attribute: str) -> Iterator[tuple[TelemetryBatch, int]]:
    with open(path, "rb") as raw:
        stream = _open_text_stream(path, raw)
        for batch in iter_jsonl_batches(stream, fmt, str(path), tenant_attribute=tenant_attribute):
            yield batch, raw.tell()


def _is_json(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def _otlp_signal(data: bytes) -> str | None:
    m = _OTLP_KEY_RE.search(data[:4096])
    if m is not None:
        return _OTLP_SIGNALS[m.group(1)]
    return None


def _otlp_batches(path: Path, tenant_attribute: str) -> Iterator[tuple[TelemetryBatch, int]]:
    from ingest.otlp import decode_otlp_json, detect_signal

    source = str(path)
    with open(path, "rb") as raw:
        stream = _open_text_stream(path, raw)
        first = stream.readline(OTLP_MAX_LINE_BYTES)
        while first and not first.strip():
            first = stream.readline(OTLP_MAX_LINE_BYTES)
        if not _is_json(first) and path.stat().st_size <= OTLP_MAX_DOCUMENT_BYTES:
            # not one export per line: maybe one (pretty-printed) document
            data = first + stream.read()
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                obj = None  # torn first line of a line-per-export file: fall through to line mode
            if obj is not None:
                signal = detect_signal(obj) if isinstance(obj, dict) else None
                if signal is None:
                    raise ValueError(
                        f"{path}: not an OTLP export request (expected a JSON object with resourceMetrics, "
                        "resourceSpans or resourceLogs)"
                    )
                yield decode_otlp_json(data, signal, source, tenant_attribute=tenant_attribute), raw.tell()
                return
            del data
        raw.seek(0)
        stream = _open_text_stream(path, raw)
        pending: list[TelemetryBatch] = []
        n_pending = 0
        for line in iter_lines(stream, max_bytes=OTLP_MAX_LINE_BYTES):
            where = f"line {line.number}"
            batch = TelemetryBatch()
            try:
                if line.length > OTLP_MAX_LINE_BYTES:
                    raise ValueError(
                        f"line is {line.length} bytes, longer than the {OTLP_MAX_LINE_BYTES}-byte limit"
                    )
                signal = _otlp_signal(line.data)
                if signal is None:
                    try:
                        obj = orjson.loads(line.data)
                    except orjson.JSONDecodeError as exc:
                        raise ValueError(f"invalid JSON: {exc}") from None
                    signal = detect_signal(obj) if isinstance(obj, dict) else None
                    if signal is None:
                        raise ValueError(
                            "not an OTLP export request (expected a JSON object with resourceMetrics, "
                            "resourceSpans or resourceLogs)"
                        )
                batch = decode_otlp_json(line.data, signal, source, tenant_attribute=tenant_attribute)
                for r in batch.rejects:
                    r.location = f"{where} {r.location}".strip()
            except ValueError as exc:  # OtlpDecodeError is a ValueError
                batch.rejects.append(Reject(source, where, str(exc), line.data[:DEAD_LETTER_HEAD_BYTES]))
            pending.append(batch)
            n_pending += batch.accepted + batch.rejected
            if n_pending >= OTLP_BATCH_RECORDS:
                yield TelemetryBatch.concat(pending), raw.tell()
                pending, n_pending = [], 0
        if pending:
            yield TelemetryBatch.concat(pending), raw.tell()


def _prometheus_batches(path: Path) -> Iterator[tuple[TelemetryBatch, int]]:
    from ingest.prometheus import parse_prometheus_text

    with open(path, "rb") as raw:
        stream = _open_text_stream(path, raw)
        text = stream.read()
        yield parse_prometheus_text(text, str(path)), raw.tell()


def iter_file_batches(
    path: Path, fmt: str, *, tenant_attribute: str = "rootwise.tenant.id"
) -> Iterator[tuple[TelemetryBatch, int]]:
    """The batches of one file of a known format, each with the bytes of the file consumed so far."""
    size = path.stat().st_size
    if fmt in ("parquet", "csv-long"):
        return _long_batches(path, fmt, size)
    if fmt.startswith("jsonl-"):
        return _jsonl_batches(path, fmt, tenant_attribute)
    if fmt == "otlp-json":
        return _otlp_batches(path, tenant_attribute)
    if fmt == "prometheus":
        return _prometheus_batches(path)
    if fmt == "empty":
        return iter(())
    raise UnknownFormatError(f"{path}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


# -- paths -------------------------------------------------------------------------------------------------
def expand_paths(paths: Sequence[Path], *, exclude: Sequence[Path] = ()) -> list[Path]:
    """Files of ``paths``, directories walked recursively in sorted order (hidden entries skipped).

    Paths in ``exclude`` (the store's own database and WAL files) are left out; a path that does not exist is
    returned as is so the caller can report it.
    """
    skip = {p.resolve() for p in exclude}
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p)
                if any(part.startswith(".") for part in rel.parts) or not f.is_file():
                    continue
                if f.resolve() not in skip:
                    out.append(f)
        elif p.resolve() not in skip or not p.exists():
            out.append(p)
    return out


def _store_files(store: Store) -> list[Path]:
    if store.path == ":memory:":
        return []
    db = Path(store.path)
    return [db, db.with_name(db.name + ".wal")]


def _memory_bytes(text: str) -> int | None:
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B|bytes)\s*", text)
    if not m:
        return None
    unit = m.group(2)
    mult = {
        "bytes": 1,
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KiB": 2**10,
        "MiB": 2**20,
        "GiB": 2**30,
        "TiB": 2**40,
    }.get(unit)
    return None if mult is None else int(float(m.group(1)) * mult)


@contextmanager
def _bounded_buffer_pool(store: Store) -> Iterator[None]:
    """Lower DuckDB's memory limit to :data:`INGEST_MEMORY_LIMIT_BYTES` for the ingest, then restore it."""
    cur = store.cursor()
    try:
        # fetchall: a half-read result would block the next statement on this thread's shared cursor
        rows = cur.execute("SELECT current_setting('memory_limit')").fetchall()
        original = str(rows[0][0]) if rows else ""
    except Exception:  # noqa: BLE001 - a setting we cannot read is left alone
        original = ""
    current = _memory_bytes(original)
    if current is None or current <= INGEST_MEMORY_LIMIT_BYTES:
        yield
        return
    cur.execute(f"SET memory_limit = '{INGEST_MEMORY_LIMIT_BYTES // 2**20}MiB'")
    try:
        yield
    finally:
        cur.execute(f"SET memory_limit = '{original}'")


def _fail(store: Store, path: Path, report: FileReport, exc: BaseException) -> None:
    """Record a failed file: the error in its report, its first bytes in the dead letter."""
    message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
    report.error = f"{type(exc).__name__}: {message}" if not isinstance(exc, UnknownFormatError) else message
    try:
        with open(path, "rb") as f:
            head = f.read(DEAD_LETTER_HEAD_BYTES)
    except OSError:
        head = b""
    try:
        store.append(TelemetryBatch(rejects=[Reject(str(path), "file", report.error, head)]))
        report.rejected += 1
    except Exception as store_exc:  # noqa: BLE001 - the report still carries the original error
        report.error += f" (and the dead letter could not be written: {store_exc})"


def ingest_paths(
    store: Store,
    paths: Sequence[Path],
    *,
    progress: bool = False,
    tenant_attribute: str = "rootwise.tenant.id",
) -> IngestReport:
    """Ingest files and directories (walked recursively, sorted) into ``store``.

    Each file's format is detected from its content; it is streamed in batches, each appended in its own
    transaction. Invalid records are dead-lettered (``ingest_rejects``) with file, line/row and reason; a file
    that cannot be read at all is reported with its error and its first bytes dead-lettered, and the other
    files are still ingested.

    Parameters
    ----------
    store
        The open store to append to.
    paths
        Files and/or directories.
    progress
        Show a progress bar (bytes) on stderr.
    tenant_attribute
        Attribute naming the tenant in OTLP and JSONL logs/spans (``tenant`` is the fallback).
    """
    files = expand_paths(paths, exclude=_store_files(store))
    report = IngestReport()
    bar = _Progress(files) if progress else None
    try:
        with _bounded_buffer_pool(store):
            for path in files:
                fr = _ingest_file(store, path, tenant_attribute, bar)
                report.files.append(fr)
                report.accepted += fr.accepted
                report.rejected += fr.rejected
                report.inserted += fr.inserted
    finally:
        if bar is not None:
            bar.close()
    return report


def _ingest_file(store: Store, path: Path, tenant_attribute: str, bar: _Progress | None) -> FileReport:
    fr = FileReport(path=str(path), format="unknown")
    if bar is not None:
        bar.start_file(path)
    try:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        fr.format = detect_format(path)
        for batch, pos in iter_file_batches(path, fr.format, tenant_attribute=tenant_attribute):
            result = store.append(batch)
            fr.accepted += batch.accepted
            fr.rejected += batch.rejected
            fr.inserted += sum(result.inserted.values())
            for r in batch.rejects[: max(0, 5 - len(fr.first_reasons))]:
                fr.first_reasons.append(f"{r.location}: {r.reason}")
            if bar is not None:
                bar.advance_to(pos)
    except FileNotFoundError as exc:
        fr.error = str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad file must not cost the others their records
        _fail(store, path, fr, exc)
    if bar is not None:
        bar.end_file()
    return fr


class _Progress:
    """A rich progress bar over the total bytes of the files."""

    def __init__(self, files: list[Path]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._sizes = {p: (p.stat().st_size if p.is_file() else 0) for p in files}
        self._progress = Progress(
            TextColumn("[bold]{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("ingest", total=sum(self._sizes.values()))
        self._done = 0
        self._path: Path | None = None

    def start_file(self, path: Path) -> None:
        self._path = path
        self._progress.update(self._task, description=path.name[-40:], completed=self._done)

    def advance_to(self, pos: int) -> None:
        if self._path is not None:
            pos = min(pos, self._sizes.get(self._path, 0))
            self._progress.update(self._task, completed=self._done + pos)

    def end_file(self) -> None:
        if self._path is not None:
            self._done += self._sizes.get(self._path, 0)
            self._progress.update(self._task, completed=self._done)
        self._path = None

    def close(self) -> None:
        self._progress.stop()
