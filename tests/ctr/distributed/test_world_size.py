"""Ray Train workers vs one process: same trajectory, same test AUC; kill → resume; reshard 2 → 1 and 3."""

import dataclasses
import os
import signal
import time

import numpy as np
import pytest

from ctr.data.loader import BatchIterator, rank_rows
from ctr.data.prepare import load_split
from ctr.distributed.worker import run_worker
from ctr.export.bundle import model_from_checkpoint
from ctr.train.evaluate import evaluate
from pipelines.stages.train import make_job

pytestmark = pytest.mark.slow
TRAIN = {"epochs": 3, "batch_size": 128, "patience": 3, "checkpoint_every": 10}


def _spec(spec, **train):
    return dataclasses.replace(spec, train=spec.train.model_copy(update={**TRAIN, **train}))


def _ray(job, workers, storage, **kw):
    from pipelines.ray_runner import RayRun, train_on_ray

    run = RayRun(workers=workers, storage=str(storage), max_failures=kw.pop("max_failures", 0), **kw)
    reports, steps = [], []
    result = train_on_ray(job, run, reports.append, lambda s, loss: steps.append((s, loss)))
    return result, run, reports, steps


def _test_auc(spec, prepared, checkpoint_dir):
    model = model_from_checkpoint(spec.model, spec.embedding, prepared.artifact, checkpoint_dir)
    return evaluate(model, BatchIterator(load_split(prepared, "test"), 1024, shuffle=False, seed=0))["auc"]


@pytest.fixture(scope="module")
def clean_runs(tiny_prepared, ray_cluster, tmp_path_factory):
    spec, prepared = tiny_prepared
    spec = _spec(spec)
    tmp = tmp_path_factory.mktemp("ws")
    one = run_worker(make_job(spec, prepared, tmp / "ws1"))
    two, run, reports, steps = _ray(make_job(spec, prepared, tmp / "ws2"), 2, tmp / "ray2")
    return spec, prepared, one, two, run, reports, steps


def test_two_ray_workers_match_one_process(clean_runs):
    spec, prepared, one, two, run, reports, steps = clean_runs
    a, b = np.array(one.fit.step_losses), np.array(two.fit.step_losses)
    assert len(a) == len(b) > 100
    assert one.valid["auc"] > 0.55  # it learns
    np.testing.assert_allclose(a, b, atol=2e-3, rtol=0)
    assert two.world_size == 2 and "rank:1" in two.plan and "rank:0" in two.plan  # tables on both workers
    # each worker read and held only its own share of every split
    for split in ("train", "valid"):
        assert one.rows_read[split] == prepared.rows[split]
        assert two.rows_read[split] == rank_rows(prepared.rows[split], 0, 2)[1] < 0.55 * prepared.rows[split]
    # evaluation gathers every worker's predictions: the unsharded model agrees with the gathered metric
    valid = evaluate(model_from_checkpoint(spec.model, spec.embedding, prepared.artifact, two.checkpoint_dir),
                     BatchIterator(load_split(prepared, "valid"), 1024, shuffle=False, seed=0))
    assert valid["auc"] == pytest.approx(two.valid["auc"], abs=1e-6)
    assert valid["rows"] == two.valid["rows"] == prepared.rows["valid"]
    assert abs(_test_auc(spec, prepared, two.checkpoint_dir) - _test_auc(spec, prepared, one.checkpoint_dir)) < 0.003


def test_reports_reach_the_driver_live(clean_runs):
    *_, two, run, reports, steps = clean_runs
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    assert [r["valid_auc"] for r in reports] == [h["valid_auc"] for h in two.fit.history]
    assert [s for s, _ in steps] == list(range(1, len(two.fit.step_losses) + 1))
    assert len(run.checkpoints) == 2 and all(os.path.isdir(c) for c in run.checkpoints)


def test_killed_worker_resumes_and_finishes_like_a_clean_run(clean_runs, tmp_path):
    spec, prepared, _, clean, *_ = clean_runs
    workers, killed = {}, []

    def on_worker(info):
        workers[info["rank"]] = info["pid"]

    def on_step(step, loss):
        if step >= 25 and not killed and 1 in workers:
            os.kill(workers[1], signal.SIGKILL)
            killed.append((step, time.time()))

    from pipelines.ray_runner import RayRun, train_on_ray

    run = RayRun(workers=2, storage=str(tmp_path / "ray"), max_failures=2, on_worker=on_worker)
    got = train_on_ray(make_job(spec, prepared, tmp_path / "run"), run, None, on_step)
    assert killed, "the worker was never killed"
    assert got.resumed_from is not None  # the second attempt started from a checkpoint
    np.testing.assert_allclose(got.fit.step_losses, clean.fit.step_losses, atol=1e-4, rtol=0)
    assert got.valid["auc"] == pytest.approx(clean.valid["auc"], abs=1e-4)
    assert got.fit.best_epoch == clean.fit.best_epoch


def test_checkpoint_of_two_workers_resumes_on_one_and_three(clean_runs, tmp_path):
    spec, prepared, _, two, run, *_ = clean_runs
    last = max(run.checkpoints, key=os.path.getmtime)
    loaded = run_worker(dataclasses.replace(make_job(spec, prepared, tmp_path / "r0"), resume_from=last))
    # no epochs left: the 1-process model is exactly the 2-worker weights
    assert loaded.fit.epochs_done == 3 and len(loaded.fit.history) == 3
    raw = evaluate(model_from_checkpoint(spec.model, spec.embedding, prepared.artifact, last),
                   BatchIterator(load_split(prepared, "valid"), 1024, shuffle=False, seed=0))
    again = evaluate(model_from_checkpoint(spec.model, spec.embedding, prepared.artifact, loaded.checkpoint_dir),
                     BatchIterator(load_split(prepared, "valid"), 1024, shuffle=False, seed=0))
    assert again["auc"] == pytest.approx(raw["auc"], abs=1e-7)
    more = _spec(spec, epochs=4)
    one = run_worker(dataclasses.replace(make_job(more, prepared, tmp_path / "r1"), resume_from=last))
    three, *_ = _ray(dataclasses.replace(make_job(more, prepared, tmp_path / "r3"), resume_from=last), 3,
                     tmp_path / "ray3")
    a, b = np.array(one.fit.step_losses[-38:]), np.array(three.fit.step_losses[-38:])
    assert len(one.fit.step_losses) == len(three.fit.step_losses) == len(two.fit.step_losses) + 38
    assert a[0] == pytest.approx(b[0], abs=1e-4)  # same weights loaded at both world sizes
    np.testing.assert_allclose(a, b, atol=2e-3, rtol=0)  # and the same optimizer state carried on
    assert three.world_size == 3 and "rank:2" in three.plan
