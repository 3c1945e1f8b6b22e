"""Unified Embedding (feature multiplexing, Coleman et al. 2023): hash-encoded features share a few tables.

Every hash-encoded feature ``t`` reads ``k_t`` chunks (``chunks``, or ``chunks_per_feature[t]``);
chunk ``c`` is its own KJT key ``"<feature>@<c>"``, hashed with the salt of (table, chunk)
(:func:`ctr.features.hashing.chunk_salt`) into one of ``num_tables`` shared sub-tables of width
``chunk_dim``, assigned round-robin over all features and chunks (as the TFRS reference does), so
the chunks of one feature land in independent rows, usually of different sub-tables. The chunks
are concatenated per feature to ``k_t · chunk_dim``; a feature whose concatenation is not the
model width ``D`` gets a learned ``k_t · chunk_dim → D`` projection. Vocabulary-encoded tables
(low-cardinality fields: ``features.hash_min_cardinality``) stay collisionless tables of width D.
Sub-tables are a systems knob (sharding balance): the salts do not depend on them.

Budget as in :mod:`ctr.embeddings.hashed`: the vocabulary tables keep their rows and the shared
space gets the remaining ``budget · collisionless`` parameters, split evenly over the sub-tables;
``rows`` gives the total rows of the shared space instead.
"""

import torch
from pydantic import Field, model_validator
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from ctr.embeddings.base import FieldEmbedding, FieldLayout
from ctr.embeddings.hashed import BudgetConfig, hashed_param_budget, hashed_tables_of
from ctr.embeddings.plain import NumericFieldEmbedding
from ctr.embeddings.tables import check_dim, table_configs
from ctr.errors import ConfigError
from ctr.features.hashing import chunk_rows, chunk_salt

SUB_TABLE = "unified_{}"


class UnifiedEmbeddingConfig(BudgetConfig):
    """Args (besides :class:`~ctr.embeddings.hashed.BudgetConfig`'s ``budget``, ``rows``, ``init_std``):
        name (str): always ``unified``.
        chunks (int): chunks (independent lookups) per feature.
        chunk_dim (int | None): width of a chunk (multiple of 4); ``None`` = ``D / chunks`` rounded down
            to a multiple of 4 (at least 4).
        chunks_per_feature (dict[str, int]): per-feature override of ``chunks``.
        num_tables (int): shared sub-tables (for sharding balance).
    """

    name: str = "unified"
    chunks: int = Field(2, ge=1)
    chunk_dim: int | None = None
    chunks_per_feature: dict[str, int] = {}
    num_tables: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "UnifiedEmbeddingConfig":
        bad = {k: v for k, v in self.chunks_per_feature.items() if v < 1}
        if bad:
            raise ValueError(f"chunks_per_feature must be >= 1, got {bad}")
        return self


class UnifiedEmbedding(FieldEmbedding):
    """Multiplexed lookups into shared sub-tables; output ``[B, F, D]`` (sparse fields, then numeric).

    Args:
        layout (FieldLayout): schema, collisionless table sizes and the hash-encoded tables.
        dim (int): model width D.
        config (UnifiedEmbeddingConfig): budget, chunking and sub-table options.
        device (torch.device | None): ``meta`` to shard before allocating.

    Example::

        >>> from ctr.features.schema import Schema
        >>> s = Schema(fields=[{"name": "u", "encoding": "hash"}, {"name": "i", "encoding": "hash"}])
        >>> emb = UnifiedEmbedding(FieldLayout(s, {"u": 100, "i": 100}, hashed_tables=("u", "i")), 8,
        ...                        UnifiedEmbeddingConfig(budget=0.5))
        >>> emb.sub_table_rows, [k for k, *_ in emb.chunk_keys]
        (100, ['u@0', 'u@1', 'i@0', 'i@1'])
    """

    def __init__(self, layout: FieldLayout, dim: int, config: UnifiedEmbeddingConfig,
                 device: torch.device | None = None, prefix: str = "") -> None:
        super().__init__()
        schema = layout.schema
        hashed = hashed_tables_of(layout, "unified")
        chunk_dim = config.chunk_dim or max(4, dim // config.chunks // 4 * 4)
        check_dim(chunk_dim, "unified chunk_dim")
        unknown = sorted(set(config.chunks_per_feature) - {f.name for f in schema.sparse_fields})
        if unknown:
            raise ConfigError(f"chunks_per_feature names unknown fields {unknown}", "embedding.chunks_per_feature")
        if config.rows is not None:
            total_rows = config.rows
        else:
            total_rows = hashed_param_budget(layout, dim, config.budget or 1.0, hashed) // chunk_dim
        self.sub_table_rows = max(1, total_rows // config.num_tables)
        self.embedding_dim = dim
        self.sparse_names = [f.name for f in schema.sparse_fields]
        self.field_names = self.sparse_names + [f.name for f in schema.numeric_fields]
        self.num_fields = layout.num_fields
        self.vocab_keys = [f.name for f in schema.sparse_fields if f.table_name not in hashed]
        self.chunk_keys: list[tuple[str, str, int]] = []  # (chunk key, feature, salt)
        self.feature_chunks: dict[str, list[str]] = {}
        members: list[list[str]] = [[] for _ in range(config.num_tables)]
        slot = 0
        for f in schema.sparse_fields:
            if f.table_name not in hashed:
                continue
            keys = []
            for c in range(config.chunks_per_feature.get(f.name, config.chunks)):
                key = f"{f.name}@{c}"
                self.chunk_keys.append((key, f.name, chunk_salt(f.table_name, c, layout.hash_seed)))
                members[slot % config.num_tables].append(key)  # global round-robin over features and chunks
                slot += 1
                keys.append(key)
            self.feature_chunks[f.name] = keys
        bound = None if config.init_std is None else config.init_std * 3 ** 0.5
        tables = []
        vocab_fields = [f for f in schema.fields if not (f.is_sparse and f.table_name in hashed)]
        if any(f.is_sparse for f in vocab_fields):
            sub = FieldLayout(schema.model_copy(update={"fields": vocab_fields}),
                              {t: n for t, n in layout.table_sizes.items() if t not in hashed})
            tables += table_configs(sub, dim, prefix=prefix, init_std=config.init_std)
        for i, keys in enumerate(members):
            if keys:
                tables.append(EmbeddingBagConfig(
                    name=f"{prefix}{SUB_TABLE.format(i)}", embedding_dim=chunk_dim,
                    num_embeddings=self.sub_table_rows, feature_names=keys, pooling=PoolingType.SUM,
                    weight_init_min=None if bound is None else -bound, weight_init_max=bound))
        self.ebc = EmbeddingBagCollection(tables=tables, device=device)
        self._share = (self.sub_table_rows * sum(1 for keys in members if keys) * chunk_dim,
                       sum(layout.table_sizes[t] for t in hashed) * dim)  # (shared params, collisionless)
        self.project = nn.ModuleDict({
            name: nn.Linear(len(keys) * chunk_dim, dim, bias=False)
            for name, keys in self.feature_chunks.items() if len(keys) * chunk_dim != dim})
        self.numeric = NumericFieldEmbedding(layout.num_numeric, dim, config.init_std or 0.01) \
            if layout.num_numeric else None

    def multiplex(self, sparse: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """Input KJT (64-bit ids of hashed fields) → the EBC's KJT: vocabulary keys, then one key per chunk."""
        jts = sparse.to_dict()
        out = {k: jts[k] for k in self.vocab_keys}
        for key, field, salt in self.chunk_keys:
            jt = jts[field]
            out[key] = JaggedTensor(values=chunk_rows(jt.values(), salt, self.sub_table_rows), lengths=jt.lengths())
        return KeyedJaggedTensor.from_jt_dict(out)

    def hashed_share(self) -> float:
        """Parameters of the shared space over the hashed tables' collisionless parameters."""
        shared, collisionless = self._share
        return shared / collisionless if collisionless else 1.0

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.ebc(self.multiplex(sparse)).to_dict()
        vecs = []
        for name in self.sparse_names:
            if name in self.feature_chunks:
                vec = torch.cat([pooled[k] for k in self.feature_chunks[name]], dim=1)  # [B, k_t · chunk_dim]
                vecs.append(self.project[name](vec) if name in self.project else vec)
            else:
                vecs.append(pooled[name])
        parts = [torch.stack(vecs, dim=1)]  # [B, S, D]
        if self.numeric is not None:
            parts.append(self.numeric(dense))
        return torch.cat(parts, dim=1)
