"""What the scoring processes' fork server loads once, before it forks them (:class:`app.detect.ScoringPool`).

Each scoring process used to be started afresh (``spawn``) and pay, on the two cores it shares with the pass it
serves, about two CPU-seconds before its first batch: importing polars, DuckDB, SciPy and the detectors, then
numba and its compiled kernels. A ``forkserver`` pays that once and forks ready workers. Only imports and
numpy calls run here, never polars: its thread pool, once started, would not exist in a forked child, and a
polars call there would wait on it forever (importing polars starts only its allocator's and spill cleaner's
idle threads).
"""

from __future__ import annotations

import os

# polars fixes its thread count when it is imported: every worker forked from here runs one polars thread
# (the parent keeps reading and writing the store on the other core). Only this server's environment changes
os.environ["POLARS_MAX_THREADS"] = "1"

import numpy as np  # noqa: E402

import app.detect  # noqa: E402
from detectors.streaming import trailing_window_sum  # noqa: E402

# the configured detector's module and the families it combines (SciPy among them)
app.detect._detector(app.detect.DetectConfig())
# numba, its code generator (the bulk of loading any kernel) and one kernel, with the arguments scoring passes
trailing_window_sum(np.zeros(4), 2)
