"""The contract every embedding method implements.

A field embedding turns one batch's sparse ids (a KJT) and numeric values into one vector per
field, ``[B, F, D]`` with ``F = sparse fields + numeric fields`` in schema order. Models receive
such a module and never look inside it, so OptFS gates, OptEmbed masks, DNIS weights or
Unified Embedding's multiplexed tables replace :class:`~ctr.embeddings.plain.PlainEmbedding`
without touching model code. Every table lives in a stock ``EmbeddingBagCollection`` so the stock
TorchRec sharder distributes it.
"""

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.features.layout import FieldLayout

__all__ = ["FieldEmbedding", "FieldLayout"]


class FieldEmbedding(nn.Module):
    """Base class: ``forward(dense [B, N], sparse KJT) -> [B, F, D]``.

    Subclasses set ``num_fields`` and ``embedding_dim`` and may override :meth:`regularizer`
    (a scalar added to the loss by ``ctr.train.objective``).
    """

    num_fields: int
    embedding_dim: int

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def regularizer(self) -> torch.Tensor | None:
        return None
