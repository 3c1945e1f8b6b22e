"""Plain embedding: one table per sparse field (or per shared ``table``), numeric fields as value × vector."""

import torch
from pydantic import Field
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.config import StrictConfig
from ctr.embeddings.base import FieldEmbedding, FieldLayout
from ctr.embeddings.tables import table_configs


class PlainEmbeddingConfig(StrictConfig):
    """Args:
        name (str): always ``plain``.
        init_std (float | None): embedding init scale (uniform with this std); ``None`` = TorchRec default.
        l2 (float): in-batch L2 penalty ``l2 · mean_B Σ_F ‖e‖²`` on the looked-up sparse field vectors,
            added to the loss. It reaches only rows used in the batch (through the fused backward), so
            it stays sparse; FBGEMM's CPU row-wise Adagrad ignores its own ``weight_decay``.
    """

    name: str = "plain"
    init_std: float | None = 0.01
    l2: float = Field(0.0, ge=0.0)


class NumericFieldEmbedding(nn.Module):
    """Numeric field m → ``value_m · v_m`` (one learned vector per field, AutoInt's convention).

    Args:
        num_numeric (int): number of numeric fields N.
        dim (int): vector width D.

    Example::

        >>> emb = NumericFieldEmbedding(2, 4)
        >>> emb(torch.ones(3, 2)).shape
        torch.Size([3, 2, 4])
    """

    def __init__(self, num_numeric: int, dim: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_numeric, dim) * init_std)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return dense.unsqueeze(-1) * self.weight.unsqueeze(0)  # [B, N, 1] * [1, N, D] -> [B, N, D]


class PlainEmbedding(FieldEmbedding):
    """Stock ``EmbeddingBagCollection`` lookup; output ``[B, F, D]`` with sparse fields first, then numeric.

    Args:
        layout (FieldLayout): schema and fitted table sizes.
        dim (int): embedding width D (a multiple of 4).
        config (PlainEmbeddingConfig): method options.
        device (torch.device | None): build tables on ``meta`` to shard them without allocating.

    Example::

        >>> from ctr.features.schema import Schema
        >>> s = Schema(fields=[{"name": "u"}, {"name": "x", "kind": "numeric"}])
        >>> emb = PlainEmbedding(FieldLayout(s, {"u": 10}), 8, PlainEmbeddingConfig())
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["u"], torch.tensor([1, 2]), torch.tensor([1, 1]))
        >>> emb(torch.ones(2, 1), kjt).shape
        torch.Size([2, 2, 8])
    """

    def __init__(self, layout: FieldLayout, dim: int, config: PlainEmbeddingConfig,
                 device: torch.device | None = None, prefix: str = "") -> None:
        super().__init__()
        self.num_fields = layout.num_fields
        self.embedding_dim = dim
        self.sparse_names = [f.name for f in layout.schema.sparse_fields]
        self.ebc = EmbeddingBagCollection(
            tables=table_configs(layout, dim, prefix=prefix, init_std=config.init_std), device=device)
        self.numeric = NumericFieldEmbedding(layout.num_numeric, dim, config.init_std or 0.01) \
            if layout.num_numeric else None
        self.l2 = config.l2
        self._penalty: torch.Tensor | None = None

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.ebc(sparse).to_dict()
        parts = [torch.stack([pooled[n] for n in self.sparse_names], dim=1)]  # [B, S, D]
        if self.l2 > 0 and self.training:
            self._penalty = self.l2 * parts[0].pow(2).sum(dim=(1, 2)).mean()
        if self.numeric is not None:
            parts.append(self.numeric(dense))  # [B, N, D]
        return torch.cat(parts, dim=1)

    def regularizer(self) -> torch.Tensor | None:
        """The L2 penalty of the last training forward (``None`` when ``l2`` is 0); consumed once."""
        penalty, self._penalty = self._penalty, None
        return penalty
