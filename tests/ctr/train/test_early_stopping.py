"""Early stopping and best-epoch selection follow ``train.monitor`` (default AUC − logloss)."""

import numpy as np
import polars as pl
import pytest
import torch

from ctr.data.loader import BatchIterator
from ctr.features.schema import Schema
from ctr.features.tensorize import EncodedColumns
from ctr.train.loop import TrainConfig, fit, monitored
from ctr.train.objective import Objective

# valid AUC keeps rising while the logloss degrades after epoch 2: the overfitting pattern of attention models
SCRIPT = [{"auc": 0.90, "logloss": 0.40}, {"auc": 0.92, "logloss": 0.30}, {"auc": 0.93, "logloss": 0.45},
          {"auc": 0.935, "logloss": 0.60}, {"auc": 0.936, "logloss": 0.70}, {"auc": 0.937, "logloss": 0.80}]


class DenseOnly(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, dense, sparse):
        return self.linear(dense).squeeze(-1)


class Keep:
    """Checkpointer that remembers the weights of the best epoch (in memory)."""

    def __init__(self) -> None:
        self.state = None

    def save_best(self, model):
        self.state = {k: v.clone() for k, v in model.state_dict().items()}

    def restore_best(self, model):
        model.load_state_dict(self.state)


def _fit(monitor: str | None, patience: int = 1):
    schema = Schema.model_validate({"fields": [{"name": "c"}, {"name": "x", "kind": "numeric"}]})
    frame = pl.DataFrame({"c": np.zeros(64, dtype=np.int64), "x": np.linspace(-1, 1, 64, dtype=np.float32),
                          "_label": (np.arange(64) % 2).astype(np.float32)})
    batches = BatchIterator(EncodedColumns.from_frame(frame, schema), 16, shuffle=True, seed=0)
    model = DenseOnly()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = iter(SCRIPT)
    cfg = TrainConfig(epochs=len(SCRIPT), patience=patience, progress=False,
                      **({"monitor": monitor} if monitor else {}))
    keep = Keep()
    result = fit(model, opt, Objective(), batches, lambda: dict(next(calls)), cfg, keep)
    return result, model, keep


def test_default_monitor_is_auc_minus_logloss():
    assert TrainConfig().monitor == "auc_logloss"
    assert monitored("auc_logloss", {"auc": 0.9, "logloss": 0.4}) == pytest.approx(0.5)


@pytest.mark.parametrize("monitor,best,epochs_run", [(None, 2, 4), ("auc_logloss", 2, 4), ("logloss", 2, 4),
                                                     ("auc", 6, 6)])
def test_best_epoch_and_stop_follow_the_monitor(monitor, best, epochs_run):
    result, model, keep = _fit(monitor)
    assert result.best_epoch == best
    assert len(result.history) == epochs_run
    assert result.stopped_early == (epochs_run < len(SCRIPT))
    assert result.best == SCRIPT[best - 1]
    for k, v in keep.state.items():  # the restored weights are the best epoch's
        assert torch.equal(model.state_dict()[k], v)


def test_validate_start_keeps_the_starting_weights_when_no_epoch_beats_them():
    schema = Schema.model_validate({"fields": [{"name": "c"}, {"name": "x", "kind": "numeric"}]})
    frame = pl.DataFrame({"c": np.zeros(64, dtype=np.int64), "x": np.linspace(-1, 1, 64, dtype=np.float32),
                          "_label": (np.arange(64) % 2).astype(np.float32)})
    batches = BatchIterator(EncodedColumns.from_frame(frame, schema), 16, shuffle=True, seed=0)
    cfg = TrainConfig(epochs=4, patience=1, progress=False)
    for start, best_epoch, epochs_run in (({"auc": 0.95, "logloss": 0.2}, 0, 2), ({"auc": 0.5, "logloss": 0.7}, 2, 4)):
        model = DenseOnly()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        calls = iter([start] + SCRIPT)
        result = fit(model, torch.optim.SGD(model.parameters(), lr=0.1), Objective(), batches,
                     lambda calls=calls: dict(next(calls)), cfg, Keep(), validate_start=True)
        assert result.best_epoch == best_epoch and len(result.history) == epochs_run
        same = all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
        assert same == (best_epoch == 0)  # the start restored, or a trained epoch's weights
        assert result.best == (start if best_epoch == 0 else SCRIPT[best_epoch - 1])
