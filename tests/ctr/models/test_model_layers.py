import itertools

import pytest
import torch
from torch import nn

from ctr.models.layers.interaction import FMInteraction
from ctr.models.layers.linear import FIRST_ORDER_DIM, FirstOrder, first_order_embedding, require_first_order
from ctr.models.layers.mlp import MLP, MLPSpec


def test_fm_interaction_equals_pairwise_dot_products():
    torch.manual_seed(0)
    v = torch.randn(3, 4, 5)  # B, F, D
    expected = torch.stack([
        sum((v[b, i] * v[b, j]).sum() for i, j in itertools.combinations(range(4), 2)) for b in range(3)])
    assert torch.allclose(FMInteraction()(v), expected, atol=1e-5)


def test_mlp_layers_and_init():
    mlp = MLP(6, MLPSpec(hidden=(8, 4), activation="tanh", dropout=0.2, batchnorm=True), out_dim=1)
    kinds = [type(m).__name__ for m in mlp.layers]
    assert kinds == ["Linear", "BatchNorm1d", "Tanh", "Dropout", "Linear", "BatchNorm1d", "Tanh", "Dropout", "Linear"]
    assert mlp(torch.randn(5, 6)).shape == (5, 1)
    for m in mlp.modules():
        if isinstance(m, nn.Linear):
            assert torch.count_nonzero(m.bias) == 0


def test_mlp_without_output_layer_ends_with_activation():
    mlp = MLP(6, MLPSpec(hidden=(8,)))
    assert mlp.out_dim == 8 and isinstance(mlp.layers[-1], nn.ReLU)
    assert (mlp(torch.randn(4, 6)) >= 0).all()
    with pytest.raises(ValueError):
        MLP(6, MLPSpec(hidden=()))


def test_first_order_sums_the_four_columns_per_value(layout, batch):
    dense, sparse = batch
    emb = first_order_embedding(layout)
    assert emb.embedding_dim == FIRST_ORDER_DIM
    tables = emb.ebc.embedding_bags
    assert set(tables) == {"lin_user", "lin_item"}
    with torch.no_grad():
        # row i of every table = [i, 0, 1, 0] -> a value's weight is i + 1
        for t in tables.values():
            rows = torch.arange(t.weight.shape[0], dtype=torch.float32)
            t.weight.copy_(torch.stack([rows, torch.zeros_like(rows), torch.ones_like(rows), torch.zeros_like(rows)], 1))
        emb.numeric.weight.copy_(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, -3.0]]))  # price 2, age -3
    linear = FirstOrder(emb)
    with torch.no_grad():
        linear.bias.fill_(0.5)
    user, item = [1, 2, 3, 6], [4, 5, 6, 10]
    hist = [[1, 2], [], [3], [4, 5]]
    expected = []
    for b in range(4):
        hist_w = sum(i + 1 for i in hist[b]) / len(hist[b]) if hist[b] else 0.0  # mean pooling
        numeric = 2.0 * float(dense[b, 0]) - 3.0 * float(dense[b, 1])
        expected.append(0.5 + (user[b] + 1) + (item[b] + 1) + hist_w + numeric)
    assert torch.allclose(linear(dense, sparse), torch.tensor(expected), atol=1e-5)


def test_require_first_order_names_the_model():
    with pytest.raises(ValueError, match="FM needs a first-order embedding"):
        require_first_order(None, "FM")
