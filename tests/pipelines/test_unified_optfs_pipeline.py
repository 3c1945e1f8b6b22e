"""``unified_optfs`` end to end: OptFS gates on the shared rows through DMP → a pruned ``unified`` model
(kept rows + row maps) that equals the hard-gated model at its start, is registered, and scores raw rows
(values unseen in training included) identically in a fresh process and through the gRPC scorer's path."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ctr.data.loader import BatchIterator
from ctr.data.prepare import read_encoded
from ctr.embeddings import UnifiedEmbeddingConfig, UnifiedOptFSConfig
from ctr.export.bundle import load_bundle
from ctr.features.artifact import FeatureArtifact
from ctr.models import build_model
from ctr.train import checkpoint
from pipelines.run import run_pipeline
from pipelines.spec import build_spec
from serving.scorer import ModelVersion, Scorer
from tests.conftest import tiny_spec_dict

pytestmark = pytest.mark.slow
GATES = {"name": "unified_optfs", "budget": 0.5, "chunks": 2, "chunk_dim": 4, "num_tables": 2,
         "search_epochs": 2, "rewind": 1, "final_temp": 20.0, "penalty": 1e-3}
SCORE_FRESH = """
import json, sys
from ctr.export.bundle import load_bundle
rows = json.load(open(sys.argv[2]))
print(json.dumps([float(x) for x in load_bundle(sys.argv[1]).score(rows)]))
"""


def _model(spec, layout, emb_cfg, path):
    model = build_model(spec.model, layout, emb_cfg)
    checkpoint.load(model, path)
    return model.eval()


def test_unified_optfs_prunes_shared_rows_registers_and_serves(tmp_path, tracking_uri):
    raw = tiny_spec_dict(tmp_path / "synthetic.parquet", tmp_path)
    raw["features"].update({"encoding": "hash", "hash_min_cardinality": 50})
    raw["train"]["optimizer"]["lr"] = 0.03  # gates move ~lr per Adam step: prune within two tiny epochs
    raw["embedding"] = dict(GATES)
    spec = build_spec(raw, "tiny", "tiny.yaml")
    summary = run_pipeline(spec, tracking_uri)
    phases = Path(summary["run_dir"]) / "phases"

    # the baseline is ungated unified at the same budget; the compact model holds fewer table rows
    assert summary["search"]["phases"] == ["search", "materialise", "retrain"]
    assert summary["baseline"]["embedding"] == "unified"
    kept = summary["search"]["kept_ratio"]
    assert 0 < kept < 1, kept
    assert summary["embedding_params"] < summary["baseline"]["embedding_params"]
    assert 0.5 < summary["test"]["auc"] <= 1

    # the compact init equals the hard-gated rewound model on real batches (row maps, kept rows × 1/σ(m_init))
    layout = FeatureArtifact.load(next(Path(spec.data.cache_dir).glob("**/features"))).layout()
    made = json.loads((phases / "materialise" / "outputs.json").read_text())
    compact_cfg = UnifiedEmbeddingConfig(**made["embedding"])
    assert set(compact_cfg.kept_rows) == {"unified_0", "unified_1"}
    ticket = UnifiedOptFSConfig(**{**GATES, "mode": "ticket"})
    final = _model(spec, layout, ticket, phases / "search" / "checkpoints" / "final")
    hard = _model(spec, layout, ticket, phases / "search" / "checkpoints" / "epoch-start-1")
    hard.embedding.gate_ebc.load_state_dict(final.embedding.gate_ebc.state_dict())
    compact = _model(spec, layout, compact_cfg, made["init"])
    for table, rows in compact_cfg.kept_rows.items():
        m = final.embedding.gate_params(table)
        assert rows == int((m > 0).sum()) + 1
        weight = compact.embedding.ebc.embedding_bags[table].weight
        assert weight.shape[0] == rows and torch.count_nonzero(weight[0]) == 0  # the pruned rows' shared row
        row_map = getattr(compact.embedding.row_maps, table)
        assert torch.equal(row_map > 0, m > 0)
    batch = next(iter(BatchIterator(read_encoded(made["splits"]["valid"], layout.schema), 300, shuffle=False,
                                    seed=0)))
    with torch.no_grad():
        torch.testing.assert_close(compact(batch.dense, batch.sparse), hard(batch.dense, batch.sparse),
                                   rtol=1e-5, atol=1e-6)
        ungated = _model(spec, layout, UnifiedOptFSConfig(**{**GATES, "mode": "search"}),
                         phases / "search" / "checkpoints" / "epoch-start-1")
        ungated.embedding.gate_ebc.load_state_dict(final.embedding.gate_ebc.state_dict())
        assert not torch.allclose(ungated(batch.dense, batch.sparse), hard(batch.dense, batch.sparse))

    # serving: raw rows, values no training row had included, score alike in a fresh process and the scorer
    bundle = load_bundle(summary["bundle"])
    assert type(bundle.model.embedding).__name__ == "UnifiedEmbedding"
    from ctr.data.readers import read_file

    rows = read_file(spec.data.train, spec.data, spec.features.raw_columns).head(40)
    rows = rows.select([f.column for f in spec.features.fields]).to_dicts()
    hashed_col = next(f.column for f in spec.features.fields if f.name in bundle.artifact.hashed_tables)
    for i, r in enumerate(rows[:10]):
        r[hashed_col] = f"first-seen-at-scoring-{i}"
    local = bundle.score(rows)
    assert np.isfinite(local).all() and len(np.unique(local)) > 20
    src = tmp_path / "rows.json"
    src.write_text(json.dumps(rows))
    out = subprocess.run([sys.executable, "-c", SCORE_FRESH, summary["bundle"], str(src)], check=True,
                         capture_output=True, text=True)
    np.testing.assert_array_equal(np.array(json.loads(out.stdout.strip().splitlines()[-1])), local.astype(float))
    exact = Scorer(load_bundle(summary["bundle"]), ModelVersion("u", "1"), quant="none")
    np.testing.assert_allclose(exact.score(rows), local, rtol=0, atol=1e-6)
    int8 = Scorer(load_bundle(summary["bundle"]), ModelVersion("u", "1"), quant="int8")
    np.testing.assert_allclose(int8.score(rows), local, atol=5e-3)
