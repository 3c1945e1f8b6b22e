"""Checkpoints with ``torch.distributed.checkpoint`` (DCP): sharded save, reload at any world size.

A checkpoint written by N ranks loads into a plain unsharded model in a process without a
process group (export, serving) or into a model sharded differently.
"""

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp


def save(model: torch.nn.Module, path: str | Path) -> None:
    """Save ``model.state_dict()`` (sharded tensors included) under ``path`` (every rank calls this)."""
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(path))


def load(model: torch.nn.Module, path: str | Path) -> None:
    """Load a DCP checkpoint into ``model`` in place, whatever its sharding (or none)."""
    state = model.state_dict()
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
