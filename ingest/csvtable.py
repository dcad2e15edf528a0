"""Small typed CSV tables for the command line (``rootwise score``, ``rootwise forecast``).

One reader for both, so a bad file gets the same kind of error everywhere: the file, the line (1 is the
header), the column, the offending text and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl

TIME_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%#z",
    "%Y-%m-%dT%H:%M:%S%.f%#z",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d",
)

#: column kind → what the error message says was expected
EXPECTED = {"time": "an ISO 8601 time", "number": "a finite number", "id": "a series id"}


class CsvInputError(ValueError):
    """A CSV that cannot be used; the message names the file and, where it applies, line and column."""


def parse_times(text: pl.Series) -> pl.Series:
    """ISO 8601 timestamps (with or without ``T``, fractions, ``Z``/offsets → naive UTC) or epoch seconds, as
    ``Datetime("us")``; null where nothing parses.

    Examples
    --------
    >>> parse_times(pl.Series(["2026-01-01T02:01:00+02:00", "2026-01-01 00:00", "yesterday"])).to_list()
    [datetime.datetime(2026, 1, 1, 0, 1), datetime.datetime(2026, 1, 1, 0, 0), None]
    """
    if text.str.contains(r"^\d+(\.\d+)?$").all():
        return (text.cast(pl.Float64) * 1e6).cast(pl.Int64).cast(pl.Datetime("us"))
    parsed = []
    for fmt in TIME_FORMATS:
        s = text.str.to_datetime(format=fmt, strict=False, time_unit="us")
        if isinstance(s.dtype, pl.Datetime) and s.dtype.time_zone is not None:
            s = s.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        parsed.append(s.cast(pl.Datetime("us")))
    return pl.select(pl.coalesce(parsed)).to_series()


def read_csv_table(path: Path, columns: Mapping[str, str]) -> tuple[pl.DataFrame, dict[str, pl.Series]]:
    """Read ``path`` and parse ``columns`` (name → ``"time"``, ``"number"`` or ``"id"``), in that order.

    Returns the raw text frame and the parsed columns. Times must parse; ids must be present; numbers must
    parse where they are not empty and be finite (an empty cell and ``nan`` are missing values).
    """
    if not path.exists():
        raise CsvInputError(f"no such file: {path}")
    try:
        raw = pl.read_csv(path, infer_schema=False)
    except Exception as exc:  # polars raises several types for unreadable CSV
        raise CsvInputError(f"{path}: not a readable CSV ({exc})") from exc
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise CsvInputError(
            f"{path}: missing column(s) {', '.join(missing)}; expected a header '{','.join(columns)}'"
        )
    parsed: dict[str, pl.Series] = {}
    for name, kind in columns.items():
        text = raw[name].str.strip_chars()
        if kind == "time":
            value = parse_times(text)
            bad = value.is_null()
        elif kind == "number":
            value = text.cast(pl.Float64, strict=False)
            # NaN is a missing value, like an empty cell; an infinity is no measurement
            bad = (value.is_null() & text.is_not_null() & (text != "")) | value.is_infinite()
            value = value.fill_nan(None)
        else:
            value, bad = raw[name], raw[name].is_null()
        if bad.any():
            row = int(bad.arg_true()[0])
            raise CsvInputError(
                f"{path}, line {row + 2}: column {name!r}: cannot parse {raw[name][row]!r} "
                f"(expected {EXPECTED[kind]})"
            )
        parsed[name] = value
    return raw, parsed
