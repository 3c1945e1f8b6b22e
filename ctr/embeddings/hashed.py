"""Hashed embedding (the hashing trick): one table per hash-encoded feature, its 64-bit ids hashed into it.

The baseline for :mod:`ctr.embeddings.unified` at the same parameter budget. Hash-encoded tables
(``encoding: hash`` in the schema, :mod:`ctr.features.hashing`) get ``rows_t`` rows each, in
proportion to their distinct train values; vocabulary tables stay collisionless. The lookup row of
an id is ``chunk_rows(id, chunk_salt(table, 0), rows_t)``, computed inside the model, so training,
the bundle and the gRPC scorer agree.

Budget: ``budget`` is a fraction of the collisionless parameter count ``Σ_tables (distinct + 1) · D``
(vocabulary tables included); the vocabulary tables keep their exact rows and the hashed tables share
the rest. ``rows`` gives the hashed tables' total rows directly. A model's first-order (width-4) tables
follow: their hashed tables get the same share of their collisionless rows (:meth:`hashed_share`,
:func:`ctr.models.layers.linear.first_order_embedding`), so ``embedding_params`` tracks the budget.
"""

import torch
from pydantic import Field, model_validator
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.config import StrictConfig
from ctr.embeddings.base import FieldEmbedding, FieldLayout, SequenceFields
from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig
from ctr.errors import ConfigError
from ctr.features.hashing import chunk_rows, chunk_salt


class BudgetConfig(StrictConfig):
    """Shared budget options of ``hashed`` and ``unified``.

    Args:
        budget (float | None): fraction (0, 1] of the collisionless parameter count (default 1.0
            when ``rows`` is not given).
        rows (int | None): rows of the hashed space instead of ``budget``.
        init_std (float | None): embedding init scale, as for ``plain``.
    """

    budget: float | None = Field(None, gt=0.0, le=1.0)
    rows: int | None = Field(None, ge=1)
    init_std: float | None = 0.01

    @model_validator(mode="after")
    def _one_size(self) -> "BudgetConfig":
        if self.budget is not None and self.rows is not None:
            raise ValueError("give either budget (a fraction of the collisionless parameters) or rows, not both")
        return self


def hashed_tables_of(layout: FieldLayout) -> list[str]:
    """The layout's hash-encoded tables, in schema order."""
    return [t for t in layout.schema.tables if t in set(layout.hashed_tables)]


def hashed_param_budget(layout: FieldLayout, dim: int, budget: float, hashed: list[str]) -> int:
    """Parameters left for the hashed tables: ``budget · collisionless − vocabulary tables``."""
    total = sum(layout.table_sizes.values()) * dim
    vocab = sum(n for t, n in layout.table_sizes.items() if t not in hashed) * dim
    left = int(budget * total) - vocab
    if hashed and left < dim * len(hashed):
        raise ConfigError(f"budget {budget} gives {int(budget * total)} parameters, but the collisionless "
                          f"vocabulary tables alone take {vocab}; raise the budget or hash more fields "
                          "(features.hash_min_cardinality)", "embedding.budget")
    return left


def rehash(sparse: KeyedJaggedTensor, tables: dict[str, tuple[int, int]]) -> KeyedJaggedTensor:
    """Replace the 64-bit ids of the keys in ``tables`` (key → (salt, rows)) by their rows; others pass."""
    parts = torch.split(sparse.values(), sparse.length_per_key())
    values = [chunk_rows(p, *tables[k]) if k in tables else p for k, p in zip(sparse.keys(), parts, strict=True)]
    return KeyedJaggedTensor(keys=sparse.keys(), values=torch.cat(values) if values else sparse.values(),
                             lengths=sparse.lengths())


class HashedEmbeddingConfig(BudgetConfig):
    """Args: as :class:`BudgetConfig`; ``name`` is always ``hashed``."""

    name: str = "hashed"


class HashedEmbedding(FieldEmbedding):
    """Per-feature hashing trick over a :class:`~ctr.embeddings.plain.PlainEmbedding` of budgeted tables.

    Args:
        layout (FieldLayout): schema, collisionless table sizes and the hash-encoded tables.
        dim (int): embedding width D.
        config (HashedEmbeddingConfig): budget options.
        device (torch.device | None): ``meta`` to shard before allocating.

    Example::

        >>> from ctr.features.schema import Schema
        >>> s = Schema(fields=[{"name": "u", "encoding": "hash"}])
        >>> emb = HashedEmbedding(FieldLayout(s, {"u": 101}, hashed_tables=("u",)), 8,
        ...                       HashedEmbeddingConfig(budget=0.5))
        >>> emb.table_rows
        {'u': 50}
    """

    def __init__(self, layout: FieldLayout, dim: int, config: HashedEmbeddingConfig,
                 device: torch.device | None = None, prefix: str = "") -> None:
        super().__init__()
        hashed = hashed_tables_of(layout)
        if config.rows is not None:
            total_rows = config.rows
        else:
            total_rows = hashed_param_budget(layout, dim, config.budget or 1.0, hashed) // dim
        cards = self._cards = {t: layout.table_sizes[t] for t in hashed}
        weight = sum(cards.values()) or 1
        self.table_rows = {t: max(1, total_rows * cards[t] // weight) for t in hashed}
        sizes = {**layout.table_sizes, **self.table_rows}
        inner = FieldLayout(layout.schema, sizes, layout.table_counts)
        self.inner = PlainEmbedding(inner, dim, PlainEmbeddingConfig(init_std=config.init_std), device, prefix)
        self.num_fields, self.embedding_dim = self.inner.num_fields, dim
        self.field_names = self.inner.field_names
        self.history_names, self.candidate_names = self.inner.history_names, self.inner.candidate_names
        seed = layout.hash_seed
        self._keys = {f.name: (chunk_salt(f.table_name, 0, seed), self.table_rows[f.table_name])
                      for f in layout.schema.sparse_fields if f.table_name in self.table_rows}

    def hashed_share(self) -> float:
        """Rows of the hashed tables over their collisionless rows (the budget's share of the hashed space)."""
        collisionless = sum(self._cards.values())
        return sum(self.table_rows.values()) / collisionless if collisionless else 1.0

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        return self.inner(dense, rehash(sparse, self._keys))

    def forward_sequences(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> SequenceFields:
        return self.inner.forward_sequences(dense, rehash(sparse, self._keys))
