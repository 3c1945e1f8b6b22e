"""A real `mlflow server` on PostgreSQL (proxied artifacts): train + register through it, load the model back.

`.ci/run` starts a throwaway PostgreSQL and sets ``CTR_TEST_POSTGRES_URI``; without it this skips.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from pipelines.cli import main

pytestmark = pytest.mark.slow
PG = os.environ.get("CTR_TEST_POSTGRES_URI")


def _reachable(uri: str) -> str | None:
    try:
        import psycopg2
    except ImportError:
        return "psycopg2 is not installed"
    try:
        psycopg2.connect(uri, connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        return f"PostgreSQL at {uri} is not reachable ({str(exc).strip().splitlines()[0]})"
    return None


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    if not PG:
        pytest.skip("no PostgreSQL: set CTR_TEST_POSTGRES_URI (.ci/run starts one on 127.0.0.1)")
    why = _reachable(PG)
    if why:
        pytest.skip(why)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    art = tmp_path_factory.mktemp("pg-artifacts")
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", PG.replace("postgresql://", "postgresql+psycopg2://"),
           "--serve-artifacts", "--artifacts-destination", art.as_uri()]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("mlflow server did not come up in 120 s")
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


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
