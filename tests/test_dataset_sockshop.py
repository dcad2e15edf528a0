"""The Sock Shop adapter against the real files, its errors, and the quality floor of the metric analyser."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from app.rca_eval import accuracy_at, avg_at
from app.rca_eval.sockshop import eval_sockshop, format_summary
from ingest import schema
from ingest.datasets.sockshop import SockShopFormatError, load_cases
from rca.base import RcaIncident, RcaResult, View
from rca.metrics import MetricShiftAnalyser


@pytest.fixture
def sockshop_root(shared_data: Path) -> Path:
    return shared_data / "rca" / "sock-shop"


def _write_case(folder: Path, rows: int = 20, bad: tuple[int, str, str] | None = None) -> Path:
    """A tiny valid case ``<folder>/carts-cpu/1``; ``bad = (row, column, text)`` overwrites one cell."""
    case = folder / "carts-cpu" / "1"
    case.mkdir(parents=True)
    for name, start, level in (("normal.csv", 1_000, 1.0), ("anomalous.csv", 5_000, 50.0)):
        header = ["time", "carts_cpu", "carts-db_mem", "carts_lat_99"]
        lines = [",".join(header)]
        for i in range(rows):
            cells = [str(start + i), str(level + i % 3), str(3e8 + 4096 * (i % 2)), "0.25"]
            if bad is not None and name == "anomalous.csv" and i == bad[0]:
                cells[header.index(bad[1])] = bad[2]
            lines.append(",".join(cells))
        (case / name).write_text("\n".join(lines) + "\n")
    return case


def test_real_cases_services_and_names(sockshop_root: Path) -> None:
    cases = load_cases(sockshop_root)
    assert len(cases) == 50
    truths = Counter((c.truth.service, c.truth.fault_type) for c in cases)
    assert set(truths.values()) == {5}
    assert {s for s, _ in truths} == {"carts", "catalogue", "orders", "payment", "user"}
    assert {f for _, f in truths} == {"cpu", "mem"}
    for case in cases:
        assert case.series.schema == pl.Schema(schema.SERIES)
        assert case.points.schema == pl.Schema(schema.POINTS)
        assert case.series.height == 38
        services = set(case.series["service"])
        assert services == {
            "carts", "catalogue", "front-end", "orders", "payment", "queue-master", "rabbitmq", "shipping", "user"
        }  # fmt: skip
        assert not any(s.endswith("-db") for s in services)
        before = case.points.filter(pl.col("ts") < case.onset)
        after = case.points.filter(pl.col("ts") >= case.onset)
        assert before.height > 250 * 38 and after.height > 250 * 38
        assert before["ts"].min() == case.baseline_start and after["ts"].max() < case.end
        # the analysers' inputs carry no trace of the label
        inc = case.incident()
        assert inc.id is None and inc.onset == case.onset and inc.baseline_start == case.baseline_start
    carts = cases[0].series.filter(pl.col("metric") == "cpu", pl.col("service") == "carts")
    assert sorted(carts["labels"].list.eval(pl.element().struct.field("value")).explode()) == [
        "carts",
        "carts-db",
    ]
    assert set(cases[0].series["metric"]) == {
        "cpu", "memory", "request_rate", "latency_p50", "latency_p90", "latency_p99"
    }  # fmt: skip
    # orders-mem/5 recorded its normal window after the anomalous one: it is moved before the onset
    late = next(c for c in cases if c.name == "orders-mem/5")
    assert late.normal_shift < timedelta(0)


def test_malformed_cell_names_file_line_and_column(tmp_path: Path) -> None:
    case = _write_case(tmp_path, bad=(6, "carts-db_mem", "12MB"))
    with pytest.raises(
        SockShopFormatError, match=r"line 8, column 'carts-db_mem': cannot parse '12MB'"
    ) as err:
        load_cases(tmp_path)
    assert err.value.path == case / "anomalous.csv"
    assert str(case / "anomalous.csv") in str(err.value)
    assert isinstance(err.value, ValueError)


def test_malformed_header_missing_file_and_empty_root(tmp_path: Path) -> None:
    case = _write_case(tmp_path / "a")
    (case / "normal.csv").write_text("time,carts_cpu,carts_disk\n1,2,3\n")
    with pytest.raises(SockShopFormatError, match=r"normal.csv: line 1: column 'carts_disk'"):
        load_cases(tmp_path / "a")
    case = _write_case(tmp_path / "b")
    (case / "anomalous.csv").unlink()
    with pytest.raises(SockShopFormatError, match=r"anomalous.csv: file missing"):
        load_cases(tmp_path / "b")
    (tmp_path / "c").mkdir()
    with pytest.raises(SockShopFormatError, match="no case folders"):
        load_cases(tmp_path / "c")


def test_small_case_round_trip(tmp_path: Path) -> None:
    _write_case(tmp_path)
    (case,) = load_cases(tmp_path)
    assert case.truth.service == "carts" and case.truth.fault_type == "cpu"
    assert case.points.height == 2 * 20 * 3
    # the normal window now ends one step before the onset
    assert case.points.filter(pl.col("ts") < case.onset)["ts"].max() == case.onset - timedelta(seconds=1)
    result = MetricShiftAnalyser(min_points=5).explain(case.incident(), case.view())
    assert result.ranked()[0].service == "carts"


class _Spy:
    """Wraps an analyser and records what it was given, to check that no label leaks into the inputs."""

    def __init__(self) -> None:
        self.inner = MetricShiftAnalyser()
        self.seen: list[tuple[RcaIncident, View]] = []

    def explain(self, incident: RcaIncident, view: View) -> RcaResult:
        self.seen.append((incident, view))
        return self.inner.explain(incident, view)


def test_quality_floor_on_real_data(sockshop_root: Path) -> None:
    spy = _Spy()
    report = eval_sockshop(sockshop_root, spy)
    outcomes = report["outcomes"]
    assert len(outcomes) == 50
    # measured: AC@1 1.00, AC@3 1.00, Avg@5 1.00 pooled and per fault type; the floor allows two misses
    assert accuracy_at(outcomes, 1) >= 0.96
    assert avg_at(outcomes, 5) >= 0.97
    for fault in ("cpu", "mem"):
        part = [o for o in outcomes if o.fault_type == fault]
        assert len(part) == 25 and accuracy_at(part, 1) >= 0.92
    assert report["summary"][-1]["fault_type"] == "all" and report["summary"][-1]["cases"] == 50
    assert all(o.seconds < 1.0 for o in outcomes)
    assert "onset" in format_summary(report)
    for incident, view in spy.seen:
        assert incident.id is None and not incident.labels
        labels = view.series()["labels"].list.eval(pl.element().struct.field("value")).explode().drop_nulls()
        assert not any("-cpu" in v or "-mem" in v for v in labels)


def test_quality_floor_with_a_late_alert(sockshop_root: Path) -> None:
    # the onset given two minutes late; the common change point search puts it back (measured AC@1 1.00,
    # 0.10 without the search)
    report = eval_sockshop(
        sockshop_root, MetricShiftAnalyser(onset_search=timedelta(minutes=3)), onset_lag=timedelta(minutes=2)
    )
    assert accuracy_at(report["outcomes"], 1) >= 0.96
