"""DIN: Deep Interest Network (Zhou et al., KDD 2018), ``../shared/docs/methods.md`` §2.

The candidate's vectors (one per history field, e.g. item ⊕ genre) query the unpooled behaviour
history through a :class:`~ctr.models.layers.activation_unit.LocalActivationUnit`; the interest
vector is concatenated with every non-history field (candidate, user, context) and an MLP with
Dice or PReLU gives the logit. The history and the candidate share their tables
(``EmbeddingCollection``, built by the embedding method from ``pooling: none`` fields).
Mini-batch aware L2 is the embedding method's ``mba_l2`` (a loss term over the batch's unique rows).
"""

from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.config import StrictConfig
from ctr.embeddings.base import FieldEmbedding, SequenceFields
from ctr.embeddings.tables import EmbeddingDim
from ctr.models.layers.activation_unit import LocalActivationUnit
from ctr.models.layers.dice import DinActivation, tower
from ctr.models.layers.init import init_dense_


class DINConfig(StrictConfig):
    """YAML ``model:`` section of DIN.

    Args:
        name (str): ``din``.
        embedding_dim (int): vector width D (a multiple of 4).
        dnn_activation (str): ``dice`` or ``prelu``, in the attention MLP and the tower (the same key as
            DNN's, so ``--set model.name=dnn`` turns a PReLU DIN section into the pooled baseline).
        attention_hidden (tuple[int, ...]): scoring MLP widths (official code 80, 40).
        attention_softmax (bool): masked softmax over the history weights (paper: off).
        attention_outer (bool): add the paper's outer product ``q ⊗ k`` to the attention input.
        dnn_hidden (tuple[int, ...]): tower widths (paper 200, 80).
        dnn_dropout (float): dropout after each tower layer.
    """

    name: Literal["din"] = "din"
    embedding_dim: EmbeddingDim = 16
    dnn_activation: DinActivation = "prelu"
    attention_hidden: tuple[PositiveInt, ...] = (80, 40)
    attention_softmax: bool = False
    attention_outer: bool = False
    dnn_hidden: tuple[PositiveInt, ...] = (200, 80)
    dnn_dropout: float = Field(0.0, ge=0.0, lt=1.0)


class DIN(nn.Module):
    """``(dense [B, N], sparse KJT) -> logits [B]`` from fields ``[B, F, D]`` and history ``[B, S, L, D]``.

    Args:
        embedding (FieldEmbedding): must provide histories (``history_names`` non-empty).
        first_order (FieldEmbedding | None): ignored.
        config (DINConfig): options.

    Example::

        >>> from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig
        >>> from ctr.features.layout import FieldLayout
        >>> from ctr.features.schema import Schema
        >>> s = Schema(fields=[{"name": "item"}, {"name": "hist", "kind": "sequence", "table": "item",
        ...                    "pooling": "none", "max_len": 3}])
        >>> emb = PlainEmbedding(FieldLayout(s, {"item": 10}), 8, PlainEmbeddingConfig())
        >>> model = DIN(emb, None, DINConfig(embedding_dim=8)).eval()
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["item", "hist"], torch.tensor([1, 2, 3, 4, 5]),
        ...                                           torch.tensor([1, 1, 2, 1]))
        >>> model(torch.zeros(2, 0), kjt).shape
        torch.Size([2])
    """

    needs_first_order = False

    def __init__(self, embedding: FieldEmbedding, first_order: FieldEmbedding | None, config: DINConfig) -> None:
        super().__init__()
        if not embedding.history_names:
            raise ValueError("DIN needs at least one behaviour history: a sequence field with pooling: none")
        self.config = config
        self.embedding = embedding
        names = embedding.field_names
        self.cand_idx = [names.index(n) for n in embedding.candidate_names]
        self.other_idx = [i for i, n in enumerate(names) if n not in embedding.history_names]
        d, s = embedding.embedding_dim, len(embedding.history_names)
        self.attention = LocalActivationUnit(s * d, config.attention_hidden, config.dnn_activation,
                                             config.attention_softmax, config.attention_outer)
        self.tower = tower((len(self.other_idx) + s) * d, config.dnn_hidden, config.dnn_activation, config.dnn_dropout)
        init_dense_(self)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        seq = self.embedding.forward_sequences(dense, sparse)
        return self.head(seq.fields, seq.history, seq.mask)

    def head(self, fields: torch.Tensor, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``fields [B, F, D]``, ``history [B, S, L, D]``, ``mask [B, L]`` → logits ``[B]``."""
        keys = history.permute(0, 2, 1, 3).flatten(2)  # [B, L, S·D]: item ⊕ side features per event
        query = fields[:, self.cand_idx].flatten(1)  # [B, S·D]
        interest = self.attention(query, keys, mask)  # [B, S·D]
        x = torch.cat([fields[:, self.other_idx].flatten(1), interest], dim=1)
        return self.tower(x).squeeze(-1)

    @torch.jit.export
    def score_candidates(self, dense: torch.Tensor, sparse: KeyedJaggedTensor, cand_dense: torch.Tensor,
                         cand_sparse: KeyedJaggedTensor) -> torch.Tensor:
        """One history against C candidates: logits ``[C]``, history embeddings looked up once.

        ``dense``/``sparse`` hold the user's single row (B = 1, its history); ``cand_dense``/``cand_sparse``
        hold C rows with the candidate and user/context fields and *empty* history fields. Equals
        ``forward`` on the C full rows (in eval mode).
        """
        user: SequenceFields = self.embedding.forward_sequences(dense, sparse)
        cands: SequenceFields = self.embedding.forward_sequences(cand_dense, cand_sparse)
        c = cands.fields.shape[0]
        history = user.history.expand(c, -1, -1, -1)  # [C, S, L, D], a view: no per-candidate lookup
        return self.head(cands.fields, history, user.mask.expand(c, -1))
