"""RowEncoder (request path) must encode exactly like FeatureTransform (training path), and reject bad values."""

import numpy as np
import polars as pl
import pytest

from ctr.data.readers import DataConfig, read_file
from ctr.errors import InvalidRequestError
from ctr.features.artifact import FeatureArtifact
from ctr.features.row_encoder import RowEncoder
from ctr.features.schema import Schema
from ctr.features.tensorize import EncodedColumns
from ctr.features.transform import FeatureTransform
from tests.conftest import require_shared
from tests.ctr.features.test_transform import SCHEMA, TRAIN

GOOD = {"user": "1", "item": "a", "hist": ["a", "b"], "cnt": 3, "price": 1.5, "raw_col": 0.5}


def _same(frame: pl.DataFrame, artifact: FeatureArtifact) -> EncodedColumns:
    """Encode ``frame`` both ways and assert identical arrays; returns the request-path result."""
    expected = EncodedColumns.from_frame(FeatureTransform(artifact).apply(frame), artifact.schema)
    rows = frame.select([f.column for f in artifact.schema.fields]).to_dicts()
    got = RowEncoder(artifact).encode(rows)
    np.testing.assert_array_equal(got.ids, expected.ids)
    np.testing.assert_array_equal(got.dense, expected.dense)
    assert got.seqs.keys() == expected.seqs.keys()
    for name in got.seqs:
        np.testing.assert_array_equal(got.seqs[name][0], expected.seqs[name][0])
        np.testing.assert_array_equal(got.seqs[name][1], expected.seqs[name][1])
    return got


def test_same_as_training_transform_small():
    art = FeatureArtifact.fit(TRAIN, SCHEMA)
    unseen = pl.DataFrame({"user": ["9", None], "item": ["zz", "b"], "hist": ["zz|a||b", None],
                           "cnt": ["1e3", " 7 "], "price": ["nan", None], "raw_col": ["-2", ""], "y": [0.0, 1.0],
                           "_line": [6, 7]})
    got = _same(pl.concat([TRAIN, unseen]), art)
    assert got.ids[-2].tolist() == [0, 0]  # unseen user and item → OOV
    # typed request values (ints for categoricals, numbers, token lists) encode like their text
    typed = RowEncoder(art).encode([{"user": 1, "item": "a", "hist": ["a", "b", "c"], "cnt": 100, "price": None,
                                     "raw_col": 2}])
    text = RowEncoder(art).encode([{"user": "1", "item": "a", "hist": "a|b|c", "cnt": "100", "price": "",
                                    "raw_col": "2"}])
    np.testing.assert_array_equal(typed.ids, text.ids)
    np.testing.assert_array_equal(typed.dense, text.dense)
    np.testing.assert_array_equal(typed.seqs["hist"][1], text.seqs["hist"][1])


@pytest.mark.data
@pytest.mark.parametrize("dataset", ["criteo", "frappe", "avazu"])
def test_same_as_training_transform_on_shared_data(dataset):
    import yaml

    from tests.conftest import REPO

    example = {"criteo": "criteo_sample.yaml", "frappe": "frappe.yaml", "avazu": "avazu_sample.yaml"}[dataset]
    raw = yaml.safe_load((REPO / "pipelines" / "examples" / example).read_text())
    spec = raw.get("base", raw)
    data = spec["data"]
    path = require_shared(*data["train"].split("/shared/data/")[1].split("/"))
    cfg = DataConfig.parse({k: v for k, v in data.items() if k not in ("split",)}, "data")
    schema = Schema.parse(spec["features"], "features")
    frame = read_file(path, cfg, schema.raw_columns).head(3000)
    art = FeatureArtifact.fit(frame.head(2000), schema)
    got = _same(frame, art)
    assert (got.ids == 0).any() and (got.ids > 0).any()  # both known and OOV values were exercised


@pytest.mark.parametrize("row, field, words", [
    ({**GOOD, "user": 1.5}, "user", "categorical"),
    ({**GOOD, "user": ["1"]}, "user", "categorical"),
    ({**GOOD, "cnt": "abc"}, "cnt", "not a number"),
    ({**GOOD, "cnt": [1.0]}, "cnt", "numeric"),
    ({**GOOD, "hist": 3}, "hist", "sequence"),
    ({**GOOD, "hist": [1.5]}, "hist", "sequence"),
    ({**GOOD, "bogus": "x"}, "bogus", "unknown feature"),
    ({k: v for k, v in GOOD.items() if k != "price"}, "price", "missing"),
])
def test_bad_values_name_the_field(row, field, words):
    enc = RowEncoder(FeatureArtifact.fit(TRAIN, SCHEMA))
    with pytest.raises(InvalidRequestError) as err:
        enc.encode([GOOD, row])
    assert repr(field) in str(err.value) and words in str(err.value)
    assert err.value.grpc_status == "INVALID_ARGUMENT" and err.value.context["field"] == field


def test_numbers_sent_as_numbers_encode_like_the_checked_path():
    # a column of plain ints/floats takes one array conversion; any other value sends it value by value
    enc = RowEncoder(FeatureArtifact.fit(TRAIN, SCHEMA))
    plain = [{**GOOD, "cnt": c, "price": p, "raw_col": r}
             for c, p, r in [(3, 1.5, 0.5), (0, float("nan"), -2), (10**6, 2.0, 1e30), (2**70, None, 7)]]
    text = [{**row, **{k: ("" if row[k] is None or row[k] != row[k] else str(row[k]))
                       for k in ("cnt", "price", "raw_col")}} for row in plain]
    np.testing.assert_array_equal(enc.encode(plain).dense, enc.encode(text).dense)
    np.testing.assert_array_equal(enc.encode(plain[:2] + [{**GOOD, "price": None}]).dense[:2],
                                  enc.encode(plain[:2]).dense)


@pytest.mark.parametrize("value", [float("inf"), -float("inf"), 10**400], ids=["inf", "-inf", "10**400"])
def test_infinite_or_overflowing_numbers_name_the_example(value):
    enc = RowEncoder(FeatureArtifact.fit(TRAIN, SCHEMA))
    with pytest.raises(InvalidRequestError, match="example 1: feature 'price' is numeric and must be finite"):
        enc.encode([GOOD, {**GOOD, "price": value}])


def test_missing_policy_null_treats_absent_as_missing():
    art = FeatureArtifact.fit(TRAIN, SCHEMA)
    absent = RowEncoder(art, missing="null").encode([{"item": "a"}])
    explicit = RowEncoder(art).encode([{"user": None, "item": "a", "hist": None, "cnt": None, "price": None,
                                        "raw_col": None}])
    np.testing.assert_array_equal(absent.ids, explicit.ids)
    np.testing.assert_array_equal(absent.dense, explicit.dense)
    assert explicit.dense[0].tolist() == [0.0, pytest.approx((2.0 - art.numeric["price"]["mean"])
                                                            / art.numeric["price"]["std"]), 0.0]


def test_concat_keeps_rows_and_sequences_in_order():
    enc = RowEncoder(FeatureArtifact.fit(TRAIN, SCHEMA))
    a, b = enc.encode([GOOD]), enc.encode([{**GOOD, "hist": ["b"]}, {**GOOD, "hist": []}])
    both = EncodedColumns.concat([a, b])
    whole = enc.encode([GOOD, {**GOOD, "hist": ["b"]}, {**GOOD, "hist": []}])
    np.testing.assert_array_equal(both.seqs["hist"][0], whole.seqs["hist"][0])
    np.testing.assert_array_equal(both.seqs["hist"][1], whole.seqs["hist"][1])
    np.testing.assert_array_equal(both.ids, whole.ids)
    assert len(both) == 3
