"""The composition root of ``ctr run``: prepare → train → evaluate → register, one run folder each.

The MLflow run opens before ``prepare`` and closes after ``register`` (see
:class:`pipelines.tracking.RunTracker`): RUNNING while the pipeline works, then FINISHED, FAILED or
KILLED. Training reports each epoch (and each step's loss) through plain callbacks, so curves are
live. ``register.enabled: false`` writes nothing to MLflow.
"""

import dataclasses
import getpass
import json
import logging
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from ctr.embeddings.tables import embedding_param_count
from ctr.errors import CtrError
from ctr.search import is_search
from pipelines import search as search_runner
from pipelines.spec import PipelineSpec
from pipelines.stages import evaluate as evaluate_stage
from pipelines.stages import prepare as prepare_stage
from pipelines.stages import register as register_stage
from pipelines.stages import train as train_stage
from pipelines.tracking import RunTracker, flat_params, learning_curve_png

log = logging.getLogger("ctr.pipelines")
ENTRY_POINT = "ctr run"


def run_pipeline(spec: PipelineSpec, tracking_uri: str) -> dict:
    """Run every stage inside one MLflow run and return the summary (also ``<run dir>/summary.json``)."""
    start = time.perf_counter()
    run_dir = Path(spec.output.dir) / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{int(start * 1e3) % 1000:03d}"
    run_dir.mkdir(parents=True, exist_ok=True)
    tracker = RunTracker(tracking_uri, enabled=spec.register.enabled)
    experiment = spec.register.experiment or spec.name
    with _log_to(run_dir / "run.log") as log_file, _sigterm_as_interrupt(), \
            tracker.run(experiment, spec.name, source_tags(spec), spec.description, log_file):
        try:
            summary = _stages(spec, tracker, run_dir)
        except CtrError as exc:
            log.error("%s stage failed: %s", tracker.stage_name or "pipeline", exc)
            raise
        except KeyboardInterrupt:
            log.error("interrupted during the %s stage", tracker.stage_name or "pipeline")
            raise
        except Exception:
            log.exception("%s stage failed", tracker.stage_name or "pipeline")
            raise
        summary["stage_seconds"] = dict(tracker.stage_seconds)
        summary["seconds"] = time.perf_counter() - start
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        tracker.log_artifact(run_dir / "summary.json")
    return summary


def _stages(spec: PipelineSpec, tracker: RunTracker, run_dir: Path) -> dict:
    (run_dir / "config.yaml").write_text(yaml.safe_dump(spec.raw, sort_keys=False))
    params = flat_params({k: v for k, v in spec.raw.items() if k != "features"})
    tracker.log_params({**params, "features.count": str(len(spec.features.fields))})
    tracker.log_artifact(run_dir / "config.yaml")
    with tracker.stage("prepare"):
        prepared = prepare_stage.run(spec)
        tracker.log_datasets(prepare_stage.dataset_infos(spec, prepared))
        tracker.log_artifact(prepared.artifact_dir, "feature_map")
    full, search, marks = (spec, prepared), None, {}
    if is_search(spec.embedding):  # phases (nested MLflow runs) → the compact model (pipelines/search.py)
        spec, prepared, trained, search = search_runner.run_search_stage(spec, tracker, prepared, run_dir)
    else:
        with tracker.stage("train"):
            trained = train_stage.run(spec, prepared, run_dir, on_report=_marking(tracker.log_epoch, marks),
                                      on_step=tracker.log_step)
            tracker.log_history(trained.fit.history, trained.fit.step_losses)
            _log_training_artifacts(tracker, trained, run_dir)
    with tracker.stage("evaluate"):
        model, test = evaluate_stage.run(spec, prepared, trained.checkpoint_dir, run_dir)
        oracle = evaluate_stage.oracle(spec, prepared)
        tracker.log_metrics(_final_metrics(test, trained, oracle))
    baseline = _baseline(spec, tracker, prepared, run_dir) if spec.baseline is not None else None
    summary = _summary(spec, test, trained, prepared, run_dir, oracle, baseline)
    summary["embedding_params"] = embedding_param_count(model)
    summary.update(marks)
    tracker.log_metrics({"embedding_params": summary["embedding_params"]})
    if search is not None:
        summary["search"] = search
        if search_runner.search_config(full[0]).baseline:
            summary["baseline"] = search_runner.run_baseline(full[0], tracker, full[1], run_dir, evaluate_stage)
            search["embedding_params_ratio"] = summary["embedding_params"] / max(summary["baseline"]["embedding_params"], 1)
    with tracker.stage("register"):
        summary["bundle"] = str(register_stage.export(spec, model, prepared, run_dir))
        if tracker.run_id is not None:
            reg = register_stage.run(spec, tracker, Path(summary["bundle"]), test, _lineage(tracker, prepared))
            summary.update(reg, run_id=tracker.run_id, registered_model=spec.model_name)
    return summary


def _marking(on_report, marks: dict):
    """``on_report`` that also notes the wall-clock time (Unix seconds) the first epoch ended."""
    def report(record: dict) -> None:
        marks.setdefault("first_epoch_end_unix", time.time())
        on_report(record)
    return report


def _log_training_artifacts(tracker: RunTracker, trained, run_dir: Path) -> None:
    (run_dir / "sharding_plan.txt").write_text(trained.plan)
    (run_dir / "history.json").write_text(json.dumps(trained.fit.history, indent=2))
    tracker.log_artifact(run_dir / "sharding_plan.txt", "plan")
    tracker.log_artifact(run_dir / "history.json", "history")
    if trained.fit.history:
        tracker.log_artifact(learning_curve_png(trained.fit.history, run_dir / "learning_curve.png"), "plots")


def _final_metrics(test: dict, trained, oracle: dict | None) -> dict[str, float]:
    final = {f"test_{k}": v for k, v in test.items()}
    final.update({f"best_valid_{k}": v for k, v in trained.valid.items()})
    final["best_epoch"] = trained.fit.best_epoch
    final["train_examples_per_s"] = trained.fit.train_rows / max(trained.fit.train_seconds, 1e-9)
    final.update({f"oracle_test_{k}": v for k, v in (oracle or {}).items()})
    return final


def _baseline(spec: PipelineSpec, tracker: RunTracker, prepared, run_dir: Path) -> dict:
    """Train and score the ``baseline:`` model on the same splits (no export, no registration)."""
    with tracker.stage("baseline"):
        bspec = dataclasses.replace(spec, model=spec.baseline)
        bdir = run_dir / "baseline"
        bdir.mkdir(exist_ok=True)
        log.info("baseline: training %s on the same splits", spec.baseline.name)
        trained = train_stage.run(bspec, prepared, bdir)
        _, test = evaluate_stage.run(bspec, prepared, trained.checkpoint_dir, bdir)
        tracker.log_metrics({f"baseline_test_{k}": v for k, v in test.items()})
    return {"model": spec.baseline.name, "test": test, "best_epoch": trained.fit.best_epoch}


def _summary(spec: PipelineSpec, test: dict, trained, prepared, run_dir: Path, oracle, baseline) -> dict:
    return {
        "pipeline": spec.name,
        "model": spec.model.name,
        "embedding": spec.embedding.name,
        "test": test,
        "valid": trained.valid,
        "best_epoch": trained.fit.best_epoch,
        "epochs_run": len(trained.fit.history),
        "train_examples_per_s": trained.fit.train_rows / max(trained.fit.train_seconds, 1e-9),
        "workers": trained.world_size,
        "rows": prepared.rows,
        "data_digests": prepare_stage.split_digests(prepared),
        "baseline": baseline,
        "oracle": {"test": oracle} if oracle else None,
        "run_dir": str(run_dir),
        "bundle": None,
        "model_uri": None,
        "run_id": None,
        "registered_model": None,
        "version": None,
    }


def _lineage(tracker: RunTracker, prepared) -> dict[str, str]:
    digests = prepare_stage.split_digests(prepared)
    return {"data_digest": prepare_stage.data_key(prepared)[:16],
            **{f"data_digest.{split}": d for split, d in digests.items()},
            "feature_hash": prepared.artifact.content_hash,
            "config": tracker.artifact_uri("config.yaml"),
            "feature_map": tracker.artifact_uri("feature_map")}


def source_tags(spec: PipelineSpec) -> dict[str, str]:
    """MLflow source tags: the pipeline file, ``ctr run``, the user and the git commit of the file's repo."""
    tags = {"mlflow.source.name": spec.source, "mlflow.source.type": "LOCAL",
            "mlflow.project.entryPoint": ENTRY_POINT, "mlflow.user": _user(),
            "ctr.pipeline": spec.name, "ctr.model": spec.model.name, "ctr.source": spec.source}
    commit = git_commit(Path(spec.source).resolve().parent)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def git_commit(folder: Path) -> str | None:
    """HEAD of the git repository holding ``folder``, or ``None`` (no repository, no git)."""
    if not folder.is_dir():
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


@contextmanager
def _log_to(path: Path):
    """Copy this process's log records (``ctr`` at INFO, others at WARNING) into ``path``."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    ours = logging.getLogger("ctr")
    old_level = ours.level
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
        ours.setLevel(old_level)


@contextmanager
def _sigterm_as_interrupt():
    """In the main thread, SIGTERM raises ``KeyboardInterrupt`` so the run ends KILLED, not orphaned RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
