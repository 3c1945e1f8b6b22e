"""Serving from the MLflow registry: alias resolution, hot reload under load, broken versions refused."""

import json
import shutil
import threading
import time

import grpc
import numpy as np
import pandas as pd
import pytest

from ctr.errors import CtrError
from serving.client import ScorerClient
from serving.model_store import ModelRef
from serving.server import ScoringServer, ServerSettings
from tests.serving.conftest import register_bundle

pytestmark = pytest.mark.slow
NAME = "ctr-serve-test"


def _pyfunc_scores(uri: str, model_uri: str, rows: list[dict]) -> np.ndarray:
    import mlflow

    mlflow.set_tracking_uri(uri)
    return np.asarray(mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame(rows)), dtype=np.float32)


def _wait(cond, timeout=180.0, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_model_ref_parsing(tmp_path):
    assert ModelRef.parse("models:/ctr-a@champion").alias == "champion"
    ref = ModelRef.parse("models:/ctr-a/12")
    assert (ref.name, ref.version, ref.alias) == ("ctr-a", "12", None)
    assert ModelRef.parse(str(tmp_path)).path == tmp_path
    with pytest.raises(CtrError, match="expected models:/NAME@ALIAS"):
        ModelRef.parse("models:/only-a-name")


def test_hot_reload_under_load_and_broken_version_refused(bundle_factory, raw_rows, tracking_uri, tmp_path):
    import mlflow

    rows = raw_rows[:20]
    v1 = register_bundle(tracking_uri, NAME, bundle_factory("deepfm", seed=0))
    client_ml = mlflow.MlflowClient(tracking_uri)
    client_ml.set_registered_model_alias(NAME, "champion", v1)

    srv = ScoringServer(ServerSettings(model=f"models:/{NAME}@champion", tracking_uri=tracking_uri, port=0,
                                       metrics_port=0, poll_seconds=0.2, grace_seconds=2)).start()
    try:
        with ScorerClient(f"127.0.0.1:{srv.port}") as c:
            first = c.score(rows)
            assert (first.model_name, first.model_version) == (NAME, v1)
            np.testing.assert_allclose(first.probabilities, _pyfunc_scores(tracking_uri, f"models:/{NAME}/{v1}", rows),
                                       atol=0.01)

            seen, errors, stop = [], [], threading.Event()
            per_thread: list[list[str]] = [[] for _ in range(3)]  # each thread's versions, in its own order

            def load(mine: list[str]):
                while not stop.is_set():
                    try:
                        r = c.score(rows)
                        mine.append(r.model_version)
                        seen.append(r.model_version)
                    except grpc.RpcError as exc:
                        errors.append(exc.code())

            workers = [threading.Thread(target=load, args=(per_thread[i],)) for i in range(3)]
            for w in workers:
                w.start()
            v2 = register_bundle(tracking_uri, NAME, bundle_factory("deepfm", seed=1))
            client_ml.set_registered_model_alias(NAME, "champion", v2)
            _wait(lambda: v2 in seen, what="the new version to serve")
            n_after = len(seen)
            _wait(lambda: len(seen) > n_after + 20, what="more requests after the swap")
            stop.set()
            for w in workers:
                w.join()
            assert errors == [] and seen.count(v1) > 0 and seen.count(v2) > 20
            for mine in per_thread:  # once a client got the new version, its later requests never go back
                assert v2 not in mine or mine[mine.index(v2):].count(v1) == 0
            # (across threads the append order is not the serving order: a v1 reply sent before the swap may
            # be appended after another thread's v2 reply)
            second = c.score(rows)
            assert second.model_version == v2
            np.testing.assert_allclose(second.probabilities,
                                       _pyfunc_scores(tracking_uri, f"models:/{NAME}/{v2}", rows), atol=0.01)
            assert np.abs(second.probabilities - first.probabilities).max() > 0.05  # really another model

            # a broken version (its example request no longer reproduces) is refused; v2 keeps serving
            broken = tmp_path / "broken"
            shutil.copytree(bundle_factory("deepfm", seed=1), broken)
            manifest = json.loads((broken / "manifest.json").read_text())
            manifest["example"]["scores"] = [min(1.0, s + 0.3) for s in manifest["example"]["scores"]]
            (broken / "manifest.json").write_text(json.dumps(manifest))
            v3 = register_bundle(tracking_uri, NAME, broken)
            client_ml.set_registered_model_alias(NAME, "champion", v3)
            _wait(lambda: v3 in srv.store.policy.refused, what="the broken version to be refused")
            assert "example request scores" in srv.store.policy.refused[v3]
            time.sleep(0.5)  # more polls: the refused version is not retried
            assert list(srv.store.policy.refused) == [v3] and srv.store.policy.accepted == [v1, v2]
            third = c.score(rows)
            assert third.model_version == v2 and c.health() == "SERVING"
            np.testing.assert_array_equal(third.probabilities, second.probabilities)
    finally:
        srv.stop(0)


def test_unresolvable_model_fails_at_start(tracking_uri):
    settings = ServerSettings(model="models:/no-such-model@champion", tracking_uri=tracking_uri, port=0,
                              poll_seconds=0)
    with pytest.raises(CtrError, match="cannot resolve the alias"):
        ScoringServer(settings).start()
