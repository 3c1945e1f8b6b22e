"""OptEmbed end to end through ``ctr run`` machinery: four phases as nested runs → a mixed-width compact model
(widths multiples of 4, pruned rows gone) that is exported, registered, loaded by ``load_bundle`` and scored."""

import json
from pathlib import Path

import pytest

from ctr.export.bundle import load_bundle
from ctr.features.artifact import FeatureArtifact
from pipelines.run import run_pipeline
from pipelines.spec import build_spec
from tests.conftest import tiny_spec_dict

pytestmark = pytest.mark.slow
OPTEMBED = {"name": "optembed", "supernet_epochs": 2, "threshold_init": 0.06, "threshold_lr": 0.01, "alpha": 1e-3,
            "generations": 2, "mutation_num": 3, "crossover_num": 3, "top_k": 3, "mutation_prob": 0.3,
            "param_budget": 0.7}


def test_optembed_pipeline_compact_mixed_widths_bundle(tmp_path, tracking_uri):
    raw = tiny_spec_dict(tmp_path / "synthetic.parquet", tmp_path, {"name": "fm", "embedding_dim": 8})
    raw["embedding"] = dict(OPTEMBED)
    raw["train"]["epochs"] = 1
    spec = build_spec(raw, "tiny", "tiny.yaml")
    summary = run_pipeline(spec, tracking_uri)
    phases = Path(summary["run_dir"]) / "phases"

    search, base = summary["search"], summary["baseline"]
    assert search["phases"] == ["supernet", "evolve", "materialise", "retrain"]
    assert 0 < search["kept_ratio"] < 1
    assert all(w % 4 == 0 and 4 <= w <= 8 for w in search["widths"].values())
    assert all(search["widths"][t] >= d for t, d in search["dims"].items())
    assert summary["embedding_params"] < base["embedding_params"]
    assert 0.4 < summary["test"]["auc"] <= 1
    assert (phases / "supernet" / "checkpoints" / "epoch-start-0" / ".metadata").is_file()  # initial weights
    found = json.loads((phases / "evolve" / "search.json").read_text())
    tables = found["keep"]["tables"]
    compact = sum(r["compact_rows"] * found["widths"][t] for t, r in tables.items())
    assert compact <= 0.7 * sum(r["rows"] * 8 for r in tables.values())  # param_budget honoured

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(summary["run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{summary['run_id']}'")
    assert sorted(r.data.tags["ctr.phase"] for r in children) == ["baseline", "evolve", "materialise", "retrain",
                                                                   "supernet"]
    evolve = next(r for r in children if r.data.tags["ctr.phase"] == "evolve")
    assert {a.path for a in client.list_artifacts(evolve.info.run_id, "optembed")} >= {"optembed/search.json"}
    assert len(client.get_metric_history(evolve.info.run_id, "best_valid_auc")) == 2

    # the registered bundle is the compact mixed-width model; a pruned value scores as an unseen one
    bundle = load_bundle(summary["bundle"])
    assert bundle.manifest["embedding"]["name"] == "mixed_dim"
    full = FeatureArtifact.load(next(Path(spec.data.cache_dir).glob("**/features"))).vocabularies()
    small = FeatureArtifact.load(phases / "materialise" / "compact" / "features").vocabularies()
    field = next(t for t in full if len(small[t]) < len(full[t]))
    pruned = sorted(set(full[field]["value"].to_list()) - set(small[field]["value"].to_list()))
    row = dict(bundle.manifest["example"]["rows"][0])
    scores = bundle.score([{**row, field: pruned[0]}, {**row, field: "never-seen-value"}, row])
    assert scores[0] == pytest.approx(scores[1], abs=1e-7)
