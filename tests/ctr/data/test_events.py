"""Event log → DIN samples: strictly earlier histories, left-truncation, per-user time split, negatives, errors."""

import polars as pl
import pytest

from ctr.data.events import EventsConfig, din_samples
from ctr.errors import ConfigError, DataError

EVENTS = """user,item,rating,ts
u1,a,5,10
u1,b,3,20
u1,c,4,20
u1,d,5,30
u1,e,1,40
u2,c,4,5
u2,a,2,6
u2,f,5,7
"""


def _cfg(**kw) -> EventsConfig:
    return EventsConfig.model_validate({"timestamp": "ts", "label": "rating >= 4", "valid_per_user": 1,
                                        "test_per_user": 1, **kw})


@pytest.fixture
def log_file(tmp_path):
    p = tmp_path / "events.csv"
    p.write_text(EVENTS)
    return str(p)


def _by_item(df: pl.DataFrame, user: str) -> dict:
    return {r["item"]: r for r in df.filter(pl.col("user") == user).iter_rows(named=True)}


def test_history_holds_only_strictly_earlier_events_of_the_same_user(log_file):
    rows = _by_item(din_samples(_cfg(), log_file), "u1")
    assert rows["a"]["hist_item"] == []
    assert rows["b"]["hist_item"] == ["a"] and rows["c"]["hist_item"] == ["a"]  # b and c share ts 20
    assert rows["d"]["hist_item"] == ["a", "b", "c"]
    assert rows["e"]["hist_item"] == ["a", "b", "c", "d"]
    assert _by_item(din_samples(_cfg(), log_file), "u2")["f"]["hist_item"] == ["c", "a"]  # no u1 items


def test_every_history_event_is_earlier_on_a_shuffled_log(tmp_path):
    import numpy as np
    rng = np.random.default_rng(0)
    n = 400
    df = pl.DataFrame({"user": rng.integers(0, 9, n).astype(str), "item": rng.integers(0, 30, n).astype(str),
                       "rating": rng.integers(1, 6, n), "ts": rng.integers(0, 50, n)})
    path = tmp_path / "log.csv"
    df.write_csv(path)
    out = din_samples(_cfg(max_len=1000), str(path))
    times = {}
    for r in df.iter_rows(named=True):
        times.setdefault((r["user"], r["item"]), []).append(r["ts"])
    src = df.with_row_index("_line", offset=1)
    for r, s in zip(out.sort("_line").iter_rows(named=True), src.iter_rows(named=True), strict=True):
        earlier = src.filter((pl.col("user") == s["user"]) & (pl.col("ts") < s["ts"]))
        assert sorted(r["hist_item"]) == sorted(earlier["item"].to_list())


def test_left_truncation_keeps_the_latest_events(log_file):
    rows = _by_item(din_samples(_cfg(max_len=2), log_file), "u1")
    assert rows["e"]["hist_item"] == ["c", "d"]


def test_label_rule_and_per_user_time_split(log_file):
    df = din_samples(_cfg(), log_file)
    u1 = _by_item(df, "u1")
    assert [u1[i]["label"] for i in "abcde"] == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert u1["e"]["split"] == "test" and u1["d"]["split"] == "valid" and u1["a"]["split"] == "train"
    assert _by_item(df, "u2")["f"]["split"] == "test"


def test_side_columns_from_item_table_stay_aligned(log_file, tmp_path):
    items = tmp_path / "items.csv"
    items.write_text("id,genre\na,x\nb,y\nc,z\nd,x\ne,y\nf,z\n")
    cfg = _cfg(items={"path": str(items)}, item_key="id", side=["genre"])
    rows = _by_item(din_samples(cfg, log_file), "u1")
    assert rows["d"]["genre"] == "x" and rows["e"]["hist_genre"] == ["x", "y", "z", "x"]


def test_user_attributes_from_user_table_on_every_row_and_negative(log_file, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("u1|24|M\nu9|50|F\n")  # u2 is missing from the user table
    cfg = _cfg(users={"path": str(users), "separator": "|", "has_header": False, "columns": ["who", "age", "sex"]},
               user_key="who", user_side=["age", "sex"], negatives=1)
    df = din_samples(cfg, log_file)
    assert df.height == 16 and {"age", "sex"} <= set(df.columns) and "hist_age" not in df.columns
    u1 = df.filter(pl.col("user") == "u1")
    assert u1["age"].to_list() == ["24"] * 10 and u1["sex"].unique().to_list() == ["M"]  # negatives keep them
    assert df.filter(pl.col("user") == "u2")["age"].is_null().all()  # unknown user: missing, not dropped
    users.write_text("u1|24|M\nu2|30|F\nu1|25|M\n")
    with pytest.raises(DataError, match="user 'u1' appears twice in the user table") as exc:
        din_samples(cfg, log_file)
    assert exc.value.line == 3 and exc.value.file == str(users)
    with pytest.raises(DataError, match="'height'"):
        din_samples(cfg.model_copy(update={"user_side": ["height"]}), log_file)
    with pytest.raises(ConfigError, match="both item side and user side"):
        din_samples(_cfg(side=["rating"], user_side=["rating"]), log_file)


def test_sampled_negatives_are_untouched_items_and_seeded(log_file):
    a = din_samples(_cfg(negatives=2, negative_seed=3), log_file)
    b = din_samples(_cfg(negatives=2, negative_seed=3), log_file)
    assert a.equals(b)
    assert a.height == 8 * 3
    neg = a.slice(8)
    assert (neg["label"] == 0).all()
    touched = {"u1": set("abcde"), "u2": set("caf")}
    assert all(r["item"] not in touched[r["user"]] for r in neg.iter_rows(named=True))


def test_unusable_input_names_column_and_row(log_file, tmp_path):
    with pytest.raises(DataError, match="'who'"):
        din_samples(_cfg(user="who"), log_file)
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,rating,ts\nu1,a,5,10\nu1,b,3,yesterday-ish\n")
    with pytest.raises(DataError, match="yesterday") as exc:
        din_samples(_cfg(), str(bad))
    assert exc.value.line == 3 and exc.value.column == "ts"  # the file line (header is line 1)
    items = tmp_path / "items.csv"
    items.write_text("item,genre\na,x\na,y\n")
    with pytest.raises(DataError, match="twice"):
        din_samples(_cfg(items={"path": str(items)}, side=["genre"]), log_file)
    with pytest.raises(ConfigError, match="column op value"):
        din_samples(_cfg(label="rating is good"), log_file)
