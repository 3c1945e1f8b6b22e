"""AutoInt / AutoInt+: hand-computed interacting blocks (both variants) and the structural pitfalls
listed in docs/methods.md §1 (numeric fields in attention, per-block W_Res, logit-sum AutoInt+)."""

import copy
import math

import pytest
import torch

from ctr.errors import ConfigError
from ctr.models import build_model, parse_model_config
from ctr.models.autoint import AutoInt, AutoIntConfig, InteractingLayer


def _set(block: InteractingLayer, **weights) -> None:
    with torch.no_grad():
        for name, value in weights.items():
            module, attr = name.rsplit("_", 1)
            getattr(getattr(block, module), attr).copy_(torch.tensor(value))


def _softmax(scores: list[float]) -> list[float]:
    exps = [math.exp(s) for s in scores]
    return [e / sum(exps) for e in exps]


def test_paper_block_by_hand_two_heads():
    """F=2, D=2, H=2, d'=1: no bias, no activation on projections, no scaling, no LayerNorm."""
    block = InteractingLayer(in_dim=2, num_heads=2, head_dim=1, variant="paper")
    assert block.query.bias is None and block.residual.bias is None
    _set(block, query_weight=[[1.0, 0.0], [0.0, 1.0]], key_weight=[[1.0, 0.0], [0.0, -1.0]],
         value_weight=[[1.0, 1.0], [2.0, 0.0]], residual_weight=[[0.0, 1.0], [-2.0, 0.0]])
    x = torch.tensor([[[1.0, 0.0], [0.5, 2.0]]])  # e1 = (1, 0), e2 = (0.5, 2)
    # head 0: q = k = first coordinate (1, 0.5); v = e[0] + e[1] = (1, 2.5)
    a = _softmax([1 * 1, 1 * 0.5])
    h0_1 = a[0] * 1 + a[1] * 2.5
    a = _softmax([0.5 * 1, 0.5 * 0.5])
    h0_2 = a[0] * 1 + a[1] * 2.5
    # head 1: q = e[1] = (0, 2), k = -e[1] = (0, -2), v = 2 e[0] = (2, 1)
    h1_1 = 0.5 * 2 + 0.5 * 1  # scores (0, 0): uniform
    a = _softmax([2 * 0, 2 * -2])
    h1_2 = a[0] * 2 + a[1] * 1
    # W_Res e: (e[1], -2 e[0]) -> e1: (0, -2), e2: (2, -1); then ReLU
    expected = [[max(h0_1 + 0, 0), max(h1_1 - 2, 0)], [max(h0_2 + 2, 0), max(h1_2 - 1, 0)]]
    assert expected[0][1] == 0.0  # the output ReLU clips here
    assert torch.allclose(block(x), torch.tensor([expected]), atol=1e-6)


def test_reference_block_by_hand():
    """F=2, D=2, H=1, d'=3: ReLU(dense with bias) for Q/K/V/W_Res, 1/sqrt(3) scaling, LayerNorm."""
    block = InteractingLayer(in_dim=2, num_heads=1, head_dim=3, variant="reference")
    _set(block,
         query_weight=[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], query_bias=[0.0, -0.5, 0.0],
         key_weight=[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], key_bias=[0.0, -1.0, 0.5],
         value_weight=[[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]], value_bias=[1.0, 0.0, 0.0],
         residual_weight=[[-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], residual_bias=[0.0, 0.5, 0.0],
         norm_weight=[2.0, 1.0, 0.5], norm_bias=[0.0, -1.0, 0.25])
    x = torch.tensor([[[1.0, 0.0], [0.5, 2.0]]])
    q = [[1.0, 0.0, 1.0], [0.5, 1.5, 2.5]]  # ReLU((1, -0.5, 1)), ReLU((0.5, 1.5, 2.5))
    k = [[1.0, 0.0, 0.5], [0.5, 1.0, 0.5]]  # ReLU((1, -1, 0.5)), ReLU((0.5, 1, 0.5))
    v = [[2.0, 0.0, 1.0], [1.5, 2.0, 0.0]]  # ReLU((2, 0, 1)), ReLU((1.5, 2, -1.5))
    r = [[0.0, 0.5, 1.0], [0.0, 2.5, 0.5]]  # ReLU((-1, 0.5, 1)), ReLU((-0.5, 2.5, 0.5))
    gamma, beta = [2.0, 1.0, 0.5], [0.0, -1.0, 0.25]
    expected = []
    for m in range(2):
        scores = [sum(q[m][c] * k[j][c] for c in range(3)) / math.sqrt(3) for j in range(2)]
        alpha = _softmax(scores)
        out = [max(alpha[0] * v[0][c] + alpha[1] * v[1][c] + r[m][c], 0.0) for c in range(3)]
        mean = sum(out) / 3
        var = sum((o - mean) ** 2 for o in out) / 3
        expected.append([(o - mean) / math.sqrt(var + 1e-8) * g + b for o, g, b in zip(out, gamma, beta, strict=True)])
    assert torch.allclose(block(x), torch.tensor([expected]), atol=1e-5)


def _py_block(x: list[list[float]], block: InteractingLayer, heads: int, dk: int, reference: bool) -> list[list[float]]:
    """Plain-Python interacting block from the weights of ``block`` (for random-weight checks)."""
    def proj(layer, e):
        w = layer.weight.tolist()
        b = layer.bias.tolist() if layer.bias is not None else [0.0] * len(w)
        y = [sum(wi * ei for wi, ei in zip(row, e, strict=True)) + bi for row, bi in zip(w, b, strict=True)]
        return [max(t, 0.0) for t in y] if reference else y

    q, k, v, r = ([proj(layer, e) for e in x] for layer in (block.query, block.key, block.value, block.residual))
    out = []
    for m in range(len(x)):
        row = []
        for h in range(heads):
            cols = range(h * dk, (h + 1) * dk)
            scale = 1 / math.sqrt(dk) if reference else 1.0
            alpha = _softmax([sum(q[m][c] * k[j][c] for c in cols) * scale for j in range(len(x))])
            row += [sum(alpha[j] * v[j][c] for j in range(len(x))) for c in cols]
        out.append([max(a + b, 0.0) for a, b in zip(row, r[m], strict=True)])
    if reference:  # LayerNorm with default gamma = 1, beta = 0
        out = [[(o - sum(row) / len(row)) / math.sqrt(sum((t - sum(row) / len(row)) ** 2 for t in row) / len(row) + 1e-8)
                for o in row] for row in out]
    return out


@pytest.mark.parametrize("variant", ["reference", "paper"])
def test_two_head_block_matches_python_on_three_fields(variant):
    torch.manual_seed(3)
    block = InteractingLayer(in_dim=4, num_heads=2, head_dim=2, variant=variant)
    if variant == "reference":
        with torch.no_grad():
            for layer in (block.query, block.key, block.value, block.residual):
                layer.bias.uniform_(-0.5, 0.5)
    x = torch.randn(1, 3, 4)
    expected = _py_block(x[0].tolist(), block, heads=2, dk=2, reference=variant == "reference")
    assert torch.allclose(block(x)[0], torch.tensor(expected), atol=1e-5)


def _plus_model(layout) -> AutoInt:
    torch.manual_seed(0)
    cfg = AutoIntConfig(name="autoint_plus", embedding_dim=8, attention_dim=4, dnn_hidden=(16,))
    return build_model(cfg, layout).eval()


def test_autoint_plus_is_attention_logit_plus_dnn_logit(layout, batch):
    dense, sparse = batch
    plus = _plus_model(layout)
    full = plus(dense, sparse)
    attention_only, dnn_only = copy.deepcopy(plus), copy.deepcopy(plus)
    with torch.no_grad():
        for p in attention_only.dnn.layers[-1].parameters():
            p.zero_()
        for p in dnn_only.head.parameters():
            p.zero_()
    assert torch.allclose(full, attention_only(dense, sparse) + dnn_only(dense, sparse), atol=1e-6)
    # plain AutoInt with the same embedding and attention weights gives exactly the attention logit
    plain = AutoInt(plus.embedding, None, AutoIntConfig(embedding_dim=8, attention_dim=4)).eval()
    plain.load_state_dict({k: v for k, v in plus.state_dict().items() if not k.startswith("dnn.")})
    assert torch.allclose(plain(dense, sparse), attention_only(dense, sparse), atol=1e-6)
    # the DNN reads the flattened INPUT field vectors [B, F·D], not the attention output
    fields = plus.embedding(dense, sparse)
    assert plus.dnn.layers[0].in_features == 5 * 8
    assert torch.allclose(dnn_only(dense, sparse), plus.dnn(fields.flatten(1)).squeeze(-1), atol=1e-6)


def test_numeric_fields_go_through_attention(layout, batch):
    dense, sparse = batch
    torch.manual_seed(0)
    model = build_model(AutoIntConfig(embedding_dim=8, attention_dim=4), layout).eval()
    assert model.dnn is None and model.wide is None  # attention is the only path
    seen = []
    model.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape))
    before = model(dense, sparse)
    assert seen[0] == (4, 5, 8)  # all F = 3 sparse + 2 numeric fields are attention tokens
    changed = dense.clone()
    changed[:, 1] += 1.0  # the numeric field "age"
    after = model(changed, sparse)
    assert (before - after).abs().min() > 1e-6


@pytest.mark.parametrize("variant,has_bias", [("reference", True), ("paper", False)])
def test_every_block_has_its_own_residual_projection(layout, variant, has_bias):
    model = build_model(AutoIntConfig(attention_layers=3, variant=variant), layout)
    names = [n for n, _ in model.named_parameters() if ".residual." in n]
    expected = [f"blocks.{i}.residual.weight" for i in range(3)]
    if has_bias:
        expected = [n for i in range(3) for n in (f"blocks.{i}.residual.weight", f"blocks.{i}.residual.bias")]
    assert names == expected
    shapes = [tuple(model.blocks[i].residual.weight.shape) for i in range(3)]
    assert shapes == [(64, 16), (64, 64), (64, 64)]  # block width 2 heads × 32 ≠ D = 16
    assert model.head.in_features == 5 * 64
    assert [isinstance(b.norm, torch.nn.LayerNorm) for b in model.blocks] == [has_bias] * 3


def test_use_wide_adds_first_order_tables(layout):
    model = build_model(AutoIntConfig(use_wide=True), layout)
    assert model.wide is not None
    assert "lin_user" in model.wide.embedding.ebc.embedding_bags
    with pytest.raises(ValueError, match="use_wide"):
        AutoInt(model.embedding, None, AutoIntConfig(use_wide=True))


def test_both_yaml_names_and_dnn_defaults():
    plain = parse_model_config({"name": "autoint"})
    plus = parse_model_config({"name": "autoint_plus"})
    assert isinstance(plain, AutoIntConfig) and isinstance(plus, AutoIntConfig)
    assert plain.dnn_hidden == () and plus.dnn_hidden == (400, 400)
    assert (plain.attention_layers, plain.num_heads, plain.attention_dim, plain.embedding_dim) == (3, 2, 32, 16)
    assert plain.variant == "reference" and plain.use_wide is False
    assert parse_model_config({"name": "autoint_plus", "dnn_hidden": [32]}).dnn_hidden == (32,)


@pytest.mark.parametrize("raw,match", [
    ({"name": "autoint", "dnn_hidden": [32]}, "needs name 'autoint_plus'"),
    ({"name": "autoint_plus", "dnn_hidden": []}, "non-empty dnn_hidden"),
    ({"name": "autoint", "variant": "official"}, "model.variant"),
    ({"name": "autoint", "attention_dropout": 1.0}, "model.attention_dropout"),
    ({"name": "autoint", "num_heads": 0}, "model.num_heads"),
])
def test_bad_autoint_configs(raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_model_config(raw)
