"""The long schema ``ts, metric, value, service, <label columns…>`` (Parquet, CSV and JSONL rows).

:func:`long_frame_to_batch` turns one polars frame of long rows into a :class:`~ingest.batch.TelemetryBatch`
without a per-row Python loop: timestamps and values are parsed with polars expressions, the label columns are
dictionary-encoded and combined into one integer key per row, and only the *unique* series of a frame go
through Python (:func:`ingest.batch.series_key` / :func:`ingest.batch.series_id_of_key`, so ids match every
other decoder). Invalid rows are found with masks and dead-lettered with their location (``line N`` of a CSV
or JSON Lines file, ``row N`` of a Parquet file, both counting from 1), the reason and the raw row as JSON.
:func:`iter_long_file` streams a file in bounded frames so memory does not grow with the file.

Columns
-------
``ts``
    A datetime column (naive = UTC, zoned = converted to UTC), a date, RFC 3339 / ISO 8601 strings with or
    without an offset (``2024-05-01T12:00:00Z``, ``…+02:00``, ``2024-05-01 12:00:00.123``, ``2024-05-01``;
    no offset = UTC) or epoch numbers. The unit of an epoch number is decided per value by its magnitude:
    ``|v| < 1e11`` seconds (up to year 5138), ``< 1e14`` milliseconds, ``< 1e17`` microseconds, else
    nanoseconds. Stored with microsecond precision (finer digits are truncated).
``metric``, ``service``
    Non-empty strings.
``value``
    Any number or a numeric string; must be finite.
``kind``, ``unit`` (optional)
    Per row; ``kind`` one of :data:`LONG_KINDS` (default ``gauge`` or the ``kind`` argument); a series keeps
    the kind and unit of the first row that creates it.
every other column
    A label named after the column. A null or empty value means the label is absent (as in Prometheus), so
    sparse label columns are fine. Non-string label columns are stored as their string form.
"""

from __future__ import annotations

import bisect
import csv
import gzip
import io
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import polars as pl
import polars.selectors as cs
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from ingest import schema
from ingest.batch import Reject, TelemetryBatch, series_frame, series_id_of_key, series_key, ts_bounds_ns

REQUIRED_COLUMNS = ("ts", "metric", "value", "service")
OPTIONAL_COLUMNS = ("kind", "unit")
#: kinds a long row can carry (a scalar value cannot be a histogram or summary point)
LONG_KINDS = ("gauge", "counter", "delta")

#: epoch magnitude thresholds (absolute value): below the first seconds, then ms, then us, else ns
_EPOCH_S_MAX = 10**11
_EPOCH_MS_MAX = 10**14
_EPOCH_US_MAX = 10**17

GZIP_MAGIC = b"\x1f\x8b"
#: CSV read block: a row must fit in one block
CSV_BLOCK_BYTES = 16 << 20

_ISO_FORMAT_ZONED = "%Y-%m-%dT%H:%M:%S%.f%z"
_ISO_FORMAT_NAIVE = "%Y-%m-%dT%H:%M:%S%.f"
_STRINGY = (pl.Utf8, pl.Categorical, pl.Enum)
#: name of the internal per-row series key column (cannot clash with a label column name from a file)
_KEY = "\x00key"


class LongFormatError(ValueError):
    """A long-format input that cannot be read at all (missing columns, unusable column types)."""


def expected_columns_text() -> str:
    return (
        "expected columns ts, metric, value, service (required), kind, unit (optional) and any label columns"
    )


# -- timestamps --------------------------------------------------------------------------------------------
def _int_epoch_to_us(x: pl.Expr) -> pl.Expr:
    a = x.abs()
    return (
        pl.when(a < _EPOCH_S_MAX)
        .then(x * 1_000_000)
        .when(a < _EPOCH_MS_MAX)
        .then(x * 1_000)
        .when(a < _EPOCH_US_MAX)
        .then(x)
        .otherwise(x // 1_000)
    )


def _float_epoch_to_us(x: pl.Expr) -> pl.Expr:
    a = x.abs()
    us = (
        pl.when(a < _EPOCH_S_MAX)
        .then(x * 1e6)
        .when(a < _EPOCH_MS_MAX)
        .then(x * 1e3)
        .when(a < _EPOCH_US_MAX)
        .then(x)
        .otherwise(x / 1e3)
    )
    # non-finite or beyond int64 -> null (unparsable); floor keeps negative fractions consistent with ints
    return pl.when(x.is_finite() & (a < 9e18)).then(us.floor()).cast(pl.Int64, strict=False)


def string_ts_to_us(s: pl.Expr) -> pl.Expr:
    """Parse strings (RFC 3339 / ISO 8601 with or without offset, or epoch numbers) to epoch microseconds.

    Unparsable strings become null.
    """
    s = s.str.strip_chars()
    iso = s.str.replace(r"^(\d{4}-\d{2}-\d{2})[ tT]", "${1}T").str.replace(r"[zZ]$", "+00:00")
    zoned = iso.str.to_datetime(_ISO_FORMAT_ZONED, strict=False, time_unit="us", time_zone="UTC")
    naive = iso.str.to_datetime(_ISO_FORMAT_NAIVE, strict=False, time_unit="us")
    day = s.str.to_date("%Y-%m-%d", strict=False).cast(schema.TS)
    return pl.coalesce(
        _int_epoch_to_us(s.cast(pl.Int64, strict=False)),
        _float_epoch_to_us(s.cast(pl.Float64, strict=False)),
        zoned.dt.replace_time_zone(None).dt.epoch("us"),
        naive.dt.epoch("us"),
        day.dt.epoch("us"),
    )


def _parse_distinct(texts: pl.Series) -> pl.Series:
    """:func:`string_ts_to_us` applied to the distinct values of ``texts`` only, mapped back to every row."""
    distinct = texts.drop_nulls().unique()
    parsed = distinct.to_frame("t").select(string_ts_to_us(pl.col("t"))).to_series()
    return texts.replace_strict(distinct, parsed, default=None, return_dtype=pl.Int64)


def ts_to_us(column: str, dtype: pl.DataType, source: str) -> pl.Expr:
    """Expression turning the timestamp column ``column`` of type ``dtype`` into epoch microseconds (Int64).

    Unparsable values become null; an unusable column type raises :class:`LongFormatError`.
    """
    c = pl.col(column)
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is not None:
            c = c.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return c.dt.epoch("us")
    if dtype == pl.Date:
        return c.cast(schema.TS).dt.epoch("us")
    if dtype.is_integer():
        return _int_epoch_to_us(c.cast(pl.Int64, strict=False))
    if dtype.is_float() or dtype.is_decimal():
        return _float_epoch_to_us(c.cast(pl.Float64))
    if isinstance(dtype, _STRINGY) or dtype == pl.Utf8:
        return string_ts_to_us(c.cast(pl.Utf8))
    if dtype == pl.Null:
        return pl.lit(None, dtype=pl.Int64)
    raise LongFormatError(
        f"{source}: column {column!r} has type {dtype}; expected a datetime, RFC 3339 strings or epoch numbers"
    )


def _value_expr(dtype: pl.DataType, source: str) -> pl.Expr:
    c = pl.col("value")
    if dtype.is_numeric() or dtype == pl.Boolean:
        return c.cast(pl.Float64)
    if isinstance(dtype, _STRINGY) or dtype == pl.Utf8:
        return c.cast(pl.Utf8).str.strip_chars().cast(pl.Float64, strict=False)
    if dtype == pl.Null:
        return pl.lit(None, dtype=pl.Float64)
    raise LongFormatError(f"{source}: column 'value' has type {dtype}; expected numbers or numeric strings")


# -- text columns ------------------------------------------------------------------------------------------
def _decode_binary(series: pl.Series) -> tuple[pl.Series, pl.Series | None]:
    """A binary column as strings; invalid UTF-8 values become null and are flagged in the returned mask."""
    try:
        return series.cast(pl.Utf8), None
    except pl.exceptions.PolarsError:
        pass
    # rare path: per-value decode to find the offending rows
    out: list[str | None] = []
    bad: list[bool] = []
    for v in series.to_list():
        if v is None:
            out.append(None)
            bad.append(False)
            continue
        try:
            out.append(v.decode("utf-8"))
            bad.append(False)
        except UnicodeDecodeError:
            out.append(None)
            bad.append(True)
    return pl.Series(series.name, out, dtype=pl.Utf8), pl.Series(series.name, bad, dtype=pl.Boolean)


def _col(name: str) -> pl.Expr:
    """The column called ``name``, literally: ``pl.col`` reads ``*`` as every column and ``^...$`` as a regular
    expression, and label column names come from users' files."""
    return cs.by_name(name).as_expr()


def _as_text(frame: pl.DataFrame, column: str, source: str) -> pl.Expr:
    dtype = frame.schema[column]
    if isinstance(dtype, pl.Categorical | pl.Enum):
        return _col(column).cast(pl.Categorical)
    if dtype == pl.Utf8 or dtype == pl.Null or dtype.is_numeric() or dtype == pl.Boolean:
        return _col(column).cast(pl.Utf8).cast(pl.Categorical)
    if isinstance(dtype, pl.Datetime | pl.Date | pl.Time | pl.Duration):
        return _col(column).cast(pl.Utf8).cast(pl.Categorical)
    raise LongFormatError(
        f"{source}: column {column!r} has type {dtype}; label columns must hold scalar values"
    )


def _check_columns(columns: Sequence[str], source: str) -> list[str]:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise LongFormatError(
            f"{source}: missing column(s) {', '.join(missing)}; {expected_columns_text()}; "
            f"found {', '.join(repr(c) for c in columns)}"
        )
    seen: set[str] = set()
    for i, c in enumerate(columns):
        if not c.strip():
            raise LongFormatError(f"{source}: column {i + 1} has an empty name; every column needs a name")
        if c in seen:
            raise LongFormatError(
                f"{source}: column {c!r} appears more than once; column names must be unique"
            )
        seen.add(c)
    return [c for c in columns if c not in REQUIRED_COLUMNS and c not in OPTIONAL_COLUMNS]


def label_columns(columns: Sequence[str]) -> list[str]:
    """The label columns among ``columns`` (everything but the required and optional ones)."""
    return [c for c in columns if c not in REQUIRED_COLUMNS and c not in OPTIONAL_COLUMNS]


# -- conversion --------------------------------------------------------------------------------------------
def long_frame_to_batch(
    df: pl.DataFrame,
    source: str,
    *,
    first_row: int = 1,
    kind: str | None = None,
    now_ns: int | None = None,
    row_numbers: pl.Series | None = None,
    location_word: str = "row",
    series_cache: dict[tuple, tuple] | None = None,
) -> TelemetryBatch:
    """Convert a frame of long rows to a batch; invalid rows become rejects.

    Parameters
    ----------
    df
        Rows ``ts, metric, value, service, [kind], [unit], <labels…>``.
    source
        File name (or endpoint) recorded in rejects and error messages.
    first_row
        Number of ``df``'s first row in its file, counting from 1; reject locations are
        ``row <first_row + index>``.
    kind
        Series kind for rows without a ``kind`` column/value (default ``gauge``).
    now_ns
        "Now" for the accepted timestamp range (tests); default the wall clock.
    row_numbers, location_word
        Explicit number of each row and the word before it in reject locations (CSV and JSON Lines pass their
        line numbers and ``"line"``); default ``first_row + index`` and ``"row"``.
    series_cache
        A dict shared by the batches of one file: each series is hashed and validated once per file, not
        once per batch (the batches of a long file mostly repeat the same series).

    Raises
    ------
    LongFormatError
        When a required column is missing, a column name is empty or repeated, or a column has a type that
        cannot hold its values.

    Examples
    --------
    >>> df = pl.DataFrame({"ts": ["2024-05-01T00:00:00Z", "bad"], "metric": ["rps", "rps"],
    ...                    "value": [1.5, 2.0], "service": ["api", "api"], "tenant": ["t1", "t1"]})
    >>> b = long_frame_to_batch(df, "example.csv")
    >>> b.points.height, b.series["labels"].to_list(), b.rejects[0].location
    (1, [[{'key': 'tenant', 'value': 't1'}]], 'row 2')
    """
    labels = _check_columns(df.columns, source)
    default_kind = kind or "gauge"
    if default_kind not in LONG_KINDS:
        raise LongFormatError(f"{source}: kind {default_kind!r} is not one of {', '.join(LONG_KINDS)}")
    if df.height == 0:
        return TelemetryBatch()
    min_ns, max_ns = ts_bounds_ns(now_ns)
    min_us, max_us = -(-min_ns // 1000), max_ns // 1000

    # binary text columns (CSV read as bytes, Parquet BYTE_ARRAY without UTF-8 annotation) -> strings
    utf8_bad: dict[str, pl.Series] = {}
    text_cols = ["metric", "service", *labels, *(c for c in OPTIONAL_COLUMNS if c in df.columns)]
    for c in [*text_cols, "ts", "value"]:
        if df.schema[c] == pl.Binary:
            decoded, bad = _decode_binary(df.get_column(c))
            original = df.get_column(c)
            df = df.with_columns(decoded)
            if bad is not None:
                utf8_bad[c] = bad
                df = df.with_columns(original.alias(f"\x00raw:{c}"))  # kept for the dead letter only

    key_cols = ["metric", "service", *labels, *(c for c in OPTIONAL_COLUMNS if c in df.columns)]
    cats = df.select([_as_text(df, c, source).alias(c) for c in key_cols])
    # labels: empty string = absent; metric/service/kind/unit emptiness is judged per unique key below
    if labels:
        cats = cats.with_columns([pl.when(_col(c) != "").then(_col(c)).alias(c) for c in labels])
    key = _combined_key(cats.select([_col(c).to_physical() for c in key_cols]))

    ts_dtype = df.schema["ts"]
    if isinstance(ts_dtype, _STRINGY) or ts_dtype == pl.Utf8:
        # timestamps repeat across the series of a file: parse each distinct string once
        ts_us = _parse_distinct(df.get_column("ts").cast(pl.Utf8))
        work = df.select(ts_us.alias("ts_us"), _value_expr(df.schema["value"], source).alias("value"))
    else:
        work = df.select(
            ts_to_us("ts", ts_dtype, source).alias("ts_us"),
            _value_expr(df.schema["value"], source).alias("value"),
        )
    work = work.with_columns(key.alias(_KEY))

    # one Python step per unique series (metric, service, labels, kind, unit)
    uniq = cats.with_columns(work.get_column(_KEY)).unique(subset=_KEY, keep="first", maintain_order=True)
    ids, reasons, series_rows = _series_of_uniques(
        uniq, labels, default_kind, {} if series_cache is None else series_cache
    )
    mapping = pl.DataFrame(
        {_KEY: uniq.get_column(_KEY), "series_id": ids, "key_reason": reasons},
        schema={_KEY: pl.UInt64, "series_id": pl.Int64, "key_reason": pl.Utf8},
    )
    work = work.with_columns(
        pl.col(_KEY)
        .replace_strict(mapping[_KEY], mapping["series_id"], return_dtype=pl.Int64)
        .alias("series_id")
    )
    valid = (
        pl.col("series_id").is_not_null()
        & pl.col("ts_us").is_between(min_us, max_us)
        & pl.col("value").is_finite()
    ).fill_null(False)
    if utf8_bad:
        for bad in utf8_bad.values():
            valid = valid & ~pl.lit(bad)
    work = work.with_columns(valid.alias("valid"))
    n_valid = int(work.get_column("valid").sum())

    if n_valid == work.height:
        points = work.select("series_id", pl.col("ts_us").cast(schema.TS).alias("ts"), "value")
        rejects: list[Reject] = []
    else:
        points = work.filter("valid").select(
            "series_id", pl.col("ts_us").cast(schema.TS).alias("ts"), "value"
        )
        rejects = _rejects(
            df, work, mapping, utf8_bad, source, first_row, row_numbers, location_word, min_us, max_us
        )

    used = set(points.get_column("series_id").unique().to_list()) if points.height else set()
    rows = [r for r in series_rows if r[0] in used]
    series = (
        series_frame(rows).unique(subset="series_id", keep="first", maintain_order=True)
        if rows
        else schema.empty(schema.SERIES)
    )
    return TelemetryBatch(series=series, points=points, rejects=rejects)


def _combined_key(codes: pl.DataFrame) -> pl.Series:
    """One UInt64 per row identifying its combination of dictionary codes (null code = absent).

    Each column's codes are shifted to start at 1 (0 = null) and packed into 64 bits when they fit (the
    common case: a handful of columns whose values were interned together); otherwise the rows are numbered
    by their unique combination with a join.
    """
    bounds = codes.select(
        [_col(c).min().alias(f"lo{i}") for i, c in enumerate(codes.columns)]
        + [_col(c).max().alias(f"hi{i}") for i, c in enumerate(codes.columns)]
    ).row(0)
    n = len(codes.columns)
    parts = []
    total_bits = 0
    for i, c in enumerate(codes.columns):
        lo, hi = bounds[i], bounds[n + i]
        lo = 0 if lo is None else int(lo)
        hi = 0 if hi is None else int(hi)
        width = (hi - lo + 1).bit_length()
        total_bits += width
        parts.append(((_col(c).cast(pl.UInt64) - lo + 1).fill_null(0), width))
    if total_bits <= 64:
        expr: pl.Expr | None = None
        for part, width in parts:
            expr = part if expr is None else expr * pl.lit(1 << width, dtype=pl.UInt64) + part
        assert expr is not None
        return codes.select(expr.alias(_KEY)).get_column(_KEY)
    uniq = codes.unique().with_row_index(_KEY).with_columns(pl.col(_KEY).cast(pl.UInt64))
    on = [_col(c) for c in codes.columns]
    return codes.join(uniq, on=on, how="left", nulls_equal=True, maintain_order="left").get_column(_KEY)


def _series_of_uniques(
    uniq: pl.DataFrame, labels: list[str], default_kind: str, cache: dict[tuple, tuple]
) -> tuple[list[int | None], list[str | None], list[tuple]]:
    """Series id (or the reason the key is invalid) of each unique key row, and the series rows.

    ``cache`` maps a key row to its ``(id, reason, series row)`` across the batches of a file.
    """
    ids: list[int | None] = []
    reasons: list[str | None] = []
    series_rows: list[tuple] = []
    has_kind = "kind" in uniq.columns
    has_unit = "unit" in uniq.columns
    cols = ["metric", "service", *labels]
    cols += ["kind"] if has_kind else []
    cols += ["unit"] if has_unit else []
    for row in uniq.select([_col(c) for c in cols]).iter_rows():
        hit = cache.get(row)
        if hit is None:
            hit = cache[row] = _series_of_row(row, labels, has_kind, has_unit, default_kind)
        ids.append(hit[0])
        reasons.append(hit[1])
        if hit[2] is not None:
            series_rows.append(hit[2])
    return ids, reasons, series_rows


def _series_of_row(
    row: tuple, labels: list[str], has_kind: bool, has_unit: bool, default_kind: str
) -> tuple[int | None, str | None, tuple | None]:
    """``(series id, None, series row)`` of one key row, or ``(None, reason, None)`` when it is invalid."""
    n_labels = len(labels)
    metric, service = row[0], row[1]
    label_values = row[2 : 2 + n_labels]
    rest = row[2 + n_labels :]
    kind = rest[0] if has_kind else None
    unit = rest[-1] if has_unit else None
    kind = kind.strip() if kind and kind.strip() else default_kind
    reason = None
    if metric is None or not metric.strip():
        reason = "metric is missing or empty"
    elif service is None or not service.strip():
        reason = "service is missing or empty"
    elif kind not in LONG_KINDS:
        reason = f"kind {kind!r} is not one of {', '.join(LONG_KINDS)}"
    if reason is not None:
        return None, reason, None
    lab = {k: v for k, v in zip(labels, label_values, strict=True) if v is not None}
    sid = series_id_of_key(series_key(metric, service, lab))
    return sid, None, (sid, metric, service, kind, unit or "", tuple(sorted(lab.items())))


def _raw_json(bad_rows: pl.DataFrame) -> list[str]:
    """The rejected rows as JSON objects (floats as text so NaN/inf stay visible)."""
    exprs = []
    for c, t in bad_rows.schema.items():
        if c.startswith("\x00raw:"):
            continue
        raw_col = f"\x00raw:{c}"
        if raw_col in bad_rows.columns:
            exprs.append(
                _col(raw_col)
                .map_elements(lambda b: b.decode("utf-8", "backslashreplace"), return_dtype=pl.Utf8)
                .alias(c)
            )
        elif t.is_float():
            exprs.append(_col(c).cast(pl.Utf8).alias(c))
        elif t == pl.Binary:
            exprs.append(_col(c).bin.encode("hex").alias(c))
        elif isinstance(t, pl.Categorical | pl.Enum):
            exprs.append(_col(c).cast(pl.Utf8).alias(c))
        else:
            exprs.append(_col(c))
    return bad_rows.select(pl.struct(exprs).struct.json_encode().alias("raw")).get_column("raw").to_list()


def _rejects(
    df: pl.DataFrame,
    work: pl.DataFrame,
    mapping: pl.DataFrame,
    utf8_bad: dict[str, pl.Series],
    source: str,
    first_row: int,
    row_numbers: pl.Series | None,
    location_word: str,
    min_us: int,
    max_us: int,
) -> list[Reject]:
    """Dead-letter records of the invalid rows (reasons computed on the invalid subset only)."""
    idx = work.with_row_index("i").filter(~pl.col("valid")).get_column("i")
    bad = df[idx]
    w = work[idx]
    ctx = pl.DataFrame(
        {
            "ts": bad.get_column("ts"),
            "value_raw": bad.get_column("value"),
            "ts_us": w.get_column("ts_us"),
            "value": w.get_column("value"),
            "key_reason": w.get_column(_KEY).replace_strict(
                mapping[_KEY], mapping["key_reason"], default=None, return_dtype=pl.Utf8
            ),
        }
    )
    reason: Any = pl.when(pl.lit(False)).then(pl.lit(None, dtype=pl.Utf8))  # a when/then chain
    for c, mask in utf8_bad.items():
        reason = reason.when(pl.lit(mask[idx])).then(pl.lit(f"column {c!r} is not valid UTF-8"))
    ts_text = pl.col("ts").cast(pl.Utf8)
    value_text = pl.col("value_raw").cast(pl.Utf8)
    reason = (
        reason.when(pl.col("ts").is_null())
        .then(pl.lit("ts is missing"))
        .when(pl.col("ts_us").is_null())
        .then(pl.format("ts {} is not a timestamp (expected RFC 3339 or epoch seconds/ms/us/ns)", ts_text))
        .when(~pl.col("ts_us").is_between(min_us, max_us))
        .then(
            pl.format(
                "ts {} is outside the accepted range [{}, {}]",
                ts_text,
                pl.lit(_us_text(min_us)),
                pl.lit(_us_text(max_us)),
            )
        )
        .when(pl.col("key_reason").is_not_null())
        .then(pl.col("key_reason"))
        .when(pl.col("value_raw").is_null())
        .then(pl.lit("value is missing"))
        .when(pl.col("value").is_null())
        .then(pl.format("value {} is not a number", value_text))
        .when(~pl.col("value").is_finite())
        .then(pl.format("value {} is not a finite number", value_text))
        .otherwise(pl.lit("invalid row"))
    )
    reasons = ctx.select(reason.alias("r")).get_column("r").to_list()
    raws = _raw_json(bad)
    numbers = (row_numbers[idx] if row_numbers is not None else idx + first_row).to_list()
    return [
        Reject(source, f"{location_word} {n}", r, raw.encode("utf-8", "surrogateescape"))
        for n, r, raw in zip(numbers, reasons, raws, strict=True)
    ]


def _us_text(us: int) -> str:
    return pl.Series([us]).cast(schema.TS).dt.strftime("%Y-%m-%dT%H:%M:%SZ").item()


# -- files -------------------------------------------------------------------------------------------------
def _string_types(arrow_schema: pa.Schema) -> list[str]:
    return [f.name for f in arrow_schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]


def iter_long_file(
    path: Path, *, batch_rows: int = 1_000_000, rejects: list[Reject] | None = None
) -> Iterator[pl.DataFrame]:
    """Stream a long-format Parquet or CSV file (optionally gzip'd) as frames of at most ``batch_rows`` rows.

    Memory stays bounded by one batch (plus one Parquet row group / CSV block) whatever the file size.
    String columns come back dictionary-encoded (polars ``Categorical``), which makes the per-series work
    proportional to the number of distinct values instead of rows. CSV rows with the wrong number of fields
    are appended to ``rejects`` (with their line number) when it is given, and raise otherwise.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == GZIP_MAGIC:
        with gzip.open(path, "rb") as g:
            inner = g.read(4)
        if inner == b"PAR1":
            yield from _iter_gzip_parquet(path, batch_rows)
        else:
            with gzip.open(path, "rb") as g:
                yield from iter_long_csv(
                    cast(IO[bytes], g), source=str(path), batch_rows=batch_rows, rejects=rejects
                )
    elif head == b"PAR1":
        yield from iter_long_parquet(path, batch_rows=batch_rows)
    else:
        with open(path, "rb") as f:
            yield from iter_long_csv(f, source=str(path), batch_rows=batch_rows, rejects=rejects)


def iter_long_parquet(path: Path, *, batch_rows: int = 1_000_000) -> Iterator[pl.DataFrame]:
    """Stream a Parquet file row group by row group (string columns read as dictionaries)."""
    pf = pq.ParquetFile(path)
    strings = _string_types(pf.schema_arrow)
    # pre_buffer=False: with pre-buffering the reader's read cache keeps every row group it has read, so
    # memory grows with the file (observed with pyarrow 26; cf. apache/arrow#39808)
    pf = pq.ParquetFile(path, read_dictionary=strings, pre_buffer=False, buffer_size=1 << 20)
    _check_columns(pf.schema_arrow.names, str(path))
    pending: list[pa.RecordBatch] = []
    n_pending = 0
    for rb in pf.iter_batches(batch_size=batch_rows, use_threads=True):
        pending.append(rb)
        n_pending += rb.num_rows
        if n_pending >= batch_rows:
            yield _frame_of(pending)
            pending, n_pending = [], 0
    if pending:
        yield _frame_of(pending)


def _frame_of(batches: list[pa.RecordBatch]) -> pl.DataFrame:
    table = pa.Table.from_batches(batches)
    if len(batches) > 1:
        # dictionaries differ per row group; unify so the columns concatenate into one categorical
        table = table.unify_dictionaries().combine_chunks()
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _iter_gzip_parquet(path: Path, batch_rows: int) -> Iterator[pl.DataFrame]:
    # Parquet needs random access: decompress to a temporary file next to the system temp dir
    with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
        with gzip.open(path, "rb") as g:
            shutil.copyfileobj(g, tmp, 1 << 20)
        tmp.flush()
        yield from iter_long_parquet(Path(tmp.name), batch_rows=batch_rows)


def _read_header(stream: IO[bytes], source: str) -> tuple[list[str], bytes]:
    """The header row's column names and the bytes consumed reading it."""
    line = stream.readline(1 << 20)
    text = line.decode("utf-8-sig", "replace")
    names = next(csv.reader(io.StringIO(text)), [])
    names = [n.strip() for n in names]
    if not names:
        raise LongFormatError(f"{source}: empty CSV (no header row); {expected_columns_text()}")
    return names, line


class _Prepend(io.RawIOBase):
    """A readable stream of ``head`` followed by ``rest`` (to re-read an already consumed header)."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(b))
        n = len(data)
        b[:n] = data
        return n


def iter_long_csv(
    stream: IO[bytes],
    *,
    source: str,
    batch_rows: int = 1_000_000,
    block_bytes: int = CSV_BLOCK_BYTES,
    rejects: list[Reject] | None = None,
) -> Iterator[pl.DataFrame]:
    """Stream CSV long rows from a binary stream (header row required).

    :func:`iter_long_csv_lines` without the line numbers.
    """
    for frame, _ in iter_long_csv_lines(
        stream, source=source, batch_rows=batch_rows, block_bytes=block_bytes, rejects=rejects
    ):
        yield frame


def iter_long_csv_lines(
    stream: IO[bytes],
    *,
    source: str,
    batch_rows: int = 1_000_000,
    block_bytes: int = CSV_BLOCK_BYTES,
    rejects: list[Reject] | None = None,
) -> Iterator[tuple[pl.DataFrame, pl.Series]]:
    """Stream CSV long rows from a binary stream (header row required), each frame with the line of each row.

    Every column is read as text (so label values such as ``007`` keep their exact spelling); text columns
    other than ``ts`` and ``value`` are dictionary-encoded. Empty fields are null. A row with the wrong number
    of fields is skipped into ``rejects`` (location ``line <n>`` of the file) when given, else raises.

    Line numbers count from 1 with the header as line 1, and count records the way pyarrow numbers the rows it
    skips: one line per record. A file with blank lines or line breaks inside quoted values therefore gets,
    after them, the number the record would have with one line per record and no blank lines (the CSV reader
    does not report physical lines); for every other file it is the physical line.
    """
    names, header = _read_header(stream, source)
    _check_columns(names, source)
    types: dict[str, pa.DataType] = {
        n: pa.binary() if n in ("ts", "value") else pa.dictionary(pa.int32(), pa.binary()) for n in names
    }
    skipped: list[int] = []  # line numbers of the skipped rows not yet passed, ascending

    def bad_row(row: Any) -> str:
        if rejects is None:
            return "error"
        where = f"line {row.number}" if row.number is not None else "line ?"
        reason = f"row has {row.actual_columns} fields, the header has {row.expected_columns}"
        rejects.append(Reject(source, where, reason, row.text.encode("utf-8", "surrogateescape")))
        if row.number is not None:
            skipped.append(row.number)
        return "skip"

    next_line = 2  # the header is line 1

    def lines_of(n: int) -> np.ndarray:
        """The lines of the next ``n`` rows read: the next ``n`` lines that were not skipped."""
        nonlocal next_line
        # the rows skipped up to the end of a record batch were reported while its block was parsed; rows
        # skipped further on (a block read ahead) only add candidates past the n we take
        lines = np.arange(next_line, next_line + n + len(skipped), dtype=np.int64)
        if skipped:
            lines = lines[~np.isin(lines, skipped)][:n]
        next_line = int(lines[-1]) + 1
        del skipped[: bisect.bisect_left(skipped, next_line)]
        return lines

    # single-threaded parsing: as fast here for a streaming reader, and it reports line numbers of bad rows
    reader = pa_csv.open_csv(
        _Prepend(header, stream),
        read_options=pa_csv.ReadOptions(block_size=block_bytes, use_threads=False),
        parse_options=pa_csv.ParseOptions(invalid_row_handler=bad_row),
        convert_options=pa_csv.ConvertOptions(
            column_types=types,
            strings_can_be_null=True,
            null_values=[""],
            quoted_strings_can_be_null=False,
        ),
    )
    pending: list[pa.RecordBatch] = []
    pending_lines: list[np.ndarray] = []
    n_pending = 0
    for rb in reader:
        if rb.num_rows == 0:
            continue
        pending.append(rb)
        pending_lines.append(lines_of(rb.num_rows))
        n_pending += rb.num_rows
        if n_pending >= batch_rows:
            yield _text_frame(pending, names), pl.Series("line", np.concatenate(pending_lines))
            pending, pending_lines, n_pending = [], [], 0
    if pending:
        yield _text_frame(pending, names), pl.Series("line", np.concatenate(pending_lines))


def _text_frame(batches: list[pa.RecordBatch], names: list[str]) -> pl.DataFrame:
    """Record batches of binary CSV columns as a frame of strings (binary kept where UTF-8 is invalid)."""
    table = pa.Table.from_batches(batches)
    cols = {}
    for name in names:
        col = table.column(name)
        if pa.types.is_dictionary(col.type):
            try:
                col = col.cast(pa.dictionary(pa.int32(), pa.string()))
            except pa.ArrowInvalid:
                col = col.cast(pa.binary())
        else:
            try:
                col = col.cast(pa.string())
            except pa.ArrowInvalid:
                pass
        cols[name] = col
    frame = pl.from_arrow(pa.table(cols))
    assert isinstance(frame, pl.DataFrame)
    return frame
