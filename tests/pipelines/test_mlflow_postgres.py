"""A real `mlflow server` on PostgreSQL (proxied artifacts): train + register through it, load the model back.

`.ci/run` starts a throwaway PostgreSQL and sets ``CTR_TEST_POSTGRES_URI``; without it this skips.
"""

import uuid

import pytest

from pipelines.cli import main
from tests.pipelines.mlflow_server import mlflow_server as run_mlflow_server
from tests.pipelines.mlflow_server import postgres_or_skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    backend = postgres_or_skip()
    art = tmp_path_factory.mktemp("pg-artifacts")
    with run_mlflow_server(["--backend-store-uri", backend, "--serve-artifacts",
                            "--artifacts-destination", art.as_uri()]) as url:
        yield url


def test_train_register_and_load_through_a_postgres_backed_server(mlflow_server, tiny_spec_file, tmp_path,
                                                                  monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    name = f"ctr-pg-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "summary.json"
    assert main(["run", str(tiny_spec_file), "--set", "train.epochs=1", "--set", f"register.model_name={name}",
                 "--summary-json", str(out)]) == 0, capsys.readouterr().err
    import json

    summary = json.loads(out.read_text())
    assert summary["model_uri"] == f"models:/{name}/1"
    from pipelines.registry import list_versions

    versions = list_versions(mlflow_server, name)
    assert [v.version for v in versions] == ["1"]
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(summary["model_uri"])  # artifacts come back through the server's proxy
    from ctr.export.bundle import load_bundle
    from pipelines.spec import load_spec
    from pipelines.stages.register import typed_rows

    bundle = load_bundle(summary["bundle"])
    rows = bundle.manifest["example"]["rows"]
    got = model.predict(pd.DataFrame(typed_rows(load_spec(tiny_spec_file), rows)))
    scores = got["probability"].to_numpy() if hasattr(got, "columns") else got
    assert len(rows) == 4 and abs(scores - bundle.manifest["example"]["scores"]).max() < 1e-5
