"""Embedding methods: one file per method, each wrapping stock TorchRec EmbeddingBagCollections.

``METHODS`` maps the YAML name (``embedding.name``) to (config class, module class). A method's
module is built as ``Module(layout, dim, config, device)``.
"""

from ctr.config import StrictConfig
from ctr.embeddings.block_dim import BlockDimConfig, BlockDimEmbedding
from ctr.embeddings.dnis import DNISConfig, DNISEmbedding
from ctr.embeddings.hashed import HashedEmbedding, HashedEmbeddingConfig
from ctr.embeddings.mixed_dim import MixedDimConfig, MixedDimEmbedding
from ctr.embeddings.optembed import OptEmbedConfig, OptEmbedEmbedding
from ctr.embeddings.optfs import OptFSConfig, OptFSEmbedding
from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig
from ctr.embeddings.unified import UnifiedEmbedding, UnifiedEmbeddingConfig
from ctr.embeddings.unified_optfs import UnifiedOptFSConfig, UnifiedOptFSEmbedding
from ctr.errors import ConfigError

METHODS = {
    "plain": (PlainEmbeddingConfig, PlainEmbedding),
    "hashed": (HashedEmbeddingConfig, HashedEmbedding),
    "unified": (UnifiedEmbeddingConfig, UnifiedEmbedding),
    "optfs": (OptFSConfig, OptFSEmbedding),  # a search method: phases in ctr.search.SEARCHES
    "optembed": (OptEmbedConfig, OptEmbedEmbedding),  # a search method: phases in ctr.search.SEARCHES
    "mixed_dim": (MixedDimConfig, MixedDimEmbedding),  # per-table widths + projections (dimension searches' output)
    "dnis": (DNISConfig, DNISEmbedding),  # a search method: phases in ctr.search.SEARCHES
    "block_dim": (BlockDimConfig, BlockDimEmbedding),  # per-(table, frequency block) widths (DNIS's output)
    "unified_optfs": (UnifiedOptFSConfig, UnifiedOptFSEmbedding),  # a search method: OptFS gates on unified rows
}


def parse_embedding_config(raw: dict | None, path: str = "embedding") -> StrictConfig:
    """YAML ``embedding:`` mapping → the config of the method named by ``raw["name"]`` (default ``plain``).

    Raises:
        ConfigError: unknown ``name`` (lists the known names), unknown keys, bad values.
    """
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping, got {type(raw).__name__}", path)
    name = raw.get("name", "plain")
    if name not in METHODS:
        raise ConfigError(f"unknown embedding method {name!r}; known: {', '.join(METHODS)}",
                          f"{path}.name" if path else "name")
    return METHODS[name][0].parse({**raw, "name": name}, path)


__all__ = ["METHODS", "BlockDimConfig", "BlockDimEmbedding", "DNISConfig", "DNISEmbedding", "HashedEmbedding", "HashedEmbeddingConfig", "MixedDimConfig", "MixedDimEmbedding",
           "OptEmbedConfig", "OptEmbedEmbedding", "OptFSConfig", "OptFSEmbedding", "PlainEmbedding",
           "PlainEmbeddingConfig", "UnifiedEmbedding", "UnifiedEmbeddingConfig", "UnifiedOptFSConfig",
           "UnifiedOptFSEmbedding", "parse_embedding_config"]
