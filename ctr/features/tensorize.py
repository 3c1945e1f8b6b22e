"""Encoded rows → tensors: the :class:`Batch` every model, trainer and scorer consumes.

Encoded frame layout (written by :mod:`ctr.features.transform`, read here):
  * one ``Int64`` column per categorical field (its id; 0 = OOV),
  * one ``List(Int64)`` column per sequence field (ids, possibly empty),
  * one ``Float32`` column per numeric field (already transformed),
  * ``_label`` (Float32, absent at serving time) and ``_group`` (Int64 codes, optional).

The KJT keys are the sparse field names in schema order; numeric values form ``dense`` [B, N].
"""

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.errors import DataError
from ctr.features.schema import GROUP_COLUMN, LABEL_COLUMN, Schema

__all__ = ["GROUP_COLUMN", "LABEL_COLUMN", "Batch", "EncodedColumns"]


@dataclass
class Batch:
    """One mini-batch.

    Args:
        dense (torch.Tensor): [B, N] float32 numeric fields (N may be 0).
        sparse (KeyedJaggedTensor): ids of the sparse fields, keys in schema order.
        labels (torch.Tensor): [B] float32 0/1 labels (zeros when unknown, e.g. serving).
        groups (torch.Tensor | None): [B] int64 group codes for GAUC.
        loss_rows (float | None): what the summed training loss of this batch is divided by
            (``None``: its own size). A rank's share of a global batch uses ``|global batch| / world_size``
            so that the mean over ranks is the global batch's mean loss (``ctr.data.loader``).
        weights (torch.Tensor | None): [B] float32 per-row loss weights (``None``: all 1); 0 marks a row
            repeated only to make the ranks' batches equal (``BatchIterator(equal_batches=True)``).
    """

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: torch.Tensor
    groups: torch.Tensor | None = None
    loss_rows: float | None = None
    weights: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device) -> "Batch":
        """The same batch on ``device`` (returns ``self`` when already there)."""
        if self.labels.device == device:
            return self
        groups = None if self.groups is None else self.groups.to(device)
        weights = None if self.weights is None else self.weights.to(device)
        return Batch(self.dense.to(device), self.sparse.to(device), self.labels.to(device), groups, self.loss_rows,
                     weights)


class EncodedColumns:
    """Column arrays of an encoded split, held in memory; :meth:`batch` slices rows into a :class:`Batch`.

    Example::

        cols = EncodedColumns.from_frame(encoded_df, schema)
        batch = cols.batch(np.arange(0, 512))
    """

    def __init__(self, schema: Schema, ids: np.ndarray, seqs: dict[str, tuple[np.ndarray, np.ndarray]],
                 dense: np.ndarray, labels: np.ndarray, groups: np.ndarray | None) -> None:
        self.schema = schema
        self.ids = ids  # [N, C] int64, C = categorical (single-valued) fields
        self.seqs = seqs  # name -> (offsets [N+1], values [nnz])
        self.dense = dense  # [N, numeric] float32
        self.labels = labels  # [N] float32
        self.groups = groups  # [N] int64 or None
        self.keys = [f.name for f in schema.sparse_fields]
        self._single = [f.name for f in schema.sparse_fields if f.kind == "categorical"]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def from_frame(cls, df: pl.DataFrame, schema: Schema) -> "EncodedColumns":
        n = df.height
        single = [f.name for f in schema.sparse_fields if f.kind == "categorical"]
        ids = (df.select(single).to_numpy().astype(np.int64, copy=False) if single
               else np.zeros((n, 0), dtype=np.int64))
        seqs = {}
        for f in schema.sparse_fields:
            if f.kind == "sequence":
                col = df.get_column(f.name)
                lengths = col.list.len().fill_null(0).to_numpy().astype(np.int64)
                offsets = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(lengths, out=offsets[1:])
                values = col.explode().drop_nulls().to_numpy().astype(np.int64)
                seqs[f.name] = (offsets, values)
        _check_aligned(schema, seqs, df)
        num = [f.name for f in schema.numeric_fields]
        dense = (df.select(num).to_numpy().astype(np.float32, copy=False) if num
                 else np.zeros((n, 0), dtype=np.float32))
        labels = (df.get_column(LABEL_COLUMN).to_numpy().astype(np.float32) if LABEL_COLUMN in df.columns
                  else np.zeros(n, dtype=np.float32))
        groups = df.get_column(GROUP_COLUMN).to_numpy().astype(np.int64) if GROUP_COLUMN in df.columns else None
        return cls(schema, np.ascontiguousarray(ids), seqs, np.ascontiguousarray(dense), labels, groups)

    @classmethod
    def concat(cls, parts: list["EncodedColumns"]) -> "EncodedColumns":
        """Rows of several encoded blocks (same schema) stacked in order, e.g. to micro-batch requests."""
        if len(parts) == 1:
            return parts[0]
        schema = parts[0].schema
        seqs = {}
        for name in parts[0].seqs:
            offsets, values, base = [np.zeros(1, dtype=np.int64)], [], 0
            for p in parts:
                off, val = p.seqs[name]
                offsets.append(off[1:] + base)
                values.append(val)
                base += int(off[-1])
            seqs[name] = (np.concatenate(offsets), np.concatenate(values))
        groups = (None if any(p.groups is None for p in parts)
                  else np.concatenate([p.groups for p in parts]))
        return cls(schema, np.concatenate([p.ids for p in parts]), seqs,
                   np.concatenate([p.dense for p in parts]), np.concatenate([p.labels for p in parts]), groups)

    def batch(self, rows: np.ndarray | slice) -> Batch:
        """Rows (an index array or a slice) → :class:`Batch` with KJT values laid out key-major."""
        ids = self.ids[rows]
        b = ids.shape[0]
        parts_v = [ids.T.reshape(-1)] if ids.shape[1] else []
        parts_l = [np.ones(b * ids.shape[1], dtype=np.int64)] if ids.shape[1] else []
        for name in self.keys:
            if name in self.seqs:
                v, ln = _take_ragged(*self.seqs[name], rows, len(self))
                parts_v.append(v)
                parts_l.append(ln)
        # KJT keys must follow the value layout: single-valued first, then sequences.
        values = np.concatenate(parts_v) if parts_v else np.zeros(0, dtype=np.int64)
        lengths = np.concatenate(parts_l) if parts_l else np.zeros(0, dtype=np.int64)
        kjt = KeyedJaggedTensor(keys=self.kjt_keys, values=torch.from_numpy(values),
                                lengths=torch.from_numpy(lengths))
        groups = None if self.groups is None else torch.from_numpy(self.groups[rows])
        return Batch(torch.from_numpy(self.dense[rows]), kjt, torch.from_numpy(self.labels[rows]), groups)

    @property
    def kjt_keys(self) -> list[str]:
        return self._single + [k for k in self.keys if k in self.seqs]


def _check_aligned(schema: Schema, seqs: dict[str, tuple[np.ndarray, np.ndarray]], df: pl.DataFrame) -> None:
    """Unpooled history fields (``pooling: none``) are aligned event by event: equal lengths per row."""
    hist = [f.name for f in schema.history_fields]
    if len(hist) < 2:
        return
    first = np.diff(seqs[hist[0]][0])
    for name in hist[1:]:
        bad = np.flatnonzero(np.diff(seqs[name][0]) != first)
        if bad.size:
            row = int(bad[0])
            line = int(df["_line"][row]) if "_line" in df.columns else None
            where = f"line {line}" if line is not None else f"row {row}"
            raise DataError(f"history fields {hist[0]!r} and {name!r} must list one value per event, but {where} "
                            f"has {int(first[row])} and {int(np.diff(seqs[name][0])[row])} (ragged side features)",
                            line=line, column=name)


def _take_ragged(offsets: np.ndarray, values: np.ndarray, rows, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Values and lengths of ``rows`` of a ragged column (offsets ``[N+1]``, values ``[nnz]``), vectorised.

    Output position ``k`` of row ``r`` reads ``values[starts[r] + k]``: one ``np.repeat`` of each row's
    shift ``starts[r] - out_start[r]`` plus an ``arange`` over the output, no Python loop over rows.
    """
    if isinstance(rows, slice):
        start, stop, step = rows.indices(n)
        if step == 1:
            return values[offsets[start]:offsets[stop]], np.diff(offsets[start:stop + 1])
        rows = np.arange(start, stop, step)
    rows = np.asarray(rows, dtype=np.int64)
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=values.dtype), lengths
    out_start = np.cumsum(lengths) - lengths
    idx = np.arange(total, dtype=np.int64) + np.repeat(starts - out_start, lengths)
    return values[idx], lengths
