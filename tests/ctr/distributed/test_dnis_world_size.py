"""DNIS search on 2 Ray/gloo workers = 1 process: the alternating train / validation (α) steps agree, so the
searched α (replicated, its gradient averaged over ranks) and the losses match."""

import dataclasses

import numpy as np
import pytest

from ctr.distributed.worker import run_worker
from ctr.embeddings import DNISConfig
from ctr.features.artifact import FeatureArtifact
from ctr.models import build_model, parse_model_config
from ctr.train import checkpoint
from pipelines.stages.train import make_job

pytestmark = pytest.mark.slow


def _alpha(job, path):
    model = build_model(job.model_cfg, FeatureArtifact.load(job.artifact_dir).layout(), job.embedding_cfg)
    checkpoint.load(model, path)
    return model.embedding.alpha.detach().numpy().copy()


def test_two_workers_dnis_search_matches_one_process(tiny_prepared, ray_cluster, tmp_path):
    from pipelines.ray_runner import RayRun, train_on_ray

    spec, prepared = tiny_prepared
    spec = dataclasses.replace(
        spec, model=parse_model_config({"name": "fm", "embedding_dim": 8}),
        embedding=DNISConfig(mode="search", blocks=[0.2, 0.3, 0.5], alpha_lr=0.05),
        train=spec.train.model_copy(update={"epochs": 1, "patience": 1}))

    def job(folder):
        return dataclasses.replace(make_job(spec, prepared, tmp_path / folder), freeze_dense=True)

    one_job, two_job = job("ws1"), job("ws2")
    one = run_worker(one_job)
    two = train_on_ray(two_job, RayRun(workers=2, storage=str(tmp_path / "ray")))
    a, b = np.array(one.fit.step_losses), np.array(two.fit.step_losses)
    assert len(a) == len(b) >= 10
    np.testing.assert_allclose(a, b, atol=2e-3, rtol=0)
    a1, a2 = _alpha(one_job, one.checkpoint_dir), _alpha(two_job, two.checkpoint_dir)
    assert (a1 < 1).any()  # α moved
    np.testing.assert_allclose(a2, a1, atol=5e-3)
