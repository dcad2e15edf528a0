"""RiskLoc's RS data set: real multi-dimensional root causes of a derived (ratio) KPI.

RS (github.com/shaido987/riskloc, ``data/RS``; data from the RobustSpot project) holds 135 labelled
anomalies of a video-streaming service. Each case file has one row per minute and leaf: ``min`` (epoch
seconds of the minute), dimension columns (a subset of ``cdn, bitrate, device, p2p, isp`` and a few more),
``value`` (failed sessions) and ``cnt`` (all sessions). ``anomaly.yaml`` names each case's file, the anomalous
minute (``timestamp``) and the root cause (``cause``: one element as a flow mapping such as
``{'bitrate':2000, 'p2p':1}``, or a list of them).

As in RiskLoc's reader (``utils/robustspot_data_utils.py``, after RobustSpot's ``get_predict_df``) a leaf's
expected values are the mean of the previous ``periods`` (4) minutes. RiskLoc scores the success ratio
``(cnt - value) / cnt``; we keep failures / sessions (the error rate), which has the same root causes.

The adapter yields a :class:`DimensionCase` (leaves, dims, KPI type) and, separately, the
:class:`RootCauseSet`; the localiser never sees the latter.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from ingest.csvtable import CsvInputError, read_csv_table

#: leaf-frame value columns of every dimension case (numerator, or the whole KPI when additive)
ACTUAL, EXPECTED = "actual", "expected"
#: denominator columns of ratio KPIs
ACTUAL_DENOMINATOR, EXPECTED_DENOMINATOR = "actual_denominator", "expected_denominator"


@dataclass(frozen=True)
class DimensionCase:
    """One localisation problem: a leaf frame (``dims`` + value columns) and the KPI type.

    ``kpi`` is ``"additive"`` (``actual``/``expected`` are the KPI) or ``"ratio"`` (they are the numerator;
    ``actual_denominator``/``expected_denominator`` the denominator); ``group`` is the benchmark folder.
    """

    name: str
    group: str
    leaves: pl.DataFrame
    dims: tuple[str, ...]
    kpi: str

    @property
    def denominator(self) -> tuple[str, str] | None:
        """The denominator columns for ``localize_dimensions``, ``None`` for additive KPIs."""
        return (ACTUAL_DENOMINATOR, EXPECTED_DENOMINATOR) if self.kpi == "ratio" else None


@dataclass(frozen=True)
class RootCauseSet:
    """Ground truth of one case: its elements (label combinations).

    Examples
    --------
    >>> t = RootCauseSet("c1", ({"p2p": "1", "bitrate": "2000"},))
    >>> t.keys(), t.layer
    (('bitrate=2000&p2p=1',), 2)
    """

    case: str
    elements: tuple[dict[str, str], ...]

    def keys(self) -> tuple[str, ...]:
        """The elements in RiskLoc's notation, sorted."""
        return tuple(sorted({element_key(e) for e in self.elements}))

    @property
    def layer(self) -> int:
        """Most labels in one element (RiskLoc's "layer" / cuboid order)."""
        return max((len(e) for e in self.elements), default=0)


def element_key(labels: Mapping[str, object]) -> str:
    """An element as ``a=1&b=2`` with labels sorted, the notation RiskLoc and Squeeze compare.

    Examples
    --------
    >>> element_key({"p2p": 1, "bitrate": 2000})
    'bitrate=2000&p2p=1'
    """
    return "&".join(f"{k}={v}" for k, v in sorted((str(k), str(v)) for k, v in labels.items()))


@dataclass(frozen=True)
class RsAnomaly:
    """One ``anomaly.yaml`` entry: case file stem, anomalous minute (epoch seconds), root-cause elements."""

    data: str
    timestamp: int
    cause: tuple[dict[str, str], ...]


def read_anomalies(path: Path) -> list[RsAnomaly]:
    """Parse RS's ``anomaly.yaml`` (a list of ``data``/``timestamp``/``cause`` mappings; ``cause`` a flow
    mapping or a list of them). A small reader of exactly this shape, so no YAML dependency; a bad entry
    raises :class:`~ingest.csvtable.CsvInputError` naming the file and line.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "anomaly.yaml"
    >>> _ = p.write_text("- data: case1\\n  timestamp: 60\\n  cause: {'bitrate':2000, 'p2p':1}\\n")
    >>> read_anomalies(p)[0].cause
    ({'bitrate': '2000', 'p2p': '1'},)
    """
    entries: list[dict[str, tuple[int, str]]] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        if line.startswith("- "):
            entries.append({})
            line = "  " + line[2:]
        if not entries or not line.startswith("  ") or ":" not in line:
            raise CsvInputError(
                f"{path}, line {number}: expected '- data: ...' or '  key: value', got {raw!r}"
            )
        key, value = (s.strip() for s in line.split(":", 1))
        if key not in ("data", "timestamp", "cause"):
            raise CsvInputError(
                f"{path}, line {number}: unknown key {key!r} (expected data, timestamp, cause)"
            )
        entries[-1][key] = (number, value)
    out = []
    for entry in entries:
        first = min(n for n, _ in entry.values())
        missing = [k for k in ("data", "timestamp", "cause") if k not in entry]
        if missing:
            raise CsvInputError(f"{path}, entry at line {first}: missing {', '.join(missing)}")
        n, ts = entry["timestamp"]
        if not ts.isdigit():
            raise CsvInputError(f"{path}, line {n}: timestamp {ts!r} is not epoch seconds")
        out.append(RsAnomaly(entry["data"][1].strip("'\""), int(ts), _cause(path, *entry["cause"])))
    return out


def _cause(path: Path, number: int, text: str) -> tuple[dict[str, str], ...]:
    try:
        value = ast.literal_eval(text)  # YAML flow mappings of plain scalars are Python literals
    except (ValueError, SyntaxError) as exc:
        raise CsvInputError(
            f"{path}, line {number}: cause {text!r} is not a mapping or list ({exc})"
        ) from exc
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, dict) and i for i in items):
        raise CsvInputError(
            f"{path}, line {number}: cause {text!r} must be a non-empty mapping or list of them"
        )
    return tuple({str(k): str(v) for k, v in i.items()} for i in items)


def rs_leaves(path: Path, timestamp: int, periods: int = 4) -> tuple[pl.DataFrame, tuple[str, ...]]:
    """The leaf frame of one RS case: failures and sessions at ``timestamp`` (actual) and their mean over the
    ``periods`` minutes before (expected), one row per dimension combination seen in either.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "c.csv"
    >>> _ = p.write_text("min,cdn,value,cnt\\n0,a,1,10\\n60,a,3,10\\n60,b,0,5\\n120,a,9,10\\n")
    >>> leaves, dims = rs_leaves(p, 120, periods=2)
    >>> dims, leaves.sort("cdn").rows()
    (('cdn',), [('a', 9.0, 2.0, 10.0, 10.0), ('b', 0.0, 0.0, 0.0, 2.5)])
    """
    raw, parsed = read_csv_table(path, {"min": "number", "value": "number", "cnt": "number"})
    for name, col in parsed.items():
        if col.is_null().any():
            row = int(col.is_null().arg_true()[0])
            raise CsvInputError(f"{path}, line {row + 2}: column {name!r} is empty (expected a number)")
    dims = tuple(c for c in raw.columns if c not in parsed)
    if not dims:
        raise CsvInputError(f"{path}: no dimension columns besides min, value, cnt")
    frame = raw.select(*[pl.col(d).fill_null("") for d in dims]).with_columns(
        parsed["min"].cast(pl.Int64).alias("min"), parsed["value"].alias("value"), parsed["cnt"].alias("cnt")
    )
    now = frame.filter(pl.col("min") == timestamp)
    if now.height == 0:
        raise CsvInputError(f"{path}: no rows at the anomaly minute {timestamp}")
    history = frame.filter(pl.col("min").is_in([timestamp - 60 * i for i in range(1, periods + 1)]))
    actual = now.group_by(dims).agg(
        pl.col("value").sum().alias(ACTUAL), pl.col("cnt").sum().alias(ACTUAL_DENOMINATOR)
    )
    expected = history.group_by(dims).agg(
        (pl.col("value").sum() / periods).alias(EXPECTED),
        (pl.col("cnt").sum() / periods).alias(EXPECTED_DENOMINATOR),
    )
    leaves = (
        actual.join(expected, on=list(dims), how="full", coalesce=True, nulls_equal=True)
        .with_columns(pl.col(ACTUAL, EXPECTED, ACTUAL_DENOMINATOR, EXPECTED_DENOMINATOR).fill_null(0.0))
        .select(*dims, ACTUAL, EXPECTED, ACTUAL_DENOMINATOR, EXPECTED_DENOMINATOR)
        .sort(list(dims))
    )
    return leaves, dims


def rs_directory(root: Path) -> Path:
    """The folder holding ``anomaly.yaml``: ``root`` itself, ``root/RS`` or ``root/data/RS``."""
    for candidate in (root, root / "RS", root / "data" / "RS"):
        if (candidate / "anomaly.yaml").is_file():
            return candidate
    raise CsvInputError(f"{root}: no anomaly.yaml in it, in RS/ or in data/RS/")


def iter_riskloc_rs(root: Path, *, periods: int = 4) -> Iterator[tuple[DimensionCase, RootCauseSet]]:
    """Every RS case in ``anomaly.yaml`` order: the case (ratio KPI, failures / sessions) and its truth.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "anomaly.yaml").write_text("- data: c1\\n  timestamp: 60\\n  cause: {'cdn': 5}\\n")
    >>> _ = (d / "c1.csv").write_text("min,cdn,value,cnt\\n0,5,1,10\\n60,5,5,10\\n60,3,0,10\\n")
    >>> case, truth = next(iter_riskloc_rs(d))
    >>> case.kpi, case.dims, case.leaves.height, truth.keys()
    ('ratio', ('cdn',), 2, ('cdn=5',))
    """
    directory = rs_directory(Path(root))
    for anomaly in read_anomalies(directory / "anomaly.yaml"):
        path = directory / f"{anomaly.data}.csv"
        if not path.is_file():
            raise CsvInputError(
                f"{directory / 'anomaly.yaml'}: case {anomaly.data!r} has no file {path.name}"
            )
        leaves, dims = rs_leaves(path, anomaly.timestamp, periods)
        case = DimensionCase(anomaly.data, "RS", leaves, dims, "ratio")
        yield case, RootCauseSet(anomaly.data, anomaly.cause)
