"""Canonical raw values: the one definition of "the value of a field" shared by fitting and encoding.

Training reads every raw column as text; serving receives JSON-like rows where a categorical may
arrive as ``12`` or ``"12"`` and a number as ``3`` or ``"3.0"``. These expressions map both to the
same canonical form: categorical → String (integers as decimal text, null → ``NULL_TOKEN``),
sequence → List(String) without empty tokens (null → empty list), numeric → Float64 (empty → null).
"""

from collections.abc import Iterable, Mapping

import polars as pl

from ctr.features.schema import NULL_TOKEN

EMPTY_TOKENS = pl.lit([], dtype=pl.List(pl.String))


def category_expr(column: str) -> pl.Expr:
    """Canonical string of a categorical column (any dtype); nulls become ``NULL_TOKEN``."""
    return pl.col(column).cast(pl.String).fill_null(NULL_TOKEN)


def sequence_expr(column: str, dtype: pl.DataType, separator: str) -> pl.Expr:
    """Token list of a sequence column: a String split on ``separator`` or a List column as strings."""
    if isinstance(dtype, pl.List):
        tokens = pl.col(column).cast(pl.List(pl.String))
    else:
        tokens = pl.col(column).cast(pl.String).str.split(separator)
    keep = pl.element().is_not_null() & (pl.element() != "")
    return tokens.list.eval(pl.element().filter(keep)).fill_null(EMPTY_TOKENS)


def number_expr(column: str, dtype: pl.DataType) -> pl.Expr:
    """Float64 value of a numeric column; text is stripped and parsed, empty text is missing (null)."""
    if dtype == pl.String:
        text = pl.col(column).str.strip_chars()
        return pl.when(text != "").then(text).cast(pl.Float64, strict=False)
    return pl.col(column).cast(pl.Float64, strict=False)


def unparseable_expr(column: str, dtype: pl.DataType) -> pl.Expr:
    """True where a String numeric column holds non-empty text that is not a number."""
    if dtype != pl.String:
        return pl.lit(False)
    text = pl.col(column).str.strip_chars()
    return (text.is_not_null() & (text != "") & number_expr(column, dtype).is_null()).fill_null(False)


def rows_to_frame(rows: Iterable[Mapping], columns: Iterable[str]) -> pl.DataFrame:
    """Serving rows (dicts of raw values) → a frame of String (or List(String)) columns.

    Every scalar becomes its text (``12`` → ``"12"``, ``0.5`` → ``"0.5"``), lists become lists of
    text and missing keys or ``None`` become null, so a request encodes exactly like the same row
    read from a training file.
    """
    rows = list(rows)
    data = {}
    for col in columns:
        values = [_text(r.get(col)) for r in rows]
        is_list = any(isinstance(v, list) for v in values)
        data[col] = pl.Series(col, values, dtype=pl.List(pl.String) if is_list else pl.String)
    return pl.DataFrame(data, height=len(rows))


def _text(value):
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [_text(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"  # as polars casts a Boolean column to String
    return str(value)
