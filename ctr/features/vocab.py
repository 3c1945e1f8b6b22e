"""Vocabularies and numeric statistics, fit on the train split only.

One vocabulary per **table** (fields naming the same ``table`` share it). Values seen at least
``schema.min_count_of(table)`` times get ids ``1..V`` in descending frequency order (ties broken by
the value string), so id order is frequency order (DNIS relies on it); id 0 is OOV and its count is
the total count of the values below ``min_count``. Missing categorical values count as
``NULL_TOKEN``. The result is one frame with columns ``table, id, value, count`` (the id-0 row has a
null value), which is exactly what ``vocab.parquet`` stores.
"""

import math

import polars as pl

from ctr.features.schema import Schema
from ctr.features.values import category_expr, number_expr, sequence_expr

VOCAB_SCHEMA = {"table": pl.String, "id": pl.Int64, "value": pl.String, "count": pl.Int64}


def fit_vocab(train: pl.DataFrame | pl.LazyFrame, schema: Schema, skip: set[str] | frozenset = frozenset()
              ) -> pl.DataFrame:
    """Fit every table's vocabulary on ``train`` (raw columns) in one lazy polars query.

    Args:
        train: the train split's raw columns (String/int/list, as readers or requests give them).
        schema: the feature schema; its tables, min counts and sequence separators are used.
        skip: tables that get no vocabulary (hash-encoded ones).

    Returns:
        Frame ``table, id, value, count`` sorted by table then id; every table has an id-0 row.
    """
    tables = [t for t in schema.tables if t not in skip]
    if not tables:
        return pl.DataFrame(schema=VOCAB_SCHEMA)
    counts = _counts_with_min(train, schema, tables)
    kept = (counts.filter(pl.col("count") >= pl.col("min_count"))
            .sort(["table", "count", "value"], descending=[False, True, False])
            .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("table").alias("id")))
    rare = counts.filter(pl.col("count") < pl.col("min_count")).group_by("table").agg(pl.col("count").sum())
    oov = (pl.DataFrame({"table": tables}).join(rare, on="table", how="left")
           .select("table", pl.lit(0, pl.Int64).alias("id"), pl.lit(None, pl.String).alias("value"),
                   pl.col("count").fill_null(0).cast(pl.Int64)))
    out = pl.concat([oov, kept.select(list(VOCAB_SCHEMA))]).cast(VOCAB_SCHEMA)
    return out.sort(["table", "id"])


def fit_cardinality(train: pl.DataFrame | pl.LazyFrame, schema: Schema, tables: list[str]) -> dict[str, int]:
    """Per table in ``tables``: distinct train values seen at least ``min_count`` times (a count, not a
    vocabulary), i.e. the vocabulary size a ``vocab`` encoding would have: the collisionless reference."""
    if not tables:
        return {}
    kept = (_counts_with_min(train, schema, tables).filter(pl.col("count") >= pl.col("min_count"))
            .group_by("table").agg(pl.len().alias("n")))
    found = dict(zip(kept["table"].to_list(), kept["n"].to_list(), strict=True))
    return {t: int(found.get(t, 0)) for t in tables}


def _counts_with_min(train: pl.DataFrame | pl.LazyFrame, schema: Schema, tables: list[str]) -> pl.DataFrame:
    """``table, value, count, min_count``: the train count of every value of ``tables`` (one streaming
    group-by) beside its table's ``min_count``."""
    counts = _value_counts(train.lazy(), schema, tables).collect(engine="streaming")
    mins = pl.DataFrame({"table": tables, "min_count": [schema.min_count_of(t) for t in tables]})
    return counts.join(mins, on="table", how="left")


def _value_counts(lf: pl.LazyFrame, schema: Schema, tables: list[str]) -> pl.LazyFrame:
    dtypes = lf.collect_schema()
    parts = []
    for table in tables:
        for spec in schema.tables[table]:
            if spec.kind == "categorical":
                value = category_expr(spec.column)
                parts.append(lf.select(pl.lit(table).alias("table"), value.alias("value")))
            else:
                value = sequence_expr(spec.column, dtypes[spec.column], spec.separator)
                part = lf.select(pl.lit(table).alias("table"), value.alias("value")).explode("value")
                parts.append(part.drop_nulls("value"))
    return pl.concat(parts).group_by("table", "value").agg(pl.len().cast(pl.Int64).alias("count"))


def fit_numeric_stats(train: pl.DataFrame | pl.LazyFrame, schema: Schema) -> dict[str, dict[str, float]]:
    """Mean and (population) std of each numeric field's raw value after ``fill_value``, on ``train``.

    A constant or empty column gets ``std = 1`` so ``standardize`` never divides by zero.
    """
    fields = schema.numeric_fields
    if not fields:
        return {}
    lf = train.lazy()
    dtypes = lf.collect_schema()
    exprs = []
    for f in fields:
        value = number_expr(f.column, dtypes[f.column]).fill_null(f.fill_value)
        exprs += [value.mean().alias(f"{f.name}.mean"), value.std(ddof=0).alias(f"{f.name}.std")]
    row = lf.select(exprs).collect().row(0, named=True)
    stats = {}
    for f in fields:
        mean, std = row[f"{f.name}.mean"], row[f"{f.name}.std"]
        stats[f.name] = {"mean": float(mean) if _finite(mean) else 0.0,
                         "std": float(std) if _finite(std) and std > 0 else 1.0}
    return stats


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)
