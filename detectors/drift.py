"""Distribution drift between a reference sample and a current one (prediction scores, token lengths, latencies).

Three statistics, over samples:

* :func:`psi` — population stability index over quantile bins of the reference (``sum (c - r) ln(c / r)``);
  the industry conventions read ``< 0.1`` as stable, ``0.1–0.25`` as a moderate shift, ``>= 0.25`` as major.
* :func:`ks_statistic` — two-sample Kolmogorov–Smirnov ``D`` and its p-value.
* :func:`js_divergence` — Jensen–Shannon divergence over the same bins, in bits (``0..1``).

**The rule.** On large samples every p-value is tiny: a 1 % shift on a million points is "significant" and
meaningless. So drift is never "p < alpha". Each statistic is tested against a *minimum effect* instead
(a minimum-effect test; Murphy & Myors 1999): the null is "the shift is at most ``psi_min`` / ``ks_min`` /
``js_min``", not "no shift at all".

* PSI: ``n_eff * PSI`` is approximately a (non-central) chi-square with ``bins - 1`` degrees of freedom
  (PSI is the symmetrised KL divergence, ``~ Pearson chi2 / n`` for small shifts); at the null boundary the
  non-centrality is ``n_eff * psi_min``.
* JS: ``8 n_eff JS_nats`` is approximately the same chi-square (``JS ~ chi2-distance / 8``), non-centrality
  ``8 n_eff js_min``.
* KS: by the Dvoretzky–Kiefer–Wolfowitz inequality (Massart 1990), ``P(D >= d | D_true <= ks_min) <=
  2 exp(-2 n_eff (d - ks_min)^2)``.

``n_eff = n_ref n_cur / (n_ref + n_cur)``. The drift score is the *smallest* of the three z values
(an intersection–union test: every statistic must show a significant shift larger than its minimum), so it is a
calibrated z (:func:`detectors.calibration.z_of_tail`) and ``score >= threshold`` means "significant *and*
non-negligible". Defaults: ``psi_min = 0.1`` (the "moderate" convention), ``ks_min = 0.1``, ``js_min = 0.02``
bits — about the same shift for a Gaussian (a location shift of ``0.3`` sd).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import polars as pl
from scipy.special import xlogy
from scipy.stats import ks_2samp, ncx2

from detectors.base import Detector, SeriesScores, Threshold
from detectors.calibration import z_of_tail

PSI_MODERATE, PSI_MAJOR = 0.1, 0.25
_LN2 = np.log(2.0)
#: points scored per vectorised block of the rolling detector (bounds memory at ~block * bins floats)
_BLOCK = 1 << 17


def quantile_edges(ref: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner bin edges from the reference: its quantiles, or one bin per value when it has few distinct values.

    A quantised reference (at most ``bins`` distinct values) gets one bin per value plus a bin below the
    smallest and one above the largest (empty in the reference), so ties do not collapse bins and a value never
    seen before lands in a bin of its own. Bins are ``(edge[i-1], edge[i]]``.

    Examples
    --------
    >>> quantile_edges(np.arange(100.0), 4).tolist()
    [24.75, 49.5, 74.25]
    >>> quantile_edges(np.array([1.0, 1, 2, 2, 3]), 10)[1:].tolist()
    [1.5, 2.5, 3.0]
    """
    x = np.asarray(ref, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.zeros(0)
    distinct = np.unique(x)
    if distinct.size <= bins:
        mids = (distinct[:-1] + distinct[1:]) / 2.0
        return np.r_[np.nextafter(distinct[0], -np.inf), mids, distinct[-1]]
    return np.unique(np.quantile(x, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def _counts(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return np.bincount(np.searchsorted(edges, x, side="left"), minlength=edges.size + 1).astype(np.float64)


def _psi_from_counts(cur: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """PSI along the last axis; half a count is added to every bin so empty bins stay finite (Jeffreys)."""
    b = cur.shape[-1]
    c = (cur + 0.5) / (cur.sum(axis=-1, keepdims=True) + 0.5 * b)
    r = (ref + 0.5) / (ref.sum(axis=-1, keepdims=True) + 0.5 * b)
    return ((c - r) * np.log(c / r)).sum(axis=-1)


def _js_from_counts(cur: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence in nats along the last axis."""
    c = cur / np.maximum(cur.sum(axis=-1, keepdims=True), 1.0)
    r = ref / np.maximum(ref.sum(axis=-1, keepdims=True), 1.0)
    m = (c + r) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_c = xlogy(c, c) - xlogy(c, m)
        kl_r = xlogy(r, r) - xlogy(r, m)
    return np.maximum(0.5 * (kl_c + kl_r).sum(axis=-1), 0.0)


def _ks_binned(cur: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """KS distance between binned CDFs (a lower bound of the exact ``D``; exact at the bin edges)."""
    c = np.cumsum(cur, axis=-1) / np.maximum(cur.sum(axis=-1, keepdims=True), 1.0)
    r = np.cumsum(ref, axis=-1) / np.maximum(ref.sum(axis=-1, keepdims=True), 1.0)
    return np.abs(c - r).max(axis=-1)


def psi(ref: np.ndarray, cur: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``cur`` against ``ref`` over ``bins`` quantile bins of ``ref``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> round(psi(rng.normal(0, 1, 10_000), rng.normal(0, 1, 10_000)), 3) < 0.01
    True
    >>> psi(rng.normal(0, 1, 10_000), rng.normal(1, 1, 10_000)) > PSI_MAJOR
    True
    """
    edges = quantile_edges(ref, bins)
    return float(_psi_from_counts(_counts(cur, edges), _counts(ref, edges)))


def ks_statistic(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov–Smirnov ``(D, p_value)`` (exact ``D``; p-value exact for small samples).

    The p-value alone is not a drift test on large samples; see the module docstring.

    Examples
    --------
    >>> d, p = ks_statistic(np.arange(100.0), np.arange(50.0, 150.0))
    >>> round(d, 2), p < 1e-9
    (0.5, True)
    """
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(cur, dtype=np.float64)
    res = ks_2samp(a[np.isfinite(a)], b[np.isfinite(b)])
    return float(res.statistic), float(res.pvalue)


def js_divergence(ref: np.ndarray, cur: np.ndarray, bins: int = 10) -> float:
    """Jensen–Shannon divergence (bits, ``0..1``) of ``cur`` against ``ref`` over quantile bins of ``ref``.

    Examples
    --------
    >>> js_divergence(np.arange(100.0), np.arange(100.0))
    0.0
    >>> round(js_divergence(np.zeros(50), np.ones(50)), 6)
    1.0
    """
    edges = quantile_edges(ref, bins)
    return float(_js_from_counts(_counts(cur, edges), _counts(ref, edges)) / _LN2)


@dataclass(frozen=True)
class DriftRule:
    """Minimum effects of the drift test (see the module docstring); ``js_min`` is in bits."""

    psi_min: float = PSI_MODERATE
    ks_min: float = 0.1
    js_min: float = 0.02

    def tails(
        self, psi_: np.ndarray, ks: np.ndarray, js_nats: np.ndarray, n_eff: np.ndarray, dof: int
    ) -> np.ndarray:
        """Tail probability of "no drift larger than the minimum effects" for each row (the IUT maximum)."""
        dof = max(dof, 1)
        p_psi = ncx2.sf(n_eff * psi_, dof, n_eff * self.psi_min)
        p_js = ncx2.sf(8.0 * n_eff * js_nats, dof, 8.0 * n_eff * self.js_min * _LN2)
        excess = np.maximum(ks - self.ks_min, 0.0)
        p_ks = np.minimum(1.0, 2.0 * np.exp(-2.0 * n_eff * excess * excess))
        return np.maximum(np.maximum(p_psi, p_js), p_ks)


def drift_report(
    ref: np.ndarray,
    cur: np.ndarray,
    *,
    bins: int = 10,
    rule: DriftRule | None = None,
    threshold: Threshold | None = None,
) -> dict[str, Any]:
    """The three drift statistics of ``cur`` against ``ref`` and the verdict of the minimum-effect rule.

    Returns ``psi``, ``ks`` (exact D), ``ks_pvalue`` (raw, for reference only), ``js`` (bits), ``n_ref``,
    ``n_cur``, ``score`` (calibrated z of the rule), ``drift`` (``score >= threshold.z``) and ``severity``
    (``"none"``, ``"moderate"`` or ``"major"`` by the PSI conventions, ``"none"`` unless ``drift``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> r = drift_report(rng.normal(0, 1, 5000), rng.normal(1, 1, 5000))
    >>> r["drift"], r["severity"]
    (True, 'major')
    """
    rule = rule or DriftRule()
    threshold = threshold or Threshold()
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(cur, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    edges = quantile_edges(a, bins)
    rc, cc = _counts(a, edges), _counts(b, edges)
    psi_ = float(_psi_from_counts(cc, rc))
    js_nats = float(_js_from_counts(cc, rc))
    d, p = ks_statistic(a, b) if a.size and b.size else (0.0, 1.0)
    n_eff = a.size * b.size / (a.size + b.size) if a.size and b.size else 0.0
    tail = rule.tails(np.array([psi_]), np.array([d]), np.array([js_nats]), np.array([n_eff]), edges.size)
    score = float(np.maximum(z_of_tail(np.minimum(tail, 0.5)), 0.0)[0])
    drift = score >= threshold.z
    severity = "none" if not drift else "major" if psi_ >= PSI_MAJOR else "moderate"
    return {
        "psi": psi_,
        "ks": d,
        "ks_pvalue": p,
        "js": float(js_nats / _LN2),
        "n_ref": int(a.size),
        "n_cur": int(b.size),
        "score": score,
        "drift": bool(drift),
        "severity": severity,
    }


@dataclass
class DriftState:
    """Reference bins and counts of one series, and the last ``window - 1`` fitted values (the first windows)."""

    edges: np.ndarray
    ref_counts: np.ndarray
    t_last: int
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0))


class DriftDetector(Detector):
    """Rolling distribution drift against the fitted history: the drift score of the window ending at each point.

    The reference is the fitted history, binned at its quantiles (:func:`quantile_edges`); the current sample
    is the last ``window`` points. Each point's score is the calibrated minimum-effect drift z of that window
    (module docstring, :class:`DriftRule`); windows with fewer than ``min_window`` points score 0. PSI, KS and
    JS are computed from bin counts (KS at the bin edges), vectorised over all windows. When the scored frame
    continues the fitted history, its first windows include the last fitted points.

    The window sets the power: to be significant at ``z = 5`` the KS distance of a window of ``w`` points must
    exceed ``ks_min + sqrt(15.7 / 2w)`` (0.23 at ``w = 500``), so small windows only see large shifts, and a
    shift is flagged once most of the window is past it.

    Examples
    --------
    >>> import polars as pl
    >>> from datetime import datetime, timedelta
    >>> rng = np.random.default_rng(0)
    >>> y = np.r_[rng.normal(0, 1, 2000), rng.normal(0, 1, 500), rng.normal(1.5, 1, 500)]
    >>> ts = [datetime(2024, 1, 1) + timedelta(minutes=i) for i in range(3000)]
    >>> f = pl.DataFrame({"series_id": 1, "ts": ts, "value": y})
    >>> out = DriftDetector(window=200).fit(f[:2000]).score(f[2000:])
    >>> bool(out["is_anomaly"][:500].any()), bool(out["is_anomaly"][-300:].all())
    (False, True)
    """

    name: ClassVar[str] = "drift"
    causal: ClassVar[bool] = False

    def __init__(
        self,
        *,
        window: int = 500,
        bins: int = 10,
        min_window: int = 30,
        rule: DriftRule | None = None,
        threshold: Threshold | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(threshold=threshold, seed=seed)
        self.window = window
        self.bins = bins
        self.min_window = min_window
        self.rule = rule

    def _fit_series(self, t: np.ndarray, y: np.ndarray) -> DriftState:
        edges = quantile_edges(y, self.bins)
        keep = max(self.window - 1, 0)
        return DriftState(
            edges=edges,
            ref_counts=_counts(y, edges),
            t_last=int(t[-1]) if t.size else np.iinfo(np.int64).min,
            tail=np.array(y[y.size - keep :] if keep else y[:0], dtype=np.float64),
        )

    def _update_series(self, t: np.ndarray, y: np.ndarray, state: DriftState) -> DriftState:
        if t.size == 0:
            return state
        keep = max(self.window - 1, 0)
        tail = np.r_[state.tail, y][-keep:] if keep else state.tail[:0]
        return DriftState(state.edges, state.ref_counts, int(t[-1]), tail)

    def _score_series(self, t: np.ndarray, y: np.ndarray, state: DriftState) -> SeriesScores:
        n = y.size
        score = np.zeros(n)
        if n == 0 or state.ref_counts.sum() == 0:
            return SeriesScores(score=score)
        prefix = state.tail if t[0] > state.t_last else state.tail[:0]
        x = np.r_[prefix, y]
        off = prefix.size
        b = state.edges.size + 1
        fin = np.isfinite(x)
        idx = np.where(fin, np.searchsorted(state.edges, np.where(fin, x, 0.0), side="left"), b)
        # cumulative one-hot counts per bin (a column per bin plus one for missing values), one pass per bin
        cum = np.zeros((b + 1, x.size + 1), dtype=np.int32)
        for j in range(b + 1):
            np.cumsum(idx == j, out=cum[j, 1:])
        rule = self.rule or DriftRule()
        n_ref = state.ref_counts.sum()
        for a in range(0, n, _BLOCK):
            e = min(a + _BLOCK, n)
            hi = np.arange(a, e) + off + 1
            lo = np.maximum(hi - self.window, 0)
            win = (cum[:b, hi] - cum[:b, lo]).T.astype(np.float64)
            n_cur = win.sum(axis=1)
            ok = n_cur >= self.min_window
            if not ok.any():
                continue
            win, n_cur = win[ok], n_cur[ok]
            ref = state.ref_counts[None, :]
            n_eff = n_cur * n_ref / (n_cur + n_ref)
            tail = rule.tails(
                _psi_from_counts(win, ref), _ks_binned(win, ref), _js_from_counts(win, ref), n_eff, b - 1
            )
            score[a:e][ok] = np.maximum(z_of_tail(np.minimum(tail, 0.5)), 0.0)
        return SeriesScores(score=score)


def drift_frame(ref: np.ndarray, cur: np.ndarray, *, bins: int = 10) -> pl.DataFrame:
    """Per-bin proportions of ``ref`` and ``cur`` (for plotting a drift report): ``bin, lower, upper, ref, cur``.

    Examples
    --------
    >>> drift_frame(np.arange(10.0), np.arange(10.0), bins=2)["ref"].to_list()
    [0.5, 0.5]
    """
    edges = quantile_edges(ref, bins)
    rc, cc = _counts(ref, edges), _counts(cur, edges)
    bounds = np.r_[-np.inf, edges, np.inf]
    return pl.DataFrame(
        {
            "bin": np.arange(rc.size),
            "lower": bounds[:-1],
            "upper": bounds[1:],
            "ref": rc / max(rc.sum(), 1.0),
            "cur": cc / max(cc.sum(), 1.0),
        }
    )
