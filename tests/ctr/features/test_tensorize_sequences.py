"""Vectorised ragged gather equals the per-row definition; unpooled histories must stay aligned."""

import numpy as np
import polars as pl
import pytest

from ctr.errors import DataError
from ctr.features.schema import Schema
from ctr.features.tensorize import EncodedColumns, _take_ragged


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_gather_equals_per_row_gather(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 6, 200) * (rng.random(200) > 0.2)  # some empty rows
    offsets = np.r_[0, np.cumsum(lengths)]
    values = rng.integers(0, 1000, int(offsets[-1]))
    for rows in (rng.permutation(200)[:77], np.array([5, 5, 3]), np.array([], dtype=np.int64),
                 slice(10, 60, 3), slice(20, 40)):
        idx = np.arange(200)[rows]
        want_v = [v for r in idx for v in values[offsets[r]:offsets[r + 1]]]
        got_v, got_l = _take_ragged(offsets, values, rows, 200)
        assert got_v.tolist() == want_v
        assert got_l.tolist() == lengths[idx].tolist()


def test_ragged_side_features_in_a_history_are_refused():
    schema = Schema(fields=[{"name": "item"},
                            {"name": "hist_item", "kind": "sequence", "table": "item", "pooling": "none"},
                            {"name": "hist_genre", "kind": "sequence", "pooling": "none"}])
    ok = pl.DataFrame({"item": [1, 2], "hist_item": [[1, 2], []], "hist_genre": [[3, 4], []], "_line": [7, 8]})
    assert len(EncodedColumns.from_frame(ok, schema)) == 2
    bad = ok.with_columns(pl.Series("hist_genre", [[3, 4], [5]]))
    with pytest.raises(DataError, match="ragged") as err:
        EncodedColumns.from_frame(bad, schema)
    assert err.value.line == 8 and err.value.column == "hist_genre"
