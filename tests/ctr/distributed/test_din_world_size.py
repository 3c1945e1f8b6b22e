"""DIN with the history/candidate table shared in an EmbeddingCollection: 2 Ray/gloo workers = 1 process,
with collisionless tables and with vocabulary-free ids multiplexed by Unified Embedding."""

import dataclasses

import numpy as np
import pytest

from ctr.distributed.worker import run_worker
from pipelines.stages.train import make_job
from tests.ctr.conftest import din_raw

pytestmark = pytest.mark.slow


def _one_and_two_workers(spec, prepared, tmp_path):
    """Train in this process and on 2 Ray workers; assert the same step losses and validation AUC."""
    from pipelines.ray_runner import RayRun, train_on_ray

    one = run_worker(make_job(spec, prepared, tmp_path / "ws1"))
    two = train_on_ray(make_job(spec, prepared, tmp_path / "ws2"), RayRun(workers=2, storage=str(tmp_path / "ray")))
    a, b = np.array(one.fit.step_losses), np.array(two.fit.step_losses)
    assert len(a) == len(b) >= 5
    np.testing.assert_allclose(a, b, atol=2e-3, rtol=0)
    assert two.valid["auc"] == pytest.approx(one.valid["auc"], abs=5e-3)
    return one, two


def test_two_workers_with_shared_history_table_match_one_process(din_prepared, ray_cluster, tmp_path):
    spec, prepared = din_prepared
    spec = dataclasses.replace(spec, train=spec.train.model_copy(update={"epochs": 1}))
    one, two = _one_and_two_workers(spec, prepared, tmp_path)
    assert two.world_size == 2 and "rank:1" in two.plan  # the shared EC table is planned and placed
    assert "ec" in one.plan and "item" in one.plan


def test_unified_din_on_two_workers_matches_one_process(ray_cluster, tmp_path):
    from pipelines.spec import build_spec
    from pipelines.stages import prepare as prepare_stage

    raw = din_raw(tmp_path)
    raw["features"].update({"encoding": "hash", "hash_min_cardinality": 30})  # user (60) and item (40) hashed
    raw["embedding"] = {"name": "unified", "budget": 0.5, "chunks": 2, "chunk_dim": 4, "init_std": 0.05}
    spec = build_spec(raw, "din_unified", "din_unified.yaml")
    prepared = prepare_stage.run(spec)
    one, two = _one_and_two_workers(spec, prepared, tmp_path)
    assert "unified_seq_0" in two.plan and "unified_0" in two.plan  # unpooled item chunks, pooled user chunks
