"""OptEmbed: the long-tailed straight-through estimator, per-sample prefix masks, the evolution's
bookkeeping and operators, and the materialised mixed-width model against the masked supernet."""

import random

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.embeddings import MixedDimConfig, OptEmbedConfig
from ctr.embeddings.optembed import LongTailedStep, dim_choices
from ctr.embeddings.projection import WidthProjection
from ctr.features.layout import FieldLayout
from ctr.features.schema import Schema
from ctr.models import build_model, parse_model_config
from ctr.search.compact import normalise_keep, remap_of
from ctr.search.evolution import crossover, evolve, mutate
from ctr.search.optembed import materialise_state, round_up
from ctr.train.optim import OptimConfig, build_optimizer

SCHEMA = Schema(fields=[{"name": "a"}, {"name": "b"}, {"name": "c", "table": "a"}, {"name": "d"},
                        {"name": "x", "kind": "numeric"}])
SIZES = {"a": 30, "b": 12, "d": 9}
MODELS = [{"name": "fm", "embedding_dim": 16},
          {"name": "deepfm", "embedding_dim": 16, "dnn_hidden": [16]},
          {"name": "autoint_plus", "embedding_dim": 16, "attention_layers": 1, "num_heads": 2, "attention_dim": 8,
           "dnn_hidden": [16]}]


def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = {"a": torch.randint(0, SIZES["a"], (n,), generator=g), "b": torch.randint(0, SIZES["b"], (n,), generator=g),
           "c": torch.randint(0, SIZES["a"], (n,), generator=g), "d": torch.randint(0, SIZES["d"], (n,), generator=g)}
    return torch.randn(n, 1, generator=g), ids


def _kjt(ids: dict) -> KeyedJaggedTensor:
    keys = ["a", "b", "c", "d"]
    n = len(ids["a"])
    return KeyedJaggedTensor.from_lengths_sync(keys, torch.cat([ids[k] for k in keys]),
                                               torch.ones(len(keys) * n, dtype=torch.int64))


def test_long_tailed_straight_through_gradient_matches_its_definition():
    x = torch.tensor([-1.5, -1.0, -0.7, -0.4, -0.1, 0.0, 0.1, 0.25, 0.4, 0.41, 0.99, 1.0, 1.01, 3.0],
                     dtype=torch.float64, requires_grad=True)
    up = torch.linspace(0.5, 2.0, len(x), dtype=torch.float64)
    y = LongTailedStep.apply(x)
    (y * up).sum().backward()
    a = x.detach().abs().numpy()
    expected = np.where(a <= 0.4, 2 - 4 * a, np.where(a <= 1.0, 0.4, 0.0)) * up.numpy()
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=0, atol=1e-12)
    assert y.tolist() == [float(v > 0) for v in x.tolist()]  # unit step forward, H(0) = 0


def test_threshold_gradient_flows_through_the_row_mask():
    cfg = OptEmbedConfig(alpha=0.0, threshold_init=0.1)
    model = build_model(parse_model_config(MODELS[0]), FieldLayout(SCHEMA, SIZES), cfg)
    emb = model.embedding
    emb.eval()  # no dimension mask: out = e · H(‖e‖₁ − θ)
    dense, ids = _batch(8)
    out = emb(dense, _kjt(ids))[:, :4]  # [B, S, D]
    out.sum().backward()
    vec = torch.stack([emb.ebc.embedding_bags[emb.field_tables[n]].weight[ids[n]] for n in emb.sparse_names], 1)
    x = (vec.abs().sum(-1) - 0.1).detach()
    a = x.abs()
    deriv = torch.where(a <= 0.4, 2 - 4 * a, torch.where(a <= 1, torch.full_like(a, 0.4), torch.zeros_like(a)))
    per_slot = -(vec.detach().sum(-1) * deriv)  # d/dθ of Σ_c e_c · H(‖e‖ − θ)
    expected = torch.zeros(len(emb.tables))
    expected.index_add_(0, emb.slot_table, per_slot.sum(0))
    torch.testing.assert_close(emb.thresholds.grad, expected, rtol=1e-5, atol=1e-6)


def test_thresholds_get_their_own_plain_sgd():
    cfg = OptEmbedConfig(threshold_lr=0.125)
    model = build_model(parse_model_config(MODELS[0]), FieldLayout(SCHEMA, SIZES), cfg)
    opt = build_optimizer(model, OptimConfig(dense="adam", lr=1e-3), None)
    groups = [(type(o._optimizer).__name__, g["lr"], g["params"]) for _, o in opt.optimizers for g in o.param_groups]
    own = [(kind, lr) for kind, lr, params in groups if any(p is model.embedding.thresholds for p in params)]
    assert own == [("SGD", 0.125)]
    assert all(not any(p is model.embedding.thresholds for p in params) for kind, _, params in groups if kind != "SGD")


@pytest.mark.parametrize("step", [1, 4])
def test_sampled_prefixes_are_masked_per_sample_and_per_field(step):
    model = build_model(parse_model_config(MODELS[0]), FieldLayout(SCHEMA, SIZES),
                        OptEmbedConfig(dim_step=step, threshold_init=-1.0))  # θ < 0: every row kept
    emb = model.embedding
    with torch.no_grad():
        for t in emb.tables:
            emb.ebc.embedding_bags[t].weight.fill_(1.0)
    emb.train()
    torch.manual_seed(0)
    dense, ids = _batch(256)
    out = emb(dense, _kjt(ids))
    sparse, numeric = out[:, :4], out[:, 4:]
    k = (sparse != 0).sum(-1)  # [B, S]: kept coordinates per sample and field
    cols = torch.arange(16)
    assert torch.equal(sparse != 0, cols < k.unsqueeze(-1))  # a prefix, nothing else
    assert set(k.unique().tolist()) <= set(dim_choices(16, step))
    assert len(k.unique()) == len(dim_choices(16, step))  # every choice drawn in 1024 draws
    assert (k[:, 0] != k[:, 1]).any() and (k[0] != k[1]).any()  # independent across fields and samples
    assert (k != k[:, :1]).any(dim=1).float().mean() > 0.5
    assert torch.all(numeric != 0)  # numeric fields are never masked
    emb.eval()  # evaluation without dims: full width
    assert torch.all(emb(dense, _kjt(ids))[:, :4] != 0)


def test_mutation_and_crossover_produce_valid_candidates_without_aliasing():
    rng = random.Random(0)
    choices = [1, 2, 3, 4, 5, 6, 7, 8]
    parent = (8, 8, 8, 8, 8)
    seen_small = False
    for _ in range(200):
        child = mutate(parent, choices, 0.5, rng)
        assert len(child) == 5 and all(g in choices for g in child)
        seen_small |= 1 in child  # the smallest choice (index 0) is drawn too
    assert seen_small and parent == (8, 8, 8, 8, 8)
    cuts = set()
    a, b = (1,) * 6, (2,) * 6
    for _ in range(200):
        child = crossover(a, b, rng)
        p = child.index(2)
        assert child == a[:p] + b[p:] and 1 <= p <= 5
        cuts.add(p)
    assert cuts == {1, 2, 3, 4, 5}  # the cut is over genes, never a copy of a parent
    assert crossover((3,), (4,), rng) == (3,)


def test_evolution_never_loses_its_best_candidate():
    rng = np.random.default_rng(0)
    seen: dict[tuple, float] = {}

    def fitness(c):
        assert c not in seen  # every candidate is evaluated once
        seen[c] = float(rng.normal())  # noisy, no structure: the best can appear in any generation
        return seen[c]

    records = []
    res = evolve(fitness, num_genes=6, choices=range(1, 17), generations=12, population=10, mutation_num=5,
                 crossover_num=5, top_k=4, mutation_prob=0.3, seed=1, on_generation=records.append)
    top = max(seen, key=seen.get)
    assert res.best == top and res.fitness == seen[top] and res.evaluated == len(seen)
    best = [r["best_fitness"] for r in records]
    assert best == sorted(best) and best[-1] == seen[top]
    assert all(len(c) == 6 and all(1 <= g <= 16 for g in c) for c in seen)


def test_evolution_breaks_ties_by_cost_and_finds_a_separable_optimum():
    res = evolve(lambda c: -sum(abs(g - 5) for g in c), 4, range(1, 9), 25, 16, 8, 8, 6, 0.3, seed=3)
    assert res.best == (5, 5, 5, 5)
    seen = []
    res = evolve(lambda c: seen.append(c) or 1.0, 3, range(1, 9), 3, 10, 4, 4, 4, 0.3, seed=0, cost=sum)
    assert res.fitness == 1.0 and sum(res.best) == min(sum(c) for c in seen) and len(seen) > 10


@pytest.mark.parametrize("model_raw", MODELS, ids=[m["name"] for m in MODELS])
def test_materialised_model_predicts_as_the_masked_supernet(model_raw):
    torch.manual_seed(0)
    model_cfg = parse_model_config(model_raw)
    layout = FieldLayout(SCHEMA, SIZES)
    sup = build_model(model_cfg, layout, OptEmbedConfig(init_std=0.1))
    emb = sup.embedding
    with torch.no_grad():
        for p in sup.parameters():  # random dense weights and tables (not a fresh init)
            p.add_(torch.randn_like(p) * 0.05)
        for i, t in enumerate(emb.tables):
            norms = emb.ebc.embedding_bags[t].weight.abs().sum(1)
            emb.thresholds[i] = norms.median()  # about half the rows pruned
        emb.ebc.embedding_bags["a"].weight[0].mul_(0.01)  # OOV row of "a" pruned
        emb.ebc.embedding_bags["b"].weight[0].mul_(100.0)  # OOV row of "b" kept
    sup.eval()
    raw = emb.keep_lists()
    assert 0 not in raw["a"] and 0 in raw["b"]
    keep = {t: normalise_keep(k, SIZES[t]) for t, k in raw.items()}
    dims = {"a": 5, "b": 16, "d": 3}
    widths = {t: round_up(d) for t, d in dims.items()}
    assert widths == {"a": 8, "b": 16, "d": 4}
    compact = build_model(model_cfg, FieldLayout(SCHEMA, {t: len(k) for t, k in keep.items()}),
                          MixedDimConfig(widths=widths))
    zeroed = {t: 0 not in set(raw[t].tolist()) for t in raw}
    compact.load_state_dict(materialise_state(sup, compact, keep, dims, zeroed))
    compact.eval()
    for cfg in compact.embedding.ebc.embedding_bag_configs():
        assert cfg.embedding_dim % 4 == 0 and cfg.embedding_dim == widths[cfg.name]

    dense, ids = _batch(128, seed=5)
    remaps = {t: torch.as_tensor(remap_of(k, SIZES[t])) for t, k in keep.items()}
    pruned_to_oov = {n: torch.where(remaps[emb.field_tables[n]][v] > 0, v, torch.zeros_like(v)) for n, v in ids.items()}
    compact_ids = {n: remaps[emb.field_tables[n]][v] for n, v in ids.items()}
    emb.dims = dims
    with torch.no_grad():
        want = sup(dense, _kjt(pruned_to_oov))
        got = compact(dense, _kjt(compact_ids))
        assert not torch.allclose(want, sup(dense, _kjt(ids)))  # pruned rows really matter on these inputs
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_width_projection_is_the_zero_padding_identity_and_learns():
    proj = WidthProjection({"a": 4, "b": 12, "c": 16}, 16)
    x = torch.randn(3, 4)
    assert torch.equal(proj("a", x), torch.cat([x, torch.zeros(3, 12)], 1))
    assert "c" not in proj.maps  # equal width: identity, no parameters
    proj("b", torch.randn(3, 12)).sum().backward()
    assert proj.maps["b"].weight.grad is not None
