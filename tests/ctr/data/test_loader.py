import numpy as np
import polars as pl
import pytest
import torch

from ctr.data.loader import MAX_BLOCK_ROWS, BatchIterator, block_starts, rank_rows
from ctr.data.prepare import count_encoded, read_encoded
from ctr.features.schema import Schema
from ctr.features.tensorize import EncodedColumns
from ctr.train.objective import Objective

SCHEMA = Schema.model_validate({"fields": [{"name": "c"}, {"name": "s", "kind": "sequence"},
                                           {"name": "n", "kind": "numeric"}]})


def frame(n: int) -> pl.DataFrame:
    return pl.DataFrame({"c": np.arange(n), "s": [[i] * (i % 3) for i in range(n)],
                         "n": np.arange(n, dtype=np.float32), "_label": np.arange(n, dtype=np.float32)})


def columns(n: int) -> EncodedColumns:
    return EncodedColumns.from_frame(frame(n), SCHEMA)


def rows_of(batches) -> list[list[int]]:
    return [b.labels.int().tolist() for b in batches]


@pytest.mark.parametrize("n", [5, 103, 1000, 70_001])
def test_blocks_and_rank_ranges_partition_the_split(n):
    starts = block_starts(n)
    assert starts[0] == 0 and starts[-1] == n and np.all(np.diff(starts) >= 1)
    assert np.diff(starts).max() <= MAX_BLOCK_ROWS
    for world in (1, 2, 3, 4):
        ranges = [rank_rows(n, r, world) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # contiguous, no overlap
        assert all(lo in set(starts.tolist()) for lo, _ in ranges)  # whole blocks only


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_holding_only_their_rows_make_the_same_global_batches(world):
    n = 1037
    cols = columns(n)
    single = BatchIterator(cols, 100, shuffle=True, seed=3)
    ranks = []
    for r in range(world):
        lo, hi = rank_rows(n, r, world)
        own = EncodedColumns.from_frame(frame(n).slice(lo, hi - lo), SCHEMA)
        ranks.append(BatchIterator(own, 100, shuffle=True, seed=3, rank=r, world_size=world, total_rows=n))
    for epoch in (0, 1):
        for it in [single, *ranks]:
            it.set_epoch(epoch)
        one = list(single)
        parts = [list(r) for r in ranks]
        assert len(one) == len(single) == 11 and all(len(p) == 11 for p in parts)
        for g, batch in enumerate(one):
            shares = [p[g] for p in parts]
            union = sum((s.labels.int().tolist() for s in shares), [])
            assert union == batch.labels.int().tolist()  # the same rows, in the same order
            for r, s in enumerate(shares):  # each rank's share lies inside its own range
                lo, hi = rank_rows(n, r, world)
                assert all(lo <= v < hi for v in s.labels.int().tolist())
                assert s.loss_rows == pytest.approx(batch.size / world)
            assert batch.loss_rows == batch.size


def test_shares_with_loss_rows_average_to_the_global_mean_loss():
    n, world = 997, 3
    cols = columns(n)
    logits = torch.linspace(-2, 2, n)
    labels = (torch.arange(n) % 2).float()
    objective = Objective()
    single = BatchIterator(cols, 128, shuffle=True, seed=5)
    ranks = [BatchIterator(cols, 128, shuffle=True, seed=5, rank=r, world_size=world) for r in range(world)]
    for g, batch in enumerate(single):
        rows = batch.labels.long()
        full = objective(logits[rows], labels[rows])
        shares = [list(r)[g] for r in ranks]
        per_rank = [objective(logits[s.labels.long()], labels[s.labels.long()], s.loss_rows) for s in shares]
        assert torch.stack(per_rank).mean().item() == pytest.approx(full.item(), rel=1e-5)
        assert len({s.size for s in shares}) > 1 or g > 0  # shares are unequal, the weighting still holds


@pytest.mark.parametrize("shuffle", [True, False])
def test_equal_batches_pad_every_share_to_the_step_maximum_with_weight_zero_repeats(shuffle):
    n, world = 1037, 3
    cols = columns(n)
    labels = (torch.arange(n) % 2).float()
    logits = torch.linspace(-2, 2, n)
    objective = Objective()
    plain = [list(BatchIterator(cols, 100, shuffle=shuffle, seed=3, rank=r, world_size=world))
             for r in range(world)]
    padded = [list(BatchIterator(cols, 100, shuffle=shuffle, seed=3, rank=r, world_size=world, equal_batches=True))
              for r in range(world)]
    assert any(len({p[g].size for p in plain}) > 1 for g in range(len(plain[0])))  # shares really are unequal
    for g in range(len(plain[0])):
        sizes = {p[g].size for p in padded}
        assert len(sizes) == 1 and sizes.pop() == max(p[g].size for p in plain)  # equal: the step's largest
        for r in range(world):
            a, b = plain[r][g], padded[r][g]
            real = b.weights is None or int(b.weights.sum()) == a.size
            assert real and b.labels[:a.size].tolist() == a.labels.tolist()  # the real rows first, unchanged
            if b.weights is not None:
                assert b.weights[a.size:].abs().sum() == 0 and b.sparse["c"].values().numel() == b.size
                assert set(b.labels[a.size:].int().tolist()) <= set(a.labels.int().tolist())  # a local row repeated
            rows_a, rows_b = a.labels.long(), b.labels.long()  # the loss is the unpadded share's
            torch.testing.assert_close(objective(logits[rows_b], labels[rows_b], b.loss_rows, b.weights),
                                       objective(logits[rows_a], labels[rows_a], a.loss_rows))
    with pytest.raises(ValueError, match="holds no rows"):
        BatchIterator(columns(2), 1, shuffle=True, seed=0, rank=0, world_size=3, equal_batches=True)


def test_read_encoded_reads_only_the_rank_range(tmp_path):
    n = 200_000
    path = tmp_path / "split.parquet"
    frame(n).write_parquet(path, row_group_size=65_536)
    assert count_encoded(path) == n
    lo, hi = rank_rows(n, 1, 3)
    part = read_encoded(path, SCHEMA, rows=(lo, hi))
    assert len(part) == hi - lo
    assert part.ids[:, 0].tolist() == list(range(lo, hi))
    assert part.seqs["s"][0][-1] == sum(i % 3 for i in range(lo, hi))
    it = BatchIterator(part, 4096, shuffle=True, seed=0, rank=1, world_size=3, total_rows=n)
    seen = np.concatenate([b.sparse["c"].values().numpy() for b in it])
    assert sorted(seen.tolist()) == list(range(lo, hi))
    with pytest.raises(ValueError, match="holds rows"):
        BatchIterator(part, 4096, shuffle=True, seed=0, rank=2, world_size=3, total_rows=n)


@pytest.mark.parametrize("n,batch", [(20, 8), (1037, 100), (5000, 4096), (70_001, 512)])
def test_global_batches_are_near_equal_in_size(n, batch):
    sizes = [b.size for b in BatchIterator(columns(n), batch, shuffle=True, seed=0)]
    assert sum(sizes) == n and len(sizes) == -(-n // batch)
    assert max(sizes) - min(sizes) <= max(2, 0.06 * n / len(sizes))


def test_batches_carry_matching_features():
    cols = columns(20)
    batch = next(iter(BatchIterator(cols, 8, shuffle=True, seed=0)))
    labels = batch.labels.int().numpy()
    assert np.array_equal(batch.dense[:, 0].int().numpy(), labels)
    kjt = batch.sparse.to_dict()
    assert np.array_equal(kjt["c"].values().numpy(), labels)
    assert kjt["s"].lengths().tolist() == [int(i) % 3 for i in labels]


def test_epochs_reshuffle_deterministically_and_cover_all_rows():
    it = BatchIterator(columns(5000), 160, shuffle=True, seed=1)
    e0 = rows_of(it)
    it.set_epoch(1)
    e1 = rows_of(it)
    it.set_epoch(0)
    assert rows_of(it) == e0 and e0 != e1
    assert sorted(sum(e0, [])) == sorted(sum(e1, [])) == list(range(5000))
    first = set(e0[0])
    assert min(first) < 100 and max(first) > 4900  # a batch draws from the whole split, not one region
    it.set_epoch(0, skip=3)
    assert rows_of(it) == e0[3:]
    assert sum(rows_of(BatchIterator(columns(50), 16, shuffle=False, seed=1)), []) == list(range(50))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_order_gathered_in_rank_order_is_file_order(world):
    n = 517
    ranks = [BatchIterator(columns(n), 64, shuffle=False, seed=0, rank=r, world_size=world) for r in range(world)]
    assert len({len(r) for r in ranks}) == 1  # every rank runs the same number of forward passes
    gathered = sum((sum(rows_of(r), []) for r in ranks), [])
    assert gathered == list(range(n))


def test_len_and_bad_rank():
    assert len(BatchIterator(columns(50), 16, False, 0)) == 4
    assert [len(r) for r in rows_of(BatchIterator(columns(50), 16, False, 0))] == [16, 16, 16, 2]
    with pytest.raises(ValueError, match="rank"):
        BatchIterator(columns(5), 2, False, 0, rank=2, world_size=2)
