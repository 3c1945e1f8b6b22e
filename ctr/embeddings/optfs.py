"""OptFS (Lyu et al., WWW 2023): a learnable gate per feature value, learnt by continuation.

Search mode: the looked-up vector of value ``i`` is scaled by ``g_i = σ(τ·m_i) / σ(m_init)``; the loss
gains ``λ · Σ σ(τ·m)`` over the **whole** gate table (every table, every row — not the batch; that is
why λ is tiny, 1e-9…1e-8). τ grows geometrically per epoch: ``τ_e = final_temp^(e / (E − 1))`` for
search epoch ``e = 0 … E−1`` (τ_0 = 1, τ_{E−1} = final_temp). Ticket (retrain) mode: hard gate
``g_i = 1[m_i > 0] / σ(m_init)`` (the constant keeps the search's scale at τ = 1).

The phases (see :mod:`ctr.search`): ``search`` trains this module for ``search_epochs`` epochs and
snapshots the weights at the start of epoch ``rewind``; ``materialise`` takes the keep-list
``{i : m_i > 0}`` of the last search epoch, rewinds embeddings and dense layers to the snapshot (the
gates are the final ones, the optimiser is fresh) and folds the hard gate into the kept rows of an
ordinary compact model; ``retrain`` trains that compact model (patience-0 early stopping in the paper,
``train.patience`` here).

Gate layout. The gate table is one float per row of each embedding table, kept as a dense
``nn.Parameter`` ``[rows]`` per table (``embedding.gates.<table>``) and gathered with the same ids as
the embedding lookup (the KJT's values). It is **replicated** (data-parallel), not row-wise sharded:
a width-4 FBGEMM table (the multiple of 4 the fused kernels need) would receive gradients only through
looked-up rows, so the whole-table penalty could not reach it through the fused optimiser, and it would
cost 16 bytes per row instead of 4. Replicated gates see the exact penalty gradient, are updated by the
dense optimiser (Adam, like the paper's gate optimiser; note ``train.optimizer.weight_decay`` applies to
them too — keep it 0), and stay identical on every rank through DDP. Their memory is 4 bytes × rows
per rank: at Criteo-1TB scale this must become a row-wise sharded table with a decoupled penalty step.

Pruned values and OOV. Where a value is pruned the compact model's feature artifact drops it, so it
encodes to the OOV id 0 and reads row 0 — the OOV row, itself gated (a zero row when ``m_0 ≤ 0``). The
paper's hard-gated model reads a zero vector for a pruned value; ours reads the (gated) OOV row: a
pruned value is treated as an unknown value. :meth:`OptFSEmbedding.ticket_remap` gives the hard-gated
model with exactly these semantics (pruned ids → 0 before the lookup), which the compact model equals.

Only single-id categorical fields are gated (OptFS's setting); numeric fields (value × vector) are not
feature values and pass ungated. Sequence and history fields are rejected.
"""

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.embeddings.base import FieldLayout, require_single_id_fields
from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig


class OptFSConfig(PlainEmbeddingConfig):
    """YAML ``embedding:`` of OptFS (plus the plain options ``init_std`` and ``l2``).

    Args:
        name (str): ``optfs``.
        mask_init (float): initial gate parameter m (0.5 in the paper's code).
        final_temp (float): temperature reached in the last search epoch (paper grid 100…10000).
        search_epochs (int): search epochs E (the retrain phase uses ``train.epochs``).
        rewind (int): 0-based search epoch whose starting weights the retrain starts from (0 = the init).
        penalty (float): λ of ``λ · Σ_all gates σ(τ·m)`` (paper grid 1e-9…1e-8).
        mode (str): ``search`` (soft gates, set by the search phase) or ``ticket`` (hard gates).
    """

    name: Literal["optfs"] = "optfs"
    mask_init: float = 0.5
    final_temp: float = Field(200.0, ge=1.0)
    search_epochs: int = Field(5, ge=1)
    rewind: int = Field(1, ge=0)
    penalty: float = Field(1e-8, ge=0.0)
    mode: Literal["search", "ticket"] = "search"


def temperature(epoch: int, search_epochs: int, final_temp: float) -> float:
    """τ at the start of 0-based search epoch ``epoch``: ``final_temp^(e / (E − 1))``, capped at ``final_temp``.

    Example::

        >>> [round(temperature(e, 3, 100.0), 6) for e in range(4)]
        [1.0, 10.0, 100.0, 100.0]
    """
    if search_epochs <= 1:
        return 1.0 if epoch == 0 else float(final_temp)
    return float(final_temp) ** (min(epoch, search_epochs - 1) / (search_epochs - 1))


class OptFSEmbedding(PlainEmbedding):
    """Plain tables plus one gate per row; ``[B, F, D]`` with the sparse fields' vectors gated.

    Args:
        layout (FieldLayout): schema and table sizes.
        dim (int): embedding width (a multiple of 4).
        config (OptFSConfig): method options.
        device (torch.device | None): device of the embedding tables (gates are always CPU/dense).

    Example::

        >>> from ctr.features.schema import Schema
        >>> emb = OptFSEmbedding(FieldLayout(Schema(fields=[{"name": "u"}]), {"u": 10}), 8, OptFSConfig())
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["u"], torch.tensor([1, 2]), torch.tensor([1, 1]))
        >>> emb(torch.zeros(2, 0), kjt).shape
        torch.Size([2, 1, 8])
    """

    def __init__(self, layout: FieldLayout, dim: int, config: OptFSConfig,
                 device: torch.device | None = None, prefix: str = "") -> None:
        schema = layout.schema
        require_single_id_fields(layout, "OptFS")
        super().__init__(layout, dim, config, device, prefix)
        self.config = config
        self.field_tables = {f.name: f.table_name for f in schema.sparse_fields}
        self.gates = nn.ParameterDict({t: nn.Parameter(torch.full((layout.table_sizes[t],), float(config.mask_init)))
                                       for t in schema.tables})
        self.scale = 1.0 / (1.0 / (1.0 + math.exp(-config.mask_init)))  # 1 / σ(m_init)
        self.temperature = 1.0

    def start_epoch(self, epoch: int) -> None:
        """Training-loop hook: set τ for 0-based epoch ``epoch`` of the search."""
        cfg = self.config
        self.temperature = temperature(epoch, cfg.search_epochs, cfg.final_temp)

    def gate(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        """Gate values of ``ids`` of ``table`` in the current mode."""
        m = self.gates[table][ids]
        if self.config.mode == "ticket":
            return (m > 0).to(m.dtype) * self.scale
        return torch.sigmoid(self.temperature * m) * self.scale

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        fields = super().forward(dense, sparse)  # [B, F, D], sparse fields first
        if not self.sparse_names:
            return fields
        jts = sparse.to_dict()
        gates = torch.stack([self.gate(self.field_tables[n], jts[n].values()) for n in self.sparse_names], dim=1)
        gated = fields[:, :len(self.sparse_names)] * gates.unsqueeze(-1)  # [B, S, D]
        return torch.cat([gated, fields[:, len(self.sparse_names):]], dim=1)

    def penalty(self) -> torch.Tensor:
        """``λ · Σ_tables Σ_rows σ(τ·m)`` over the whole gate table."""
        total = sum(torch.sigmoid(self.temperature * g).sum() for g in self.gates.values())
        return self.config.penalty * total

    def regularizer(self) -> torch.Tensor | None:
        base = super().regularizer()
        if not self.training or self.config.mode != "search" or self.config.penalty == 0:
            return base
        pen = self.penalty()
        return pen if base is None else base + pen

    def keep_lists(self) -> dict[str, np.ndarray]:
        """Table → kept ids ``{i : m_i > 0}`` (sign of m, never σ > 0.5 of anything)."""
        return {t: torch.nonzero(g.detach() > 0).flatten().cpu().numpy().astype(np.int64)
                for t, g in self.gates.items()}

    def ticket_remap(self, sparse: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """``sparse`` with pruned ids (``m ≤ 0``) replaced by the OOV id 0: the hard-gated model's input."""
        jts = sparse.to_dict()
        values = []
        for key in sparse.keys():
            ids = jts[key].values()
            table = self.field_tables.get(key)
            values.append(ids if table is None else torch.where(self.gates[table].detach()[ids] > 0, ids,
                                                                 torch.zeros_like(ids)))
        return KeyedJaggedTensor.from_lengths_sync(sparse.keys(), torch.cat(values), sparse.lengths())
