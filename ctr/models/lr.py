"""LR: logistic regression on the raw features, ``logit = b + Σ_fields w``."""

from typing import Literal

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.config import StrictConfig
from ctr.embeddings.base import FieldEmbedding
from ctr.embeddings.tables import EmbeddingDim
from ctr.models.layers.linear import require_first_order


class LRConfig(StrictConfig):
    """YAML ``model:`` section of LR.

    Args:
        name (str): ``lr``.
        embedding_dim (int): width of the (unused) field embedding ``build_model`` builds; a multiple of 4.
    """

    name: Literal["lr"] = "lr"
    embedding_dim: EmbeddingDim = 4


class LR(nn.Module):
    """``(dense [B, N], sparse KJT) -> logits [B]``: ``b + Σ_fields w`` from the first-order tables.

    Args:
        embedding (FieldEmbedding): ignored (LR has no field vectors); accepted for a uniform signature.
        first_order (FieldEmbedding | None): width-4 first-order embedding (required).
        config (LRConfig): options.

    Example::

        >>> from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig
        >>> from ctr.features.layout import FieldLayout
        >>> from ctr.features.schema import Schema
        >>> from ctr.models.layers.linear import first_order_embedding
        >>> layout = FieldLayout(Schema(fields=[{"name": "u"}, {"name": "x", "kind": "numeric"}]), {"u": 10})
        >>> emb = PlainEmbedding(layout, 4, PlainEmbeddingConfig())
        >>> model = LR(emb, first_order_embedding(layout), LRConfig())
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["u"], torch.tensor([1, 2]), torch.tensor([1, 1]))
        >>> model(torch.ones(2, 1), kjt).shape
        torch.Size([2])
    """

    needs_first_order = True

    def __init__(self, embedding: FieldEmbedding, first_order: FieldEmbedding | None, config: LRConfig) -> None:
        super().__init__()
        self.config = config
        self.linear = require_first_order(first_order, "LR")

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        return self.linear(dense, sparse)  # [B]
