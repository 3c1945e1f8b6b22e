"""DNIS: frequency blocks, α's clamp and normalised gradient, which step moves what (through DMP), and the
materialised mixed-dimension model against the pruned α-masked model."""

import dataclasses

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.embeddings import BlockDimConfig, DNISConfig
from ctr.embeddings.dnis import frequency_blocks, normalise_rows
from ctr.errors import ConfigError
from ctr.features.layout import FieldLayout
from ctr.features.schema import Schema
from ctr.models import build_model, parse_model_config
from ctr.search.dnis import materialise_state, prune_alpha, prune_mask

SCHEMA = Schema(fields=[{"name": "a"}, {"name": "b"}, {"name": "c", "table": "a"}, {"name": "d"},
                        {"name": "x", "kind": "numeric"}])
SIZES = {"a": 40, "b": 13, "d": 9}


def _counts(seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for t, n in SIZES.items():  # ids 1.. in descending count order (as a vocabulary artifact has them)
        out[t] = [int(rng.integers(0, 50))] + sorted(rng.integers(1, 200, n - 1).tolist(), reverse=True)
    return out


LAYOUT = FieldLayout(SCHEMA, SIZES, _counts())
MODELS = [{"name": "fm", "embedding_dim": 16},
          {"name": "deepfm", "embedding_dim": 16, "dnn_hidden": [16]},
          {"name": "autoint_plus", "embedding_dim": 16, "attention_layers": 1, "num_heads": 2, "attention_dim": 8,
           "dnn_hidden": [16]}]


def _inputs(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = ["a", "b", "c", "d"]
    ids = {k: torch.randint(0, SIZES[SCHEMA.field(k).table_name], (n,), generator=g) for k in keys}
    kjt = KeyedJaggedTensor.from_lengths_sync(keys, torch.cat([ids[k] for k in keys]),
                                              torch.ones(len(keys) * n, dtype=torch.int64))
    return torch.randn(n, 1, generator=g), kjt, ids


def test_blocks_follow_global_frequency_order_as_contiguous_id_ranges():
    fractions = [0.05, 0.15, 0.3, 0.5]
    starts = frequency_blocks(LAYOUT, fractions)
    ranked = []  # (count, block) of every id >= 1 of every table
    for t, s in starts.items():
        assert s[0] == 0 and s[-1] == SIZES[t] and list(s) == sorted(s) and len(s) == len(fractions) + 1
        for k in range(len(fractions)):
            ranked += [(LAYOUT.table_counts[t][i], k) for i in range(max(s[k], 1), s[k + 1])]
    assert len(ranked) == sum(SIZES.values()) - len(SIZES)
    for k in range(len(fractions) - 1):  # every id of a head block is at least as frequent as any later one
        head = [c for c, b in ranked if b <= k]
        tail = [c for c, b in ranked if b > k]
        assert min(head) >= max(tail)
    sizes = np.bincount([b for _, b in ranked], minlength=len(fractions))
    np.testing.assert_allclose(sizes / len(ranked), fractions, atol=1.5 / len(ranked) * len(fractions))


def test_blocks_refuse_ids_not_in_count_order():
    bad = FieldLayout(SCHEMA, SIZES, {**_counts(), "b": [0] + list(range(1, 13))})  # ascending counts
    with pytest.raises(ConfigError, match="descending train-count order"):
        frequency_blocks(bad, [0.5, 0.5])


def _dnis(model_raw, mode="search", **kw):
    cfg = DNISConfig(blocks=[0.1, 0.2, 0.3, 0.4], mode=mode, **kw)
    return build_model(parse_model_config(model_raw), LAYOUT, cfg)


def test_alpha_scales_each_looked_up_vector_by_its_block_row():
    model = _dnis(MODELS[0], dim_groups=4)
    emb = model.embedding
    dense, kjt, ids = _inputs()
    warm = emb(dense, kjt)
    with torch.no_grad():
        emb.alpha.copy_(torch.rand_like(emb.alpha))
    out = emb(dense, kjt)
    for s, name in enumerate(["a", "b", "c", "d"]):
        blocks = emb.block_of(name, ids[name])
        expected = warm[:, s] * emb.alpha.repeat_interleave(4, dim=1)[blocks]
        torch.testing.assert_close(out[:, s], expected)
    torch.testing.assert_close(out[:, 4], warm[:, 4])  # the numeric field is not a feature value
    emb.config = emb.config.model_copy(update={"mode": "warm"})
    torch.testing.assert_close(emb(dense, kjt), warm)  # warm start: α not applied


def test_alpha_gradient_normalisation_step_and_clamp_match_their_definitions():
    model = _dnis(MODELS[1], alpha_lr=0.3, l1=1e-3)
    emb = model.embedding
    with torch.no_grad():
        emb.alpha.copy_(torch.rand_like(emb.alpha))
    dense, kjt, _ = _inputs()
    labels = (torch.rand(64) > 0.5).float()
    before = emb.alpha.clone()

    def loss():
        return torch.nn.functional.binary_cross_entropy_with_logits(model(dense, kjt), labels)

    grad = emb.alpha_grad(loss)
    leaf = before.clone().requires_grad_(True)  # the definition, by hand
    emb._alpha_leaf = leaf
    (loss() + 1e-3 * leaf.abs().sum()).backward()
    emb._alpha_leaf = None
    torch.testing.assert_close(grad, leaf.grad)
    norm = normalise_rows(grad)
    torch.testing.assert_close(norm, grad / grad.abs().mean(dim=1, keepdim=True))
    assert torch.allclose(norm.abs().mean(dim=1), torch.ones(norm.shape[0]))
    emb.apply_alpha_grad(grad)
    torch.testing.assert_close(emb.alpha, (before - 0.3 * norm).clamp(0, 1))
    for _ in range(20):  # large steps either way: α stays in [0, 1]
        emb.apply_alpha_grad(torch.randn_like(grad) * 100)
        assert float(emb.alpha.min()) >= 0.0 and float(emb.alpha.max()) <= 1.0
    assert (emb.alpha == 0).any() and (emb.alpha == 1).any()


def test_pruning_fits_the_budget_with_widths_multiple_of_4():
    rng = np.random.default_rng(1)
    alpha = rng.random((5, 16))
    alpha[3, 5:] = 0.0  # a block the search mostly switched off
    rows = np.array([10, 40, 200, 800, 3000])
    for ratio in (0.05, 0.2, 0.5, 0.8, 1.0):
        budget = ratio * rows.sum() * 16
        cols = prune_alpha(alpha, rows, budget)
        widths = np.array([len(c) for c in cols])
        assert all(w % 4 == 0 and w <= 16 for w in widths)
        assert (rows * widths).sum() <= budget
        assert len(cols[3]) <= 8  # 5 live columns round up to 8 at most
        for k, c in enumerate(cols):  # kept columns are the block's largest α
            if 0 < len(c) < 16:
                dropped = np.setdiff1d(np.arange(16), c)
                assert alpha[k, c].min() >= alpha[k, dropped].max()
    assert [len(c) for c in prune_alpha(alpha, rows, rows.sum() * 16)] == [16, 16, 16, 8, 16]


@pytest.mark.parametrize("model_raw", MODELS, ids=[m["name"] for m in MODELS])
def test_mixed_dimension_model_predicts_as_the_pruned_alpha_masked_model(model_raw):
    torch.manual_seed(0)
    searched = _dnis(model_raw, dim_groups=8).eval()
    emb = searched.embedding
    with torch.no_grad():
        for p in searched.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        emb.alpha.copy_(torch.rand_like(emb.alpha))
        emb.alpha[3] = 0.0  # the tail block switched off entirely
    per_table = emb.block_rows()
    rows = np.array([sum(r[k] for r in per_table.values()) for k in range(emb.num_blocks)])
    cols = prune_alpha(emb.column_alpha().detach().numpy(), rows, 0.45 * rows.sum() * 16)
    widths = [len(c) for c in cols]
    assert widths[3] == 0 and all(w % 4 == 0 for w in widths) and len(set(widths)) > 1
    compact = build_model(parse_model_config(model_raw), LAYOUT,
                          BlockDimConfig(starts=emb.block_starts, widths=widths)).eval()
    compact.load_state_dict(materialise_state(searched, compact, cols))
    for table, w in compact.embedding.ebc.embedding_bags.items():
        assert w.weight.shape[1] % 4 == 0 and w.weight.shape[1] == widths[int(table.rsplit("@b", 1)[1])]
    emb.prune_mask = prune_mask(cols, 16)
    dense, kjt, _ = _inputs(128, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(compact(dense, kjt), searched(dense, kjt), rtol=1e-5, atol=1e-5)
        emb.prune_mask = None  # without the pruning the outputs differ: the test can fail
        assert not torch.allclose(compact(dense, kjt), searched(dense, kjt), atol=1e-4)


def test_block_dim_config_rejects_bad_widths_and_starts():
    with pytest.raises(ConfigError, match="multiples of 4"):
        build_model(parse_model_config(MODELS[0]), LAYOUT,
                    BlockDimConfig(starts={t: [0, 1, n] for t, n in SIZES.items()}, widths=[6, 4]))
    with pytest.raises(ConfigError, match="non-decreasing"):
        build_model(parse_model_config(MODELS[0]), LAYOUT,
                    BlockDimConfig(starts={t: [0, 1, n + 1] for t, n in SIZES.items()}, widths=[8, 4]))


def test_train_step_leaves_alpha_and_dense_unchanged_and_validation_step_leaves_tables_unchanged(tiny_prepared,
                                                                                              tmp_path):
    """Through DMP (world size 1, FBGEMM fused row-wise Adagrad): the search's two alternating steps."""
    from ctr.data.loader import BatchIterator
    from ctr.data.prepare import read_encoded
    from ctr.distributed.env import destroy_process_group, init_process_group
    from ctr.distributed.worker import _cycle, _validation_step, build_training
    from pipelines.stages.train import make_job

    spec, prepared = tiny_prepared
    spec = dataclasses.replace(spec, model=parse_model_config({"name": "deepfm", "embedding_dim": 8,
                                                               "dnn_hidden": [16]}),
                               embedding=DNISConfig(mode="search", alpha_lr=0.05))
    job = dataclasses.replace(make_job(spec, prepared, tmp_path / "w"), freeze_dense=True)
    created = init_process_group(0, 1, None)
    try:
        artifact, model, dmp, optimizer, objective = build_training(job)

        def snapshot():
            state = dmp.state_dict()
            return {k: (v.local_shards()[0].tensor if hasattr(v, "local_shards") else v).detach().clone()
                    for k, v in state.items()}

        frame = read_encoded(prepared.split_paths["train"], artifact.schema)
        batch = next(iter(BatchIterator(frame, 256, shuffle=True, seed=0)))
        before = snapshot()
        loss = objective(dmp(batch.dense, batch.sparse), batch.labels, batch.loss_rows)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        after_train = snapshot()
        tables = [k for k in before if "embedding_bags" in k]
        alpha = next(k for k in before if k.endswith("embedding.alpha"))
        dense = [k for k in before if k not in tables and k != alpha and "numeric" not in k]
        assert tables and dense
        assert all(not torch.equal(before[k], after_train[k]) for k in tables)  # field and first-order rows
        assert torch.equal(before[alpha], after_train[alpha])
        assert all(torch.equal(before[k], after_train[k]) for k in dense)  # frozen network

        valid = read_encoded(prepared.split_paths["valid"], artifact.schema)
        step = _validation_step(dmp, [model.embedding], _cycle(BatchIterator(valid, 256, shuffle=True, seed=1)), 1)
        step()
        after_valid = snapshot()
        assert not torch.equal(after_train[alpha], after_valid[alpha])
        assert float(after_valid[alpha].min()) >= 0 and float(after_valid[alpha].max()) <= 1
        assert all(torch.equal(after_train[k], after_valid[k]) for k in before if k != alpha)
        assert dmp.training
    finally:
        if created:
            destroy_process_group()
