"""Rank-aware mini-batches where each rank holds (and reads) only its own contiguous share of a split.

Rows are cut into **blocks** whose size depends only on the split's row count (never on the world
size): :func:`block_starts`. Rank ``r`` of ``N`` owns a contiguous run of whole blocks
(:func:`rank_rows`), so it reads one row range of the encoded Parquet file (only the row groups that
overlap it) and keeps ``~1/N`` of the split in memory.

Training order (``shuffle=True``) is stratified over blocks, so that the global batches do not
depend on the world size although no rank sees other ranks' rows: each epoch every block's rows are
permuted (seeded by ``(seed, epoch, block)``) and the row at permuted position ``p`` of block ``b``
(``n_b`` rows, ``K`` blocks) goes to global step ``(⌊p·S/n_b⌋ + ⌊b·S/K⌋) mod S`` of ``S``: every block
spreads evenly over the epoch, and the rotation ``⌊b·S/K⌋`` keeps blocks smaller than ``S`` from
all landing in the same steps. A rank's share of step
``k`` is what its own blocks contribute; the union over ranks is the same set of rows at every world
size. Shares are unequal by up to one block, so each batch carries ``loss_rows = |global batch| / N``:
the summed loss divided by it, averaged over ranks (what DMP's gradient averaging does), is the
global batch's mean loss, exactly as at world size 1.

Equal per-rank batches (``equal_batches=True``): row-wise sharded pooled tables on gloo need every
rank's batch to have the same size (their backward is an all-gather that gloo cannot do unevenly).
Every rank knows every rank's share of every step (it depends only on the split's row count), so a
rank whose share is short repeats one of its rows up to the step's largest share and gives the
repeats weight 0 (``Batch.weights``): the loss, its gradient and the set of looked-up rows are those
of the unpadded batch (only batch statistics, e.g. batch norm or Dice, see the repeats).

Evaluation order (``shuffle=False``) is the file order: at world size 1 consecutive slices of
``batch_size`` rows; with ``N`` ranks each rank cuts its own range into the same number of steps
(sharded tables need every rank in every forward), and gathering in rank order restores file order.
"""

from collections.abc import Iterator

import numpy as np
import torch

from ctr.features.tensorize import Batch, EncodedColumns

MIN_BLOCKS = 64
"""A split of at least this many rows has at least this many blocks (balance for up to ~16 ranks)."""
MAX_BLOCK_ROWS = 8192
"""Rows per block for large splits (one Parquet row group of 65,536 rows holds 8 blocks)."""


def block_starts(n: int) -> np.ndarray:
    """Start row of every block of an ``n``-row split, plus ``n`` at the end (world-size independent)."""
    size = max(1, min(MAX_BLOCK_ROWS, -(-n // MIN_BLOCKS)))
    return np.append(np.arange(0, n, size, dtype=np.int64), np.int64(n))


def rank_blocks(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Block index range ``[first, stop)`` owned by ``rank`` (contiguous, sizes differ by at most one)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    blocks = len(block_starts(n)) - 1
    return blocks * rank // world_size, blocks * (rank + 1) // world_size


def rank_rows(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Row range ``[lo, hi)`` of an ``n``-row split that ``rank`` reads and holds.

    Example::

        >>> rank_rows(1000, 0, 2), rank_rows(1000, 1, 2)
        ((0, 496), (496, 1000))
    """
    starts = block_starts(n)
    first, stop = rank_blocks(n, rank, world_size)
    return int(starts[first]), int(starts[stop])


def _block_steps(starts: np.ndarray, block: int, steps: int) -> np.ndarray:
    """Global step of each permuted position of ``block`` (see the module docstring)."""
    size = int(starts[block + 1] - starts[block])
    rotation = block * steps // (len(starts) - 1)
    return (np.arange(size, dtype=np.int64) * steps // size + rotation) % steps


def _step_rows(starts: np.ndarray, steps: int, chunk_rows: int = 1 << 20,
               blocks: tuple[int, int] | None = None) -> np.ndarray:
    """Rows of every global step over all blocks, or blocks ``[first, stop)`` (``[steps]``; over all
    blocks it sums to the split's rows), in bounded memory."""
    total = np.zeros(steps, dtype=np.int64)
    first, stop = blocks or (0, len(starts) - 1)
    parts, held = [], 0
    for b in range(first, stop):
        parts.append(_block_steps(starts, b, steps))
        held += len(parts[-1])
        if held >= chunk_rows or b == stop - 1:
            total += np.bincount(np.concatenate(parts), minlength=steps)
            parts, held = [], 0
    return total


class BatchIterator:
    """Iterate one epoch of :class:`~ctr.features.tensorize.Batch` es for this rank.

    Args:
        columns (EncodedColumns): the whole split, or (with ``total_rows``) only this rank's rows
            ``rank_rows(total_rows, rank, world_size)`` as read by ``read_encoded(..., rows=...)``.
        batch_size (int): rows per **global** batch (summed over ranks; the last batches of an epoch
            may be smaller: an epoch has ``⌈n / batch_size⌉`` steps of near-equal size).
        shuffle (bool): stratified shuffle of every epoch (seeded by ``seed`` and the epoch), else file order.
        seed (int): permutation seed.
        rank (int): this process's rank.
        world_size (int): number of ranks.
        device (torch.device | None): move each batch there (``None``: leave it on the CPU).
        total_rows (int | None): rows of the whole split when ``columns`` holds only this rank's share.
        equal_batches (bool): pad every step's share to the step's largest share over ranks with weight-0
            repeats of a local row (see the module docstring); needs at least one row on every rank.

    Example::

        >>> import polars as pl
        >>> from ctr.features.schema import Schema
        >>> schema = Schema.model_validate({"fields": [{"name": "c"}]})
        >>> cols = EncodedColumns.from_frame(pl.DataFrame({"c": [1, 2, 3, 4, 5], "_label": [0., 1., 0., 1., 0.]}), schema)
        >>> it = BatchIterator(cols, batch_size=2, shuffle=False, seed=0, rank=1, world_size=2)
        >>> rank_rows(5, 1, 2), len(it), [b.sparse["c"].values().tolist() for b in it]
        ((2, 5), 3, [[3], [4], [5]])
    """

    def __init__(self, columns: EncodedColumns, batch_size: int, shuffle: bool, seed: int,
                 rank: int = 0, world_size: int = 1, device: torch.device | None = None,
                 total_rows: int | None = None, equal_batches: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n = len(columns) if total_rows is None else int(total_rows)
        self.lo, self.hi = rank_rows(self.n, rank, world_size)
        self.equal_batches = equal_batches and world_size > 1
        if self.equal_batches and self.hi == self.lo:
            raise ValueError(f"rank {rank} of {world_size} holds no rows of a {self.n}-row split, so it cannot pad "
                             "its batches to equal size; use fewer workers for this little data")
        self.offset = 0 if total_rows is not None else self.lo  # row lo of the split is columns[offset]
        if total_rows is not None and len(columns) != self.hi - self.lo:
            raise ValueError(f"rank {rank} of {world_size} holds rows [{self.lo}, {self.hi}) of {self.n}, "
                             f"but columns has {len(columns)} rows")
        self.columns = columns
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0
        self._global_rows: np.ndarray | None = None
        self._equal_rows: np.ndarray | None = None  # per step, the largest share over ranks (equal_batches)
        self.device = None if device is None or device.type == "cpu" else device

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the permutation of ``epoch`` (deterministic from ``seed`` and ``epoch``); the next
        iteration starts after its first ``skip`` global batches (resuming mid-epoch)."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def local_batches(self) -> Iterator[tuple[np.ndarray | slice, float | None]]:
        """Per global step: this rank's rows (indices into ``columns``) and the step's ``loss_rows``."""
        steps = len(self)
        if not self.shuffle:
            if self.world_size == 1:
                for i in range(steps):
                    yield slice(self.offset + i * self.batch_size,
                                self.offset + min((i + 1) * self.batch_size, self.n)), None
                return
            bounds = np.arange(steps + 1, dtype=np.int64) * (self.hi - self.lo) // steps + self.offset
            for i in range(steps):
                yield slice(int(bounds[i]), int(bounds[i + 1])), None
            return
        starts = block_starts(self.n)
        first, stop = rank_blocks(self.n, self.rank, self.world_size)
        rows, step_of = [], []
        for b in range(first, stop):
            size = int(starts[b + 1] - starts[b])
            perm = np.random.default_rng((self.seed, self.epoch, b)).permutation(size)
            rows.append(perm + (int(starts[b]) - self.lo + self.offset))
            step_of.append(_block_steps(starts, b, steps))
        order = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        keys = np.concatenate(step_of) if step_of else np.zeros(0, dtype=np.int64)
        order = order[np.argsort(keys, kind="stable")]
        bounds = np.concatenate([[0], np.cumsum(np.bincount(keys, minlength=steps))])
        if self._global_rows is None or len(self._global_rows) != steps:
            self._global_rows = _step_rows(starts, steps)  # epoch-independent: computed once
        global_rows = self._global_rows
        for i in range(steps):
            yield order[bounds[i]:bounds[i + 1]], float(global_rows[i]) / self.world_size

    def rank_step_rows(self, rank: int) -> np.ndarray:
        """Rows of ``rank``'s share of every step (``[len(self)]``), as :meth:`local_batches` cuts them."""
        steps = len(self)
        if self.world_size == 1:
            return np.diff(np.minimum(np.arange(steps + 1, dtype=np.int64) * self.batch_size, self.n))
        if not self.shuffle:
            lo, hi = rank_rows(self.n, rank, self.world_size)
            return np.diff(np.arange(steps + 1, dtype=np.int64) * (hi - lo) // steps)
        return _step_rows(block_starts(self.n), steps, blocks=rank_blocks(self.n, rank, self.world_size))

    def __iter__(self) -> Iterator[Batch]:
        if self.equal_batches and self._equal_rows is None:  # epoch-independent: computed once, same on every rank
            self._equal_rows = np.max([self.rank_step_rows(r) for r in range(self.world_size)], axis=0)
        target = self._equal_rows
        for i, (rows, loss_rows) in enumerate(self.local_batches()):
            if i < self.skip:
                continue
            pad = 0 if target is None else int(target[i]) - _count(rows)
            if pad:
                rows = np.asarray(rows if isinstance(rows, np.ndarray) else np.arange(rows.start, rows.stop))
                first = int(rows[0]) if len(rows) else self.offset  # a local row to repeat (weight 0)
                real = len(rows)
                rows = np.concatenate([rows, np.full(pad, first, dtype=np.int64)])
            batch = self.columns.batch(rows)
            batch.loss_rows = loss_rows
            if pad:
                batch.weights = (torch.arange(real + pad) < real).to(torch.float32)
            yield batch if self.device is None else batch.to(self.device)


def _count(rows: np.ndarray | slice) -> int:
    return rows.stop - rows.start if isinstance(rows, slice) else len(rows)
