"""The Numenta Anomaly Benchmark (NAB v1.1) scorer, re-implemented on numpy arrays.

Reproduces ``nab/sweeper.py``, ``nab/optimizer.py`` and ``Runner.normalize`` of NAB v1.1
(https://github.com/numenta/NAB) without pandas or process pools: one corpus-wide threshold sweep per
profile, then per-file scores at the best threshold. References to NAB below name its functions.

Rules
-----
- **Probation.** The first ``min(floor(0.15 * n), 0.15 * 5000)`` rows of a file are ignored: neither
  detections nor window rows there count (``util.getProbationPeriod``).
- **Row weights** (``Sweeper.calcSweepScore``). A row inside a window ``[L, R]`` of width ``W = R - L + 1``
  weighs ``A_TP * S(-(R - i + 1) / W) / S(-1)``; a row after a window weighs
  ``A_FP * S(|R - i| / (W - 1))`` with the closest preceding window; a row before any window weighs
  ``-A_FP``. ``S(x) = 2 / (1 + exp(5x)) - 1`` and ``S(x) = -1`` for ``x > 3``.
- **Detections.** A row is detected when its anomaly score is ``>= threshold``. A window scores the best
  (i.e. the earliest) detected row's weight, or ``-A_FN`` when none is detected; every detected row outside
  windows adds its (negative) weight.
- **Threshold.** Per profile, every distinct anomaly score of the corpus is tried at once by walking the rows
  in descending score order (``Sweeper.calcScoreByThreshold``); the first best-scoring threshold wins
  (``optimizer.optimizeThreshold``).
- **Normalisation** (``Runner.normalize``): ``100 * (raw - null) / (perfect - null)``, with ``perfect`` =
  ``A_TP`` times the number of windows and ``null`` the score of a detector that never fires,
  ``-A_FN`` per window. The same formula restricted to a file or a category gives the breakdowns.

NAB's per-row counts (TP, FP, FN, TN count rows, not windows, as in its ``*_scores.csv`` files) are kept;
window counts are reported next to them.

NAB's published scoreboard (``results/final_results.json``) was scored at the thresholds stored in
``config/thresholds.json``, which come from NAB's earlier hill-climbing optimiser (``twiddle``), not from
the sweep: pass :func:`load_thresholds` as ``threshold`` to reproduce it exactly. The sweep finds the same
score or a better one (numenta, reward_low_FP_rate: 63.209 instead of 63.117).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl
from numpy.typing import NDArray

#: share of each file ignored at its start (``Runner.probationaryPercent``)
PROBATION_PERCENT = 0.15

# ``Sweeper.calcScoreByThreshold`` starts its sweep at 1.1: the threshold that detects nothing
_START_THRESHOLD = 1.1


def scaled_sigmoid(position: NDArray[np.float64] | float) -> NDArray[np.float64]:
    """NAB's scaled sigmoid ``2 / (1 + exp(5x)) - 1``, ``-1`` beyond ``x > 3`` (``sweeper.scaledSigmoid``).

    Examples
    --------
    >>> [round(float(v), 5) for v in scaled_sigmoid(np.array([-1.0, -0.5, 0.0, 1.0, 3.5]))]
    [0.98661, 0.84828, 0.0, -0.98661, -1.0]
    """
    x = np.asarray(position, dtype=np.float64)
    with np.errstate(over="ignore"):
        # sigmoid(-5x) written as NAB does: 1 / (1 + exp(-(-5x)))
        value = 2.0 * (1.0 / (1.0 + np.exp(5.0 * x))) - 1.0
    return np.where(x > 3.0, -1.0, value)


_MAX_TP = float(scaled_sigmoid(-1.0))


def probation_length(n_rows: int) -> int:
    """Rows ignored at the start of a file of ``n_rows`` rows (``util.getProbationPeriod``).

    Examples
    --------
    >>> probation_length(4032), probation_length(22695)
    (604, 750)
    """
    return int(min(math.floor(PROBATION_PERCENT * n_rows), PROBATION_PERCENT * 5000))


@dataclass(frozen=True)
class Profile:
    """A NAB application profile: the weights of detected windows, false alarms and missed windows.

    NAB's ``tnWeight`` is not stored: no NAB scorer uses it.
    """

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


@dataclass(frozen=True, eq=False)
class NabFile:
    """One data file: its rows, its labelled windows and anomalies as row indices (inclusive)."""

    path: str  # "category/name.csv", the key of NAB's label files
    timestamps: NDArray[np.datetime64]
    values: NDArray[np.float64]
    windows: tuple[tuple[int, int], ...]
    anomalies: tuple[int, ...]  # rows of the points in combined_labels.json
    probation: int

    @property
    def category(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def n_rows(self) -> int:
        return len(self.timestamps)


@dataclass(frozen=True)
class _Layout:
    """Per-row facts of the scorable (post-probation) rows of a corpus, concatenated in file order."""

    file_id: NDArray[np.int64]
    window: NDArray[np.int64]  # corpus-wide window id, -1 outside windows
    unweighted: NDArray[np.float64]  # sweeper weight before profile weights
    window_file: NDArray[np.int64]  # file of each window (all windows, scorable or not)
    window_scorable: NDArray[np.bool_]  # NAB's sweeper only sees windows with a post-probation row


@dataclass(frozen=True, eq=False)
class NabCorpus:
    """The NAB data files with their windows, keyed by ``category/name.csv`` in label-file order."""

    files: Mapping[str, NabFile]

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.category for f in self.files.values()))

    @property
    def n_windows(self) -> int:
        return sum(len(f.windows) for f in self.files.values())

    def select(self, paths: Iterable[str]) -> NabCorpus:
        """The sub-corpus of ``paths`` (unknown paths raise ``KeyError``)."""
        return NabCorpus({p: self.files[p] for p in paths})

    @cached_property
    def _layout(self) -> _Layout:
        files = list(self.files.values())
        lengths = [f.n_rows - f.probation for f in files]
        window_parts: list[NDArray[np.int64]] = []
        weight_parts: list[NDArray[np.float64]] = []
        window_file: list[int] = []
        window_scorable: list[bool] = []
        for k, f in enumerate(files):
            window, unweighted = _row_weights(f.n_rows, f.windows)
            scorable = window[f.probation :]
            window_parts.append(np.where(scorable >= 0, scorable + len(window_file), -1))
            weight_parts.append(unweighted[f.probation :])
            window_file += [k] * len(f.windows)
            window_scorable += [end >= f.probation for _, end in f.windows]
        return _Layout(
            file_id=np.repeat(np.arange(len(files)), lengths),
            window=np.concatenate(window_parts) if files else np.empty(0, np.int64),
            unweighted=np.concatenate(weight_parts) if files else np.empty(0),
            window_file=np.array(window_file, dtype=np.int64),
            window_scorable=np.array(window_scorable, dtype=bool),
        )


def _row_weights(n_rows: int, windows: tuple[tuple[int, int], ...]) -> tuple[NDArray[np.int64], NDArray]:
    """Window index (-1 outside) and unweighted sweep score of every row (``Sweeper.calcSweepScore``)."""
    window = np.full(n_rows, -1, dtype=np.int64)
    # rows before the first window: "as if we were just really far away from the nearest window"
    unweighted = np.full(n_rows, -1.0)
    rows = np.arange(n_rows)
    for k, (start, end) in enumerate(windows):
        width = float(end - start + 1)
        window[start : end + 1] = k
        unweighted[start : end + 1] = scaled_sigmoid(-(end - rows[start : end + 1] + 1) / width)
        stop = windows[k + 1][0] if k + 1 < len(windows) else n_rows
        # NAB divides by zero here for a one-row window; numpy gives inf, i.e. weight -1
        with np.errstate(divide="ignore"):
            unweighted[end + 1 : stop] = scaled_sigmoid(np.abs(end - rows[end + 1 : stop]) / (width - 1.0))
    return window, unweighted


def _parse_time(text: str) -> np.datetime64:
    return np.datetime64(datetime.fromisoformat(text), "us")


def _first_row(timestamps: NDArray[np.datetime64], text: str, path: str) -> int:
    # NAB matches window limits by timestamp equality and takes the first occurrence (`timestamps.index`);
    # some files repeat timestamps (DST) or go back in time, so no binary search
    hits = np.flatnonzero(timestamps == _parse_time(text))
    if len(hits) == 0:
        raise ValueError(f"{path}: label timestamp {text} is not a row of the data file")
    return int(hits[0])


def _read_data_file(path: Path) -> pl.DataFrame:
    frame = pl.read_csv(path, columns=["timestamp", "value"], schema_overrides={"value": pl.Float64})
    return frame.with_columns(pl.col("timestamp").str.to_datetime(time_unit="us"))


def load_corpus(root: Path) -> NabCorpus:
    """Read the NAB data files named in ``labels/combined_windows.json`` under ``root``."""
    root = Path(root)
    windows_json = json.loads((root / "labels" / "combined_windows.json").read_text())
    labels_json = json.loads((root / "labels" / "combined_labels.json").read_text())
    files = {}
    for path, limits in windows_json.items():
        frame = _read_data_file(root / "data" / path)
        timestamps = frame["timestamp"].to_numpy()
        windows = tuple((_first_row(timestamps, a, path), _first_row(timestamps, b, path)) for a, b in limits)
        for k, (start, end) in enumerate(windows):
            if end < start or (k and start <= windows[k - 1][1]):
                raise ValueError(f"{path}: windows must be ordered and disjoint, got {limits}")
        files[path] = NabFile(
            path=path,
            timestamps=_read_only(timestamps),
            values=_read_only(frame["value"].to_numpy()),
            windows=windows,
            anomalies=tuple(sorted(_first_row(timestamps, t, path) for t in labels_json.get(path, []))),
            probation=probation_length(len(timestamps)),
        )
    return NabCorpus(files)


def _read_only(array: NDArray) -> NDArray:
    array = np.ascontiguousarray(array)
    array.flags.writeable = False
    return array


def load_profiles(root: Path) -> dict[str, Profile]:
    """The application profiles of ``config/profiles.json`` under ``root``, by name."""
    raw = json.loads((Path(root) / "config" / "profiles.json").read_text())
    return {
        name: Profile(
            name=name,
            tp_weight=float(p["CostMatrix"]["tpWeight"]),
            fp_weight=float(p["CostMatrix"]["fpWeight"]),
            fn_weight=float(p["CostMatrix"]["fnWeight"]),
        )
        for name, p in raw.items()
    }


def load_thresholds(root: Path, detector: str) -> dict[str, float]:
    """NAB's stored threshold of ``detector`` per profile (``config/thresholds.json``)."""
    stored = json.loads((Path(root) / "config" / "thresholds.json").read_text())[detector]
    return {profile: float(entry["threshold"]) for profile, entry in stored.items()}


def read_result_files(root: Path, detector: str) -> dict[str, NDArray[np.float64]]:
    """The ``anomaly_score`` column of NAB's shipped results of ``detector``, keyed like the corpus."""
    base = Path(root) / "results" / detector
    prefix = f"{detector}_"
    scores = {}
    for path in sorted(base.glob(f"*/{prefix}*.csv")):
        column = pl.read_csv(path, columns=["anomaly_score"], schema_overrides={"anomaly_score": pl.Float64})
        scores[f"{path.parent.name}/{path.name[len(prefix) :]}"] = column["anomaly_score"].to_numpy()
    if not scores:
        raise FileNotFoundError(f"no per-file results of {detector!r} under {base}")
    return scores


@dataclass(frozen=True)
class ProfileResult:
    """NAB's score of one detector under one profile, at one threshold.

    ``tp``/``fp``/``fn``/``tn`` count post-probation rows as NAB's ``*_scores.csv`` do. ``files`` has one
    row per file (``path, category, raw, null, perfect, score, tp, fp, fn, tn, windows,
    detected_windows``); ``categories`` the same columns summed per category with the score renormalised.
    ``score`` is NaN where there is no window to find.
    """

    profile: Profile
    threshold: float
    score: float
    raw: float
    null: float
    perfect: float
    tp: int
    fp: int
    fn: int
    tn: int
    windows: int
    detected_windows: int
    files: pl.DataFrame
    categories: pl.DataFrame


@dataclass(frozen=True)
class NabResult:
    """:class:`ProfileResult` per profile name."""

    profiles: Mapping[str, ProfileResult]

    def __getitem__(self, profile: str) -> ProfileResult:
        return self.profiles[profile]

    def summary(self) -> pl.DataFrame:
        """One row per profile: normalised score, raw score, threshold and counts."""
        fields = ["score", "raw", "threshold", "tp", "fp", "fn", "tn", "windows", "detected_windows"]
        return pl.DataFrame(
            [{"profile": name, **{f: getattr(r, f) for f in fields}} for name, r in self.profiles.items()]
        )


def _normalised(raw: float, null: float, perfect: float) -> float:
    # Runner.normalize
    return 100.0 * (raw - null) / (perfect - null) if perfect != null else math.nan


# the same per file or category; one without windows has perfect == null and no defined score
_NORMALISED = (
    pl.when(pl.col("perfect") != pl.col("null"))
    .then(100.0 * (pl.col("raw") - pl.col("null")) / (pl.col("perfect") - pl.col("null")))
    .otherwise(math.nan)
    .alias("score")
)


def _checked(corpus: NabCorpus, arrays: Mapping[str, NDArray], dtype: type) -> list[NDArray]:
    if set(arrays) != set(corpus.files):
        missing, unknown = set(corpus.files) - set(arrays), set(arrays) - set(corpus.files)
        raise ValueError(
            f"arrays must cover exactly the corpus files (use NabCorpus.select for a subset); "
            f"missing {sorted(missing)[:3]}, unknown {sorted(unknown)[:3]}"
        )
    out = []
    for path, f in corpus.files.items():
        array: NDArray = np.asarray(arrays[path], dtype=dtype)
        if array.shape != (f.n_rows,):
            raise ValueError(f"{path}: expected {f.n_rows} values, got shape {array.shape}")
        out.append(array)
    return out


def _row_scores(layout: _Layout, profile: Profile) -> NDArray[np.float64]:
    """Weighted sweep score of every scorable row, with NAB's operation order."""
    u = layout.unweighted
    return np.where(layout.window >= 0, u * profile.tp_weight / _MAX_TP, u * profile.fp_weight)


def _sweep(layout: _Layout, scores: NDArray, order: NDArray, profile: Profile) -> float:
    """The first threshold with the best corpus score (``Sweeper.calcScoreByThreshold`` + optimizer)."""
    fn = profile.fn_weight
    if len(order) == 0:
        return _START_THRESHOLD
    ranked = scores[order]
    window = layout.window[order]
    weight = _row_scores(layout, profile)[order]
    # each row's change to the corpus score when it becomes detected: FPs add their weight; a window row
    # raises its window from max(-A_FN, earlier detections) to max(that, its weight)
    change = np.where(window < 0, weight, 0.0)
    in_window = np.flatnonzero(window >= 0)
    grouped = in_window[np.argsort(window[in_window], kind="stable")]
    bounds = np.flatnonzero(np.diff(window[grouped])) + 1
    for rows in np.split(grouped, bounds):
        best = np.maximum(np.maximum.accumulate(weight[rows]), -fn)
        change[rows] = np.diff(best, prepend=-fn)
    base = -fn * int(layout.window_scorable.sum())
    total = base + np.cumsum(change)
    # a threshold's score is the state after its last row: scores >= threshold are detections
    last = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
    nothing = _START_THRESHOLD
    if ranked[0] >= nothing:  # scores beyond NAB's [0, 1]: keep "detect nothing" first
        nothing = float(np.nextafter(ranked[0], np.inf))
    thresholds = np.concatenate([[nothing], ranked[last]])
    totals = np.concatenate([[base], total[last]])
    return float(thresholds[int(np.argmax(totals))])


def _score_at(corpus: NabCorpus, scores: NDArray, profile: Profile, threshold: float) -> ProfileResult:
    """Per-file scores at ``threshold`` (``Sweeper.scoreDataSet``), summed and normalised."""
    layout = corpus._layout
    n_files, n_windows = len(corpus.files), len(layout.window_file)
    weight = _row_scores(layout, profile)
    detected = scores >= threshold
    in_window = layout.window >= 0
    hit = detected & in_window
    false_alarm = detected & ~in_window
    best = np.full(n_windows, -profile.fn_weight)
    np.maximum.at(best, layout.window[hit], weight[hit])
    best[~layout.window_scorable] = 0.0
    found = np.zeros(n_windows, dtype=bool)
    found[layout.window[hit]] = True

    def per_file(ids: NDArray, w: NDArray | None = None) -> NDArray:
        return np.bincount(ids, weights=w, minlength=n_files)

    files = list(corpus.files.values())
    counts = {
        "tp": per_file(layout.file_id[hit]),
        "fp": per_file(layout.file_id[false_alarm]),
        "fn": per_file(layout.file_id[in_window & ~detected]),
        "tn": per_file(layout.file_id[~in_window & ~detected]),
    }
    frame = pl.DataFrame(
        {
            "path": [f.path for f in files],
            "category": [f.category for f in files],
            "raw": per_file(layout.file_id[false_alarm], weight[false_alarm])
            + per_file(layout.window_file, best),
            "null": -profile.fn_weight * per_file(layout.window_file, layout.window_scorable.astype(float)),
            "perfect": profile.tp_weight * np.array([len(f.windows) for f in files], dtype=float),
            **{k: v.astype(np.int64) for k, v in counts.items()},
            "windows": np.array([len(f.windows) for f in files], dtype=np.int64),
            "detected_windows": per_file(layout.window_file, found.astype(float)).astype(np.int64),
        }
    )
    frame = frame.with_columns(_NORMALISED)
    summed = ["raw", "null", "perfect", "tp", "fp", "fn", "tn", "windows", "detected_windows"]
    categories = frame.group_by("category", maintain_order=True).agg(pl.col(summed).sum())
    categories = categories.with_columns(_NORMALISED)
    totals = frame.select(pl.col(summed).sum()).row(0, named=True)
    return ProfileResult(
        profile=profile,
        threshold=float(threshold),
        score=_normalised(totals["raw"], totals["null"], totals["perfect"]),
        **totals,
        files=frame.select("path", "category", *summed[:3], "score", *summed[3:]),
        categories=categories.select("category", *summed[:3], "score", *summed[3:]),
    )


def score_corpus(
    corpus: NabCorpus,
    scores: Mapping[str, NDArray[np.float64]],
    profiles: Mapping[str, Profile],
    threshold: float | Mapping[str, float] | None = None,
) -> NabResult:
    """Score anomaly scores (one array per corpus file, aligned to its rows) the NAB way.

    With ``threshold=None`` each profile gets the corpus-wide best threshold; a float or a per-profile
    mapping fixes it (rows with ``score >= threshold`` are detections).
    """
    arrays = _checked(corpus, scores, np.float64)
    flat = np.concatenate([a[f.probation :] for a, f in zip(arrays, corpus.files.values(), strict=True)])
    if not np.isfinite(flat).all():
        raise ValueError("anomaly scores must be finite after the probation period")
    if threshold is None:
        order = np.argsort(-flat, kind="stable")  # one sort serves every profile's sweep
        chosen = {name: _sweep(corpus._layout, flat, order, p) for name, p in profiles.items()}
    elif isinstance(threshold, Mapping):
        chosen = {name: float(threshold[name]) for name in profiles}
    else:
        chosen = dict.fromkeys(profiles, float(threshold))
    return NabResult({name: _score_at(corpus, flat, p, chosen[name]) for name, p in profiles.items()})


@dataclass(frozen=True)
class EventMetrics:
    """Incident-level detection quality on NAB windows (see :func:`event_metrics`).

    Times to detect are means over detected windows, from the window start and from its labelled anomaly
    (negative when the alarm came before the label); NaN when nothing was detected.
    """

    windows: int
    detected_windows: int
    alarm_events: int
    false_alarms: int
    precision: float
    recall: float
    f1: float
    ttd_rows_from_start: float
    ttd_seconds_from_start: float
    ttd_rows_from_label: float
    ttd_seconds_from_label: float


def _window_anomaly(f: NabFile, start: int, end: int) -> int:
    # the earliest labelled point in the window; one NAB window (iio_us-east-1_i-a2eb1cd9_NetworkIn)
    # holds none, so fall back to the closest labelled point of the file
    inside = [a for a in f.anomalies if start <= a <= end]
    if inside:
        return inside[0]
    if f.anomalies:
        return min(f.anomalies, key=lambda a: min(abs(a - start), abs(a - end)))
    return -1


def event_metrics(corpus: NabCorpus, detections: Mapping[str, NDArray[np.bool_]]) -> EventMetrics:
    """Event precision, recall and time to detect of boolean alarms (one array per corpus file).

    Alarms during probation are dropped. A window is detected when any alarm row falls in it (after
    probation) and counts once. A run of consecutive alarm rows is one alarm event; an event touching no
    window is one false alarm. ``precision = detected / (detected + false alarms)``,
    ``recall = detected / windows``; windows entirely inside probation are not counted.
    """
    arrays = _checked(corpus, detections, np.bool_)
    n_windows = n_detected = n_events = n_false = 0
    delays: list[tuple[float, float, float, float]] = []
    for alarms, f in zip(arrays, corpus.files.values(), strict=True):
        alarms = alarms.copy()
        alarms[: f.probation] = False
        starts = np.flatnonzero(alarms & ~np.concatenate([[False], alarms[:-1]]))
        ends = np.flatnonzero(alarms & ~np.concatenate([alarms[1:], [False]]))
        in_window = np.zeros(f.n_rows, dtype=np.int64)
        for start, end in f.windows:
            in_window[start : end + 1] = 1
        before = np.concatenate([[0], np.cumsum(in_window)])  # window rows before each row index
        n_events += len(starts)
        n_false += int(np.sum(before[ends + 1] == before[starts]))
        seconds = f.timestamps.astype("datetime64[us]").astype(np.int64) / 1e6
        for start, end in f.windows:
            if end < f.probation:
                continue
            n_windows += 1
            hits = np.flatnonzero(alarms[start : end + 1])
            if len(hits) == 0:
                continue
            n_detected += 1
            first = start + int(hits[0])
            label = _window_anomaly(f, start, end)
            delays.append(
                (
                    first - start,
                    seconds[first] - seconds[start],
                    first - label if label >= 0 else np.nan,
                    seconds[first] - seconds[label] if label >= 0 else np.nan,
                )
            )
    precision = n_detected / (n_detected + n_false) if n_detected + n_false else math.nan
    recall = n_detected / n_windows if n_windows else math.nan
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    mean = np.mean(np.array(delays, dtype=float), axis=0) if delays else np.full(4, np.nan)
    return EventMetrics(
        windows=n_windows,
        detected_windows=n_detected,
        alarm_events=n_events,
        false_alarms=n_false,
        precision=precision,
        recall=recall,
        f1=f1,
        ttd_rows_from_start=float(mean[0]),
        ttd_seconds_from_start=float(mean[1]),
        ttd_rows_from_label=float(mean[2]),
        ttd_seconds_from_label=float(mean[3]),
    )
