"""End to end with ``embedding: unified`` on vocabulary-free (hash-encoded) fields: prepare → DMP training →
bundle → a fresh process and the gRPC scorer's encoder score raw rows identically, unseen values included."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from ctr.export.bundle import load_bundle
from pipelines.run import run_pipeline
from pipelines.spec import load_spec
from serving.scorer import ModelVersion, Scorer
from tests.conftest import tiny_spec_dict

pytestmark = pytest.mark.slow

SCORE_FRESH = """
import json, sys
from ctr.export.bundle import load_bundle
rows = json.load(open(sys.argv[2]))
print(json.dumps([float(x) for x in load_bundle(sys.argv[1]).score(rows)]))
"""


def test_unified_bundle_scores_raw_rows_identically_in_a_fresh_process(tmp_path, tracking_uri):
    raw = tiny_spec_dict(tmp_path / "synthetic.parquet", tmp_path)
    raw["features"].update({"encoding": "hash", "hash_min_cardinality": 50})
    raw["embedding"] = {"name": "unified", "budget": 0.5, "chunks": 2, "chunk_dim": 4, "num_tables": 2}
    raw["train"]["epochs"] = 1
    (tmp_path / "u.yaml").write_text(yaml.safe_dump(raw))
    spec = load_spec(tmp_path / "u.yaml")
    summary = run_pipeline(spec, tracking_uri)
    assert summary["embedding"] == "unified" and 0.5 < summary["test"]["auc"] <= 1.0

    bundle = load_bundle(summary["bundle"])
    art = bundle.artifact
    assert art.hashed_tables and art.hashing["spec"] == "ctr-hash/1"
    assert set(art.vocab["table"].unique().to_list()).isdisjoint(art.hashed_tables)  # no values kept
    # embedding_params: the shared sub-tables and collisionless tables of the 8-wide embedding, plus the
    # 4-wide first-order tables (vocabulary tables whole, hashed ones at the budget's share of their rows)
    emb = bundle.model.embedding
    vocab_rows = sum(n for t, n in art.table_sizes().items() if t not in art.hashed_tables)
    hashed_rows = sum(n for t, n in art.table_sizes().items() if t in art.hashed_tables)
    lin_hashed = sum(c.num_embeddings for m in bundle.model.modules() if hasattr(m, "embedding_bag_configs")
                     for c in m.embedding_bag_configs() if c.name.startswith("lin_")
                     and c.name.removeprefix("lin_") in art.hashed_tables)
    share = 2 * emb.sub_table_rows * 4 / (hashed_rows * 8)
    assert lin_hashed == pytest.approx(share * hashed_rows, abs=len(art.hashed_tables))
    assert summary["embedding_params"] == (vocab_rows * 8 + 2 * emb.sub_table_rows * 4
                                           + vocab_rows * 4 + lin_hashed * 4)

    from ctr.data.readers import read_file

    rows = read_file(spec.data.train, spec.data, spec.features.raw_columns).head(40)
    rows = rows.select([f.column for f in spec.features.fields]).to_dicts()
    hashed_col = next(f.column for f in spec.features.fields if f.name in art.hashed_tables)
    for i, r in enumerate(rows[:10]):
        r[hashed_col] = f"first-seen-at-scoring-{i}"  # values no training row had
    local = bundle.score(rows)
    assert np.isfinite(local).all() and len(np.unique(local[:10])) > 5

    src = tmp_path / "rows.json"
    src.write_text(json.dumps(rows))
    out = subprocess.run([sys.executable, "-c", SCORE_FRESH, summary["bundle"], str(src)], check=True,
                         capture_output=True, text=True)
    np.testing.assert_array_equal(np.array(json.loads(out.stdout.strip().splitlines()[-1])), local.astype(float))

    exact = Scorer(load_bundle(summary["bundle"]), ModelVersion("u", "1"), quant="none")  # the gRPC scorer's path
    np.testing.assert_allclose(exact.score(rows), local, rtol=0, atol=1e-6)
    int8 = Scorer(load_bundle(summary["bundle"]), ModelVersion("u", "1"), quant="int8")
    np.testing.assert_allclose(int8.score(rows), local, atol=5e-3)
