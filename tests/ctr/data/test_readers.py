import gzip
import logging

import polars as pl
import pytest
from ctrdata_samples import AVAZU_HEADER, AVAZU_ROWS, CRITEO_ROWS, LIBFM_ROWS, cfg

from ctr.data.readers import CRITEO_COLUMNS, DataConfig, read_file, read_source
from ctr.errors import ConfigError, DataError

NUMERIC = [f"I{i}" for i in range(1, 14)]


# ---- valid files ---------------------------------------------------------------------------------

def test_criteo_tsv_with_empty_fields(write):
    path = write("train.txt", "\n".join(CRITEO_ROWS) + "\n")
    df = read_file(path, cfg(format="criteo"), list(CRITEO_COLUMNS), numeric=NUMERIC)
    assert df.columns == list(CRITEO_COLUMNS) + ["_line"]
    assert df["label"].dtype == pl.Float32 and df["label"].to_list() == [0.0, 1.0, 0.0]
    assert all(df[c].dtype == pl.String for c in CRITEO_COLUMNS[1:])
    assert df["I12"].to_list() == [None, None, None]  # empty fields are null
    assert df["I2"].to_list() == ["1", "0", "-1"] and df["C1"].to_list()[2] == "05db9164"
    assert df["C2"][2] is None and df["_line"].to_list() == [1, 2, 3]


def test_avazu_with_and_without_header(write):
    with_header = write("train.csv", AVAZU_HEADER + "\n" + "\n".join(AVAZU_ROWS) + "\n")
    without = write("dev.csv", "\n".join(AVAZU_ROWS) + "\n")
    wanted = ["hour", "weekday", "is_weekend", "site_id", "C21"]
    a = read_file(with_header, cfg(format="avazu"), wanted)
    b = read_file(without, cfg(format="avazu"), wanted)
    assert a.drop("_line").equals(b.drop("_line"))
    assert a["_line"].to_list() == [2, 3] and b["_line"].to_list() == [1, 2]
    assert a["click"].to_list() == [0.0, 1.0]
    # 2014-10-21 is a Tuesday (2), 2014-10-25 a Saturday (6)
    assert a.select("hour", "weekday", "is_weekend").rows() == [("00", "2", "0"), ("13", "6", "1")]


def test_avazu_without_time_features_keeps_raw_hour(write):
    path = write("dev.csv", "\n".join(AVAZU_ROWS) + "\n")
    df = read_file(path, cfg(format="avazu", avazu_time_features=False), ["hour", "id"])
    assert df["hour"].to_list() == ["14102100", "14102513"] and df["id"][0] == "10000169349117863715"
    with pytest.raises(DataError, match="weekday"):
        read_file(path, cfg(format="avazu", avazu_time_features=False), ["weekday"])


def test_libfm_crlf_and_minus_one_labels(write):
    path = write("f.libfm", "\r\n".join(LIBFM_ROWS) + "\r\n")
    df = read_file(path, cfg(format="libfm", columns=["user", "item", "daytime"]))
    assert df.columns == ["label", "user", "item", "daytime", "_line"]
    assert df["label"].to_list() == [1.0, 0.0, 0.0]
    assert df["user"].to_list() == ["266", "138", "266"] and df["daytime"][0] == "5042"  # no trailing \r


def test_libfm_default_names_and_float_labels(write):
    path = write("f.libfm", "1.0 3:1 7:0.5 \n0 4:1  8:1\n")
    df = read_file(path, cfg(format="libfm"))
    assert df.columns == ["label", "f0", "f1", "_line"]
    assert df.rows() == [(1.0, "3", "7", 1), (0.0, "4", "8", 2)]


def test_csv_with_header_and_without(write):
    a = write("a.csv", "y,user,price\n1,u1,3.5\n0,u2,\n")
    b = write("b.csv", "1;u1;3.5\n0;u2;\n")
    da = read_file(a, cfg(format="csv"), ["user", "price", "y"], label="y", numeric=["price"])
    db = read_file(b, cfg(format="csv", separator=";", has_header=False, columns=["y", "user", "price"]),
                   ["user", "price", "y"], label="y", numeric=["price"])
    assert da.drop("_line").equals(db.drop("_line"))
    assert da.rows() == [("u1", "3.5", 1.0, 2), ("u2", None, 0.0, 3)]


def test_parquet_columns_become_strings(tmp_path):
    path = tmp_path / "d.parquet"
    pl.DataFrame({"label": [1, 0, -1], "c": [10, 20, None], "n": [1.5, None, 2.0],
                  "s": [["a", "b"], [], None]}).write_parquet(path)
    df, report = read_source(path, cfg(format="parquet"), ["c", "n", "s"], label="label", numeric=["n"])
    assert df.schema["c"] == pl.String and df.schema["s"] == pl.List(pl.String)
    assert df.rows() == [("10", "1.5", ["a", "b"], 1.0, 1), ("20", None, [], 0.0, 2), (None, "2.0", None, 0.0, 3)]
    assert report.rows_read == 3 and report.rows_skipped == 0


def test_gz_text_is_read(tmp_path):
    path = tmp_path / "train.txt.gz"
    path.write_bytes(gzip.compress(("\n".join(CRITEO_ROWS) + "\n").encode()))
    df = read_file(path, cfg(format="criteo"), ["C1", "I1"], numeric=["I1"])
    assert df.height == 3 and df["I1"].to_list() == ["1", "2", None]


def test_blank_lines_are_ignored_but_line_numbers_kept(write):
    path = write("f.libfm", "1 1:1\n\n0 2:1\n")
    assert read_file(path, cfg(format="libfm"))["_line"].to_list() == [1, 3]


# ---- malformed input -----------------------------------------------------------------------------

def test_wrong_field_count_names_file_and_line(write):
    rows = CRITEO_ROWS[:2] + [CRITEO_ROWS[2].rsplit("\t", 1)[0]]  # 39 fields on line 3
    path = write("bad.txt", "\n".join(rows) + "\n")
    with pytest.raises(DataError) as info:
        read_file(path, cfg(format="criteo"), ["C1"])
    err = info.value
    assert err.line == 3 and err.file == str(path)
    assert "bad.txt line 3" in str(err) and "found 39" in str(err) and "on_bad_row" in str(err)


def test_text_in_numeric_column(write):
    path = write("a.csv", "y,price\n1,3\n0,abc\n")
    with pytest.raises(DataError, match="line 3 column 'price': expected a number, got 'abc'"):
        read_file(path, cfg(format="csv"), ["price"], label="y", numeric=["price"])
    # the same text is fine in a column not declared numeric
    assert read_file(path, cfg(format="csv"), ["price"], label="y")["price"].to_list() == ["3", "abc"]


def test_bad_label(write):
    path = write("a.csv", "y,c\n1,a\n2,b\nyes,c\n")
    with pytest.raises(DataError, match="line 3 column 'y': label '2' is not 0, 1 or -1"):
        read_file(path, cfg(format="csv"), ["c"], label="y")


def test_libfm_token_without_colon(write):
    path = write("f.libfm", "1 1:1 2:1\r\n0 3:1 4\r\n")
    with pytest.raises(DataError, match=r"line 2: token '4' has no ':'"):
        read_file(path, cfg(format="libfm"))


def test_libfm_wrong_token_count(write):
    path = write("f.libfm", "1 1:1 2:1\n0 3:1\n")
    with pytest.raises(DataError, match="line 2: expected 3 blank-separated tokens"):
        read_file(path, cfg(format="libfm", columns=["a", "b"]))


def test_avazu_bad_hour(write):
    path = write("dev.csv", AVAZU_ROWS[0] + "\n" + AVAZU_ROWS[1].replace("14102513", "14109913") + "\n")
    with pytest.raises(DataError, match="line 2 column 'hour'"):
        read_file(path, cfg(format="avazu"), ["hour"])


@pytest.mark.parametrize("content", ["", "\n\n", "\r\n"])
def test_empty_file(write, content):
    path = write("empty.txt", content)
    with pytest.raises(DataError, match="file is empty") as info:
        read_file(path, cfg(format="criteo"), ["C1"])
    assert info.value.file == str(path)


def test_header_only_and_empty_parquet(write, tmp_path):
    with pytest.raises(DataError, match="header but no data rows"):
        read_file(write("h.csv", "y,c\n"), cfg(format="csv"), ["c"], label="y")
    path = tmp_path / "e.parquet"
    pl.DataFrame({"c": []}, schema={"c": pl.String}).write_parquet(path)
    with pytest.raises(DataError, match="file is empty"):
        read_file(path, cfg(format="parquet"), ["c"])


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found") as info:
        read_file(tmp_path / "nope.csv", cfg(format="csv"), ["a"])
    assert "nope.csv" in str(info.value)


def test_missing_column_csv_and_parquet(write, tmp_path):
    path = write("a.csv", "y,user\n1,u\n")
    with pytest.raises(DataError) as info:
        read_file(path, cfg(format="csv"), ["usr"], label="y")
    assert info.value.column == "usr" and "'usr'" in str(info.value) and "['y', 'user']" in str(info.value)
    pq = tmp_path / "a.parquet"
    pl.DataFrame({"y": [1], "user": ["u"]}).write_parquet(pq)
    with pytest.raises(DataError, match=r"column 'usr' is not in the file .*available columns: \['y', 'user'\]"):
        read_file(pq, cfg(format="parquet"), ["usr", "y"], label="y")


def test_not_a_parquet_file(write):
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_file(write("x.parquet", "hello"), cfg(format="parquet"), ["a"])


def test_parquet_bad_rows(tmp_path):
    path = tmp_path / "d.parquet"
    pl.DataFrame({"y": ["1", "0", "7", "1"], "n": ["1", "x", "2", "3"]}).write_parquet(path)
    with pytest.raises(DataError, match="row|line 2 column 'n': expected a number"):
        read_file(path, cfg(format="parquet"), ["n"], label="y", numeric=["n"])
    df, report = read_source(path, cfg(format="parquet", on_bad_row="skip"), ["n"], label="y", numeric=["n"])
    assert df["_line"].to_list() == [1, 4] and report.rows_skipped == 2 and report.first_bad_line == 2


# ---- skip policy ---------------------------------------------------------------------------------

def test_skip_drops_counts_and_logs(write, caplog):
    rows = [CRITEO_ROWS[0], "garbage", CRITEO_ROWS[1], CRITEO_ROWS[1].replace("\t1\t1\t", "\tx\t1\t", 1)]
    path = write("mixed.txt", "\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="ctr.data"):
        df, report = read_source(path, cfg(format="criteo", on_bad_row="skip"), ["C1", "I10"],
                                 numeric=NUMERIC)
    assert df["_line"].to_list() == [1, 3]
    assert (report.rows_read, report.rows_skipped, report.rows_kept, report.first_bad_line) == (4, 2, 2, 2)
    assert "expected 40 fields" in report.first_bad_reason
    [record] = [r for r in caplog.records if r.name == "ctr.data"]
    assert record.levelno == logging.WARNING
    assert "mixed.txt" in record.getMessage() and "skipped 2" in record.getMessage() and "line 2" in record.getMessage()


def test_error_is_picklable(write):
    import pickle

    path = write("f.libfm", "1 1:1\nx 2:1\n")
    with pytest.raises(DataError) as info:
        read_file(path, cfg(format="libfm"))
    again = pickle.loads(pickle.dumps(info.value))
    assert again.line == 2 and str(again) == str(info.value)


# ---- config --------------------------------------------------------------------------------------

def test_data_config_shape_and_errors():
    c = DataConfig.parse({"format": "criteo", "train": ["a", "b"], "test": "t"})
    assert c.files("train") == ["a", "b"] and c.files("valid") is None and c.files("test") == ["t"]
    assert c.split.ratios == (0.8, 0.1, 0.1) and c.split.seed == 2021 and c.on_bad_row == "error"
    with pytest.raises(ConfigError, match="data.on_bad_rows: unknown key; did you mean on_bad_row"):
        DataConfig.parse({"format": "csv", "train": "a", "on_bad_rows": "skip"}, "data")
    with pytest.raises(ConfigError, match="data: .*needs columns"):
        DataConfig.parse({"format": "csv", "train": "a", "has_header": False}, "data")
    with pytest.raises(ConfigError, match="data.format"):
        DataConfig.parse({"format": "tsv", "train": "a"}, "data")
    with pytest.raises(ConfigError, match="split.column"):
        DataConfig.parse({"format": "csv", "train": "a", "split": {"test": ["x"]}}, "data")
    with pytest.raises(ConfigError, match="listed for both"):
        DataConfig.parse({"format": "csv", "train": "a", "split": {"column": "d", "valid": [1], "test": [1]}})
    split = DataConfig.parse({"format": "csv", "train": "a", "split": {"column": "day", "test": [7, "8"]}}).split
    assert split.test == ["7", "8"]


def test_format_specific_keys_are_rejected_elsewhere():
    with pytest.raises(ConfigError, match="columns applies to csv and libfm only"):
        DataConfig.parse({"format": "criteo", "train": "a", "columns": ["x"]}, "data")
    with pytest.raises(ConfigError, match="separator applies to csv only"):
        DataConfig.parse({"format": "avazu", "train": "a", "separator": ";"}, "data")


def test_all_rows_malformed_raises_even_when_skipping(write):
    path = write("wrong_format.txt", "a,b,c\n1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="all 3 rows are malformed.*data.format"):
        read_file(path, cfg(format="criteo", on_bad_row="skip"), ["C1"])


def test_csv_header_with_byte_order_mark(write):
    path = write("bom.csv", "\ufeffy,c\n1,a\n")
    assert read_file(path, cfg(format="csv"), ["c"], label="y").rows() == [("a", 1.0, 2)]
