"""OptFS: continuation schedule, whole-table penalty, hard gates, and the materialised compact model."""

import math

import numpy as np
import polars as pl
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.embeddings import OptFSConfig, PlainEmbeddingConfig
from ctr.embeddings.optfs import temperature
from ctr.features.artifact import FeatureArtifact
from ctr.features.layout import FieldLayout
from ctr.features.schema import Schema
from ctr.features.transform import FeatureTransform
from ctr.models import build_model, parse_model_config
from ctr.search.compact import compact_artifact, compact_state, normalise_keep, remap_of

SCHEMA = Schema(fields=[{"name": "a"}, {"name": "b"}, {"name": "c", "table": "a"},
                        {"name": "x", "kind": "numeric"}])
SIZES = {"a": 30, "b": 12}
MODELS = [{"name": "fm", "embedding_dim": 8},
          {"name": "deepfm", "embedding_dim": 8, "dnn_hidden": [16]},
          {"name": "autoint_plus", "embedding_dim": 8, "attention_layers": 1, "num_heads": 2, "attention_dim": 8,
           "dnn_hidden": [16]}]


def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = {"a": torch.randint(0, SIZES["a"], (n,), generator=g), "b": torch.randint(0, SIZES["b"], (n,), generator=g),
           "c": torch.randint(0, SIZES["a"], (n,), generator=g)}
    kjt = KeyedJaggedTensor.from_lengths_sync(["a", "b", "c"], torch.cat([ids["a"], ids["b"], ids["c"]]),
                                              torch.ones(3 * n, dtype=torch.int64))
    return torch.randn(n, 1, generator=g), kjt, ids


def test_temperature_grows_geometrically_per_epoch_to_final_temp():
    emb = build_model(parse_model_config(MODELS[0]), FieldLayout(SCHEMA, SIZES),
                      OptFSConfig(search_epochs=5, final_temp=625.0)).embedding
    seen = []
    for epoch in range(6):
        emb.start_epoch(epoch)
        seen.append(emb.temperature)
    ratio = 625.0 ** (1 / 4)  # multiplied by final_temp^(1/(E-1)) after every epoch
    np.testing.assert_allclose(seen, [1, ratio, ratio ** 2, ratio ** 3, 625.0, 625.0], rtol=1e-12)
    assert temperature(0, 1, 50.0) == 1.0


def test_penalty_sums_sigmoid_over_the_whole_gate_table_in_training_only():
    cfg = OptFSConfig(search_epochs=3, final_temp=9.0, penalty=1e-3, l2=0.0)
    model = build_model(parse_model_config(MODELS[0]), FieldLayout(SCHEMA, SIZES), cfg)
    emb = model.embedding
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for g in emb.gates.values():
            g.copy_(torch.as_tensor(rng.normal(size=g.shape[0]), dtype=g.dtype))
    emb.start_epoch(1)  # τ = 3
    dense, kjt, _ = _batch(8)
    model.train()
    model(dense, kjt)  # only rows in the batch are looked up; the penalty still covers every row
    every = np.concatenate([g.detach().numpy() for g in emb.gates.values()])
    expected = 1e-3 * np.sum(1 / (1 + np.exp(-3.0 * every)))
    assert float(emb.regularizer()) == pytest.approx(expected, rel=1e-6)
    model.eval()
    model(dense, kjt)
    assert emb.regularizer() is None


def test_soft_and_hard_gates_scale_looked_up_vectors():
    layout = FieldLayout(SCHEMA, SIZES)
    soft = build_model(parse_model_config(MODELS[0]), layout, OptFSConfig(final_temp=4.0, search_epochs=2)).embedding
    plain = build_model(parse_model_config(MODELS[0]), layout, PlainEmbeddingConfig()).embedding
    plain.load_state_dict({k: v for k, v in soft.state_dict().items() if not k.startswith("gates.")})
    with torch.no_grad():
        soft.gates["a"].copy_(torch.linspace(-1, 1, SIZES["a"]))
    soft.start_epoch(1)  # τ = 4
    dense, kjt, ids = _batch(16)
    got, ref = soft(dense, kjt), plain(dense, kjt)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    m = soft.gates["a"].detach()[ids["a"]].numpy()
    want = np.array([sig(4 * v) / sig(0.5) for v in m])
    np.testing.assert_allclose(got[:, 0].detach().numpy(), ref[:, 0].detach().numpy() * want[:, None], rtol=1e-5)
    np.testing.assert_allclose(got[:, 1].detach().numpy(), ref[:, 1].detach().numpy() * sig(4 * 0.5) / sig(0.5),
                               rtol=1e-5)  # m = mask_init
    np.testing.assert_allclose(got[:, 3].detach().numpy(), ref[:, 3].detach().numpy())  # numeric: ungated
    soft.config = soft.config.model_copy(update={"mode": "ticket"})
    hard = soft(dense, kjt)[:, 0].detach().numpy()
    np.testing.assert_allclose(hard, ref[:, 0].detach().numpy() * ((m > 0) / sig(0.5))[:, None], rtol=1e-5)


@pytest.mark.parametrize("model_raw", MODELS, ids=[m["name"] for m in MODELS])
def test_compact_model_predicts_as_the_hard_gated_model(model_raw):
    torch.manual_seed(0)
    layout = FieldLayout(SCHEMA, SIZES)
    model_cfg = parse_model_config(model_raw)
    gated = build_model(model_cfg, layout, OptFSConfig(mode="ticket"))
    rng = np.random.default_rng(1)
    with torch.no_grad():
        for p in gated.parameters():
            p.copy_(torch.as_tensor(rng.normal(scale=0.3, size=tuple(p.shape)), dtype=p.dtype))
        gated.embedding.gates["a"][0] = -1.0  # OOV row of "a" pruned: its compact row 0 is zeros
        gated.embedding.gates["b"][0] = 1.0   # OOV row of "b" kept
    gated.eval()
    emb = gated.embedding
    keep = {t: normalise_keep(k, SIZES[t]) for t, k in emb.keep_lists().items()}
    assert 0 < sum(len(k) for k in keep.values()) < sum(SIZES.values())
    scale = {t: emb.gate(t, torch.as_tensor(k)).numpy() for t, k in keep.items()}
    compact = build_model(model_cfg, FieldLayout(SCHEMA, {t: len(k) for t, k in keep.items()}), PlainEmbeddingConfig())
    compact.load_state_dict(compact_state(gated.state_dict(), compact.state_dict(), keep, scale))
    compact.eval()
    assert compact.embedding.ebc.embedding_bags["a"].weight.shape[0] == len(keep["a"])
    assert float(compact.embedding.ebc.embedding_bags["a"].weight[0].abs().sum()) == 0.0

    dense, kjt, ids = _batch(128, seed=2)
    remaps = {t: torch.as_tensor(remap_of(k, SIZES[t])) for t, k in keep.items()}
    new = KeyedJaggedTensor.from_lengths_sync(
        ["a", "b", "c"], torch.cat([remaps["a"][ids["a"]], remaps["b"][ids["b"]], remaps["a"][ids["c"]]]),
        torch.ones(3 * 128, dtype=torch.int64))
    with torch.no_grad():
        want = gated(dense, emb.ticket_remap(kjt))
        got = compact(dense, new)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_compact_artifact_encodes_pruned_values_as_oov():
    schema = Schema(fields=[{"name": "u"}, {"name": "v"}])
    train = pl.DataFrame({"u": ["a", "a", "a", "b", "b", "c", "d"], "v": ["x"] * 7, "label": [0, 1] * 3 + [0]})
    art = FeatureArtifact.fit(train, schema)
    ids = dict(zip(art.vocabularies()["u"]["value"].to_list(), art.vocabularies()["u"]["id"].to_list(), strict=True))
    keep = {"u": np.array([ids["a"], ids["c"]])}
    small = compact_artifact(art, keep)
    assert small.table_sizes() == {"u": 3, "v": art.table_sizes()["v"]}
    rows = pl.DataFrame({"u": ["a", "b", "c", "d", "never-seen"], "v": ["x"] * 5})
    enc = FeatureTransform(small).apply(rows)["u"].to_list()
    old = FeatureTransform(art).apply(rows)["u"].to_list()
    remap = remap_of(keep["u"], art.table_sizes()["u"])
    assert enc == [int(remap[i]) for i in old]  # same as remapping the full artifact's ids
    assert enc[1] == enc[3] == enc[4] == 0 and enc[0] != enc[2] and min(enc[0], enc[2]) > 0
    counts = small.table_counts()["u"]
    assert sum(counts) == sum(art.table_counts()["u"])  # pruned values' counts moved to the OOV row
