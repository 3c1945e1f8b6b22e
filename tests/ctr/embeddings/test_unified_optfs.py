"""unified_optfs: OptFS gates on the shared rows of Unified Embedding, and the pruned compact ``unified``."""

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.embeddings import UnifiedEmbedding, UnifiedEmbeddingConfig, UnifiedOptFSConfig, UnifiedOptFSEmbedding
from ctr.embeddings.optfs import GRAD, M
from ctr.embeddings.tables import init_plain_tables
from ctr.errors import ConfigError
from ctr.features.hashing import chunk_rows_np, chunk_salt, hash_texts
from ctr.features.layout import FieldLayout
from ctr.features.schema import Schema
from ctr.models import build_model, parse_model_config
from ctr.search import SEARCHES
from ctr.search.unified_optfs import pruned_state

SCHEMA = Schema(hash_seed=3, fields=[{"name": "u", "encoding": "hash"}, {"name": "i", "encoding": "hash"},
                                     {"name": "g"}, {"name": "x", "kind": "numeric"}])
LAYOUT = FieldLayout(SCHEMA, {"u": 1001, "i": 501, "g": 5}, hashed_tables=("u", "i"), hash_seed=3)
U = hash_texts(["alice", "bob", "never-seen-in-training", "carol"], 3)
I_ = hash_texts(["x1", "x2", "x1", "x3"], 3)
CFG = {"budget": 0.5, "chunks": 2, "chunk_dim": 8, "num_tables": 2}


def kjt():
    values = torch.cat([torch.from_numpy(U), torch.from_numpy(I_), torch.tensor([1, 4, 0, 2])])
    return KeyedJaggedTensor.from_lengths_sync(["u", "i", "g"], values, torch.ones(12, dtype=torch.long))


DENSE = torch.tensor([[1.0], [2.0], [3.0], [0.5]])


def gated(mode="search", **extra):
    torch.manual_seed(0)
    emb = UnifiedOptFSEmbedding(LAYOUT, 16, UnifiedOptFSConfig(**CFG, mode=mode, **extra))
    init_plain_tables(emb, seed=1)
    return emb


def row_of(emb, value, table, chunk):
    return int(chunk_rows_np(value, chunk_salt(table, chunk, 3), emb.sub_table_rows)[0])


def test_gate_tables_follow_the_shared_sub_tables_and_start_as_identity():
    emb = gated()
    assert emb.followed_tables() == {"unified_0@gate": "unified_0", "unified_1@gate": "unified_1"}
    gates = {c.name: c for c in emb.gate_ebc.embedding_bag_configs()}
    assert gates["unified_0@gate"].num_embeddings == emb.sub_table_rows
    assert gates["unified_0@gate"].feature_names == ["u@0", "i@0"]  # read with the chunk's own ids
    assert torch.all(emb.gate_params("unified_0") == 0.5)
    plain = UnifiedEmbedding(LAYOUT, 16, UnifiedOptFSConfig(**CFG).unified())
    missing, unexpected = plain.load_state_dict(emb.state_dict(), strict=False)
    assert not missing and all(k.startswith("gate_ebc.") for k in unexpected)
    torch.testing.assert_close(emb(DENSE, kjt()), plain(DENSE, kjt()))  # σ(m_init)/σ(m_init) = 1


def test_hard_gate_zeroes_a_pruned_row_and_scales_kept_rows():
    emb = gated("ticket")
    plain = UnifiedEmbedding(LAYOUT, 16, UnifiedOptFSConfig(**CFG).unified(project=True))
    plain.load_state_dict(emb.state_dict(), strict=False)
    pruned = row_of(emb, U[:1], "u", 0)  # alice's first chunk
    with torch.no_grad():
        emb.gate_ebc.embedding_bags["unified_0@gate"].weight[pruned, M] = -0.1
        for k in (0, 1):  # the reference: the same rows scaled by 1/σ(0.5), the pruned one zeroed
            w = plain.ebc.embedding_bags[f"unified_{k}"].weight
            w.mul_(emb.scale)
            if k == 0:
                w[pruned] = 0
    torch.testing.assert_close(emb(DENSE, kjt()), plain(DENSE, kjt()))
    assert not torch.allclose(emb(DENSE, kjt())[0, 0], gated("ticket")(DENSE, kjt())[0, 0])  # alice's row gone


def test_the_gate_gradient_lands_in_the_capture_column():
    emb = gated()
    emb(DENSE, kjt()).pow(2).sum().backward()
    grad = emb.gate_ebc.embedding_bags["unified_0@gate"].weight.grad.to_dense()
    assert torch.count_nonzero(grad[:, M]) == 0  # m itself gets nothing: the step is taken outside
    looked = {row_of(emb, U[b:b + 1], "u", 0) for b in range(4)} | {row_of(emb, I_[b:b + 1], "i", 0) for b in range(4)}
    assert set(torch.nonzero(grad[:, GRAD]).flatten().tolist()) == looked
    # a gate multiplies its chunk: d/dm of Σ out² through σ(τm)/σ(m0) at m = m0 is > 0 for every looked-up row
    assert torch.all(grad[sorted(looked), GRAD] > 0)


def test_compact_model_equals_the_hard_gated_model():
    model_cfg = parse_model_config({"name": "deepfm", "embedding_dim": 16, "dnn_hidden": [8]})
    cfg = UnifiedOptFSConfig(**CFG, mode="ticket")
    torch.manual_seed(0)
    ticket = build_model(model_cfg, LAYOUT, cfg).eval()
    init_plain_tables(ticket, seed=2)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for name in ("unified_0@gate", "unified_1@gate"):
            w = ticket.embedding.gate_ebc.embedding_bags[name].weight
            w[:, M] = torch.from_numpy(rng.normal(0.0, 1.0, w.shape[0])).float()
    keep = ticket.embedding.keep_lists()
    compact_cfg = cfg.unified(kept_rows={t: len(k) + 1 for t, k in keep.items()})
    compact = build_model(model_cfg, LAYOUT, compact_cfg).eval()
    compact.load_state_dict(pruned_state(ticket.state_dict(), compact.state_dict(), keep, ticket.embedding.scale))
    with pytest.raises(KeyError, match="unified_1"):  # a pruned sub-table without its kept rows has no source
        pruned_state(ticket.state_dict(), compact.state_dict(), {"unified_0": keep["unified_0"]}, 1.0)
    assert 0.3 < len(keep["unified_0"]) / ticket.embedding.sub_table_rows < 0.7
    assert compact.embedding.ebc.embedding_bags["unified_0"].weight.shape[0] == len(keep["unified_0"]) + 1
    with torch.no_grad():
        torch.testing.assert_close(compact(DENSE, kjt()), ticket(DENSE, kjt()))
    # every pruned row reads the one shared row 0; the first-order tables keep their budgeted size
    row_map = compact.embedding.row_maps.unified_0
    assert row_map.dtype == torch.int32 and int((row_map == 0).sum()) == ticket.embedding.sub_table_rows - len(keep["unified_0"])
    def lin_rows(model):
        return {c.name: c.num_embeddings for m in model.modules() if hasattr(m, "embedding_bag_configs")
                for c in m.embedding_bag_configs() if c.name.startswith("lin_")}

    assert lin_rows(ticket) and lin_rows(compact) == lin_rows(ticket)


def test_refusals_and_registration():
    assert "unified_optfs" in SEARCHES
    assert SEARCHES["unified_optfs"](UnifiedOptFSConfig(**CFG))[1].name == "materialise"
    with pytest.raises(ConfigError, match="rewind"):
        SEARCHES["unified_optfs"](UnifiedOptFSConfig(**CFG, search_epochs=2, rewind=2))
    with pytest.raises(ConfigError, match="kept_rows"):
        UnifiedOptFSEmbedding(LAYOUT, 16, UnifiedOptFSConfig(**CFG, kept_rows={"unified_0": 3}))
    with pytest.raises(ConfigError, match="unified_7"):
        UnifiedEmbedding(LAYOUT, 16, UnifiedEmbeddingConfig(**CFG, kept_rows={"unified_7": 3}))
    multi = Schema(fields=[{"name": "u", "encoding": "hash"}, {"name": "tags", "kind": "sequence", "encoding": "hash"}])
    with pytest.raises(ConfigError, match="tags"):
        UnifiedOptFSEmbedding(FieldLayout(multi, {"u": 50, "tags": 50}, hashed_tables=("u", "tags")), 8,
                              UnifiedOptFSConfig(budget=0.5))
    vocab_only = Schema(fields=[{"name": "u"}])
    with pytest.raises(ConfigError, match="no hash-encoded field"):
        UnifiedOptFSEmbedding(FieldLayout(vocab_only, {"u": 50}), 8, UnifiedOptFSConfig(budget=1.0))
