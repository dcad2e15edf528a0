"""Streaming detectors: causal windowed statistics followed by the anomaly-likelihood layer.

:class:`StreamingDetector` scores each point against the trailing window of its series only (so it can run on
the live stream and in ``rootwise score``): a robust surprise of the value (distance from the trailing median
in units of a robust scale) and of its change (first difference), each turned into a tail probability and then
into Numenta's anomaly likelihood (:func:`detectors.calibration.anomaly_likelihood`): how unusual the recent
surprises are against their own history. Quantised metrics (MAD = 0: counts, percentages in steps) get a scale
floor from the series' resolution — the smallest positive step seen so far — instead of a division by zero,
the flaw that makes a naive MAD z-score useless on NAB.

:class:`WindowedGaussianDetector` is NAB's "windowed Gaussian" baseline (39.6 standard), kept as an anchor.

State for incremental runs is the tail of the series (the longest window) and the running resolution, so
scoring a stream in pieces gives exactly the scores of one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from detectors.base import Detector, SeriesScores, Threshold
from detectors.calibration import Z_MAX, anomaly_likelihood, exceedance_z, tail_of_z, z_of_tail


@dataclass(frozen=True)
class StreamState:
    """Tail of the stream needed to continue exactly: values, times and the running resolution."""

    t: np.ndarray
    y: np.ndarray
    res: np.ndarray  # running resolution at each tail point
    seen: int

    @property
    def resolution(self) -> float:
        return (
            float(self.res[-1]) if self.res.size else np.inf
        )  # points consumed so far (warm-up counts from the start of the stream, not of the tail)


def _empty_state() -> StreamState:
    return StreamState(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), 0)


def ffill(y: np.ndarray) -> np.ndarray:
    """Forward-fill NaN (leading NaN become the first finite value, or 0).

    Examples
    --------
    >>> ffill(np.array([np.nan, 1.0, np.nan, 3.0])).tolist()
    [1.0, 1.0, 1.0, 3.0]
    """
    y = np.asarray(y, dtype=np.float64)
    bad = ~np.isfinite(y)
    if not bad.any():
        return y
    if bad.all():
        return np.zeros_like(y)
    idx = np.where(bad, 0, np.arange(y.size))
    np.maximum.accumulate(idx, out=idx)
    out = y[idx]
    first = np.flatnonzero(~bad)[0]
    out[:first] = y[first]
    return out


def running_resolution(y: np.ndarray, start: float = np.inf) -> np.ndarray:
    """Smallest positive step between consecutive values seen up to each point (causal quantisation floor)."""
    d = np.abs(np.diff(y, prepend=y[:1] if y.size else y))
    d = np.where(d > 0, d, np.inf)
    if d.size:
        d[0] = min(d[0], start)
    return np.minimum.accumulate(d) if d.size else d


def robust_surprise(
    y: np.ndarray, resolution: np.ndarray, *, window: int, min_periods: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance of each value from the trailing median, in trailing robust-scale units (causal).

    Returns ``(surprise, median, scale)``; the window ends at the previous point. The scale is the larger of
    the trailing IQR/1.349, the resolution and a tiny fraction of the level, so quantised and flat series do
    not divide by zero.
    """
    s = pl.Series(y).shift(1)
    med = s.rolling_median(window, min_samples=min_periods).to_numpy()
    q75 = s.rolling_quantile(0.75, "linear", window, min_samples=min_periods).to_numpy()
    q25 = s.rolling_quantile(0.25, "linear", window, min_samples=min_periods).to_numpy()
    scale = (q75 - q25) / 1.349
    res = np.where(np.isfinite(resolution), resolution, 0.0)
    floor = np.maximum(res, 1e-3 * np.abs(np.nan_to_num(med)))
    scale = np.maximum(np.nan_to_num(scale, nan=0.0), floor)
    scale = np.where(scale > 0, scale, 1.0)
    z = np.abs(y - med) / scale
    return np.nan_to_num(z, nan=0.0), med, scale


def suppress_repeats(z: np.ndarray, span: int) -> np.ndarray:
    """Keep a score only where it beats every score of the previous ``span`` points (else clip it to 0).

    An anomaly is reported once, at its onset, whatever the threshold; a stronger one inside the span is still
    reported. Causal.

    Examples
    --------
    >>> suppress_repeats(np.array([0, 5, 6, 5, 0, 0, 7.0]), 3).tolist()
    [0.0, 5.0, 6.0, 0.0, 0.0, 0.0, 7.0]
    """
    prev = pl.Series(z).rolling_max(span, min_samples=1).shift(1).fill_null(-np.inf).to_numpy()
    return np.where(z > prev, z, np.minimum(z, 0.0))


class StreamingDetector(Detector):
    """Causal robust surprise (level and change) → anomaly likelihood; the default for live streams.

    Parameters
    ----------
    window
        Trailing points for the median and robust scale.
    short, long
        Anomaly-likelihood windows: recent mean of surprises vs their history (Numenta: 10 and 8640).
    min_history
        Points before anything can score above 0.
    """

    name = "streaming"
    causal = True

    def __init__(
        self,
        *,
        window: int = 600,
        short: int = 10,
        long: int = 2000,
        min_history: int = 150,
        calibration: str = "exceedance",
        tail_q: float = 0.98,
        suppress: int = 0,
        channels: tuple[str, ...] = ("level", "change"),
        smooth: int = 1,
        threshold: Threshold | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(threshold=threshold, seed=seed)
        self.window = window
        self.short = short
        self.long = long
        self.min_history = min_history
        self.calibration = calibration
        self.tail_q = tail_q
        self.suppress = suppress
        self.channels = tuple(channels)
        self.smooth = smooth

    def _tail_length(self) -> int:
        # enough history to recompute every rolling window of the last point exactly
        return self.window + self.long + 2 * self.short + self.suppress + 2

    def _fit_series(self, t: np.ndarray, y: np.ndarray) -> StreamState:
        return self._update_series(t, y, _empty_state())

    def _update_series(self, t: np.ndarray, y: np.ndarray, state: StreamState) -> StreamState:
        yy = ffill(np.r_[state.y, y])
        res = np.r_[state.res, self._resolution(y, state)]
        keep = self._tail_length()
        return StreamState(np.r_[state.t, t][-keep:], yy[-keep:], res[-keep:], state.seen + y.size)

    @staticmethod
    def _resolution(y: np.ndarray, state: StreamState) -> np.ndarray:
        # the step into the first new point counts too, so pieces give the same resolution as one pass
        prev = state.y[-1:] if state.y.size else ffill(y)[:1]
        return running_resolution(ffill(np.r_[prev, y]), state.resolution)[1:]

    def _score_series(self, t: np.ndarray, y: np.ndarray, state: StreamState) -> SeriesScores:
        n_old = state.y.size
        full = ffill(np.r_[state.y, y])
        res = np.r_[state.res, self._resolution(y, state)]
        z, med, scale = self._channels(full, res)
        # points are numbered from the start of the stream so warm-up does not restart after a tail cut
        first = state.seen - n_old
        z[: max(0, self.min_history - first)] = 0.0
        band = 4.0 * scale
        return SeriesScores(z[n_old:], med[n_old:], (med - band)[n_old:], (med + band)[n_old:])

    def _channels(self, y: np.ndarray, res: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mp = max(5, min(self.min_history, self.window) // 2)
        level, med, scale = robust_surprise(y, res, window=self.window, min_periods=mp)
        surprises = []
        if "level" in self.channels:
            surprises.append(level)
        if "change" in self.channels:
            dy = np.abs(np.diff(y, prepend=y[:1]))
            surprises.append(robust_surprise(dy, res, window=self.window, min_periods=mp)[0])
        if "mean" in self.channels:
            # sustained shift: the mean of the last ``short`` points against the trailing median, in
            # standard-error units (a small shift held for a while is as surprising as one big spike)
            m = pl.Series(y).rolling_mean(self.short, min_samples=1).to_numpy()
            surprises.append(np.abs(m - med) / scale * np.sqrt(self.short) / 3.0)
        if "volatility" in self.channels:
            dy = pl.Series(np.diff(y, prepend=y[:1]))
            short_sd = dy.rolling_std(self.short, min_samples=2).to_numpy()
            long_sd = dy.shift(self.short).rolling_std(self.window, min_samples=mp).to_numpy()
            floor = np.where(np.isfinite(res), res, 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.log((short_sd + floor) / (long_sd + floor))
            surprises.append(np.nan_to_num(np.abs(ratio), nan=0.0, posinf=0.0))
        zs = []
        for surprise in surprises:
            if self.smooth > 1:
                surprise = pl.Series(surprise).rolling_mean(self.smooth, min_samples=1).to_numpy()
            if self.calibration == "likelihood":
                # raw anomaly score in [0, 1): the two-sided tail of the surprise as if standard normal
                raw = 1.0 - 2.0 * tail_of_z(np.minimum(surprise, Z_MAX))
                zs.append(anomaly_likelihood(raw, short=self.short, long=self.long, min_history=self.min_history))
            else:
                zs.append(exceedance_z(surprise, q=self.tail_q, window=self.long, min_history=self.min_history))
        # max of k calibrated channels: Bonferroni (k x tail) keeps the combined score calibrated
        z = z_of_tail(np.minimum(1.0, len(zs) * tail_of_z(np.max(zs, axis=0))))
        if self.suppress:
            z = suppress_repeats(z, self.suppress)
        return z, med, scale


class WindowedGaussianDetector(Detector):
    """NAB's windowed Gaussian baseline: tail probability of the value under a trailing window's mean and std."""

    name = "windowed-gaussian"
    causal = True

    def __init__(
        self, *, window: int = 6400, min_history: int = 20, threshold: Threshold | None = None, seed: int = 0
    ) -> None:
        super().__init__(threshold=threshold, seed=seed)
        self.window = window
        self.min_history = min_history

    def _fit_series(self, t: np.ndarray, y: np.ndarray) -> StreamState:
        return self._update_series(t, y, _empty_state())

    def _update_series(self, t: np.ndarray, y: np.ndarray, state: StreamState) -> StreamState:
        keep = self.window + 1
        yy = ffill(np.r_[state.y, y])
        return StreamState(np.r_[state.t, t][-keep:], yy[-keep:], np.zeros(0), state.seen + y.size)

    def _score_series(self, t: np.ndarray, y: np.ndarray, state: StreamState) -> SeriesScores:
        n_old = state.y.size
        s = pl.Series(ffill(np.r_[state.y, y])).shift(1)
        mu = s.rolling_mean(self.window, min_samples=self.min_history).to_numpy()
        sd = s.rolling_std(self.window, min_samples=self.min_history).to_numpy()
        sd = np.where(np.nan_to_num(sd) > 0, sd, np.nan)
        full = np.r_[state.y, y]
        z = np.abs(full - mu) / sd
        # two-sided tail → one-sided z scale
        score = z_of_tail(np.minimum(1.0, 2.0 * tail_of_z(np.nan_to_num(z, nan=0.0))))
        score = np.where(np.isnan(z), 0.0, score)
        return SeriesScores(score[n_old:], mu[n_old:], (mu - 4 * sd)[n_old:], (mu + 4 * sd)[n_old:])
