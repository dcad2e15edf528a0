"""Change-point detectors: two-sided CUSUM and Bayesian online change-point detection (BOCPD).

Both are streaming (causal) families: the state after :meth:`fit` is the state at the end of the history, and
:meth:`update` carries it past scored points, so ``score(b)`` after ``update(a)`` continues where ``a`` ended.

* :class:`CusumDetector` — Page's CUSUM (Page 1954) on robustly standardised values, vectorised with the
  Lindley identity ``S_t = C_t - min(-S_0, min_{j<=t} C_j)`` over cumulative sums ``C``. When a change is
  declared the reference restarts at the new level (the post-change segment), so a persistent shift alarms once
  instead of forever.
* :class:`BocpdDetector` — Adams & MacKay (2007), "Bayesian online changepoint detection", with a Normal-Gamma
  model (Student-t predictive) and a constant hazard, run length truncated at ``max_run``. One Python step per
  point, vectorised over run lengths.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
from scipy.special import gammaln

from detectors.base import Detector, SeriesScores, Threshold
from detectors.calibration import TailCalibrator, z_of_tail

#: an empirical calibrator needs this much history to say anything about the statistic's tail
_MIN_CALIBRATION = 200
#: Siegmund's overshoot correction for Gaussian increments (Siegmund 1985, "Sequential Analysis", ch. X)
_OVERSHOOT = 0.583
#: adaptive chunking of the CUSUM scan: small after a declared change, doubling while nothing happens
_MIN_CHUNK, _MAX_CHUNK = 256, 1 << 16


def robust_level_scale(y: np.ndarray, *, frac: float = 0.01) -> tuple[float, float]:
    """Median and robust scale (``1.4826 * MAD``) of ``y``, with a floor for quantised metrics.

    When the MAD is 0 (more than half the values are equal — queue depths, replica counts, error counts) the
    scale is the smallest positive gap between distinct values; for a constant series it is ``frac * |median|``
    (1.0 for a constant 0), so one unit of change is never divided by zero.

    Examples
    --------
    >>> robust_level_scale(np.array([3.0, 3, 3, 3, 4, 5]))
    (3.0, 1.0)
    >>> robust_level_scale(np.array([200.0, 200, 200]))
    (200.0, 2.0)
    """
    y = np.asarray(y, dtype=np.float64)
    y = y[np.isfinite(y)]
    if y.size == 0:
        return 0.0, 1.0
    level = float(np.median(y))
    mad = 1.4826 * float(np.median(np.abs(y - level)))
    if mad > 0:
        return level, mad
    distinct = np.unique(y)
    if distinct.size > 1:
        return level, float(np.diff(distinct).min())
    return level, frac * abs(level) if level != 0 else 1.0


def _lindley(x: np.ndarray, s0: float) -> np.ndarray:
    """``S_t = max(0, S_{t-1} + x_t)`` from ``S_0 = s0``, without a Python loop (Lindley's recursion solved)."""
    c = np.cumsum(x)
    return c - np.minimum(np.minimum.accumulate(c), -s0)


# -- CUSUM ------------------------------------------------------------------------------------------------
@dataclass
class CusumState:
    """One series' CUSUM state.

    ``level``/``scale`` are the reference; ``pos``/``neg`` the running one-sided statistics (robust-sigma
    units); ``segment`` holds the values since the last declared change while the new level is being learned
    (``None`` once it is frozen); ``buffer`` holds warm-up values until ``ready``.
    """

    level: float = 0.0
    scale: float = 1.0
    pos: float = 0.0
    neg: float = 0.0
    segment: np.ndarray | None = None
    calibrator: TailCalibrator | None = None
    ready: bool = False
    buffer: np.ndarray = field(default_factory=lambda: np.zeros(0))


class CusumDetector(Detector):
    """Two-sided CUSUM on robustly standardised values; scores are the calibrated statistic.

    Values are standardised with the fitted median and robust scale (:func:`robust_level_scale`), clipped at
    ``±clip`` (one spike moves the statistic by at most ``clip - k``) and accumulated with drift ``k`` (robust
    sigmas; detects shifts of about ``2k`` fastest). The statistic ``S = max(S+, S-)`` is mapped to a tail
    probability by Siegmund's approximation for the stationary CUSUM, ``p = 2 exp(-2k (S + 0.583))``, and, with
    at least 200 points of history, by the empirical tail of the in-sample statistic (:class:`TailCalibrator`);
    the larger (more conservative) probability wins, so heavy tails and autocorrelation in the history do not
    turn into alarms.

    A change is *declared* when ``S >= h`` (``h`` in robust sigmas) or, with ``h=None``, when the score reaches
    the threshold. The statistic then restarts at 0 and the reference is re-learned from the post-change segment
    (its start: the split with the largest likelihood ratio since the statistic last left 0, Hinkley 1971): a
    running mean for ``relearn`` points (Brown, Durbin & Evans 1975 recursive residuals), then its median. A
    persistent shift therefore alarms once; the scale is kept. ``expected`` is the
    reference level; ``lower``/``upper`` are ``expected ∓ threshold.z * scale``.

    The first ``warmup`` points of a series scored from an empty history only estimate the reference (score 0).

    Examples
    --------
    >>> import polars as pl
    >>> from datetime import datetime, timedelta
    >>> y = np.r_[np.random.default_rng(0).normal(0, 1, 400), np.random.default_rng(1).normal(6, 1, 50)]
    >>> f = pl.DataFrame({"series_id": 1, "ts": [datetime(2024, 1, 1) + timedelta(minutes=i) for i in range(450)],
    ...                   "value": y})
    >>> out = CusumDetector().fit(f[:400]).score(f[400:])
    >>> int(out["is_anomaly"].arg_max()) < 5
    True
    """

    name: ClassVar[str] = "cusum"
    causal: ClassVar[bool] = True

    def __init__(
        self,
        *,
        k: float = 0.5,
        h: float | None = None,
        clip: float = 5.0,
        relearn: int = 50,
        warmup: int = 100,
        threshold: Threshold | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(threshold=threshold, seed=seed)
        self.k = k
        self.h = h
        self.clip = clip
        self.relearn = relearn
        self.warmup = warmup

    # -- family core ----------------------------------------------------------------------------------
    def _fit_series(self, t: np.ndarray, y: np.ndarray) -> CusumState:
        if y.size < self.warmup:
            return CusumState(buffer=np.array(y, dtype=np.float64))
        return self._fit_values(y)

    def _score_series(self, t: np.ndarray, y: np.ndarray, state: CusumState) -> SeriesScores:
        _, expected, score, state = self._run(y, state)
        return self._scores(expected, score, state)

    def _update_series(self, t: np.ndarray, y: np.ndarray, state: CusumState) -> CusumState:
        return self._run(y, state)[3]

    # -- internals ------------------------------------------------------------------------------------
    def _fit_values(self, y: np.ndarray) -> CusumState:
        level, scale = robust_level_scale(y)
        state = CusumState(level=level, scale=scale, ready=True)
        stat, _, _, state = self._run(y, state)
        if y.size >= _MIN_CALIBRATION:
            state = replace(state, calibrator=TailCalibrator.fit(stat))
        return state

    def _scores(self, expected: np.ndarray, score: np.ndarray, state: CusumState) -> SeriesScores:
        half = self.threshold.z * state.scale
        return SeriesScores(score=score, expected=expected, lower=expected - half, upper=expected + half)

    def _tail(self, stat: np.ndarray, state: CusumState) -> np.ndarray:
        p = np.minimum(0.5, 2.0 * np.exp(-2.0 * self.k * (stat + _OVERSHOOT)))
        if state.calibrator is not None:
            p = np.maximum(p, state.calibrator.tail(stat))
        return p

    def _run(self, y: np.ndarray, state: CusumState) -> tuple[np.ndarray, np.ndarray, np.ndarray, CusumState]:
        """Scan ``y`` from ``state``: statistic, reference level and score per point, and the final state."""
        y = np.asarray(y, dtype=np.float64)
        n = y.size
        stat = np.zeros(n)
        expected = np.full(n, np.nan)
        score = np.zeros(n)
        pos = 0
        if not state.ready:
            # warm-up: the first points only estimate the reference (score 0), then the scan starts
            take = y[: max(self.warmup - state.buffer.size, 0)]
            buffer = np.r_[state.buffer, take]
            pos = take.size
            if buffer.size < self.warmup:
                return stat, expected, score, replace(state, buffer=buffer)
            state = self._fit_values(buffer)
        s, k, c = state.scale, self.k, self.clip
        sp, sn, level, segment = state.pos, state.neg, state.level, state.segment
        chunk = _MIN_CHUNK
        while pos < n:
            if segment is not None:
                # re-learning a new level: recursive residuals against the running mean of the segment
                m = min(n - pos, max(self.relearn - segment.size, 1))
                block = y[pos : pos + m]
                fin = np.isfinite(block)
                vals = np.where(fin, block, 0.0)
                seg_fin = np.isfinite(segment)
                csum = segment[seg_fin].sum() + np.r_[0.0, np.cumsum(vals)[:-1]]
                cnt = seg_fin.sum() + np.r_[0, np.cumsum(fin)[:-1]]
                with np.errstate(invalid="ignore", divide="ignore"):
                    ref = csum / cnt
                    w = (block - ref) / s * np.sqrt(cnt / (cnt + 1.0))
            else:
                m = min(n - pos, chunk)
                block = y[pos : pos + m]
                ref = np.full(m, level)
                w = (block - level) / s
            u = np.clip(w, -c, c)
            missing = ~np.isfinite(u)
            xp = np.where(missing, 0.0, u - k)
            xn = np.where(missing, 0.0, -u - k)
            splus, sminus = _lindley(xp, sp), _lindley(xn, sn)
            st = np.maximum(splus, sminus)
            z = np.maximum(z_of_tail(self._tail(st, state)), 0.0)
            declared = st >= self.h if self.h is not None else z >= self.threshold.z
            hit = int(declared.argmax()) if declared.any() else -1
            end = m if hit < 0 else hit + 1
            stat[pos : pos + end] = st[:end]
            expected[pos : pos + end] = ref[:end]
            score[pos : pos + end] = z[:end]
            if hit < 0:
                sp, sn = float(splus[-1]), float(sminus[-1])
                if segment is not None:
                    segment = np.r_[segment, block]
                    if segment.size >= self.relearn:
                        level, segment = float(np.nanmedian(segment)), None
                chunk = min(2 * chunk, _MAX_CHUNK)
            else:
                # the change started after the last time the alarming side was 0; within that stretch take the
                # split with the largest Gaussian likelihood ratio (Hinkley 1971), since the statistic often
                # leaves 0 by chance a few points before the real change
                up = splus[hit] >= sminus[hit]
                side = splus if up else sminus
                zeros = np.flatnonzero(side[: hit + 1] == 0.0)
                start = int(zeros[-1]) + 1 if zeros.size else 0
                v = np.nan_to_num(u[start : hit + 1]) * (1.0 if up else -1.0)
                tail = np.cumsum(v[::-1])[::-1]
                glr = np.where(tail > 0, tail * tail / np.arange(v.size, 0, -1), -np.inf)
                segment = block[start + int(glr.argmax()) : hit + 1].copy()
                if np.isfinite(segment).any():
                    level = float(np.nanmedian(segment))
                if segment.size >= self.relearn:
                    segment = None
                sp = sn = 0.0
                chunk = _MIN_CHUNK
            pos += end
        return stat, expected, score, replace(state, pos=sp, neg=sn, level=level, segment=segment)


# -- BOCPD ------------------------------------------------------------------------------------------------
#: Normal-Gamma prior on standardised values: mean 0 (the fitted level) worth half an observation, variance
#: near 1 (the fitted scale) worth 20 pseudo-observations. A vague variance prior (alpha0 = 1) lets a short run
#: that mixes pre- and post-change points pass as "one noisy regime" and caps the evidence for a shift.
_MU0, _KAPPA0, _ALPHA0, _BETA0 = 0.0, 0.5, 10.0, 10.0
#: beta of unused run-length slots: finite (so products stay defined) but makes their likelihood vanish
_DEAD_BETA = 1e300


@dataclass
class BocpdState:
    """One series' BOCPD state: the run-length posterior and Normal-Gamma statistics per run length.

    Run lengths live in a ring of ``max_run`` slots: slot ``i`` holds run length ``(head - i) mod max_run``, so
    advancing time moves ``head`` instead of shifting arrays. ``logp`` is the log posterior, ``mu``/``beta`` the
    posterior mean and rate (``kappa`` and ``alpha`` follow from the run length), ``half_log_beta`` caches
    ``0.5 * log(beta)``. Values are standardised with ``level``/``scale``.
    """

    level: float = 0.0
    scale: float = 1.0
    logp: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mu: np.ndarray = field(default_factory=lambda: np.zeros(0))
    beta: np.ndarray = field(default_factory=lambda: np.zeros(0))
    half_log_beta: np.ndarray = field(default_factory=lambda: np.zeros(0))
    head: int = 0
    last_raw: float = 0.0
    calibrator: TailCalibrator | None = None
    ready: bool = False
    buffer: np.ndarray = field(default_factory=lambda: np.zeros(0))


class BocpdDetector(Detector):
    """Bayesian online change-point detection (Adams & MacKay 2007) with a Student-t predictive.

    Values are standardised with the fitted median and robust scale; the model is
    Normal-Gamma with constant hazard ``1 / hazard_lambda``; run lengths beyond ``max_run`` are merged into the
    longest one. The raw score of a point is the posterior probability that *no* change happened in the last
    ``recent`` points, ``p = P(r_t >= recent | x_1..t)``, computed directly (not as ``1 - P(r < recent)``) so
    tiny probabilities keep their precision. It is already a tail probability; with at least 200 points of
    history the empirical tail of ``-log p`` in the history (:class:`TailCalibrator`) is also applied and the
    larger probability wins. ``expected`` is the posterior predictive mean; ``lower``/``upper`` are
    ``expected ∓ threshold.z`` predictive scales.

    Examples
    --------
    >>> import polars as pl
    >>> from datetime import datetime, timedelta
    >>> y = np.r_[np.random.default_rng(0).normal(0, 1, 300), np.random.default_rng(1).normal(8, 1, 30)]
    >>> f = pl.DataFrame({"series_id": 1, "ts": [datetime(2024, 1, 1) + timedelta(minutes=i) for i in range(330)],
    ...                   "value": y})
    >>> out = BocpdDetector().fit(f[:300]).score(f[300:])
    >>> bool(out["is_anomaly"][:5].any()) and int(out["is_anomaly"].sum()) <= 20
    True
    """

    name: ClassVar[str] = "bocpd"
    causal: ClassVar[bool] = True

    def __init__(
        self,
        *,
        hazard_lambda: float = 250.0,
        max_run: int = 500,
        recent: int = 20,
        warmup: int = 100,
        threshold: Threshold | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(threshold=threshold, seed=seed)
        self.hazard_lambda = hazard_lambda
        self.max_run = max_run
        self.recent = recent
        self.warmup = warmup

    # -- family core ----------------------------------------------------------------------------------
    def _fit_series(self, t: np.ndarray, y: np.ndarray) -> BocpdState:
        if y.size < self.warmup:
            return BocpdState(buffer=np.array(y, dtype=np.float64))
        return self._fit_values(y)

    def _score_series(self, t: np.ndarray, y: np.ndarray, state: BocpdState) -> SeriesScores:
        _, score, expected, spread, state = self._run(y, state)
        half = self.threshold.z * spread
        return SeriesScores(score=score, expected=expected, lower=expected - half, upper=expected + half)

    def _update_series(self, t: np.ndarray, y: np.ndarray, state: BocpdState) -> BocpdState:
        return self._run(y, state)[4]

    # -- internals ------------------------------------------------------------------------------------
    def _fit_values(self, y: np.ndarray) -> BocpdState:
        level, scale = robust_level_scale(y)
        r = self.max_run
        logp = np.full(r, -np.inf)
        logp[0] = 0.0
        beta = np.full(r, _DEAD_BETA)
        beta[0] = _BETA0
        state = BocpdState(
            level=level,
            scale=scale,
            logp=logp,
            mu=np.full(r, _MU0),
            beta=beta,
            half_log_beta=0.5 * np.log(beta),
            ready=True,
        )
        raw, _, _, _, state = self._run(y, state)
        if y.size >= _MIN_CALIBRATION:
            state = replace(state, calibrator=TailCalibrator.fit(raw))
        return state

    def _constants(self) -> dict[str, np.ndarray]:
        """Per-run-length constants of the Student-t predictive, laid out for ring views (see ``_run``)."""
        r = np.arange(self.max_run, dtype=np.float64)
        kappa = _KAPPA0 + r
        alpha = _ALPHA0 + r / 2.0
        consts = {
            "c": gammaln(alpha + 0.5) - gammaln(alpha) - 0.5 * np.log(2.0 * np.pi * (kappa + 1.0) / kappa),
            "c1": kappa / (2.0 * (kappa + 1.0)),
            "a5": alpha + 0.5,
            "ik1": 1.0 / (kappa + 1.0),
            "s2": (kappa + 1.0) / (alpha * kappa),
        }
        # doubled[j] = const[(-j) mod R]: doubled[a : a + R] with a = (R - head) mod R gives, at slot i, the
        # constant of run length (head - i) mod R — a view, no copy per step
        j = np.arange(2 * self.max_run) % self.max_run
        idx = (-j) % self.max_run
        return {k: v[idx] for k, v in consts.items()}

    def _run(
        self, y: np.ndarray, state: BocpdState
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, BocpdState]:
        """Scan ``y``: raw score (-log p), calibrated score, expected value and predictive scale per point."""
        y = np.asarray(y, dtype=np.float64)
        n = y.size
        raw = np.zeros(n)
        score = np.zeros(n)
        expected = np.full(n, np.nan)
        spread = np.full(n, np.nan)
        start = 0
        if not state.ready:
            take = y[: max(self.warmup - state.buffer.size, 0)]
            buffer = np.r_[state.buffer, take]
            start = take.size
            if buffer.size < self.warmup:
                return raw, score, expected, spread, replace(state, buffer=buffer)
            state = self._fit_values(buffer)
        if start == n:
            return raw, score, expected, spread, state
        R, w = self.max_run, self.recent
        hazard = 1.0 / self.hazard_lambda
        log_h, log_1mh = np.log(hazard), np.log1p(-hazard)
        k = self._constants()
        cc, c1c, a5c, ik1c, s2c = k["c"], k["c1"], k["a5"], k["ik1"], k["s2"]
        logp, mu = state.logp.copy(), state.mu.copy()
        beta, hlb = state.beta.copy(), state.half_log_beta.copy()
        head, last = state.head, state.last_raw
        x_all = (y - state.level) / state.scale
        half_log_beta0 = 0.5 * np.log(_BETA0)
        tail_len = R - w + 1  # pre-advance run lengths w-1 .. R-1 become >= w after the step
        for i in range(start, n):
            x = x_all[i]
            if not np.isfinite(x):
                raw[i] = last
                continue
            a = (R - head) % R
            c, c1, a5, ik1, s2 = (
                cc[a : a + R],
                c1c[a : a + R],
                a5c[a : a + R],
                ik1c[a : a + R],
                s2c[a : a + R],
            )
            prob = np.exp(logp)
            m1 = prob @ mu
            expected[i] = m1
            spread[i] = prob @ (beta * s2 + mu * mu) - m1 * m1
            d = x - mu
            q = c1 * d * d / beta
            lg = np.log1p(q)
            lj = logp + c - hlb - a5 * lg
            top = lj.max()
            e = np.exp(lj - top)
            total = e.sum()
            lo = (head + 1) % R
            hi = lo + tail_len
            tail = e[lo:hi].sum() if hi <= R else e[lo:].sum() + e[: hi - R].sum()
            p_tail = (1.0 - hazard) * tail / total
            last = raw[i] = -np.log(p_tail) if p_tail > 0 else np.inf
            logp = lj + (log_1mh - top - np.log(total))
            # advance: every run grows by one; the slot of run length R-1 becomes the new run length 0 and its
            # mass is merged into the run that becomes R-1 (truncation keeps all the probability)
            new = lo
            keep = (head + 2) % R
            logp[keep] = np.logaddexp(logp[keep], logp[new])
            logp[new] = log_h
            mu += d * ik1
            beta *= 1.0 + q
            hlb += 0.5 * lg
            mu[new], beta[new], hlb[new] = _MU0, _BETA0, half_log_beta0
            head = new
        lvl, sc = state.level, state.scale
        p = np.exp(-raw[start:])
        if state.calibrator is not None:
            p = np.maximum(p, state.calibrator.tail(raw[start:]))
        score[start:] = np.maximum(z_of_tail(np.minimum(p, 0.5)), 0.0)
        # the last point's raw value is what a NaN after this call repeats
        out = replace(state, logp=logp, mu=mu, beta=beta, half_log_beta=hlb, head=head, last_raw=last)
        return raw, score, lvl + sc * expected, sc * np.sqrt(np.maximum(spread, 0.0)), out
