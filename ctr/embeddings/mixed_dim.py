"""Mixed-width tables: every table its own width, projected to the model width per field.

The compact model of a dimension search (OptEmbed's per-field dims; later DNIS's per-block widths). Each
table is an ordinary TorchRec table of width ``widths[table]`` (a multiple of 4, FBGEMM's fused kernels);
a looked-up ``[B, w]`` vector reaches the model as ``[B, D]`` through the learned
:class:`~ctr.embeddings.projection.WidthProjection` of its table, so FM, DeepFM and AutoInt see equal
widths and need no change. Tables not named in ``widths`` are ``D`` wide (no projection). Numeric fields
stay ``value · v`` with ``D``-wide vectors.

YAML (normally written by a search's last phase, not by hand)::

    embedding: {name: mixed_dim, widths: {user: 8, item: 16, city: 4}}
"""

from typing import Literal

import torch

from ctr.embeddings.base import FieldLayout, require_single_id_fields
from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig
from ctr.embeddings.projection import WidthProjection
from ctr.embeddings.tables import FBGEMM_DIM_MULTIPLE
from ctr.errors import ConfigError


class MixedDimConfig(PlainEmbeddingConfig):
    """YAML ``embedding:`` of mixed-width tables (plus the plain options ``init_std``, ``l2``, ``mba_l2``).

    Args:
        name (str): ``mixed_dim``.
        widths (dict[str, int]): table → width (a positive multiple of 4).
    """

    name: Literal["mixed_dim"] = "mixed_dim"
    widths: dict[str, int] = {}


class MixedDimEmbedding(PlainEmbedding):
    """Plain lookups from tables of per-table widths, each projected to ``D``: ``[B, F, D]``.

    Args:
        layout (FieldLayout): schema and table sizes.
        dim (int): the model width ``D``.
        config (MixedDimConfig): the widths.
        device (torch.device | None): device of the tables.

    Example::

        >>> from ctr.features.schema import Schema
        >>> from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
        >>> layout = FieldLayout(Schema(fields=[{"name": "u"}, {"name": "v"}]), {"u": 10, "v": 5})
        >>> emb = MixedDimEmbedding(layout, 8, MixedDimConfig(widths={"u": 4}))
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["u", "v"], torch.tensor([1, 2, 0, 3]), torch.ones(4).long())
        >>> emb(torch.zeros(2, 0), kjt).shape
        torch.Size([2, 2, 8])
    """

    def __init__(self, layout: FieldLayout, dim: int, config: MixedDimConfig,
                 device: torch.device | None = None, prefix: str = "") -> None:
        schema = layout.schema
        unknown = sorted(set(config.widths) - set(schema.tables))
        if unknown:
            raise ConfigError(f"widths name tables {unknown} that the schema does not have (tables: "
                              f"{sorted(schema.tables)}); fix: use the tables' names", "embedding.widths")
        bad = {t: w for t, w in config.widths.items() if w <= 0 or w % FBGEMM_DIM_MULTIPLE}
        if bad:
            raise ConfigError(f"widths {bad} are not positive multiples of {FBGEMM_DIM_MULTIPLE} (FBGEMM fused "
                              "kernels); fix: round them up", "embedding.widths")
        require_single_id_fields(layout, "mixed_dim")
        super().__init__(layout, dim, config, device, prefix)
        self.field_tables = {f.name: f.table_name for f in schema.sparse_fields}
        self.projection = WidthProjection({t: config.widths.get(t, dim) for t in schema.tables}, dim)

    def table_widths(self, layout: FieldLayout, dim: int, config) -> dict[str, int]:
        return dict(config.widths)

    def to_model_width(self, field: str, pooled: torch.Tensor) -> torch.Tensor:
        return self.projection(self.field_tables[field], pooled)
