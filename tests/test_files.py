"""File ingestion end to end: detection from content, every format into the DuckDB file, failures, idempotency."""

from __future__ import annotations

import gzip
import json
import time
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.batch import series_id
from ingest.files import (
    FORMATS,
    FileReport,
    IngestReport,
    UnknownFormatError,
    detect_format,
    expand_paths,
    ingest_paths,
)

T0 = datetime(2025, 5, 1, 12)
NOW_NS = time.time_ns()


def _long_df(n: int = 6) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ts": [T0 + timedelta(minutes=i) for i in range(n)],
            "metric": ["ttft_ms"] * n,
            "value": [float(i) * 1.5 for i in range(n)],
            "service": ["vllm"] * n,
            "tenant": [f"t{i % 2}" for i in range(n)],
            "model": ["llama"] * n,
        }
    )


def _write_parquet(path: Path, n: int = 6) -> Path:
    _long_df(n).write_parquet(path)
    return path


def _write_csv(path: Path, n: int = 6) -> Path:
    _long_df(n).with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%SZ")).write_csv(path)
    return path


def _jsonl(path: Path, *records: object, gz: bool = False) -> Path:
    data = b"".join(orjson.dumps(r) + b"\n" for r in records)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _q(store, sql: str) -> list[tuple]:
    return store.cursor().execute(sql).fetchall()


EVENTS = [
    {"ts": "2025-05-01T12:00:00Z", "service": "vllm", "kind": "deploy", "title": "vllm 0.6.3"},
    {
        "ts": "2025-05-01T13:00:00Z",
        "service": "router",
        "kind": "config",
        "title": "max_batch=64",
        "attributes": {"key": "max_batch", "old": 32, "new": 64},
    },
]
LOGS = [
    {
        "ts": "2025-05-01T12:00:00Z",
        "service": "vllm",
        "severity": "ERROR",
        "body": "CUDA OOM",
        "attributes": {"rootwise.tenant.id": "acme"},
    },
    {"ts": "2025-05-01T12:00:01Z", "service": "vllm", "severity": "INFO", "body": "recovered"},
]
EDGES = [{"source": "gateway", "target": "router"}, {"source": "router", "target": "vllm"}]


def _otlp_resource(service: str) -> dict:
    return {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]}


def _otlp_metrics(ts_ns: int, value: float) -> dict:
    return {
        "resourceMetrics": [
            {
                "resource": _otlp_resource("api"),
                "scopeMetrics": [
                    {
                        "metrics": [
                            {
                                "name": "queue_depth",
                                "gauge": {
                                    "dataPoints": [
                                        {
                                            "timeUnixNano": str(ts_ns),
                                            "asDouble": value,
                                            "attributes": [
                                                {"key": "model", "value": {"stringValue": "llama"}}
                                            ],
                                        }
                                    ]
                                },
                            }
                        ]
                    }
                ],
            }
        ]
    }


def _otlp_traces(ts_ns: int) -> dict:
    return {
        "resourceSpans": [
            {
                "resource": _otlp_resource("api"),
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "0af7651916cd43dd8448eb211c80319c",
                                "spanId": "b7ad6b7169203331",
                                "name": "chat",
                                "kind": 2,
                                "startTimeUnixNano": str(ts_ns),
                                "endTimeUnixNano": str(ts_ns + 250_000_000),
                            }
                        ]
                    }
                ],
            }
        ]
    }


def _otlp_logs(ts_ns: int) -> dict:
    return {
        "resourceLogs": [
            {
                "resource": _otlp_resource("api"),
                "scopeLogs": [
                    {
                        "logRecords": [
                            {
                                "timeUnixNano": str(ts_ns),
                                "severityText": "WARN",
                                "body": {"stringValue": "slow"},
                            }
                        ]
                    }
                ],
            }
        ]
    }


# -- detection ----------------------------------------------------------------------------------------------
def test_detect_by_content_not_extension(tmp_path: Path):
    assert detect_format(_write_parquet(tmp_path / "really_parquet.csv")) == "parquet"
    assert detect_format(_write_csv(tmp_path / "metrics.txt")) == "csv-long"
    assert detect_format(_jsonl(tmp_path / "events.dat", *EVENTS, gz=True)) == "jsonl-events"
    assert detect_format(_jsonl(tmp_path / "logs.json", *LOGS)) == "jsonl-logs"
    assert detect_format(_jsonl(tmp_path / "edges", *EDGES)) == "jsonl-topology"
    long_row = {"ts": 1_746_100_800, "metric": "m", "value": 1, "service": "s"}
    assert detect_format(_jsonl(tmp_path / "long.jsonl", long_row)) == "jsonl-long"
    assert detect_format(_jsonl(tmp_path / "otlp.jsonl", _otlp_metrics(NOW_NS, 1.0))) == "otlp-json"
    doc = tmp_path / "export.json"
    doc.write_text(json.dumps(_otlp_traces(NOW_NS), indent=2))
    assert detect_format(doc) == "otlp-json"
    gz_csv = tmp_path / "m.csv.gz"
    gz_csv.write_bytes(gzip.compress(_write_csv(tmp_path / "plain.csv").read_bytes()))
    assert detect_format(gz_csv) == "csv-long"
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert detect_format(tmp_path / "empty.jsonl") == "empty"


def test_detect_skips_bad_first_lines(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"ts": "2025-05-01T12:00:00Z", "serv\n' + orjson.dumps(EVENTS[0]) + b"\n")
    assert detect_format(path) == "jsonl-events"


def test_detect_prometheus(tmp_path: Path):
    pytest.importorskip("ingest.prometheus")
    path = tmp_path / "scrape.txt"
    path.write_text('# HELP up Up.\n# TYPE up gauge\nup{job="vllm"} 1\n')
    assert detect_format(path) == "prometheus"


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (bytes(range(256)) * 8, "It looks like binary data."),
        (
            b"timestamp,value\n2025-01-01,1\n",
            "It looks like CSV with columns timestamp, value, but the long "
            "schema needs ts, metric, value, service.",
        ),
        (b'{"hello": "world"}\n', "Records have keys hello."),
    ],
)
def test_unknown_format_error_names_file_and_accepted_formats(tmp_path: Path, content: bytes, hint: str):
    path = tmp_path / "mystery.bin"
    path.write_bytes(content)
    with pytest.raises(UnknownFormatError) as exc:
        detect_format(path)
    msg = str(exc.value)
    assert str(path) in msg and hint in msg
    assert "Accepted formats" in msg and "Parquet" in msg and "OTLP JSON" in msg


# -- every format into the DuckDB file ----------------------------------------------------------------------
def test_parquet_and_csv_round_trip(store, tmp_path: Path):
    report = ingest_paths(store, [_write_parquet(tmp_path / "a.parquet"), _write_csv(tmp_path / "b.csv")])
    assert report.ok and report.accepted == 12 and report.rejected == 0
    assert [f.format for f in report.files] == ["parquet", "csv-long"]
    assert report.inserted == 6  # the CSV holds the same points as the Parquet file
    rows = _q(store, "SELECT series_id, ts, value FROM points ORDER BY ts")
    assert rows == [
        (
            series_id("ttft_ms", "vllm", {"tenant": f"t{i % 2}", "model": "llama"}),
            T0 + timedelta(minutes=i),
            i * 1.5,
        )
        for i in range(6)
    ]
    assert _q(store, "SELECT metric, service, kind, labels['tenant'] FROM series ORDER BY 4") == [
        ("ttft_ms", "vllm", "gauge", "t0"),
        ("ttft_ms", "vllm", "gauge", "t1"),
    ]


def test_jsonl_round_trips(store, tmp_path: Path):
    paths = [
        _jsonl(tmp_path / "events.jsonl", *EVENTS),
        _jsonl(tmp_path / "logs.jsonl.gz", *LOGS, gz=True),
        _jsonl(tmp_path / "topology.jsonl", *EDGES),
        _jsonl(
            tmp_path / "long.jsonl",
            {"ts": "2025-05-01T12:00:00Z", "metric": "m", "value": 2, "service": "s", "gpu": 0},
        ),
    ]
    report = ingest_paths(store, paths)
    assert report.ok, report.to_dict()
    assert [f.format for f in report.files] == ["jsonl-events", "jsonl-logs", "jsonl-topology", "jsonl-long"]
    assert _q(store, "SELECT service, kind, title, attributes['new'] FROM events ORDER BY ts") == [
        ("vllm", "deploy", "vllm 0.6.3", None),
        ("router", "config", "max_batch=64", "64"),
    ]
    assert _q(store, "SELECT service, severity, severity_number, body, tenant FROM logs ORDER BY ts") == [
        ("vllm", "ERROR", 17, "CUDA OOM", "acme"),
        ("vllm", "INFO", 9, "recovered", None),
    ]
    assert _q(store, "SELECT source, target, origin FROM topology_edges ORDER BY 1") == [
        ("gateway", "router", "config"),
        ("router", "vllm", "config"),
    ]
    assert _q(store, "SELECT s.labels['gpu'], p.value FROM points p JOIN series s USING (series_id)") == [
        ("0", 2.0)
    ]


def test_otlp_json_lines_and_document_round_trip(store, tmp_path: Path):
    pytest.importorskip("ingest.otlp")
    ts = NOW_NS - 3_600 * 10**9
    lines = _jsonl(tmp_path / "collector.jsonl", _otlp_metrics(ts, 3.0), _otlp_traces(ts), _otlp_logs(ts))
    with open(lines, "ab") as f:
        f.write(b'{"resourceMetrics": [\n')  # a torn last line: dead-lettered, the rest kept
    doc = tmp_path / "export.json"
    doc.write_text(json.dumps(_otlp_metrics(ts + 10**9, 4.0), indent=2))
    report = ingest_paths(store, [lines, doc])
    assert [f.format for f in report.files] == ["otlp-json", "otlp-json"]
    assert report.ok and report.files[0].rejected == 1 and report.files[0].accepted == 3
    assert report.files[0].first_reasons[0].startswith("line 4")
    assert _q(store, "SELECT value FROM points ORDER BY ts") == [(3.0,), (4.0,)]
    assert _q(store, "SELECT service, name FROM spans") == [("api", "chat")]
    assert _q(store, "SELECT body FROM logs") == [("slow",)]
    assert _q(store, "SELECT location FROM ingest_rejects") == [("line 4",)]


def test_prometheus_round_trip(store, tmp_path: Path):
    pytest.importorskip("ingest.prometheus")
    path = tmp_path / "metrics.prom"
    path.write_text('# TYPE vllm_running gauge\nvllm_running{model_name="llama"} 3\n')
    report = ingest_paths(store, [path])
    assert report.ok and report.files[0].format == "prometheus" and report.accepted == 1
    assert _q(store, "SELECT metric FROM series") == [("vllm_running",)]


# -- malformed inputs ---------------------------------------------------------------------------------------
def test_bad_rows_dead_lettered_with_file_row_and_reason(store, tmp_path: Path):
    path = tmp_path / "mixed.csv"
    path.write_text(
        "ts,metric,value,service,tenant\n"
        "2025-05-01T12:00:00Z,m,1,s,a\n"
        "2025-05-01T12:01:00Z,m,NaN,s,a\n"
        "2025-05-01T12:02:00Z,m,inf,s,a\n"
        "2999-01-01T00:00:00Z,m,1,s,a\n"
        "1971-01-01T00:00:00Z,m,1,s,a\n"
        "not-a-time,m,1,s,a\n"
        "2025-05-01T12:03:00Z,,1,s,a\n"
        "2025-05-01T12:04:00Z,m,1,s,a\n"
    )
    report = ingest_paths(store, [path])
    assert report.ok  # every record was stored or dead-lettered
    assert (report.accepted, report.rejected) == (2, 6)
    assert report.files[0].first_reasons[0] == "line 3: value NaN is not a finite number"
    assert len(report.files[0].first_reasons) == 5
    rejects = _q(store, "SELECT source, location, reason, raw FROM ingest_rejects ORDER BY reject_id")
    assert {r[0] for r in rejects} == {str(path)}
    assert [r[1] for r in rejects] == [f"line {i}" for i in range(3, 9)]  # the header is line 1
    assert "outside the accepted range" in rejects[2][2] and "2999-01-01" in rejects[2][2]
    assert rejects[3][2].startswith(
        "ts 1971-01-01T00:00:00Z is outside the accepted range [1990-01-01T00:00:00Z, "
    )
    assert rejects[4][2].startswith("ts not-a-time is not a timestamp")
    assert rejects[5][2] == "metric is missing or empty"
    assert json.loads(rejects[0][3]) == {
        "ts": "2025-05-01T12:01:00Z",
        "metric": "m",
        "value": "NaN",
        "service": "s",
        "tenant": "a",
    }
    assert store.count("points") == 2


def test_malformed_file_does_not_lose_the_others(store, tmp_path: Path):
    _write_parquet(tmp_path / "1-good.parquet")
    truncated = tmp_path / "2-truncated.parquet"
    data = _write_parquet(tmp_path / "tmp.parquet", 500).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    (tmp_path / "tmp.parquet").unlink()
    junk = tmp_path / "3-junk.bin"
    junk.write_bytes(b"\x00\x01\x02garbage" * 100)
    missing_cols = tmp_path / "4-missing.parquet"
    pl.DataFrame({"ts": [T0], "value": [1.0]}).write_parquet(missing_cols)
    _jsonl(tmp_path / "5-events.jsonl", *EVENTS)
    report = ingest_paths(store, [tmp_path])
    assert [Path(f.path).name for f in report.files] == [
        "1-good.parquet",
        "2-truncated.parquet",
        "3-junk.bin",
        "4-missing.parquet",
        "5-events.jsonl",
    ]
    assert not report.ok
    by_name = {Path(f.path).name: f for f in report.files}
    assert by_name["1-good.parquet"].accepted == 6 and by_name["1-good.parquet"].error is None
    assert by_name["5-events.jsonl"].accepted == 2 and by_name["5-events.jsonl"].error is None
    assert str(truncated) in by_name["2-truncated.parquet"].error
    assert by_name["2-truncated.parquet"].format == "parquet"
    assert (
        "cannot tell the format" in by_name["3-junk.bin"].error and str(junk) in by_name["3-junk.bin"].error
    )
    assert "missing column(s) metric, service" in by_name["4-missing.parquet"].error
    assert store.count("points") == 6 and store.count("events") == 2
    dead = _q(store, "SELECT source, location, reason, octet_length(raw) FROM ingest_rejects ORDER BY source")
    assert [(Path(d[0]).name, d[1]) for d in dead] == [
        ("2-truncated.parquet", "file"),
        ("3-junk.bin", "file"),
        ("4-missing.parquet", "file"),
    ]
    assert dead[1][3] == 1000  # the junk file's head is kept whole (< 64 KiB)
    assert report.rejected == 3


@pytest.mark.parametrize("gz", [False, True])
def test_csv_reject_location_is_the_file_line(store, tmp_path: Path, gz: bool):
    text = (
        b"ts,metric,value,service\n"  # line 1
        b"2026-10-31T00:00:00Z,rps,1,api\n"
        b"2026-10-31T00:01:00Z,rps,2,api\n"
        b"2026-10-31T00:02:00Z,rps,3,api\n"
        b"2026-10-31T25:99:00Z,rps,4,api\n"  # line 5
        b"2026-10-31T00:04:00Z,rps,5\n"  # line 6: ragged, skipped
        b"2026-10-31T00:05:00Z,rps,x,api\n"  # line 7
    )
    path = tmp_path / ("long.csv.gz" if gz else "long.csv")
    path.write_bytes(gzip.compress(text) if gz else text)
    report = ingest_paths(store, [path])
    assert report.ok and (report.accepted, report.rejected) == (3, 3)
    assert report.files[0].first_reasons == [
        "line 6: row has 3 fields, the header has 4",
        "line 5: ts 2026-10-31T25:99:00Z is not a timestamp (expected RFC 3339 or epoch seconds/ms/us/ns)",
        "line 7: value x is not a number",
    ]
    assert _q(store, "SELECT location FROM ingest_rejects ORDER BY location") == [
        ("line 5",),
        ("line 6",),
        ("line 7",),
    ]


def test_parquet_reject_location_counts_rows_from_one_across_batches(store, tmp_path: Path, monkeypatch):
    import ingest.files as files

    monkeypatch.setattr(files, "BATCH_ROWS", 1000)
    path = tmp_path / "x.parquet"
    _long_df(3000).with_columns(
        pl.when(pl.int_range(pl.len()).is_in([0, 1499])).then(float("nan")).otherwise("value").alias("value")
    ).write_parquet(path, row_group_size=1000)
    report = ingest_paths(store, [path])
    assert (report.accepted, report.rejected) == (2998, 2)
    assert _q(store, "SELECT location FROM ingest_rejects ORDER BY reject_id") == [("row 1",), ("row 1500",)]


def test_parquet_with_bad_values_keeps_good_rows(store, tmp_path: Path):
    path = tmp_path / "x.parquet"
    pa_table = pa.table(
        {
            "ts": pa.array([1_746_100_800, 1_746_100_860, 99_999_999_999, 1_746_100_920]),
            "metric": ["m", "m", "m", "m"],
            "value": [1.0, float("nan"), 2.0, float("-inf")],
            "service": ["s", "s", "s", "s"],
        }
    )
    pq.write_table(pa_table, path)
    report = ingest_paths(store, [path])
    assert (report.accepted, report.rejected) == (1, 3)
    rejects = _q(store, "SELECT location, reason FROM ingest_rejects ORDER BY location")
    assert [r[0] for r in rejects] == ["row 2", "row 3", "row 4"]  # Parquet rows count from 1
    assert rejects[0][1] == "value NaN is not a finite number"
    assert rejects[1][1].startswith("ts 99999999999 is outside the accepted range [1990-01-01T00:00:00Z, ")
    assert rejects[2][1] == "value -inf is not a finite number"


def test_reingest_adds_nothing(store, tmp_path: Path):
    paths = [
        _write_parquet(tmp_path / "a.parquet"),
        _jsonl(tmp_path / "events.jsonl", *EVENTS),
        _jsonl(tmp_path / "logs.jsonl", *LOGS),
        _jsonl(tmp_path / "edges.jsonl", *EDGES),
    ]
    first = ingest_paths(store, paths)
    counts = {t: store.count(t) for t in ("series", "points", "events", "logs", "topology_edges")}
    second = ingest_paths(store, paths)
    assert first.inserted == 6 + 2 + 2 + 2
    assert second.accepted == first.accepted
    # edges are upserts (their last-seen ts is refreshed), so the store counts them as written again
    assert [f.inserted for f in second.files] == [0, 0, 0, 2]
    assert {t: store.count(t) for t in counts} == counts


def test_directory_walk_sorted_skips_hidden_and_the_database(tmp_path: Path):
    from ingest.store import Store

    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    _write_parquet(tmp_path / "b" / "c" / "z.parquet")
    _write_parquet(tmp_path / "b" / "a.parquet")
    _jsonl(tmp_path / ".hidden.jsonl", *EVENTS)
    _jsonl(tmp_path / ".git" / "x.jsonl", *EVENTS)
    _jsonl(tmp_path / "a.jsonl", *EVENTS)
    with Store(tmp_path / "rootwise.duckdb") as store:
        report = ingest_paths(store, [tmp_path])
        assert [Path(f.path).relative_to(tmp_path).as_posix() for f in report.files] == [
            "a.jsonl",
            "b/a.parquet",
            "b/c/z.parquet",
        ]
        assert report.ok
    assert expand_paths([tmp_path / "nope"]) == [tmp_path / "nope"]


def test_missing_path_reported(store, tmp_path: Path):
    report = ingest_paths(store, [tmp_path / "nope.parquet"])
    assert not report.ok and "no such file or directory" in report.files[0].error


def test_report_to_dict_and_progress(store, tmp_path: Path, capsys):
    report = ingest_paths(store, [_write_parquet(tmp_path / "a.parquet")], progress=True)
    d = report.to_dict()
    json.dumps(d)
    assert d["ok"] is True and d["accepted"] == 6 and d["inserted"] == 6
    assert d["files"][0] == {
        "path": str(tmp_path / "a.parquet"),
        "format": "parquet",
        "accepted": 6,
        "rejected": 0,
        "first_reasons": [],
        "error": None,
        "inserted": 6,
    }
    assert capsys.readouterr().out == ""  # the bar goes to stderr
    assert IngestReport(files=[FileReport("x", "parquet", error="boom")]).ok is False
    assert set(FORMATS) >= {"parquet", "csv-long", "otlp-json", "prometheus"}


def test_large_parquet_appends_in_batches(store, tmp_path: Path, monkeypatch):
    import ingest.files as files

    monkeypatch.setattr(files, "BATCH_ROWS", 1000)
    path = tmp_path / "big.parquet"
    _long_df(4500).write_parquet(path, row_group_size=700)
    calls = []
    real_append = store.append
    monkeypatch.setattr(store, "append", lambda b: calls.append(b.points.height) or real_append(b))
    report = ingest_paths(store, [path])
    assert calls == [1000, 1000, 1000, 1000, 500]
    assert report.accepted == 4500 and store.count("points") == 4500


def test_otlp_document_split_over_lines(store, tmp_path: Path):
    pytest.importorskip("ingest.otlp")
    doc = tmp_path / "export.json"
    text = json.dumps(_otlp_logs(NOW_NS - 10**9))
    doc.write_text(text.replace('"scopeLogs"', '\n"scopeLogs"'))  # first line is not a whole JSON value
    report = ingest_paths(store, [doc])
    assert report.ok and report.accepted == 1 and store.count("logs") == 1


def test_gzip_parquet(store, tmp_path: Path):
    raw = _write_parquet(tmp_path / "x.parquet").read_bytes()
    path = tmp_path / "x.parquet.gz"
    path.write_bytes(gzip.compress(raw))
    assert detect_format(path) == "parquet"
    report = ingest_paths(store, [path])
    assert report.ok and report.accepted == 6 and store.count("points") == 6


def test_duckdb_memory_limit_restored(store, tmp_path: Path):
    def limit() -> str:
        return _q(store, "SELECT current_setting('memory_limit')")[0][0]

    store.cursor().execute("SET memory_limit = '4GiB'")
    seen = []
    real_append = store.append
    store.append = lambda b: seen.append(limit()) or real_append(b)  # type: ignore[method-assign]
    ingest_paths(store, [_write_parquet(tmp_path / "a.parquet")])
    assert seen == ["512.0 MiB"]
    assert limit() == "4.0 GiB"


def test_csv_ragged_rows_dead_lettered_with_line_numbers(store, tmp_path: Path):
    path = tmp_path / "ragged.csv"
    path.write_text(
        "ts,metric,value,service\n"
        "2025-05-01T12:00:00Z,m,1,s\n"
        "2025-05-01T12:01:00Z,m,2\n"
        "2025-05-01T12:02:00Z,m,3,s,extra\n"
        "2025-05-01T12:03:00Z,m,4,s\n"
    )
    report = ingest_paths(store, [path])
    assert report.ok and (report.accepted, report.rejected) == (2, 2)
    assert _q(store, "SELECT location, reason, raw FROM ingest_rejects ORDER BY location") == [
        ("line 3", "row has 3 fields, the header has 4", b"2025-05-01T12:01:00Z,m,2"),
        ("line 4", "row has 5 fields, the header has 4", b"2025-05-01T12:02:00Z,m,3,s,extra"),
    ]
    assert _q(store, "SELECT value FROM points ORDER BY ts") == [(1.0,), (4.0,)]


def test_csv_duplicate_column_is_a_file_error(store, tmp_path: Path):
    path = tmp_path / "dup.csv"
    path.write_text("ts,metric,value,service,tenant,tenant\n2025-05-01T12:00:00Z,m,1,s,a,b\n")
    report = ingest_paths(store, [path])
    assert not report.ok
    assert "column 'tenant' appears more than once" in report.files[0].error


def test_parquet_corrupt_in_the_middle_keeps_committed_batches(store, tmp_path: Path, monkeypatch):
    import ingest.files as files

    monkeypatch.setattr(files, "BATCH_ROWS", 1000)
    path = tmp_path / "corrupt.parquet"
    _long_df(4000).write_parquet(path, row_group_size=1000)
    meta = pq.ParquetFile(path).metadata
    offset = meta.row_group(2).column(2).data_page_offset  # the value column of the third row group
    data = bytearray(path.read_bytes())
    data[offset : offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    report = ingest_paths(store, [path])
    assert not report.ok and str(path) in report.files[0].error
    assert report.files[0].accepted == 2000 and store.count("points") == 2000
    assert _q(store, "SELECT location FROM ingest_rejects") == [("file",)]


def test_malformed_jsonl_lines_dead_lettered_in_the_store(store, tmp_path: Path):
    path = tmp_path / "logs.jsonl"
    huge = orjson.dumps({**LOGS[0], "body": "x" * (10 << 20)})
    path.write_bytes(
        orjson.dumps(LOGS[0])
        + b"\n"
        + huge
        + b"\n"
        + b'{"ts": "2025-05-01T12:00:00Z", "service": "vllm", "bo\n'
        + b'{"ts": "2025-05-01T12:00:00Z", "service": "vllm", "body": "caf\xe9"}\n'
        + orjson.dumps({**LOGS[1], "service": ["vllm"]})
        + b"\n"
        + orjson.dumps({**LOGS[1], "ts": "2999-01-01T00:00:00Z"})
        + b"\n"
        + orjson.dumps(LOGS[1])
        + b"\n"
    )
    report = ingest_paths(store, [path])
    assert report.ok and (report.accepted, report.rejected) == (2, 5)
    rows = _q(
        store, "SELECT source, location, reason, octet_length(raw) FROM ingest_rejects ORDER BY reject_id"
    )
    assert {r[0] for r in rows} == {str(path)}
    assert [r[1] for r in rows] == ["line 2", "line 3", "line 4", "line 5", "line 6"]
    assert rows[0][2].startswith(f"line is {len(huge)} bytes, longer than the 1048576-byte limit")
    assert rows[0][3] == 65536
    assert rows[1][2].startswith("invalid JSON: ")
    assert rows[2][2] == "line is not valid UTF-8 (byte 62)"
    assert rows[3][2] == "field 'service' must be a string, got array"
    assert rows[4][2].startswith("field 'ts' '2999-01-01T00:00:00Z' is outside the accepted range")
    assert _q(store, "SELECT body FROM logs ORDER BY ts") == [("CUDA OOM",), ("recovered",)]
