"""Model zoo: one file per model, each a frozen config (YAML ``model:`` section) plus an ``nn.Module``.

Every model is built as ``Model(embedding, first_order, config)`` and maps
``(dense [B, N], sparse KJT) -> logits [B]`` (no sigmoid, no loss). ``MODELS`` is the explicit
registry from the YAML ``model.name`` to ``(config class, module class)``.
"""

import torch
from torch import nn

from ctr.config import StrictConfig
from ctr.embeddings import METHODS, PlainEmbeddingConfig
from ctr.embeddings.base import FieldLayout
from ctr.errors import ConfigError
from ctr.models.autoint import AutoInt, AutoIntConfig
from ctr.models.deepfm import DeepFM, DeepFMConfig
from ctr.models.din import DIN, DINConfig
from ctr.models.dnn import DNN, DNNConfig
from ctr.models.fm import FM, FMConfig
from ctr.models.layers.linear import first_order_embedding
from ctr.models.lr import LR, LRConfig

MODELS: dict[str, tuple[type[StrictConfig], type[nn.Module]]] = {
    "lr": (LRConfig, LR),
    "fm": (FMConfig, FM),
    "dnn": (DNNConfig, DNN),
    "deepfm": (DeepFMConfig, DeepFM),
    "autoint": (AutoIntConfig, AutoInt),
    "autoint_plus": (AutoIntConfig, AutoInt),
    "din": (DINConfig, DIN),
}


def parse_model_config(raw: dict, path: str = "model") -> StrictConfig:
    """YAML ``model:`` mapping → the config of the model named by ``raw["name"]``.

    Raises:
        ConfigError: missing or unknown ``name`` (lists the known names), unknown keys, bad values.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping, got {type(raw).__name__}", path)
    name = raw.get("name")
    if name not in MODELS:
        what = "missing model name" if name is None else f"unknown model {name!r}"
        raise ConfigError(f"{what}; known: {', '.join(MODELS)}", f"{path}.name" if path else "name")
    return MODELS[name][0].parse(raw, path)


def needs_first_order(model_cfg: StrictConfig) -> bool:
    """Whether the model reads the width-4 first-order tables (LR/FM/DeepFM, AutoInt with ``use_wide``)."""
    cls = MODELS[model_cfg.name][1]
    return cls.needs_first_order or (isinstance(model_cfg, AutoIntConfig) and model_cfg.use_wide)


def build_model(model_cfg: StrictConfig, layout: FieldLayout, embedding_cfg: StrictConfig | None = None,
                device: torch.device | None = None) -> nn.Module:
    """Build the field embedding (method ``embedding_cfg.name``, width ``model_cfg.embedding_dim``),
    the first-order tables if the model needs them, and the model.

    ``device`` applies to the embedding tables only (``meta`` before DMP sharding, which
    materialises them); dense layers are always created on CPU.
    """
    config_cls, model_cls = MODELS[model_cfg.name]
    if not isinstance(model_cfg, config_cls):
        raise TypeError(f"model {model_cfg.name!r} expects {config_cls.__name__}, got {type(model_cfg).__name__}")
    emb_cfg = embedding_cfg if embedding_cfg is not None else PlainEmbeddingConfig()
    method = METHODS[emb_cfg.name][1]
    embedding = method(layout, model_cfg.embedding_dim, emb_cfg, device)
    share = getattr(embedding, "hashed_share", None)  # hashed/unified: the first-order tables follow the budget
    first_order = first_order_embedding(layout, device, share() if callable(share) else 1.0) \
        if needs_first_order(model_cfg) else None
    if first_order is not None and callable(getattr(embedding, "gate_first_order", None)):
        first_order = embedding.gate_first_order(first_order)  # OptFS: a value's gate covers its linear weight
    return model_cls(embedding, first_order, model_cfg)


__all__ = [
    "MODELS", "LR", "LRConfig", "FM", "FMConfig", "DNN", "DNNConfig", "DeepFM", "DeepFMConfig",
    "AutoInt", "AutoIntConfig", "DIN", "DINConfig", "build_model", "needs_first_order", "parse_model_config",
]
