"""Run :func:`run_worker` on N local gloo ranks with ``torch.multiprocessing`` (no Ray needed).

Used by ``distributed.workers: N`` and by the world-size equivalence test. A failing rank makes
``spawn`` terminate its peers, so a planner error cannot hang the job.
"""

import os
import pickle
import socket
import tempfile
from pathlib import Path

import torch.multiprocessing as mp

from ctr.distributed.worker import WorkerJob, WorkerResult, run_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, job: WorkerJob, world_size: int, tmp: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    result = run_worker(job, rank, world_size, init_method=f"file://{tmp}/init")
    # transient hand-off to the parent process inside a private temp dir (not an artifact)
    with open(Path(tmp) / f"result-{rank}.pkl", "wb") as f:
        pickle.dump(result, f)


def launch_local(job: WorkerJob, world_size: int) -> list[WorkerResult]:
    """Train on ``world_size`` processes; returns every rank's result ordered by rank."""
    with tempfile.TemporaryDirectory(prefix="ctr-pg-") as tmp:
        mp.start_processes(_entry, args=(job, world_size, tmp), nprocs=world_size, join=True,
                           start_method="spawn")
        results = []
        for rank in range(world_size):
            with open(Path(tmp) / f"result-{rank}.pkl", "rb") as f:
                results.append(pickle.load(f))
    return results
