"""Criteo sample end to end: `ctr run` registers AutoInt+, the int8 gRPC scorer serves it from the registry
with test AUC within 0.001 of the float model and every probability within 0.01."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ctr.data.readers import read_files
from ctr.data.split import split_frames
from serving.client import ScorerClient
from serving.server import ScoringServer, ServerSettings
from tests.conftest import REPO, require_shared

pytestmark = [pytest.mark.slow, pytest.mark.data]


def test_int8_scorer_matches_float_on_criteo_sample(tracking_uri, tmp_path):
    from pipelines.run import run_pipeline
    from pipelines.spec import load_spec

    require_shared("criteo", "train_examples.txt")
    spec = load_spec(REPO / "pipelines" / "examples" / "criteo_sample.yaml",
                     ["train.epochs=2", f"output.dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}",
                      "train.progress=false"])
    summary = run_pipeline(spec, tracking_uri)
    frames, _ = read_files(spec.data.files("train"), spec.data, spec.features.raw_columns,
                           label=spec.features.label, numeric={f.column for f in spec.features.numeric_fields})
    test = split_frames({"train": frames}, spec.data)["test"]
    rows = test.select([f.column for f in spec.features.fields]).to_dicts()
    labels = test.get_column(spec.features.label).cast(float).to_numpy()
    assert len(rows) == summary["rows"]["test"] > 500

    scores = {}
    for quant in ("none", "int8"):
        srv = ScoringServer(ServerSettings(model=summary["model_uri"], tracking_uri=tracking_uri, port=0,
                                           quant=quant, poll_seconds=0)).start()
        try:
            with ScorerClient(f"127.0.0.1:{srv.port}") as c:
                scores[quant] = np.concatenate([c.score(rows[i:i + 512]).probabilities
                                                for i in range(0, len(rows), 512)])
        finally:
            srv.stop(0)
    auc_float, auc_int8 = roc_auc_score(labels, scores["none"]), roc_auc_score(labels, scores["int8"])
    assert auc_float == pytest.approx(summary["test"]["auc"], abs=1e-6)  # the scorer reproduces `ctr run`'s test AUC
    assert abs(auc_int8 - auc_float) <= 0.001
    assert np.abs(scores["int8"] - scores["none"]).max() <= 0.01
    print(f"criteo sample test AUC float {auc_float:.5f} int8 {auc_int8:.5f}; "
          f"max |Δp| {np.abs(scores['int8'] - scores['none']).max():.2e}")
