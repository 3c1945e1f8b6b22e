import numpy as np
import polars as pl
import pytest

from ctr.data.loader import BatchIterator
from ctr.features.schema import Schema
from ctr.features.tensorize import EncodedColumns

SCHEMA = Schema.model_validate({"fields": [{"name": "c"}, {"name": "s", "kind": "sequence"},
                                           {"name": "n", "kind": "numeric"}]})


def columns(n: int) -> EncodedColumns:
    frame = pl.DataFrame({"c": np.arange(n), "s": [[i] * (i % 3) for i in range(n)],
                          "n": np.arange(n, dtype=np.float32), "_label": np.arange(n, dtype=np.float32)})
    return EncodedColumns.from_frame(frame, SCHEMA)


def rows_of(batches) -> list[list[int]]:
    return [b.labels.int().tolist() for b in batches]


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_ranks_cover_exactly_the_global_batches(shuffle):
    cols = columns(103)
    single = BatchIterator(cols, 10, shuffle=shuffle, seed=3)
    ranks = [BatchIterator(cols, 10, shuffle=shuffle, seed=3, rank=r, world_size=2) for r in range(2)]
    for epoch in (0, 1):
        for it in [single, *ranks]:
            it.set_epoch(epoch)
        one = rows_of(single)
        two = [rows_of(r) for r in ranks]
        assert len(one) == len(two[0]) == len(two[1]) == len(single) == 11
        for g, (a, b) in enumerate(zip(*two, strict=True)):
            assert a + b == one[g]  # rank 0 takes the first half of each global batch, rank 1 the rest
            assert abs(len(a) - len(b)) <= 1


def test_batches_carry_matching_features():
    cols = columns(20)
    batch = next(iter(BatchIterator(cols, 8, shuffle=True, seed=0)))
    labels = batch.labels.int().numpy()
    assert np.array_equal(batch.dense[:, 0].int().numpy(), labels)
    kjt = batch.sparse.to_dict()
    assert np.array_equal(kjt["c"].values().numpy(), labels)
    assert kjt["s"].lengths().tolist() == [int(i) % 3 for i in labels]


def test_epochs_reshuffle_deterministically_and_cover_all_rows():
    it = BatchIterator(columns(50), 16, shuffle=True, seed=1)
    e0 = sum(rows_of(it), [])
    it.set_epoch(1)
    e1 = sum(rows_of(it), [])
    it.set_epoch(0)
    assert sum(rows_of(it), []) == e0 and e0 != e1
    assert sorted(e0) == sorted(e1) == list(range(50))
    assert sum(rows_of(BatchIterator(columns(50), 16, shuffle=False, seed=1)), []) == list(range(50))


def test_drop_last_and_len():
    assert len(BatchIterator(columns(50), 16, False, 0)) == 4
    it = BatchIterator(columns(50), 16, False, 0, drop_last=True)
    assert len(it) == 3 and [len(r) for r in rows_of(it)] == [16, 16, 16]
    with pytest.raises(ValueError, match="rank"):
        BatchIterator(columns(5), 2, False, 0, rank=2, world_size=2)
