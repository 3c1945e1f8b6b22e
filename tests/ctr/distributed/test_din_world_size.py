"""DIN with the history/candidate table shared in an EmbeddingCollection: 2 Ray/gloo workers = 1 process."""

import dataclasses

import numpy as np
import pytest

from ctr.distributed.worker import run_worker
from pipelines.stages.train import make_job

pytestmark = pytest.mark.slow


def test_two_workers_with_shared_history_table_match_one_process(din_prepared, ray_cluster, tmp_path):
    from pipelines.ray_runner import RayRun, train_on_ray

    spec, prepared = din_prepared
    spec = dataclasses.replace(spec, train=spec.train.model_copy(update={"epochs": 1}))
    one = run_worker(make_job(spec, prepared, tmp_path / "ws1"))
    two = train_on_ray(make_job(spec, prepared, tmp_path / "ws2"), RayRun(workers=2, storage=str(tmp_path / "ray")))
    a, b = np.array(one.fit.step_losses), np.array(two.fit.step_losses)
    assert len(a) == len(b) >= 5
    np.testing.assert_allclose(a, b, atol=2e-3, rtol=0)
    assert two.valid["auc"] == pytest.approx(one.valid["auc"], abs=5e-3)
    assert two.world_size == 2 and "rank:1" in two.plan  # the shared EC table is planned and placed
    assert "ec" in one.plan and "item" in one.plan
