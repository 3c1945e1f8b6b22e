"""One training worker: build on ``meta`` → shard with DMP → ``ctr.train.loop.fit`` → best state restored → DCP.

The same function runs in-process (world size 1, the default), under ``torch.multiprocessing``
(tests), or inside a Ray Train worker (the runner injects its report callback). Everything it needs
travels in a picklable :class:`WorkerJob`.
"""

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ctr.data.loader import BatchIterator
from ctr.data.prepare import read_encoded
from ctr.distributed.env import destroy_process_group, init_process_group
from ctr.distributed.sharding import ShardingConfig, gather_rows, mean_across_ranks, plan_text, shard_model
from ctr.features.artifact import FeatureArtifact
from ctr.models import build_model
from ctr.train import checkpoint
from ctr.train.evaluate import evaluate
from ctr.train.loop import FitResult, TrainConfig, fit
from ctr.train.objective import Objective, collect_regularizers
from ctr.train.optim import attach_fused_optimizer, build_optimizer, tables_fused

log = logging.getLogger("ctr.distributed")


@dataclass
class WorkerJob:
    """Everything a worker needs, picklable.

    Args:
        model_cfg: parsed model config (``ctr.models`` registry).
        embedding_cfg: parsed embedding-method config (``ctr.embeddings.METHODS``).
        train_cfg (TrainConfig): epochs, batch sizes, optimizers, early stopping.
        sharding_cfg (ShardingConfig): allowed sharding types.
        artifact_dir (str): fitted FeatureArtifact folder.
        splits (dict[str, str]): split name → encoded Parquet file or folder (``train`` and ``valid``;
            the test split is scored by the evaluate stage on the exported model).
        out_dir (str): folder shared by all ranks for checkpoints.
        device (str): ``cpu`` or ``cuda``.
    """

    model_cfg: object
    embedding_cfg: object
    train_cfg: TrainConfig
    sharding_cfg: ShardingConfig
    artifact_dir: str
    splits: dict[str, str]
    out_dir: str
    device: str = "cpu"


@dataclass
class WorkerResult:
    """Training outcome reported by rank 0 (losses averaged over ranks)."""

    fit: FitResult
    valid: dict = field(default_factory=dict)
    plan: str = ""
    checkpoint_dir: str = ""
    world_size: int = 1
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_worker(job: WorkerJob, rank: int = 0, world_size: int = 1, init_method: str | None = None,
               on_report: Callable[[dict], None] | None = None,
               on_step: Callable[[int, float], None] | None = None) -> WorkerResult:
    """Train, validate and checkpoint on this rank; returns the (rank-independent) result.

    ``on_report`` (each epoch's record) and ``on_step`` (global step, loss) are called on rank 0 only.
    """
    created = init_process_group(rank, world_size, init_method)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    try:
        return _train(job, rank, world_size, on_report, on_step)
    finally:
        if created:
            destroy_process_group()


def _train(job: WorkerJob, rank: int, world_size: int, on_report, on_step) -> WorkerResult:
    start = time.perf_counter()
    cfg, device = job.train_cfg, torch.device(job.device)
    seed_everything(cfg.seed)
    artifact = FeatureArtifact.load(job.artifact_dir)
    model = build_model(job.model_cfg, artifact.layout(), job.embedding_cfg, device=torch.device("meta"))
    fused = tables_fused(cfg.optimizer, device)
    if fused:
        attach_fused_optimizer(model, cfg.optimizer)
    dmp = shard_model(model, job.sharding_cfg, fused, device, cfg.seed)
    plan = plan_text(dmp)
    if rank == 0:
        log.info("sharding plan:\n%s", plan)
    optimizer = build_optimizer(dmp, cfg.optimizer, dmp.fused_optimizer if fused else None)
    objective = Objective(collect_regularizers(model))
    data = {name: read_encoded(path, artifact.schema) for name, path in job.splits.items()}
    train_it = BatchIterator(data["train"], cfg.batch_size, shuffle=True, seed=cfg.seed,
                             rank=rank, world_size=world_size, device=device)

    def batches(split: str) -> BatchIterator:
        return BatchIterator(data[split], cfg.eval_batch_size, shuffle=False, seed=cfg.seed,
                             rank=rank, world_size=world_size, device=device)

    best = checkpoint.BestCheckpointer(Path(job.out_dir) / "best")
    report, step = (on_report, on_step) if rank == 0 else (None, None)
    result = fit(dmp, optimizer, objective, train_it, lambda: evaluate(dmp, batches("valid"), gather_rows),
                 cfg.model_copy(update={"progress": cfg.progress and rank == 0}), best, report, world_size, step)
    result.step_losses = mean_across_ranks(result.step_losses)
    valid = result.best or evaluate(dmp, batches("valid"), gather_rows)
    final = Path(job.out_dir) / "final"
    checkpoint.save(dmp, final)
    return WorkerResult(result, valid, plan, str(final), world_size, time.perf_counter() - start)
