"""RowEncoder: request rows (dicts of raw values) → :class:`~ctr.features.tensorize.EncodedColumns`, fast.

The same fitted artifact and the same rules as :class:`~ctr.features.transform.FeatureTransform`
(which encodes whole splits with polars), specialised for small request batches: vocabularies
become Python dicts once at load time, so a request costs a dict lookup per value instead of a
polars ``replace_strict`` whose cost grows with the vocabulary. ``tests/ctr/features`` check that
both produce identical ids and values on real datasets.

Accepted raw values per field kind (anything else is an :class:`~ctr.errors.InvalidRequestError`
that names the field):

* categorical: ``str`` or ``int`` (canonical text ``str(v)``, as a training file holds it); ``None``
  is the missing category;
* numeric: ``int``, ``float`` or numeric text (at most 64 characters); ``None``, NaN and empty text
  are missing (→ ``fill_value``), ±inf is refused; then ``log_square`` or ``standardize`` as in training;
* sequence: a list of ``str``/``int`` tokens or one string split on the field's ``separator``;
  the last ``max_len`` tokens are kept.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from ctr.errors import InvalidRequestError
from ctr.features.artifact import FeatureArtifact
from ctr.features.hashing import hash_texts
from ctr.features.schema import NULL_TOKEN, FeatureSpec
from ctr.features.tensorize import EncodedColumns

MissingPolicy = Literal["error", "null"]
MAX_NUMBER_TEXT = 64  # longer numeric text is refused without parsing it
_ABSENT = object()


class RowEncoder:
    """Encode request rows with a fitted :class:`~ctr.features.artifact.FeatureArtifact`.

    Args:
        artifact (FeatureArtifact): schema, vocabularies and numeric statistics fit on train.
        missing (str): ``error`` — every schema feature must be present in a row (an explicit ``None``
            is the missing value); ``null`` — an absent feature counts as missing.
        strict (bool): reject features the schema does not know (else ignore them).

    Example::

        >>> import polars as pl
        >>> from ctr.features.schema import Schema
        >>> schema = Schema.model_validate({"fields": [{"name": "c"}, {"name": "n", "kind": "numeric"}]})
        >>> art = FeatureArtifact.fit(pl.DataFrame({"c": ["a", "a", "b"], "n": ["1", "", "3"]}), schema)
        >>> cols = RowEncoder(art).encode([{"c": "a", "n": 2}, {"c": "zz", "n": None}])
        >>> cols.ids.tolist(), cols.dense.tolist()
        ([[1], [0]], [[2.0], [0.0]])
    """

    def __init__(self, artifact: FeatureArtifact, missing: MissingPolicy = "error", strict: bool = True) -> None:
        self.artifact = artifact
        self.schema = artifact.schema
        self.missing = missing
        self.strict = strict
        self._maps = {table: dict(zip(v["value"].to_list(), v["id"].to_list(), strict=True))
                      for table, v in artifact.vocabularies().items()}
        self._hashed = set(artifact.hashed_tables)
        self._categorical = [f for f in self.schema.sparse_fields if f.kind == "categorical"]
        self._sequences = [f for f in self.schema.sparse_fields if f.kind == "sequence"]
        self._numeric = self.schema.numeric_fields
        self.columns = list(dict.fromkeys(f.column for f in self.schema.fields))
        self._known = frozenset(self.columns)

    def check_names(self, names) -> None:
        """Raise for a feature name the schema does not know (only when ``strict``)."""
        if not self.strict:
            return
        unknown = sorted(n for n in names if n not in self._known)
        if unknown:
            raise InvalidRequestError(f"unknown feature {unknown[0]!r}: this model's features are "
                                      f"{_short(self.columns)}", field=unknown[0])

    def encode(self, rows: Sequence[Mapping]) -> EncodedColumns:
        """Rows → encoded arrays (ids ``[B, C]``, sequences, dense ``[B, N]``), labels all zero."""
        n = len(rows)
        if self.strict:
            seen: set = set()
            for r in rows:
                seen.update(r.keys())
            self.check_names(seen)
        ids = np.zeros((n, len(self._categorical)), dtype=np.int64)
        for j, f in enumerate(self._categorical):
            ids[:, j] = self._categorical_ids(f, self._column(rows, f))
        seqs = {f.name: self._sequence_ids(f, self._column(rows, f)) for f in self._sequences}
        dense = np.zeros((n, len(self._numeric)), dtype=np.float32)
        for j, f in enumerate(self._numeric):
            dense[:, j] = self._numbers(f, self._column(rows, f))
        return EncodedColumns(self.schema, ids, seqs, dense, np.zeros(n, dtype=np.float32), None)

    def _column(self, rows: Sequence[Mapping], f: FeatureSpec) -> list:
        col = f.column
        values = [r.get(col, _ABSENT) for r in rows]
        if self.missing == "error":
            for i, v in enumerate(values):
                if v is _ABSENT:
                    raise InvalidRequestError(f"example {i}: required feature {col!r} is missing; send it "
                                              "(an empty value means 'missing')", field=col, example=i)
        return values

    def _categorical_ids(self, f: FeatureSpec, values: list) -> list[int] | np.ndarray:
        if f.table_name in self._hashed:  # vocabulary-free: every value, seen in training or not, gets an id
            texts = [v if type(v) is str else _category_text(f, v, i) for i, v in enumerate(values)]
            return hash_texts(texts, self.artifact.hash_seed)
        table = self._maps.get(f.table_name, {})
        return [table.get(v, 0) if type(v) is str else table.get(_category_text(f, v, i), 0)
                for i, v in enumerate(values)]

    def _sequence_ids(self, f: FeatureSpec, values: list) -> tuple[np.ndarray, np.ndarray]:
        table = self._maps.get(f.table_name, {})
        lengths = np.zeros(len(values) + 1, dtype=np.int64)
        out: list[int] = []
        for i, v in enumerate(values):
            tokens = _tokens(f, v, i)[-f.max_len:]
            if f.table_name in self._hashed:  # vocabulary-free, as the table's categorical field
                out.extend(hash_texts(tokens, self.artifact.hash_seed))
            else:
                out.extend(table.get(t, 0) for t in tokens)
            lengths[i + 1] = len(tokens)
        return np.cumsum(lengths), np.asarray(out, dtype=np.int64)

    def _numbers(self, f: FeatureSpec, values: list) -> np.ndarray:
        x = _plain_numbers(values)
        if x is None:  # text, None, bool, ±inf, ...: value by value, with errors that name the example
            x = np.array([_number(f, v, i) for i, v in enumerate(values)], dtype=np.float64)
        x = np.where(np.isnan(x), f.fill_value, x)
        if f.transform == "log_square":
            with np.errstate(invalid="ignore", divide="ignore"):
                x = np.where(x > 2, np.floor(np.log(x) ** 2), x)
        elif f.transform == "standardize":
            stats = self.artifact.numeric[f.name]
            x = (x - stats["mean"]) / stats["std"]
        return x.astype(np.float32)


def _type_name(v) -> str:
    return "list" if isinstance(v, (list, tuple)) else type(v).__name__


def _category_text(f: FeatureSpec, v, i: int) -> str:
    if v is None or v is _ABSENT:
        return NULL_TOKEN
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    raise InvalidRequestError(f"example {i}: feature {f.column!r} is categorical and takes a string or an "
                              f"integer, got {_type_name(v)}", field=f.column, example=i)


def _plain_numbers(values: list) -> np.ndarray | None:
    """The usual request column, numbers sent as ``int``/``float`` and all finite, ``None`` or NaN for missing:
    one array conversion (``None`` becomes NaN) instead of a checked Python call per value. ``None`` for
    anything else."""
    for v in values:
        t = type(v)
        if t is not float and t is not int and v is not None:  # bool, numpy scalars, text: the checked path
            return None
    try:
        x = np.array(values, dtype=np.float64)
    except OverflowError:  # an int beyond float range
        return None
    return None if np.isinf(x).any() else x


def _number(f: FeatureSpec, v, i: int) -> float:
    if v is None or v is _ABSENT:
        return math.nan
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        try:
            return _finite(f, float(v), i)
        except OverflowError:  # an int beyond float range
            return _finite(f, math.inf, i)
    if isinstance(v, str):
        text = v.strip()
        if not text:
            return math.nan
        if "_" not in text and len(text) <= MAX_NUMBER_TEXT:
            try:
                return _finite(f, float(text), i)
            except ValueError:
                pass
        raise InvalidRequestError(f"example {i}: feature {f.column!r} is numeric; {_clip(v)!r} is not a number",
                                  field=f.column, example=i)
    raise InvalidRequestError(f"example {i}: feature {f.column!r} is numeric and takes a number, got "
                              f"{_type_name(v)}", field=f.column, example=i)


def _finite(f: FeatureSpec, x: float, i: int) -> float:
    """NaN is a missing value (as in training); ±inf is refused."""
    if math.isinf(x):
        raise InvalidRequestError(f"example {i}: feature {f.column!r} is numeric and must be finite, got {x}",
                                  field=f.column, example=i)
    return x


def _tokens(f: FeatureSpec, v, i: int) -> list[str]:
    if v is None or v is _ABSENT:
        return []
    if isinstance(v, str):
        return [t for t in v.split(f.separator) if t]
    if isinstance(v, (list, tuple)):
        out = []
        for t in v:
            if t is None:
                continue
            if isinstance(t, str):
                if t:
                    out.append(t)
            elif isinstance(t, int) and not isinstance(t, bool):
                out.append(str(t))
            else:
                raise InvalidRequestError(f"example {i}: feature {f.column!r} is a sequence of strings or "
                                          f"integers, got an element of type {_type_name(t)}",
                                          field=f.column, example=i)
        return out
    raise InvalidRequestError(f"example {i}: feature {f.column!r} is a sequence and takes a list or a "
                              f"{f.separator!r}-separated string, got {_type_name(v)}", field=f.column, example=i)


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "…"


def _short(names: list[str], n: int = 12) -> str:
    return ", ".join(names[:n]) + (f", … ({len(names)} in all)" if len(names) > n else "")
