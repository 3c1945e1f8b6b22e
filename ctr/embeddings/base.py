"""The contract every embedding method implements.

A field embedding turns one batch's sparse ids (a KJT) and numeric values into one vector per
field, ``[B, F, D]`` with ``F = sparse fields + numeric fields`` in schema order. Models receive
such a module and never look inside it, so OptFS gates, OptEmbed masks, DNIS weights or
Unified Embedding's multiplexed tables replace :class:`~ctr.embeddings.plain.PlainEmbedding`
without touching model code. Pooled tables live in a stock ``EmbeddingBagCollection``; tables
read by an unpooled behaviour history (``pooling: none``) live in a stock ``EmbeddingCollection``
shared with the candidate's field, so stock TorchRec sharders distribute both.

Behaviour histories (DIN). :meth:`FieldEmbedding.forward_sequences` returns :class:`SequenceFields`:
the same ``[B, F, D]`` fields as ``forward`` (a history field's slot holds its masked mean, which is
what pooling models such as DNN read) plus the unpooled history ``[B, S, L, D]`` of the ``S``
aligned history fields (``history_names``) and its mask ``[B, L]``. A method applies its gates /
masks / hashing to history ids exactly as to the candidate's ids, because both are lookups of the
same shared table; padded positions are zeros that belong to no table row (no gradient reaches
any row from padding). ``L`` is the schema's ``max_len`` (histories are left-truncated upstream).
"""

from typing import NamedTuple

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.features.layout import FieldLayout

__all__ = ["FieldEmbedding", "FieldLayout", "SequenceFields", "padded_history", "require_single_id_fields",
           "sequence_fields"]


def require_single_id_fields(layout: FieldLayout, method: str) -> None:
    """Raise a ``ConfigError`` when a sparse field is a sequence (row-level search methods need one id per field)."""
    from ctr.errors import ConfigError

    seq = [f.name for f in layout.schema.sparse_fields if f.kind != "categorical"]
    if seq:
        raise ConfigError(f"{method} supports single-id categorical fields only; fields {seq} are sequences; "
                          "fix: drop them or use embedding: plain", "embedding.name")


class SequenceFields(NamedTuple):
    """Fields plus unpooled histories.

    Args:
        fields (torch.Tensor): ``[B, F, D]``, as ``FieldEmbedding.forward`` returns them.
        history (torch.Tensor): ``[B, S, L, D]`` history vectors (zeros at padded positions).
        mask (torch.Tensor): ``[B, L]`` bool, True where a position holds an event.
    """

    fields: torch.Tensor
    history: torch.Tensor
    mask: torch.Tensor


def sequence_fields(fields: torch.Tensor, history: list[torch.Tensor], mask: torch.Tensor) -> SequenceFields:
    """:class:`SequenceFields` of one lookup: ``fields`` ``[B, F, D]``, one ``[B, L, D]`` padded tensor per history
    field and their mask ``[B, L]``; with no history field an empty history ``[B, 0, 1, D]`` and an all-False
    mask ``[B, 1]``."""
    if not history:
        return SequenceFields(fields, fields[:, :0].unsqueeze(2), torch.zeros_like(fields[:, 0, :1], dtype=torch.bool))
    return SequenceFields(fields, torch.stack(history, dim=1), mask)  # history [B, S, L, D]


def padded_history(values: torch.Tensor, offsets: torch.Tensor, max_len: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One unpooled history field's looked-up vectors ``[n, D]`` (jagged by ``offsets`` ``[B + 1]``) →
    ``(padded [B, L, D]`` with zeros at padding, ``masked mean [B, D]``, ``mask [B, L])``."""
    padded = torch.ops.fbgemm.jagged_to_padded_dense(values, [offsets], [max_len], 0.0)
    lengths = offsets[1:] - offsets[:-1]
    mean = padded.sum(dim=1) / lengths.clamp(min=1).unsqueeze(-1).to(padded.dtype)  # padding rows are zeros
    mask = torch.arange(max_len, device=padded.device).unsqueeze(0) < lengths.unsqueeze(-1)
    return padded, mean, mask


class FieldEmbedding(nn.Module):
    """Base class: ``forward(dense [B, N], sparse KJT) -> [B, F, D]``.

    Subclasses set ``num_fields``, ``embedding_dim``, ``field_names`` (the ``F`` slots in order) and
    ``history_names`` (the ``S`` unpooled history fields, empty when there are none); they implement
    ``forward`` and, when they support histories, ``forward_sequences``. They may override
    :meth:`regularizer` (a scalar added to the loss by ``ctr.train.objective``).
    """

    num_fields: int
    embedding_dim: int
    field_names: list[str]
    history_names: list[str] = []
    candidate_names: list[str] = []  # per history field, the categorical field sharing its table

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward_sequences(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> SequenceFields:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} does not provide unpooled histories")

    def regularizer(self) -> torch.Tensor | None:
        return None
