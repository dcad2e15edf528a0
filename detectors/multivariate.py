"""Multivariate anomalies over one service's metrics: what no single metric shows.

Latency and throughput that always move together and suddenly do not; a queue that grows while throughput
holds. Each metric alone stays in its usual range, the *combination* is new. :class:`IsolationForestDetector`
pivots a service's series to a ``ts × series`` matrix and scores each timestamp with an isolation forest (Liu,
Ting & Zhou 2008) over the robust-scaled values and their first differences.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Self

import numpy as np
import polars as pl
from sklearn.ensemble import IsolationForest

from detectors.base import Detector, SeriesScores, Threshold, check_points
from detectors.calibration import TailCalibrator, z_of_tail
from detectors.changepoint import robust_level_scale
from ingest.schema import SCORES

#: in-sample rows used to fit the calibrator (a seeded subsample keeps fitting linear and cheap)
_CALIBRATION_ROWS = 20_000


@dataclass
class ForestState:
    """A fitted forest: the series (columns) it expects, their robust centre/scale, the calibrator, and the
    last fitted row (scaled) with its time, so a frame that continues the history gets a real first difference."""

    columns: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    level_mean: np.ndarray
    level_cov: np.ndarray
    rotation: np.ndarray
    rotation_center: np.ndarray
    rotation_scale: np.ndarray
    forest: IsolationForest
    calibrator: TailCalibrator
    distance_calibrator: TailCalibrator
    last_row: np.ndarray
    t_last: int


class IsolationForestDetector(Detector):
    """Isolation forest over a service's metrics, one calibrated score per timestamp.

    Input: several series (``series_id, ts, value``) of one service. They are pivoted to ``ts × series``
    (mean of duplicates) and gaps of up to ``max_gap`` timestamps are forward-filled (misaligned scrape times);
    other missing cells get their conditional mean given the metrics observed at that timestamp (a fitted
    Gaussian), so imputation does not itself look like a broken relationship. A forward-filled value of a
    fast-moving metric can: use ``max_gap=0`` when series share timestamps. Columns are robust-scaled (median, ``1.4826 * MAD`` with the quantised floor of
    :func:`detectors.changepoint.robust_level_scale`) and their first differences are added (``diffs``; a break
    in a relationship shows in the changes before the levels). The features are rotated onto their principal
    axes and robust-scaled again (whitened), so "off the usual diagonal" becomes "extreme along one axis",
    which axis-parallel isolation trees can see.

    The raw score is ``-score_samples`` of :class:`sklearn.ensemble.IsolationForest` (``random_state=seed``),
    calibrated with a :class:`TailCalibrator` fitted on in-sample scores. Isolation depth saturates: a point far
    outside the training range is isolated no faster than the training extremes, so the forest alone rarely
    reaches a high z. With ``distance=True`` (default) the squared whitened distance is a second test, calibrated
    the same way, and the score is the Bonferroni combination ``p = 2 min(p_forest, p_distance)``.

    The output has one row per timestamp with ``series_id = group_id`` (default: the smallest series id of the
    fitted frame); there is no expected value. Series unseen at fit are ignored when scoring; fitted series
    missing from a scored frame are imputed from the others.

    Examples
    --------
    >>> import polars as pl
    >>> from datetime import datetime, timedelta
    >>> rng = np.random.default_rng(0)
    >>> f = rng.normal(0, 1, 2000)
    >>> a, b = f + rng.normal(0, 0.05, 2000), f + rng.normal(0, 0.05, 2000)
    >>> a[1500], b[1500] = 1.5, -1.5  # each value ordinary on its own, the pair is not
    >>> ts = [datetime(2024, 1, 1) + timedelta(minutes=i) for i in range(2000)]
    >>> frame = pl.concat([pl.DataFrame({"series_id": s, "ts": ts, "value": v}) for s, v in ((7, a), (9, b))])
    >>> out = IsolationForestDetector().fit(frame).score(frame)
    >>> out["series_id"][0], np.flatnonzero(out["is_anomaly"].to_numpy()).tolist()  # the break and its undoing
    (7, [1500, 1501])
    """

    name: ClassVar[str] = "isolation-forest"
    causal: ClassVar[bool] = False
    input_kind: ClassVar[str] = "multivariate"

    def __init__(
        self,
        *,
        group_id: int | None = None,
        n_estimators: int = 100,
        max_samples: int = 256,
        max_gap: int = 3,
        diffs: bool = True,
        distance: bool = True,
        threshold: Threshold | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(threshold=threshold, seed=seed)
        self.group_id = group_id
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.max_gap = max_gap
        self.diffs = diffs
        self.distance = distance

    # -- the contract ------------------------------------------------------------------------------------
    def fit(self, frame: pl.DataFrame) -> Self:
        """Fit the forest on ``frame``'s series (one service's metrics)."""
        pts = check_points(frame)
        self.states_: dict[int, ForestState] = {}
        if pts.height:
            t, cols, x = self._matrix(pts, None)
            self.states_[self._group(cols)] = self._fit_matrix(t, cols, x)
        return self

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        """One calibrated score per timestamp of ``frame``; fitted in-sample when nothing was fitted."""
        pts = check_points(frame)
        if pts.height == 0:
            return pl.DataFrame(schema=SCORES)
        states = getattr(self, "states_", {})
        gid, state = self._fitted(states)
        if state is None:
            t, cols, x = self._matrix(pts, None)
            gid, state = self._group(cols), self._fit_matrix(t, cols, x)
        t, _, x = self._matrix(pts, state.columns)
        return self._frame(gid, t, SeriesScores(score=self._score_matrix(t, x, state)))

    def score_online(self, frame: pl.DataFrame, *, warmup: int = 200, refit_every: int = 500) -> pl.DataFrame:
        """Score causally: refit on the growing prefix of timestamps every ``refit_every`` rows."""
        pts = check_points(frame)
        if pts.height == 0:
            return pl.DataFrame(schema=SCORES)
        t, cols, x = self._matrix(pts, None)
        n = t.size
        score = np.zeros(n)
        for a in range(min(warmup, n), n, refit_every):
            b = min(a + refit_every, n)
            state = self._fit_matrix(t[:a], cols, x[:a])
            score[a:b] = self._score_matrix(t[a:b], x[a:b], state)
        return self._frame(self._group(cols), t, SeriesScores(score=score))

    def update(self, frame: pl.DataFrame) -> Self:
        """Batch family: the forest is refitted on a schedule; ``update`` only moves the continuation point."""
        pts = check_points(frame)
        states = dict(getattr(self, "states_", {}))
        gid, state = self._fitted(states)
        if state is None:
            return self.fit(frame)
        if pts.height:
            t, _, x = self._matrix(pts, state.columns)
            z = self._scaled(x, state.center, state.scale, state.level_mean, state.level_cov)
            states[gid] = replace(state, last_row=z[-1], t_last=int(t[-1]))
        self.states_ = states
        return self

    # -- internals ---------------------------------------------------------------------------------------
    def _group(self, columns: np.ndarray) -> int:
        return int(self.group_id) if self.group_id is not None else int(columns.min())

    def _fitted(self, states: dict[int, ForestState]) -> tuple[int, ForestState | None]:
        if self.group_id is not None:
            return int(self.group_id), states.get(int(self.group_id))
        if len(states) == 1:
            gid = next(iter(states))
            return gid, states[gid]
        return 0, None

    def _matrix(
        self, pts: pl.DataFrame, columns: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(t_us, columns, values)``: the ts × series matrix, short gaps forward-filled, other gaps NaN."""
        wide = pts.pivot(on="series_id", index="ts", values="value", aggregate_function="mean").sort("ts")
        if columns is None:
            columns = np.array(sorted(int(c) for c in wide.columns if c != "ts"), dtype=np.int64)
        names = [str(c) for c in columns]
        wide = wide.select(
            "ts",
            *[
                pl.col(c).fill_nan(None).forward_fill(limit=self.max_gap) if c in wide.columns
                else pl.lit(None, dtype=pl.Float64).alias(c)
                for c in names
            ],
        )  # fmt: skip
        x = wide.select(names).to_numpy().astype(np.float64) if names else np.zeros((wide.height, 0))
        return wide["ts"].dt.epoch("us").to_numpy(), columns, x

    @staticmethod
    def _scaled(
        x: np.ndarray, center: np.ndarray, scale: np.ndarray, mean: np.ndarray, cov: np.ndarray
    ) -> np.ndarray:
        """Robust-scaled values; a missing cell gets its conditional mean given the row's observed cells.

        Imputing at the median would itself break the relationships the forest looks at; the Gaussian
        conditional mean ``mu_M + Sigma_MO Sigma_OO^-1 (z_O - mu_O)`` keeps them. One solve per missingness
        pattern, not per row.
        """
        z = (x - center) / scale
        miss = np.isnan(z)
        if not miss.any():
            return z
        patterns, inverse = np.unique(miss, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        for p, pattern in enumerate(patterns):
            if not pattern.any():
                continue
            rows = np.flatnonzero(inverse == p)
            m, o = pattern, ~pattern
            if not o.any():
                z[np.ix_(rows, m)] = mean[m]
                continue
            ridge = 1e-6 * np.trace(cov) / cov.shape[0] * np.eye(int(o.sum()))
            coef = np.linalg.solve(cov[np.ix_(o, o)] + ridge, cov[np.ix_(o, m)])
            z[np.ix_(rows, m)] = mean[m] + (z[np.ix_(rows, o)] - mean[o]) @ coef
        return z

    def _features(self, z: np.ndarray, first_diff_from: np.ndarray | None) -> np.ndarray:
        if not self.diffs:
            return z
        d = np.diff(z, axis=0, prepend=z[:1] if first_diff_from is None else first_diff_from[None, :])
        return np.hstack([z, d])

    @staticmethod
    def _rotated(feats: np.ndarray, state: ForestState) -> np.ndarray:
        return (feats @ state.rotation - state.rotation_center) / state.rotation_scale

    def _fit_matrix(self, t: np.ndarray, columns: np.ndarray, x: np.ndarray) -> ForestState:
        lv = [robust_level_scale(x[:, j]) for j in range(x.shape[1])]
        center = np.array([c for c, _ in lv])
        scale = np.array([s for _, s in lv])
        z0 = (x - center) / scale
        complete = z0[~np.isnan(z0).any(axis=1)]
        k = x.shape[1]
        if complete.shape[0] > k + 1:
            mean, cov = complete.mean(axis=0), np.cov(complete, rowvar=False).reshape(k, k)
        else:
            mean, cov = np.zeros(k), np.eye(k)
        z = self._scaled(x, center, scale, mean, cov)
        feats = self._features(z, None)
        rotation, rotation_center, rotation_scale = _principal_axes(feats, self.seed)
        feats = (feats @ rotation - rotation_center) / rotation_scale
        forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, max(feats.shape[0], 1)),
            random_state=self.seed,
        ).fit(feats)
        rows = feats
        if feats.shape[0] > _CALIBRATION_ROWS:
            pick = np.random.default_rng(self.seed).choice(feats.shape[0], _CALIBRATION_ROWS, replace=False)
            rows = feats[np.sort(pick)]
        calibrator = TailCalibrator.fit(-forest.score_samples(rows))
        distance = TailCalibrator.fit(np.square(rows).sum(axis=1))
        return ForestState(
            columns=columns,
            center=center,
            scale=scale,
            level_mean=mean,
            level_cov=cov,
            rotation=rotation,
            rotation_center=rotation_center,
            rotation_scale=rotation_scale,
            forest=forest,
            calibrator=calibrator,
            distance_calibrator=distance,
            last_row=z[-1],
            t_last=int(t[-1]),
        )

    def _score_matrix(self, t: np.ndarray, x: np.ndarray, state: ForestState) -> np.ndarray:
        z = self._scaled(x, state.center, state.scale, state.level_mean, state.level_cov)
        carry = state.last_row if t.size and t[0] > state.t_last else None
        feats = self._rotated(self._features(z, carry), state)
        p = state.calibrator.tail(-state.forest.score_samples(feats))
        if self.distance:
            # Bonferroni over the two tests: the forest and the whitened distance
            p = np.minimum(
                1.0, 2.0 * np.minimum(p, state.distance_calibrator.tail(np.square(feats).sum(axis=1)))
            )
        return np.maximum(z_of_tail(np.minimum(p, 0.5)), 0.0)


def _principal_axes(feats: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal axes of the features, and the robust centre and scale of each projection.

    Isolation trees split one feature at a time, so a point off a tight diagonal (two metrics that always move
    together, and now do not) takes many splits to isolate; along the minor principal axis the same point is
    extreme. Scales are floored at 1 % of the largest so an exactly collinear pair does not divide by zero.
    """
    rows = feats
    if feats.shape[0] > _CALIBRATION_ROWS:
        pick = np.random.default_rng(seed).choice(feats.shape[0], _CALIBRATION_ROWS, replace=False)
        rows = feats[pick]
    k = feats.shape[1]
    if rows.shape[0] < 2 or k == 0:
        return np.eye(k), np.zeros(k), np.ones(k)
    _, vectors = np.linalg.eigh(np.cov(rows, rowvar=False).reshape(k, k))
    proj = rows @ vectors
    lv = [robust_level_scale(proj[:, j]) for j in range(k)]
    center = np.array([c for c, _ in lv])
    spread = np.array([s for _, s in lv])
    return vectors, center, np.maximum(spread, max(0.01 * spread.max(initial=0.0), 1e-12))
