import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig
from ctr.embeddings.tables import init_plain_tables, table_init
from ctr.features.layout import FieldLayout
from ctr.features.schema import Schema

SCHEMA = Schema(fields=[{"name": "u"}, {"name": "hist", "kind": "sequence", "table": "u"},
                        {"name": "x", "kind": "numeric"}])
LAYOUT = FieldLayout(SCHEMA, {"u": 10})


def kjt():
    # u: [1], [2]; hist: [3, 4], []  (hist shares table u, mean-pooled)
    return KeyedJaggedTensor.from_lengths_sync(["u", "hist"], torch.tensor([1, 2, 3, 4]), torch.tensor([1, 1, 2, 0]))


def test_fields_in_schema_order_shared_table_and_numeric_vectors():
    emb = PlainEmbedding(LAYOUT, 4, PlainEmbeddingConfig())
    init_plain_tables(emb, seed=5)
    w = emb.ebc.embedding_bags["u"].weight.detach()
    out = emb(torch.tensor([[2.0], [0.5]]), kjt())
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out[0, 0], w[1])
    torch.testing.assert_close(out[0, 1], (w[3] + w[4]) / 2)  # one table, mean pooling for the sequence
    torch.testing.assert_close(out[1, 1], torch.zeros(4))  # empty sequence
    torch.testing.assert_close(out[0, 2], 2.0 * emb.numeric.weight[0])


def test_l2_penalty_is_in_batch_and_only_in_training():
    emb = PlainEmbedding(LAYOUT, 4, PlainEmbeddingConfig(l2=0.1))
    out = emb(torch.ones(2, 1), kjt())
    sparse = out[:, :2]
    expected = 0.1 * float((sparse ** 2).sum()) / 2
    penalty = emb.regularizer()
    assert abs(float(penalty) - expected) < 1e-9
    assert emb.regularizer() is None  # consumed once
    penalty_grad_rows = torch.autograd.grad(0.1 * (emb(torch.ones(2, 1), kjt())[:, :2] ** 2).sum(),
                                            emb.ebc.embedding_bags["u"].weight)[0]
    touched = penalty_grad_rows.abs().sum(1).nonzero().flatten().tolist()
    assert touched == [1, 2, 3, 4]  # only rows used by the batch
    emb.regularizer()
    emb.eval()
    emb(torch.ones(2, 1), kjt())
    assert emb.regularizer() is None
    assert PlainEmbedding(LAYOUT, 4, PlainEmbeddingConfig()).regularizer() is None


def test_table_init_is_deterministic_per_name_and_seed():
    a = table_init("t", 7, 4, 0.1, seed=1)
    assert torch.equal(a, table_init("t", 7, 4, 0.1, seed=1))
    assert not torch.equal(a, table_init("t", 7, 4, 0.1, seed=2))
    assert not torch.equal(a, table_init("s", 7, 4, 0.1, seed=1))
    assert a.abs().max() <= 0.1


def test_bench_baseline_embedding_matches_torchrec_lookup():
    """The benchmark's plain nn.EmbeddingBag baseline computes the same field vectors as PlainEmbedding."""
    from benchmarks.plain_torch import TorchEmbeddingBags

    ours = PlainEmbedding(LAYOUT, 4, PlainEmbeddingConfig())
    base = TorchEmbeddingBags(LAYOUT, 4)
    with torch.no_grad():
        base.bags["u"].weight.copy_(ours.ebc.embedding_bags["u"].weight)
        base.numeric.weight.copy_(ours.numeric.weight)
    dense = torch.tensor([[2.0], [0.5]])
    torch.testing.assert_close(base(dense, kjt()), ours(dense, kjt()))


def test_table_init_slices_equal_the_full_table():
    """Row/column ranges are generated alone yet equal the same slice of the whole table."""
    full = table_init("t", 1000, 8, 0.5, seed=3)
    part = table_init("t", 1000, 8, 0.5, seed=3, row_start=123, row_count=400, col_start=4, col_count=4)
    assert torch.equal(part, full[123:523, 4:8])
    assert full.dtype == torch.float32 and full.shape == (1000, 8)
    assert -0.5 <= float(full.min()) < -0.45 and 0.45 < float(full.max()) <= 0.5
    assert abs(float(full.mean())) < 0.02  # uniform, centred
    with pytest.raises(ValueError, match="outside table"):
        table_init("t", 10, 4, 0.1, seed=1, row_start=8, row_count=3)
