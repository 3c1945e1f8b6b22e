"""What each Ray Train worker runs: :func:`ctr.distributed.worker.run_worker` with Ray's plumbing.

Rank 0 forwards its epoch records and step losses to the driver through a Ray queue (steps in
small batches), so the driver's callbacks (MLflow) see them live. Every rank reports resumable
checkpoints with ``ray.train.report``; after a failure Ray restarts the workers and
``ray.train.get_checkpoint()`` hands back the last one, which ``run_worker`` resumes from.
"""

import dataclasses
import os
import shutil
import tempfile
import time

import ray.train
import torch

from ctr.distributed.worker import WorkerJob, run_worker

STEP_FLUSH_SECONDS = 0.5


class _Forwarder:
    """Rank 0's callbacks: puts events on the driver's queue (step losses batched)."""

    def __init__(self, events) -> None:
        self.events, self.steps, self.last = events, [], time.monotonic()

    def step(self, step: int, loss: float) -> None:
        self.steps.append((step, loss))
        if time.monotonic() - self.last >= STEP_FLUSH_SECONDS:
            self.flush()

    def report(self, record: dict) -> None:
        self.flush()
        self.events.put(("report", record))

    def flush(self) -> None:
        if self.steps:
            self.events.put(("steps", self.steps))
        self.steps, self.last = [], time.monotonic()


def _sink(events, rank: int):
    def sink(write, metrics: dict) -> None:
        folder = tempfile.mkdtemp(prefix="ctr-ckpt-")
        try:
            write(folder)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if rank == 0:
            events.put(("checkpoint", metrics))
    return sink


def train_loop(config: dict) -> None:
    """``train_loop_per_worker`` of the ``TorchTrainer``: ``config`` holds the job and the event queue."""
    job: WorkerJob = config["job"]
    events = config["events"]
    torch.set_num_threads(config.get("threads", 1))
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    events.put(("worker", {"rank": rank, "pid": os.getpid(), "world_size": ctx.get_world_size()}))
    forwarder = _Forwarder(events) if rank == 0 else None
    restored = ray.train.get_checkpoint()
    if restored is None:
        _run(job, rank, forwarder, _sink(events, rank), events)
        return
    with restored.as_directory() as folder:
        _run(dataclasses.replace(job, resume_from=folder), rank, forwarder, _sink(events, rank), events)


def _run(job: WorkerJob, rank: int, forwarder: _Forwarder | None, sink, events) -> None:
    result = run_worker(job, on_report=forwarder.report if forwarder else None,
                        on_step=forwarder.step if forwarder else None, sink=sink)
    if forwarder is not None:
        forwarder.flush()
        events.put(("result", result))
