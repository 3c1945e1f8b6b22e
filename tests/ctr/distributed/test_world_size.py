"""A 2-process gloo run of the sharded model follows the world-size-1 loss trajectory."""

import numpy as np
import pytest

from ctr.distributed.launch import launch_local
from ctr.distributed.worker import run_worker
from pipelines.stages.train import make_job

pytestmark = pytest.mark.slow


def test_two_gloo_ranks_match_world_size_one(tiny_prepared, tmp_path):
    spec, prepared = tiny_prepared
    spec1 = spec.__class__(**{**spec.__dict__, "train": spec.train.model_copy(update={"epochs": 1})})
    one = run_worker(make_job(spec1, prepared, tmp_path / "ws1"))
    two = launch_local(make_job(spec1, prepared, tmp_path / "ws2"), 2)
    assert len(two) == 2
    a, b = np.array(one.fit.step_losses), np.array(two[0].fit.step_losses)
    assert len(a) == len(b) > 10
    assert one.valid["auc"] > 0.55  # it learns
    np.testing.assert_allclose(a, b, atol=2e-3, rtol=0)
    # both ranks agree on the (gathered) validation metrics
    assert two[0].valid["auc"] == pytest.approx(two[1].valid["auc"], abs=1e-9)
    assert two[0].valid["auc"] == pytest.approx(one.valid["auc"], abs=5e-3)
    # the 2-rank plan really places tables on both ranks
    assert "rank:1" in two[0].plan and "rank:0" in two[0].plan


def test_checkpoint_from_two_ranks_loads_unsharded(tiny_prepared, tmp_path):
    from ctr.data.loader import BatchIterator
    from ctr.data.prepare import load_split
    from ctr.export.bundle import model_from_checkpoint
    from ctr.train.evaluate import evaluate

    spec, prepared = tiny_prepared
    spec1 = spec.__class__(**{**spec.__dict__, "train": spec.train.model_copy(update={"epochs": 1})})
    res = launch_local(make_job(spec1, prepared, tmp_path / "ws2"), 2)[0]
    model = model_from_checkpoint(spec.model, spec.embedding, prepared.artifact, res.checkpoint_dir)
    valid = load_split(prepared, "valid")
    metrics = evaluate(model, BatchIterator(valid, 1024, shuffle=False, seed=0))
    assert metrics["auc"] == pytest.approx(res.valid["auc"], abs=1e-6)
