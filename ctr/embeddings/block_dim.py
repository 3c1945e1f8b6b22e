"""Per-block widths: every (table, id block) its own table and width, projected to the model width.

The compact model of DNIS (:mod:`ctr.embeddings.dnis`). A table's ids are cut into contiguous blocks
(``starts[table]``: ``b + 1`` ids, block ``k`` = ids ``[starts[k], starts[k+1])``; frequency blocks in DNIS);
block ``k`` of every table has width ``widths[k]`` (a multiple of 4, or 0). Each non-empty (table, block)
with a width is an ordinary TorchRec table ``<table>@b<k>`` with just that block's rows; the forward routes
each id to its block's table (KJT key ``<field>@b<k>``, local id ``id − starts[k]``), so every lookup is a
stock, shardable FBGEMM lookup. A block's ``[B, w_k]`` vector reaches the model as ``[B, D]`` through one
learned map per block (:class:`~ctr.embeddings.projection.WidthProjection`, shared by the tables); a
width-0 block reads a zero vector (its ids keep their first-order weights). Numeric fields stay
``value · v`` with ``D``-wide vectors.

YAML (written by DNIS's materialise phase, not by hand)::

    embedding: {name: block_dim, starts: {user: [0, 10, 400, 955]}, widths: [16, 8, 0]}
"""

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from ctr.config import StrictConfig
from ctr.embeddings.base import FieldEmbedding, FieldLayout, require_single_id_fields
from ctr.embeddings.plain import NumericFieldEmbedding
from ctr.embeddings.projection import WidthProjection
from ctr.embeddings.tables import FBGEMM_DIM_MULTIPLE
from ctr.errors import ConfigError


class BlockDimConfig(StrictConfig):
    """YAML ``embedding:`` of per-block widths.

    Args:
        name (str): ``block_dim``.
        starts (dict[str, list[int]]): table → block starts, ``0 = s_0 ≤ s_1 ≤ … ≤ s_b`` = the table's rows.
        widths (list[int]): width of block ``k`` in every table (0 or a positive multiple of 4).
        init_std (float | None): init scale of the block tables (uniform with this std).
        l2 (float): in-batch L2 ``l2 · mean_B Σ_F ‖e‖²`` on the looked-up (projected) sparse field vectors.
    """

    name: Literal["block_dim"] = "block_dim"
    starts: dict[str, list[int]]
    widths: list[int]
    init_std: float | None = 0.01
    l2: float = Field(0.0, ge=0.0)


def block_key(name: str, block: int) -> str:
    """The table / KJT key of block ``block`` of ``name``."""
    return f"{name}@b{block}"


class BlockDimEmbedding(FieldEmbedding):
    """``[B, F, D]`` from per-(table, block) tables of per-block widths.

    Args:
        layout (FieldLayout): schema and table sizes.
        dim (int): the model width ``D``.
        config (BlockDimConfig): block starts and widths.
        device (torch.device | None): device of the tables (``meta`` before sharding).

    Example::

        >>> from ctr.features.schema import Schema
        >>> layout = FieldLayout(Schema(fields=[{"name": "u"}]), {"u": 10})
        >>> emb = BlockDimEmbedding(layout, 8, BlockDimConfig(starts={"u": [0, 4, 10]}, widths=[8, 4]))
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["u"], torch.tensor([1, 7]), torch.tensor([1, 1]))
        >>> emb(torch.zeros(2, 0), kjt).shape, sorted(emb.table_rows)
        (torch.Size([2, 1, 8]), ['u@b0', 'u@b1'])
    """

    def __init__(self, layout: FieldLayout, dim: int, config: BlockDimConfig,
                 device: torch.device | None = None, prefix: str = "") -> None:
        super().__init__()
        schema = layout.schema
        require_single_id_fields(layout, "block_dim")
        _check(config, layout)
        self.embedding_dim = dim
        self.num_fields = layout.num_fields
        self.sparse_names = [f.name for f in schema.sparse_fields]
        self.field_names = self.sparse_names + [f.name for f in schema.numeric_fields]
        bound = None if config.init_std is None else config.init_std * 3 ** 0.5
        tables, self.table_rows = [], {}
        self.keys: list[tuple[str, str, int, int, int]] = []  # (KJT key, field, block, first id, end id)
        for table, specs in schema.tables.items():
            s = config.starts[table]
            for k, width in enumerate(config.widths):
                rows = s[k + 1] - s[k]
                if width == 0 or rows == 0:
                    continue
                name = block_key(table, k)
                self.table_rows[name] = rows
                feats = [block_key(f.name, k) for f in specs]
                self.keys += [(block_key(f.name, k), f.name, k, s[k], s[k + 1]) for f in specs]
                tables.append(EmbeddingBagConfig(
                    name=f"{prefix}{name}", embedding_dim=width, num_embeddings=rows, feature_names=feats,
                    pooling=PoolingType.SUM, weight_init_min=None if bound is None else -bound,
                    weight_init_max=bound))
        self.ebc = EmbeddingBagCollection(tables=tables, device=device) if tables else None
        self.block_keys: dict[int, list[str]] = {}  # block -> its KJT keys (one per field that has rows there)
        slots: dict[int, list[int]] = {}
        for key, field, k, _, _ in self.keys:
            self.block_keys.setdefault(k, []).append(key)
            slots.setdefault(k, []).append(self.sparse_names.index(field))
        for k, idx in slots.items():
            self.register_buffer(f"slots_b{k}", torch.tensor(idx, dtype=torch.long), persistent=False)
        self.projection = WidthProjection({f"b{k}": w for k, w in enumerate(config.widths) if w}, dim)
        self.numeric = NumericFieldEmbedding(layout.num_numeric, dim, config.init_std or 0.01) \
            if layout.num_numeric else None
        self.l2 = config.l2
        self._penalty: torch.Tensor | None = None

    def route(self, sparse: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """Input KJT (one id per row and field) → the block tables' KJT: id ``i`` of block ``k`` goes to key
        ``<field>@b<k>`` as ``i − starts[k]``; the other blocks' keys get an empty bag for that row."""
        jts = sparse.to_dict()
        out = {}
        for key, field, _, lo, hi in self.keys:
            ids = jts[field].values()
            inside = (ids >= lo) & (ids < hi)
            out[key] = JaggedTensor(values=ids[inside] - lo, lengths=inside.to(torch.int64))
        return KeyedJaggedTensor.from_jt_dict(out)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        batch = sparse.stride()
        pooled = self.ebc(self.route(sparse)).to_dict() if self.ebc is not None else {}
        fields = torch.zeros(batch, len(self.sparse_names), self.embedding_dim, device=dense.device)
        for k, keys in self.block_keys.items():  # one projection per block over all its fields
            vecs = self.projection(f"b{k}", torch.stack([pooled[key] for key in keys], dim=1))  # [B, n_k, D]
            fields = fields.index_add(1, getattr(self, f"slots_b{k}").to(vecs.device), vecs)  # empty bags: zeros
        parts = [fields]  # [B, S, D]
        if self.training and self.l2 > 0:
            self._penalty = self.l2 * parts[0].pow(2).sum(dim=(1, 2)).mean()
        if self.numeric is not None:
            parts.append(self.numeric(dense))
        return torch.cat(parts, dim=1)

    def regularizer(self) -> torch.Tensor | None:
        penalty, self._penalty = self._penalty, None
        return penalty


def _check(config: BlockDimConfig, layout: FieldLayout) -> None:
    tables = set(layout.schema.tables)
    if set(config.starts) != tables:
        raise ConfigError(f"starts must name exactly the schema's tables {sorted(tables)}, got "
                          f"{sorted(config.starts)}", "embedding.starts")
    bad = [w for w in config.widths if w < 0 or w % FBGEMM_DIM_MULTIPLE]
    if bad:
        raise ConfigError(f"widths {bad} are not 0 or positive multiples of {FBGEMM_DIM_MULTIPLE} (FBGEMM fused "
                          "kernels); fix: round them up", "embedding.widths")
    for t, s in config.starts.items():
        ok = len(s) == len(config.widths) + 1 and s[0] == 0 and s[-1] == layout.table_sizes[t] \
            and bool(np.all(np.diff(s) >= 0))
        if not ok:
            raise ConfigError(f"starts[{t!r}] must be {len(config.widths) + 1} non-decreasing ids from 0 to the "
                              f"table's {layout.table_sizes[t]} rows, got {s}", f"embedding.starts.{t}")
