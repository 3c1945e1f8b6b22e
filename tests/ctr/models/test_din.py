"""DIN: padding never changes the output, Dice statistics, one history vs many candidates, traceability."""

import pytest
import torch
import torchrec
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig
from ctr.features.layout import FieldLayout
from ctr.features.schema import Schema
from ctr.models.din import DIN, DINConfig
from ctr.models.layers.dice import Dice

KEYS = ["user", "item", "genre", "hist_item", "hist_genre"]


def layout(max_len: int = 6) -> FieldLayout:
    schema = Schema(fields=[
        {"name": "user"}, {"name": "item"}, {"name": "genre"},
        {"name": "hist_item", "kind": "sequence", "table": "item", "pooling": "none", "max_len": max_len},
        {"name": "hist_genre", "kind": "sequence", "table": "genre", "pooling": "none", "max_len": max_len}])
    return FieldLayout(schema, {"user": 5, "item": 12, "genre": 4},
                       {"user": [1] * 5, "item": list(range(1, 13)), "genre": [3] * 4})


def din(max_len: int = 6, **kw) -> DIN:
    torch.manual_seed(0)
    emb = PlainEmbedding(layout(max_len), 8, PlainEmbeddingConfig(init_std=0.3))
    return DIN(emb, None, DINConfig(embedding_dim=8, attention_hidden=(8,), dnn_hidden=(8,), **kw)).eval()


def rows_kjt(rows: list[dict]) -> KeyedJaggedTensor:
    """rows: {user, item, genre, hist: [(item, genre), ...]} → KJT in the tensorize layout."""
    values, lengths = [], []
    for key in ("user", "item", "genre"):
        values += [r[key] for r in rows]
        lengths += [1] * len(rows)
    for pos in (0, 1):
        for r in rows:
            values += [h[pos] for h in r["hist"]]
            lengths.append(len(r["hist"]))
    return KeyedJaggedTensor(keys=KEYS, values=torch.tensor(values), lengths=torch.tensor(lengths))


ROW = {"user": 1, "item": 3, "genre": 2, "hist": [(4, 1), (5, 2), (7, 3)]}
OTHERS = [{"user": 2, "item": 9, "genre": 1, "hist": [(i, i % 4) for i in range(1, 7)]},
          {"user": 3, "item": 2, "genre": 3, "hist": []}]


@pytest.mark.parametrize("kw", [{}, {"attention_softmax": True}, {"dnn_activation": "dice"}, {"attention_outer": True}])
def test_padding_never_changes_the_output(kw):
    model = din(**kw)
    with torch.no_grad():
        alone = model(torch.zeros(1, 0), rows_kjt([ROW]))
        batched = model(torch.zeros(3, 0), rows_kjt([ROW, *OTHERS]))
        longer = din(max_len=20, **kw)(torch.zeros(1, 0), rows_kjt([ROW]))  # more padded positions
    torch.testing.assert_close(batched[0], alone[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(longer, alone, rtol=0, atol=1e-6)


def test_padding_and_absent_rows_get_no_gradient():
    model = din().train()
    model(torch.zeros(3, 0), rows_kjt([ROW, *OTHERS])).sum().backward()
    grad = model.embedding.ec.embeddings["item"].weight.grad
    used = {1, 2, 3, 4, 5, 6, 7, 9}  # candidates 3, 9, 2 and history items 4, 5, 7, 1..6
    assert all(grad[j].abs().sum() == 0 for j in range(12) if j not in used)
    assert grad[0].abs().sum() == 0  # id 0 (OOV) is not padding: never touched here


def test_history_order_matters_and_weights_are_not_normalised():
    model = din()
    short = {**ROW, "hist": ROW["hist"][:1]}
    doubled = {**ROW, "hist": ROW["hist"][:1] * 2}
    with torch.no_grad():
        q = model.embedding.forward_sequences(torch.zeros(2, 0), rows_kjt([short, doubled]))
        keys = q.history.permute(0, 2, 1, 3).flatten(2)
        pooled = model.attention(q.fields[:, model.cand_idx].flatten(1), keys, q.mask)
    torch.testing.assert_close(pooled[1], 2 * pooled[0])  # no softmax: a repeated event counts twice


def test_dice_uses_batch_statistics_in_train_and_running_statistics_in_eval():
    torch.manual_seed(0)
    dice = Dice(3)
    with torch.no_grad():
        dice.alpha.fill_(0.5)
    x = torch.randn(64, 3) * 4 + 10
    out = dice(x)  # train: standardised by this batch's mean / variance
    p = torch.sigmoid((x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-8))
    torch.testing.assert_close(out, p * x + (1 - p) * 0.5 * x)
    running_mean, running_var = dice.norm.running_mean.clone(), dice.norm.running_var.clone()
    torch.testing.assert_close(running_mean, 0.1 * x.mean(0))
    dice.eval()
    y = torch.randn(5, 3)
    p = torch.sigmoid((y - running_mean) / torch.sqrt(running_var + 1e-8))
    torch.testing.assert_close(dice(y), p * y + (1 - p) * 0.5 * y)
    torch.testing.assert_close(dice(y[:1]), dice(y)[:1])  # eval: independent of the batch


def test_one_history_many_candidates_equals_pairwise_scoring():
    model = din(dnn_activation="dice")
    with torch.no_grad():  # give Dice non-trivial running statistics first
        model.train()
        model(torch.zeros(3, 0), rows_kjt([ROW, *OTHERS]))
        model.eval()
    cands = [(3, 2), (8, 1), (11, 0), (1, 3)]
    pairs = [{**ROW, "item": i, "genre": g} for i, g in cands]
    with torch.no_grad():
        pairwise = model(torch.zeros(len(pairs), 0), rows_kjt(pairs))
        many = model.score_candidates(torch.zeros(1, 0), rows_kjt([ROW]), torch.zeros(len(pairs), 0),
                                      rows_kjt([{**p, "hist": []} for p in pairs]))
    torch.testing.assert_close(many, pairwise, rtol=0, atol=1e-6)


def test_din_refuses_an_embedding_without_history():
    emb = PlainEmbedding(FieldLayout(Schema(fields=[{"name": "u"}]), {"u": 3}), 8, PlainEmbeddingConfig())
    with pytest.raises(ValueError, match="pooling: none"):
        DIN(emb, None, DINConfig(embedding_dim=8))


def test_din_fx_traces_and_matches_eager():
    model = din()
    traced = torchrec.fx.symbolic_trace(model)
    kjt = rows_kjt([ROW, *OTHERS])
    with torch.no_grad():
        torch.testing.assert_close(traced(torch.zeros(3, 0), kjt), model(torch.zeros(3, 0), kjt))


def test_din_builds_from_the_registry_with_meta_tables():
    from ctr.models import build_model, parse_model_config

    model = build_model(parse_model_config({"name": "din", "embedding_dim": 8}), layout(),
                        PlainEmbeddingConfig(mba_l2=0.1), device=torch.device("meta"))
    for n, p in model.named_parameters():
        assert p.device.type == ("meta" if "embedding_bags" in n or ".ec.embeddings." in n else "cpu"), n
    assert {c.name for c in model.embedding.ec.embedding_configs()} == {"item", "genre"}  # shared with candidates
    assert model.embedding.ec.embedding_configs()[0].feature_names == ["item", "hist_item"]


def test_outer_product_option_widens_the_attention_input():
    e = 2 * 8  # item ⊕ genre
    assert din().attention.score[0].in_features == 4 * e
    assert din(attention_outer=True).attention.score[0].in_features == 4 * e + e * e
