"""DNIS (Cheng, Shen, Huang, arXiv 2006.04466): differentiable per-block embedding dimensions.

Feature blocks. Every id of every table is ranked by its train count (the artifact's per-id counts)
across all tables; the ranking is cut into blocks of ``blocks`` (fractions of all ids, head first: the
most frequent ids form block 0). Vocabulary ids are already in descending count order within a table
(``ctr.features.vocab``; ties by value), and ties across tables are broken by table then id, so a
block is a **contiguous id range of each table**: block ``b`` of table ``t`` is ids
``[starts_t[b], starts_t[b+1])`` (:func:`frequency_blocks`). The OOV id 0 sits in block 0 of its table
(it stands for every rare value at once, so it is one of the most used rows).

Soft selection. ``α ∈ [0, 1]^{b × G}`` (``G = dim_groups``, each group ``D / G`` columns; ``G = D`` is the
paper scripts' 64 groups of 1 at ``D = 64``), all ones at the start. A looked-up row ``e_i`` of a block-``b``
id becomes ``e_i ⊙ expand(α_b)``. Numeric fields (``value · v``) are not feature values and pass as is.

Phases (:mod:`ctr.search.dnis`):

1. ``warm`` — train every weight with α fixed at 1 (``mode: warm``), best validation epoch kept;
2. ``search`` (``mode: search``) — alternating steps: a **train batch** updates only the embedding
   tables (field and first-order rows, numeric vectors); the dense network is frozen (the paper's code
   trains only parameters named ``feature``; ``freeze_dense: false`` lets it train too), and α, a buffer,
   is not touched; then a **validation batch** computes ``BCE + l1 · Σ|α|``, takes ``∂/∂α`` only
   (:meth:`DNISEmbedding.alpha_grad`: no table row is updated by it), divides each block row of the
   gradient by its mean absolute value (:func:`normalise_rows`, on by default: without it the head
   block's gradient dominates), steps α by plain SGD (``alpha_lr``) and clamps it to ``[0, 1]``
   (:meth:`DNISEmbedding.apply_alpha_grad`). The training worker drives both steps
   (``ctr.distributed.worker``: it averages the α gradient over ranks; α is replicated);
3. ``materialise`` — magnitude pruning of α turned into dense per-block widths (multiples of 4): see
   :func:`ctr.search.dnis.prune_alpha`; each (table, block) becomes its own TorchRec table of its block's
   width, projected to ``D`` (``embedding: block_dim``, :mod:`ctr.embeddings.block_dim`);
4. ``retrain`` — the mixed-dimension model from the searched weights.

Reported parameter count: the materialised (dense) tables, rows × width summed, first-order tables
included (``embedding_params``), not the non-zeros of a sparse table.
"""

from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.embeddings.base import FieldLayout, require_single_id_fields
from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig
from ctr.errors import ConfigError


class DNISConfig(PlainEmbeddingConfig):
    """YAML ``embedding:`` of DNIS (plus the plain options ``init_std`` and ``l2``; ``mba_l2`` is not offered: the
    mixed-dimension model has no per-id rows of one table to scale).

    Args:
        name (str): ``dnis``.
        blocks (list[float]): block sizes as fractions of all ids ranked by train count, head first
            (normalised to sum 1). Default: 1%, 4%, 15%, 30%, 50%.
        dim_groups (int | None): ``G``, column groups of α per block (``None`` = ``D``: one α per column).
        warm_epochs (int): epoch budget of the warm start (early stop with ``train.patience``).
        search_epochs (int): epoch budget of the alternating search (early stop with ``train.patience``;
            the best validation epoch's embeddings and α are kept).
        search_sparse_lr (float | None): the tables' learning rate in the search (``None``: ``train``'s); the
            search starts a fresh table optimiser from the warm weights, so a smaller rate keeps it from
            overfitting small data.
        alpha_lr (float): plain-SGD learning rate of α (paper 0.01).
        l1 (float): ``l1 · Σ|α|`` in the validation loss (paper 1e-5).
        grad_norm (bool): divide each block row of α's gradient by its mean absolute value.
        freeze_dense (bool): freeze the dense network during the search (the paper's code does).
        param_ratio (float): fraction of the full field tables' parameters (rows × D) the pruned tables may
            hold; the smallest α entries go first (:func:`ctr.search.dnis.prune_alpha`).
        mode (str): ``warm`` (α not applied), ``search`` (α applied and searched); set by the phases.
    """

    name: Literal["dnis"] = "dnis"
    blocks: list[float] = [0.01, 0.04, 0.15, 0.3, 0.5]
    dim_groups: int | None = Field(None, ge=1)
    warm_epochs: int = Field(10, ge=1)
    search_epochs: int = Field(5, ge=1)
    search_sparse_lr: float | None = Field(None, gt=0.0)
    alpha_lr: float = Field(0.01, gt=0.0)
    l1: float = Field(1e-5, ge=0.0)
    grad_norm: bool = True
    freeze_dense: bool = True
    param_ratio: float = Field(0.5, gt=0.0, le=1.0)
    mode: Literal["warm", "search"] = "warm"

    @field_validator("mba_l2")
    @classmethod
    def _no_mba(cls, v: float) -> float:
        if v:
            raise ValueError("DNIS does not support mba_l2; use l2")
        return v

    @field_validator("blocks")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not v or any(x <= 0 for x in v):
            raise ValueError("blocks must be a non-empty list of positive fractions")
        return v


def frequency_blocks(layout: FieldLayout, fractions: list[float]) -> dict[str, list[int]]:
    """Table → ``b + 1`` block starts (ids): block ``k`` is ids ``[starts[k], starts[k + 1])`` of the table.

    All ids ``≥ 1`` of all tables are ranked by train count (descending; ties by table order, then id) and
    the ranking is cut at the cumulative ``fractions``; id 0 (OOV) joins block 0. Because ids are in
    descending count order within a table, every block is a contiguous id range (possibly empty).

    Example::

        >>> from ctr.features.schema import Schema
        >>> layout = FieldLayout(Schema(fields=[{"name": "u"}, {"name": "v"}]), {"u": 4, "v": 3},
        ...                      {"u": [0, 9, 5, 1], "v": [2, 7, 3]})
        >>> frequency_blocks(layout, [0.4, 0.6])   # ranked: u1 9, v1 7, u2 5, v2 3, u3 1
        {'u': [0, 2, 4], 'v': [0, 2, 3]}
    """
    if layout.table_counts is None:
        raise ConfigError("DNIS needs per-id train counts (the feature artifact's vocabulary counts); fix: build "
                          "the layout from a prepared artifact", "embedding.name")
    tables = list(layout.schema.tables)
    counts = [np.asarray(layout.table_counts[t], dtype=np.int64)[1:] for t in tables]
    for t, c in zip(tables, counts, strict=True):
        if np.any(np.diff(c) > 0):  # a vocabulary artifact numbers ids by descending count
            raise ConfigError(f"table {t!r}: ids are not in descending train-count order, so frequency blocks "
                              "are not id ranges; fix: use a vocabulary encoding (not hashed ids)", "embedding.name")
    total = sum(len(c) for c in counts)
    frac = np.asarray(fractions, dtype=np.float64) / float(np.sum(fractions))
    cuts = np.round(np.cumsum(frac) * total).astype(np.int64)  # rank < cuts[k] -> block <= k
    cuts[-1] = total
    key_count = np.concatenate(counts) if total else np.zeros(0, np.int64)
    key_table = np.concatenate([np.full(len(c), i) for i, c in enumerate(counts)]) if total else key_count
    key_id = np.concatenate([np.arange(1, len(c) + 1) for c in counts]) if total else key_count
    order = np.lexsort((key_id, key_table, -key_count))  # by count desc, then table, then id
    block = np.empty(total, dtype=np.int64)
    block[order] = np.searchsorted(cuts, np.arange(total), side="right")
    out = {}
    start = 0
    for i, t in enumerate(tables):
        mine = block[start:start + len(counts[i])]  # ids 1..V_t in id order: non-decreasing blocks
        start += len(counts[i])
        edges = [0] + [1 + int(np.searchsorted(mine, k, side="left")) for k in range(1, len(frac))] + \
            [len(counts[i]) + 1]
        out[t] = edges
    return out


def normalise_rows(grad: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each row divided by its mean absolute value (rows of zeros stay zero).

    Example::

        >>> normalise_rows(torch.tensor([[1.0, -3.0], [0.0, 0.0]])).tolist()
        [[0.5, -1.5], [0.0, 0.0]]
    """
    scale = grad.abs().mean(dim=-1, keepdim=True)
    return grad / scale.clamp(min=eps)


class DNISEmbedding(PlainEmbedding):
    """Plain tables whose sparse field vectors are scaled by their frequency block's α row.

    Args:
        layout (FieldLayout): schema, table sizes and per-id train counts.
        dim (int): the model width ``D``.
        config (DNISConfig): method options.
        device (torch.device | None): device of the tables.

    Example::

        >>> from ctr.features.schema import Schema
        >>> layout = FieldLayout(Schema(fields=[{"name": "u"}]), {"u": 10}, {"u": [0] + list(range(9, 0, -1))})
        >>> emb = DNISEmbedding(layout, 8, DNISConfig(blocks=[0.5, 0.5], dim_groups=4))
        >>> emb.alpha.shape, emb.block_starts["u"]
        (torch.Size([2, 4]), [0, 6, 10])
    """

    def __init__(self, layout: FieldLayout, dim: int, config: DNISConfig,
                 device: torch.device | None = None, prefix: str = "") -> None:
        require_single_id_fields(layout, "DNIS")
        super().__init__(layout, dim, config, device, prefix)
        groups = config.dim_groups or dim
        if dim % groups:
            raise ConfigError(f"dim_groups {groups} must divide embedding_dim {dim}", "embedding.dim_groups")
        self.config = config
        self.groups = groups
        self.block_starts = frequency_blocks(layout, config.blocks)
        self.num_blocks = len(config.blocks)
        self.field_tables = {f.name: f.table_name for f in layout.schema.sparse_fields}
        self.register_buffer("alpha", torch.ones(self.num_blocks, groups))  # in the checkpoint
        for t, starts in self.block_starts.items():  # derived from the counts: not saved
            self.register_buffer(f"starts_{_safe(t)}", torch.tensor(starts[1:-1], dtype=torch.long), persistent=False)
        self._alpha_leaf: torch.Tensor | None = None  # set by alpha_grad: the α that receives a gradient
        self.prune_mask: torch.Tensor | None = None  # [b, D] 0/1 columns kept by pruning (None: all)

    def block_of(self, field: str, ids: torch.Tensor) -> torch.Tensor:
        """Block index of each id of ``field``'s table."""
        starts = getattr(self, f"starts_{_safe(self.field_tables[field])}")
        return torch.bucketize(ids, starts.to(ids.device), right=True)

    def column_alpha(self, alpha: torch.Tensor | None = None) -> torch.Tensor:
        """``[b, D]``: α expanded from ``G`` groups to ``D`` columns (times ``prune_mask`` when set: the pruned,
        α-masked model that the materialised mixed-dimension model reproduces)."""
        alpha = self.alpha if alpha is None else alpha
        cols = alpha.repeat_interleave(self.embedding_dim // self.groups, dim=1)
        return cols if self.prune_mask is None else cols * self.prune_mask.to(cols)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        fields = super().forward(dense, sparse)  # [B, F, D], sparse fields first
        if self.config.mode == "warm" and self._alpha_leaf is None and self.prune_mask is None:
            return fields
        alpha = self.column_alpha(self._alpha_leaf)  # [b, D]
        blocks = torch.stack([self.block_of(n, sparse[n].values()) for n in self.sparse_names], dim=1)  # [B, S]
        s = len(self.sparse_names)
        return torch.cat([fields[:, :s] * alpha.to(fields.dtype)[blocks], fields[:, s:]], dim=1)

    def alpha_grad(self, loss_fn) -> torch.Tensor:
        """``∂(loss_fn() + l1·Σ|α|)/∂α`` (``[b, G]``) through this module's α only: no table row, dense weight
        or optimizer state changes (``torch.autograd.grad`` walks only the path to α). ``loss_fn`` runs the
        forward (of the model holding this module) on a validation batch and returns its loss."""
        leaf = self.alpha.detach().clone().requires_grad_(True)
        self._alpha_leaf = leaf
        try:
            loss = loss_fn() + self.config.l1 * leaf.abs().sum()
            (grad,) = torch.autograd.grad(loss, [leaf])
        finally:
            self._alpha_leaf = None
        return grad

    def apply_alpha_grad(self, grad: torch.Tensor) -> None:
        """Normalise per block row (``grad_norm``), one SGD step at ``alpha_lr``, clamp to ``[0, 1]``."""
        if self.config.grad_norm:
            grad = normalise_rows(grad)
        with torch.no_grad():
            self.alpha.sub_(self.config.alpha_lr * grad.to(self.alpha.device)).clamp_(0.0, 1.0)

    @property
    def bilevel(self) -> bool:
        """Whether the training loop should interleave validation α steps (``mode: search``)."""
        return self.config.mode == "search"

    def block_rows(self) -> dict[str, list[int]]:
        """Table → rows in each block."""
        return {t: list(np.diff(s).tolist()) for t, s in self.block_starts.items()}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)
