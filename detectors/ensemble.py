"""The default detector: chooses and combines families per series from the series' own properties.

The rule (documented in README, "Detection"):

1. **Counter-like** (cumulative: at least 99 % of steps are ≥ 0, it rises at least 3 times and 3 times as often
   as it falls, and it grows; :func:`is_counter_like`) → detect on its increments (``diff``, resets clipped to
   0), because a counter's level says nothing, its rate everything. This guess is for data of unknown kind
   (``infer_counters``, the default; a CSV given to ``rootwise score``): ``rootwise detect`` reads the kind from
   the catalog, hands counters over as increments and turns the guess off, so a gauge that only grows (a leak)
   keeps its level and a counter that has not stepped yet is still a counter.
2. **Always** the causal :class:`~detectors.streaming.StreamingDetector` (level and sustained-shift surprises
   with streaming peaks-over-threshold calibration): catches spikes, level shifts and bursts on any series,
   quantised or not. A run of level points scoring ``z >= hold_z`` (3) is held out of the level channel's
   calibration for up to ``hold`` points (four hours), so a leak or a lasting shift keeps scoring instead of
   calibrating itself away, and an incident does not teach the calibration that incidents are normal (which
   made a repeat within the day alarm 30-50 minutes late).
3. **Seasonal** (daily autocorrelation ≥ ``seasonal_min`` on the 30-minute grid with at least
   ``StlResidualDetector.min_days`` of history) → add :class:`~detectors.seasonal.StlResidualDetector`, which
   catches "normal value at the wrong time of day" and keeps scoring a sustained deviation that a trailing
   window would absorb.
4. **Sparse** (more than half the points are 0, e.g. per-tenant error counts) → the streaming detector alone:
   its scale floor is the series' resolution, so one stray error on a quiet tenant does not page.

Members' calibrated scores are combined by the maximum with a Bonferroni correction (``k`` members: the tail
probability of the max is multiplied by ``k``), so the ensemble's score stays on the same z scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from detectors.base import Detector, SeriesScores, Threshold, check_points, iter_series, scores_frame
from detectors.calibration import tail_of_z, z_of_tail
from detectors.seasonal import DAY_US, StlResidualDetector, seasonal_strength
from detectors.streaming import StreamingDetector, ffill


@dataclass(frozen=True)
class SeriesProfile:
    """What the rule looked at, kept in the state so the choice can be shown."""

    counter: bool
    seasonal: float  # daily autocorrelation on the grid (0 when too short)
    sparse: float  # fraction of zero values
    members: tuple[str, ...]


@dataclass(frozen=True)
class EnsembleState:
    profile: SeriesProfile
    streaming: Any
    seasonal: Any  # StlResidualDetector state or None
    last: float  # last raw value (for counter increments across calls)
    last_fit_us: int  # time of the last point the batch member was fitted on


def is_counter_like(y: np.ndarray) -> bool:
    """A cumulative counter: at least 99 % of steps non-negative, at least 3 rises and 3 times as many rises as
    falls (a counter falls only when it resets), and the series grows.

    A sparse counter (preemptions, errors of a quiet tenant: a step now and then) is one too. Scored as a level
    it is a staircase, and every step is a level shift that alarms until the trailing window catches up (hours),
    swallowing whatever else happens on its service meanwhile. A sparse gauge that rises and falls back (a
    queue that is usually empty) has about as many falls as rises.

    Examples
    --------
    >>> is_counter_like(np.cumsum(np.ones(100))), is_counter_like(np.sin(np.arange(100.0)))
    (True, False)
    >>> steps = np.zeros(1440); steps[[90, 400, 700, 1200]] = [9, 2, 3, 1]
    >>> queue = np.zeros(1440); queue[[90, 400, 700, 1200]] = 1
    >>> is_counter_like(np.cumsum(steps)), is_counter_like(queue)
    (True, False)
    """
    y = y[np.isfinite(y)]
    if y.size < 10:
        return False
    d = np.diff(y)
    rises, falls = int((d > 0).sum()), int((d < 0).sum())
    return bool((d >= 0).mean() >= 0.99 and rises >= 3 and 3 * falls <= rises and y[-1] > y[0])


def increments(y: np.ndarray, last: float) -> np.ndarray:
    """Counter → per-step increase; a reset (drop) counts the new value as the increase (Prometheus)."""
    prev = np.r_[last, y[:-1]]
    d = y - prev
    return np.where(d < 0, y, np.where(np.isfinite(d), d, 0.0))


class EnsembleDetector(Detector):
    """Per-series choice and combination of families (see module docstring for the rule)."""

    name = "ensemble"
    causal = False

    def __init__(
        self,
        *,
        seasonal_min: float = 0.3,
        refit_every_days: float = 2.0,
        probe: int = 60,
        hold: int = 240,
        hold_z: float = 3.0,
        infer_counters: bool = True,
        mean_gate: tuple[int, float] | None = (10, 2.0),
        threshold: Threshold | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(threshold=threshold, seed=seed)
        self.seasonal_min = seasonal_min
        self.refit_every_days = refit_every_days
        self.probe = probe
        self.hold = hold
        self.hold_z = hold_z
        self.infer_counters = infer_counters
        self.mean_gate = mean_gate

    def _members(self) -> tuple[StreamingDetector, StlResidualDetector]:
        # fleet use: every anomalous point scores (no onset-only suppression), the alarm rule decides pages;
        # a one-day calibration history (a bounded per-series tail) winsorised at 200, and an anomaly held out
        # of the level channel's history while it runs (up to four hours), so that neither it nor a repeat
        # later in the day is scored against its own values. The hold starts at z 3, below the alarm bar: an
        # incident that ramps up (latency growing ~10 % a minute) scored z 3.3-4.9 for 40 minutes with a hold
        # from z 5, each minute joining the tail and lifting it for the next. The recent means are not held:
        # that kept incidents open for up to an hour after the symptom ended (README, "Repeat incidents")
        stream = StreamingDetector(
            suppress=0,
            long=1440,
            calibration_cap=200.0,
            holds={"level": (self.hold, self.hold_z)},
            channels=("level", "mean"),
            mean_gate=self.mean_gate,
            threshold=self.threshold,
        )
        # a 30-minute grid is plenty for a daily shape and makes each STL fit ~4x cheaper than 15 minutes
        return stream, StlResidualDetector(points_per_day=48, threshold=self.threshold)

    def _profile(self, t: np.ndarray, y: np.ndarray) -> SeriesProfile:
        _, stl = self._members()
        counter = self.infer_counters and is_counter_like(y)
        v = increments(y, y[0]) if counter and y.size else y
        seasonal = 0.0
        step = int(np.median(np.diff(t))) if t.size > 1 else 0
        # a history of exactly ``min_days`` (first to last point one step short of it) is enough
        if t.size > 1 and (t[-1] - t[0] + step) >= stl.min_days * DAY_US:
            _, _, grid = stl._grid(t, ffill(v))
            seasonal = seasonal_strength(
                grid, int(DAY_US // max(DAY_US // stl.points_per_day, int(np.median(np.diff(t)))))
            )
        sparse = float((v == 0).mean()) if v.size else 0.0
        members = ("streaming", "stl") if seasonal >= self.seasonal_min and sparse <= 0.5 else ("streaming",)
        return SeriesProfile(counter, seasonal, sparse, members)

    def _values(self, y: np.ndarray, state: EnsembleState | None, profile: SeriesProfile) -> np.ndarray:
        # without inference the values already are increases, whatever a profile stored before that says
        if not profile.counter or not self.infer_counters or not y.size:
            return y
        return increments(y, state.last if state is not None else y[0])

    def _fit_series(self, t: np.ndarray, y: np.ndarray) -> EnsembleState:
        stream, stl = self._members()
        profile = self._profile(t, y)
        v = self._values(y, None, profile)
        return EnsembleState(
            profile,
            stream._fit_series(t, v),
            stl._fit_series(t, v) if "stl" in profile.members else None,
            float(y[-1]) if y.size else np.nan,
            int(t[-1]) if t.size else 0,
        )

    def _score_series(self, t: np.ndarray, y: np.ndarray, state: EnsembleState) -> SeriesScores:
        stream, stl = self._members()
        v = self._values(y, state, state.profile)
        s = stream._score_series(t, v, state.streaming)
        if state.seasonal is None:
            return s
        b = stl._score_series(t, v, state.seasonal)
        return self._combine(s, b)

    @staticmethod
    def _combine(s: SeriesScores, b: SeriesScores) -> SeriesScores:
        z = z_of_tail(np.minimum(1.0, 2.0 * tail_of_z(np.maximum(s.score, b.score))))
        # the seasonal member's expectation is the better "expected" band wherever it exists
        return SeriesScores(z, b.expected, b.lower, b.upper)

    def _update_series(self, t: np.ndarray, y: np.ndarray, state: EnsembleState) -> EnsembleState:
        stream, _ = self._members()
        v = self._values(y, state, state.profile)
        return EnsembleState(
            state.profile,
            stream._update_series(t, v, state.streaming),
            state.seasonal,
            float(y[-1]) if y.size else state.last,
            state.last_fit_us,
        )

    def _score_update_series(
        self, t: np.ndarray, y: np.ndarray, state: EnsembleState
    ) -> tuple[SeriesScores, EnsembleState]:
        # the streaming member scores and advances in one pass; the seasonal member's state does not move
        stream, stl = self._members()
        v = self._values(y, state, state.profile)
        s, streaming = stream._score_update_series(t, v, state.streaming)
        if state.seasonal is not None:
            s = self._combine(s, stl._score_series(t, v, state.seasonal))
        last = float(y[-1]) if y.size else state.last
        return s, EnsembleState(state.profile, streaming, state.seasonal, last, state.last_fit_us)

    def score_update(self, frame: pl.DataFrame) -> pl.DataFrame:
        """:meth:`score` then :meth:`update`, in one pass per series."""
        return self._score_update_each(frame)

    def needs_refit(self, last_fit_us: int, now_us: int) -> bool:
        """True when the batch member, fitted on points up to ``last_fit_us`` (the state's ``last_fit_us``,
        which ``rootwise detect`` stores as ``fitted_until``), is older than ``refit_every_days``."""
        return now_us - last_fit_us >= self.refit_every_days * DAY_US

    def score_online(self, frame: pl.DataFrame, *, warmup: int = 200, refit_every: int = 0) -> pl.DataFrame:
        """Causal scores: the streaming member runs once; the seasonal member is refitted on the prefix every
        ``refit_every_days`` and scores the next block (``refit_every`` points overrides the day count)."""
        return self._online(frame, refit_every, fit=False)

    def fit_score_online(self, frame: pl.DataFrame) -> pl.DataFrame:
        """:meth:`score_online` then :meth:`fit`; the streaming member's causal pass also gives its fitted state
        (unless the whole history and the first ``probe`` points disagree on counter-ness)."""
        return self._online(frame, 0, fit=True)

    def _online(self, frame: pl.DataFrame, refit_every: int, *, fit: bool) -> pl.DataFrame:
        pts = check_points(frame)
        parts = []
        states: dict[int, EnsembleState] = {}
        stream, stl = self._members()
        for sid, t, y in iter_series(pts):
            # every choice is made from a prefix: counter-ness from the first ``probe`` points (which score 0),
            # seasonality from the history the seasonal member is first fitted on
            probe = min(self.probe, t.size)
            counter = self.infer_counters and is_counter_like(y[:probe])
            v = increments(y, y[0]) if counter and y.size else y
            s, streaming = stream._score_update_series(t, v, stream._fit_series(t[:0], v[:0]))
            s.score[:probe] = np.minimum(s.score[:probe], 0.0)
            first = int(np.searchsorted(t, t[0] + stl.min_days * DAY_US)) if t.size else 0
            if 0 < first < t.size and "stl" in self._profile(t[:first], y[:first]).members:
                step = int(np.median(np.diff(t))) if t.size > 1 else DAY_US
                block = refit_every or max(1, int(self.refit_every_days * DAY_US // max(step, 1)))
                z = np.zeros(t.size)
                exp = np.full(t.size, np.nan)
                lo, hi = exp.copy(), exp.copy()
                for a in range(first, t.size, block):
                    bnd = min(a + block, t.size)
                    st = stl._fit_series(t[:a], v[:a])
                    r = stl._score_series(t[a:bnd], v[a:bnd], st)
                    z[a:bnd], exp[a:bnd], lo[a:bnd], hi[a:bnd] = r.score, r.expected, r.lower, r.upper
                both = self._combine(s, SeriesScores(z, exp, lo, hi))
                # before the seasonal member has enough history, the streaming member speaks alone
                keep = np.arange(t.size) < first
                s = SeriesScores(
                    np.where(keep, s.score, both.score),
                    np.where(keep, s.expected, both.expected),
                    np.where(keep, s.lower, both.lower),
                    np.where(keep, s.upper, both.upper),
                )
            parts.append(self._columns(sid, t, s))
            if fit:
                # what _fit_series gives, reusing the streaming member's pass when its values are the same
                profile = self._profile(t, y)
                fv = self._values(y, None, profile)
                if profile.counter != counter:
                    streaming = stream._fit_series(t, fv)
                seasonal = stl._fit_series(t, fv) if "stl" in profile.members else None
                states[sid] = EnsembleState(profile, streaming, seasonal, float(y[-1]), int(t[-1]))
        if fit:
            self.states_ = states
        return scores_frame(parts)
