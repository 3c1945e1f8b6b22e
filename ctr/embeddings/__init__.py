"""Embedding methods: one file per method, each wrapping stock TorchRec EmbeddingBagCollections.

``METHODS`` maps the YAML name (``embedding.name``) to (config class, module class).
"""

from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig

METHODS = {
    "plain": (PlainEmbeddingConfig, PlainEmbedding),
}

__all__ = ["METHODS", "PlainEmbedding", "PlainEmbeddingConfig"]
