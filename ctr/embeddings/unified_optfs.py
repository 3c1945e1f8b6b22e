"""Unified Embedding with OptFS gates: feature selection over the rows of the multiplexed tables.

OptFS (:mod:`ctr.embeddings.optfs`) learns a gate per feature value. Under Unified Embedding
(:mod:`ctr.embeddings.unified`) a hash-encoded value has no row of its own: each of its chunks reads a
row of a shared sub-table, and a row serves whichever (feature, value, chunk) triples hash to it. The
unit that can be kept or dropped is therefore the **row**: every pooled sub-table ``unified_<i>`` gets a
gate table ``unified_<i>@gate`` of the same rows, looked up with the same multiplexed ids, and each chunk
vector is scaled by its row's gate before the chunks are concatenated and projected. Everything else is
OptFS's: ``g = σ(τ·m) / σ(m_init)`` while searching (penalty ``λ·Σσ(τm)`` over every row of every gate
table, Adam on the gates after each step, τ growing per search epoch), hard gates ``1[m > 0] / σ(m_init)``
in ticket mode, gate tables sharded like their sub-tables (:meth:`GatedTables.followed_tables`).

The search's output (:mod:`ctr.search.unified_optfs`) is an ordinary ``unified`` model whose gated
sub-tables keep only the rows with ``m > 0`` (``kept_rows``) behind a saved row map; every pruned row
reads one shared row instead (row 0, zero at the start of the retrain, like the hard gate's zero).

Not gated: the vocabulary (low-cardinality, collisionless) tables, the numeric fields and the first-order
weights (per-feature hashed tables of their own). Behaviour histories (DIN) and multi-valued hashed fields
are refused: a pooled bag of several rows has no single row to gate.
"""

from typing import Literal

import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from ctr.embeddings.base import FieldLayout
from ctr.embeddings.hashed import hashed_tables_of
from ctr.embeddings.optfs import GatedTables, GateOptions, gate_table_config
from ctr.embeddings.tables import GATE_SUFFIX
from ctr.embeddings.unified import UnifiedEmbedding, UnifiedEmbeddingConfig
from ctr.errors import ConfigError


class UnifiedOptFSConfig(UnifiedEmbeddingConfig, GateOptions):
    """YAML ``embedding:`` of ``unified_optfs``: the ``unified`` options (budget, chunks, sub-tables ...) and
    OptFS's gate options (:class:`~ctr.embeddings.optfs.GateOptions`: ``mask_init``, ``final_temp``,
    ``search_epochs``, ``rewind``, ``penalty``, ``mode``).

    Args:
        name (str): ``unified_optfs``.
    """

    name: Literal["unified_optfs"] = "unified_optfs"

    def unified(self, **update) -> UnifiedEmbeddingConfig:
        """The same embedding without gates (the search's baseline; with ``kept_rows``, its compact model)."""
        own = set(UnifiedEmbeddingConfig.model_fields) - {"name"}
        return UnifiedEmbeddingConfig(**{**{k: getattr(self, k) for k in own}, **update})

    def baseline(self) -> UnifiedEmbeddingConfig:
        return self.unified()


class UnifiedOptFSEmbedding(GatedTables, UnifiedEmbedding):
    """:class:`~ctr.embeddings.unified.UnifiedEmbedding` whose pooled chunk rows are gated; ``[B, F, D]``.

    Args:
        layout (FieldLayout): schema, collisionless table sizes and the hash-encoded tables.
        dim (int): model width D.
        config (UnifiedOptFSConfig): unified and gate options.
        device (torch.device | None): ``meta`` to shard before allocating.

    Example::

        >>> from ctr.features.schema import Schema
        >>> s = Schema(fields=[{"name": "u", "encoding": "hash"}, {"name": "i", "encoding": "hash"}])
        >>> emb = UnifiedOptFSEmbedding(FieldLayout(s, {"u": 100, "i": 100}, hashed_tables=("u", "i")), 8,
        ...                             UnifiedOptFSConfig(budget=0.5))
        >>> emb.followed_tables()
        {'unified_0@gate': 'unified_0', 'unified_1@gate': 'unified_1'}
    """

    def __init__(self, layout: FieldLayout, dim: int, config: UnifiedOptFSConfig,
                 device: torch.device | None = None, prefix: str = "") -> None:
        schema = layout.schema
        hashed = set(hashed_tables_of(layout))
        if config.kept_rows:
            raise ConfigError("kept_rows belongs to the compact model the search writes (embedding: unified)",
                              "embedding.kept_rows")
        if schema.history_fields:
            raise ConfigError(f"unified_optfs gates pooled features; the behaviour histories "
                              f"{[f.name for f in schema.history_fields]} are not supported: use unified",
                              "embedding.name")
        multi = [f.name for f in schema.sparse_fields if f.table_name in hashed and f.kind != "categorical"]
        if multi:
            raise ConfigError(f"unified_optfs gates one row per chunk; the hash-encoded fields {multi} hold "
                              "several values per row: give them a vocabulary (features.fields[].encoding: "
                              "vocab) or use unified", "embedding.name")
        super().__init__(layout, dim, config, device, prefix)
        self.config = config
        subs: dict[str, list[str]] = {}
        for key, *_ in self.chunk_keys:
            subs.setdefault(f"{prefix}{self.chunk_table[key]}", []).append(key)
        self.gated_keys = [key for keys in subs.values() for key in keys]
        self.gate_tables = {sub: f"{sub}{GATE_SUFFIX}" for sub in subs}  # sub-table -> its gate table
        self.base_tables = {sub: sub for sub in subs}
        if not subs:
            raise ConfigError("unified_optfs found no hash-encoded field to gate; set features.encoding: hash "
                              "(or lower features.hash_min_cardinality)", "features.encoding")
        self.gate_ebc = EmbeddingBagCollection(tables=[
            gate_table_config(self.gate_tables[sub], self.space_rows["bag"], keys, config.mask_init)
            for sub, keys in subs.items()], device=device)
        self.init_gates()

    def scale_chunks(self, looked: dict, ids: dict[str, JaggedTensor]) -> None:
        """Scale each pooled chunk vector (``[B, chunk_dim]``) by its row's gate, in ``looked``."""
        rows = self.gate_ebc(KeyedJaggedTensor.from_jt_dict({k: ids[k] for k in self.gated_keys})).to_dict()
        for key in self.gated_keys:
            looked[key] = looked[key] * self.captured_gates(rows[key]).unsqueeze(-1)
