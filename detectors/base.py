"""The detector contract (STYLE.md rule 1), implemented once.

``fit(frame) -> self`` and ``score(frame) -> frame[series_id, ts, score, is_anomaly, expected, lower, upper]``
over long frames (``series_id, ts, value``; :data:`ingest.schema.POINTS`). A family implements only its
per-series numpy core:

* ``_fit_series(t, y) -> state`` — learn from one series' history (``t`` int64 microseconds, ``y`` float64);
* ``_score_series(t, y, state) -> SeriesScores`` — calibrated scores (z, higher = worse) for new points;
* ``_update_series(t, y, state) -> state`` — advance the state past scored points (streaming families; the
  default keeps the fitted state, batch families are refitted on a schedule instead);
* optionally ``_score_update_series(t, y, state) -> (SeriesScores, state)`` — both at once, for families whose
  scoring computes the advanced state anyway (they route :meth:`Detector.score_update` through it).

Constructors only store keyword parameters; learned state ends in ``_``; scoring never mutates the detector;
randomness only from ``seed``. Thresholds are separate objects (:class:`Threshold`) applied to calibrated
scores, so one threshold works across detectors and series.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
import polars as pl

from ingest.schema import POINTS, SCORES, TS


@dataclass(frozen=True)
class Threshold:
    """A point is anomalous when its calibrated score is at least ``z`` (tail probability ``1 - Phi(z)``).

    Examples
    --------
    >>> Threshold(4.0)(np.array([3.9, 4.0, np.nan])).tolist()
    [False, True, False]
    """

    z: float = 5.0

    def __call__(self, score: np.ndarray) -> np.ndarray:
        s = np.asarray(score, dtype=np.float64)
        return np.nan_to_num(s, nan=-np.inf) >= self.z


@dataclass(frozen=True)
class SeriesScores:
    """One series' scores: calibrated ``score`` (z) and optionally the expected value and its band."""

    score: np.ndarray
    expected: np.ndarray | None = None
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None


class DetectorError(ValueError):
    """Bad input to a detector (missing columns, wrong dtypes)."""


def check_points(frame: pl.DataFrame) -> pl.DataFrame:
    """Validate and normalise a points frame: the POINTS columns and dtypes, sorted by series and time.

    Extra columns are dropped; ``value`` is cast to float; rows with a null ``ts`` or ``series_id`` are an error.
    """
    missing = [c for c in POINTS if c not in frame.columns]
    if missing:
        raise DetectorError(f"points frame lacks column(s) {missing}; expected {list(POINTS)}")
    if frame.schema["ts"] != TS:
        if not isinstance(frame.schema["ts"], pl.Datetime):
            raise DetectorError(f"column ts must be a datetime, got {frame.schema['ts']}")
    out = frame.select(
        pl.col("series_id").cast(pl.Int64),
        pl.col("ts").cast(TS),
        pl.col("value").cast(pl.Float64),
    )
    if out["ts"].null_count() or out["series_id"].null_count():
        raise DetectorError("points frame has null series_id or ts")
    return out.sort("series_id", "ts")


def pack_arrays(*arrays: np.ndarray) -> bytes:
    """The arrays' bytes one after the other, for a state's ``__getstate__``: one bytes object pickles and
    loads in a fraction of the time of several arrays. :func:`unpack_arrays` needs their dtypes and sizes.

    Examples
    --------
    >>> blob = pack_arrays(np.array([1.5, 2.5]), np.array([7], dtype=np.int32))
    >>> [a.tolist() for a in unpack_arrays(blob, ((np.float64, 2), (np.int32, 1)))]
    [[1.5, 2.5], [7]]
    """
    return b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)


def unpack_arrays(blob: bytes, layout: Sequence[tuple[Any, int]]) -> list[np.ndarray]:
    """The arrays :func:`pack_arrays` packed, given ``(dtype, size)`` of each; writable copies (compiled code
    takes a read-only array for another type and would compile again)."""
    out, at = [], 0
    for dtype, size in layout:
        dt = np.dtype(dtype)
        out.append(np.frombuffer(blob, dtype=dt, count=int(size), offset=at).copy())
        at += dt.itemsize * int(size)
    if at != len(blob):
        raise ValueError(f"packed state holds {len(blob)} bytes, its layout {at}")
    return out


def iter_series(frame: pl.DataFrame) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(series_id, t_us, y)`` per series of a checked, sorted frame; no copy of the big columns."""
    if frame.height == 0:
        return
    sid = frame["series_id"].to_numpy()
    t = frame["ts"].dt.epoch("us").to_numpy()
    y = frame["value"].to_numpy()
    for a, b in series_blocks(sid):
        yield int(sid[a]), t[a:b], y[a:b]


def series_blocks(series_ids: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of equal ids, in order (a frame sorted or grouped by series).

    Examples
    --------
    >>> series_blocks(np.array([4, 4, 2, 7, 7, 7]))
    [(0, 2), (2, 3), (3, 6)]
    """
    if not series_ids.size:
        return []
    bounds = (np.flatnonzero(np.diff(series_ids)) + 1).tolist()
    return list(zip([0, *bounds], [*bounds, series_ids.size], strict=True))


class Detector:
    """Base of every univariate detector; see the module docstring for what a family implements."""

    #: registry name, set by each family
    name: ClassVar[str] = ""
    #: True when ``score`` of a point uses only the fitted state and earlier points (streaming families)
    causal: ClassVar[bool] = False

    threshold: Threshold

    def __init__(self, *, threshold: Threshold | None = None, seed: int = 0) -> None:
        self.threshold = threshold or Threshold()
        self.seed = seed

    # -- parameters (sklearn-style, from the constructor signature) ------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The constructor's keyword parameters and their current values."""
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self"}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # -- the family's core -------------------------------------------------------------------------------
    def _fit_series(self, t: np.ndarray, y: np.ndarray) -> Any:
        raise NotImplementedError

    def _score_series(self, t: np.ndarray, y: np.ndarray, state: Any) -> SeriesScores:
        raise NotImplementedError

    def _update_series(self, t: np.ndarray, y: np.ndarray, state: Any) -> Any:
        return state

    def _score_update_series(self, t: np.ndarray, y: np.ndarray, state: Any) -> tuple[SeriesScores, Any]:
        return self._score_series(t, y, copy.deepcopy(state)), self._update_series(t, y, state)

    # -- the contract ------------------------------------------------------------------------------------
    def fit(self, frame: pl.DataFrame) -> Self:
        """Learn each series' state from ``frame`` (its history); returns ``self``."""
        pts = check_points(frame)
        self.states_: dict[int, Any] = {sid: self._fit_series(t, y) for sid, t, y in iter_series(pts)}
        return self

    def update(self, frame: pl.DataFrame) -> Self:
        """Advance fitted states past the points of ``frame`` (after scoring them); unknown series are fitted."""
        pts = check_points(frame)
        states = dict(getattr(self, "states_", {}))
        for sid, t, y in iter_series(pts):
            state = states.get(sid)
            states[sid] = self._fit_series(t, y) if state is None else self._update_series(t, y, state)
        self.states_ = states
        return self

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Score every point of ``frame`` with the fitted state of its series.

        A series that was never fitted is scored from an empty history for causal families and in-sample
        (fitted on the frame itself) otherwise.
        """
        pts = check_points(frame)
        states = getattr(self, "states_", {})
        parts = []
        for sid, t, y in iter_series(pts):
            state = states.get(sid)
            if state is None:
                state = self._fit_series(t[:0], y[:0]) if self.causal else self._fit_series(t, y)
            # the core gets a copy: scoring never mutates the detector, even if a family is careless
            parts.append(self._columns(sid, t, self._score_series(t, y, copy.deepcopy(state))))
        return scores_frame(parts)

    def score_update(self, frame: pl.DataFrame) -> pl.DataFrame:
        """:meth:`score` then :meth:`update` on the same points (``rootwise detect`` scores each run's new points
        and advances the states past them); streaming families do both in one pass."""
        scores = self.score(frame)
        self.update(frame)
        return scores

    def _score_update_each(self, frame: pl.DataFrame) -> pl.DataFrame:
        """:meth:`score_update` through the family's one-pass core ``_score_update_series`` (for families whose
        scoring computes the advanced state anyway)."""
        pts = check_points(frame)
        states = dict(getattr(self, "states_", {}))
        parts = []
        for sid, t, y in iter_series(pts):
            state = states.get(sid)
            if state is None:  # what score then update do with a series never fitted
                fitted = self._fit_series(t, y)
                empty = self._fit_series(t[:0], y[:0]) if self.causal else copy.deepcopy(fitted)
                scores = self._score_series(t, y, empty)
            else:
                scores, fitted = self._score_update_series(t, y, state)
            states[sid] = fitted
            parts.append(self._columns(sid, t, scores))
        self.states_ = states
        return scores_frame(parts)

    def score_online(self, frame: pl.DataFrame, *, warmup: int = 200, refit_every: int = 500) -> pl.DataFrame:
        """Score causally: each point's score uses only earlier points of its series.

        Causal families run straight through from an empty state. Batch families are refitted on the
        growing prefix every ``refit_every`` points and score the next block; the first ``warmup`` points
        score 0 (not enough history to say anything).
        """
        pts = check_points(frame)
        parts = []
        for sid, t, y in iter_series(pts):
            if self.causal:
                scores = self._score_series(t, y, self._fit_series(t[:0], y[:0]))
                parts.append(self._columns(sid, t, scores))
                continue
            n = t.size
            out = {k: np.full(n, np.nan) for k in ("score", "expected", "lower", "upper")}
            out["score"][: min(warmup, n)] = 0.0
            for a in range(min(warmup, n), n, refit_every):
                b = min(a + refit_every, n)
                state = self._fit_series(t[:a], y[:a])
                block = self._score_series(t[a:b], y[a:b], state)
                for k in out:
                    v = getattr(block, k)
                    if v is not None:
                        out[k][a:b] = v
            parts.append(self._columns(sid, t, SeriesScores(**out)))
        return scores_frame(parts)

    def fit_score_online(self, frame: pl.DataFrame) -> pl.DataFrame:
        """:meth:`score_online` then :meth:`fit` on the same points (``rootwise detect`` on series seen for the
        first time); streaming families override it to do both in one pass."""
        scores = self.score_online(frame)
        self.fit(frame)
        return scores

    def _frame(self, sid: int, t: np.ndarray, s: SeriesScores) -> pl.DataFrame:
        return scores_frame([self._columns(sid, t, s)])

    def _columns(self, sid: int, t: np.ndarray, s: SeriesScores) -> dict[str, np.ndarray]:
        n = t.size
        score = np.asarray(s.score, dtype=np.float64)
        if score.shape != (n,):
            raise AssertionError(f"{type(self).__name__} returned {score.shape} scores for {n} points")

        def col(v: np.ndarray | None) -> np.ndarray:
            return np.full(n, np.nan) if v is None else np.asarray(v, dtype=np.float64)

        return {
            "series_id": np.full(n, sid, dtype=np.int64),
            "ts": t.astype("datetime64[us]"),
            "score": score,
            "is_anomaly": self.threshold(score),
            "expected": col(s.expected),
            "lower": col(s.lower),
            "upper": col(s.upper),
        }


#: from this many rows per series on, :func:`scores_frame` builds a frame per series and chains them
_ROWS_PER_FRAME = 1000


def scores_frame(parts: list[dict[str, np.ndarray]]) -> pl.DataFrame:
    """One SCORES frame from per-series columns (:meth:`Detector._columns`): built once when the series are
    short, because a frame per series costs more than scoring a few new points; a frame per series, chained
    without a copy, when they are long (copying every column into one costs more than the frames)."""
    if not parts:
        return pl.DataFrame(schema=SCORES)
    if sum(p["score"].size for p in parts) >= _ROWS_PER_FRAME * len(parts):
        return pl.concat([pl.DataFrame(p, schema=SCORES, nan_to_null=False) for p in parts], rechunk=False)
    cols = {k: np.concatenate([p[k] for p in parts]) for k in SCORES}
    return pl.DataFrame(cols, schema=SCORES, nan_to_null=False)
