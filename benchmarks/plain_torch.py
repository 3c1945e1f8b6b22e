"""Baseline for the benchmark: the same model, but tables are plain ``torch.nn.EmbeddingBag``s
updated by ``torch.optim.Adam`` (what a straightforward PyTorch CTR implementation does)."""

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.embeddings.base import FieldEmbedding, FieldLayout
from ctr.embeddings.plain import NumericFieldEmbedding


class TorchEmbeddingBags(FieldEmbedding):
    """One ``nn.EmbeddingBag`` per table, reading the same KJT, output ``[B, F, D]`` like PlainEmbedding."""

    def __init__(self, layout: FieldLayout, dim: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.num_fields, self.embedding_dim = layout.num_fields, dim
        self.fields = [(f.name, f.table_name, "mean" if f.kind == "sequence" and f.pooling == "mean" else "sum")
                       for f in layout.schema.sparse_fields]
        self.bags = nn.ModuleDict({t: nn.EmbeddingBag(n, dim, mode="sum") for t, n in layout.table_sizes.items()})
        bound = init_std * 3 ** 0.5
        for bag in self.bags.values():
            nn.init.uniform_(bag.weight, -bound, bound)
        self.numeric = NumericFieldEmbedding(layout.num_numeric, dim) if layout.num_numeric else None

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        per_key = sparse.to_dict()
        outs = []
        for name, table, mode in self.fields:
            jt = per_key[name]
            out = nn.functional.embedding_bag(jt.values(), self.bags[table].weight, jt.offsets(), mode=mode,
                                             include_last_offset=True)
            outs.append(out)
        parts = [torch.stack(outs, dim=1)]
        if self.numeric is not None:
            parts.append(self.numeric(dense))
        return torch.cat(parts, dim=1)
