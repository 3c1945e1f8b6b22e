"""End to end: prepare → train (DMP) → evaluate → register in a real SQLite MLflow store → load back."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.cli import main
from pipelines.registry import list_versions, promote
from pipelines.run import run_pipeline
from pipelines.spec import load_spec

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

LOAD_AND_PREDICT = """
import json, sys, mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
rows = pd.DataFrame(json.load(open(sys.argv[3])))
print(json.dumps([float(x) for x in model.predict(rows)]))
"""


def _raw_rows(spec, n=50) -> pl.DataFrame:
    """Raw rows typed as the model signature wants them (numeric fields as floats, categoricals as text)."""
    from ctr.data.readers import read_file
    from pipelines.stages.register import typed_rows

    df = read_file(spec.data.train, spec.data, spec.features.raw_columns).head(n)
    return pl.DataFrame(typed_rows(spec, df.select([f.column for f in spec.features.fields]).to_dicts()))


def _predict_fresh_process(uri: str, model_uri: str, rows: pl.DataFrame, tmp: Path) -> np.ndarray:
    src = tmp / "rows.json"
    src.write_text(json.dumps(rows.to_dicts()))
    out = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, uri, model_uri, str(src)], check=True,
                         capture_output=True, text=True, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    return np.array(json.loads(out.stdout.strip().splitlines()[-1]))


def test_register_load_identical_predictions(tiny_spec_file, tracking_uri, tmp_path):
    spec = load_spec(tiny_spec_file)
    summary = run_pipeline(spec, tracking_uri)
    assert summary["model"] == "deepfm" and summary["model_uri"] == "models:/ctr-tiny/1"
    assert 0.5 < summary["test"]["auc"] <= 1.0 and summary["test"]["logloss"] > 0
    run_dir = Path(summary["run_dir"])
    assert (run_dir / "learning_curve.png").stat().st_size > 1000
    assert "table_wise" in (run_dir / "sharding_plan.txt").read_text() or "column_wise" in (
        run_dir / "sharding_plan.txt").read_text()

    from ctr.export.bundle import load_bundle

    bundle = load_bundle(summary["bundle"])
    # DeepFM: an 8-wide table and a 4-wide first-order table (FBGEMM's minimum width) per categorical
    # field; numeric-field vectors are not table parameters
    assert summary["embedding_params"] == sum(bundle.artifact.table_sizes().values()) * (8 + 4)
    rows = _raw_rows(spec)
    local = bundle.score(rows)
    remote = _predict_fresh_process(tracking_uri, summary["model_uri"], rows, tmp_path)
    np.testing.assert_array_equal(remote, local)  # identical, not just close
    assert len(np.unique(local)) > 10

    # a second run registers version 2; promote it and load through the alias
    summary2 = run_pipeline(load_spec(tiny_spec_file, ["train.epochs=1"]), tracking_uri)
    assert summary2["version"] == "2"
    promote(tracking_uri, "ctr-tiny", "2", "champion")
    versions = list_versions(tracking_uri, "ctr-tiny")
    assert [(v.version, v.aliases) for v in versions] == [("1", []), ("2", ["champion"])]
    champ = _predict_fresh_process(tracking_uri, "models:/ctr-tiny@champion", rows, tmp_path)
    np.testing.assert_array_equal(champ, load_bundle(summary2["bundle"]).score(rows))


def test_cli_run_summary_and_models_list(tiny_spec_file, tracking_uri, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    out = tmp_path / "summary.json"
    assert main(["run", str(tiny_spec_file), "--set", "train.epochs=1", "--summary-json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert {"model", "model_uri", "run_id"} <= set(s) and isinstance(s["test"]["auc"], float)
    assert s["epochs_run"] == 1
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "ctr-tiny" in listing and s["run_id"] in listing
    assert main(["models", "promote", "ctr-tiny", "1", "--alias", "champion"]) == 0
    assert main(["models", "promote", "ctr-tiny", "7", "--alias", "champion"]) == 2


def test_cli_user_mistakes_exit_2_without_traceback(tiny_spec_file, tmp_path):
    ctr = Path(sys.executable).with_name("ctr")
    cases = [
        (["run", str(tiny_spec_file), "--set", "train.epochz=1"], "train.epochz"),
        (["run", str(tmp_path / "missing.yaml")], "not found"),
        (["run", str(tiny_spec_file), "--set", f"data.train={tmp_path / 'nope.parquet'}",
          "--set", "synthetic=null"], "nope.parquet"),
    ]
    for args, needle in cases:
        proc = subprocess.run([str(ctr), *args], capture_output=True, text=True, cwd=tmp_path, check=False)
        assert proc.returncode == 2, proc.stderr
        assert needle in proc.stderr and "Traceback" not in proc.stderr
