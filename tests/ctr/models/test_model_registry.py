import pytest
import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from ctr.embeddings import PlainEmbeddingConfig, parse_embedding_config
from ctr.errors import ConfigError
from ctr.models import MODELS, build_model, needs_first_order, parse_model_config

SMALL = {"embedding_dim": 8}
POOLED = [n for n in MODELS if n != "din"]  # din needs an unpooled history: tests/ctr/models/test_din*.py


def _raw(name: str) -> dict:
    raw = {"name": name, **SMALL}
    if name in ("dnn", "deepfm", "autoint_plus"):
        raw["dnn_hidden"] = [16]
    if name.startswith("autoint"):
        raw["attention_dim"] = 4
    return raw


@pytest.mark.parametrize("name", POOLED)
def test_build_model_for_every_registered_name(name, layout, batch):
    dense, sparse = batch
    cfg = parse_model_config(_raw(name))
    assert cfg.name == name and isinstance(cfg, MODELS[name][0])
    model = build_model(cfg, layout, PlainEmbeddingConfig(init_std=0.05))
    assert isinstance(model, MODELS[name][1])
    assert model(dense, sparse).shape == (4,)
    tables = {t for m in model.modules() if isinstance(m, EmbeddingBagCollection) for t in m.embedding_bags}
    main, linear = {"user", "item"}, {"lin_user", "lin_item"}
    assert tables == (linear if name == "lr" else main | (linear if needs_first_order(cfg) else set()))


@pytest.mark.parametrize("name", POOLED)
def test_build_model_with_meta_tables(name, layout):
    model = build_model(parse_model_config({"name": name}), layout, device=torch.device("meta"))
    for n, p in model.named_parameters():
        expected = "meta" if "embedding_bags" in n else "cpu"
        assert p.device.type == expected, n


def test_first_order_only_where_needed():
    assert [n for n in MODELS if needs_first_order(parse_model_config({"name": n}))] == ["lr", "fm", "deepfm"]
    assert needs_first_order(parse_model_config({"name": "autoint_plus", "use_wide": True}))


@pytest.mark.parametrize("raw,path", [({"name": "deepfmm"}, "model.name"), ({"embedding_dim": 8}, "model.name")])
def test_unknown_or_missing_model_name_lists_known_names(raw, path):
    with pytest.raises(ConfigError, match="known: lr, fm, dnn, deepfm, autoint, autoint_plus") as err:
        parse_model_config(raw)
    assert err.value.path == path


def test_model_config_must_be_a_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_model_config(["deepfm"])


def test_parse_embedding_config():
    assert parse_embedding_config({}) == PlainEmbeddingConfig()
    assert parse_embedding_config(None) == PlainEmbeddingConfig()
    assert parse_embedding_config({"name": "plain", "init_std": 0.1}).init_std == 0.1
    with pytest.raises(ConfigError, match="embedding.name: unknown embedding method 'optembd'; known: plain"):
        parse_embedding_config({"name": "optembd"})
    with pytest.raises(ConfigError, match="embedding.init_sd: unknown key"):
        parse_embedding_config({"init_sd": 0.1})
