import logging

import polars as pl
import pyarrow.parquet as pq
import pytest
from ctrdata_samples import schema

import ctr.data.prepare as prep
from ctr.data.prepare import load_split, prepare
from ctr.data.readers import DataConfig
from ctr.errors import DataError

SCHEMA = schema([{"name": "user"}, {"name": "item"}, {"name": "price", "kind": "numeric"}],
                label="y", group="user")


def write_csv(path, rows):
    path.write_text("y,user,item,price\n" + "".join(f"{r}\n" for r in rows))
    return path


@pytest.fixture
def files(tmp_path):
    train = write_csv(tmp_path / "train.csv", [f"{i % 2},u{i % 5},i{i % 7},{i}" for i in range(40)]
                      + ["1,u1,i1,notanumber"])
    test = write_csv(tmp_path / "test.csv", ["1,u1,only_in_test,3", "0,u_new,i1,"])
    return train, test


def config(train, test, **kw) -> DataConfig:
    return DataConfig.parse({"format": "csv", "train": str(train), "test": str(test), "on_bad_row": "skip",
                             "split": {"ratios": [0.8, 0.2, 0.1], "seed": 3}, **kw})


def read_all(prepared, split) -> pl.DataFrame:
    return pl.read_parquet(prepared.split_paths[split] / "*.parquet")


def test_prepare_splits_fits_on_train_and_encodes(files, tmp_path):
    train, test = files
    p = prepare(config(train, test), SCHEMA, tmp_path / "cache")
    assert not p.cache_hit and p.rows == {"train": 32, "valid": 8, "test": 2}  # 40 rows, 8:2 of train
    assert p.skipped == {str(train): 1, str(test): 0}
    assert (p.split_paths["train"] / "part-00000.parquet").is_file() and p.artifact_dir.is_dir()
    enc_test = read_all(p, "test")
    assert enc_test["item"].to_list()[0] == 0 and enc_test["user"].to_list()[1] == 0  # unseen → OOV
    assert enc_test["_label"].to_list() == [1.0, 0.0] and enc_test["price"].to_list() == [3.0, 0.0]
    # the vocabulary only counts train rows: its counts add up to the train split's size
    counts = p.artifact.table_counts()
    assert sum(counts["user"]) == sum(counts["item"]) == 32
    cols = load_split(p, "valid")
    assert len(cols) == 8 and cols.groups is not None


def test_second_run_is_a_cache_hit_with_the_same_data(files, tmp_path, caplog):
    train, test = files
    first = prepare(config(train, test), SCHEMA, tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="ctr.data"):
        second = prepare(config(train, test), SCHEMA, tmp_path / "cache")
    assert second.cache_hit and second.root == first.root
    assert any("reusing prepared data at" in r.getMessage() for r in caplog.records)
    assert second.artifact.content_hash == first.artifact.content_hash and second.skipped == first.skipped
    for split in ("train", "valid", "test"):
        assert read_all(second, split).equals(read_all(first, split))
    other = prepare(config(train, test, split={"ratios": [0.8, 0.2, 0.1], "seed": 4}), SCHEMA, tmp_path / "cache")
    assert not other.cache_hit and other.root != first.root
    write_csv(test, ["1,u1,i1,3"])  # a changed input file is a new key
    assert not prepare(config(train, test), SCHEMA, tmp_path / "cache").cache_hit


def test_splits_are_written_in_row_groups(files, tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "ROW_GROUP_ROWS", 10)
    train, test = files
    p = prepare(config(train, test), SCHEMA, tmp_path / "cache")
    assert sorted(f.name for f in p.split_paths["train"].iterdir()) == ["part-00000.parquet"]
    meta = pq.ParquetFile(p.split_paths["train"] / "part-00000.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [10, 10, 10, 2]
    assert len(load_split(p, "train")) == 32


def test_broken_cache_is_rebuilt(files, tmp_path):
    train, test = files
    p = prepare(config(train, test), SCHEMA, tmp_path / "cache")
    (p.artifact_dir / "vocab.parquet").write_bytes(b"junk")
    again = prepare(config(train, test), SCHEMA, tmp_path / "cache")
    assert not again.cache_hit and again.artifact.content_hash == p.artifact.content_hash


def test_errors_surface_as_data_errors(files, tmp_path):
    train, test = files
    with pytest.raises(DataError, match="train.csv line 42 column 'price'"):
        prepare(config(train, test, on_bad_row="error"), SCHEMA, tmp_path / "cache")
    with pytest.raises(DataError, match="file not found"):
        prepare(config(train, tmp_path / "nope.csv"), SCHEMA, tmp_path / "cache")
