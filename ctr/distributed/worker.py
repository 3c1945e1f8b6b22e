"""One training worker: build on ``meta`` → shard with DMP → ``ctr.train.loop.fit`` → best state restored → DCP.

The same function runs in-process (world size 1, the default) or inside each Ray Train worker
(``pipelines/ray_worker.py`` injects its report callbacks and checkpoint sink). Everything it needs
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

from ctr.data.loader import BatchIterator, rank_rows
from ctr.data.prepare import count_encoded, read_encoded
from ctr.distributed.env import destroy_process_group, init_process_group
from ctr.distributed.sharding import (
    ShardingConfig,
    gather_rows,
    local_table_shards,
    mean_across_ranks,
    needs_equal_batches,
    plan_text,
    shard_model,
)
from ctr.errors import CtrError
from ctr.features.artifact import FeatureArtifact
from ctr.models import build_model
from ctr.train import checkpoint
from ctr.train.evaluate import evaluate
from ctr.train.loop import FitResult, TrainConfig, fit
from ctr.train.objective import Objective, collect_regularizers
from ctr.train.optim import attach_fused_optimizer, build_optimizer, freeze_dense, tables_fused

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
        resume_from (str | None): a resumable checkpoint folder (``ctr.train.checkpoint.save_resumable``)
            to continue from, written at any world size.
        init_from (str | None): a model checkpoint (DCP, ``ctr.train.checkpoint.save``) to start from
            instead of the seeded init (a search's retrain phase: rewound weights of the compact model).
        snapshot_epochs (tuple[int, ...]): 0-based epochs whose starting weights are saved (DCP) under
            ``out_dir/epoch-start-<e>`` (OptFS's rewind point, OptEmbed's initial weights).
        restore_best (bool): reload the best validation epoch at the end (``False``: keep the last epoch,
            e.g. a search phase whose outcome is its final state).
        freeze_dense (bool): only the embedding tables and the field embedding's own weights train
            (``ctr.train.optim.freeze_dense``; DNIS's search).
        validate_start (bool): the starting weights compete as epoch 0 for the best state (``fit``).
    """

    model_cfg: object
    embedding_cfg: object
    train_cfg: TrainConfig
    sharding_cfg: ShardingConfig
    artifact_dir: str
    splits: dict[str, str]
    out_dir: str
    device: str = "cpu"
    resume_from: str | None = None
    init_from: str | None = None
    snapshot_epochs: tuple[int, ...] = ()
    restore_best: bool = True
    freeze_dense: bool = False
    validate_start: bool = False


@dataclass
class WorkerResult:
    """Training outcome reported by rank 0 (losses averaged over ranks)."""

    fit: FitResult
    valid: dict = field(default_factory=dict)
    plan: str = ""
    checkpoint_dir: str = ""
    world_size: int = 1
    seconds: float = 0.0
    resumed_from: str | None = None
    rows_read: dict = field(default_factory=dict)
    """Split → rows rank 0 read and held (its share, ``ctr.data.loader.rank_rows``), not the split's size."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


CheckpointSink = Callable[[Callable[[str], None], dict], None]
"""Called on every rank with ``write(folder)`` (saves this rank's part there) and the step's metrics."""


def run_worker(job: WorkerJob, rank: int = 0, world_size: int = 1, init_method: str | None = None,
               on_report: Callable[[dict], None] | None = None,
               on_step: Callable[[int, float], None] | None = None,
               sink: CheckpointSink | None = None) -> WorkerResult:
    """Train, validate and checkpoint on this rank; returns the (rank-independent) result.

    ``on_report`` (each epoch's record) and ``on_step`` (global step, loss) are called on rank 0 only;
    ``sink`` (every rank) receives resumable checkpoints after each epoch and every
    ``train.checkpoint_every`` steps.
    """
    created = init_process_group(rank, world_size, init_method)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    try:
        return _train(job, rank, world_size, (on_report, on_step), sink)
    finally:
        if created:
            destroy_process_group()


def build_training(job: WorkerJob) -> tuple[FeatureArtifact, torch.nn.Module, torch.nn.Module, object, Objective]:
    """What every rank trains with: (artifact, plain model, its DMP-sharded wrapper, optimizer, objective).

    Seeded, built on ``meta`` and sharded by the planner (fused table optimizers attached where the
    device supports them), ``job.init_from`` loaded. Needs a process group (``init_process_group``).
    """
    cfg, device = job.train_cfg, torch.device(job.device)
    seed_everything(cfg.seed)
    artifact = FeatureArtifact.load(job.artifact_dir)
    model = build_model(job.model_cfg, artifact.layout(), job.embedding_cfg, device=torch.device("meta"))
    if job.freeze_dense:
        freeze_dense(model)
    fused = tables_fused(cfg.optimizer, device)
    if fused:
        attach_fused_optimizer(model, cfg.optimizer)
    dmp = shard_model(model, job.sharding_cfg, fused, device, cfg.seed)
    if job.init_from:
        checkpoint.load(dmp, job.init_from)
    optimizer = build_optimizer(dmp, cfg.optimizer, dmp.fused_optimizer if fused else None)
    return artifact, model, dmp, optimizer, Objective(collect_regularizers(model))


def _train(job: WorkerJob, rank: int, world_size: int, callbacks, sink: CheckpointSink | None) -> WorkerResult:
    start = time.perf_counter()
    cfg, device = job.train_cfg, torch.device(job.device)
    artifact, model, dmp, optimizer, objective = build_training(job)
    plan = plan_text(dmp)
    if rank == 0:
        log.info("sharding plan:\n%s", plan)
    data = _read_shares(job.splits, artifact.schema, rank, world_size)
    equal = needs_equal_batches(model, dmp.plan)  # row-wise pooled tables on gloo: pad batches to equal size
    if equal and rank == 0:
        log.info("row-wise pooled tables %s on %d gloo workers: training batches padded to equal size per "
                 "rank (weight-0 repeats)", equal[:5], world_size)
    train_it = BatchIterator(data["train"][0], cfg.batch_size, shuffle=True, seed=cfg.seed, rank=rank,
                             world_size=world_size, device=device, total_rows=data["train"][1],
                             equal_batches=bool(equal))

    def batches(split: str) -> BatchIterator:
        return BatchIterator(data[split][0], cfg.eval_batch_size, shuffle=False, seed=cfg.seed, rank=rank,
                             world_size=world_size, device=device, total_rows=data[split][1])

    best = checkpoint.BestCheckpointer(Path(job.out_dir) / "best") if job.restore_best else None
    resume = _resume(dmp, optimizer, job.resume_from, best) if job.resume_from else None
    epoch_hooks = [m.start_epoch for m in model.modules() if callable(getattr(m, "start_epoch", None))]

    def on_epoch_start(epoch: int) -> None:
        for hook in epoch_hooks:
            hook(epoch)
        snap = Path(job.out_dir) / f"epoch-start-{epoch}"
        if epoch in job.snapshot_epochs and not (snap / ".metadata").is_file():
            checkpoint.save(dmp, snap)

    on_checkpoint = None if sink is None else _checkpointer(dmp, optimizer, sink)
    report, step = callbacks if rank == 0 else (None, None)
    bilevel = [m for m in model.modules() if getattr(m, "bilevel", False)]
    after_step = None
    if bilevel:
        valid_it = BatchIterator(data["valid"][0], cfg.batch_size, shuffle=True, seed=cfg.seed + 1, rank=rank,
                                 world_size=world_size, device=device, total_rows=data["valid"][1],
                                 equal_batches=bool(equal))
        after_step = _validation_step(dmp, bilevel, _cycle(valid_it), world_size)
    after_step = _chain(after_step, _table_steps(model, dmp, cfg.optimizer.lr, tables_fused(cfg.optimizer, device)))
    result = fit(dmp, optimizer, objective, train_it, lambda: evaluate(dmp, batches("valid"), gather_rows),
                 cfg.model_copy(update={"progress": cfg.progress and rank == 0}), best, report, world_size, step,
                 resume, on_checkpoint, on_epoch_start, after_step, job.validate_start)
    result.step_losses = mean_across_ranks(result.step_losses)
    valid = (result.best if job.restore_best else None) or evaluate(dmp, batches("valid"), gather_rows)
    final = Path(job.out_dir) / "final"
    checkpoint.save(dmp, final)
    return WorkerResult(result, valid, plan, str(final), world_size, time.perf_counter() - start, job.resume_from,
                        {name: len(cols) for name, (cols, _) in data.items()})


def _table_steps(model, dmp, lr: float, fused: bool) -> Callable[[], None] | None:
    """Whole-table steps of modules that ask for them (OptFS's gate Adam + penalty, ``table_step``, at the
    dense ``lr``): each rank updates its own shards of the named tables after every optimizer step, with no
    communication."""
    modules = [m for m in model.modules() if callable(getattr(m, "table_step", None)) and m.stepped_tables()]
    if not modules:
        return None
    if not fused:
        raise CtrError("OptFS's gate tables need fused table optimizers, but train.optimizer.sparse: adam on CPU "
                       "keeps every table on the dense data-parallel kernel; use rowwise_adagrad, adagrad or sgd")
    shards = [(m, local_table_shards(dmp, m.stepped_tables())) for m in modules]

    def step() -> None:
        for module, local in shards:
            module.table_step(local, lr)
    return step


def _chain(*steps: Callable[[], None] | None) -> Callable[[], None] | None:
    present = [s for s in steps if s is not None]
    if len(present) <= 1:
        return present[0] if present else None

    def step() -> None:
        for s in present:
            s()
    return step


def _cycle(batches: BatchIterator):
    """Endless batches: epoch after epoch of ``batches`` (each epoch reshuffled)."""
    epoch = 0
    while True:
        batches.set_epoch(epoch)
        yield from batches
        epoch += 1


def _validation_step(dmp, modules: list, valid, world_size: int) -> Callable[[], None]:
    """A bilevel search's step on a validation batch (DNIS's α): for each module, the gradient of the batch's
    BCE (the global batch's mean, see ``Batch.loss_rows``) through that module's own search weights only,
    averaged over ranks, then the module's update. The forward runs in eval mode (no dropout, batch-norm
    statistics untouched) and outside DDP's gradient sync, so no table, dense weight or optimizer state moves."""
    bce = Objective()

    def step() -> None:
        batch = next(valid)
        dmp.eval()
        try:
            for module in modules:
                def loss() -> torch.Tensor:
                    with _no_sync(dmp):
                        return bce(dmp(batch.dense, batch.sparse), batch.labels, batch.loss_rows, batch.weights)
                grad = module.alpha_grad(loss)
                if world_size > 1:
                    dist.all_reduce(grad)
                    grad = grad / world_size
                module.apply_alpha_grad(grad)
        finally:
            dmp.train()
    return step


def _no_sync(dmp):
    """DDP's ``no_sync`` context of the dense part where DMP wrapped it in DDP, else a null context."""
    import contextlib

    from torch.nn.parallel import DistributedDataParallel

    for m in dmp.modules():
        if isinstance(m, DistributedDataParallel):
            return m.no_sync()
    return contextlib.nullcontext()


def _read_shares(splits: dict[str, str], schema, rank: int, world_size: int) -> dict:
    """Split → (this rank's rows only, the split's row count): no rank reads or holds another's rows."""
    out = {}
    for name, path in splits.items():
        total = count_encoded(path)
        lo, hi = rank_rows(total, rank, world_size)
        out[name] = (read_encoded(path, schema, rows=(lo, hi)), total)
        log.debug("rank %d reads %s rows [%d, %d) of %d", rank, name, lo, hi, total)
    return out


def _resume(dmp, optimizer, path: str, best: checkpoint.BestCheckpointer | None) -> FitResult:
    state = FitResult.from_json(checkpoint.load_resumable(dmp, optimizer, path))
    if best is None:
        return state
    best.saved = state.best_epoch > 0 and best.dir.is_dir()
    if state.best_epoch > 0 and not best.saved:
        log.warning("resuming from %s without its best-epoch state (%s missing): the final model is the "
                    "best of the epochs trained from here on, or the last one", path, best.dir)
    log.info("resumed from %s at epoch %d step %d", path, state.epochs_done + 1, state.epoch_steps)
    return state


def _checkpointer(dmp, optimizer, sink: CheckpointSink) -> Callable[[FitResult], None]:
    def on_checkpoint(state: FitResult) -> None:
        doc = state.to_json()
        doc["step_losses"] = mean_across_ranks(state.step_losses)  # collective: every rank is here
        metrics = {"epoch": state.epochs_done, "epoch_step": state.epoch_steps, "step": len(state.step_losses)}
        sink(lambda folder: checkpoint.save_resumable(dmp, optimizer, doc, folder), metrics)
    return on_checkpoint
