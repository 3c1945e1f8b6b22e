"""Batches/s of shuffled sequence batches (``EncodedColumns.batch``) with long behaviour histories.

    .venv/bin/python benchmarks/sequence_batches.py --rows 100000 --max-len 200 --batch 1024

Histories have uniform random lengths in [0, max_len]; two aligned sequence fields (item, genre)
plus two categorical fields, as the DIN MovieLens pipelines build them.
"""

import argparse
import time

import numpy as np
import polars as pl

from ctr.features.schema import Schema
from ctr.features.tensorize import EncodedColumns


def build(rows: int, max_len: int, seed: int = 0) -> EncodedColumns:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_len + 1, rows)
    values = rng.integers(1, 10_000, int(lengths.sum()))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    lists = [values[offsets[i]:offsets[i + 1]].tolist() for i in range(rows)]
    df = pl.DataFrame({"user": rng.integers(0, 1000, rows), "item": rng.integers(0, 10_000, rows),
                       "hist_item": lists, "hist_genre": lists, "_label": rng.random(rows).astype(np.float32)})
    schema = Schema(fields=[{"name": "user"}, {"name": "item"},
                            {"name": "hist_item", "kind": "sequence", "table": "item", "max_len": max_len},
                            {"name": "hist_genre", "kind": "sequence", "max_len": max_len}])
    return EncodedColumns.from_frame(df, schema)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--max-len", type=int, default=200)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--batches", type=int, default=50)
    a = p.parse_args()
    cols = build(a.rows, a.max_len)
    perm = np.random.default_rng(1).permutation(a.rows)
    start = time.perf_counter()
    for i in range(a.batches):
        cols.batch(perm[i * a.batch:(i + 1) * a.batch])
    secs = time.perf_counter() - start
    print(f"{a.batches / secs:.1f} batches/s ({a.batch} rows, histories up to {a.max_len})")


if __name__ == "__main__":
    main()
