"""The long-schema reader: parsing, validation, dead letters, streaming, and property tests."""

from __future__ import annotations

import gzip
import io
import json
import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import schema
from ingest.batch import series_id
from ingest.longformat import (
    LongFormatError,
    iter_long_csv,
    iter_long_csv_lines,
    iter_long_file,
    long_frame_to_batch,
)
from ingest.store import Store

NOW_NS = int(datetime(2025, 6, 1, tzinfo=UTC).timestamp() * 1e9)
T0 = datetime(2025, 5, 1, 12, 0, 0)


def _frame(**cols) -> pl.DataFrame:
    base = {"ts": [T0], "metric": ["rps"], "value": [1.0], "service": ["api"]}
    base.update(cols)
    return pl.DataFrame(base)


def _convert(df: pl.DataFrame, **kw):
    return long_frame_to_batch(df, "input.parquet", now_ns=NOW_NS, **kw)


# -- timestamps ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ts",
    [
        "2025-05-01T12:00:00Z",
        "2025-05-01T12:00:00+00:00",
        "2025-05-01T14:00:00+02:00",
        "2025-05-01T07:30:00-04:30",
        "2025-05-01T12:00:00",
        "2025-05-01 12:00:00",
        "2025-05-01T12:00:00.000000Z",
        "2025-05-01T12:00:00.000000123Z",  # nanoseconds are truncated to microseconds
        " 2025-05-01T12:00:00z ",
        "1746100800",  # epoch seconds as text
        "1746100800000",  # epoch ms as text
        "1746100800.0",
    ],
)
def test_string_timestamps_parse_to_utc(ts):
    b = _convert(_frame(ts=[ts]))
    assert b.rejected == 0, b.rejects
    assert b.points["ts"].to_list() == [T0]


def test_date_only_string_is_midnight_utc():
    b = _convert(_frame(ts=["2025-05-01"]))
    assert b.points["ts"].to_list() == [datetime(2025, 5, 1)]


@pytest.mark.parametrize(
    "value",
    [1_746_100_800, 1_746_100_800_000, 1_746_100_800_000_000, 1_746_100_800_000_000_000, 1_746_100_800.0],
    ids=["s", "ms", "us", "ns", "float-s"],
)
def test_epoch_numbers_unit_by_magnitude(value):
    b = _convert(_frame(ts=[value]))
    assert b.points["ts"].to_list() == [T0]


def test_fractional_epoch_seconds_keep_microseconds():
    b = _convert(_frame(ts=[1_746_100_800.25]))
    assert b.points["ts"].to_list() == [T0 + timedelta(milliseconds=250)]


def test_zoned_datetime_column_converted_to_utc():
    tz = timezone(timedelta(hours=2))
    local = datetime(2025, 5, 1, 14, 0, tzinfo=tz)
    df = _frame(ts=pl.Series([local]).dt.convert_time_zone("Europe/Berlin"))
    b = _convert(df)
    assert b.points["ts"].to_list() == [T0]
    assert b.points.schema["ts"] == schema.TS


def test_naive_datetime_ns_column():
    df = _frame(ts=pl.Series([T0]).cast(pl.Datetime("ns")))
    assert _convert(df).points["ts"].to_list() == [T0]


@pytest.mark.parametrize(
    ("ts", "reason"),
    [
        ("yesterday", "ts yesterday is not a timestamp (expected RFC 3339 or epoch seconds/ms/us/ns)"),
        ("2025-13-01T00:00:00Z", "ts 2025-13-01T00:00:00Z is not a timestamp"),
        (
            "1970-01-01T00:00:00Z",
            "is outside the accepted range [1990-01-01T00:00:00Z, 2025-06-02T00:00:00Z]",
        ),
        ("2300-01-01T00:00:00Z", "ts 2300-01-01T00:00:00Z is outside the accepted range"),
        ("0", "ts 0 is outside the accepted range"),
        (None, "ts is missing"),
    ],
)
def test_bad_timestamps_are_rejected_with_reason(ts, reason):
    df = pl.DataFrame(
        {"ts": ["2025-05-01T12:00:00Z", ts], "metric": ["m", "m"], "value": [1.0, 2.0], "service": ["s", "s"]}
    )
    b = _convert(df, first_row=10)
    assert b.points.height == 1
    assert [r.location for r in b.rejects] == ["row 11"]
    assert reason in b.rejects[0].reason
    assert b.rejects[0].source == "input.parquet"


def test_far_future_epoch_ms_rejected():
    b = _convert(_frame(ts=[int(datetime(2400, 1, 1, tzinfo=UTC).timestamp() * 1000)]))
    assert b.rejected == 1 and "outside the accepted range" in b.rejects[0].reason


# -- values and keys ----------------------------------------------------------------------------------------
def test_non_finite_and_non_numeric_values_rejected():
    df = pl.DataFrame(
        {
            "ts": [T0] * 6,
            "metric": ["m"] * 6,
            "value": ["1.5", "NaN", "inf", "-Infinity", "abc", None],
            "service": ["s"] * 6,
        }
    )
    b = _convert(df)
    assert b.points["value"].to_list() == [1.5]
    reasons = {r.location: r.reason for r in b.rejects}
    assert reasons == {
        "row 2": "value NaN is not a finite number",
        "row 3": "value inf is not a finite number",
        "row 4": "value -Infinity is not a finite number",
        "row 5": "value abc is not a number",
        "row 6": "value is missing",
    }


def test_float_nan_raw_row_keeps_nan_visible():
    b = _convert(_frame(value=[math.nan]))
    assert b.rejects[0].reason == "value NaN is not a finite number"
    raw = orjson.loads(b.rejects[0].raw)
    assert raw["value"] == "NaN" and raw["metric"] == "rps" and raw["ts"].startswith("2025-05-01")


def test_empty_metric_or_service_rejected():
    df = pl.DataFrame(
        {"ts": [T0] * 4, "metric": ["m", "", None, "m"], "value": [1.0] * 4, "service": ["s", "s", "s", "  "]}
    )
    b = _convert(df)
    assert b.points.height == 1
    assert {r.location: r.reason for r in b.rejects} == {
        "row 2": "metric is missing or empty",
        "row 3": "metric is missing or empty",
        "row 4": "service is missing or empty",
    }


def test_missing_columns_error_names_file_and_expectation():
    with pytest.raises(LongFormatError) as exc:
        long_frame_to_batch(pl.DataFrame({"timestamp": [T0], "value": [1.0]}), "data/x.parquet")
    msg = str(exc.value)
    assert (
        "data/x.parquet" in msg
        and "ts, metric, service" in msg
        and "expected columns ts, metric, value" in msg
    )


def test_labels_null_and_empty_mean_absent_and_ids_match_series_id():
    df = pl.DataFrame(
        {
            "ts": [T0, T0, T0],
            "metric": ["lat"] * 3,
            "value": [1.0, 2.0, 3.0],
            "service": ["api"] * 3,
            "tenant": ["t1", None, ""],
            "model": ["llama", "llama", "llama"],
        }
    )
    b = _convert(df)
    sid_t1 = series_id("lat", "api", {"tenant": "t1", "model": "llama"})
    sid_none = series_id("lat", "api", {"model": "llama"})
    assert b.points["series_id"].to_list() == [sid_t1, sid_none, sid_none]
    series = {r["series_id"]: r for r in b.series.to_dicts()}
    assert set(series) == {sid_t1, sid_none}
    assert series[sid_t1]["labels"] == [{"key": "model", "value": "llama"}, {"key": "tenant", "value": "t1"}]
    assert series[sid_none]["labels"] == [{"key": "model", "value": "llama"}]
    assert b.series.schema == pl.Schema(schema.SERIES)


def test_non_string_label_columns_become_text():
    df = _frame(gpu=[3], ratio=[0.5], enabled=[True])
    b = _convert(df)
    labels = b.series["labels"].to_list()[0]
    assert labels == [
        {"key": "enabled", "value": "true"},
        {"key": "gpu", "value": "3"},
        {"key": "ratio", "value": "0.5"},
    ]


def test_kind_and_unit_columns():
    df = pl.DataFrame(
        {
            "ts": [T0, T0 + timedelta(minutes=1), T0],
            "metric": ["req", "req", "bad"],
            "value": [1.0, 2.0, 3.0],
            "service": ["api"] * 3,
            "kind": ["counter", "counter", "histogram"],
            "unit": ["1", "1", None],
        }
    )
    b = _convert(df)
    assert b.series.select("metric", "kind", "unit").rows() == [("req", "counter", "1")]
    assert b.rejects[0].reason == "kind 'histogram' is not one of gauge, counter, delta"
    assert b.points.height == 2


def test_default_kind_argument():
    b = _convert(_frame(), kind="delta")
    assert b.series["kind"].to_list() == ["delta"]
    with pytest.raises(LongFormatError):
        _convert(_frame(), kind="histogram")


def test_categorical_columns_and_empty_frame():
    df = _frame(tenant=["t1"]).with_columns(pl.col("metric", "service", "tenant").cast(pl.Categorical))
    b = _convert(df)
    assert b.points["series_id"].to_list() == [series_id("rps", "api", {"tenant": "t1"})]
    empty = _convert(_frame().clear())
    assert empty.accepted == 0 and empty.rejected == 0


def test_many_high_cardinality_label_columns_fall_back_to_join():
    # > 64 bits of dictionary codes: the packed key does not fit, rows are numbered by a join instead
    n = 3000
    cols: dict[str, list] = {f"l{i}": [f"v{i}-{j}" for j in range(n)] for i in range(8)}
    cols["l0"] = [None if j % 7 == 0 else v for j, v in enumerate(cols["l0"])]
    df = pl.DataFrame(
        {
            "ts": [T0] * n,
            "metric": ["m"] * n,
            "value": list(map(float, range(n))),
            "service": ["s"] * n,
            **cols,
        }
    )
    b = _convert(df)
    assert b.points.height == n and b.series.height == n
    for row in (1234, 1235):  # 1235 % 7 == 0: label l0 absent
        labels = {f"l{i}": f"v{i}-{row}" for i in range(8) if not (i == 0 and row % 7 == 0)}
        assert b.points.filter(pl.col("value") == row)["series_id"].item() == series_id("m", "s", labels)


# -- files --------------------------------------------------------------------------------------------------
def _long_table(n: int, start: int = 0) -> pa.Table:
    return pa.table(
        {
            "ts": pa.array(
                [1_746_100_800_000_000 + i * 1_000_000 for i in range(start, start + n)], pa.timestamp("us")
            ),
            "metric": ["m"] * n,
            "value": [float(i) for i in range(start, start + n)],
            "service": ["s"] * n,
            "tenant": [f"t{i % 3}" for i in range(start, start + n)],
        }
    )


def test_iter_parquet_streams_bounded_batches(tmp_path: Path):
    path = tmp_path / "big.parquet"
    pq.write_table(_long_table(2500), path, row_group_size=300)
    frames = list(iter_long_file(path, batch_rows=1000))
    assert [f.height for f in frames] == [1000, 1000, 500]
    assert frames[0].schema["tenant"] == pl.Categorical
    total = pl.concat([long_frame_to_batch(f, "x").points for f in frames])
    assert total["value"].to_list() == [float(i) for i in range(2500)]


def test_csv_keeps_label_text_exactly_and_reads_gzip(tmp_path: Path):
    text = "ts,metric,value,service,code,empty\n2025-05-01T12:00:00Z,m,1,s,007,\n2025-05-01T12:01:00Z,m,2,s,7,x\n"
    plain = tmp_path / "a.csv"
    plain.write_text(text)
    zipped = tmp_path / "a.csv.gz"
    zipped.write_bytes(gzip.compress(text.encode()))
    for path in (plain, zipped):
        frames = list(iter_long_file(path))
        b = long_frame_to_batch(frames[0], str(path), now_ns=NOW_NS)
        assert b.points["series_id"].to_list() == [
            series_id("m", "s", {"code": "007"}),
            series_id("m", "s", {"code": "7", "empty": "x"}),
        ]


def test_csv_invalid_utf8_row_rejected_others_kept():
    data = (
        b"ts,metric,value,service,tenant\n2025-05-01T12:00:00Z,m,1,s,ok\n2025-05-01T12:01:00Z,m,2,s,bad\xff\n"
    )
    [(frame, lines)] = list(iter_long_csv_lines(io.BytesIO(data), source="x.csv"))
    b = long_frame_to_batch(frame, "x.csv", now_ns=NOW_NS, row_numbers=lines, location_word="line")
    assert b.points["value"].to_list() == [1.0]
    assert b.rejects[0].location == "line 3"
    assert b.rejects[0].reason == "column 'tenant' is not valid UTF-8"
    assert b"bad" in b.rejects[0].raw


def test_csv_missing_columns_error():
    with pytest.raises(LongFormatError, match=r"x\.csv: missing column\(s\) metric, service"):
        list(iter_long_csv(io.BytesIO(b"ts,value\n1,2\n"), source="x.csv"))


def test_csv_streams_in_batches():
    rows = "".join(f"{1_746_100_800 + i},m,{i},s\n" for i in range(5000))
    data = ("ts,metric,value,service\n" + rows).encode()
    frames = list(iter_long_csv(io.BytesIO(data), source="x.csv", batch_rows=1000, block_bytes=4096))
    assert len(frames) > 3 and sum(f.height for f in frames) == 5000
    assert all(f.height < 1200 for f in frames)


def test_csv_line_numbers_count_the_header_and_skipped_rows():
    # 5,000 rows read in many small blocks and batches; ragged rows on known lines are skipped into rejects
    ragged = {7, 8, 1500, 3001, 5001}
    lines = ["ts,metric,value,service"]
    for n in range(2, 5003):
        lines.append("x,y" if n in ragged else f"{1_746_100_800 + n},m,{n},s")
    data = ("\n".join(lines) + "\n").encode()
    rejects: list = []
    out = list(
        iter_long_csv_lines(
            io.BytesIO(data), source="x.csv", batch_rows=700, block_bytes=4096, rejects=rejects
        )
    )
    assert len(out) > 3
    numbers = [n for _, ls in out for n in ls.to_list()]
    values = [int(v) for f, _ in out for v in f["value"].to_list()]
    assert numbers == values == [n for n in range(2, 5003) if n not in ragged]
    assert [r.location for r in rejects] == [f"line {n}" for n in sorted(ragged)]


def test_csv_line_numbers_are_record_lines():
    # documented: the CSV reader counts one line per record, so a blank line and a line break inside quotes
    # are not counted (the bad value sits on physical line 6, record line 4)
    data = (
        b'ts,metric,value,service\n2025-05-01T12:00:00Z,m,1,s\n\n2025-05-01T12:01:00Z,"m\nx",2,s\nz,m,3,s\n'
    )
    [(frame, lines)] = list(iter_long_csv_lines(io.BytesIO(data), source="x.csv"))
    assert lines.to_list() == [2, 3, 4]
    b = long_frame_to_batch(frame, "x.csv", now_ns=NOW_NS, row_numbers=lines, location_word="line")
    assert [r.location for r in b.rejects] == ["line 4"]


# -- property tests -----------------------------------------------------------------------------------------
RESERVED = {"ts", "metric", "value", "service", "kind", "unit"}
# names the reader uses internally are fair game for label columns too
tricky_names = st.sampled_from(["k", "key", "series_id", "ts_us", "valid", "key_reason", "i", "labels", "le"])
label_names = st.one_of(
    tricky_names, st.text(min_size=1, max_size=8).filter(lambda s: s.strip() and s not in RESERVED)
)
label_values = st.one_of(
    st.none(), st.just(""), st.text(max_size=6), st.sampled_from(["a", "b", "ü", "日本"])
)
LO = int(datetime(1995, 1, 1, tzinfo=UTC).timestamp())
HI = int(datetime(2025, 5, 30, tzinfo=UTC).timestamp())


@st.composite
def long_frames(draw):
    names = draw(st.lists(label_names, max_size=3, unique=True))
    n = draw(st.integers(1, 25))
    ts_mode = draw(st.sampled_from(["datetime", "string", "epoch_s", "epoch_ms"]))
    rows = []
    for _ in range(n):
        ok_ts = draw(st.integers(LO, HI))
        ts_kind = draw(st.sampled_from(["ok", "ok", "ok", "null", "past", "future"]))
        secs = {"ok": ok_ts, "null": None, "past": 315_532_800, "future": 8_000_000_000}[ts_kind]
        value = draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none()))
        metric = draw(st.sampled_from(["m1", "m2", "ñ-metric", "", " "]))
        service = draw(st.sampled_from(["api", "vllm", ""]))
        labels = {k: draw(label_values) for k in names}
        rows.append((secs, value, metric, service, labels))
    if ts_mode == "datetime":
        ts = [
            None if s is None else datetime(1970, 1, 1) + timedelta(seconds=s) for s in (r[0] for r in rows)
        ]
        ts_col = pl.Series("ts", ts, dtype=pl.Datetime("us"))
    elif ts_mode == "string":
        ts_col = pl.Series(
            "ts",
            [
                None if r[0] is None else (datetime(1970, 1, 1) + timedelta(seconds=r[0])).isoformat() + "Z"
                for r in rows
            ],
            dtype=pl.Utf8,
        )
    else:
        mult = 1 if ts_mode == "epoch_s" else 1000
        ts_col = pl.Series("ts", [None if r[0] is None else r[0] * mult for r in rows], dtype=pl.Int64)
    df = pl.DataFrame(
        {
            "ts": ts_col,
            "metric": [r[2] for r in rows],
            "value": pl.Series([r[1] for r in rows], dtype=pl.Float64),
            "service": [r[3] for r in rows],
            **{k: pl.Series([r[4][k] for r in rows], dtype=pl.Utf8) for k in names},
        }
    )
    return df, rows


def _expected(rows):
    lo, hi = 631_152_000, NOW_NS // 10**9 + 86400
    out = []
    for i, (secs, value, metric, service, labels) in enumerate(rows):
        valid = (
            secs is not None
            and lo <= secs <= hi
            and value is not None
            and math.isfinite(value)
            and metric.strip() != ""
            and service.strip() != ""
        )
        sid = (
            series_id(metric, service, {k: v for k, v in labels.items() if v not in (None, "")})
            if valid
            else None
        )
        out.append((i, valid, sid, secs, value))
    return out


@settings(max_examples=150, deadline=None)
@given(long_frames(), st.integers(1, 10_000))
def test_property_every_row_accepted_or_rejected_with_correct_ids(frame_rows, first_row):
    df, rows = frame_rows
    b = long_frame_to_batch(df, "prop.parquet", first_row=first_row, now_ns=NOW_NS)
    expected = _expected(rows)
    assert b.points.height + b.rejected == len(rows)
    good = [e for e in expected if e[1]]
    assert b.points["series_id"].to_list() == [e[2] for e in good]
    assert b.points["value"].to_list() == [e[4] for e in good]
    assert b.points["ts"].to_list() == [datetime(1970, 1, 1) + timedelta(seconds=e[3]) for e in good]
    assert [r.location for r in b.rejects] == [f"row {first_row + e[0]}" for e in expected if not e[1]]
    assert all(r.reason and r.raw.startswith(b"{") for r in b.rejects)
    assert set(b.series["series_id"].to_list()) == {e[2] for e in good}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(long_frames())
def test_property_round_trip_through_duckdb(frame_rows):
    df, rows = frame_rows
    b = long_frame_to_batch(df, "prop.parquet", now_ns=NOW_NS)
    with Store(":memory:") as store:
        store.append(b)
        stored = store.cursor().execute("SELECT series_id, ts, value FROM points ORDER BY ALL").fetchall()
        n_rejects = store.count("ingest_rejects")
        series = dict(store.cursor().execute("SELECT series_id, map_entries(labels) FROM series").fetchall())
    # the store keeps the last value per (series_id, ts); compare against the same rule
    last: dict[tuple, float] = {}
    for _, valid, sid, secs, value in _expected(rows):
        if valid:
            last[(sid, datetime(1970, 1, 1) + timedelta(seconds=secs))] = value
    assert sorted(stored) == sorted((k[0], k[1], v) for k, v in last.items())
    assert n_rejects == b.rejected
    for sid, entries in series.items():
        labels = {e["key"]: e["value"] for e in entries}
        metric, service = next(
            (r[2], r[3]) for r, e in zip(rows, _expected(rows), strict=True) if e[2] == sid
        )
        assert series_id(metric, service, labels) == sid


def test_label_columns_named_like_polars_patterns_are_plain_labels() -> None:
    """``*`` and ``^...$`` are column names like any other (polars would read them as every column and a
    regular expression): accepted rows keep them as labels, rejected rows carry them in the dead letter."""
    df = pl.DataFrame(
        {
            "ts": [datetime(2025, 1, 1), datetime(2025, 1, 1, 0, 1)],
            "metric": ["m1", "m1"],
            "value": [1.0, float("nan")],
            "service": ["api", "api"],
            "*": ["star", "star"],
            "^a$": ["re", "re"],
            "a": ["plain", "plain"],
        }
    )
    b = long_frame_to_batch(df, "names.csv", now_ns=NOW_NS)
    assert b.points.height == 1 and b.rejected == 1
    labels = {"*": "star", "^a$": "re", "a": "plain"}
    assert b.series["labels"].to_list() == [[{"key": k, "value": v} for k, v in sorted(labels.items())]]
    assert b.points["series_id"].to_list() == [series_id("m1", "api", labels)]
    raw = json.loads(b.rejects[0].raw)
    assert {k: raw[k] for k in labels} == labels
