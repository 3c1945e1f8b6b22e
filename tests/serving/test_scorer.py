"""Scorer without gRPC: compiled dense towers equal eager, smoke check, quantization choices."""

import json
import shutil

import numpy as np
import pytest

from ctr.errors import ArtifactError, ConfigError
from ctr.export.bundle import load_bundle
from ctr.export.quantize import embedding_bytes, quantize_for_inference
from serving.scorer import ModelVersion, Scorer

pytestmark = pytest.mark.slow


def test_compiled_dense_towers_equal_eager(bundle_factory, raw_rows):
    bundle = bundle_factory("deepfm")
    eager = Scorer(load_bundle(bundle), ModelVersion("m", "1"), "int8")
    compiled = Scorer(load_bundle(bundle), ModelVersion("m", "1"), "int8", compile=True)
    assert eager.compiled == [] and compiled.compiled == ["mlp"]  # FM interaction has no weights; tables stay eager
    for n in (1, 7, 300):  # batch sizes the warm-up did not see
        np.testing.assert_allclose(compiled.score(raw_rows[:n]), eager.score(raw_rows[:n]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("quant, tol", [("fp16", 2e-3), ("int8", 1e-2), ("int4", 1e-1)])
def test_quantized_tables_stay_close(bundle_factory, raw_rows, quant, tol):
    bundle = load_bundle(bundle_factory("autoint_plus"))
    reference = bundle.score(raw_rows)
    float_bytes = embedding_bytes(bundle.model)
    qmodel = quantize_for_inference(bundle.model, quant)
    # FBGEMM pads quantized rows (with their scale/bias) to an alignment, so narrow tables may not shrink
    assert embedding_bytes(qmodel) <= float_bytes and embedding_bytes(bundle.model) == float_bytes  # a copy
    scorer = Scorer(bundle, ModelVersion("m", "1"), model=qmodel)
    assert np.abs(scorer.score(raw_rows) - reference).max() < tol


def test_unknown_quantization_is_a_config_error(bundle_factory):
    with pytest.raises(ConfigError, match="unknown quantization 'int3'"):
        Scorer(load_bundle(bundle_factory("lr")), ModelVersion("m", "1"), "int3")


def test_smoke_check_refuses_drifted_scores(bundle_factory, tmp_path):
    src = bundle_factory("dnn")
    scorer = Scorer(load_bundle(src), ModelVersion("m", "1", str(src)), "int8")
    assert scorer.smoke_check() < 0.01
    drifted = tmp_path / "drifted"
    shutil.copytree(src, drifted)
    manifest = json.loads((drifted / "manifest.json").read_text())
    manifest["example"]["scores"] = [s + 0.05 for s in manifest["example"]["scores"]]
    (drifted / "manifest.json").write_text(json.dumps(manifest))
    bundle = load_bundle(drifted, verify_example=False)  # float check skipped: the quantized one must catch it
    with pytest.raises(ArtifactError, match="example request scores differ"):
        Scorer(bundle, ModelVersion("m", "2", str(drifted)), "int8").smoke_check()
