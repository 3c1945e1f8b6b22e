"""OptFS: continuation schedule, whole-table penalty, hard gates, and the materialised compact model."""

import copy
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


def _set_gates(emb, table, m):
    """Write gate parameters ``m`` ([rows]) into column 0 of ``table``'s gate table (optimiser state 0)."""
    with torch.no_grad():
        weight = emb.gate_ebc.embedding_bags[emb.gate_tables[table]].weight
        weight.zero_()
        weight[:, 0] = torch.as_tensor(m, dtype=torch.float32)


def test_gates_are_width_4_tables_with_the_rows_and_keys_of_their_embedding_table():
    emb = build_model(parse_model_config(MODELS[0]), FieldLayout(SCHEMA, SIZES), OptFSConfig(mask_init=0.3)).embedding
    configs = {c.name: c for c in emb.gate_ebc.embedding_bag_configs()}
    base = {c.name: c for c in emb.ebc.embedding_bag_configs()}
    assert set(configs) == {"a@gate", "b@gate"} and emb.followed_tables() == {"a@gate": "a", "b@gate": "b"}
    for name, cfg in configs.items():
        ref = base[name.removesuffix("@gate")]
        assert cfg.embedding_dim == 4 and cfg.num_embeddings == ref.num_embeddings
        assert cfg.feature_names == ref.feature_names  # looked up with the same KJT keys and ids
    from ctr.embeddings.tables import init_plain_tables

    init_plain_tables(emb, seed=3)
    for table in ("a", "b"):
        np.testing.assert_array_equal(emb.gate_params(table).numpy(), np.full(SIZES[table], 0.3, np.float32))


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


def test_gate_step_is_adam_on_bce_plus_the_whole_table_penalty():
    """Three training steps: fused SGD at lr 1 on the gate table captures -dBCE/dm in column 1, then
    ``table_step`` (here on a table split into two local shards) equals torch's Adam on a dense ``m`` with
    loss BCE + λ·Σσ(τm) over every row."""
    from ctr.embeddings.optfs import CAPTURE_LR
    from ctr.embeddings.tables import TABLE_OPTIMIZER

    cfg = OptFSConfig(search_epochs=3, final_temp=9.0, penalty=1e-2, l2=0.0, gate_first_order=False)
    model = build_model(parse_model_config(MODELS[0]), FieldLayout(SCHEMA, SIZES), cfg)
    emb = model.embedding
    rng = np.random.default_rng(0)
    for table in SIZES:
        _set_gates(emb, table, rng.normal(size=SIZES[table]))
    emb.start_epoch(1)  # τ = 3
    assert emb.stepped_tables() == ["a@gate", "b@gate"]
    weights = {t: emb.gate_ebc.embedding_bags[emb.gate_tables[t]].weight for t in SIZES}
    assert all(getattr(w, TABLE_OPTIMIZER) == ("sgd", CAPTURE_LR) for w in weights.values())
    ref = {t: torch.nn.Parameter(emb.gate_params(t).clone()) for t in SIZES}
    adam = torch.optim.Adam(list(ref.values()), lr=0.01)
    penalty = 1e-2 * sum(torch.sigmoid(3.0 * m).sum() for m in ref.values())
    assert float(emb.penalty()) == pytest.approx(float(penalty), rel=1e-6)
    model.train()
    for step in range(3):
        dense, kjt, ids = _batch(16, seed=step)
        label = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(step)).float()
        # reference: the same forward with m as a dense parameter (the gates of the looked-up ids)
        saved = {t: w.detach().clone() for t, w in weights.items()}
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(dense, kjt).squeeze(-1), label)
        for w in weights.values():
            w.grad = None
        loss.backward()
        with torch.no_grad():  # what the fused SGD (lr 1) does to the gate rows
            for t, w in weights.items():
                w.sub_(CAPTURE_LR * w.grad)
                assert torch.equal(w[:, [0, 2, 3]], saved[t][:, [0, 2, 3]])  # only column 1 moves
        bce_grads = {t: -weights[t].detach()[:, 1].clone() / CAPTURE_LR for t in SIZES}
        if step == 0:  # the captured gradient is dBCE/dm: central difference on one looked-up gate
            row, h = int(bce_grads["b"].abs().argmax()), 1e-4
            probe = copy.deepcopy(model).double()
            gate = probe.embedding.gate_ebc.embedding_bags["b@gate"].weight
            with torch.no_grad():
                losses = []
                for delta in (h, -h):
                    gate[row, 0] = weights["b"][row, 0].double() + delta
                    losses.append(float(torch.nn.functional.binary_cross_entropy_with_logits(
                        probe(dense.double(), kjt).squeeze(-1), label.double())))
            assert abs(float(bce_grads["b"][row])) > 1e-5
            assert float(bce_grads["b"][row]) == pytest.approx((losses[0] - losses[1]) / (2 * h), rel=1e-3)
        adam.zero_grad()
        full = 1e-2 * sum(torch.sigmoid(3.0 * m).sum() for m in ref.values())
        full.backward()
        for t, m in ref.items():
            m.grad += bce_grads[t]
        adam.step()
        half = SIZES["a"] // 2
        emb.table_step({"a@gate": [weights["a"].data[:half], weights["a"].data[half:]],
                        "b@gate": [weights["b"].data]}, lr=0.01)
        for t in SIZES:
            assert torch.equal(weights[t].detach()[:, 1], torch.zeros(SIZES[t]))  # the capture column is reset
            np.testing.assert_allclose(emb.gate_params(t).numpy(), ref[t].detach().numpy(), rtol=1e-5, atol=1e-6)
        assert any(bool((g != 0).any()) for g in bce_grads.values())  # the BCE reached the looked-up gates
    assert emb.regularizer() is None  # the penalty is not a loss term (the fused kernel never sees every row)
    emb.config = emb.config.model_copy(update={"mode": "ticket"})
    assert emb.stepped_tables() == []


def test_soft_and_hard_gates_scale_looked_up_vectors():
    layout = FieldLayout(SCHEMA, SIZES)
    soft = build_model(parse_model_config(MODELS[0]), layout, OptFSConfig(final_temp=4.0, search_epochs=2)).embedding
    plain = build_model(parse_model_config(MODELS[0]), layout, PlainEmbeddingConfig()).embedding
    plain.load_state_dict({k: v for k, v in soft.state_dict().items() if not k.startswith("gate_ebc.")})
    _set_gates(soft, "a", torch.linspace(-1, 1, SIZES["a"]))
    soft.start_epoch(1)  # τ = 4
    dense, kjt, ids = _batch(16)
    got, ref = soft(dense, kjt), plain(dense, kjt)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    m = soft.gate_params("a")[ids["a"]].numpy()
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
    m_a, m_b = gated.embedding.gate_params("a").clone(), gated.embedding.gate_params("b").clone()
    m_a[0], m_b[0] = -1.0, 1.0  # OOV row of "a" pruned (its compact row 0 is zeros), OOV row of "b" kept
    _set_gates(gated.embedding, "a", m_a)
    _set_gates(gated.embedding, "b", m_b)
    gated.eval()
    emb = gated.embedding
    keep = {t: normalise_keep(k, SIZES[t]) for t, k in emb.keep_lists().items()}
    assert 0 < sum(len(k) for k in keep.values()) < sum(SIZES.values())
    scale = {t: emb.gate(t, torch.as_tensor(k)).numpy() for t, k in keep.items()}
    compact = build_model(model_cfg, FieldLayout(SCHEMA, {t: len(k) for t, k in keep.items()}), PlainEmbeddingConfig())
    compact.load_state_dict(compact_state(gated.state_dict(), compact.state_dict(), keep, scale,
                                          scale_first_order=True))
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
