import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ctr.data.synthetic import (
    ORACLE_COLUMN,
    SyntheticConfig,
    cardinalities,
    generate,
    oracle_test_split,
    sample,
    write_synthetic_if_missing,
)

N = 40_000


@pytest.fixture(scope="module")
def data():
    return sample(N, seed=11, max_cardinality=20_000)


def test_deterministic_per_seed(data):
    again = sample(N, seed=11, max_cardinality=20_000)
    assert again.frame.equals(data.frame) and np.array_equal(again.logit, data.logit)
    assert not sample(2000, seed=12, max_cardinality=20_000).frame.equals(data.frame.head(2000))


def test_columns_cardinalities_and_positive_rate(data):
    f = data.frame
    assert f.columns == ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    assert all(f.schema[f"C{i}"] == pl.String for i in range(1, 27))
    cards = data.cardinalities
    assert sorted(cards.values())[0] == 10 and sorted(cards.values())[-1] == 20_000
    assert all(f[c].n_unique() <= k for c, k in cards.items())
    small = min(cards, key=cards.get)
    assert f[small].n_unique() == 10  # every value of a 10-value field shows up in 40k rows
    assert 0.2 <= f["label"].mean() <= 0.3
    nulls = np.mean([f[f"I{i}"].null_count() / N for i in range(1, 14)])
    assert 0.08 <= nulls <= 0.12 and min(f[f"I{i}"].min() for i in range(1, 14)) >= 0


def test_zipf_heads_are_heavy(data):
    big = max(data.cardinalities, key=data.cardinalities.get)
    top = data.frame[big].value_counts(sort=True)["count"]
    assert top[0] > 20 * top[min(100, len(top) - 1)]


def test_cardinalities_are_log_uniform():
    cards = sorted(cardinalities(26, 10**7, 10, seed=0))
    ratios = np.diff(np.log(cards))
    assert cards[0] == 10 and cards[-1] == 10**7 and np.allclose(ratios, ratios.mean(), atol=0.05)


def test_interactions_carry_the_signal(data):
    y = data.frame["label"].to_numpy()
    teacher = roc_auc_score(y, data.logit)
    first_order = roc_auc_score(y, data.bias + data.parts["first"] + data.parts["numeric"])
    share = (np.var(data.parts["second"]) + np.var(data.parts["third"])) / np.var(data.logit)
    assert teacher > 0.83 and first_order < teacher - 0.15 and share > 0.6


def test_logistic_regression_stays_well_below_the_teacher(data):
    f, y = data.frame, data.frame["label"].to_numpy()
    codes = [f[c].cast(pl.Categorical).to_physical().to_numpy().astype(np.int64) for c in data.cardinalities]
    offsets = np.cumsum([0] + [c.max() + 1 for c in codes])
    cols = np.stack([c + o for c, o in zip(codes, offsets[:-1], strict=True)], axis=1)
    x = sp.csr_matrix((np.ones(cols.size), (np.repeat(np.arange(N), cols.shape[1]), cols.ravel())))
    num = np.log1p(f.select([f"I{i}" for i in range(1, 14)]).fill_null(0).to_numpy().astype(float))
    x = sp.hstack([x, sp.csr_matrix(num)]).tocsr()
    train, test = slice(0, 30_000), slice(30_000, N)
    lr = LogisticRegression(C=0.1, solver="liblinear").fit(x[train], y[train])
    lr_auc = roc_auc_score(y[test], lr.predict_proba(x[test])[:, 1])
    teacher_auc = roc_auc_score(y[test], data.logit[test])
    assert lr_auc < teacher_auc - 0.12


def test_generate_writes_parquet_once(tmp_path):
    path = tmp_path / "s" / "syn.parquet"
    out = write_synthetic_if_missing(path, 500, seed=3, max_cardinality=100)
    assert out == path and pl.read_parquet(path).height == 500
    stamp = path.stat().st_mtime_ns
    write_synthetic_if_missing(path, 900, seed=3, max_cardinality=100)
    assert path.stat().st_mtime_ns == stamp
    small = generate(300, tmp_path / "x.parquet", 3, 50, SyntheticConfig(num_numeric=2, num_categorical=3))
    written = pl.read_parquet(small)
    assert written.columns == ["label", "I1", "I2", "C1", "C2", "C3", ORACLE_COLUMN]
    truth = sample(300, 3, 50, SyntheticConfig(num_numeric=2, num_categorical=3))
    np.testing.assert_array_equal(written[ORACLE_COLUMN].to_numpy(), truth.probability)
    assert np.allclose(truth.probability, 1 / (1 + np.exp(-truth.logit)))


def test_concurrent_generators_of_one_file_both_succeed(tmp_path):
    # two runs of a sweep on a fresh checkout generate the same cached file at once; a shared temporary
    # name made the slower one's rename fail
    path = tmp_path / "syn.parquet"
    code = f"from ctr.data.synthetic import generate; generate(20000, {str(path)!r}, 3, 1000)"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert pl.read_parquet(path).height == 20000
    assert sorted(q.name for q in tmp_path.iterdir()) == ["syn.parquet"]


def test_oracle_test_split_follows_the_pipeline_split(tmp_path):
    from ctr.data.readers import DataConfig
    from ctr.data.split import split_frames

    path = generate(1000, tmp_path / "o.parquet", 5, 100)
    cfg = DataConfig(format="parquet", train=str(path), split={"ratios": [0.8, 0.1, 0.1], "seed": 9})
    labels, probs = oracle_test_split(cfg)
    expected = split_frames({"train": pl.read_parquet(path)}, cfg)["test"]
    np.testing.assert_array_equal(labels, expected["label"].to_numpy())
    np.testing.assert_array_equal(probs, expected[ORACLE_COLUMN].to_numpy())
    assert len(labels) == 100
    given = DataConfig(format="parquet", train=str(path), test=str(path))
    assert len(oracle_test_split(given)[0]) == 1000
    sample(10, 1).frame.write_parquet(tmp_path / "plain.parquet")  # no oracle column
    assert oracle_test_split(DataConfig(format="parquet", train=str(tmp_path / "plain.parquet"))) is None
    assert oracle_test_split(DataConfig(format="csv", train="x.csv")) is None
