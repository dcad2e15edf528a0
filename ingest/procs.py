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
    ``every`` seconds whether the process was re-parented.

    A worker forked by a ``forkserver`` has the server as its direct parent, not ``parent``, and the server
    outlives ``parent`` as long as any of its workers does (each holds the server's lifeline): such a worker
    also watches ``parent`` itself, and ends once it is gone or a zombie."""
    direct = os.getppid()

    def gone() -> bool:
        if os.getppid() != direct:
            return True
        return direct != parent and not _exists(parent)

    def watch() -> None:
        while not gone():
            time.sleep(every)
        os._exit(0)

    threading.Thread(target=watch, name="rootwise-parent-watch", daemon=True).start()


def _exists(pid: int) -> bool:
    """``pid`` runs (a zombie does not: a killed parent stays one until its own parent reaps it, which a
    supervisor reading our output may do only once that output ends, i.e. once we exit)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or the number went to someone else's process
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[-1][:1] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: signal 0 is all we can tell
        return True
