from pathlib import Path

import pytest
import yaml

from ctr.errors import ConfigError
from pipelines.spec import load_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "pipelines" / "examples"

MINIMAL = {
    "data": {"format": "csv", "train": "x.csv"},
    "features": {"label": "y", "fields": [{"name": "a"}, {"name": "n", "kind": "numeric"}]},
    "model": {"name": "deepfm", "embedding_dim": 8},
}


def write(tmp_path, doc) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_flat_spec_and_set_overrides(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL), ["train.epochs=3", "data.test=/tmp/t.csv",
                                                "train.optimizer.sparse_lr=0.2", "model.dnn_hidden=[32, 16]"])
    assert spec.train.epochs == 3 and spec.data.test == "/tmp/t.csv"
    assert spec.train.optimizer.sparse_lr == 0.2
    assert list(spec.model.dnn_hidden) == [32, 16]
    assert spec.name == "p" and spec.model_name == "ctr-p"


def test_unknown_key_names_yaml_path_and_suggests(tmp_path):
    doc = {**MINIMAL, "train": {"epoch": 3}}
    with pytest.raises(ConfigError) as info:
        load_spec(write(tmp_path, doc))
    assert "train.epoch" in str(info.value) and "epochs" in str(info.value)


def test_unknown_override_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown section"):
        load_spec(write(tmp_path, MINIMAL), ["trian.epochs=3"])


def test_wrong_type_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="train.epochs"):
        load_spec(write(tmp_path, MINIMAL), ["train.epochs=many"])


def test_unknown_model_name(tmp_path):
    with pytest.raises(ConfigError, match="model"):
        load_spec(write(tmp_path, {**MINIMAL, "model": {"name": "xgboost"}}))


def test_experiments_merge_section_by_section(tmp_path):
    doc = {"base": {k: v for k, v in MINIMAL.items() if k != "model"} | {"train": {"epochs": 5, "batch_size": 64}},
           "experiments": {"a": {"model": {"name": "fm", "embedding_dim": 8}, "train": {"epochs": 2}},
                           "b": {"model": {"name": "lr", "embedding_dim": 4}}}}
    a = load_spec(write(tmp_path, doc))
    assert a.name == "a" and a.train.epochs == 2 and a.train.batch_size == 64
    b = load_spec(write(tmp_path, doc), experiment="b")
    assert b.model.name == "lr" and b.train.epochs == 5
    with pytest.raises(ConfigError, match="unknown experiment"):
        load_spec(write(tmp_path, doc), experiment="zzz")


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_shipped_examples_parse(example):
    spec = load_spec(EXAMPLES / example)
    assert spec.features.fields and spec.model.embedding_dim % 4 == 0
    for name in yaml.safe_load((EXAMPLES / example).read_text()).get("experiments") or {}:  # every experiment
        assert load_spec(EXAMPLES / example, experiment=name).features.fields
