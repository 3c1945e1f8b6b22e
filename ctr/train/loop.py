"""The epoch loop: a plain function that knows nothing about Ray or process groups.

``fit`` trains with early stopping on a validation metric, keeps the best state through a
checkpointer and restores it at the end. Distributed runners wrap it (they supply batches for
their rank, a ``validate`` that gathers across ranks, and ``on_report``).
"""

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from tqdm.auto import tqdm

from ctr.config import StrictConfig
from ctr.features.tensorize import Batch
from ctr.train.objective import Objective
from ctr.train.optim import OptimConfig

log = logging.getLogger("ctr.train")


class TrainConfig(StrictConfig):
    """Args:
        epochs (int): maximum epochs.
        batch_size (int): global batch size (split across ranks).
        eval_batch_size (int): batch size for validation/test.
        optimizer (OptimConfig): dense and table optimizers.
        patience (int): epochs without improvement of ``monitor`` before stopping.
        monitor (str): the validation quantity early stopping and best-epoch selection follow:
            ``auc_logloss`` (AUC − logloss, higher is better; the default: AUC alone keeps training while
            the probabilities degrade, and a CTR model's scores are used as probabilities), ``auc``
            (higher is better) or ``logloss`` (lower is better).
        seed (int): seed for init and shuffling.
        max_steps_per_epoch (int | None): cap steps per epoch (smoke runs, benchmarks).
        progress (bool): show a tqdm progress bar.
        checkpoint_every (int | None): also write a resumable checkpoint every this many global steps
            (one is always written after each epoch when the runner keeps checkpoints).
        precision (str): ``fp32``, or ``bf16``: the training forward runs under ``torch.autocast`` with
            bfloat16, so the dense layers' matmuls take bfloat16 inputs (about 3× sgemm's rate where the CPU
            has AVX512-BF16 or AMX). Weights, gradients, optimiser state, embedding tables and the loss stay
            float32; validation, test and serving run in float32.
    """

    epochs: int = 10
    batch_size: int = 4096
    eval_batch_size: int = 16384
    optimizer: OptimConfig = OptimConfig()
    patience: int = 2
    monitor: Literal["auc_logloss", "auc", "logloss"] = "auc_logloss"
    seed: int = 2021
    max_steps_per_epoch: int | None = None
    progress: bool = True
    checkpoint_every: int | None = None
    precision: Literal["fp32", "bf16"] = "fp32"


class Checkpointer(Protocol):
    def save_best(self, model: torch.nn.Module) -> None: ...
    def restore_best(self, model: torch.nn.Module) -> None: ...


class Batches(Protocol):
    def set_epoch(self, epoch: int, skip: int = 0) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self): ...


@dataclass
class FitResult:
    """What :func:`fit` learned: per-epoch history, per-step losses, the best epoch and its metrics."""

    history: list[dict] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best: dict = field(default_factory=dict)
    stopped_early: bool = False
    train_rows: int = 0
    train_seconds: float = 0.0
    epochs_done: int = 0
    epoch_steps: int = 0
    epoch_rows: int = 0
    epoch_seconds: float = 0.0
    best_value: float | None = None
    bad_epochs: int = 0

    def to_json(self) -> dict:
        """Everything needed to resume (JSON-safe)."""
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, doc: dict) -> "FitResult":
        return cls(**doc)


def monitored(monitor: str, metrics: dict[str, float]) -> float:
    """The value of ``monitor`` in validation ``metrics`` (``auc_logloss`` = AUC − logloss)."""
    if monitor == "auc_logloss":
        return metrics["auc"] - metrics["logloss"]
    return metrics[monitor]


def _better(monitor: str, new: float, old: float | None) -> bool:
    if math.isnan(new):
        return False
    if old is None:
        return True
    return new < old if monitor == "logloss" else new > old


StepCallback = Callable[[int, float], None]


def training_precision(cfg: TrainConfig, device_type: str) -> torch.autocast:
    """The autocast context of a training forward: bfloat16 with ``precision: bf16``, else a no-op."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def training_loss(model, objective: Objective, batch: Batch, cfg: TrainConfig) -> torch.Tensor:
    """One training step's loss: the forward at ``cfg.precision``, the loss in float32."""
    with training_precision(cfg, batch.dense.device.type):
        logits = model(batch.dense, batch.sparse)
    return objective(logits.float(), batch.labels, batch.loss_rows, batch.weights)


def _train_epoch(model, optimizer, objective: Objective, batches: Iterable[Batch], cfg: TrainConfig,
                 desc: str, show: bool, on_step: StepCallback | None, result: FitResult,
                 on_checkpoint: Callable[[FitResult], None] | None,
                 after_step: Callable[[], None] | None = None) -> None:
    """Train the rest of the current epoch (``result.epoch_steps`` already done), updating ``result``."""
    model.train()
    total = len(batches) if cfg.max_steps_per_epoch is None else min(len(batches), cfg.max_steps_per_epoch)
    bar = tqdm(total=total, initial=result.epoch_steps, desc=desc, disable=not show, leave=False, unit="batch")
    start = time.perf_counter() - result.epoch_seconds
    for step, batch in enumerate(batches, start=result.epoch_steps):
        if step >= total:
            break
        loss = training_loss(model, objective, batch, cfg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        result.step_losses.append(float(loss.detach()))
        result.epoch_rows += batch.size
        result.epoch_steps = step + 1
        result.epoch_seconds = time.perf_counter() - start
        if on_step is not None:
            on_step(len(result.step_losses), result.step_losses[-1])
        if on_checkpoint is not None and cfg.checkpoint_every and len(result.step_losses) % cfg.checkpoint_every == 0 \
                and step + 1 < total:
            on_checkpoint(result)
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{result.step_losses[-1]:.4f}")
    bar.close()
    result.epoch_seconds = time.perf_counter() - start


def fit(model: torch.nn.Module, optimizer, objective: Objective, train_batches: Batches,
        validate: Callable[[], dict[str, float]], cfg: TrainConfig, checkpointer: Checkpointer | None = None,
        on_report: Callable[[dict], None] | None = None, world_size: int = 1,
        on_step: StepCallback | None = None, resume: FitResult | None = None,
        on_checkpoint: Callable[[FitResult], None] | None = None,
        on_epoch_start: Callable[[int], None] | None = None,
        after_step: Callable[[], None] | None = None, validate_start: bool = False) -> FitResult:
    """Train for up to ``cfg.epochs`` epochs with early stopping; restore the best state at the end.

    ``validate`` returns metrics on the validation split (all ranks); ``on_report`` receives each
    epoch's record (epoch, train_loss, valid_*, examples_per_s) as soon as the epoch is validated;
    ``on_step(global_step, loss)`` receives every training step's loss (this rank's). Both are plain
    callables: the caller decides where the numbers go (MLflow, Ray reports, a queue).
    ``world_size`` only scales the throughput figure (each rank sees 1/world_size of every global batch).
    ``on_checkpoint(state)`` is called after each epoch and every ``cfg.checkpoint_every`` steps with
    the resumable state; ``resume`` (such a state, model and optimizer already restored) continues
    mid-epoch exactly where it was taken. ``on_epoch_start(epoch)`` (0-based) runs before each epoch's
    first step, also when a resumed epoch continues (search methods set their temperature there).
    ``after_step()`` runs after every optimizer step (a bilevel search's validation step on its own weights).
    ``validate_start``: the starting weights compete as "epoch 0" (a model that starts trained, e.g. a search's
    materialised compact model, is kept as it is when no epoch of further training beats it).
    """
    result = resume if resume is not None else FitResult()
    if validate_start and resume is None:
        metrics = validate()
        result.best_value, result.best_epoch, result.best = monitored(cfg.monitor, metrics), 0, dict(metrics)
        log.info("start: valid_auc %.5f valid_logloss %.5f (epoch 0)", metrics["auc"], metrics["logloss"])
        if checkpointer is not None:
            checkpointer.save_best(model)
    while result.epochs_done < cfg.epochs and not result.stopped_early:
        epoch = result.epochs_done
        train_batches.set_epoch(epoch, skip=result.epoch_steps)
        epoch_start = len(result.step_losses) - result.epoch_steps
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        _train_epoch(model, optimizer, objective, train_batches, cfg, f"epoch {epoch + 1}/{cfg.epochs}",
                     cfg.progress, on_step, result, on_checkpoint, after_step)
        _end_epoch(model, result, validate(), result.step_losses[epoch_start:], cfg, checkpointer,
                   on_report, world_size)
        if on_checkpoint is not None:
            on_checkpoint(result)
    if checkpointer is not None and result.best_epoch >= 0:
        checkpointer.restore_best(model)
    return result


def _end_epoch(model, result: FitResult, metrics: dict, losses: list[float], cfg: TrainConfig,
               checkpointer, on_report, world_size: int) -> None:
    rows, seconds = result.epoch_rows, result.epoch_seconds
    epoch = result.epochs_done + 1
    record = {"epoch": epoch, "train_loss": sum(losses) / max(len(losses), 1),
              "examples_per_s": rows * world_size / max(seconds, 1e-9), "epoch_seconds": seconds}
    record.update({f"valid_{k}": v for k, v in metrics.items()})
    result.history.append(record)
    result.train_rows += rows * world_size
    result.train_seconds += seconds
    result.epochs_done, result.epoch_steps, result.epoch_rows, result.epoch_seconds = epoch, 0, 0, 0.0
    value = monitored(cfg.monitor, metrics)
    improved = _better(cfg.monitor, value, result.best_value)
    log.info("epoch %d: train_loss %.5f valid_auc %.5f valid_logloss %.5f (%.0f examples/s)%s",
             epoch, record["train_loss"], metrics["auc"], metrics["logloss"],
             record["examples_per_s"], " *best*" if improved else "")
    if on_report is not None:
        on_report(record)
    if improved:
        result.best_value, result.bad_epochs = value, 0
        result.best_epoch, result.best = epoch, dict(metrics)
        if checkpointer is not None:
            checkpointer.save_best(model)
    else:
        result.bad_epochs += 1
        if result.bad_epochs > cfg.patience:
            result.stopped_early = True
            log.info("early stop after epoch %d: valid %s did not improve for %d epochs",
                     epoch, cfg.monitor, result.bad_epochs)
