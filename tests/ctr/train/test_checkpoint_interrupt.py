"""An interrupt that lands inside a DCP checkpoint write ends the save as an interrupt, not a crash."""

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from ctr.train import checkpoint


class InterruptsWhenPickled:
    """Stands for Ctrl-C / SIGTERM arriving while DCP serialises this object (a real DCP write)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self):
        raise self.exc


class WithExtraState(nn.Module):
    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))
        self.exc = exc

    def get_extra_state(self):
        return InterruptsWhenPickled(self.exc)

    def set_extra_state(self, state) -> None:
        pass


def test_an_interrupt_during_save_is_raised_as_itself(tmp_path):
    with pytest.raises(KeyboardInterrupt, match="signal 15"):
        checkpoint.save(WithExtraState(KeyboardInterrupt("signal 15")), tmp_path / "ckpt")


def test_other_save_failures_stay_checkpoint_exceptions(tmp_path):
    with pytest.raises(CheckpointException, match="disk on fire"):
        checkpoint.save(WithExtraState(OSError("disk on fire")), tmp_path / "ckpt")


def test_a_plain_save_and_load_still_round_trip(tmp_path):
    model = nn.Linear(3, 2)
    checkpoint.save(model, tmp_path / "ckpt")
    fresh = nn.Linear(3, 2)
    checkpoint.load(fresh, tmp_path / "ckpt")
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
