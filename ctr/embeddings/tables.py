"""The only place ``EmbeddingBagConfig`` lists are built from a schema and dimensions."""

import zlib
from typing import Annotated

import numpy as np
import torch
from pydantic import AfterValidator
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from ctr.embeddings.base import FieldLayout

FBGEMM_DIM_MULTIPLE = 4  # FBGEMM's fused TBE kernels need every table width divisible by 4
GATE_SUFFIX = "@gate"  # OptFS's gate tables (see ctr.embeddings.optfs): initialised column 0 only
TABLE_OPTIMIZER = "ctr_table_optimizer"  # table weight attribute: (kind, lr) of its own fused optimizer


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
                  init_std: float | None = None, widths: dict[str, int] | None = None) -> list[EmbeddingBagConfig]:
    """One ``EmbeddingBagConfig`` per table of the schema (features naming a table share it).

    A table's pooling is MEAN if any of its features is a mean-pooled sequence, else SUM (a
    single id pooled with SUM is the id's row). ``init_std`` draws rows uniformly in
    ±sqrt(3)·std (same variance); ``None`` keeps TorchRec's default ±sqrt(1/rows). ``widths``
    gives tables their own width (each a multiple of 4; tables not named in it are ``dim`` wide).
    """
    check_dim(dim, "embedding_dim")
    widths = widths or {}
    out = []
    for table, specs in layout.schema.tables.items():
        width = widths.get(table, dim)
        check_dim(width, f"width of table {table!r}")
        mean = any(s.kind == "sequence" and s.pooling == "mean" for s in specs)
        bound = None if init_std is None else init_std * 3 ** 0.5
        out.append(EmbeddingBagConfig(
            name=f"{prefix}{table}",
            embedding_dim=width,
            num_embeddings=layout.table_sizes[table],
            feature_names=[s.name for s in specs],
            pooling=PoolingType.MEAN if mean else PoolingType.SUM,
            weight_init_min=None if bound is None else -bound,
            weight_init_max=bound,
        ))
    return out


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_CHUNK = 1 << 20  # elements generated at a time: temporaries stay a few MB whatever the table size


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def table_key(name: str, seed: int) -> np.uint64:
    """The generator key of table ``name`` under ``seed``."""
    base = np.array([(seed * 1_000_003 + zlib.crc32(name.encode())) % (2**64)], dtype=np.uint64)
    return _mix(base)[0]


def table_init(name: str, rows: int, dim: int, bound: float, seed: int, row_start: int = 0,
               row_count: int | None = None, col_start: int = 0, col_count: int | None = None) -> torch.Tensor:
    """Deterministic uniform(-bound, bound) weights of rows/columns of table ``name``, generated alone.

    A counter-based generator: element ``(r, c)`` is a hash of ``(seed, name, r * dim + c)``, so a
    shard (``row_start``/``row_count``, ``col_start``/``col_count``) is produced without building the
    rest of the ``rows × dim`` table, and every rank (and an unsharded model) agrees on every value:
    world size 1 and N start from identical weights. Memory is the slice plus a bounded scratch.
    """
    row_count = rows - row_start if row_count is None else row_count
    col_count = dim - col_start if col_count is None else col_count
    if row_start < 0 or col_start < 0 or row_start + row_count > rows or col_start + col_count > dim:
        raise ValueError(f"slice rows [{row_start}, +{row_count}) cols [{col_start}, +{col_count}) "
                         f"is outside table {name} ({rows} x {dim})")
    key = table_key(name, seed)
    out = np.empty((row_count, col_count), dtype=np.float32)
    cols = np.arange(col_start, col_start + col_count, dtype=np.uint64)
    step = max(1, _CHUNK // max(col_count, 1))
    for r0 in range(0, row_count, step):
        r = np.arange(row_start + r0, row_start + min(r0 + step, row_count), dtype=np.uint64)
        counter = r[:, None] * np.uint64(dim) + cols[None, :]
        bits = _mix(key + (counter + np.uint64(1)) * _GOLDEN) >> np.uint64(11)
        out[r0:r0 + len(r)] = (bits * 2.0 ** -53 * 2 - 1) * bound
    return torch.from_numpy(out)


def table_bound(cfg: EmbeddingBagConfig) -> float:
    """Init bound of a table: its configured max, else TorchRec's default sqrt(1/rows)."""
    return cfg.weight_init_max if cfg.weight_init_max is not None else (1.0 / cfg.num_embeddings) ** 0.5


def table_values(cfg: EmbeddingBagConfig, seed: int, row_start: int = 0, row_count: int | None = None,
                 col_start: int = 0, col_count: int | None = None) -> torch.Tensor:
    """Initial values of a slice of table ``cfg``: :func:`table_init`'s uniform rows, or the constant
    ``weight_init_min`` where a config sets min = max; a gate table (name ending in :data:`GATE_SUFFIX`,
    OptFS's ``[m, gradient, Adam m1, Adam v]`` rows) gets that constant in column 0 and zeros elsewhere."""
    rows, dim = cfg.num_embeddings, cfg.embedding_dim
    if cfg.weight_init_min is not None and cfg.weight_init_min == cfg.weight_init_max:
        shape = (rows - row_start if row_count is None else row_count, dim - col_start if col_count is None else col_count)
        if not cfg.name.endswith(GATE_SUFFIX):
            return torch.full(shape, float(cfg.weight_init_min))
        values = torch.zeros(shape)
        if col_start == 0 and shape[1]:
            values[:, 0] = float(cfg.weight_init_min)
        return values
    return table_init(cfg.name, rows, dim, table_bound(cfg), seed, row_start, row_count, col_start, col_count)


def init_plain_tables(model: torch.nn.Module, seed: int) -> None:
    """Apply :func:`table_init` to every (unsharded) ``EmbeddingBagCollection`` table of ``model``."""
    with torch.no_grad():
        for ebc in model.modules():
            if isinstance(ebc, EmbeddingBagCollection):
                for cfg in ebc.embedding_bag_configs():
                    weight = ebc.embedding_bags[cfg.name].weight
                    weight.copy_(table_values(cfg, seed))


def table_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weights of every ``EmbeddingBagCollection`` and ``EmbeddingCollection`` (DIN's unpooled
    history tables) in ``model``: first-order tables included, numeric-field vectors and dense layers not."""
    tables = (EmbeddingBagCollection, EmbeddingCollection)
    return [p for m in model.modules() if isinstance(m, tables) for p in m.parameters()]


def embedding_param_count(model: torch.nn.Module) -> int:
    """Parameters in the embedding tables of ``model`` (:func:`table_parameters`): the summary JSON's
    ``embedding_params``; compact models from a search report fewer."""
    return sum(p.numel() for p in table_parameters(model))
