"""Stage 2: encoded splits → trained model checkpoint (in-process, or N local gloo ranks)."""

import logging
from pathlib import Path

from ctr.data.prepare import PreparedData
from ctr.distributed.launch import launch_local
from ctr.distributed.worker import WorkerJob, WorkerResult, run_worker

log = logging.getLogger("ctr.pipelines")


def make_job(spec, prepared: PreparedData, run_dir: Path) -> WorkerJob:
    return WorkerJob(
        model_cfg=spec.model,
        embedding_cfg=spec.embedding,
        train_cfg=spec.train,
        sharding_cfg=spec.distributed.sharding,
        artifact_dir=str(prepared.artifact_dir),
        splits={k: str(v) for k, v in prepared.split_paths.items() if k in ("train", "valid")},
        out_dir=str(run_dir / "checkpoints"),
        device=spec.distributed.device,
    )


def run(spec, prepared: PreparedData, run_dir: Path, on_report=None, on_step=None) -> WorkerResult:
    """Train; ``on_report(epoch record)`` / ``on_step(step, loss)`` are called live in this process
    when training runs in it (``workers: 1``). Spawned ranks (``workers: N``) cannot call back into
    the driver: their history arrives with the result (the Ray runner will route reports)."""
    job = make_job(spec, prepared, run_dir)
    workers = max(spec.distributed.workers, 1)
    log.info("training %s on %d worker(s)", spec.model.name, workers)
    if workers == 1:
        return run_worker(job, on_report=on_report, on_step=on_step)
    return launch_local(job, workers)[0]
