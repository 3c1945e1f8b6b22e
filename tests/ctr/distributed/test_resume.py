"""In one process: a run resumed from a mid-epoch checkpoint continues exactly like the clean run."""

import dataclasses

import numpy as np

from ctr.distributed.worker import run_worker
from ctr.train.checkpoint import is_resumable
from pipelines.stages.train import make_job


def test_mid_epoch_checkpoint_resumes_exactly(tiny_prepared, tmp_path):
    spec, prepared = tiny_prepared
    spec = dataclasses.replace(spec, train=spec.train.model_copy(
        update={"epochs": 2, "batch_size": 128, "checkpoint_every": 10, "patience": 3}))
    seen = []

    def sink(write, metrics):
        seen.append(metrics)
        if metrics["step"] == 50:  # epoch 2, step 12 of 38
            write(str(tmp_path / "ck"))

    clean = run_worker(make_job(spec, prepared, tmp_path / "a"), sink=sink)
    assert [m["step"] for m in seen] == [10, 20, 30, 38, 40, 50, 60, 70, 76]  # every 10 global steps + each epoch end
    assert is_resumable(tmp_path / "ck")
    resumed = run_worker(dataclasses.replace(make_job(spec, prepared, tmp_path / "b"), resume_from=str(tmp_path / "ck")))
    assert resumed.resumed_from and len(resumed.fit.history) == 2
    np.testing.assert_allclose(resumed.fit.step_losses, clean.fit.step_losses, atol=1e-6, rtol=0)
    assert resumed.valid["auc"] == clean.valid["auc"]
    assert resumed.fit.history[1]["valid_logloss"] == clean.fit.history[1]["valid_logloss"]
