import math
import subprocess
import sys

import polars as pl
import pytest

from ctr.errors import DataError
from ctr.features.artifact import FeatureArtifact
from ctr.features.schema import Schema
from ctr.features.transform import FeatureTransform

SCHEMA = Schema.model_validate({
    "label": "y", "group": "user", "min_count": 1,
    "fields": [{"name": "user"}, {"name": "item"}, {"name": "hist", "kind": "sequence", "table": "item", "max_len": 2},
               {"name": "cnt", "kind": "numeric", "transform": "log_square"},
               {"name": "price", "kind": "numeric", "transform": "standardize", "fill_value": 2.0},
               {"name": "raw", "kind": "numeric", "source": "raw_col"}],
})
TRAIN = pl.DataFrame({
    "user": ["1", "2", "1", None], "item": ["a", "b", "a", "c"], "hist": ["a|b|c", "", None, "b"],
    "cnt": ["0", "3", "100", None], "price": ["1", "3", None, "2"], "raw_col": ["0.5", "1", "", "2"],
    "y": [1.0, 0.0, 1.0, 0.0], "_line": [2, 3, 4, 5],
})


@pytest.fixture(scope="module")
def transform() -> FeatureTransform:
    return FeatureTransform(FeatureArtifact.fit(TRAIN, SCHEMA))


def test_encoded_layout(transform):
    out = transform.apply(TRAIN)
    assert out.columns == ["user", "item", "hist", "cnt", "price", "raw", "_label", "_group"]
    assert out.schema["user"] == pl.Int64 and out.schema["hist"] == pl.List(pl.Int64)
    assert all(out.schema[c] == pl.Float32 for c in ("cnt", "price", "raw", "_label"))
    assert out.schema["_group"] == pl.Int64


def test_categorical_and_sequence_ids(transform):
    vocab = {v: i for v, i in transform.artifact.vocabularies()["item"].select("value", "id").rows()}
    out = transform.apply(TRAIN)
    assert out["item"].to_list() == [vocab["a"], vocab["b"], vocab["a"], vocab["c"]]
    # the last max_len=2 tokens; empty and null sequences become empty lists
    assert out["hist"].to_list() == [[vocab["b"], vocab["c"]], [], [], [vocab["b"]]]


def test_numeric_transforms(transform):
    out = transform.apply(TRAIN)
    assert out["cnt"].to_list() == [0.0, math.floor(math.log(3) ** 2), math.floor(math.log(100) ** 2), 0.0]
    mean, std = 2.0, math.sqrt(0.5)  # price after fill 2.0: [1, 3, 2, 2]
    assert out["price"].to_list() == pytest.approx([(v - mean) / std for v in (1, 3, 2, 2)])
    assert out["raw"].to_list() == [0.5, 1.0, 0.0, 2.0]


def test_unseen_values_map_to_oov(transform):
    out = transform.apply(pl.DataFrame({"user": ["9"], "item": ["zz"], "hist": ["zz|a"], "cnt": ["1"],
                                        "price": ["1"], "raw_col": ["1"]}))
    assert out["item"][0] == 0 and out["user"][0] == 0 and out["hist"][0][0] == 0
    assert "_label" not in out.columns and "_group" in out.columns


def test_serving_rows_encode_like_training_rows(transform):
    training = transform.apply(TRAIN)
    requests = [{"user": 1, "item": "a", "hist": ["a", "b", "c"], "cnt": 0, "price": 1, "raw_col": 0.5},
                {"user": 2, "item": "b", "hist": [], "cnt": "3", "price": 3.0, "raw_col": 1},
                {"user": 1, "item": "a", "cnt": 100, "price": None, "raw_col": ""},
                {"user": None, "item": "c", "hist": "b", "cnt": None, "price": 2, "raw_col": 2}]
    served = transform.apply(requests)
    assert served.equals(training.drop("_label"))
    # a frame built by polars from dicts (int categoricals) encodes the same way too
    frame = pl.DataFrame({"user": [1, 2], "item": ["a", "b"], "hist": ["a|b|c", ""], "cnt": [0.0, 3.0],
                          "price": [1.0, 3.0], "raw_col": [0.5, 1.0]})
    assert transform.apply(frame).equals(training.head(2).drop("_label"))


def test_unparseable_number_names_column_and_line(transform):
    bad = TRAIN.with_columns(pl.Series("cnt", ["0", "3", "many", None]))
    with pytest.raises(DataError, match="line 4 column 'cnt'"):
        transform.apply(bad)
    with pytest.raises(DataError, match=r"column 'cnt'.*\(row 0\)"):
        transform.apply([{"user": "1", "item": "a", "hist": "", "cnt": "x", "price": 1, "raw_col": 1}])


def test_missing_raw_column(transform):
    with pytest.raises(DataError, match=r"\['raw_col'\]"):
        transform.apply(TRAIN.drop("raw_col"))


def test_label_minus_one_and_group_codes_are_stable(transform):
    out = transform.apply(TRAIN.with_columns(pl.Series("y", ["-1", "1", "0", "1"])))
    assert out["_label"].to_list() == [0.0, 1.0, 0.0, 1.0]
    assert out["_group"][0] == out["_group"][2] != out["_group"][1]


def test_transform_module_does_not_import_torch():
    code = "import sys, ctr.features.transform, ctr.features.artifact; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_empty_request_and_uncastable_column(transform):
    assert transform.apply([]).height == 0
    weird = TRAIN.with_columns(pl.Series("cnt", [{"a": 1}] * 4))
    with pytest.raises(DataError, match="cannot encode these rows"):
        transform.apply(weird)
