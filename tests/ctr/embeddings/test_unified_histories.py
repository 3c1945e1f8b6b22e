"""Hashed and unified embeddings with DIN histories: a history item is hashed and multiplexed exactly like the
candidate item (same rows, same projection), collisionless history tables stay exact, DIN trains on them, and
the feature transform and the serving row encoder hash history tokens as the candidate's value."""

import polars as pl
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.embeddings import parse_embedding_config
from ctr.embeddings.hashed import HashedEmbedding, HashedEmbeddingConfig
from ctr.embeddings.tables import init_plain_tables
from ctr.embeddings.unified import UnifiedEmbedding, UnifiedEmbeddingConfig
from ctr.errors import ConfigError
from ctr.features.artifact import FeatureArtifact
from ctr.features.hashing import chunk_rows_np, chunk_salt, hash_texts
from ctr.features.layout import FieldLayout
from ctr.features.row_encoder import RowEncoder
from ctr.features.schema import Schema
from ctr.features.transform import FeatureTransform
from ctr.models import build_model, parse_model_config

FIELDS = [{"name": "user"}, {"name": "item"}, {"name": "genre", "encoding": "vocab"},
          {"name": "hist_item", "kind": "sequence", "table": "item", "pooling": "none", "max_len": 4},
          {"name": "hist_genre", "kind": "sequence", "table": "genre", "pooling": "none", "max_len": 4,
           "encoding": "vocab"}]
SCHEMA = Schema(encoding="hash", hash_seed=5, fields=FIELDS)
LAYOUT = FieldLayout(SCHEMA, {"user": 300, "item": 500, "genre": 6}, hashed_tables=("user", "item"), hash_seed=5)
USERS = hash_texts(["u1", "u2", "u3"], 5)
ITEMS = hash_texts(["a", "b", "c", "new-at-serving"], 5)


def kjt() -> KeyedJaggedTensor:
    """Row 0's history holds row 1's candidate (b) then row 2's (c); row 1 has none; row 2 has one (a)."""
    u, i = USERS.tolist(), ITEMS.tolist()
    values = u + i[:3] + [1, 2, 3] + [i[1], i[2], i[0]] + [2, 3, 1]
    lengths = [1] * 9 + [2, 0, 1] + [2, 0, 1]
    return KeyedJaggedTensor(keys=["user", "item", "genre", "hist_item", "hist_genre"],
                             values=torch.tensor(values), lengths=torch.tensor(lengths))


def test_history_chunks_share_the_candidates_rows_and_projection():
    emb = UnifiedEmbedding(LAYOUT, 16, UnifiedEmbeddingConfig(budget=0.5, chunks=2, chunk_dim=8, num_tables=2))
    ec = {c.name: c for m in (emb.ec, emb.chunk_ec) for c in m.embedding_configs()}
    assert ec["unified_seq_0"].feature_names == ["item@0", "hist_item@0"]  # same (table, chunk): same sub-table
    assert ec["unified_seq_1"].feature_names == ["item@1", "hist_item@1"]
    assert ec["genre"].feature_names == ["genre", "hist_genre"] and ec["genre"].num_embeddings == 6
    bag = {c.name: c.feature_names for c in emb.ebc.embedding_bag_configs()}
    assert bag == {"unified_0": ["user@0"], "unified_1": ["user@1"]}
    assert list(emb.project) == ["user", "item"]  # one map per table: the history uses the candidate's
    # the budget's rows split between the pooled (user) and unpooled (item) spaces by collisionless rows
    total = (int(0.5 * 806 * 16) - 6 * 16) // 8
    assert emb.space_rows == {"bag": total * 300 // 800 // 2, "seq": (total - total * 300 // 800) // 2}
    init_plain_tables(emb, seed=2)
    emb.eval()
    with torch.no_grad():
        seq = emb.forward_sequences(torch.zeros(3, 0), kjt())
    assert seq.fields.shape == (3, 5, 16) and seq.history.shape == (3, 2, 4, 16)
    assert seq.mask.tolist() == [[True, True, False, False], [False] * 4, [True, False, False, False]]
    cand = seq.fields[:, 1]
    torch.testing.assert_close(seq.history[0, 0, 0], cand[1])  # history "b" = candidate "b"
    torch.testing.assert_close(seq.history[0, 0, 1], cand[2])
    torch.testing.assert_close(seq.history[2, 0, 0], cand[0])
    assert seq.history[0, :, 2:].abs().sum() == 0 and seq.history[1].abs().sum() == 0  # padding is zeros
    torch.testing.assert_close(seq.fields[0, 3], (cand[1] + cand[2]) / 2)  # a history's slot: its masked mean
    w = emb.ec.embeddings["genre"].weight
    torch.testing.assert_close(seq.history[0, 1, 0], w[2])  # collisionless history table: the id's own row
    rows = chunk_rows_np(ITEMS[1:2], chunk_salt("item", 1, 5), emb.space_rows["seq"])[0]
    raw = torch.cat([emb.chunk_ec.embeddings["unified_seq_0"].weight[
        chunk_rows_np(ITEMS[1:2], chunk_salt("item", 0, 5), emb.space_rows["seq"])[0]],
        emb.chunk_ec.embeddings["unified_seq_1"].weight[rows]])
    torch.testing.assert_close(cand[1], emb.project["item"](raw))


@pytest.mark.parametrize("method", ["unified", "hashed"])
def test_din_trains_on_multiplexed_histories(method):
    torch.manual_seed(0)
    model = build_model(parse_model_config({"name": "din", "embedding_dim": 16, "attention_hidden": [8],
                                            "dnn_hidden": [8]}),
                        LAYOUT, parse_embedding_config({"name": method, "budget": 0.5}))
    assert model.embedding.history_names == ["hist_item", "hist_genre"]
    init_plain_tables(model, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    labels = torch.tensor([1.0, 0.0, 1.0])
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(torch.zeros(3, 0), kjt()), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] * 0.7


def test_hashed_history_reads_the_candidates_hashed_rows():
    emb = HashedEmbedding(LAYOUT, 16, HashedEmbeddingConfig(budget=0.5))
    init_plain_tables(emb, seed=1)
    with torch.no_grad():
        seq = emb.forward_sequences(torch.zeros(3, 0), kjt())
    torch.testing.assert_close(seq.history[0, 0, 0], seq.fields[1, 1])
    torch.testing.assert_close(seq.history[2, 0, 0], seq.fields[0, 1])


def test_transform_and_row_encoder_hash_history_tokens_as_the_candidate():
    raw = pl.DataFrame({"user": ["u1", "u2"], "item": ["a", "b"], "genre": ["g1", "g2"],
                        "hist_item": [["b", "zz"], []], "hist_genre": [["g2", "g9"], []], "label": [1, 0]})
    art = FeatureArtifact.fit(raw, SCHEMA.model_copy(update={"label": "label"}))
    assert art.hashed_tables == ["user", "item"]  # a history's table is hashed with its candidate
    out = FeatureTransform(art).apply(raw)
    ids = hash_texts(["a", "b", "zz"], 5).tolist()
    assert out["item"].to_list() == ids[:2]
    assert out["hist_item"].to_list() == [[ids[1], ids[2]], []]  # "zz" never a candidate: still hashed
    genre = out["hist_genre"].to_list()[0]
    assert genre[0] == out["genre"].to_list()[1] and genre[1] > 0  # vocabulary table: ids from the vocabulary
    enc = RowEncoder(art).encode([{"user": "u1", "item": "a", "genre": "g1", "hist_item": ["b", "zz"],
                                   "hist_genre": ["g2", "g9"]}])
    offsets, values = enc.seqs["hist_item"]
    assert values.tolist() == [ids[1], ids[2]] and offsets.tolist() == [0, 2]


def test_a_mean_pooled_hashed_sequence_is_the_mean_of_its_tokens():
    schema = Schema(encoding="hash", fields=[{"name": "u"}, {"name": "tags", "kind": "sequence"}])
    layout = FieldLayout(schema, {"u": 50, "tags": 80}, hashed_tables=("u", "tags"))
    emb = UnifiedEmbedding(layout, 8, UnifiedEmbeddingConfig(budget=0.5, chunks=2, chunk_dim=4))
    init_plain_tables(emb, seed=0)
    u, (a, b) = hash_texts(["x"], 0).tolist(), hash_texts(["a", "b"], 0).tolist()
    kjt = KeyedJaggedTensor(keys=["u", "tags"], values=torch.tensor(u * 4 + [a, b, a, b]),
                            lengths=torch.tensor([1, 1, 1, 1, 2, 1, 1, 0]))  # tags: [a, b], [a], [b], []
    with torch.no_grad():
        out = emb(torch.zeros(4, 0), kjt)[:, 1]
    torch.testing.assert_close(out[0], (out[1] + out[2]) / 2)  # mean pooling, as a vocabulary table's
    assert out[3].abs().sum() == 0  # an empty sequence is a zero vector


def test_fields_sharing_a_table_need_the_same_chunk_count():
    schema = Schema(encoding="hash", fields=[{"name": "a", "table": "t"}, {"name": "b", "table": "t"}])
    layout = FieldLayout(schema, {"t": 100}, hashed_tables=("t",))
    emb = UnifiedEmbedding(layout, 8, UnifiedEmbeddingConfig(budget=0.5, chunks=2, chunk_dim=4))
    assert list(emb.project) == ["t"]  # one map for the table, read by both fields
    with pytest.raises(ConfigError, match="different chunk counts"):
        UnifiedEmbedding(layout, 8, UnifiedEmbeddingConfig(budget=0.5, chunks=2, chunk_dim=4,
                                                           chunks_per_feature={"b": 3}))
