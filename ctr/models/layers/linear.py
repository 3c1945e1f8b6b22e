"""First-order (linear) term Σ_fields w + b for LR, FM, DeepFM and AutoInt's optional wide part.

Every feature value needs one scalar weight w. FBGEMM's fused kernels need table widths that
are multiples of 4, so the scalar weights live in a :class:`~ctr.embeddings.plain.PlainEmbedding`
of width ``FIRST_ORDER_DIM = 4`` whose tables are named ``lin_<table>``; its 4 columns are summed.
A categorical/sequence field contributes ``Σ_c w[id, c]`` (the pooled row, mean or sum as the
field's pooling), a numeric field contributes ``value · Σ_c u_m[c]``. Summing 4 learned columns is
the same function class as one scalar per value (the columns only share a gradient).
"""

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.embeddings.base import FieldEmbedding, FieldLayout
from ctr.embeddings.hashed import HashedEmbedding, HashedEmbeddingConfig
from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig

FIRST_ORDER_DIM = 4
FIRST_ORDER_PREFIX = "lin_"


def first_order_embedding(layout: FieldLayout, device: torch.device | None = None,
                          hashed_share: float = 1.0) -> FieldEmbedding:
    """The width-4 ``lin_`` tables that hold the first-order weights (``device="meta"`` to shard).

    Hash-encoded tables get per-feature hashed first-order tables whatever the main embedding method is:
    ``hashed_share`` of their collisionless rows in all (the share of the hashed tables' collisionless
    parameters that the main ``hashed``/``unified`` embedding got, so a budget covers the first-order
    tables too), split in proportion to each table's distinct values; vocabulary tables stay collisionless.
    """
    if layout.hashed_tables:
        collisionless = sum(layout.table_sizes[t] for t in layout.hashed_tables)
        rows = max(len(layout.hashed_tables), round(min(1.0, hashed_share) * collisionless))
        return HashedEmbedding(layout, FIRST_ORDER_DIM, HashedEmbeddingConfig(rows=rows), device,
                               prefix=FIRST_ORDER_PREFIX)
    return PlainEmbedding(layout, FIRST_ORDER_DIM, PlainEmbeddingConfig(), device, prefix=FIRST_ORDER_PREFIX)


class FirstOrder(nn.Module):
    """``(dense [B, N], sparse KJT) -> [B]``: ``b + Σ_fields Σ_columns first_order(dense, sparse)``.

    Args:
        embedding (FieldEmbedding): a ``[B, F, 4]`` field embedding, normally from
            :func:`first_order_embedding`.

    Example::

        >>> from ctr.features.schema import Schema
        >>> layout = FieldLayout(Schema(fields=[{"name": "u"}, {"name": "x", "kind": "numeric"}]), {"u": 10})
        >>> linear = FirstOrder(first_order_embedding(layout))
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["u"], torch.tensor([1, 2]), torch.tensor([1, 1]))
        >>> linear(torch.ones(2, 1), kjt).shape
        torch.Size([2])
    """

    def __init__(self, embedding: FieldEmbedding) -> None:
        super().__init__()
        self.embedding = embedding
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        weights = self.embedding(dense, sparse)  # [B, F, 4]
        return weights.sum(dim=(1, 2)) + self.bias  # [B]


def require_first_order(first_order: FieldEmbedding | None, model: str) -> FirstOrder:
    """Wrap ``first_order`` in a :class:`FirstOrder`, or say which model needed it."""
    if first_order is None:
        raise ValueError(f"{model} needs a first-order embedding (width {FIRST_ORDER_DIM}); "
                         "build it with first_order_embedding(layout) or use ctr.models.build_model")
    return FirstOrder(first_order)
