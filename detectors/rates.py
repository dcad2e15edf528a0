"""Error-rate and success-ratio detection on counts: is this interval's count surprising given its volume?

A ratio is only as informative as its denominator: 1 error in 2 requests is 50 % but says almost nothing, 300
errors in 10,000 requests against a 0.5 % baseline is certain. So a point is scored by the binomial upper tail
of its count, ``P(X >= x | n, p0)`` (``scipy.special.betainc``: ``P(X >= x) = I_p0(x, n - x + 1)``), not by its
ratio, and the tail probability becomes a calibrated z (:func:`detectors.calibration.z_of_tail`).

* Baseline ``p0`` per series: the fitted events shrunk towards the pooled rate of all fitted series with a
  Beta prior worth ``prior_strength`` events (each pseudo-count at least Jeffreys' half), so a tenant with
  little history borrows the fleet's rate and a rate of 0 is never certain.
* Overdispersion: real error counts vary more than binomially (bursts, retries). The dispersion ``phi`` (mean
  squared Pearson residual of the history, clipped per point so incidents do not inflate it, at least 1)
  scales counts to their effective size (quasi-binomial): ``x / phi`` out of ``n / phi``.
* No ``total`` (column absent or null): the count alone against its per-interval rate, Poisson
  (``P(X >= x | lam0) = gammainc(x, lam0)``) with the same dispersion treatment; also used when ``n`` is
  so large that the binomial is Poisson anyway.
* ``bad="low"``: ``value`` counts successes that should not drop (success ratio); failures are
  ``total - value`` (or the Poisson lower tail of ``value`` without a total).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np
import polars as pl
from scipy.special import betainc, gammainc, gammaincc

from detectors.base import Detector, DetectorError, SeriesScores, Threshold, check_points
from detectors.calibration import z_of_tail
from ingest.schema import SCORES, TS

#: squared Pearson residuals are clipped here when estimating dispersion (one incident must not make it 50)
_R2_CLIP = 100.0
#: intervals needed before the dispersion estimate is trusted
_MIN_DISPERSION = 20
#: above this many events per interval the binomial tail is computed as Poisson
_POISSON_N = 1e8
#: intervals of history a series scored causally from nothing needs before its points get a score
_MIN_HISTORY = 10


@dataclass(frozen=True)
class RateState:
    """Sufficient statistics of one series' baseline, in failure orientation.

    ``bad``/``total``: failures and events over intervals that have a total; ``count``/``intervals``: the counted
    events (``value``) over all intervals, for the Poisson mode; ``r2_*``/``n_*``: sums and counts of clipped
    squared Pearson residuals (binomial ``b``, Poisson ``p``); ``prior_a``/``prior_b``: Beta prior pseudo-counts.
    """

    bad: float
    total: float
    count: float
    intervals: int
    r2_b: float
    n_b: int
    r2_p: float
    n_p: int
    prior_a: float
    prior_b: float

    @property
    def rate(self) -> float:
        """Posterior mean failure rate ``p0``."""
        return (self.bad + self.prior_a) / (self.total + self.prior_a + self.prior_b)

    @property
    def per_interval(self) -> float:
        """Poisson rate of ``value`` per interval."""
        return (self.count + 0.5) / max(self.intervals, 1)

    @property
    def dispersion(self) -> float:
        """Quasi-binomial dispersion (>= 1)."""
        return max(1.0, self.r2_b / self.n_b) if self.n_b >= _MIN_DISPERSION else 1.0

    @property
    def dispersion_poisson(self) -> float:
        """Quasi-Poisson dispersion (>= 1)."""
        return max(1.0, self.r2_p / self.n_p) if self.n_p >= _MIN_DISPERSION else 1.0


class RatioDetector(Detector):
    """Binomial (or Poisson) tail of each interval's bad-event count against the series' baseline rate.

    Input: ``series_id, ts, value, total`` — ``value`` bad events (``bad="high"``; errors, timeouts) or good
    events (``bad="low"``; successes, cache hits) in the interval, ``total`` all events in it (optional; see the
    module docstring for what happens without it). ``expected`` is the baseline count for the interval's
    volume and ``lower``/``upper`` its ``± threshold.z`` band (normal approximation, clipped to ``[0, total]``).

    ``update`` adds the points that scored below the threshold to the baseline (incidents do not become the
    norm). A series that was never fitted is scored causally: each point against the counts before it.

    Examples
    --------
    >>> import polars as pl
    >>> from datetime import datetime
    >>> hist = pl.DataFrame({"series_id": [1] * 100, "ts": [datetime(2024, 1, 1, 0, i % 60, i // 60)
    ...                      for i in range(100)], "value": [5.0] * 100, "total": [1000.0] * 100})
    >>> now = pl.DataFrame({"series_id": [1, 1], "ts": [datetime(2024, 1, 2), datetime(2024, 1, 2, 0, 1)],
    ...                     "value": [1.0, 300.0], "total": [2.0, 10_000.0]})
    >>> RatioDetector().fit(hist).score(now)["is_anomaly"].to_list()
    [False, True]
    """

    name: ClassVar[str] = "ratio"
    causal: ClassVar[bool] = True
    input_kind: ClassVar[str] = "ratio"

    def __init__(
        self,
        *,
        bad: str = "high",
        prior_strength: float = 100.0,
        prior_rate: float | None = None,
        threshold: Threshold | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(threshold=threshold, seed=seed)
        self.bad = bad
        self.prior_strength = prior_strength
        self.prior_rate = prior_rate

    # -- the contract ------------------------------------------------------------------------------------
    def fit(self, frame: pl.DataFrame) -> Self:
        """Learn each series' baseline rate and dispersion from ``frame`` (with a ``total`` column if any)."""
        f = self._counts(frame)
        self.states_: dict[int, RateState] = self._learn(f, self._prior(f), {})
        return self

    def update(self, frame: pl.DataFrame) -> Self:
        """Add the points of ``frame`` that are not anomalous to their series' baselines."""
        f = self._counts(frame)
        states = dict(getattr(self, "states_", {}))
        if f.height:
            z = self._score_arrays(f, states)[0]
            keep = f.filter(pl.Series(z < self.threshold.z))
            known = pl.Series(list(states), dtype=pl.Int64)
            new = f.filter(~pl.col("series_id").is_in(known.implode()))
            states = self._learn(keep.filter(pl.col("series_id").is_in(known.implode())), None, states)
            states = self._learn(new, self._pooled_prior(states) or self._prior(f), states)
        self.states_ = states
        return self

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Score every interval of ``frame`` against its series' fitted baseline."""
        f = self._counts(frame)
        return self._output(f, *self._score_arrays(f, getattr(self, "states_", {})))

    def score_online(self, frame: pl.DataFrame, *, warmup: int = 200, refit_every: int = 500) -> pl.DataFrame:
        """Score causally from an empty history: each interval against the counts of the intervals before it."""
        f = self._counts(frame)
        return self._output(f, *self._score_arrays(f, {}))

    # -- internals ---------------------------------------------------------------------------------------
    def _counts(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Validated ``series_id, ts, value, total, bad`` sorted by series and time; ``bad`` = failures."""
        if self.bad not in ("high", "low"):
            raise DetectorError(f"RatioDetector(bad=...) must be 'high' or 'low', got {self.bad!r}")
        check_points(frame)
        if "total" in frame.columns:
            if not frame.schema["total"].is_numeric() and frame.schema["total"] != pl.Null:
                raise DetectorError(f"column total must be numeric, got {frame.schema['total']}")
            total = pl.col("total").cast(pl.Float64)
        else:
            total = pl.lit(None, dtype=pl.Float64)
        f = frame.select(
            pl.col("series_id").cast(pl.Int64),
            pl.col("ts").cast(TS),
            pl.col("value").cast(pl.Float64),
            total.alias("total"),
        ).sort("series_id", "ts", maintain_order=True)
        v = pl.col("value").clip(lower_bound=0.0)
        n = pl.col("total").fill_nan(None)
        bad = (n - v).clip(lower_bound=0.0) if self.bad == "low" else pl.min_horizontal(v, n)
        return f.with_columns(total=n, bad=pl.when(n.is_not_null()).then(bad).otherwise(None))

    def _beta(self, rate: float | None) -> tuple[float, float]:
        """Beta prior pseudo-counts: ``prior_strength`` events at ``rate``, never below Jeffreys' half count."""
        rate = self.prior_rate if self.prior_rate is not None else rate
        if rate is None:
            return 0.5, 0.5
        m = self.prior_strength
        return max(rate * m, 0.5), max((1.0 - rate) * m, 0.5)

    def _prior(self, f: pl.DataFrame) -> tuple[float, float]:
        """The prior at the pooled failure rate of ``f`` (``prior_rate`` when given)."""
        total = float(f["total"].sum()) if f.height else 0.0
        return self._beta(float(f["bad"].sum()) / total if total > 0 else None)

    def _pooled_prior(self, states: dict[int, RateState]) -> tuple[float, float] | None:
        """The prior at the pooled rate of fitted series (``None`` when nothing with a total is fitted)."""
        total = sum(s.total for s in states.values())
        if self.prior_rate is None and total <= 0:
            return None
        return self._beta(sum(s.bad for s in states.values()) / total if total > 0 else None)

    def _learn(
        self, f: pl.DataFrame, prior: tuple[float, float] | None, states: dict[int, RateState]
    ) -> dict[int, RateState]:
        """Add ``f``'s intervals to ``states`` (new series get ``prior``); dispersion uses the updated rate."""
        out = dict(states)
        if f.height == 0:
            return out
        sums = f.group_by("series_id").agg(
            pl.col("bad").sum().alias("bad"),
            pl.col("total").filter(pl.col("bad").is_not_null()).sum().alias("total"),
            pl.col("value").clip(lower_bound=0.0).sum().alias("count"),
            pl.len().alias("intervals"),
        )
        merged: dict[int, RateState] = {}
        a0, b0 = prior if prior is not None else (0.5, 0.5)
        for sid, bad, total, count, intervals in sums.iter_rows():
            old = out.get(sid)
            if old is None:
                old = RateState(0.0, 0.0, 0.0, 0, 0.0, 0, 0.0, 0, a0, b0)
            merged[sid] = RateState(
                old.bad + bad, old.total + total, old.count + count, old.intervals + intervals,
                old.r2_b, old.n_b, old.r2_p, old.n_p, old.prior_a, old.prior_b,
            )  # fmt: skip
        base = self._state_frame(merged)
        g = f.join(base, on="series_id", how="left")
        n, x, p0, lam = pl.col("total"), pl.col("bad"), pl.col("p0"), pl.col("lam0")
        r2_b = ((x - n * p0) ** 2 / (n * p0 * (1.0 - p0))).clip(upper_bound=_R2_CLIP)
        v = pl.col("value").clip(lower_bound=0.0)
        r2_p = ((v - lam) ** 2 / lam).clip(upper_bound=_R2_CLIP)
        disp = g.group_by("series_id").agg(
            r2_b.filter(n > 0).sum().alias("r2_b"),
            r2_b.filter(n > 0).count().alias("n_b"),
            r2_p.sum().alias("r2_p"),
            r2_p.count().alias("n_p"),
        )
        for sid, rb, nb, rp, np_ in disp.iter_rows():
            s = merged[sid]
            out[sid] = RateState(
                s.bad, s.total, s.count, s.intervals, s.r2_b + (rb or 0.0), s.n_b + nb,
                s.r2_p + (rp or 0.0), s.n_p + np_, s.prior_a, s.prior_b,
            )  # fmt: skip
        return out

    @staticmethod
    def _state_frame(states: dict[int, RateState]) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "series_id": list(states),
                "p0": [s.rate for s in states.values()],
                "phi_b": [s.dispersion for s in states.values()],
                "lam0": [s.per_interval for s in states.values()],
                "phi_p": [s.dispersion_poisson for s in states.values()],
            },
            schema={"series_id": pl.Int64, "p0": pl.Float64, "phi_b": pl.Float64, "lam0": pl.Float64,
                    "phi_p": pl.Float64},
        )  # fmt: skip

    def _baseline(self, f: pl.DataFrame, states: dict[int, RateState]) -> pl.DataFrame:
        """``p0, phi_b, lam0, phi_p`` per row: fitted for known series, causal (earlier rows) for the others."""
        known = self._state_frame(states)
        g = f.join(known, on="series_id", how="left", maintain_order="left")
        # causal baseline from the rows before each row of its series (Jeffreys prior, no pooled prior)
        n, x = pl.col("total"), pl.col("bad")
        v = pl.col("value").clip(lower_bound=0.0)
        prev = {
            "c_bad": x.fill_null(0.0).cum_sum(),
            "c_tot": pl.when(x.is_not_null()).then(n).otherwise(0.0).cum_sum(),
            "c_val": v.cum_sum(),
            "c_int": pl.int_range(1, pl.len() + 1, dtype=pl.Int64),
        }
        g = g.with_columns([e.shift(1, fill_value=0).over("series_id").alias(k) for k, e in prev.items()])
        p_on = (pl.col("c_bad") + 0.5) / (pl.col("c_tot") + 1.0)
        lam_on = (pl.col("c_val") + 0.5) / pl.col("c_int").clip(lower_bound=1)
        r2_b = ((x - n * p_on) ** 2 / (n * p_on * (1.0 - p_on))).clip(upper_bound=_R2_CLIP)
        r2_p = ((v - lam_on) ** 2 / lam_on).clip(upper_bound=_R2_CLIP)
        g = g.with_columns(
            p_on.alias("p_on"),
            lam_on.alias("lam_on"),
            pl.when(n > 0).then(r2_b).otherwise(None).alias("_r2b"),
            r2_p.alias("_r2p"),
        )
        disp = []
        for col, out in (("_r2b", "phi_b_on"), ("_r2p", "phi_p_on")):
            s = pl.col(col).fill_null(0.0).cum_sum().shift(1, fill_value=0.0).over("series_id")
            c = pl.col(col).is_not_null().cast(pl.Int64).cum_sum().shift(1, fill_value=0).over("series_id")
            disp.append(
                pl.when(c >= _MIN_DISPERSION).then((s / c).clip(lower_bound=1.0)).otherwise(1.0).alias(out)
            )
        g = g.with_columns(disp)
        fitted = pl.col("p0").is_not_null()
        return g.select(
            (fitted | (pl.col("c_int") >= _MIN_HISTORY)).alias("ready"),
            pl.when(fitted).then(pl.col("p0")).otherwise(pl.col("p_on")).alias("p0"),
            pl.when(fitted).then(pl.col("phi_b")).otherwise(pl.col("phi_b_on")).alias("phi_b"),
            pl.when(fitted).then(pl.col("lam0")).otherwise(pl.col("lam_on")).alias("lam0"),
            pl.when(fitted).then(pl.col("phi_p")).otherwise(pl.col("phi_p_on")).alias("phi_p"),
        )

    def _score_arrays(
        self, f: pl.DataFrame, states: dict[int, RateState]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Calibrated z, expected value and band of every row of a :meth:`_counts` frame."""
        b = self._baseline(f, states)
        p0 = np.clip(b["p0"].to_numpy(), 1e-12, 1.0 - 1e-12)
        phi_b, lam0, phi_p = b["phi_b"].to_numpy(), b["lam0"].to_numpy(), b["phi_p"].to_numpy()
        ready = b["ready"].to_numpy()
        n = f["total"].to_numpy().astype(np.float64)
        x = f["bad"].to_numpy().astype(np.float64)
        v = np.clip(np.nan_to_num(f["value"].to_numpy(), nan=0.0), 0.0, None)
        tail = np.ones(f.height)
        zq = self.threshold.z
        with np.errstate(invalid="ignore", divide="ignore"):
            binom = ready & np.isfinite(n) & (n > 0) & np.isfinite(x)
            pois = ready & ~np.isfinite(n)
            # binomial, effective counts x/phi out of n/phi (quasi-binomial); Poisson when n is huge
            xe, ne = x / phi_b, n / phi_b
            big = binom & (ne > _POISSON_N) & (xe > 0)
            small = binom & ~big & (xe > 0)
            tail[small] = betainc(xe[small], ne[small] - xe[small] + 1.0, p0[small])
            tail[big] = gammainc(xe[big], ne[big] * p0[big])
            # no total: the count against its per-interval Poisson rate
            ve, le = v / phi_p, lam0 / phi_p
            if self.bad == "high":
                up = pois & (ve > 0)
                tail[up] = gammainc(ve[up], le[up])
            else:
                tail[pois] = gammaincc(ve[pois] + 1.0, le[pois])
            z = np.maximum(z_of_tail(np.minimum(tail, 0.5)), 0.0)
            # expected value and band in the units of ``value``
            mean_b = n * p0 if self.bad == "high" else n * (1.0 - p0)
            sd_b = np.sqrt(phi_b * n * p0 * (1.0 - p0))
            expected = np.where(pois, lam0, mean_b)
            sd = np.where(pois, np.sqrt(phi_p * lam0), sd_b)
            hi = np.where(pois, np.inf, n)
            lower = np.clip(expected - zq * sd, 0.0, hi)
            upper = np.clip(expected + zq * sd, 0.0, hi)
        return z, expected, lower, upper

    def _output(
        self, f: pl.DataFrame, z: np.ndarray, expected: np.ndarray, lower: np.ndarray, upper: np.ndarray
    ) -> pl.DataFrame:
        if f.height == 0:
            return pl.DataFrame(schema=SCORES)
        t = f["ts"].dt.epoch("us").to_numpy()
        out = self._frame(0, t, SeriesScores(score=z, expected=expected, lower=lower, upper=upper))
        return out.with_columns(series_id=f["series_id"])
