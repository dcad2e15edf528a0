"""Alarm post-rules: turn calibrated scores into alarms that do not flap (Merlion's post-rules, made stateful).

An alarm *fires* once ``min_hits`` points within the last ``window`` points score at least the threshold;
it stays *active* while points keep scoring at least ``resolve_z`` (hysteresis: a lower bar to stay than to
start) and *resolves* after ``resolve_after`` consecutive points below it. After it resolves, a new alarm needs
``min_hits`` fresh hits again, and no new alarm fires within ``refire_after`` points of the last resolve
(re-fire suppression), so a metric hovering at the threshold gives one alarm, not a page every minute.

The rule keeps its state between calls (:class:`AlarmState`), so ``rootwise detect`` applied to new points
in pieces gives the same alarms as one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class AlarmState:
    """Carried between calls: recent hit flags, whether an alarm is active, and counters since events."""

    recent: tuple[bool, ...] = ()  # hit flags of the last ``window - 1`` points
    active: bool = False
    cold: int = 0  # consecutive points below resolve_z while active
    since_resolve: int = 1 << 30  # points since the last alarm resolved


@dataclass(frozen=True)
class AlarmRule:
    """Fire after ``min_hits`` of ``window`` points ≥ ``z``; stay while ≥ ``resolve_z``; resolve after
    ``resolve_after`` cold points; no new alarm within ``refire_after`` points of a resolve."""

    z: float = 5.0
    min_hits: int = 2
    window: int = 5
    resolve_z: float = 3.0
    resolve_after: int = 10
    refire_after: int = 0

    def apply(
        self, score: np.ndarray, state: AlarmState | None = None
    ) -> tuple[np.ndarray, np.ndarray, AlarmState]:
        """``(active, onset, new_state)``: per point whether an alarm is active and whether one starts there.

        Examples
        --------
        >>> rule = AlarmRule(z=5, min_hits=2, window=3, resolve_z=3, resolve_after=2)
        >>> active, onset, _ = rule.apply(np.array([6, 0, 6, 4, 1, 1, 1, 6.0]))
        >>> active.astype(int).tolist(), onset.astype(int).tolist()
        ([0, 0, 1, 1, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0, 0])
        """
        state = state or AlarmState()
        s = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=0.0)
        n = s.size
        active = np.zeros(n, dtype=bool)
        onset = np.zeros(n, dtype=bool)
        hit = s >= self.z
        warm = s >= self.resolve_z
        keep = max(self.window - 1, 0)
        # fast path: nothing hot and no alarm open — only the counters move
        if not state.active and not hit.any():
            recent = (tuple(state.recent) + tuple(bool(h) for h in hit[-keep:]))[-keep:] if keep else ()
            return active, onset, replace(state, recent=recent, since_resolve=state.since_resolve + n)
        flags = list(state.recent)
        is_active, cold, since = state.active, state.cold, state.since_resolve
        for i in range(n):
            flags.append(bool(hit[i]))
            if len(flags) > self.window:
                flags.pop(0)
            if is_active:
                cold = 0 if warm[i] else cold + 1
                if cold >= self.resolve_after:
                    is_active, since, flags = False, 0, []
                    continue
                active[i] = True
            else:
                since += 1
                if sum(flags) >= self.min_hits and since > self.refire_after:
                    is_active, cold = True, 0
                    active[i] = onset[i] = True
        recent = tuple(flags[-keep:]) if keep else ()
        return active, onset, AlarmState(recent, is_active, cold, since)
