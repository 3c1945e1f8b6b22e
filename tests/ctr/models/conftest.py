"""Tiny schema and batch shared by the model tests: 2 categorical, 1 mean-pooled sequence, 2 numeric."""

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.features.layout import FieldLayout
from ctr.features.schema import Schema

NUM_FIELDS = 5  # user, item, hist (sparse) + price, age (numeric)


def make_layout() -> FieldLayout:
    schema = Schema(fields=[
        {"name": "user"},
        {"name": "item"},
        {"name": "hist", "kind": "sequence", "table": "item", "pooling": "mean"},
        {"name": "price", "kind": "numeric"},
        {"name": "age", "kind": "numeric"},
    ])
    return FieldLayout(schema, {"user": 7, "item": 11})


def make_batch() -> tuple[torch.Tensor, KeyedJaggedTensor]:
    """B = 4 rows; ``hist`` lengths 2, 0, 1, 2 (one empty sequence)."""
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item", "hist"],
        values=torch.tensor([1, 2, 3, 6, 4, 5, 6, 10, 1, 2, 3, 4, 5]),
        lengths=torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 2, 0, 1, 2]),
    )
    dense = torch.tensor([[0.5, 1.0], [1.5, -0.5], [0.0, 2.0], [3.0, 0.25]])
    return dense, sparse


@pytest.fixture
def layout() -> FieldLayout:
    return make_layout()


@pytest.fixture
def batch() -> tuple[torch.Tensor, KeyedJaggedTensor]:
    return make_batch()
