"""Smoke runs over the real sample files in ../shared/data (skipped when that folder is absent)."""

import pytest
from ctrdata_samples import cfg, schema

from ctr.data.prepare import load_split, prepare
from ctr.data.readers import AVAZU_COLUMNS, CRITEO_COLUMNS, DataConfig, read_file, read_source

pytestmark = pytest.mark.data
FRAPPE = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]


def require(path):
    if not path.is_file():
        pytest.skip(f"shared data file not found at {path}")
    return path


def test_frappe_libfm(shared_data_dir):
    path = require(shared_data_dir / "frappe" / "frappe.validation.libfm")
    df, report = read_source(path, cfg(format="libfm", columns=FRAPPE))
    assert df.height == report.rows_read == 57_722 and int(df["label"].sum()) == 19_063
    assert df["user"].cast(int).max() <= 956 and df["city"].cast(int).min() >= 5149


def test_criteo_tsv(shared_data_dir):
    path = require(shared_data_dir / "criteo" / "train_examples.txt")
    df = read_file(path, cfg(format="criteo"), list(CRITEO_COLUMNS), numeric=[f"I{i}" for i in range(1, 14)])
    assert df.height == 10_000 and int(df["label"].sum()) == 2_182
    assert df["I1"].null_count() == 4_481 and df["C22"].null_count() == 8_182 and df["C3"].n_unique() == 5_521


def test_avazu_files_with_and_without_header(shared_data_dir):
    root = shared_data_dir / "avazu"
    sizes = {"train.csv": (8_087, 1_397), "dev.csv": (480, 86), "test.csv": (432, 80)}
    for name, (rows, positives) in sizes.items():
        df = read_file(require(root / name), cfg(format="avazu"), list(AVAZU_COLUMNS) + ["weekday", "is_weekend"])
        assert (df.height, int(df["click"].sum())) == (rows, positives)
        assert set(df["hour"]) == {"00"} and set(df["weekday"]) == {"2"}  # 2014-10-21 00h, a Tuesday


def test_prepare_avazu_given_splits(shared_data_dir, tmp_path):
    root = shared_data_dir / "avazu"
    data = DataConfig.parse({"format": "avazu", "train": str(require(root / "train.csv")),
                             "valid": str(root / "dev.csv"), "test": str(root / "test.csv")})
    fields = [{"name": c} for c in AVAZU_COLUMNS if c not in ("id", "click")] + [{"name": "weekday"}]
    p = prepare(data, schema(fields, label="click", min_count=2), tmp_path / "cache")
    assert p.rows == {"train": 8_087, "valid": 480, "test": 432}
    cols = load_split(p, "test")
    assert len(cols) == 432 and cols.ids.shape == (432, len(fields))
    assert p.artifact.table_sizes()["hour"] == 2  # OOV + "00"
