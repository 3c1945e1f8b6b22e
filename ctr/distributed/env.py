"""Gloo process-group set-up and the teardown order that avoids exit-time aborts (stack.md §2b)."""

import gc
import logging
import os

import torch.distributed as dist

log = logging.getLogger("ctr.distributed")


def init_process_group(rank: int = 0, world_size: int = 1, init_method: str | None = None) -> bool:
    """Start a gloo process group unless one exists (Ray Train creates its own).

    World size 1 without an ``init_method`` uses an in-memory store: no port, no environment.
    Returns ``True`` if this call created the group (and so should destroy it).
    """
    if dist.is_initialized():
        return False
    if world_size == 1 and init_method is None and "MASTER_ADDR" not in os.environ:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    else:
        dist.init_process_group("gloo", init_method=init_method or "env://", rank=rank, world_size=world_size)
    return True


def destroy_process_group() -> None:
    """Tear down after the caller dropped its DMP/optimizer references: gc → barrier → destroy."""
    if not dist.is_initialized():
        return
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
