"""DNIS end to end through the ``ctr run`` machinery: four phases as nested runs → a mixed-dimension model
(per-block widths, multiples of 4) that equals the pruned α-masked searched model at its start, then is
retrained, exported, registered, loaded by ``load_bundle`` and scored by the gRPC scorer's path (int8 too)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctr.data.loader import BatchIterator
from ctr.data.prepare import read_encoded
from ctr.embeddings import BlockDimConfig, DNISConfig
from ctr.export.bundle import load_bundle
from ctr.features.artifact import FeatureArtifact
from ctr.models import build_model
from ctr.search.dnis import prune_mask
from ctr.train import checkpoint
from pipelines.run import run_pipeline
from pipelines.spec import build_spec
from serving.scorer import ModelVersion, Scorer
from tests.conftest import tiny_spec_dict

pytestmark = pytest.mark.slow
DNIS = {"name": "dnis", "blocks": [0.1, 0.3, 0.6], "warm_epochs": 1, "search_epochs": 1, "alpha_lr": 0.05,
        "param_ratio": 0.6}


def test_dnis_pipeline_phases_mixed_dimension_model_bundle_and_scorer(tmp_path, tracking_uri):
    raw = tiny_spec_dict(tmp_path / "synthetic.parquet", tmp_path, {"name": "deepfm", "embedding_dim": 8,
                                                                     "dnn_hidden": [16]})
    raw["embedding"] = dict(DNIS)
    raw["train"]["epochs"] = 1
    spec = build_spec(raw, "tiny", "tiny.yaml")
    summary = run_pipeline(spec, tracking_uri)
    phases = Path(summary["run_dir"]) / "phases"

    search, base = summary["search"], summary["baseline"]
    assert search["phases"] == ["warm", "search", "materialise", "retrain"]
    assert all(w % 4 == 0 and 0 <= w <= 8 for w in search["widths"]) and len(search["widths"]) == 3
    assert search["field_params_ratio"] <= 0.6
    assert summary["embedding_params"] < base["embedding_params"]
    assert 0.4 < summary["test"]["auc"] <= 1 and 0.4 < base["test"]["auc"] <= 1
    doc = json.loads((phases / "materialise" / "alpha.json").read_text())
    alpha = np.array(doc["alpha"])
    assert alpha.shape == (3, 8) and alpha.min() >= 0 and alpha.max() <= 1 and (alpha < 1).any()  # α searched

    # the materialised init predicts as the searched model with the pruned α (on real validation batches)
    art = FeatureArtifact.load(next(Path(spec.data.cache_dir).glob("**/features")))
    layout = art.layout()
    searched = build_model(spec.model, layout, DNISConfig(**{**DNIS, "mode": "search"}))
    checkpoint.load(searched, phases / "search" / "checkpoints" / "final")
    searched.embedding.prune_mask = prune_mask([np.array(c) for c in doc["columns"]], 8)
    compact = build_model(spec.model, layout, BlockDimConfig(starts=doc["starts"], widths=doc["widths"]))
    checkpoint.load(compact, phases / "materialise" / "compact" / "init")
    valid = next(p for p in (Path(spec.data.cache_dir)).glob("**/valid*") if p.exists())
    batch = next(iter(BatchIterator(read_encoded(valid, art.schema), 512, shuffle=False, seed=0)))
    with torch.no_grad():
        a = compact.eval()(batch.dense, batch.sparse)
        b = searched.eval()(batch.dense, batch.sparse)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(summary["run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{summary['run_id']}'")
    assert sorted(r.data.tags["ctr.phase"] for r in children) == ["baseline", "materialise", "retrain", "search",
                                                                   "warm"]
    mat = next(r for r in children if r.data.tags["ctr.phase"] == "materialise")
    assert {a.path for a in client.list_artifacts(mat.info.run_id, "dnis")} >= {"dnis/alpha.json"}
    assert {a.path for a in client.list_artifacts(mat.info.run_id, "plots")} >= {"plots/alpha.png", "plots/widths.png"}

    # the registered bundle is the mixed-dimension model; the scorer's exact and int8 paths agree with it
    bundle = load_bundle(summary["bundle"])
    assert bundle.manifest["embedding"]["name"] == "block_dim"
    rows = [dict(r) for r in bundle.manifest["example"]["rows"]]
    rows.append({**rows[0], "C1": "never-seen-value"})
    local = np.asarray(bundle.score(rows))
    exact = Scorer(load_bundle(summary["bundle"]), ModelVersion("d", "1"), quant="none")
    np.testing.assert_allclose(exact.score(rows), local, rtol=0, atol=1e-6)
    int8 = Scorer(load_bundle(summary["bundle"]), ModelVersion("d", "1"), quant="int8")
    np.testing.assert_allclose(int8.score(rows), local, atol=5e-3)
