"""Per-point loops compiled with numba, for the streaming statistics numpy has no vectorised form of.

numba is imported on the first call of a compiled function, not at import: only scoring needs it, and the CLI
and the app start without paying for it. Machine code is cached beside the module (``__pycache__``), so worker
processes and later runs load it instead of compiling again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled by ``numba.njit`` on its first call (``fn`` must use only what numba's nopython mode
    supports: numpy arrays, scalars, loops)."""
    jitted: Callable[..., Any] | None = None

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        nonlocal jitted
        if jitted is None:
            import numba

            jitted = numba.njit(cache=True, nogil=True)(fn)
        return jitted(*args)

    return call
