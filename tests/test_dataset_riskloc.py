"""RiskLoc RS and Squeeze adapters against the real files, their errors, and the localiser's quality floor."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from app.rca_eval.dimensions import eval_riskloc, eval_squeeze, evaluate_cases, set_scores
from ingest.csvtable import CsvInputError
from ingest.datasets.riskloc import (
    ACTUAL,
    ACTUAL_DENOMINATOR,
    EXPECTED,
    EXPECTED_DENOMINATOR,
    DimensionCase,
    RootCauseSet,
    iter_riskloc_rs,
    read_anomalies,
    rs_leaves,
)
from ingest.datasets.squeeze import iter_squeeze, read_injections

#: F1 measured on all 135 RS cases with the defaults (0.757, precision 0.774, recall 0.741) minus a margin
RS_F1_FLOOR = 0.72
RS_DIMS = {"cdn", "bitrate", "device", "p2p", "isp", "platform", "gameid"}


@pytest.fixture
def rs_root(shared_data: Path) -> Path:
    return shared_data / "rca" / "riskloc-rs"


@pytest.fixture
def squeeze_root(shared_data: Path) -> Path:
    return shared_data / "rca" / "squeeze-sample"


def test_rs_cases_and_truth(rs_root: Path):
    pairs = list(iter_riskloc_rs(rs_root))
    assert len(pairs) == 135
    assert len({case.name for case, _ in pairs}) == 135
    layers = [truth.layer for _, truth in pairs]
    assert (layers.count(1), layers.count(2), layers.count(3)) == (78, 45, 12)
    assert sum(len(truth.elements) > 1 for _, truth in pairs) == 8
    for case, truth in pairs:
        assert case.kpi == "ratio" and case.group == "RS" and case.name == truth.case
        assert set(case.dims) <= RS_DIMS and len(case.dims) >= 3
        assert case.leaves.columns == [*case.dims, ACTUAL, EXPECTED, ACTUAL_DENOMINATOR, EXPECTED_DENOMINATOR]
        assert case.denominator == (ACTUAL_DENOMINATOR, EXPECTED_DENOMINATOR)
        assert case.leaves.height == case.leaves.unique(list(case.dims)).height
        assert (case.leaves[ACTUAL] <= case.leaves[ACTUAL_DENOMINATOR]).all()
        # every true element names labels and values present at the anomaly minute
        for element in truth.elements:
            assert set(element) <= set(case.dims)
    first, truth = pairs[0]
    assert first.name == "case1_0821_1741394221" and truth.keys() == ("bitrate=2000&p2p=1",)
    assert first.dims == ("cdn", "bitrate", "device", "p2p")


def test_rs_expected_is_the_mean_of_the_previous_four_minutes(rs_root: Path):
    case, _ = next(iter_riskloc_rs(rs_root))
    path, ts = rs_root / "data" / "RS" / "case1_0821_1741394221.csv", 1566397800
    leaves, _ = rs_leaves(path, ts)
    assert leaves.equals(case.leaves)
    # recomputed with the csv module for one leaf
    with path.open(newline="") as f:
        rows = [
            r
            for r in csv.DictReader(f)
            if (r["cdn"], r["bitrate"], r["device"], r["p2p"]) == ("5", "500", "C3", "1")
        ]
    now = [r for r in rows if int(r["min"]) == ts]
    before = [r for r in rows if ts - 240 <= int(r["min"]) < ts]
    leaf = leaves.filter(
        (leaves["cdn"] == "5")
        & (leaves["bitrate"] == "500")
        & (leaves["device"] == "C3")
        & (leaves["p2p"] == "1")
    ).row(0, named=True)
    assert leaf[ACTUAL] == sum(float(r["value"]) for r in now)
    assert leaf[ACTUAL_DENOMINATOR] == sum(float(r["cnt"]) for r in now)
    assert leaf[EXPECTED] == pytest.approx(sum(float(r["value"]) for r in before) / 4)
    assert leaf[EXPECTED_DENOMINATOR] == pytest.approx(sum(float(r["cnt"]) for r in before) / 4)


def test_squeeze_sample(squeeze_root: Path):
    pairs = list(iter_squeeze(squeeze_root))
    assert len(pairs) == 1
    case, truth = pairs[0]
    assert case.kpi == "additive" and case.denominator is None
    assert case.group == "data/B_cuboid_layer_1_n_ele_1"
    assert case.dims == ("logstream_idc", "logstream_province", "logstream_isp", "cmatch")
    assert case.leaves.height == 21_600
    assert truth.keys() == ("logstream_isp=ALIBABA",)


def test_bad_rs_files_name_file_and_line(tmp_path: Path):
    (tmp_path / "anomaly.yaml").write_text(
        "- data: c1\n  timestamp: 120\n  cause: {'cdn': 5}\n- data: c2\n  timestamp: 60\n  cause: {cdn: 5\n"
    )
    with pytest.raises(CsvInputError, match=r"anomaly.yaml, line 6: cause"):
        read_anomalies(tmp_path / "anomaly.yaml")
    (tmp_path / "anomaly.yaml").write_text("- data: c1\n  timestamp: soon\n  cause: {'cdn': 5}\n")
    with pytest.raises(CsvInputError, match=r"anomaly.yaml, line 2: timestamp 'soon'"):
        read_anomalies(tmp_path / "anomaly.yaml")
    (tmp_path / "anomaly.yaml").write_text("- data: c1\n  when: 5\n")
    with pytest.raises(CsvInputError, match=r"line 2: unknown key 'when'"):
        read_anomalies(tmp_path / "anomaly.yaml")

    (tmp_path / "c1.csv").write_text("min,cdn,value,cnt\n60,5,1,10\n120,5,2,ten\n")
    with pytest.raises(CsvInputError, match=r"c1.csv, line 3: column 'cnt': cannot parse 'ten'"):
        rs_leaves(tmp_path / "c1.csv", 120)
    (tmp_path / "c1.csv").write_text("min,cdn,value,cnt\n60,5,1,10\n120,5,,10\n")
    with pytest.raises(CsvInputError, match=r"c1.csv, line 3: column 'value' is empty"):
        rs_leaves(tmp_path / "c1.csv", 120)
    (tmp_path / "c1.csv").write_text("min,cdn,value\n60,5,1\n")
    with pytest.raises(CsvInputError, match=r"c1.csv: missing column\(s\) cnt"):
        rs_leaves(tmp_path / "c1.csv", 120)
    (tmp_path / "c1.csv").write_text("min,cdn,value,cnt\n60,5,1,10\n")
    with pytest.raises(CsvInputError, match=r"no rows at the anomaly minute 120"):
        rs_leaves(tmp_path / "c1.csv", 120)


def test_bad_squeeze_files_name_file_and_line(tmp_path: Path):
    folder = tmp_path / "B_cuboid_layer_1_n_ele_1"
    folder.mkdir()
    (folder / "injection_info.csv").write_text("set,timestamp\na=a1,5\na1,6\n")
    with pytest.raises(CsvInputError, match=r"injection_info.csv, line 3: column 'set'"):
        read_injections(folder / "injection_info.csv")
    (folder / "injection_info.csv").write_text("set,timestamp\na=a1,5\n")
    (folder / "5.csv").write_text("a,real,predict\na1,1,x\n")
    with pytest.raises(CsvInputError, match=r"5.csv, line 2: column 'predict'"):
        list(iter_squeeze(tmp_path))
    (folder / "5.csv").write_text("a,real,predict\na1,9,1\n")
    (folder / "7.csv").write_text("a,real,predict\na1,9,1\n")
    with pytest.raises(CsvInputError, match=r"no row for timestamp 7"):
        list(iter_squeeze(tmp_path))


def test_the_localiser_never_sees_the_truth(rs_root: Path):
    seen = []

    def spy(case):
        seen.append(case)
        return []

    pairs = [p for _, p in zip(range(3), iter_riskloc_rs(rs_root), strict=False)]
    outcomes = evaluate_cases(pairs, spy)
    assert all(type(c) is DimensionCase for c in seen)
    assert not any(isinstance(v, RootCauseSet) for c in seen for v in vars(c).values())
    assert set_scores(outcomes)["recall"] == 0.0 and outcomes[0].fn == 1


@pytest.mark.slow
def test_rs_quality_floor(rs_root: Path):
    outcomes, rows = eval_riskloc(rs_root)
    pooled = rows[-1]
    assert pooled["group"] == "all" and pooled["cases"] == 135
    assert pooled["f1"] >= RS_F1_FLOOR, rows
    single = next(r for r in rows if r["group"] == "layer_1_elements_1")
    assert single["f1"] >= 0.85, rows  # one label, one element: the easy layer
    assert pooled["mean_seconds"] < 1.0


def test_squeeze_sample_found_exactly(squeeze_root: Path):
    outcomes, rows = eval_squeeze(squeeze_root)
    assert [o.predicted for o in outcomes] == [("logstream_isp=ALIBABA",)]
    assert rows[-1]["f1"] == 1.0
