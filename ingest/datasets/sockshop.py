"""The RCD Sock Shop metrics (Ikram et al., NeurIPS 2022; "Sock Shop 1" in RCAEval / BARO, ASE'24).

Layout: ``sock-shop-data/<service>-<fault>/<n>/{normal,anomalous}.csv``, 5 services x {cpu, mem} x 5 repeats.
Each CSV has a ``time`` column (epoch seconds, 1 s steps) and one column per ``<container>_<metric>``, scraped
from Prometheus by the data set's ``collect-data.py``:

* ``cpu``: ``sum(rate(container_cpu_usage_seconds_total[45s])) by (container) * 100`` -> ``cpu`` (%);
* ``mem``: ``sum(container_memory_usage_bytes) by (container)`` -> ``memory`` (bytes);
* ``lod``: ``sum(rate(request_duration_seconds_count[45s])) by (name)`` -> ``request_rate`` (1/s);
* ``lat_50|90|99``: ``histogram_quantile`` of ``request_duration_seconds`` -> ``latency_p50|90|99`` (s);
* ``err`` (error share; in the collection script, not in the published files) -> ``error_ratio``.

A container ``<svc>-db`` belongs to service ``<svc>`` (``carts-db`` -> ``carts``); CPU and memory series keep
the container in their ``container`` label, so ``carts`` and ``carts-db`` CPU are two series of service
``carts``. Request rate and latency are per service (no labels).

Onset. The files carry no injection timestamp: ``normal.csv`` was recorded before the fault and
``anomalous.csv`` while it was active, at different times (hours or days apart; in ``orders-mem/5`` the
normal window was even recorded *after* the anomalous one). RCAEval evaluates this data by concatenating
the two tables and putting the anomaly time at the boundary (``anomalies=[len(normal)]``), which is BARO's
``tΔ = 0`` setting. The adapter does the same: the normal window is moved (one constant shift, 1 s steps
kept) to end one step before the first anomalous row, the anomalous timestamps are kept, and the **onset is
the first anomalous timestamp**. The shift is recorded in :attr:`SockShopCase.normal_shift`.

The ground truth (service and fault type, from the directory name) is a separate :class:`SockShopTruth`;
:meth:`SockShopCase.view` and :meth:`SockShopCase.incident` carry no trace of it (series ids are column
positions, the incident has no id).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from ingest import schema
from ingest.datasets import DatasetFormatError
from rca.base import FrameView, RcaIncident

_EPOCH = datetime(1970, 1, 1)

#: the user-facing entry service: the data set defines no KPI, so incidents are about the front end
KPI_SERVICE = "front-end"

#: column suffix -> (Rootwise metric name, unit)
METRICS: dict[str, tuple[str, str | None]] = {
    "cpu": ("cpu", "%"),
    "mem": ("memory", "By"),
    "lod": ("request_rate", "1/s"),
    "lat_50": ("latency_p50", "s"),
    "lat_90": ("latency_p90", "s"),
    "lat_99": ("latency_p99", "s"),
    "err": ("error_ratio", "1"),
}

_PER_CONTAINER = ("cpu", "mem")
_COLUMN = re.compile(r"^(?P<container>[a-z0-9][a-z0-9-]*?)_(?P<suffix>" + "|".join(METRICS) + r")$")
_CASE_DIR = re.compile(r"^(?P<service>[a-z0-9-]+)-(?P<fault>[a-z0-9]+)$")


class SockShopFormatError(DatasetFormatError):
    """A Sock Shop file that cannot be used."""


@dataclass(frozen=True)
class SockShopTruth:
    """The injected fault of a case: the service and the fault type (``cpu``, ``mem``)."""

    service: str
    fault_type: str


@dataclass(frozen=True)
class SockShopCase:
    """One case: telemetry frames with :mod:`ingest.schema` columns, the window, and the truth kept apart.

    ``points`` holds the normal rows (``ts < onset``) and the anomalous rows (``onset <= ts < end``);
    ``baseline_start`` is the first normal timestamp. ``normal_shift`` is how far the normal window was moved
    to end just before the onset (see the module docstring). Analysers get :meth:`view` and
    :meth:`incident`, never ``truth`` or ``name`` (the directory name is the label).

    Examples
    --------
    >>> from datetime import datetime
    >>> case = SockShopCase("x-cpu/1", schema.empty(schema.SERIES), schema.empty(schema.POINTS),
    ...                     datetime(2022, 5, 1, 0, 5), datetime(2022, 5, 1, 0, 10), datetime(2022, 5, 1),
    ...                     timedelta(0), SockShopTruth("x", "cpu"))
    >>> inc = case.incident()
    >>> (inc.service, inc.baseline_start, inc.id)
    ('front-end', datetime.datetime(2022, 5, 1, 0, 0), None)
    """

    name: str
    series: pl.DataFrame
    points: pl.DataFrame
    onset: datetime
    end: datetime
    baseline_start: datetime
    normal_shift: timedelta
    truth: SockShopTruth

    def view(self) -> FrameView:
        """The telemetry as a :class:`rca.base.FrameView` (series and points only)."""
        return FrameView(series=self.series, points=self.points)

    def incident(self, lag: timedelta = timedelta(0)) -> RcaIncident:
        """The incident to explain: the front end, from the onset (plus ``lag``, to simulate a late alert)
        to the end, with the whole normal window as baseline."""
        onset = self.onset + lag
        return RcaIncident(
            service=KPI_SERVICE,
            metric=None,
            onset=onset,
            end=self.end,
            baseline=onset - self.baseline_start,
        )


def service_of(container: str) -> str:
    """The service a container belongs to: a ``-db`` container is part of its service.

    Examples
    --------
    >>> service_of("carts-db"), service_of("queue-master"), service_of("orders")
    ('carts', 'queue-master', 'orders')
    """
    return container.removesuffix("-db")


def _read_table(path: Path) -> pl.DataFrame:
    """``time`` (epoch seconds) and float metric columns of one CSV, with errors naming line and column."""
    if not path.is_file():
        raise SockShopFormatError(path, "file missing (each case needs normal.csv and anomalous.csv)")
    try:
        raw = pl.read_csv(path, infer_schema=False)
    except Exception as exc:  # polars raises several types for unreadable CSV
        raise SockShopFormatError(path, f"not a readable CSV ({exc})") from exc
    if not raw.columns or raw.columns[0] != "time":
        raise SockShopFormatError(path, "line 1: the first column must be 'time' (epoch seconds)")
    if raw.height == 0:
        raise SockShopFormatError(path, "no data rows")
    for name in raw.columns[1:]:
        if not _COLUMN.match(name):
            raise SockShopFormatError(
                path, f"line 1: column {name!r} is not '<container>_<{'|'.join(METRICS)}>'"
            )
    text = raw.select(pl.all().str.strip_chars())
    values = text.select(pl.all().cast(pl.Float64, strict=False))
    # a cell is bad when it has text that is not a number; an empty cell is a missing value (time excepted)
    bad = pl.DataFrame(
        {
            c: values[c].is_null() & ((text[c].is_not_null() & (text[c] != "")) | (c == "time"))
            for c in raw.columns
        }
    )
    hits = bad.select(pl.any_horizontal(pl.all())).to_series()
    if hits.any():
        row = int(hits.arg_true()[0])
        col = next(c for c in raw.columns if bad[c][row])
        raise SockShopFormatError(
            path, f"line {row + 2}, column {col!r}: cannot parse {raw[col][row]!r} as a number"
        )
    times = values["time"]
    if times.is_duplicated().any() or not times.is_sorted():
        raise SockShopFormatError(path, "column 'time': timestamps must be strictly increasing")
    return values


def _to_ts(seconds: pl.Expr) -> pl.Expr:
    return (seconds * 1_000_000).round().cast(pl.Int64).cast(schema.TS)


def _epoch(seconds: float) -> datetime:
    """Naive UTC datetime of epoch seconds, rounded to the microsecond like :func:`_to_ts`."""
    return _EPOCH + timedelta(microseconds=round(seconds * 1_000_000))


def load_case(folder: Path, name: str, truth: SockShopTruth) -> SockShopCase:
    """One case folder (``.../<service>-<fault>/<n>``) as a :class:`SockShopCase`."""
    normal = _read_table(folder / "normal.csv")
    anomalous = _read_table(folder / "anomalous.csv")
    columns = list(dict.fromkeys([*normal.columns[1:], *anomalous.columns[1:]]))
    rows = []
    for i, column in enumerate(columns, start=1):
        match = _COLUMN.match(column)
        assert match is not None  # checked by _read_table
        metric, unit = METRICS[match["suffix"]]
        container = match["container"]
        rows.append(
            {
                "series_id": i,
                "metric": metric,
                "service": service_of(container),
                "kind": "gauge",
                "unit": unit,
                # cpu/mem are per container; request metrics are per service (PromQL ``by (name)``)
                "labels": [{"key": "container", "value": container}]
                if match["suffix"] in _PER_CONTAINER
                else [],
            }
        )
    series = pl.DataFrame(rows, schema=schema.SERIES)
    ids = {c: i for i, c in enumerate(columns, start=1)}

    # normal window moved to end one step before the first anomalous row (RCAEval's concatenation)
    a_times, n_times = anomalous["time"].to_numpy(), normal["time"].to_numpy()
    step = float(np.median(np.diff(a_times))) if a_times.size > 1 else 1.0
    shift = float(a_times[0] - step - n_times[-1])

    def long(frame: pl.DataFrame, offset: float) -> pl.DataFrame:
        cols = frame.columns[1:]
        return (
            frame.with_columns(_to_ts(pl.col("time") + offset).alias("ts"))
            .unpivot(index="ts", on=cols, variable_name="column", value_name="value")
            .drop_nulls("value")
            .with_columns(pl.col("column").replace_strict(ids, return_dtype=pl.Int64).alias("series_id"))
            .select(list(schema.POINTS))
        )

    points = pl.concat([long(normal, shift), long(anomalous, 0.0)]).sort("series_id", "ts")
    return SockShopCase(
        name=name,
        series=series,
        points=points,
        onset=_epoch(float(a_times[0])),
        end=_epoch(float(a_times[-1]) + step),
        baseline_start=_epoch(float(n_times[0]) + shift),
        normal_shift=timedelta(seconds=shift),
        truth=truth,
    )


def load_cases(root: Path) -> list[SockShopCase]:
    """Every case under ``root`` (the ``sock-shop-data`` folder or its parent), sorted by name.

    Raises :class:`SockShopFormatError` (a ``ValueError``) naming the file for a malformed case and when no
    case is found.
    """
    root = Path(root)
    data = root / "sock-shop-data" if (root / "sock-shop-data").is_dir() else root
    if not data.is_dir():
        raise SockShopFormatError(data, "not a folder")
    cases = []
    for fault_dir in sorted(p for p in data.iterdir() if p.is_dir()):
        match = _CASE_DIR.match(fault_dir.name)
        if match is None:
            raise SockShopFormatError(fault_dir, "folder name is not '<service>-<fault>'")
        truth = SockShopTruth(service=match["service"], fault_type=match["fault"])
        for case_dir in sorted(p for p in fault_dir.iterdir() if p.is_dir()):
            cases.append(load_case(case_dir, f"{fault_dir.name}/{case_dir.name}", truth))
    if not cases:
        raise SockShopFormatError(data, "no case folders '<service>-<fault>/<n>/' found")
    return cases
