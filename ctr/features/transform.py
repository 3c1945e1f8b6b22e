"""FeatureTransform: fitted artifact + raw rows → the encoded frame that :mod:`ctr.features.tensorize` reads.

Pure polars (no torch), used by ``prepare`` on whole splits and by the scorer on request rows, so
training and serving encode a row identically:

* categorical → ``Int64`` id (unseen or rare → 0); for a hash-encoded table the id is the stable
  64-bit hash of the canonical value (:func:`ctr.features.hashing.hash_series`, no vocabulary),
* sequence → ``List(Int64)`` ids of the last ``max_len`` tokens,
* numeric → ``Float32`` (missing → ``fill_value``; then ``none`` | ``log_square`` | ``standardize``),
* ``_label`` (Float32) when the label column is present, ``_group`` (Int64 hash codes) when the
  schema names a group column and it is present.
"""

from collections.abc import Iterable, Mapping

import polars as pl

from ctr.errors import DataError
from ctr.features.artifact import FeatureArtifact
from ctr.features.hashing import hash_list_series, hash_series
from ctr.features.schema import GROUP_COLUMN, LABEL_COLUMN, FeatureSpec
from ctr.features.values import category_expr, number_expr, rows_to_frame, sequence_expr, unparseable_expr

LINE = "_line"
GROUP_HASH_SEED = 0


class FeatureTransform:
    """Encode raw rows with a fitted :class:`~ctr.features.artifact.FeatureArtifact`.

    Args:
        artifact (FeatureArtifact): schema, vocabularies and numeric statistics fit on train.

    Example::

        >>> from ctr.features.schema import Schema
        >>> schema = Schema.model_validate({"fields": [{"name": "c"}, {"name": "n", "kind": "numeric"}]})
        >>> art = FeatureArtifact.fit(pl.DataFrame({"c": ["a", "a", "b"], "n": ["1", "", "3"], "label": [1, 0, 1]}), schema)
        >>> FeatureTransform(art).apply([{"c": "a", "n": 2}, {"c": "zz", "n": None}]).rows()
        [(1, 2.0), (0, 0.0)]
    """

    def __init__(self, artifact: FeatureArtifact) -> None:
        self.artifact = artifact
        self.schema = artifact.schema
        self._maps = {table: (vocab["value"], vocab["id"]) for table, vocab in artifact.vocabularies().items()}
        self._hashed = set(artifact.hashed_tables)

    def apply(self, rows: pl.DataFrame | pl.LazyFrame | Iterable[Mapping]) -> pl.DataFrame:
        """Raw rows (a frame, or dicts of raw values as a request carries them) → encoded frame."""
        if not isinstance(rows, (pl.DataFrame, pl.LazyFrame)):
            rows = list(rows)
            present = set().union(*(r.keys() for r in rows))
            fields = {f.column for f in self.schema.fields}
            rows = rows_to_frame(rows, [c for c in self.schema.raw_columns if c in fields or c in present])
        lf = rows.lazy()
        dtypes = lf.collect_schema()
        self._check_columns(dtypes)
        exprs = [self._encode(f, dtypes[f.column]) for f in self.schema.fields]
        checks = [unparseable_expr(f.column, dtypes[f.column]).alias(f"_bad_{f.name}")
                  for f in self.schema.numeric_fields]
        extra = self._label_and_group(dtypes) + ([pl.col(LINE)] if LINE in dtypes else [])
        try:
            out = lf.select(exprs + extra + checks).collect()
        except pl.exceptions.PolarsError as exc:
            raise DataError(f"cannot encode these rows: {str(exc).strip().splitlines()[0]}") from None
        self._raise_unparseable(out)
        return out.drop([c.meta.output_name() for c in checks] + ([LINE] if LINE in dtypes else []))

    def encode_lazy(self, rows: pl.LazyFrame) -> pl.LazyFrame:
        """The encoding of :meth:`apply` as a lazy query (for streaming ``prepare``).

        Unlike :meth:`apply` it does not check numeric text: the readers already reject (or skip)
        rows whose numeric fields do not parse, and an unparseable value would encode as ``fill_value``.
        Categorical ids come from left joins on the vocabularies (``maintain_order="left"``), which
        polars' streaming engine runs batch by batch; the same ids as :meth:`apply`'s lookups.
        """
        dtypes = rows.collect_schema()
        self._check_columns(dtypes)
        lf, exprs = rows, []
        for spec in self.schema.fields:
            if spec.kind != "categorical" or spec.table_name in self._hashed:  # hash ids need no vocabulary join
                exprs.append(self._encode(spec, dtypes[spec.column]))
                continue
            key, found = f"_key_{spec.name}", f"_id_{spec.name}"
            values, ids = self._maps.get(spec.table_name, (pl.Series([], dtype=pl.String),
                                                           pl.Series([], dtype=pl.Int64)))
            vocab = pl.LazyFrame({key: values, found: ids})
            lf = (lf.with_columns(category_expr(spec.column).alias(key))
                  .join(vocab, on=key, how="left", maintain_order="left").drop(key))
            exprs.append(pl.col(found).fill_null(0).cast(pl.Int64).alias(spec.name))
        return lf.select(exprs + self._label_and_group(dtypes))

    def _check_columns(self, dtypes: pl.Schema) -> None:
        missing = [f.column for f in self.schema.fields if f.column not in dtypes]
        if missing:
            raise DataError(f"raw column(s) {missing} required by the schema are missing; got columns "
                            f"{list(dtypes.names())}", column=missing[0])

    def _encode(self, spec: FeatureSpec, dtype: pl.DataType) -> pl.Expr:
        if spec.kind == "numeric":
            return self._numeric(spec, dtype)
        values, ids = self._maps.get(spec.table_name, (pl.Series([], dtype=pl.String),
                                                       pl.Series([], dtype=pl.Int64)))
        if spec.kind == "categorical" and spec.table_name in self._hashed:
            seed = self.artifact.hash_seed
            encoded = category_expr(spec.column).map_batches(lambda s: hash_series(s, seed), return_dtype=pl.Int64)
        elif spec.kind == "categorical":
            encoded = category_expr(spec.column).replace_strict(values, ids, default=0, return_dtype=pl.Int64)
        elif spec.table_name in self._hashed:  # a hashed table's sequence: every token hashed as its candidate
            seed = self.artifact.hash_seed
            encoded = sequence_expr(spec.column, dtype, spec.separator).list.tail(spec.max_len).map_batches(
                lambda s: hash_list_series(s, seed), return_dtype=pl.List(pl.Int64))
        else:
            lookup = pl.element().replace_strict(values, ids, default=0, return_dtype=pl.Int64)
            encoded = sequence_expr(spec.column, dtype, spec.separator).list.tail(spec.max_len).list.eval(lookup)
        return encoded.alias(spec.name)

    def _numeric(self, spec: FeatureSpec, dtype: pl.DataType) -> pl.Expr:
        value = number_expr(spec.column, dtype).fill_nan(None).fill_null(spec.fill_value)
        if spec.transform == "log_square":
            value = pl.when(value > 2).then(value.log().pow(2).floor()).otherwise(value)
        elif spec.transform == "standardize":
            stats = self.artifact.numeric[spec.name]
            value = (value - stats["mean"]) / stats["std"]
        return value.cast(pl.Float32).alias(spec.name)

    def _label_and_group(self, dtypes: pl.Schema) -> list[pl.Expr]:
        out = []
        label = self.schema.label
        if label in dtypes:
            value = number_expr(label, dtypes[label])
            out.append(pl.when(value == -1.0).then(0.0).otherwise(value).cast(pl.Float32).alias(LABEL_COLUMN))
        group = self.schema.group
        if group is not None and group in dtypes:
            codes = category_expr(group).hash(seed=GROUP_HASH_SEED).reinterpret(signed=True)
            out.append(codes.alias(GROUP_COLUMN))
        return out

    def _raise_unparseable(self, out: pl.DataFrame) -> None:
        for f in self.schema.numeric_fields:
            bad = out.get_column(f"_bad_{f.name}")
            if bad.any():
                row = int(bad.arg_true()[0])
                line = int(out[LINE][row]) if LINE in out.columns else None
                where = "" if line is not None else f" (row {row})"
                raise DataError(f"numeric field {f.name!r}: value is not a number{where}; fix the data or "
                                "declare the field categorical", line=line, column=f.column)
