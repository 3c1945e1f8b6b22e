"""hashed and unified embeddings: lookups equal the hashed rows, budgets, chunking, every model builds and trains."""

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.embeddings import parse_embedding_config
from ctr.embeddings.hashed import HashedEmbedding, HashedEmbeddingConfig
from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig
from ctr.embeddings.tables import embedding_param_count, init_plain_tables
from ctr.embeddings.unified import UnifiedEmbedding, UnifiedEmbeddingConfig
from ctr.errors import ConfigError
from ctr.features.hashing import chunk_rows_np, chunk_salt, hash_texts
from ctr.features.layout import FieldLayout
from ctr.features.schema import Schema
from ctr.models import build_model, parse_model_config

SCHEMA = Schema(hash_seed=3, fields=[{"name": "u", "encoding": "hash"}, {"name": "i", "encoding": "hash"},
                                     {"name": "g"}, {"name": "x", "kind": "numeric"}])
SIZES = {"u": 1001, "i": 501, "g": 5}  # collisionless rows: 1001 + 501 + 5 = 1507
LAYOUT = FieldLayout(SCHEMA, SIZES, hashed_tables=("u", "i"), hash_seed=3)
U = hash_texts(["alice", "bob", "never-seen-in-training"], 3)
I_ = hash_texts(["x1", "x2", "x1"], 3)


def kjt(g=(1, 4, 0)):
    values = torch.cat([torch.from_numpy(U), torch.from_numpy(I_), torch.tensor(g)])
    return KeyedJaggedTensor.from_lengths_sync(["u", "i", "g"], values, torch.ones(9, dtype=torch.long))


def test_unified_budget_chunks_round_robin_and_lookup():
    cfg = UnifiedEmbeddingConfig(budget=0.5, chunks=2, chunk_dim=8, num_tables=2, project=False)
    emb = UnifiedEmbedding(LAYOUT, 16, cfg)
    # budget: 0.5 * 1507 * 16 params; the collisionless g table keeps 5 * 16; the rest in 8-wide rows
    rows_total = (int(0.5 * 1507 * 16) - 5 * 16) // 8
    assert emb.sub_table_rows == rows_total // 2
    configs = {c.name: c for c in emb.ebc.embedding_bag_configs()}
    assert configs["g"].num_embeddings == 5 and configs["g"].embedding_dim == 16
    assert configs["unified_0"].feature_names == ["u@0", "i@0"]  # global round-robin over features and chunks
    assert configs["unified_1"].feature_names == ["u@1", "i@1"]
    init_plain_tables(emb, seed=1)
    out = emb(torch.tensor([[1.0], [2.0], [3.0]]), kjt())
    assert out.shape == (3, 4, 16)
    t0, t1 = (emb.ebc.embedding_bags[f"unified_{k}"].weight.detach() for k in (0, 1))
    for b in range(3):
        r0 = chunk_rows_np(U[b:b + 1], chunk_salt("u", 0, 3), emb.sub_table_rows)[0]
        r1 = chunk_rows_np(U[b:b + 1], chunk_salt("u", 1, 3), emb.sub_table_rows)[0]
        torch.testing.assert_close(out[b, 0], torch.cat([t0[r0], t1[r1]]))  # chunks concatenated
    g = emb.ebc.embedding_bags["g"].weight.detach()
    torch.testing.assert_close(out[:, 2], g[[1, 4, 0]])  # collisionless: the vocabulary id's own row
    torch.testing.assert_close(out[2, 1], out[0, 1])  # same raw value -> same vector
    params = embedding_param_count(emb)
    assert params == 5 * 16 + 2 * emb.sub_table_rows * 8 <= 0.5 * 1507 * 16


def test_unified_per_feature_chunks_and_projection():
    cfg = UnifiedEmbeddingConfig(rows=400, chunks=2, chunk_dim=8, num_tables=3, chunks_per_feature={"u": 3})
    emb = UnifiedEmbedding(LAYOUT, 16, cfg)
    assert emb.feature_chunks == {"u": ["u@0", "u@1", "u@2"], "i": ["i@0", "i@1"]}
    assert list(emb.project) == ["u", "i"]  # every multiplexed feature reads its chunks through its own map
    assert emb.project["u"].in_features == 24 and emb.project["i"].in_features == 16
    assert emb.sub_table_rows == 400 // 3
    out = emb(torch.zeros(3, 1), kjt())
    assert out.shape == (3, 4, 16)
    raw = emb.ebc(emb.multiplex(kjt())).to_dict()
    torch.testing.assert_close(out[:, 1], emb.project["i"](torch.cat([raw["i@0"], raw["i@1"]], dim=1)))
    no_proj = UnifiedEmbedding(LAYOUT, 16, cfg.model_copy(update={"project": False}))
    assert list(no_proj.project) == ["u"]  # only where the concatenation is not D wide


def test_hashed_budget_split_by_cardinality_and_lookup():
    emb = HashedEmbedding(LAYOUT, 16, HashedEmbeddingConfig(budget=0.25))
    left = (int(0.25 * 1507 * 16) - 5 * 16) // 16
    assert emb.table_rows == {"u": left * 1001 // 1502, "i": left * 501 // 1502}
    init_plain_tables(emb, seed=1)
    out = emb(torch.zeros(3, 1), kjt())
    w = emb.inner.ebc.embedding_bags["u"].weight.detach()
    rows = chunk_rows_np(U, chunk_salt("u", 0, 3), emb.table_rows["u"])
    torch.testing.assert_close(out[:, 0], w[rows])


def test_configs_and_refusals():
    assert isinstance(parse_embedding_config({"name": "unified", "budget": 0.1}), UnifiedEmbeddingConfig)
    with pytest.raises(ConfigError, match="either budget"):
        parse_embedding_config({"name": "hashed", "budget": 0.5, "rows": 10})
    with pytest.raises(ConfigError, match="unknown embedding method"):
        parse_embedding_config({"name": "unifed"})
    with pytest.raises(ConfigError, match="hash-encoded"):
        PlainEmbedding(LAYOUT, 16, PlainEmbeddingConfig())
    with pytest.raises(ConfigError, match="vocabulary tables alone"):
        UnifiedEmbedding(FieldLayout(SCHEMA, {"u": 2, "i": 2, "g": 1000}, hashed_tables=("u", "i")), 16,
                         UnifiedEmbeddingConfig(budget=0.5))
    with pytest.raises(ConfigError, match="unknown fields"):
        UnifiedEmbedding(LAYOUT, 16, UnifiedEmbeddingConfig(chunks_per_feature={"nope": 2}))


MODELS = [{"name": "lr"}, {"name": "fm", "embedding_dim": 16}, {"name": "dnn", "embedding_dim": 16, "dnn_hidden": [8]},
          {"name": "deepfm", "embedding_dim": 16, "dnn_hidden": [8]},
          {"name": "autoint_plus", "embedding_dim": 16, "attention_layers": 1, "attention_dim": 8, "dnn_hidden": [8]}]


CASES = [(m, "unified") for m in MODELS] + [(MODELS[3], "hashed")]


@pytest.mark.parametrize(("model", "method"), CASES, ids=[f"{m['name']}-{e}" for m, e in CASES])
def test_every_model_trains_on_hashed_ids(model, method):
    torch.manual_seed(0)
    net = build_model(parse_model_config(model), LAYOUT, parse_embedding_config({"name": method, "budget": 0.5}))
    init_plain_tables(net, seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    labels = torch.tensor([1.0, 0.0, 1.0])
    dense = torch.tensor([[0.5], [-1.0], [2.0]])
    losses = []
    for _ in range(10):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(dense, kjt()), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] * 0.7


@pytest.mark.parametrize("method", ["hashed", "unified"])
def test_first_order_tables_follow_the_budget(method):
    """A budget covers the first-order (lin_) tables too: the hashed tables' first-order rows are the same
    share of their collisionless rows as the main embedding's hashed space; vocabulary tables stay whole."""
    def lin_rows(net):
        return {c.name: c.num_embeddings for m in net.modules() if hasattr(m, "embedding_bag_configs")
                for c in m.embedding_bag_configs() if c.name.startswith("lin_")}

    model = parse_model_config({"name": "deepfm", "embedding_dim": 16, "dnn_hidden": [8]})
    full = build_model(model, LAYOUT, parse_embedding_config({"name": method, "budget": 1.0}))
    assert lin_rows(full) == {"lin_u": 1001, "lin_i": 501, "lin_g": 5}
    for budget in (0.1, 0.5):
        net = build_model(model, LAYOUT, parse_embedding_config({"name": method, "budget": budget}))
        share = net.embedding.hashed_share()
        assert share == pytest.approx(budget, abs=0.02)  # the vocabulary table g takes its exact share
        rows = lin_rows(net)
        assert rows["lin_g"] == 5
        assert rows["lin_u"] + rows["lin_i"] == pytest.approx(share * 1502, abs=2)
        total = rows["lin_u"] + rows["lin_i"]
        assert rows["lin_u"] == pytest.approx(total * 1001 / 1502, abs=1)  # split by distinct values
        ratio = embedding_param_count(net) / embedding_param_count(full)
        assert ratio == pytest.approx(budget, abs=0.03)  # embedding_params now tracks the budget
