"""Checkpoints with ``torch.distributed.checkpoint`` (DCP): sharded save, reload at any world size.

A checkpoint written by N ranks loads into a plain unsharded model in a process without a
process group (export, serving) or into a model sharded differently.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException


@contextmanager
def _interrupts_unwrapped() -> Iterator[None]:
    """Re-raise a ``KeyboardInterrupt`` that DCP caught mid-save or mid-load as itself.

    DCP catches every ``BaseException`` of its steps and re-raises them wrapped in a
    ``CheckpointException``, so Ctrl-C (or SIGTERM turned into an interrupt by ``ctr run``) that lands
    inside a checkpoint write would otherwise end the process as a crash with a traceback instead of
    as an interrupted run.
    """
    try:
        yield
    except CheckpointException as exc:
        for failure, _trace in exc.failures.values():
            if isinstance(failure, KeyboardInterrupt):
                raise failure from None
        raise


def save(model: torch.nn.Module, path: str | Path) -> None:
    """Save ``model.state_dict()`` (sharded tensors included) under ``path`` (every rank calls this)."""
    with _interrupts_unwrapped():
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(path))


def load(model: torch.nn.Module, path: str | Path) -> None:
    """Load a DCP checkpoint into ``model`` in place, whatever its sharding (or none)."""
    state = model.state_dict()
    with _interrupts_unwrapped():
        dcp.load({"model": state}, checkpoint_id=str(path))
    model.load_state_dict(state)


class BestCheckpointer:
    """Keeps the best state seen by the training loop in a DCP folder shared by all ranks.

    Every rank must pass the same ``path``; DCP overwrites its files in place on each save.

    Args:
        path (str | Path): folder for the best checkpoint.
    """

    def __init__(self, path: str | Path) -> None:
        self.dir = Path(path)
        self.saved = False

    def save_best(self, model: torch.nn.Module) -> None:
        save(model, self.dir)
        self.saved = True

    def restore_best(self, model: torch.nn.Module) -> None:
        if self.saved:
            load(model, self.dir)


STATE_FILE = "fit_state.json"


def save_resumable(model: torch.nn.Module, optimizer, state: dict, path: str | Path) -> None:
    """Every rank: model + optimizer state (sharded, DCP), this rank's RNG, and (rank 0) the loop state."""
    import json

    import torch.distributed as dist

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with _interrupts_unwrapped():
        dcp.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, checkpoint_id=str(path))
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.save(torch.get_rng_state(), path / f"rng-{rank}.pt")
    if rank == 0:
        world = dist.get_world_size() if dist.is_initialized() else 1
        (path / STATE_FILE).write_text(json.dumps({"world_size": world, "fit": state}))


def load_resumable(model: torch.nn.Module, optimizer, path: str | Path) -> dict:
    """Restore what :func:`save_resumable` wrote, at any world size; returns the loop state.

    Tables and optimizer state are resharded to this model's plan; the RNG state is restored only
    at the same world size, so dropout continues exactly.
    """
    import json

    import torch.distributed as dist

    path = Path(path)
    if hasattr(optimizer, "init_state"):  # torch optimizers create their state lazily: make the slots to load into
        optimizer.init_state()
    model_state, optim_state = model.state_dict(), optimizer.state_dict()
    with _interrupts_unwrapped():
        dcp.load({"model": model_state, "optim": optim_state}, checkpoint_id=str(path))
    model.load_state_dict(model_state)
    optimizer.load_state_dict(optim_state)
    doc = json.loads((path / STATE_FILE).read_text())
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if doc["world_size"] == world:
        torch.set_rng_state(torch.load(path / f"rng-{rank}.pt", weights_only=True))
    return doc["fit"]


def is_resumable(path: str | Path) -> bool:
    return (Path(path) / STATE_FILE).is_file()
