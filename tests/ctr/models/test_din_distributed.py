"""DIN through DMP: MBA moves exactly the batch's rows under the FBGEMM fused optimizer; bundle one-history path.

The 2-rank run with the shared history/candidate table is tests/ctr/distributed/test_din_world_size.py.
"""

import numpy as np
import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.distributed.env import destroy_process_group, init_process_group
from ctr.distributed.sharding import ShardingConfig, shard_model
from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig
from ctr.features.layout import FieldLayout
from ctr.features.schema import Schema
from ctr.models.din import DIN, DINConfig
from ctr.train.objective import Objective, collect_regularizers
from ctr.train.optim import OptimConfig, attach_fused_optimizer, build_optimizer

KEYS = ["user", "item", "hist_item"]
ITEM_COUNTS = [1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]


def _layout() -> FieldLayout:
    schema = Schema(fields=[{"name": "user"}, {"name": "item"},
                            {"name": "hist_item", "kind": "sequence", "table": "item", "pooling": "none",
                             "max_len": 4}])
    return FieldLayout(schema, {"user": 5, "item": 12}, {"user": [1, 2, 3, 4, 5], "item": ITEM_COUNTS})


def _sharded(mba: float, lr: float):
    torch.manual_seed(0)
    emb = PlainEmbedding(_layout(), 8, PlainEmbeddingConfig(init_std=0.3, mba_l2=mba), device=torch.device("meta"))
    model = DIN(emb, None, DINConfig(embedding_dim=8, attention_hidden=(8,), dnn_hidden=(8,)))
    cfg = OptimConfig(dense="sgd", lr=0.0, sparse="sgd", sparse_lr=lr)
    attach_fused_optimizer(model, cfg)
    dmp = shard_model(model, ShardingConfig(), True, torch.device("cpu"), seed=5)
    return dmp, build_optimizer(dmp, cfg, dmp.fused_optimizer), Objective(collect_regularizers(model))


def _table(dmp, name: str) -> torch.Tensor:
    key = next(k for k in dmp.state_dict() if k.endswith(f".{name}.weight"))
    value = dmp.state_dict()[key]
    if not isinstance(value, ShardedTensor):
        return value.detach().clone()
    full = torch.zeros(value.size())
    for shard in value.local_shards():
        (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
        full[r0:r0 + nr, c0:c0 + nc] = shard.tensor
    return full


def test_mba_changes_only_batch_rows_by_lr_lambda_w_over_n_through_fused_sgd():
    created = init_process_group()
    try:
        lam, lr = 0.8, 0.5
        kjt = KeyedJaggedTensor(keys=KEYS, values=torch.tensor([1, 3, 2, 2, 5, 2, 0]),
                                lengths=torch.tensor([1, 1, 1, 1, 3, 0]))  # items 2, 2 + history 5, 2, 0
        runs = {}
        for mba in (0.0, lam):
            dmp, opt, objective = _sharded(mba, lr)
            before = {t: _table(dmp, t) for t in ("item", "user")}
            dmp.train()
            loss = objective(dmp(torch.zeros(2, 0), kjt), torch.tensor([1.0, 0.0]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            runs[mba] = before, {t: _table(dmp, t) for t in ("item", "user")}
        (w0, plain), (w0_mba, reg) = runs[0.0], runs[lam]
        torch.testing.assert_close(w0["item"], w0_mba["item"], rtol=0, atol=0)
        counts = torch.tensor(ITEM_COUNTS, dtype=torch.float32)
        expected = -lr * lam * w0["item"] / counts.unsqueeze(1)
        present = [0, 2, 5]
        absent = [j for j in range(12) if j not in present]
        torch.testing.assert_close(reg["item"][present] - plain["item"][present], expected[present],
                                   rtol=1e-4, atol=1e-6)
        assert torch.equal(reg["item"][absent], w0["item"][absent])  # untouched rows stay bit-identical
        assert torch.equal(plain["item"][absent], w0["item"][absent])
        ucounts = torch.tensor([1.0, 2, 3, 4, 5])
        torch.testing.assert_close(reg["user"][[1, 3]] - plain["user"][[1, 3]],
                                   -lr * lam * w0["user"][[1, 3]] / ucounts[[1, 3]].unsqueeze(1), rtol=1e-4, atol=1e-6)
        assert torch.equal(reg["user"][[0, 2, 4]], w0["user"][[0, 2, 4]])
    finally:
        if created:
            destroy_process_group()


def test_bundle_scores_one_history_against_many_candidates(din_prepared, tmp_path):
    from ctr.export.bundle import load_bundle, save_bundle
    from ctr.models import build_model

    spec, prepared = din_prepared
    torch.manual_seed(1)
    model = build_model(spec.model, prepared.artifact.layout(), spec.embedding).eval()
    row = {"user": "u3", "item": "i1", "genre": "g1", "hist_item": ["i4", "i7", "i9"], "hist_genre": ["g0", "g3", "g1"]}
    save_bundle(model, spec.model, spec.embedding, prepared.artifact, tmp_path / "b", [row])
    bundle = load_bundle(tmp_path / "b")
    cands = [{"item": f"i{i}", "genre": f"g{i % 4}"} for i in (1, 2, 5, 33, 38)]
    many = bundle.score_candidates(row, cands)
    pairwise = bundle.score([{**row, **c} for c in cands])
    assert many.shape == (5,) and np.ptp(pairwise) > 0
    np.testing.assert_allclose(many, pairwise, rtol=0, atol=1e-6)
