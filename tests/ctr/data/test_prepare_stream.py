"""Streaming prepare writes exactly what the in-memory path (read all → split_frames → fit → apply) gives."""

import polars as pl
import pytest
from ctrdata_samples import schema

from ctr.data.prepare import prepare
from ctr.data.readers import SPLITS, DataConfig, read_files
from ctr.data.split import split_frames
from ctr.features.artifact import FeatureArtifact
from ctr.features.transform import FeatureTransform
from pipelines.spec import load_spec
from tests.conftest import REPO, require_shared


def in_memory(data_cfg: DataConfig, sch) -> tuple[FeatureArtifact, dict[str, pl.DataFrame]]:
    """The pre-streaming prepare: every split in memory."""
    wanted = sch.raw_columns + ([data_cfg.split.column] if data_cfg.split.column else [])
    numeric = {f.column for f in sch.numeric_fields}
    frames = {s: read_files(data_cfg.files(s), data_cfg, wanted, label=sch.label, numeric=numeric)[0]
              for s in SPLITS if data_cfg.files(s) is not None}
    splits = split_frames(frames, data_cfg)
    artifact = FeatureArtifact.fit(splits["train"], sch)
    transform = FeatureTransform(artifact)
    return artifact, {s: transform.apply(f) for s, f in splits.items()}


def assert_same(data_cfg: DataConfig, sch, cache) -> None:
    prepared = prepare(data_cfg, sch, cache)
    artifact, expected = in_memory(data_cfg, sch)
    assert prepared.artifact.vocab.equals(artifact.vocab)
    for name, stats in artifact.numeric.items():
        assert prepared.artifact.numeric[name] == pytest.approx(stats, rel=1e-12, abs=1e-12)
    for split in SPLITS:
        got = pl.read_parquet(prepared.split_paths[split] / "*.parquet")
        assert got.equals(expected[split]), split
        assert prepared.rows[split] == expected[split].height


def write_csv(path, n, bad_every=0):
    rows = ["y,user,item,price,day"]
    for i in range(n):
        price = "oops" if bad_every and i % bad_every == 5 else ("" if i % 11 == 0 else str(i % 17))
        rows.append(f"{(i * 7) % 3 % 2},u{(i * 13) % 23},i{(i * 5) % 31},{price},{i % 6}")
    path.write_text("\n".join(rows) + "\n")
    return path


SCHEMA = schema([{"name": "user"}, {"name": "item", "min_count": 2},
                 {"name": "price", "kind": "numeric", "transform": "standardize"}], label="y", group="user")


def test_ratio_split_with_skipped_rows_matches_in_memory(tmp_path):
    a, b = write_csv(tmp_path / "a.csv", 700, bad_every=97), write_csv(tmp_path / "b.csv", 333)
    cfg = DataConfig.parse({"format": "csv", "train": [str(a), str(b)], "on_bad_row": "skip",
                            "split": {"ratios": [0.7, 0.2, 0.1], "seed": 11}})
    assert_same(cfg, SCHEMA, tmp_path / "cache")


def test_column_split_and_given_test_file_match_in_memory(tmp_path):
    train, test = write_csv(tmp_path / "train.csv", 500), write_csv(tmp_path / "test.csv", 60)
    by_day = DataConfig.parse({"format": "csv", "train": str(train),
                               "split": {"column": "day", "valid": ["4"], "test": ["5"], "train": ["0", "1", "2"]}})
    assert_same(by_day, SCHEMA, tmp_path / "cache")  # day 3 matches no split: dropped
    given = DataConfig.parse({"format": "csv", "train": str(train), "test": str(test), "split": {"seed": 2}})
    assert_same(given, SCHEMA, tmp_path / "cache")


def test_parquet_source_matches_in_memory(tmp_path):
    path = tmp_path / "rows.parquet"
    pl.read_csv(write_csv(tmp_path / "a.csv", 900), infer_schema=False).with_columns(
        pl.col("y").cast(pl.Int8)).write_parquet(path)
    cfg = DataConfig.parse({"format": "parquet", "train": str(path)})
    assert_same(cfg, SCHEMA, tmp_path / "cache")


def test_criteo_sample_matches_in_memory(tmp_path):
    require_shared("criteo", "train_examples.txt")
    spec = load_spec(REPO / "pipelines/examples/criteo_sample.yaml", [])
    assert_same(spec.data, spec.features, tmp_path / "cache")


def test_hash_encoded_field_matches_in_memory(tmp_path):
    """A hash-encoded table has no vocabulary: streaming prepare must emit its 64-bit hash ids, not OOV."""
    hashed = schema([{"name": "user", "encoding": "hash"}, {"name": "item", "min_count": 2},
                     {"name": "price", "kind": "numeric", "transform": "standardize"}], label="y", group="user")
    cfg = DataConfig.parse({"format": "csv", "train": str(write_csv(tmp_path / "a.csv", 400)),
                            "split": {"ratios": [0.8, 0.1, 0.1], "seed": 3}})
    assert_same(cfg, hashed, tmp_path / "cache")
    train = pl.read_parquet(prepare(cfg, hashed, tmp_path / "cache").split_paths["train"] / "*.parquet")
    assert train["user"].n_unique() == 23 and (train["user"] != 0).all()
