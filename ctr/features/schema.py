"""Feature schema: what each raw column is and how it becomes model input.

Kinds:
  * ``categorical``: one value per row → one id (vocabulary fit on train, rare/unseen → OOV id 0).
  * ``sequence``: a token list per row (a string split on ``separator`` or a list column) → many ids,
    pooled (mean/sum) into one vector; e.g. a user's behaviour history.
  * ``numeric``: a float, transformed by ``none | log_square | standardize``; embedded by models as
    value × field vector.

Features that name the same ``table`` share one vocabulary and one embedding table (e.g. a
candidate item and the item ids in a behaviour sequence).
"""

from typing import Literal

from pydantic import Field, model_validator

from ctr.config import StrictConfig
from ctr.errors import ConfigError

Kind = Literal["categorical", "sequence", "numeric"]
NULL_TOKEN = "<null>"  # missing categorical values become this token (its own category)
LABEL_COLUMN = "_label"  # encoded frames: Float32 0/1 label (absent at serving time)
GROUP_COLUMN = "_group"  # encoded frames: Int64 group codes for GAUC (optional)


class FeatureSpec(StrictConfig):
    """One input field.

    Args:
        name (str): field name, also the KJT key and the name used in requests.
        kind (str): ``categorical``, ``sequence`` or ``numeric``.
        source (str | None): raw column to read (defaults to ``name``).
        min_count (int | None): values seen fewer times in train map to OOV (defaults to the schema's).
        table (str | None): embedding table / vocabulary name (defaults to ``name``); shared if repeated.
        transform (str): numeric only: ``none``, ``log_square`` (v > 2 → floor(ln(v)²)) or ``standardize``.
        fill_value (float): numeric only: value used when missing.
        separator (str): sequence only: token separator in string columns.
        max_len (int): sequence only: keep at most the last ``max_len`` tokens (left-truncation: the
            most recent events of a behaviour history survive).
        pooling (str): sequence only: ``mean`` or ``sum`` (pooled into one field vector), or ``none``:
            kept unpooled as a ``[B, L, D]`` history with a mask (DIN); its table is then an
            ``EmbeddingCollection`` shared with the categorical fields naming the same ``table``,
            and models that want one vector per field get its masked mean.
    """

    name: str
    kind: Kind = "categorical"
    source: str | None = None
    min_count: int | None = None
    table: str | None = None
    transform: Literal["none", "log_square", "standardize"] = "none"
    fill_value: float = 0.0
    separator: str = "|"
    max_len: int = 50
    pooling: Literal["mean", "sum", "none"] = "mean"
    encoding: Literal["vocab", "hash"] | None = None

    @property
    def column(self) -> str:
        return self.source or self.name

    @property
    def table_name(self) -> str:
        return self.table or self.name

    @property
    def is_sparse(self) -> bool:
        return self.kind in ("categorical", "sequence")

    @model_validator(mode="after")
    def _check(self) -> "FeatureSpec":
        if self.kind == "numeric" and self.table is not None:
            raise ValueError(f"numeric field {self.name!r} cannot name an embedding table")
        if self.min_count is not None and self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")
        if self.pooling == "none" and self.kind != "sequence":
            raise ValueError(f"pooling: none applies to sequence fields only, not to {self.kind} field {self.name!r}")
        if self.encoding == "hash" and not self.is_sparse:
            raise ValueError(f"encoding: hash applies to categorical and sequence fields only, not to numeric "
                             f"field {self.name!r}")
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")
        return self


class Schema(StrictConfig):
    """All fields of a dataset plus its label and optional group (user) column for GAUC.

    Args:
        label (str): 0/1 label column.
        group (str | None): column whose values group rows for GAUC (e.g. user id).
        min_count (int): default per-feature min count for vocabularies.
        fields (list[FeatureSpec]): the input fields, in model order.
        encoding (str): default encoding of categorical fields, ``vocab`` or ``hash``.
        hash_seed (int): seed of the ``hash`` encoding (saved with the hash spec in the artifact).
        hash_min_cardinality (int): a ``hash`` field whose table has fewer distinct train values
            keeps a vocabulary (stays collisionless: hashing is for the long tail).
    """

    label: str = "label"
    group: str | None = None
    min_count: int = 1
    fields: list[FeatureSpec]
    encoding: Literal["vocab", "hash"] = "vocab"
    hash_seed: int = Field(0, ge=0, lt=2**32)
    hash_min_cardinality: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "Schema":
        names = [f.name for f in self.fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate field names: {dupes}")
        if not self.fields:
            raise ValueError("at least one field is required")
        if self.label in names:
            raise ValueError(f"label column {self.label!r} is also listed as a field")
        return self

    @property
    def sparse_fields(self) -> list[FeatureSpec]:
        return [f for f in self.fields if f.is_sparse]

    @property
    def numeric_fields(self) -> list[FeatureSpec]:
        return [f for f in self.fields if f.kind == "numeric"]

    @property
    def history_fields(self) -> list[FeatureSpec]:
        """Unpooled sequence fields (``pooling: none``), in schema order: the aligned behaviour history."""
        return [f for f in self.fields if f.kind == "sequence" and f.pooling == "none"]

    @property
    def tables(self) -> dict[str, list[FeatureSpec]]:
        """Table name → the sparse fields that read it, in schema order."""
        out: dict[str, list[FeatureSpec]] = {}
        for f in self.sparse_fields:
            out.setdefault(f.table_name, []).append(f)
        return out

    def hash_candidates(self) -> list[str]:
        """Tables whose fields are all categorical or sequence fields with ``hash`` encoding (their own or the
        schema's); a history shares its candidate's table, so both are hashed alike."""
        return [t for t, specs in self.tables.items()
                if all(s.is_sparse and (s.encoding or self.encoding) == "hash" for s in specs)]

    def min_count_of(self, table: str) -> int:
        specs = self.tables[table]
        return min(s.min_count or self.min_count for s in specs)

    def field(self, name: str) -> FeatureSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise ConfigError(f"unknown field {name!r}; known: {[f.name for f in self.fields]}")

    @property
    def raw_columns(self) -> list[str]:
        """Raw columns a reader must provide (fields' sources, label, group)."""
        cols = [f.column for f in self.fields] + [self.label]
        if self.group:
            cols.append(self.group)
        return list(dict.fromkeys(cols))
