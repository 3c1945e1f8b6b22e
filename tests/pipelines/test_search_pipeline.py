"""A search pipeline end to end: OptFS phases as nested MLflow runs → compact model registered and served."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from ctr.embeddings import OptFSConfig, PlainEmbeddingConfig
from ctr.export.bundle import load_bundle
from ctr.features.artifact import FeatureArtifact
from ctr.models import build_model
from ctr.search.compact import table_of
from ctr.train import checkpoint
from pipelines.run import run_pipeline
from pipelines.spec import build_spec
from tests.conftest import tiny_spec_dict

pytestmark = pytest.mark.slow
OPTFS = {"name": "optfs", "search_epochs": 2, "rewind": 1, "final_temp": 20.0, "penalty": 1e-2}


def _spec(tmp_path, **extra):
    raw = tiny_spec_dict(tmp_path / "synthetic.parquet", tmp_path, {"name": "fm", "embedding_dim": 8})
    raw["train"]["optimizer"]["lr"] = 0.03  # gates move ~lr per Adam step: prune within two tiny epochs
    raw["embedding"] = dict(OPTFS)
    raw.update(extra)
    return build_spec(raw, "tiny", "tiny.yaml")


def _state(model_cfg, layout, emb_cfg, path):
    model = build_model(model_cfg, layout, emb_cfg)
    checkpoint.load(model, path)
    return model.state_dict()


def test_optfs_pipeline_phases_rewind_compact_bundle_and_resume(tmp_path, tracking_uri):
    spec = _spec(tmp_path)
    summary = run_pipeline(spec, tracking_uri)
    run_dir = Path(summary["run_dir"])
    phases = run_dir / "phases"

    # summary: the compact model, the full backbone of the same run, and their ratio
    base = summary["baseline"]
    assert summary["search"]["phases"] == ["search", "materialise", "retrain"]
    assert 0 < summary["search"]["kept_ratio"] < 1
    assert summary["embedding_params"] < base["embedding_params"]
    assert summary["search"]["embedding_params_ratio"] == summary["embedding_params"] / base["embedding_params"]
    assert 0.5 < base["test"]["auc"] <= 1 and 0.4 < summary["test"]["auc"] <= 1

    # nested MLflow runs, one per phase (+ the baseline), under the pipeline's run
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(summary["run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{summary['run_id']}'")
    names = sorted(r.data.tags["ctr.phase"] for r in children)
    assert names == ["baseline", "materialise", "retrain", "search"]
    assert all(r.info.status == "FINISHED" for r in children)
    mat = next(r for r in children if r.data.tags["ctr.phase"] == "materialise")
    assert {a.path for a in client.list_artifacts(mat.info.run_id, "optfs")} >= {"optfs/keep_lists.json"}
    assert mat.data.metrics["kept_ratio"] == pytest.approx(summary["search"]["kept_ratio"])
    search_run = next(r for r in children if r.data.tags["ctr.phase"] == "search")
    assert len(client.get_metric_history(search_run.info.run_id, "valid_auc")) == 2

    # rewind: the compact init is the epoch-1 snapshot (dense layers bit-exact, rows gathered × hard gate),
    # with the final gates deciding the rows
    prepared_root = Path(spec.data.cache_dir)
    full_art = FeatureArtifact.load(next(prepared_root.glob("**/features")))
    layout = full_art.layout()
    ticket = OptFSConfig(**{**OPTFS, "mode": "ticket"})
    snap = _state(spec.model, layout, ticket, phases / "search" / "checkpoints" / "epoch-start-1")
    final = _state(spec.model, layout, ticket, phases / "search" / "checkpoints" / "final")
    small = FeatureArtifact.load(phases / "materialise" / "compact" / "features")
    init = _state(spec.model, small.layout(), PlainEmbeddingConfig(), phases / "materialise" / "compact" / "init")
    gate_key = "embedding.gate_ebc.embedding_bags.{}@gate.weight"
    assert not torch.equal(snap[gate_key.format("C1")], final[gate_key.format("C1")])
    for key, value in init.items():
        table = table_of(key)
        if table is None:
            assert torch.equal(value, snap[key]), key  # dense layers and numeric vectors: the snapshot's
            continue
        name = table.removeprefix("lin_")
        gates = final[gate_key.format(name)][:, 0]  # column 0 is m
        kept = torch.nonzero(gates > 0).flatten()
        kept = torch.unique(torch.cat([torch.zeros(1, dtype=kept.dtype), kept]))
        rows = snap[key][kept]
        # the hard gate 1[m > 0] / σ(m_init) folded into the kept rows, first-order rows (gated too) included
        scale = (gates[kept] > 0).double() / (1 / (1 + np.exp(-0.5)))
        torch.testing.assert_close(value.double(), rows.double() * scale.unsqueeze(-1), rtol=1e-6, atol=1e-9)

    # serving: a pruned raw value scores exactly like a value never seen in training
    bundle = load_bundle(summary["bundle"])
    full_vocab = full_art.vocabularies()
    kept_vocab = small.vocabularies()
    field = next(t for t in full_vocab if len(kept_vocab[t]) < len(full_vocab[t]))
    pruned = sorted(set(full_vocab[field]["value"].to_list()) - set(kept_vocab[field]["value"].to_list()))
    row = dict(bundle.manifest["example"]["rows"][0])
    scores = bundle.score([{**row, field: pruned[0]}, {**row, field: "never-seen-value"}, row])
    assert scores[0] == pytest.approx(scores[1], abs=1e-7)
    assert bundle.transform.apply([{**row, field: pruned[0]}])[field].to_list() == [0]

    # resume: every phase of the first run is finished, so a resumed run reuses all of them
    again = run_pipeline(dataclasses.replace(spec, raw={**spec.raw, "search": {
        "baseline": False, "resume_from": str(run_dir)}}), tracking_uri)
    assert again["test"] == summary["test"] and again["baseline"] is None
    assert (Path(again["run_dir"]) / "phases" / "retrain" / "reused_from.txt").is_file()
    assert np.isfinite(again["embedding_params"])
