"""Worker processes that do not outlive their parent.

A process-pool worker waits on its pool's pipe; a parent killed with SIGKILL (an OOM kill, a crash of
``rootwise serve`` or of an evaluation) leaves it waiting forever, holding its memory. :func:`exit_with_parent`,
run in the worker (a pool ``initializer``), ends it once it has been re-parented. Every process pool of Rootwise
(detection, the server's decoders, the evaluations, the forecasters) starts its workers with it.
"""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(parent: int, every: float = 0.5) -> None:
    """End this process once ``parent`` (the pid that started it) is gone: a daemon thread checks every
    ``every`` seconds whether the process was re-parented."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(0)

    threading.Thread(target=watch, name="rootwise-parent-watch", daemon=True).start()
