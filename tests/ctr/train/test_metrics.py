import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from ctr.train.metrics import auc, gauc, logloss, summarize


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_including_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500), 1)  # many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_single_class_is_nan():
    assert np.isnan(auc(np.ones(5), np.arange(5)))


def test_logloss_matches_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = rng.random(300)
    assert logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-9)


def test_gauc_weights_groups_by_impressions_and_skips_single_class_groups():
    y = np.array([1, 0, 0, 1, 0, 1, 1])
    s = np.array([0.9, 0.1, 0.2, 0.3, 0.8, 0.5, 0.4])
    g = np.array([1, 1, 1, 2, 2, 3, 3])  # group 3 has one class only
    a1 = roc_auc_score(y[:3], s[:3])
    a2 = roc_auc_score(y[3:5], s[3:5])
    assert gauc(y, s, g) == pytest.approx((3 * a1 + 2 * a2) / 5)


def test_summarize_has_all_keys():
    out = summarize(np.array([0, 1, 1, 0]), np.array([0.2, 0.7, 0.6, 0.4]), np.array([1, 1, 2, 2]))
    assert set(out) == {"auc", "logloss", "gauc", "rows"}
    assert out["auc"] == 1.0 and out["rows"] == 4
