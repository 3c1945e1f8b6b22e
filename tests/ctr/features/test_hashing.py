"""ctr-hash/1: golden values, vectorised == reference, torch == numpy, salts, and the hash encoding path."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch

from ctr.errors import ArtifactError
from ctr.features.artifact import FeatureArtifact
from ctr.features.hashing import (
    MASK64,
    SPEC,
    chunk_rows,
    chunk_rows_np,
    chunk_salt,
    fmix_int,
    hash_text,
    hash_texts,
)
from ctr.features.row_encoder import RowEncoder
from ctr.features.schema import Schema
from ctr.features.transform import FeatureTransform
from tests.conftest import require_shared

# Pinned outputs of ctr-hash/1. Changing any of them changes every hashed model's ids: bump SPEC instead.
GOLDEN = [("", 0, 0xE220A8397B1DCDAF), ("a", 0, 0x5E025F9ADE9EAF3E), ("68fd1e64", 0, 0xAFD2EA734B8E1A17),
          ("<null>", 0, 0x1E15A619B2DA5047), ("12", 7, 0x07CECA4B73857C78),
          ("héllo wörld ✓", 0, 0x282D7C9B0FB5AF99), ("x" * 17, 3, 0x08E84C4BAAB7399A)]


def _independent_hash(text: str, seed: int) -> int:
    """The spec written out again from its docstring, with struct-free byte arithmetic (a second reading)."""
    data = list(text.encode("utf-8"))
    state = fmix_int((seed + 1) * 0x9E3779B97F4A7C15 + len(data))
    data += [0] * (-len(data) % 8)
    for i in range(0, len(data), 8):
        word = sum(b << (8 * k) for k, b in enumerate(data[i:i + 8]))
        state = fmix_int(((state ^ word) + 0x9E3779B97F4A7C15) & MASK64)
    return state


@pytest.mark.parametrize(("text", "seed", "value"), GOLDEN)
def test_golden_values(text, seed, value):
    assert hash_text(text, seed) == value == _independent_hash(text, seed)
    assert int(hash_texts([text], seed).view(np.uint64)[0]) == value


def test_golden_values_in_a_fresh_process_with_another_hash_seed():
    code = ("import json; from ctr.features.hashing import hash_texts; "
            f"print(json.dumps([int(x) for x in hash_texts({[t for t, _, _ in GOLDEN]!r}, 0).view('uint64')]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    assert json.loads(out.stdout) == [hash_text(t, 0) for t, _, _ in GOLDEN]


def test_vectorised_matches_reference_on_random_unicode():
    rng = random.Random(0)
    alphabet = "ab9 _\0é€中😀"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40))) for _ in range(3000)]
    for seed in (0, 5):
        got = hash_texts(texts, seed).view(np.uint64)
        assert [int(g) for g in got] == [hash_text(t, seed) for t in texts]


def test_chunk_rows_torch_numpy_and_python_agree():
    ids = hash_texts([str(i) for i in range(5000)], 1)
    for salt, rows in [(chunk_salt("C1", 0), 1000), (chunk_salt("C7", 3, 9), 7)]:
        py = [((fmix_int((int(i) & MASK64) ^ (salt & MASK64))) >> 1) % rows for i in ids]
        assert chunk_rows_np(ids, salt, rows).tolist() == py
        assert chunk_rows(torch.from_numpy(ids), salt, rows).tolist() == py


def test_same_value_of_two_features_lands_in_different_rows():
    rows = 10_000
    ids = torch.from_numpy(hash_texts([f"v{i}" for i in range(20_000)]))
    a, b = chunk_rows(ids, chunk_salt("C1", 0), rows), chunk_rows(ids, chunk_salt("C2", 0), rows)
    same = (a == b).float().mean().item()
    assert same < 5 / rows  # independent rows agree with probability 1/rows (0.0001)


def test_chunks_of_one_feature_are_independent():
    rows, n = 1000, 20_000
    ids = torch.from_numpy(hash_texts([f"v{i}" for i in range(n)]))
    c0, c1 = chunk_rows(ids, chunk_salt("C1", 0), rows), chunk_rows(ids, chunk_salt("C1", 1), rows)
    assert (c0 == c1).float().mean().item() < 5 / rows
    # values colliding in chunk 0 are spread over chunk 1 (no correlated collisions)
    pairs = torch.stack([c0, c1], 1).unique(dim=0).shape[0]
    expected_both = n * (n - 1) / 2 / rows ** 2  # expected pairs colliding in both chunks (~0.2)
    assert n - pairs <= max(3, 10 * expected_both)
    # and rows are used uniformly: chi-square of the row counts is near its mean (rows - 1)
    counts = torch.bincount(c0, minlength=rows).double()
    chi2 = (((counts - n / rows) ** 2) / (n / rows)).sum().item()
    assert chi2 < rows * 1.3


SCHEMA = {"encoding": "hash", "hash_min_cardinality": 3, "hash_seed": 11,
          "fields": [{"name": "c"}, {"name": "small"}, {"name": "n", "kind": "numeric"}]}
TRAIN = pl.DataFrame({"c": ["a", "b", "c", None, "a", "d"], "small": ["x", "y", "x", "x", "y", "x"],
                      "n": ["1", "2", "", "3", "4", "5"], "label": [1, 0, 1, 0, 1, 0]})


def test_artifact_keeps_no_values_of_hashed_tables_and_round_trips(tmp_path):
    art = FeatureArtifact.fit(TRAIN, Schema.model_validate(SCHEMA))
    assert art.hashed_tables == ["c"]  # "small" has 2 distinct values < 3: keeps a vocabulary
    assert art.hashing == {"spec": SPEC, "seed": 11, "tables": ["c"], "cardinality": {"c": 5}}
    assert set(art.vocab["table"].to_list()) == {"small"}
    assert art.table_sizes() == {"c": 6, "small": 3}
    loaded = FeatureArtifact.load(art.save(tmp_path / "a"))
    assert loaded.hashing == art.hashing and loaded.content_hash == art.content_hash
    layout = loaded.layout()
    assert layout.hashed_tables == ("c",) and layout.hash_seed == 11


def test_artifact_refuses_another_hash_spec(tmp_path):
    art = FeatureArtifact.fit(TRAIN, Schema.model_validate(SCHEMA))
    art.hashing = {**art.hashing, "spec": "ctr-hash/0"}
    out = art.save(tmp_path / "a")
    with pytest.raises(ArtifactError, match="hash spec 'ctr-hash/0'"):
        FeatureArtifact.load(out)


def test_transform_and_row_encoder_hash_identically_and_accept_unseen_values():
    art = FeatureArtifact.fit(TRAIN, Schema.model_validate(SCHEMA))
    rows = [{"c": "a", "small": "x", "n": 1}, {"c": "never-seen", "small": "q", "n": None},
            {"c": None, "small": "y", "n": 2}, {"c": 12, "small": "x", "n": 3}]
    encoded = FeatureTransform(art).apply(rows)
    expected = [hash_text(t, 11) for t in ("a", "never-seen", "<null>", "12")]
    assert [v & MASK64 for v in encoded["c"].to_list()] == expected
    ids = RowEncoder(art).encode(rows).ids
    assert [int(v) & MASK64 for v in ids[:, 0]] == expected
    assert ids[:, 1].tolist() == encoded["small"].to_list() == [1, 0, 2, 1]


def test_hash_encoding_matches_between_transform_and_row_encoder_on_criteo():
    from ctr.data.readers import read_file
    from pipelines.spec import load_spec

    require_shared("criteo", "train_examples.txt")
    spec = load_spec("pipelines/examples/unified_criteo.yaml", experiment="unified")
    raw = read_file(spec.data.train, spec.data, spec.features.raw_columns)
    art = FeatureArtifact.fit(raw.head(8000), spec.features)
    assert art.hashed_tables and set(art.hashed_tables) < {f"C{i}" for i in range(1, 27)}
    test_rows = raw.tail(500).select([f.column for f in spec.features.fields]).to_dicts()
    a = FeatureTransform(art).apply(test_rows)
    b = RowEncoder(art).encode(test_rows)
    names = [f.name for f in spec.features.sparse_fields]
    np.testing.assert_array_equal(a.select(names).to_numpy(), b.ids)
