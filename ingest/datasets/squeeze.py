"""Squeeze's semi-synthetic data sets (github.com/NetManAIOps/Squeeze; A, B0-B4, D on Zenodo 8153367).

A data set folder holds setting folders (``B_cuboid_layer_1_n_ele_1``: root causes of 1 label, 1 element),
each with ``injection_info.csv`` (``timestamp`` and ``set``: the root cause, elements separated by ``;``,
labels within one by ``&``, e.g. ``a=a1&b=b2;a=a3``) and one CSV per anomalous timestamp with a row per leaf:
dimension columns, ``real`` and ``predict``. The derived data set D has ``<ts>.a.csv`` (numerator) and
``<ts>.b.csv`` (denominator) instead. (``columns.json`` of the sample lists the anonymised dimension names
``a``-``d`` of data set A; the CSV headers name the columns, so it is not needed.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl

from ingest.csvtable import CsvInputError, read_csv_table
from ingest.datasets.riskloc import (
    ACTUAL,
    ACTUAL_DENOMINATOR,
    EXPECTED,
    EXPECTED_DENOMINATOR,
    DimensionCase,
    RootCauseSet,
)


def parse_set(text: str, where: str) -> tuple[dict[str, str], ...]:
    """A root-cause set ``a=1&b=2;c=3`` as elements; ``where`` (file and line) goes into errors.

    Examples
    --------
    >>> parse_set("a=1&b=2;c=3", "x.csv, line 2")
    ({'a': '1', 'b': '2'}, {'c': '3'})
    """
    elements = []
    for part in text.split(";"):
        pairs = [p.split("=", 1) for p in part.strip().split("&")]
        if not part.strip() or any(len(p) != 2 or not p[0] for p in pairs):
            raise CsvInputError(f"{where}: column 'set': cannot parse {text!r} (expected 'a=1&b=2;c=3')")
        elements.append({k.strip(): v.strip() for k, v in pairs})
    return tuple(elements)


def read_injections(path: Path) -> dict[str, tuple[dict[str, str], ...]]:
    """``injection_info.csv`` as timestamp (text) → root-cause elements."""
    raw, parsed = read_csv_table(path, {"timestamp": "number", "set": "id"})
    out = {}
    for row, (ts, text) in enumerate(zip(parsed["timestamp"], raw["set"], strict=True)):
        if ts is None:
            raise CsvInputError(f"{path}, line {row + 2}: column 'timestamp' is empty (expected a number)")
        out[str(int(ts))] = parse_set(text, f"{path}, line {row + 2}")
    return out


def _leaf_table(path: Path) -> tuple[pl.DataFrame, tuple[str, ...]]:
    raw, parsed = read_csv_table(path, {"real": "number", "predict": "number"})
    dims = tuple(c for c in raw.columns if c not in parsed)
    if not dims:
        raise CsvInputError(f"{path}: no dimension columns besides real, predict")
    frame = raw.select(*[pl.col(d).fill_null("") for d in dims]).with_columns(
        parsed["real"].fill_null(0.0).alias(ACTUAL), parsed["predict"].fill_null(0.0).alias(EXPECTED)
    )
    return frame, dims


def squeeze_leaves(folder: Path, stem: str) -> tuple[pl.DataFrame, tuple[str, ...], str]:
    """The leaf frame of one case: ``<stem>.csv`` (additive) or ``<stem>.a.csv`` / ``<stem>.b.csv`` (ratio).

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "5.csv").write_text("a,b,real,predict\\na1,b1,3,1\\na1,b2,1,1\\n")
    >>> leaves, dims, kpi = squeeze_leaves(d, "5")
    >>> dims, kpi, leaves["actual"].to_list()
    (('a', 'b'), 'additive', [3.0, 1.0])
    """
    single = folder / f"{stem}.csv"
    if single.is_file():
        leaves, dims = _leaf_table(single)
        return leaves, dims, "additive"
    num, dims = _leaf_table(folder / f"{stem}.a.csv")
    den, den_dims = _leaf_table(folder / f"{stem}.b.csv")
    if set(den_dims) != set(dims):
        raise CsvInputError(
            f"{folder / f'{stem}.b.csv'}: dimensions {den_dims} differ from the .a.csv's {dims}"
        )
    den = den.rename({ACTUAL: ACTUAL_DENOMINATOR, EXPECTED: EXPECTED_DENOMINATOR})
    leaves = num.join(den, on=list(dims), how="full", coalesce=True).fill_null(0.0)
    return leaves, dims, "ratio"


def iter_squeeze(root: Path) -> Iterator[tuple[DimensionCase, RootCauseSet]]:
    """Every case under ``root`` (any folder holding ``injection_info.csv``), sorted by folder and timestamp.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()) / "B_cuboid_layer_1_n_ele_1"
    >>> d.mkdir()
    >>> _ = (d / "injection_info.csv").write_text("set,timestamp\\na=a1,5\\n")
    >>> _ = (d / "5.csv").write_text("a,real,predict\\na1,9,1\\na2,1,1\\n")
    >>> case, truth = next(iter_squeeze(d.parent))
    >>> case.group, case.name, truth.keys()
    ('B_cuboid_layer_1_n_ele_1', 'B_cuboid_layer_1_n_ele_1/5', ('a=a1',))
    """
    root = Path(root)
    folders = sorted(p.parent for p in root.rglob("injection_info.csv"))
    if not folders:
        raise CsvInputError(f"{root}: no injection_info.csv below it")
    for folder in folders:
        truth = read_injections(folder / "injection_info.csv")
        stems = sorted({p.name.split(".")[0] for p in folder.glob("*.csv") if p.name != "injection_info.csv"})
        for stem in stems:
            if stem not in truth:
                raise CsvInputError(f"{folder / 'injection_info.csv'}: no row for timestamp {stem}")
            leaves, dims, kpi = squeeze_leaves(folder, stem)
            group = str(folder.relative_to(root)) if folder != root else folder.name
            name = f"{group}/{stem}"
            yield DimensionCase(name, group, leaves, dims, kpi), RootCauseSet(name, truth[stem])
