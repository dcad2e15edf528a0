"""Pool workers end when their parent is killed (ingest/procs.py): a real parent process, SIGKILLed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

# the parent: a pool with the initializer under test; it prints its worker's pid, then kills itself
PARENT = """
import multiprocessing, os, signal, sys
from concurrent.futures import ProcessPoolExecutor
import {module} as m

if __name__ == "__main__":
    init = getattr(m, "{name}")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("{method}"), initializer=init,
                             initargs=(os.getpid(),)) as ex:
        print(ex.submit(os.getpid).result(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next((line for line in status.splitlines() if line.startswith("State:")), "")
    return "Z" not in state.split()[1:2]


@pytest.mark.parametrize(
    ("module", "name", "method"),
    [
        ("ingest.procs", "exit_with_parent", "spawn"),
        # forked by a fork server (detection's scoring processes): the server is their parent, not ours
        ("ingest.procs", "exit_with_parent", "forkserver"),
        ("detectors.forecast_base", "limit_blas_threads", "spawn"),
    ],
)
def test_pool_worker_ends_when_its_parent_is_killed(tmp_path: Path, module: str, name: str, method: str) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(module=module, name=name, method=method))
    root = Path(__file__).resolve().parents[1]
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    # files, not pipes: a worker left behind would hold a pipe open and the run would wait for it
    with out.open("w") as sink, err.open("w") as errors:
        proc = subprocess.run(
            [sys.executable, str(script)],
            stdout=sink,
            stderr=errors,
            timeout=120,
            cwd=root,
            env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        )
    assert proc.returncode == -9, err.read_text()
    worker = int(out.read_text().split()[0])
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(worker)
    if alive:  # pragma: no cover - the failure this test exists for; do not leave the worker behind
        subprocess.run(["kill", "-9", str(worker)], check=False)
    assert not alive, f"worker {worker} outlived its killed parent"
