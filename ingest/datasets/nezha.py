"""The Nezha multi-modal RCA benchmark (Yu et al., "Nezha: Interpretable Fine-Grained Root Causes Analysis for
Microservices on Multi-Modal Observability Data", FSE 2023) as Rootwise frames.

Layout under ``root`` (the data set folder)::

    rca_data/<date>/<date>-fault_list.json     labels: {hour: [{inject_time, inject_pod, inject_type, ...}]}
    rca_data/<date>/metric/<pod>_metric.csv     1-minute pod metrics, the whole day
    rca_data/<date>/metric/front_service.csv    the entry KPI (success rate, latency percentiles)
    rca_data/<date>/metric/{source,destination}_50.csv   per-edge latency reported by caller / callee (OB)
    rca_data/<date>/metric/dependency.csv       declared caller -> callee edges (OB)
    rca_data/<date>/{log,trace}/HH_MM_*.csv.gz  logs and spans around each fault (Train Ticket only)
    construct_data/<date>/{log,trace}/...       one fault-free minute of logs and spans (the normal phase)

``2022-08-22``/``2022-08-23`` are Online Boutique (56 faults; metrics only in this copy: its logs and most
traces were too large to publish), ``2023-01-29``/``2023-01-30`` Train Ticket (45 faults; metrics, logs,
traces). Fault types: ``cpu_contention``, ``cpu_consumed``, ``network_delay``, ``return`` and ``exception``
(code changes).

A case is one injected fault. Its **onset** is ``inject_time`` (UTC, matching the telemetry; the file's
``inject_timestamp`` is 8 h off and has copy errors), standing in for an alert time; the abnormal window is
``[onset, onset + window)``. Telemetry is loaded per case, lazily (:meth:`NezhaCase.telemetry`):

* metrics in ``[onset - baseline, end)``; a metric file is parsed once per process and cached;
* logs and spans from the fault's own minute files (``HH_MM`` from the onset minute to ``window`` after it:
  the first one also holds up to two minutes *before* the injection) plus the normal-phase minute of the
  same date when it falls inside the baseline. Other faults' files are not loaded: they would put earlier
  incidents into the baseline.

Mapping: a pod ``ts-order-service-5b67c48447-mv5hb`` belongs to service ``ts-order-service`` (the Deployment
name: the ReplicaSet hash and pod suffix are dropped). Metric columns become snake-case metric names with the
unit from the parentheses (``CpuUsageRate(%)`` -> ``cpu_usage_rate``, ``%``) and a ``k8s.pod.name`` label;
edge latencies become ``request_latency_p50`` of the callee with Istio's labels ``reporter``
(``source``/``destination``), ``source_workload`` and ``destination_workload``; spans get their service
from the pod, a null parent for ``root``, and a duration from the end minus start time; logs get the
``log`` field of the container runtime's JSON line as body and the severity of the application's log line.

Malformed input never passes silently: a file that cannot be used raises :class:`NezhaFormatError` naming
the file (and line and column where it applies); a malformed *record* (a ragged CSV row, an unparseable
number or time, a ``TimeStamp`` that disagrees with the ``Time`` text of the same row) is dead-lettered as an
:class:`ingest.batch.Reject` naming file, line and column, or raises with ``strict=True``. The published copy
has some: a ragged row in ``2023-01-29/log/10_06``, and every row of ``2022-08-22/metric/adservice-*`` has a
``TimeStamp`` 200,000,000 s (6.3 years) away from its ``Time`` (the values of that file are not trusted either).

The ground truth (service, fault type, pod) is a separate :class:`NezhaTruth`; :meth:`NezhaCase.incident`
and :meth:`NezhaCase.telemetry` carry no trace of it (the case name is the system and the onset).
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

import polars as pl

from ingest import schema
from ingest.batch import Reject, TelemetryBatch, log_id, series_id
from ingest.datasets import DatasetFormatError
from rca.base import FrameView, RcaIncident

#: which system each published date belongs to
SYSTEM_OF_DATE = {
    "2022-08-22": "online-boutique",
    "2022-08-23": "online-boutique",
    "2023-01-29": "train-ticket",
    "2023-01-30": "train-ticket",
}
SYSTEMS = ("online-boutique", "train-ticket")

#: the service that owns the entry KPI (``front_service.csv``); the data set calls it "Frontend"
KPI_SERVICE = {"online-boutique": "frontend", "train-ticket": "ts-ui-dashboard"}
KPI_METRIC = "latency_p90"

FAULT_TYPES = ("cpu_contention", "cpu_consumed", "network_delay", "return", "exception")

#: ``TimeStamp`` (epoch seconds) and the ``Time`` text of one metric row may differ by this much
MAX_CLOCK_SKEW_S = 5.0

_POD_SUFFIX = r"-[a-z0-9]{6,10}-[a-z0-9]{5}$"
_METRIC_COLUMN = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9]*)(?:\((?P<unit>[^)]*)\))?$")
_LEVEL = r"^\S+\s+(TRACE|DEBUG|INFO|WARN|WARNING|ERROR|FATAL)\b"
_MINUTE_FILE = re.compile(r"^(?P<hh>\d\d)_(?P<mm>\d\d)_(?:log|trace)\.csv(?:\.gz)?$")
# plausible epoch nanoseconds: 2001 .. 2100 (the data set has int64-overflowed TimeUnixNano values)
_NS_MIN, _NS_MAX = 1_000_000_000 * 10**9, 4_102_444_800 * 10**9

_POD_METRIC_KEYS = ("Time", "TimeStamp", "PodName")
_FRONT_KEYS = ("Time", "TimeStamp", "ServiceName")
_EDGE_KEYS = ("time", "timestamp")
_LOG_COLUMNS = ("Timestamp", "TimeUnixNano", "PodName", "TraceID", "SpanID", "Log")
_TRACE_COLUMNS = (
    "TraceID",
    "SpanID",
    "ParentID",
    "PodName",
    "OperationName",
    "StartTimeUnixNano",
    "EndTimeUnixNano",
)


class NezhaFormatError(DatasetFormatError):
    """A Nezha file that cannot be used."""


@dataclass(frozen=True)
class NezhaTruth:
    """The injected fault of a case: root-cause service, fault type and the pod it was injected into."""

    service: str
    fault_type: str
    pod: str


def service_of_pod(pod: str) -> str:
    """The Deployment a Kubernetes pod belongs to (ReplicaSet hash and pod suffix dropped).

    Examples
    --------
    >>> service_of_pod("ts-order-service-5b67c48447-mv5hb"), service_of_pod("frontend-579b9bff58-t2dbm")
    ('ts-order-service', 'frontend')
    >>> service_of_pod("redis-cart")
    'redis-cart'
    """
    return re.sub(_POD_SUFFIX, "", pod)


def _service_expr(column: str) -> pl.Expr:
    return pl.col(column).str.replace(_POD_SUFFIX, "")


def metric_name(column: str) -> tuple[str, str | None]:
    """Rootwise metric name and unit of a Nezha metric column.

    Examples
    --------
    >>> metric_name("CpuUsageRate(%)"), metric_name("PodClientLatencyP90(s)"), metric_name("SyscallRead")
    (('cpu_usage_rate', '%'), ('pod_client_latency_p90', 's'), ('syscall_read', None))
    """
    match = _METRIC_COLUMN.match(column)
    if match is None:
        raise ValueError(f"column {column!r} is not '<CamelCaseName>' or '<CamelCaseName>(<unit>)'")
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", match["name"]).lower()
    return snake, match["unit"] or None


@dataclass(frozen=True)
class NezhaCase:
    """One injected fault: where its telemetry is and what window to explain; the truth is kept apart.

    Analysers get :meth:`incident` and :meth:`view` (or :meth:`telemetry`), never ``truth``.

    Examples
    --------
    >>> case = NezhaCase("train-ticket/2023-01-29T08:43:04", "train-ticket", "2023-01-29",
    ...                  datetime(2023, 1, 29, 8, 43, 4), datetime(2023, 1, 29, 8, 46, 4), timedelta(hours=1),
    ...                  NezhaTruth("ts-contacts-service", "return", "ts-contacts-service-866bd68c97-xcqfx"),
    ...                  Path("nezha"))
    >>> inc = case.incident()
    >>> inc.service, inc.metric, inc.baseline_start, inc.id
    ('ts-ui-dashboard', 'latency_p90', datetime.datetime(2023, 1, 29, 7, 43, 4), None)
    """

    name: str
    system: str
    date: str
    onset: datetime
    end: datetime
    baseline: timedelta
    truth: NezhaTruth
    root: Path

    def incident(self) -> RcaIncident:
        """The entry KPI's incident: ``[onset, end)`` against the ``baseline`` before it."""
        return RcaIncident(
            service=KPI_SERVICE[self.system],
            metric=KPI_METRIC,
            onset=self.onset,
            end=self.end,
            baseline=self.baseline,
        )

    @property
    def baseline_start(self) -> datetime:
        return self.onset - self.baseline

    def telemetry(self, *, strict: bool = False) -> TelemetryBatch:
        """Series, points, spans, logs and declared edges of the case window, with rejected records.

        ``strict`` raises :class:`NezhaFormatError` at the first malformed record instead of dead-lettering it.
        """
        day = self.root / "rca_data" / self.date
        start, end = self.baseline_start, self.end
        rejects: list[Reject] = []
        series, points, edges = _metrics(day / "metric", self.system, start, end, strict, rejects)
        log_files = self._minute_files("log")
        trace_files = self._minute_files("trace")
        logs = _logs(log_files, start, end, strict, rejects)
        spans = _spans(trace_files, start, end, strict, rejects)
        return TelemetryBatch(
            series=series, points=points, spans=spans, logs=logs, edges=edges, rejects=rejects
        )

    def view(self, *, strict: bool = False) -> FrameView:
        """The telemetry as a :class:`rca.base.FrameView`."""
        t = self.telemetry(strict=strict)
        return FrameView(series=t.series, points=t.points, spans=t.spans, logs=t.logs, edges=t.edges)

    def _minute_files(self, kind: str) -> list[Path]:
        """The fault's own ``HH_MM`` files (onset minute .. window after) and the normal-phase files that fall
        inside the baseline."""
        first = self.onset.replace(second=0, microsecond=0)
        last = first + _ceil_minutes(self.end - first)
        out = [p for p, t in _minute_paths(self.root / "rca_data" / self.date / kind) if first <= t <= last]
        normal = self.root / "construct_data" / self.date / kind
        out += [p for p, t in _minute_paths(normal) if self.baseline_start <= t < first]
        return out


def _ceil_minutes(d: timedelta) -> timedelta:
    return timedelta(minutes=-(-d.total_seconds() // 60))


def _minute_paths(folder: Path) -> list[tuple[Path, datetime]]:
    if not folder.is_dir():
        return []
    date = datetime.strptime(folder.parent.name, "%Y-%m-%d")
    out = []
    for path in sorted(folder.iterdir()):
        match = _MINUTE_FILE.match(path.name)
        if match is not None:
            out.append((path, date + timedelta(hours=int(match["hh"]), minutes=int(match["mm"]))))
    return out


def load_cases(
    root: Path,
    systems: tuple[str, ...] | list[str] | None = None,
    *,
    window: timedelta = timedelta(minutes=3),
    baseline: timedelta = timedelta(hours=1),
) -> list[NezhaCase]:
    """The fault cases under ``root`` (sorted by system and onset); reads only the fault lists.

    Raises :class:`NezhaFormatError` (a ``ValueError``) naming the file and entry of a malformed fault list,
    or when ``root`` holds no fault list.
    """
    root = Path(root)
    wanted = SYSTEMS if systems is None else tuple(systems)
    unknown = [s for s in wanted if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(SYSTEMS)}")
    data = root / "rca_data"
    if not data.is_dir():
        raise NezhaFormatError(data, "not a folder (expected the Nezha data set with rca_data/<date>/)")
    cases: list[NezhaCase] = []
    found = False
    for day in sorted(p for p in data.iterdir() if p.is_dir()):
        labels = day / f"{day.name}-fault_list.json"
        if not labels.is_file():
            continue
        found = True
        system = SYSTEM_OF_DATE.get(day.name) or _system_of_pods(labels)
        if system not in wanted:
            continue
        for onset, truth in _fault_list(labels):
            cases.append(
                NezhaCase(
                    name=f"{system}/{onset:%Y-%m-%dT%H:%M:%S}",
                    system=system,
                    date=day.name,
                    onset=onset,
                    end=onset + window,
                    baseline=baseline,
                    truth=truth,
                    root=root,
                )
            )
    if not found:
        raise NezhaFormatError(data, "no '<date>/<date>-fault_list.json' found")
    return sorted(cases, key=lambda c: (c.system, c.onset))


def _system_of_pods(labels: Path) -> str:
    pods = [t.pod for _, t in _fault_list(labels)]
    return "train-ticket" if pods and all(p.startswith("ts-") for p in pods) else "online-boutique"


def _fault_list(path: Path) -> list[tuple[datetime, NezhaTruth]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NezhaFormatError(path, f"not readable JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise NezhaFormatError(path, "expected an object {hour: [fault, ...]}")
    out = []
    for hour, entries in doc.items():
        if not isinstance(entries, list):
            raise NezhaFormatError(path, f"hour {hour!r}: expected a list of faults")
        for i, entry in enumerate(entries):
            where = f"hour {hour!r}, entry {i}"
            if not isinstance(entry, dict):
                raise NezhaFormatError(path, f"{where}: expected an object")
            for key in ("inject_time", "inject_pod", "inject_type"):
                if not isinstance(entry.get(key), str) or not entry[key]:
                    raise NezhaFormatError(path, f"{where}: missing or empty {key!r}")
            try:
                onset = datetime.strptime(entry["inject_time"], "%Y-%m-%d %H:%M:%S")
            except ValueError as exc:
                raise NezhaFormatError(
                    path, f"{where}: inject_time {entry['inject_time']!r} is not 'YYYY-MM-DD HH:MM:SS'"
                ) from exc
            pod = entry["inject_pod"]
            out.append((onset, NezhaTruth(service_of_pod(pod), entry["inject_type"], pod)))
    return out


# -- reading CSV with line numbers ----------------------------------------------------------------------
def _read_text_csv(
    path: Path, required: tuple[str, ...], strict: bool, rejects: list[Reject]
) -> pl.DataFrame:
    """All columns as text plus ``_line`` (the physical line of the record); ragged records are rejected."""
    try:
        raw = pl.read_csv(path, infer_schema=False)
        raw = raw.with_row_index("_line", offset=2).with_columns(pl.col("_line").cast(pl.Int64))
    except pl.exceptions.ComputeError:
        # polars stops at the first ragged record without saying where; re-read with the csv module, which
        # knows line numbers, to keep the good records and name the bad ones
        raw = _read_ragged_csv(path, strict, rejects)
    except (OSError, pl.exceptions.PolarsError, EOFError) as exc:
        raise NezhaFormatError(path, f"not a readable CSV ({exc})") from exc
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise NezhaFormatError(path, f"line 1: missing column(s) {', '.join(missing)}")
    return raw


def _read_ragged_csv(path: Path, strict: bool, rejects: list[Reject]) -> pl.DataFrame:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                raise NezhaFormatError(path, "empty file (no header)")
            rows, lines = [], []
            start = reader.line_num + 1
            for row in reader:
                if len(row) != len(header):
                    reason = f"{len(row)} fields where the header has {len(header)}"
                    _reject(path, f"line {start}", reason, ",".join(row), strict, rejects)
                else:
                    rows.append(row)
                    lines.append(start)
                start = reader.line_num + 1
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as exc:
        raise NezhaFormatError(path, f"not a readable CSV ({exc})") from exc
    frame = pl.DataFrame(rows, schema=dict.fromkeys(header, pl.Utf8), orient="row")
    return frame.with_columns(pl.Series("_line", lines, dtype=pl.Int64))


def _reject(path: Path, location: str, reason: str, raw: str, strict: bool, rejects: list[Reject]) -> None:
    if strict:
        raise NezhaFormatError(path, f"{location}: {reason}")
    rejects.append(Reject(source=str(path), location=location, reason=reason, raw=raw.encode("utf-8")))


def _reject_rows(
    path: Path,
    frame: pl.DataFrame,
    bad: pl.Series,
    column: str,
    reason: str,
    strict: bool,
    rejects: list[Reject],
) -> pl.DataFrame:
    """Dead-letter the rows where ``bad`` is true (naming ``column``) and return the others."""
    bad = bad.fill_null(False)
    if not bad.any():
        return frame
    hit = frame.filter(bad)
    # at most one reject per bad record; the loop is over bad records only
    for line, text in hit.select("_line", pl.col(column).cast(pl.Utf8)).iter_rows():
        _reject(path, f"line {line}, column {column!r}", reason.format(text=text), str(text), strict, rejects)
    return frame.filter(~bad)


# -- metrics ----------------------------------------------------------------------------------------------
def _metric_time(
    path: Path, raw: pl.DataFrame, text_col: str, epoch_col: str, strict: bool, rejects: list[Reject]
):
    """``ts`` from the Go time text (``2022-08-22 03:51:19.64 +0000 UTC m=+0.1``), checked against the epoch."""
    text = pl.col(text_col).str.extract(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)", 1)
    ts = text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", strict=False, time_unit="us")
    epoch = pl.col(epoch_col).cast(pl.Float64, strict=False)
    raw = raw.with_columns(ts.alias("ts"), epoch.alias("_epoch"))
    raw = _reject_rows(
        path, raw, raw["ts"].is_null(), text_col, "cannot parse {text!r} as a time", strict, rejects
    )
    raw = _reject_rows(
        path,
        raw,
        raw["_epoch"].is_null(),
        epoch_col,
        "cannot parse {text!r} as epoch seconds",
        strict,
        rejects,
    )
    skew = (raw["_epoch"] - raw["ts"].dt.epoch("us") / 1e6).abs()
    raw = _reject_rows(
        path,
        raw,
        skew > MAX_CLOCK_SKEW_S,
        epoch_col,
        "epoch {text} disagrees with the row's Time text by more than " + f"{MAX_CLOCK_SKEW_S:g} s",
        strict,
        rejects,
    )
    return raw.drop("_epoch")


def _numbers(
    path: Path, raw: pl.DataFrame, columns: list[str], strict: bool, rejects: list[Reject]
) -> pl.DataFrame:
    """Cast ``columns`` to float; a cell with text that is not a number rejects its row."""
    for c in columns:
        text = raw[c].str.strip_chars()
        value = text.cast(pl.Float64, strict=False)
        raw = raw.with_columns(value.alias(c))
        bad = value.is_null() & text.is_not_null() & (text != "")
        if bad.any():
            raw = _reject_rows(
                path,
                raw.with_columns(text.alias(c)),
                bad,
                c,
                "cannot parse {text!r} as a number",
                strict,
                rejects,
            ).with_columns(pl.col(c).cast(pl.Float64))
    return raw


def _metric_table(path: Path, kind: str, strict: bool) -> tuple[pl.DataFrame, tuple[Reject, ...]]:
    """One whole-day metric file as long rows ``ts, column, value`` plus its key column; cached per file
    version (the files are small, and every case of the day reads them)."""
    stat = path.stat()
    return _metric_table_cached(path, stat.st_mtime_ns, stat.st_size, kind, strict)


@lru_cache(maxsize=256)
def _metric_table_cached(
    path: Path, _mtime_ns: int, _size: int, kind: str, strict: bool
) -> tuple[pl.DataFrame, tuple[Reject, ...]]:
    rejects: list[Reject] = []
    keys = {"pod": _POD_METRIC_KEYS, "front": _FRONT_KEYS, "edge": _EDGE_KEYS}[kind]
    raw = _read_text_csv(path, keys, strict, rejects)
    raw = _metric_time(path, raw, keys[0], keys[1], strict, rejects)
    value_columns = [c for c in raw.columns if c not in (*keys, "_line", "ts")]
    raw = _numbers(path, raw, value_columns, strict, rejects)
    index = ["ts", keys[2]] if kind != "edge" else ["ts"]
    long = (
        raw.unpivot(index=index, on=value_columns, variable_name="column", value_name="value")
        .filter(pl.col("value").is_not_null() & pl.col("value").is_finite())
        .sort("ts")
    )
    return long, tuple(rejects)


def _metrics(
    folder: Path, system: str, start: datetime, end: datetime, strict: bool, rejects: list[Reject]
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    if not folder.is_dir():
        raise NezhaFormatError(folder, "metric folder missing")
    parts: list[pl.DataFrame] = []  # ts, column, value, metric, unit, service, labels
    known_services: set[str] = set()
    edges = schema.empty(schema.EDGES)
    for path in sorted(folder.glob("*_metric.csv")):
        long, bad = _metric_table(path, "pod", strict)
        rejects.extend(bad)
        long = long.filter(pl.col("ts").is_between(start, end, closed="left"))
        known_services.add(service_of_pod(path.name.removesuffix("_metric.csv")))
        parts.append(
            long.with_columns(
                _service_expr("PodName").alias("service"),
                pl.concat_list(pl.struct(key=pl.lit("k8s.pod.name"), value=pl.col("PodName"))).alias(
                    "labels"
                ),
            ).drop("PodName")
        )
    front = folder / "front_service.csv"
    if front.is_file():
        long, bad = _metric_table(front, "front", strict)
        rejects.extend(bad)
        long = long.filter(pl.col("ts").is_between(start, end, closed="left"))
        parts.append(
            long.drop("ServiceName").with_columns(
                pl.lit(KPI_SERVICE[system]).alias("service"), pl.lit([], dtype=schema.LABELS).alias("labels")
            )
        )
    dependency = folder / "dependency.csv"
    if dependency.is_file():
        edges = _declared_edges(dependency, strict, rejects)
        known_services |= set(edges["source"].to_list()) | set(edges["target"].to_list())
    for reporter in ("source", "destination"):
        path = folder / f"{reporter}_50.csv"
        if path.is_file():
            long, bad = _metric_table(path, "edge", strict)
            rejects.extend(bad)
            long = long.filter(pl.col("ts").is_between(start, end, closed="left"))
            parts.append(_edge_latency(path, long, reporter, known_services))
    if not parts:
        raise NezhaFormatError(folder, "no '<pod>_metric.csv' files")
    frame = pl.concat([p.select("ts", "column", "value", "service", "labels") for p in parts])
    names = {c: metric_name(c) for c in frame["column"].unique().to_list() if not c.startswith("\x00")}
    names.update(
        {c: ("request_latency_p50", "s") for c in frame["column"].unique().to_list() if c.startswith("\x00")}
    )
    frame = frame.with_columns(
        pl.col("column")
        .replace_strict({c: n for c, (n, _) in names.items()}, return_dtype=pl.Utf8)
        .alias("metric"),
        pl.col("column")
        .replace_strict({c: u for c, (_, u) in names.items()}, return_dtype=pl.Utf8)
        .alias("unit"),
    )
    catalog = frame.select("metric", "service", "unit", "labels").unique(["metric", "service", "labels"])
    ids = [
        series_id(m, s, {e["key"]: e["value"] for e in labels})
        for m, s, labels in catalog.select("metric", "service", "labels").iter_rows()
    ]  # one per series, not per point
    catalog = catalog.with_columns(pl.Series("series_id", ids, dtype=pl.Int64), pl.lit("gauge").alias("kind"))
    points = (
        frame.join(
            catalog.select("metric", "service", "labels", "series_id"), on=["metric", "service", "labels"]
        )
        .select(list(schema.POINTS))
        .sort("series_id", "ts")
    )
    series = catalog.select(list(schema.SERIES)).sort("series_id")
    return series, points, edges


def _declared_edges(path: Path, strict: bool, rejects: list[Reject]) -> pl.DataFrame:
    raw = _read_text_csv(path, ("Source", "Target"), strict, rejects)
    # rows whose target is an IP address place a service on a node; they are not calls
    calls = raw.filter(~pl.col("Target").str.contains(r"^\d+\.\d+\.\d+\.\d+$"))
    return calls.select(
        pl.col("Source").alias("source"),
        pl.col("Target").alias("target"),
        pl.lit(f"nezha:{path.name}").alias("origin"),
        pl.lit(None, dtype=schema.TS).alias("ts"),
    ).unique(["source", "target"], maintain_order=True)


def _edge_latency(path: Path, long: pl.DataFrame, reporter: str, services: set[str]) -> pl.DataFrame:
    pairs = {}
    for column in long["column"].unique().to_list():
        cut = [
            i
            for i, ch in enumerate(column)
            if ch == "_" and column[:i] in services and column[i + 1 :] in services
        ]
        if len(cut) != 1 and column.count("_") != 1:
            raise NezhaFormatError(path, f"line 1: column {column!r} is not '<caller>_<callee>'")
        i = cut[0] if len(cut) == 1 else column.index("_")
        pairs[column] = (column[:i], column[i + 1 :])
    caller = pl.col("column").replace_strict({c: a for c, (a, _) in pairs.items()}, return_dtype=pl.Utf8)
    callee = pl.col("column").replace_strict({c: b for c, (_, b) in pairs.items()}, return_dtype=pl.Utf8)
    labels = pl.concat_list(
        pl.struct(key=pl.lit("destination_workload"), value=callee),
        pl.struct(key=pl.lit("reporter"), value=pl.lit(reporter)),
        pl.struct(key=pl.lit("source_workload"), value=caller),
    )
    # a NUL prefix keeps edge columns apart from pod metric columns when names are resolved
    return long.with_columns(
        callee.alias("service"), labels.alias("labels"), (pl.lit("\x00") + pl.col("column")).alias("column")
    )


# -- logs and spans ----------------------------------------------------------------------------------------
def _nanos(column: str) -> pl.Expr:
    n = pl.col(column).cast(pl.Int64, strict=False)
    return pl.when(n.is_between(_NS_MIN, _NS_MAX)).then(n).otherwise(None)


def _logs(
    paths: list[Path], start: datetime, end: datetime, strict: bool, rejects: list[Reject]
) -> pl.DataFrame:
    frames = []
    for path in paths:
        raw = _read_text_csv(path, _LOG_COLUMNS, strict, rejects)
        iso = pl.col("Timestamp").str.strip_chars_end("Z")
        # TimeUnixNano overflowed int64 on some multi-line records; the ISO text is then the time
        ts = pl.coalesce(
            pl.from_epoch(_nanos("TimeUnixNano"), "ns").cast(schema.TS),
            iso.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us"),
            iso.str.to_datetime("%Y-%m-%dT%H:%M:%S", strict=False, time_unit="us"),
        )
        raw = raw.with_columns(ts.alias("ts"))
        raw = _reject_rows(
            path, raw, raw["ts"].is_null(), "Timestamp", "cannot parse {text!r} as a time", strict, rejects
        )
        frames.append(raw.filter(pl.col("ts").is_between(start, end, closed="left")))
    if not frames:
        return schema.empty(schema.LOGS)
    raw = pl.concat(frames, how="diagonal")
    for optional in ("Container", "Node"):
        if optional not in raw.columns:
            raw = raw.with_columns(pl.lit(None, dtype=pl.Utf8).alias(optional))
    body = pl.coalesce(pl.col("Log").str.json_path_match("$.log"), pl.col("Log")).str.strip_chars_end("\r\n")
    level = body.str.extract(_LEVEL, 1).str.to_lowercase()
    attrs = pl.concat_list(
        pl.struct(key=pl.lit("k8s.container.name"), value=pl.col("Container")),
        pl.struct(key=pl.lit("k8s.node.ip"), value=pl.col("Node")),
        pl.struct(key=pl.lit("k8s.pod.name"), value=pl.col("PodName")),
    ).list.eval(pl.element().filter(pl.element().struct.field("value").is_not_null()))
    logs = raw.select(
        pl.col("ts"),
        _service_expr("PodName").alias("service"),
        level.str.to_uppercase().str.replace("WARNING", "WARN").alias("severity"),
        level.replace_strict(schema.SEVERITY_NUMBERS, default=None, return_dtype=pl.Int32).alias(
            "severity_number"
        ),
        body.alias("body"),
        pl.col("TraceID").replace("", None).alias("trace_id"),
        pl.col("SpanID").replace("", None).alias("span_id"),
        attrs.alias("attributes"),
    )
    keys = logs.select(
        pl.col("ts").dt.epoch("ns"),
        "service",
        pl.col("severity").fill_null(""),
        "body",
        pl.col("trace_id").fill_null(""),
        pl.col("span_id").fill_null(""),
        "attributes",
    )
    # the same content hash as every other log decoder (re-ingesting a record is a no-op); one call per record
    hashed = [
        log_id(ns, service, severity, body, trace, span, {a["key"]: a["value"] for a in attrs})
        for ns, service, severity, body, trace, span, attrs in keys.iter_rows()
    ]
    logs = logs.with_columns(
        pl.Series("log_id", hashed, dtype=pl.Utf8),
        pl.lit(None, dtype=pl.Utf8).alias("tenant"),
        pl.lit(None, dtype=pl.Utf8).alias("template_id"),
    )
    return (
        logs.unique("log_id", maintain_order=True)
        .select([pl.col(c).cast(t) for c, t in schema.LOGS.items()])
        .sort("ts")
    )


def _spans(
    paths: list[Path], start: datetime, end: datetime, strict: bool, rejects: list[Reject]
) -> pl.DataFrame:
    frames = []
    for path in paths:
        raw = _read_text_csv(path, _TRACE_COLUMNS, strict, rejects)
        raw = raw.with_columns(_nanos("StartTimeUnixNano").alias("_s"), _nanos("EndTimeUnixNano").alias("_e"))
        raw = _reject_rows(
            path,
            raw,
            raw["_s"].is_null(),
            "StartTimeUnixNano",
            "{text!r} is not epoch nanoseconds",
            strict,
            rejects,
        )
        raw = _reject_rows(
            path,
            raw,
            raw["_e"].is_null() | (raw["_e"] < raw["_s"]),
            "EndTimeUnixNano",
            "{text!r} is not epoch nanoseconds at or after the start",
            strict,
            rejects,
        )
        raw = raw.with_columns(pl.from_epoch("_s", "ns").cast(schema.TS).alias("start"))
        frames.append(raw.filter(pl.col("start").is_between(start, end, closed="left")))
    if not frames:
        return schema.empty(schema.SPANS)
    raw = pl.concat(frames, how="diagonal")
    parent = pl.col("ParentID")
    spans = raw.select(
        pl.col("TraceID").alias("trace_id"),
        pl.col("SpanID").alias("span_id"),
        pl.when(parent.is_in(["root", ""]) | parent.is_null())
        .then(None)
        .otherwise(parent)
        .alias("parent_span_id"),
        _service_expr("PodName").alias("service"),
        pl.col("OperationName").alias("name"),
        pl.lit("unspecified").alias("kind"),
        pl.col("start"),
        ((pl.col("_e") - pl.col("_s")) / 1e6).alias("duration"),
        pl.lit("unset").alias("status"),
        pl.concat_list(pl.struct(key=pl.lit("k8s.pod.name"), value=pl.col("PodName"))).alias("resource"),
    )
    spans = spans.unique(["trace_id", "span_id"], keep="first", maintain_order=True)
    return FrameView(spans=spans).spans(None, None)
