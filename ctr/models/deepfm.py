"""DeepFM: first-order term + FM interaction + MLP, all on the same field vectors (logits summed)."""

from typing import Literal

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.embeddings.base import FieldEmbedding
from ctr.embeddings.tables import EmbeddingDim
from ctr.models.layers.interaction import FMInteraction
from ctr.models.layers.linear import require_first_order
from ctr.models.layers.mlp import MLP, DNNOptions


class DeepFMConfig(DNNOptions):
    """YAML ``model:`` section of DeepFM.

    Args:
        name (str): ``deepfm``.
        embedding_dim (int): field vector width D (a multiple of 4).
        fm_numeric (bool): whether the numeric fields' vectors (``value · v``) take part in the FM's pairwise
            term (the paper's DeepFM, the default). ``false``: the FM pairs categorical fields only, as
            DeepCTR-Torch and torch-rechub build DeepFM; the first-order and deep parts still read every field.
        dnn_* : the MLP options of :class:`~ctr.models.layers.mlp.DNNOptions`.
    """

    name: Literal["deepfm"] = "deepfm"
    embedding_dim: EmbeddingDim = 16
    fm_numeric: bool = True


class DeepFM(nn.Module):
    """``(dense [B, N], sparse KJT) -> logits [B]``::

        fields = embedding(dense, sparse)                  # [B, F, D]
        logit  = linear(dense, sparse)                     # [B]  b + Σ w
               + fm(fields)                                # [B]  Σ_{i<j} <v_i, v_j> (categorical i, j only
                                                           #      with fm_numeric: false)
               + mlp(fields.flatten(1))                    # [B, F·D] -> [B]

    Args:
        embedding (FieldEmbedding): field vectors ``[B, F, D]``, shared by the FM and deep parts.
        first_order (FieldEmbedding | None): width-4 first-order embedding (required).
        config (DeepFMConfig): options.

    Example::

        >>> from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig
        >>> from ctr.features.layout import FieldLayout
        >>> from ctr.features.schema import Schema
        >>> from ctr.models.layers.linear import first_order_embedding
        >>> layout = FieldLayout(Schema(fields=[{"name": "u"}, {"name": "x", "kind": "numeric"}]), {"u": 10})
        >>> emb = PlainEmbedding(layout, 8, PlainEmbeddingConfig())
        >>> model = DeepFM(emb, first_order_embedding(layout), DeepFMConfig(embedding_dim=8, dnn_hidden=(16,)))
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["u"], torch.tensor([1, 2]), torch.tensor([1, 1]))
        >>> model(torch.ones(2, 1), kjt).shape
        torch.Size([2])
    """

    needs_first_order = True

    def __init__(self, embedding: FieldEmbedding, first_order: FieldEmbedding | None,
                 config: DeepFMConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = embedding
        self.linear = require_first_order(first_order, "DeepFM")
        self.fm = FMInteraction()
        spec = config.mlp_spec()
        self.mlp = MLP(embedding.num_fields * embedding.embedding_dim, spec, out_dim=1)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        fields = self.embedding(dense, sparse)  # [B, F, D]
        deep = self.mlp(fields.flatten(1)).squeeze(-1)  # [B]
        # the F slots are the sparse fields, then the N = dense.shape[1] numeric fields
        paired = fields if self.config.fm_numeric else fields[:, : fields.shape[1] - dense.shape[1]]
        return self.linear(dense, sparse) + self.fm(paired) + deep  # [B]
