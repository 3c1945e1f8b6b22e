"""Unified Embedding's shared sub-tables on 2 Ray/gloo workers = 1 process: row-wise (training batches padded
to equal size per rank, since TorchRec's row-wise backward is an all-gather that gloo only does evenly) and
table-wise."""

import dataclasses

import numpy as np
import pytest

from ctr.distributed.worker import run_worker
from ctr.features.artifact import FeatureArtifact
from pipelines.stages.train import make_job
from tests.conftest import tiny_spec_dict
from tests.ctr.distributed.test_optfs_world_size import _placements

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def unified(tmp_path_factory):
    from pipelines.spec import build_spec
    from pipelines.stages import prepare as prepare_stage

    root = tmp_path_factory.mktemp("unified")
    raw = tiny_spec_dict(root / "synthetic.parquet", root, {"name": "fm", "embedding_dim": 8})
    raw["features"].update({"encoding": "hash", "hash_min_cardinality": 50})
    raw["embedding"] = {"name": "unified", "budget": 0.5, "chunks": 2, "chunk_dim": 4, "num_tables": 2}
    raw["train"].update({"epochs": 2, "patience": 2})
    spec = build_spec(raw, "tiny", "tiny.yaml")
    prepared = prepare_stage.run(spec)
    assert FeatureArtifact.load(prepared.artifact_dir).hashed_tables  # vocabulary-free fields exist
    return spec, prepared, root


def _job(spec, prepared, folder, types):
    spec = dataclasses.replace(spec, distributed=spec.distributed.model_copy(
        update={"sharding": spec.distributed.sharding.model_copy(update={"types": types})}))
    return dataclasses.replace(make_job(spec, prepared, folder), restore_best=False)


def test_row_wise_shared_tables_on_two_gloo_workers_match_one_process(unified, ray_cluster):
    """Row-wise pooled tables on 2 gloo workers: the training batches are padded to equal size per rank
    (gloo's all-gather in their backward takes equal sizes only), and the padding changes nothing."""
    from pipelines.ray_runner import RayRun, train_on_ray

    spec, prepared, root = unified
    one = run_worker(_job(spec, prepared, root / "rw1", ["row_wise"]))
    placed = _placements(one.plan)
    assert {placed[n][0] for n in ("unified_0", "unified_1")} == {"row_wise"}
    assert one.valid["auc"] > 0.5 and np.isfinite(one.fit.step_losses).all()
    two = train_on_ray(_job(spec, prepared, root / "rw2", ["row_wise"]), RayRun(workers=2, storage=str(root / "ray-rw")))
    placed = _placements(two.plan)
    assert placed["unified_0"][0] == "row_wise" and "[0, 1]" in placed["unified_0"][1]  # rows split over both
    a, b = np.array(one.fit.step_losses), np.array(two.fit.step_losses)
    assert len(a) == len(b) >= 10
    np.testing.assert_allclose(a, b, atol=2e-3, rtol=0)
    assert two.valid["auc"] == pytest.approx(one.valid["auc"], abs=5e-3)


def test_shared_tables_on_two_workers_match_one_process(unified, ray_cluster):
    from pipelines.ray_runner import RayRun, train_on_ray

    spec, prepared, root = unified
    one = run_worker(_job(spec, prepared, root / "tw1", None))
    two = train_on_ray(_job(spec, prepared, root / "tw2", None), RayRun(workers=2, storage=str(root / "ray-tw")))
    a, b = np.array(one.fit.step_losses), np.array(two.fit.step_losses)
    assert len(a) == len(b) >= 10
    np.testing.assert_allclose(a, b, atol=2e-3, rtol=0)
    assert two.valid["auc"] == pytest.approx(one.valid["auc"], abs=5e-3)
    placed = _placements(two.plan)
    ranks = {placed[n][1] for n in placed}
    assert "[0]" in ranks and "[1]" in ranks  # tables spread over both workers


def test_gated_shared_rows_row_wise_on_two_workers_match_one_process(unified, ray_cluster):
    """unified_optfs: the gate tables are placed row-wise exactly like their sub-tables, every rank steps its own
    gate rows, and 2 workers end with the same losses and gates as 1 process."""
    from ctr.embeddings import UnifiedOptFSConfig
    from pipelines.ray_runner import RayRun, train_on_ray
    from tests.ctr.distributed.test_optfs_world_size import _gates

    spec, prepared, root = unified
    gated = UnifiedOptFSConfig(budget=0.5, chunks=2, chunk_dim=4, num_tables=2, search_epochs=2, rewind=1,
                               final_temp=20.0, penalty=1e-3)
    spec = dataclasses.replace(spec, embedding=gated,
                               train=spec.train.model_copy(update={"optimizer": spec.train.optimizer.model_copy(
                                   update={"lr": 0.03})}))
    one_job = _job(spec, prepared, root / "g1", ["row_wise"])
    one = run_worker(one_job)
    two_job = _job(spec, prepared, root / "g2", ["row_wise"])
    two = train_on_ray(two_job, RayRun(workers=2, storage=str(root / "ray-g")))
    placed = _placements(two.plan)
    for sub in ("unified_0", "unified_1"):
        assert placed[f"{sub}@gate"] == placed[sub] and placed[sub][0] == "row_wise" and "[0, 1]" in placed[sub][1]
    np.testing.assert_allclose(np.array(one.fit.step_losses), np.array(two.fit.step_losses), atol=2e-3, rtol=0)
    g1, g2 = _gates(one_job, one.checkpoint_dir), _gates(two_job, two.checkpoint_dir)
    assert set(g1) == {"unified_0", "unified_1"}
    for sub in g1:
        assert (g1[sub] != 0.5).mean() > 0.5  # most rows moved (the penalty reaches every row)
        np.testing.assert_allclose(g1[sub], g2[sub], atol=2e-3)
        assert ((g1[sub] > 0) != (g2[sub] > 0)).mean() < 0.01
