"""OptEmbed (Lyu et al., CIKM 2022): row pruning by learnable thresholds plus per-field dimension search.

Supernet. For a looked-up row ``e_i ∈ R^D`` of table ``t`` (one per categorical field unless fields
share a table): row mask ``m_i = H(‖e_i‖_p − θ_t)`` with one learnable threshold per table
(``mode_threshold=field``), ``p`` = 1 (``norm``), ``θ`` initialised to ``threshold_init`` (0: every row kept).
``H`` is the unit step forward (``x > 0``) and the **long-tailed straight-through estimator** backward
(:class:`LongTailedStep`): ``dH/dx ≈ 2 − 4|x|`` for ``|x| ≤ 0.4``, ``0.4`` for ``0.4 < |x| ≤ 1``, ``0`` beyond;
the gradient reaches both the row (through its norm) and ``θ``. Dimension mask (training only): for every
sample and every field independently ``k ~ Uniform(dim_choices)`` and only the first ``k`` coordinates
are kept (nested prefix masks). Output ``e_i · m_i · 1[c < k]`` (``mode_oov=zero``). In evaluation no
dimension mask applies unless :attr:`OptEmbedEmbedding.dims` is set (per-table widths: the evolutionary
search's candidates). The loss gains ``α · Σ_t exp(−θ_t)``; the thresholds are updated by their own plain
SGD at ``threshold_lr`` (no decay) through the ``ctr_optimizer`` parameter tag (``ctr.train.optim``).

Init scale (pitfall 1 of the notes): the paper's Xavier init gives row L1 norms ≈ 0.1 with ``θ = 0``;
ours is uniform with ``init_std`` (default 0.01): L1 ≈ 0.0087·D, 0.14 at D = 16, the same regime.

The phases (:mod:`ctr.search.optembed`): ``supernet`` (saves the initial weights, i.e. the start of
epoch 0) → ``evolve`` (per-table dims by validation AUC, rows fixed by the final thresholds) →
``materialise`` (compact artifact with the kept rows, mixed-width tables, per-field projections, the
initial weights gathered) → ``retrain``. Only single-id categorical fields are masked; numeric fields
(``value · v``) are not feature values and pass unmasked. Sequence fields are rejected.
"""

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.embeddings.base import FieldLayout, require_single_id_fields
from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig


class OptEmbedConfig(PlainEmbeddingConfig):
    """YAML ``embedding:`` of OptEmbed (plus the plain options ``init_std`` and ``l2``).

    Args:
        name (str): ``optembed``.
        threshold_init (float): initial θ of every table (0 in the paper).
        threshold_lr (float): plain-SGD learning rate of the thresholds (paper grid 1e-2…1e-4).
        alpha (float): α of ``α · Σ_t exp(−θ_t)`` (paper grid 1e-6…1e-4).
        norm (int): 1 (L1, the paper's default) or 2.
        supernet_epochs (int): epoch budget of the supernet (early stop with ``train.patience``).
        dim_step (int): candidate dims are ``dim_step, 2·dim_step, …, D`` (1 = the paper's 1…D).
        generations (int): evolutionary generations T.
        mutation_num (int): mutated children per generation n_m.
        crossover_num (int): crossover children per generation n_c.
        top_k (int): parents are drawn from the best ``top_k`` candidates evaluated so far.
        mutation_prob (float): per-field re-sampling probability p_m of a mutation.
        search_seed (int): seed of the evolution.
        param_budget (float | None): optional cap (not in the paper, whose fitness is AUC only): candidates
            whose compact tables (kept rows × rounded widths) hold more than this fraction of the full
            tables' parameters (all rows × D) score ``-inf`` without being evaluated. ``None``: no cap.
    """

    name: Literal["optembed"] = "optembed"
    threshold_init: float = 0.0
    threshold_lr: float = Field(1e-4, ge=0.0)
    alpha: float = Field(1e-4, ge=0.0)
    norm: Literal[1, 2] = 1
    supernet_epochs: int = Field(10, ge=1)
    dim_step: int = Field(1, ge=1)
    generations: int = Field(30, ge=1)
    mutation_num: int = Field(10, ge=0)
    crossover_num: int = Field(10, ge=0)
    top_k: int = Field(15, ge=2)
    mutation_prob: float = Field(0.1, gt=0.0, le=1.0)
    search_seed: int = 0
    param_budget: float | None = Field(None, gt=0.0, le=1.0)


class LongTailedStep(torch.autograd.Function):
    """``H(x) = 1[x > 0]`` forward; long-tailed straight-through derivative backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * long_tailed_derivative(x)


def long_tailed_derivative(x: torch.Tensor) -> torch.Tensor:
    """``2 − 4|x|`` for ``|x| ≤ 0.4``, ``0.4`` for ``0.4 < |x| ≤ 1``, ``0`` for ``|x| > 1``."""
    a = x.abs()
    return torch.where(a <= 0.4, 2 - 4 * a, torch.where(a <= 1, torch.full_like(a, 0.4), torch.zeros_like(a)))


def dim_choices(dim: int, step: int) -> list[int]:
    """Candidate widths ``step, 2·step, …`` up to ``dim`` (``dim`` itself always included)."""
    return sorted({*range(step, dim + 1, step), dim})


class OptEmbedEmbedding(PlainEmbedding):
    """Plain tables with OptEmbed's row mask (learnable thresholds) and prefix dimension masks.

    Args:
        layout (FieldLayout): schema and table sizes.
        dim (int): the supernet width ``D``.
        config (OptEmbedConfig): method options.
        device (torch.device | None): device of the tables.

    Example::

        >>> from ctr.features.schema import Schema
        >>> emb = OptEmbedEmbedding(FieldLayout(Schema(fields=[{"name": "u"}]), {"u": 10}), 8, OptEmbedConfig())
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["u"], torch.tensor([1, 2]), torch.tensor([1, 1]))
        >>> emb(torch.zeros(2, 0), kjt).shape
        torch.Size([2, 1, 8])
    """

    def __init__(self, layout: FieldLayout, dim: int, config: OptEmbedConfig,
                 device: torch.device | None = None, prefix: str = "") -> None:
        schema = layout.schema
        require_single_id_fields(layout, "OptEmbed")
        super().__init__(layout, dim, config, device, prefix)
        self.config = config
        self.tables = list(schema.tables)
        self.field_tables = {f.name: f.table_name for f in schema.sparse_fields}
        self.slot_table = torch.tensor([self.tables.index(self.field_tables[n]) for n in self.sparse_names],
                                       dtype=torch.long)  # sparse slot -> table index
        self.thresholds = nn.Parameter(torch.full((len(self.tables),), float(config.threshold_init)))
        self.thresholds.ctr_optimizer = ("sgd", config.threshold_lr)  # plain SGD, no decay (ctr.train.optim)
        self.choices = torch.tensor(dim_choices(dim, config.dim_step), dtype=torch.long)
        self.dims: dict[str, int] | None = None  # evaluation-time per-table widths (a search candidate)
        self._alpha_penalty: torch.Tensor | None = None

    def row_norms(self, vectors: torch.Tensor) -> torch.Tensor:
        """``‖·‖_p`` over the last axis (``p = config.norm``)."""
        return vectors.abs().sum(-1) if self.config.norm == 1 else vectors.norm(dim=-1)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        fields = super().forward(dense, sparse)  # [B, F, D], sparse fields first
        s = len(self.sparse_names)
        if not s:
            return fields
        vecs = fields[:, :s]  # [B, S, D]
        theta = self.thresholds[self.slot_table.to(vecs.device)]  # [S]
        rows = LongTailedStep.apply(self.row_norms(vecs) - theta)  # [B, S]
        masked = vecs * rows.unsqueeze(-1) * self.dim_mask(vecs.shape[0], vecs.device, vecs.dtype)
        if self.training and self.config.alpha > 0:
            self._alpha_penalty = self.config.alpha * torch.exp(-self.thresholds).sum()
        return torch.cat([masked, fields[:, s:]], dim=1)

    def dim_mask(self, batch: int, device, dtype) -> torch.Tensor | float:
        """``[B, S, D]`` prefix masks: sampled per sample and field in training, ``dims`` in evaluation."""
        cols = torch.arange(self.embedding_dim, device=device)
        if self.training:
            pick = torch.randint(len(self.choices), (batch, len(self.sparse_names)), device=device)
            k = self.choices.to(device)[pick]  # [B, S]
            return (cols < k.unsqueeze(-1)).to(dtype)
        if self.dims is None:
            return 1.0
        k = torch.tensor([self.dims[self.field_tables[n]] for n in self.sparse_names], device=device)  # [S]
        return (cols < k.unsqueeze(-1)).to(dtype).unsqueeze(0)

    def regularizer(self) -> torch.Tensor | None:
        base = super().regularizer()
        pen, self._alpha_penalty = self._alpha_penalty, None
        if pen is None:
            return base
        return pen if base is None else base + pen

    def keep_lists(self) -> dict[str, np.ndarray]:
        """Table → kept ids ``{i : ‖e_i‖_p > θ_t}`` from the whole (unsharded) tables."""
        weights = {cfg.name: self.ebc.embedding_bags[cfg.name].weight for cfg in self.ebc.embedding_bag_configs()}
        out = {}
        for i, table in enumerate(self.tables):
            norms = self.row_norms(weights[table].detach().float())
            out[table] = torch.nonzero(norms > self.thresholds[i].detach()).flatten().cpu().numpy().astype(np.int64)
        return out
