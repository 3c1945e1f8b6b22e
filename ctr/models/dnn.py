"""DNN: an MLP on the concatenated field vectors."""

from typing import Literal

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.embeddings.base import FieldEmbedding
from ctr.embeddings.tables import EmbeddingDim
from ctr.models.layers.mlp import MLP, DNNOptions


class DNNConfig(DNNOptions):
    """YAML ``model:`` section of DNN.

    Args:
        name (str): ``dnn``.
        embedding_dim (int): field vector width D (a multiple of 4).
        dnn_* : the MLP options of :class:`~ctr.models.layers.mlp.DNNOptions`.
    """

    name: Literal["dnn"] = "dnn"
    embedding_dim: EmbeddingDim = 16


class DNN(nn.Module):
    """``(dense [B, N], sparse KJT) -> logits [B]``: field vectors ``[B, F, D]`` → flatten
    ``[B, F·D]`` → MLP → ``[B]``.

    Args:
        embedding (FieldEmbedding): field vectors ``[B, F, D]``.
        first_order (FieldEmbedding | None): ignored (DNN has no linear term).
        config (DNNConfig): options.

    Example::

        >>> from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig
        >>> from ctr.features.layout import FieldLayout
        >>> from ctr.features.schema import Schema
        >>> layout = FieldLayout(Schema(fields=[{"name": "u"}, {"name": "x", "kind": "numeric"}]), {"u": 10})
        >>> emb = PlainEmbedding(layout, 8, PlainEmbeddingConfig())
        >>> model = DNN(emb, None, DNNConfig(embedding_dim=8, dnn_hidden=(16,)))
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["u"], torch.tensor([1, 2]), torch.tensor([1, 1]))
        >>> model(torch.ones(2, 1), kjt).shape
        torch.Size([2])
    """

    needs_first_order = False

    def __init__(self, embedding: FieldEmbedding, first_order: FieldEmbedding | None, config: DNNConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = embedding
        spec = config.mlp_spec()
        self.mlp = MLP(embedding.num_fields * embedding.embedding_dim, spec, out_dim=1)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        fields = self.embedding(dense, sparse)  # [B, F, D]
        return self.mlp(fields.flatten(1)).squeeze(-1)  # [B, F·D] -> [B, 1] -> [B]
