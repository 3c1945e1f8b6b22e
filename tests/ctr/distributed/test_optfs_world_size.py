"""OptFS search on 2 Ray/gloo workers = 1 process: losses, gates (sharded like their rows) and the rewind snapshot agree."""

import dataclasses

import numpy as np
import pytest

from ctr.distributed.worker import run_worker
from ctr.embeddings import OptFSConfig
from ctr.features.artifact import FeatureArtifact
from ctr.models import build_model, parse_model_config
from ctr.train import checkpoint
from pipelines.stages.train import make_job

pytestmark = pytest.mark.slow


def _gates(job, path):
    art = FeatureArtifact.load(job.artifact_dir)
    model = build_model(job.model_cfg, art.layout(), job.embedding_cfg)
    checkpoint.load(model, path)
    return {t: model.embedding.gate_params(t).numpy().copy() for t in model.embedding.gate_tables}


def _placements(plan: str) -> dict[str, tuple[str, str]]:
    """Table → (sharding type, ranks) from the plan's per-table summary lines ``name | type | kernel | [ranks]``."""
    out = {}
    for line in plan.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 4 and cells[3].startswith("[") and cells[0] not in out:
            out[cells[0]] = (cells[1], cells[3])
    return out


def test_two_workers_search_matches_one_process(tiny_prepared, ray_cluster, tmp_path):
    from pipelines.ray_runner import RayRun, train_on_ray

    spec, prepared = tiny_prepared
    spec = dataclasses.replace(
        spec, model=parse_model_config({"name": "fm", "embedding_dim": 8}),
        embedding=OptFSConfig(search_epochs=2, rewind=1, final_temp=10.0, penalty=1e-2),
        train=spec.train.model_copy(update={"epochs": 2, "patience": 2}))

    def job(folder):
        return dataclasses.replace(make_job(spec, prepared, tmp_path / folder), snapshot_epochs=(1,),
                                   restore_best=False)

    one_job, two_job = job("ws1"), job("ws2")
    one = run_worker(one_job)
    two = train_on_ray(two_job, RayRun(workers=2, storage=str(tmp_path / "ray")))
    a, b = np.array(one.fit.step_losses), np.array(two.fit.step_losses)
    assert len(a) == len(b) >= 10
    np.testing.assert_allclose(a, b, atol=2e-3, rtol=0)
    assert two.valid["auc"] == pytest.approx(one.valid["auc"], abs=5e-3)
    placed = _placements(two.plan)
    gates = [n for n in placed if n.endswith("@gate")]
    assert len(gates) == 26 and len({placed[g] for g in gates}) > 1  # spread over both ranks
    for gate in gates:  # each gate table sits on the rank of its embedding table's rows
        kind, ranks = placed[gate.removesuffix("@gate")]
        whole_rows = {"column_wise": "table_wise", "table_column_wise": "table_wise"}  # a column shard has every row
        assert placed[gate] == (whole_rows.get(kind, kind), ranks), gate
    g1, g2 = _gates(one_job, one.checkpoint_dir), _gates(two_job, two.checkpoint_dir)
    moved = sum(int((g != 0.5).sum()) for g in g1.values())
    assert moved > 0
    for t in g1:
        np.testing.assert_allclose(g2[t], g1[t], atol=5e-3)
        assert ((g2[t] > 0) == (g1[t] > 0)).mean() > 0.99  # the same keep-lists (up to float ties)
    s1 = _gates(one_job, f"{one_job.out_dir}/epoch-start-1")
    s2 = _gates(two_job, f"{two_job.out_dir}/epoch-start-1")
    for t in s1:
        np.testing.assert_allclose(s2[t], s1[t], atol=5e-3)
