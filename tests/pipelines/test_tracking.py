"""MLflow as users see it, against a real SQLite store: live runs, durations, failures, lineage, signature."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from ctr.errors import CtrError, DataError
from pipelines.cli import main
from pipelines.registry import resolve
from pipelines.run import run_pipeline
from pipelines.spec import build_spec, load_spec
from pipelines.stages import prepare as prepare_stage
from tests.conftest import tiny_spec_dict

pytestmark = pytest.mark.slow
CTR = Path(sys.executable).with_name("ctr")
MLFLOW = Path(sys.executable).with_name("mlflow")


def _runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def _watch(uri: str, experiment: str, until: threading.Event, seen: list) -> None:
    """Poll the store like a user refreshing the UI: record (status, epoch metrics) snapshots."""
    client = MlflowClient(uri)
    while not until.is_set():
        for run in _runs(uri, experiment):
            history = client.get_metric_history(run.info.run_id, "valid_auc")
            seen.append((run.info.status, [(m.step, m.timestamp) for m in history], time.time()))
        time.sleep(0.1)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One tiny pipeline trained in a thread while the main thread watches its run."""
    tmp = tmp_path_factory.mktemp("live")
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    doc = tiny_spec_dict(tmp / "synthetic.parquet", tmp)
    doc["description"] = "tiny pipeline for the tracking tests"
    doc["train"].update(epochs=3, patience=5)
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(doc))
    spec = load_spec(tmp / "tiny.yaml")
    MlflowClient(uri).search_experiments()  # create the schema before two threads race to migrate it
    seen, done, out = [], threading.Event(), {}
    watcher = threading.Thread(target=_watch, args=(uri, "tiny", done, seen), daemon=True)
    watcher.start()
    t0 = time.time()
    worker = threading.Thread(target=lambda: out.update(summary=run_pipeline(spec, uri)))
    worker.start()
    worker.join(timeout=600)
    t1 = time.time()
    done.set()
    watcher.join()
    assert "summary" in out, "the pipeline thread failed; see the log above"
    return {"uri": uri, "spec": spec, "summary": out["summary"], "seen": seen, "t0": t0, "t1": t1, "tmp": tmp}


def test_run_is_running_with_live_epoch_metrics_then_finished(live):
    client = MlflowClient(live["uri"])
    run = client.get_run(live["summary"]["run_id"])
    running = [(metrics, at) for status, metrics, at in live["seen"] if status == "RUNNING" and metrics]
    assert running, "never saw a RUNNING run with an epoch metric"
    metrics, seen_at = running[0]
    step, stamp = metrics[0]
    assert step == 1 and live["t0"] * 1000 <= stamp <= seen_at * 1000 + 1  # a real time, not 0
    assert run.info.status == "FINISHED"
    # the run covers the whole pipeline (thread start to thread end), not just the register stage
    assert run.info.start_time <= live["t0"] * 1000 + 2000
    assert run.info.end_time >= live["t1"] * 1000 - 2000
    assert (run.info.end_time - run.info.start_time) / 1000 >= sum(live["summary"]["stage_seconds"].values())
    stages = {k.split("/")[1] for k in run.data.metrics if k.startswith("stage_seconds/")}
    assert stages == {"prepare", "train", "evaluate", "register"}
    history = client.get_metric_history(run.info.run_id, "valid_auc")
    assert [m.step for m in history] == [1, 2, 3]
    assert len({m.timestamp for m in history}) == 3  # logged as each epoch ended
    steps = client.get_metric_history(run.info.run_id, "batch_loss")
    assert len(steps) == 3 * 19 and [m.step for m in steps][:3] == [1, 2, 3]  # 4800 rows / 256 per batch


def test_source_tags_description_and_artifacts(live):
    client = MlflowClient(live["uri"])
    run = client.get_run(live["summary"]["run_id"])
    tags = run.data.tags
    assert tags["mlflow.project.entryPoint"] == "ctr run" and tags["mlflow.user"]
    assert tags["mlflow.source.name"].endswith("tiny.yaml")
    assert "mlflow.source.git.commit" not in tags  # the spec lives in a temp dir, not a repository
    assert tags["mlflow.note.content"] == "tiny pipeline for the tracking tests"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "feature_map", "run.log", "summary.json", "plots"} <= names
    assert "prepare [4/4]" in mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/run.log")


def test_datasets_list_three_splits_with_prepare_digests(live):
    from pipelines.stages.prepare import run as prepare

    run = MlflowClient(live["uri"]).get_run(live["summary"]["run_id"])
    got = {}
    for d in run.inputs.dataset_inputs:
        context = {t.key: t.value for t in d.tags}["mlflow.data.context"]
        got[context] = (d.dataset.digest, json.loads(d.dataset.profile)["num_rows"], d.dataset.source_type)
    digests = prepare_stage.split_digests(prepare(live["spec"]))  # a cache hit: the same prepared folder
    assert got == {s: (digests[s], live["summary"]["rows"][s], "local") for s in ("train", "valid", "test")}
    schema = json.loads(run.inputs.dataset_inputs[0].dataset.schema)["mlflow_colspec"]
    assert {c["name"]: c["type"] for c in schema}["I1"] == "double"


def test_model_version_signature_tags_and_models_show(live, monkeypatch, capsys):
    client = MlflowClient(live["uri"])
    spec, s = live["spec"], live["summary"]
    version = client.get_model_version("ctr-tiny", s["version"])
    assert version.tags["test_auc"] == f"{s['test']['auc']:.5f}" and "test_logloss" in version.tags
    assert version.tags["data_digest.test"] == s["data_digests"]["test"]
    assert version.tags["config"] == f"runs:/{s['run_id']}/config.yaml"
    info = mlflow.models.get_model_info(s["model_uri"])
    inputs = {c["name"]: c["type"] for c in info.signature.inputs.to_dict()}
    expected = {f.column: "double" if f.kind == "numeric" else "string" for f in spec.features.fields}
    assert inputs == expected
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["probability"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", live["uri"])
    capsys.readouterr()
    assert main(["models", "show", "ctr-tiny"]) == 0
    shown = capsys.readouterr().out
    assert s["run_id"] in shown and s["data_digests"]["valid"] in shown and "FINISHED" in shown
    assert "format: parquet" in shown  # the resolved config
    assert main(["models", "list"]) == 0
    assert f"{s['test']['logloss']:.5f}" in capsys.readouterr().out
    assert main(["models", "show", "ctr-tiny@nope"]) == 2


def test_resolve_refs(live):
    client = MlflowClient(live["uri"])
    assert str(resolve(client, "ctr-tiny").version) == str(resolve(client, "models:/ctr-tiny/1").version) == "1"
    for bad, needle in [("ctr-tiny/9", "no version 9"), ("nope", "no registered model"), ("a/b/c", "NAME/VERSION")]:
        with pytest.raises(CtrError, match=needle):
            resolve(client, bad)


def test_mlflow_models_predict_scores_example_and_rejects_mistyped_rows(live):
    from ctr.export.bundle import load_bundle

    s, tmp = live["summary"], live["tmp"]
    example = load_bundle(s["bundle"]).manifest["example"]["rows"]
    from pipelines.stages.register import typed_rows

    rows = typed_rows(live["spec"], example)
    env = {**os.environ, "MLFLOW_TRACKING_URI": live["uri"], "MLFLOW_DISABLE_TELEMETRY": "true"}

    def predict(records):
        src, dst = tmp / "in.json", tmp / "out.json"
        src.write_text(json.dumps({"dataframe_records": records}))
        return subprocess.run([str(MLFLOW), "models", "predict", "-m", s["model_uri"], "-i", str(src),
                               "-o", str(dst), "-t", "json", "--env-manager", "local"],
                              capture_output=True, text=True, env=env, check=False, cwd=tmp), dst

    proc, dst = predict(rows)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = np.array(json.loads(dst.read_text())["predictions"], dtype=np.float32)
    np.testing.assert_allclose(scores, load_bundle(s["bundle"]).score(example), atol=1e-6)
    bad = [dict(rows[0], I1="twelve")]
    proc, _ = predict(bad)
    assert proc.returncode != 0 and "I1" in proc.stderr


def _csv_spec(tmp: Path, test_lines: list[str]) -> Path:
    rng = np.random.default_rng(0)
    rows = [f"{int(rng.random() < 0.3)},{'xyz'[i % 3]},{i % 7},{rng.integers(0, 50)}" for i in range(400)]
    (tmp / "train.csv").write_text("label,a,b,n\n" + "\n".join(rows) + "\n")
    (tmp / "test.csv").write_text("label,a,b,n\n" + "\n".join(test_lines) + "\n")
    doc = {"name": "csvtiny", "description": "a csv pipeline",
           "data": {"format": "csv", "train": str(tmp / "train.csv"), "test": str(tmp / "test.csv"),
                    "cache_dir": str(tmp / "cache")},
           "features": {"label": "label", "fields": [{"name": "a"}, {"name": "b"},
                                                     {"name": "n", "kind": "numeric"}]},
           "model": {"name": "lr", "embedding_dim": 4},
           "train": {"epochs": 1, "batch_size": 64, "progress": False},
           "output": {"dir": str(tmp / "runs")}}
    path = tmp / "csvtiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_malformed_test_row_leaves_failed_run_with_error_and_log(tmp_path, tracking_uri):
    lines = ["1,x,3,4", "0,y,5", "1,z,2,8"]  # line 3 of the file has 3 fields
    spec = load_spec(_csv_spec(tmp_path, lines))
    with pytest.raises(DataError) as info:
        run_pipeline(spec, tracking_uri)
    (run,) = _runs(tracking_uri, "csvtiny")
    assert run.info.status == "FAILED" and run.info.end_time >= run.info.start_time
    tags = run.data.tags
    assert tags["ctr.error"] == str(info.value) and "test.csv line 3" in tags["ctr.error"]
    assert tags["ctr.error_type"] == "DataError" and tags["ctr.failed_stage"] == "prepare"
    logged = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/run.log")
    assert "prepare stage failed" in logged and "test.csv line 3" in logged


def test_register_disabled_writes_nothing(tmp_path):
    lines = ["1,x,3,4", "0,y,5,1", "1,z,2,8", "0,x,1,1"]
    spec = load_spec(_csv_spec(tmp_path, lines), ["register.enabled=false"])
    db = tmp_path / "never.db"
    summary = run_pipeline(spec, f"sqlite:///{db}")
    assert summary["run_id"] is None and summary["model_uri"] is None and summary["bundle"]
    assert not db.exists() and not (tmp_path / "mlartifacts").exists()


def test_sigterm_ends_the_run_killed(tmp_path, tracking_uri):
    doc = tiny_spec_dict(tmp_path / "synthetic.parquet", tmp_path)
    doc["train"].update(epochs=200, patience=200)
    spec_file = tmp_path / "long.yaml"
    spec_file.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    MlflowClient(tracking_uri).search_experiments()  # create the schema here, so polling never races a migration
    proc = subprocess.Popen([str(CTR), "run", str(spec_file)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            runs = _runs(tracking_uri, "tiny")
            if runs and "valid_auc" in runs[0].data.metrics:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]  # the stderr says why when it fails
    (run,) = _runs(tracking_uri, "tiny")
    assert run.info.status == "KILLED" and run.data.tags["ctr.failed_stage"] == "train"


def test_oracle_is_scored_on_the_prepared_test_rows(tiny_prepared):
    from ctr.data.prepare import load_split
    from ctr.data.synthetic import oracle_test_split
    from pipelines.stages.evaluate import oracle

    spec, prepared = tiny_prepared
    labels, probs = oracle_test_split(spec.data)
    np.testing.assert_array_equal(labels, load_split(prepared, "test").labels)
    metrics = oracle(spec, prepared)
    assert 0.7 < metrics["auc"] < 1.0
    other = build_spec({**spec.raw, "synthetic": None}, "tiny", "x.yaml")
    assert oracle(other, prepared) is None
