"""FM: factorization machine, ``logit = b + Σ_fields w + Σ_{i<j} ⟨v_i, v_j⟩``."""

from typing import Literal

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.config import StrictConfig
from ctr.embeddings.base import FieldEmbedding
from ctr.embeddings.tables import EmbeddingDim
from ctr.models.layers.interaction import FMInteraction
from ctr.models.layers.linear import require_first_order


class FMConfig(StrictConfig):
    """YAML ``model:`` section of FM.

    Args:
        name (str): ``fm``.
        embedding_dim (int): field vector width D (a multiple of 4).
    """

    name: Literal["fm"] = "fm"
    embedding_dim: EmbeddingDim = 16


class FM(nn.Module):
    """``(dense [B, N], sparse KJT) -> logits [B]``: first-order term plus pairwise interactions of
    the ``[B, F, D]`` field vectors (numeric fields included as ``value · v_m``).

    Args:
        embedding (FieldEmbedding): field vectors ``[B, F, D]``.
        first_order (FieldEmbedding | None): width-4 first-order embedding (required).
        config (FMConfig): options.

    Example::

        >>> from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig
        >>> from ctr.features.layout import FieldLayout
        >>> from ctr.features.schema import Schema
        >>> from ctr.models.layers.linear import first_order_embedding
        >>> layout = FieldLayout(Schema(fields=[{"name": "u"}, {"name": "x", "kind": "numeric"}]), {"u": 10})
        >>> emb = PlainEmbedding(layout, 8, PlainEmbeddingConfig())
        >>> model = FM(emb, first_order_embedding(layout), FMConfig(embedding_dim=8))
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["u"], torch.tensor([1, 2]), torch.tensor([1, 1]))
        >>> model(torch.ones(2, 1), kjt).shape
        torch.Size([2])
    """

    needs_first_order = True

    def __init__(self, embedding: FieldEmbedding, first_order: FieldEmbedding | None, config: FMConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = embedding
        self.linear = require_first_order(first_order, "FM")
        self.interaction = FMInteraction()

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        fields = self.embedding(dense, sparse)  # [B, F, D]
        return self.linear(dense, sparse) + self.interaction(fields)  # [B]
