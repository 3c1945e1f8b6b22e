"""The compact model's reported best epoch is the epoch whose validation metrics it kept (0: the start)."""

from pipelines.search import kept_epoch

HISTORY = [{"epoch": 1, "valid_auc": 0.70, "valid_logloss": 0.50},
           {"epoch": 2, "valid_auc": 0.80, "valid_logloss": 0.90},  # higher AUC, but not what AUC - logloss keeps
           {"epoch": 3, "valid_auc": 0.72, "valid_logloss": 0.45}]


def test_kept_epoch_matches_the_kept_metrics_not_the_highest_auc():
    assert kept_epoch(HISTORY, {"auc": 0.72, "logloss": 0.45, "gauc": 0.6}) == 3
    assert kept_epoch(HISTORY, {"auc": 0.70, "logloss": 0.50}) == 1


def test_kept_epoch_is_zero_when_the_starting_weights_were_kept_and_minus_one_without_metrics():
    assert kept_epoch(HISTORY, {"auc": 0.75, "logloss": 0.40}) == 0
    assert kept_epoch([], {"auc": 0.75, "logloss": 0.40}) == 0
    assert kept_epoch(HISTORY, {}) == -1
