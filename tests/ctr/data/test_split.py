import numpy as np
import polars as pl
import pytest
from ctrdata_samples import cfg

from ctr.data.split import split_frames, split_sizes
from ctr.errors import DataError


def frame(n: int) -> pl.DataFrame:
    return pl.DataFrame({"k": np.arange(n), "day": [str(i % 4) for i in range(n)]})


def test_ratio_split_exact_sizes_disjoint_and_deterministic():
    c = cfg(format="csv", split={"ratios": [0.8, 0.1, 0.1], "seed": 5})
    a = split_frames({"train": frame(1000)}, c)
    b = split_frames({"train": frame(1000)}, c)
    assert {s: f.height for s, f in a.items()} == {"train": 800, "valid": 100, "test": 100}
    keys = [set(a[s]["k"]) for s in ("train", "valid", "test")]
    assert set().union(*keys) == set(range(1000)) and sum(map(len, keys)) == 1000
    assert all(a[s].equals(b[s]) for s in a)
    assert a["train"]["k"].is_sorted()  # source order is kept within a split
    other = split_frames({"train": frame(1000)}, cfg(format="csv", split={"seed": 6}))
    assert not other["test"].equals(a["test"])


def test_given_files_are_used_and_missing_ratios_renormalised():
    given_test = frame(7).with_columns(pl.col("k") + 10_000)
    out = split_frames({"train": frame(900), "test": given_test}, cfg(format="csv"))
    assert out["test"].equals(given_test)
    assert (out["train"].height, out["valid"].height) == (800, 100)  # 8:1 of the train rows
    both = split_frames({"train": frame(10), "valid": frame(3), "test": frame(4)}, cfg(format="csv"))
    assert [both[s].height for s in ("train", "valid", "test")] == [10, 3, 4]


def test_split_sizes_sum_to_n():
    for n in (0, 1, 2, 7, 101):
        sizes = split_sizes(n, (0.8, 0.1, 0.1), ["valid", "test"])
        assert sum(sizes.values()) == n and min(sizes.values()) >= 0


def test_column_split():
    c = cfg(format="csv", split={"column": "day", "valid": ["2"], "test": [3]})
    out = split_frames({"train": frame(12)}, c)
    assert set(out["test"]["day"]) == {"3"} and set(out["valid"]["day"]) == {"2"}
    assert set(out["train"]["day"]) == {"0", "1"} and out["train"].height == 6
    only = cfg(format="csv", split={"column": "day", "train": ["0"], "test": ["3"]})
    out = split_frames({"train": frame(12)}, only)
    assert set(out["train"]["day"]) == {"0"} and out["valid"].height == 0


def test_column_split_missing_column():
    with pytest.raises(DataError, match="split.column 'dy'"):
        split_frames({"train": frame(4)}, cfg(format="csv", split={"column": "dy", "test": ["1"]}))
