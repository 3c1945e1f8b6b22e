"""Contract tests every model must pass: shape, finiteness, gradients, fx tracing, strict configs."""

import pytest
import torch
import torchrec.fx

from ctr.errors import ConfigError
from ctr.models import build_model, parse_model_config
from ctr.models.autoint import AutoIntConfig
from ctr.models.deepfm import DeepFM, DeepFMConfig
from ctr.models.dnn import DNNConfig
from ctr.models.fm import FM, FMConfig
from ctr.models.lr import LR, LRConfig

CONFIGS = {
    "lr": LRConfig(),
    "fm": FMConfig(embedding_dim=8),
    "dnn": DNNConfig(embedding_dim=8, dnn_hidden=(16, 8), dnn_batchnorm=True, dnn_dropout=0.1),
    "deepfm": DeepFMConfig(embedding_dim=8, dnn_hidden=(16,), dnn_activation="tanh"),
    "deepfm_fm_categorical": DeepFMConfig(embedding_dim=8, dnn_hidden=(16,), fm_numeric=False),
    "autoint": AutoIntConfig(embedding_dim=8, attention_dim=4, attention_layers=2, attention_dropout=0.1),
    "autoint_paper": AutoIntConfig(embedding_dim=8, attention_dim=4, variant="paper"),
    "autoint_plus_wide": AutoIntConfig(name="autoint_plus", embedding_dim=8, attention_dim=4, dnn_hidden=(16,),
                                       use_wide=True, embedding_dropout=0.1),
}


def _model(key: str, layout) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(CONFIGS[key], layout)


@pytest.mark.parametrize("key", CONFIGS)
def test_output_is_finite_logits_of_shape_b(key, layout, batch):
    dense, sparse = batch
    model = _model(key, layout).eval()
    out = model(dense, sparse)
    assert out.shape == (4,)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("key", CONFIGS)
def test_backward_reaches_tables_and_dense_params(key, layout, batch):
    dense, sparse = batch
    model = _model(key, layout).train()
    torch.nn.functional.binary_cross_entropy_with_logits(model(dense, sparse), torch.tensor([1.0, 0, 1, 0])).backward()
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None]
    assert missing == []
    tables = {n: p for n, p in params.items() if "embedding_bags" in n}
    dense_params = {n: p for n, p in params.items() if n not in tables}
    assert tables and dense_params
    assert all(p.grad.abs().sum() > 0 for p in tables.values())
    assert any(p.grad.abs().sum() > 0 for p in dense_params.values())


@pytest.mark.parametrize("key", CONFIGS)
def test_fx_trace_gives_identical_outputs(key, layout, batch):
    dense, sparse = batch
    model = _model(key, layout).eval()
    eager = model(dense, sparse)
    traced = torchrec.fx.symbolic_trace(model)
    assert torch.equal(traced(dense, sparse), eager)


@pytest.mark.parametrize("name", ["lr", "fm", "dnn", "deepfm", "autoint", "autoint_plus"])
def test_config_rejects_unknown_key_by_name(name):
    with pytest.raises(ConfigError, match=r"model\.dnn_hiden: unknown key") as err:
        parse_model_config({"name": name, "dnn_hiden": [8]})
    assert err.value.path == "model.dnn_hiden"


@pytest.mark.parametrize("name", ["lr", "fm", "dnn", "deepfm", "autoint", "autoint_plus"])
def test_config_requires_embedding_dim_multiple_of_4(name):
    with pytest.raises(ConfigError, match="model.embedding_dim.*multiple of 4"):
        parse_model_config({"name": name, "embedding_dim": 10})


@pytest.mark.parametrize("key", CONFIGS)
def test_config_round_trips_through_model_dump(key):
    cfg = CONFIGS[key]
    assert parse_model_config({"name": cfg.name, **cfg.model_dump()}) == cfg


@pytest.mark.parametrize("cls,cfg", [(LR, LRConfig()), (FM, FMConfig()), (DeepFM, DeepFMConfig())])
def test_first_order_models_refuse_a_missing_first_order(cls, cfg, layout):
    from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig

    emb = PlainEmbedding(layout, cfg.embedding_dim, PlainEmbeddingConfig())
    assert cls.needs_first_order
    with pytest.raises(ValueError, match="needs a first-order embedding"):
        cls(emb, None, cfg)


def test_deepfm_fm_numeric_false_pairs_only_the_categorical_fields(layout, batch):
    dense, sparse = batch
    model = _model("deepfm_fm_categorical", layout).eval()
    paper = build_model(CONFIGS["deepfm_fm_categorical"].model_copy(update={"fm_numeric": True}), layout).eval()
    paper.load_state_dict(model.state_dict())
    with torch.no_grad():
        fields = model.embedding(dense, sparse)  # [B, 5, D]: user, item, hist, then price, age
        deep = model.mlp(fields.flatten(1)).squeeze(-1)
        first = model.linear(dense, sparse)
        expected = first + model.fm(fields[:, :3]) + deep
        torch.testing.assert_close(model(dense, sparse), expected)
        torch.testing.assert_close(paper(dense, sparse), first + model.fm(fields) + deep)
        assert not torch.allclose(model(dense, sparse), paper(dense, sparse))
