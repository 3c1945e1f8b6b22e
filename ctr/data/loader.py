"""Rank-aware mini-batches over an encoded split held in memory.

Every rank walks the same sequence of **global** batches (one seeded permutation per epoch) and
takes its contiguous share of each (``np.array_split(global_rows, world_size)[rank]``), so the
rows seen per global step do not depend on the world size and all ranks take the same number of
steps (collectives stay in lockstep).
"""

from collections.abc import Iterator

import numpy as np
import torch

from ctr.features.tensorize import Batch, EncodedColumns


class BatchIterator:
    """Iterate one epoch of :class:`~ctr.features.tensorize.Batch` es for this rank.

    Args:
        columns (EncodedColumns): the encoded split.
        batch_size (int): rows per **global** batch (summed over ranks).
        shuffle (bool): permute rows each epoch (seeded by ``seed`` and the epoch).
        seed (int): permutation seed.
        rank (int): this process's rank.
        world_size (int): number of ranks.
        drop_last (bool): drop a final global batch smaller than ``batch_size``.
        device (torch.device | None): move each batch there (``None``: leave it on the CPU).

    Example::

        >>> import polars as pl
        >>> from ctr.features.schema import Schema
        >>> schema = Schema.model_validate({"fields": [{"name": "c"}]})
        >>> cols = EncodedColumns.from_frame(pl.DataFrame({"c": [1, 2, 3, 4, 5], "_label": [0., 1., 0., 1., 0.]}), schema)
        >>> it = BatchIterator(cols, batch_size=2, shuffle=False, seed=0, rank=1, world_size=2)
        >>> len(it), [b.labels.tolist() for b in it]
        (3, [[1.0], [1.0], []])
    """

    def __init__(self, columns: EncodedColumns, batch_size: int, shuffle: bool, seed: int,
                 rank: int = 0, world_size: int = 1, drop_last: bool = False,
                 device: torch.device | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.columns = columns
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.skip = 0, 0
        self.device = None if device is None or device.type == "cpu" else device

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the permutation of ``epoch`` (deterministic from ``seed`` and ``epoch``); the next
        iteration starts after its first ``skip`` global batches (resuming mid-epoch)."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        n = len(self.columns)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def global_batches(self) -> Iterator[np.ndarray]:
        """Row indices of each global batch of the current epoch (identical on every rank)."""
        n = len(self.columns)
        order = np.random.default_rng((self.seed, self.epoch)).permutation(n) if self.shuffle else None
        for i in range(len(self)):
            start, stop = i * self.batch_size, min((i + 1) * self.batch_size, n)
            yield order[start:stop] if order is not None else np.arange(start, stop)

    def __iter__(self) -> Iterator[Batch]:
        for i, rows in enumerate(self.global_batches()):
            if i < self.skip:
                continue
            local = np.array_split(rows, self.world_size)[self.rank]
            if self.shuffle or len(local) == 0:
                batch = self.columns.batch(local)
            else:
                batch = self.columns.batch(slice(int(local[0]), int(local[-1]) + 1))
            yield batch if self.device is None else batch.to(self.device)
