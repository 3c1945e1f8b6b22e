"""FieldLayout: the fitted facts about the data that model and embedding builders need."""

from dataclasses import dataclass

from ctr.features.schema import Schema


@dataclass(frozen=True)
class FieldLayout:
    """What an embedding method needs to know about the data: schema and fitted table sizes.

    Args:
        schema (Schema): the feature schema.
        table_sizes (dict[str, int]): rows per table (vocabulary size + 1 for OOV id 0).
        table_counts (dict[str, list[int]] | None): per-id train frequencies (DNIS/DIN need them).
        hashed_tables (tuple[str, ...]): tables encoded by hashing (ids are 64-bit hashes, not row
            numbers; their ``table_sizes`` entry is the collisionless row count: distinct train values + 1).
        hash_seed (int): the seed of the hash encoding.
    """

    schema: Schema
    table_sizes: dict[str, int]
    table_counts: dict[str, list[int]] | None = None
    hashed_tables: tuple[str, ...] = ()
    hash_seed: int = 0

    @property
    def num_fields(self) -> int:
        return len(self.schema.sparse_fields) + len(self.schema.numeric_fields)

    @property
    def num_numeric(self) -> int:
        return len(self.schema.numeric_fields)
