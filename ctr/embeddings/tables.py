"""The only place ``EmbeddingBagConfig`` lists are built from a schema and dimensions."""

import zlib
from typing import Annotated

import torch
from pydantic import AfterValidator
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from ctr.embeddings.base import FieldLayout

FBGEMM_DIM_MULTIPLE = 4  # FBGEMM's fused TBE kernels need every table width divisible by 4


def check_dim(dim: int, what: str) -> None:
    if dim <= 0 or dim % FBGEMM_DIM_MULTIPLE:
        raise ValueError(f"{what} must be a positive multiple of {FBGEMM_DIM_MULTIPLE} "
                         f"(FBGEMM fused kernels), got {dim}")


def _valid_dim(dim: int) -> int:
    check_dim(dim, "embedding_dim")
    return dim


EmbeddingDim = Annotated[int, AfterValidator(_valid_dim)]
"""Config field type for an embedding width: a positive multiple of 4 (FBGEMM)."""


def table_configs(layout: FieldLayout, dim: int, prefix: str = "",
                  init_std: float | None = None) -> list[EmbeddingBagConfig]:
    """One ``EmbeddingBagConfig`` per table of the schema (features naming a table share it).

    A table's pooling is MEAN if any of its features is a mean-pooled sequence, else SUM (a
    single id pooled with SUM is the id's row). ``init_std`` draws rows uniformly in
    ±sqrt(3)·std (same variance); ``None`` keeps TorchRec's default ±sqrt(1/rows).
    """
    check_dim(dim, "embedding_dim")
    out = []
    for table, specs in layout.schema.tables.items():
        mean = any(s.kind == "sequence" and s.pooling == "mean" for s in specs)
        bound = None if init_std is None else init_std * 3 ** 0.5
        out.append(EmbeddingBagConfig(
            name=f"{prefix}{table}",
            embedding_dim=dim,
            num_embeddings=layout.table_sizes[table],
            feature_names=[s.name for s in specs],
            pooling=PoolingType.MEAN if mean else PoolingType.SUM,
            weight_init_min=None if bound is None else -bound,
            weight_init_max=bound,
        ))
    return out


def table_init(name: str, rows: int, dim: int, bound: float, seed: int) -> torch.Tensor:
    """Deterministic uniform(-bound, bound) weights for table ``name``, independent of sharding.

    Every rank (and an unsharded model) derives the same full table from ``(seed, name)`` and keeps
    the slice it owns, so world size 1 and N start from identical weights.
    """
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    return (torch.rand(rows, dim, generator=gen) * 2 - 1) * bound


def table_bound(cfg: EmbeddingBagConfig) -> float:
    """Init bound of a table: its configured max, else TorchRec's default sqrt(1/rows)."""
    return cfg.weight_init_max if cfg.weight_init_max is not None else (1.0 / cfg.num_embeddings) ** 0.5


def init_plain_tables(model: torch.nn.Module, seed: int) -> None:
    """Apply :func:`table_init` to every (unsharded) ``EmbeddingBagCollection`` table of ``model``."""
    with torch.no_grad():
        for ebc in model.modules():
            if isinstance(ebc, EmbeddingBagCollection):
                for cfg in ebc.embedding_bag_configs():
                    weight = ebc.embedding_bags[cfg.name].weight
                    weight.copy_(table_init(cfg.name, cfg.num_embeddings, cfg.embedding_dim, table_bound(cfg), seed))
