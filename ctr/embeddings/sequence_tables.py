"""``EmbeddingConfig`` lists for unpooled (``EmbeddingCollection``) tables: behaviour histories.

A table read by any ``pooling: none`` sequence field (a DIN history) is built as an
``EmbeddingCollection`` table whose feature names are *every* field naming that table, so the
history ids and the candidate's id look up one shared table (same name → same shard). All other
tables stay in the ``EmbeddingBagCollection`` built by :func:`ctr.embeddings.tables.table_configs`.
"""

from torchrec.modules.embedding_configs import EmbeddingConfig

from ctr.embeddings.tables import check_dim
from ctr.features.layout import FieldLayout
from ctr.features.schema import Schema


def sequence_table_names(schema: Schema) -> list[str]:
    """Tables read by an unpooled sequence field, in schema order."""
    return list(dict.fromkeys(f.table_name for f in schema.history_fields))


def bag_layout(layout: FieldLayout) -> FieldLayout | None:
    """The layout restricted to fields whose tables stay pooled (``None`` when no sparse field is left)."""
    shared = set(sequence_table_names(layout.schema))
    if not shared:
        return layout
    fields = [f for f in layout.schema.fields if not (f.is_sparse and f.table_name in shared)]
    if not any(f.is_sparse for f in fields):
        return None
    schema = layout.schema.model_copy(update={"fields": fields})
    return FieldLayout(schema, {t: n for t, n in layout.table_sizes.items() if t not in shared},
                       layout.table_counts)


def sequence_table_configs(layout: FieldLayout, dim: int, prefix: str = "",
                           init_std: float | None = None) -> list[EmbeddingConfig]:
    """One ``EmbeddingConfig`` per shared history table (init as in ``table_configs``)."""
    check_dim(dim, "embedding_dim")
    bound = None if init_std is None else init_std * 3 ** 0.5
    out = []
    for table in sequence_table_names(layout.schema):
        specs = layout.schema.tables[table]
        out.append(EmbeddingConfig(
            name=f"{prefix}{table}", embedding_dim=dim, num_embeddings=layout.table_sizes[table],
            feature_names=[s.name for s in specs],
            weight_init_min=None if bound is None else -bound, weight_init_max=bound))
    return out
