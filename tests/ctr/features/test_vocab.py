import polars as pl
import pytest

from ctr.features.schema import NULL_TOKEN, Schema
from ctr.features.vocab import fit_numeric_stats, fit_vocab


def make_schema(fields, **kw) -> Schema:
    return Schema.model_validate({"fields": fields, **kw})


def table(vocab: pl.DataFrame, name: str) -> list[tuple]:
    return vocab.filter(pl.col("table") == name).select("id", "value", "count").rows()


def test_ids_follow_frequency_then_value_and_oov_counts_rare_values():
    train = pl.DataFrame({"c": ["b", "a", "c", "a", "b", "d", "a", "e", "e"]})
    vocab = fit_vocab(train, make_schema([{"name": "c"}], min_count=2))
    # a:3, b:2, e:2 (tie broken by value), c and d (1 each) fall below min_count → OOV count 2
    assert table(vocab, "c") == [(0, None, 2), (1, "a", 3), (2, "b", 2), (3, "e", 2)]


def test_per_field_min_count_and_nulls_are_a_value():
    train = pl.DataFrame({"c": ["x", None, None, "y"], "d": ["p", "p", "q", None]})
    vocab = fit_vocab(train, make_schema([{"name": "c", "min_count": 2}, {"name": "d"}]))
    assert table(vocab, "c") == [(0, None, 2), (1, NULL_TOKEN, 2)]
    assert table(vocab, "d") == [(0, None, 0), (1, "p", 2), (2, NULL_TOKEN, 1), (3, "q", 1)]


def test_shared_table_counts_values_of_all_its_fields():
    train = pl.DataFrame({"item": ["i1", "i2", "i1"], "hist": ["i2|i3|i2", "", None],
                          "tags": [["t1", "t2"], [], None]})
    schema = make_schema([{"name": "item"}, {"name": "hist", "kind": "sequence", "table": "item"},
                          {"name": "tags", "kind": "sequence"}])
    vocab = fit_vocab(train.lazy(), schema)
    assert table(vocab, "item") == [(0, None, 0), (1, "i2", 3), (2, "i1", 2), (3, "i3", 1)]
    assert table(vocab, "tags") == [(0, None, 0), (1, "t1", 1), (2, "t2", 1)]
    assert "hist" not in set(vocab["table"])


def test_integer_columns_use_decimal_text():
    vocab = fit_vocab(pl.DataFrame({"c": [7, 7, 12]}), make_schema([{"name": "c"}]))
    assert table(vocab, "c") == [(0, None, 0), (1, "7", 2), (2, "12", 1)]


def test_numeric_stats_after_fill():
    train = pl.DataFrame({"n": ["1", "", "5", None], "m": [2.0, 2.0, 2.0, 2.0]})
    schema = make_schema([{"name": "n", "kind": "numeric", "fill_value": 3.0}, {"name": "m", "kind": "numeric"}])
    stats = fit_numeric_stats(train, schema)
    assert stats["n"]["mean"] == pytest.approx(3.0) and stats["n"]["std"] == pytest.approx(2 ** 0.5)
    assert stats["m"] == {"mean": 2.0, "std": 1.0}  # constant column: std 1, no division by zero
