"""Stage 2: encoded splits → trained model checkpoint (in process, or on N Ray Train workers)."""

import logging
from pathlib import Path

from ctr.data.prepare import PreparedData
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
        out_dir=str(Path(run_dir).resolve() / "checkpoints"),
        device=spec.distributed.device,
    )


def run(spec, prepared: PreparedData, run_dir: Path, on_report=None, on_step=None) -> WorkerResult:
    """Train; ``on_report(epoch record)`` / ``on_step(step, loss)`` are called live in this process,
    whether training runs here (``workers: 1``) or on Ray workers (rank 0 forwards them)."""
    return run_job(make_job(spec, prepared, run_dir), spec, run_dir, on_report, on_step)


def run_job(job: WorkerJob, spec, run_dir: Path, on_report=None, on_step=None) -> WorkerResult:
    """Run ``job`` in process or on ``spec.distributed.workers`` Ray workers (Ray storage under ``run_dir``)."""
    dist = spec.distributed
    workers = max(dist.workers, 1)
    log.info("training %s on %d worker(s)%s", spec.model.name, workers, " (Ray)" if workers > 1 else "")
    if workers == 1:
        return run_worker(job, on_report=on_report, on_step=on_step)
    from pipelines.ray_runner import RayRun, train_on_ray

    run_cfg = RayRun(workers=workers, storage=str(Path(run_dir).resolve() / "ray"), address=dist.address,
                     max_failures=dist.max_failures, use_gpu=dist.device == "cuda",
                     cpus_per_worker=dist.cpus_per_worker, name=Path(run_dir).name)
    return train_on_ray(job, run_cfg, on_report, on_step)
