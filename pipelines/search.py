"""The phase runner of search methods (``embedding.name`` in :data:`ctr.search.SEARCHES`).

``run_search`` replaces the train stage: it runs the method's phases in order, each as a nested MLflow
run (tag ``mlflow.parentRunId``) under the pipeline's run, named ``<pipeline>/<phase>``, with the phase's
metrics, per-epoch curves and artifacts. Every phase writes ``<phases dir>/<name>/outputs.json`` and a
``done.json`` marker; with ``search.resume_from: <earlier run dir>`` the finished phases of that run are
reused and the first unfinished one runs again. The last phase's :class:`~ctr.search.CompactResult` becomes
the spec (``embedding:`` of the compact model) and prepared data (compact artifact, remapped splits) that
the evaluate and register stages use, unchanged.

``search.baseline`` (default true) trains the full backbone (``plain`` embedding, the same ``model:`` and
``train:``) on the original splits in the same run, for the summary's ``baseline`` entry.
"""

import dataclasses
import json
import logging
import time
from pathlib import Path

from ctr.config import StrictConfig
from ctr.data.prepare import PreparedData
from ctr.distributed.worker import WorkerJob, WorkerResult
from ctr.embeddings import PlainEmbeddingConfig, parse_embedding_config
from ctr.features.artifact import FeatureArtifact
from ctr.search import SEARCHES, CompactResult, PhaseContext, TrainRequest
from ctr.train.loop import FitResult
from pipelines.stages import train as train_stage

log = logging.getLogger("ctr.pipelines")


class SearchConfig(StrictConfig):
    """YAML ``search:`` (only read when ``embedding:`` names a search method).

    Args:
        baseline (bool): also train the full backbone with the same budget and report it.
        resume_from (str | None): an earlier run folder of the same pipeline whose finished phases are reused.
    """

    baseline: bool = True
    resume_from: str | None = None


class ChildRun:
    """A nested MLflow run (tag ``mlflow.parentRunId``) of a pipeline's run, e.g. one phase of a search;
    every method is a no-op when the parent run is disabled. Close it with :meth:`end`."""

    def __init__(self, tracker, name: str, params: dict[str, str]) -> None:
        self.tracker, self.run_id = tracker, None
        if tracker.run_id is None:
            return
        client = tracker._client
        run = client.create_run(tracker.experiment_id, run_name=name,
                                tags={"mlflow.parentRunId": tracker.run_id, "ctr.phase": name.rsplit("/", 1)[-1]})
        self.run_id = run.info.run_id
        for key, value in params.items():
            client.log_param(self.run_id, key, value)

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        if self.run_id is None:
            return
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tracker._client.log_metric(self.run_id, key, float(value), now, step)

    def log_epoch(self, record: dict) -> None:
        self.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))

    def log_artifact(self, path, subdir: str | None = None) -> None:
        if self.run_id is None:
            return
        path = Path(path)
        if path.is_dir():
            self.tracker._client.log_artifacts(self.run_id, str(path), subdir)
        else:
            self.tracker._client.log_artifact(self.run_id, str(path), subdir)

    def end(self, status: str) -> None:
        if self.run_id is not None:
            self.tracker._client.set_terminated(self.run_id, status)


def search_config(spec) -> SearchConfig:
    return SearchConfig.parse(spec.raw.get("search"), "search")


def run_search(spec, tracker, prepared: PreparedData, run_dir: Path):
    """Run every phase; returns ``(compact spec, compact prepared data, CompactResult)``."""
    cfg = search_config(spec)
    phases = SEARCHES[spec.embedding.name](spec.embedding)
    here = Path(run_dir).resolve() / "phases"
    earlier = Path(cfg.resume_from).resolve() / "phases" if cfg.resume_from else None
    previous: dict[str, dict] = {}
    params = {"phase.method": spec.embedding.name, "phase.model": spec.model.name}
    for phase in phases:
        pdir = here / phase.name
        done = _finished(earlier / phase.name) if earlier is not None else None
        if done is not None:
            log.info("phase %s: reusing the finished phase of %s", phase.name, cfg.resume_from)
            previous[phase.name] = done
            pdir.mkdir(parents=True, exist_ok=True)
            (pdir / "reused_from.txt").write_text(str(earlier / phase.name))
            continue
        earlier = None  # from the first unfinished phase on, everything runs again
        pdir.mkdir(parents=True, exist_ok=True)
        record = ChildRun(tracker, f"{spec.name}/{phase.name}", params)
        status = "FAILED"
        try:
            with tracker.stage(f"search/{phase.name}"):
                ctx = PhaseContext(spec.model, spec.embedding, spec.train, prepared.artifact_dir.resolve(),
                                   {k: Path(v).resolve() for k, v in prepared.split_paths.items()}, pdir,
                                   dict(previous), _trainer(spec, pdir, record), record.log_metrics,
                                   record.log_artifact)
                out = phase.run(ctx)
            (pdir / "outputs.json").write_text(json.dumps(out, indent=2, default=str))
            (pdir / "done.json").write_text(json.dumps({"phase": phase.name, "finished": time.time()}))
            record.log_artifact(pdir / "outputs.json")
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            record.end(status)
        previous[phase.name] = out
    result = CompactResult.from_json(previous[phases[-1].name])
    return _compact_spec(spec, result), _compact_prepared(prepared, result), result


def _finished(pdir: Path) -> dict | None:
    if (pdir / "done.json").is_file() and (pdir / "outputs.json").is_file():
        return json.loads((pdir / "outputs.json").read_text())
    return None


def _trainer(spec, pdir: Path, record):
    def train(req: TrainRequest):
        job = WorkerJob(model_cfg=req.model_cfg or spec.model, embedding_cfg=req.embedding_cfg,
                        train_cfg=req.train_cfg, sharding_cfg=spec.distributed.sharding,
                        artifact_dir=str(req.artifact_dir), splits=dict(req.splits), out_dir=str(req.out_dir),
                        device=spec.distributed.device, init_from=req.init_from,
                        snapshot_epochs=tuple(req.snapshot_epochs), restore_best=req.restore_best,
                        freeze_dense=req.freeze_dense, validate_start=req.validate_start)

        def on_report(rec: dict) -> None:
            record.log_epoch(rec)
            if req.on_report is not None:
                req.on_report(rec)
        return train_stage.run_job(job, spec, pdir, on_report=on_report)
    return train


def _compact_spec(spec, result: CompactResult):
    return dataclasses.replace(spec, embedding=parse_embedding_config(result.embedding, "embedding"))


def _compact_prepared(prepared: PreparedData, result: CompactResult) -> PreparedData:
    artifact_dir = Path(result.artifact_dir)
    if artifact_dir.name != "features":
        raise ValueError(f"compact artifact folder must be named 'features', got {artifact_dir}")
    marker = prepared.root / "prepared.json"  # same inputs: the compact data keeps the data key and digests
    if marker.is_file():
        (artifact_dir.parent / "prepared.json").write_text(marker.read_text())
    return PreparedData(artifact_dir.parent, FeatureArtifact.load(artifact_dir),
                        {k: Path(v) for k, v in result.splits.items()}, dict(prepared.rows))


def baseline_spec(spec):
    """The full backbone: the same model and training budget with plain tables (the method's plain options),
    or the method's own ``baseline()`` embedding where it has one (``unified_optfs``: ungated ``unified``)."""
    emb = spec.embedding
    if callable(getattr(emb, "baseline", None)):
        return dataclasses.replace(spec, embedding=emb.baseline())
    plain = PlainEmbeddingConfig(init_std=getattr(emb, "init_std", 0.01), l2=getattr(emb, "l2", 0.0),
                                 mba_l2=getattr(emb, "mba_l2", 0.0))
    return dataclasses.replace(spec, embedding=plain)


def kept_epoch(history: list[dict], valid: dict) -> int:
    """The epoch whose validation metrics are the kept model's (``valid``): 0 when the starting weights were
    kept (``validate_start``: no trained epoch has them), -1 without metrics.

    Example::

        >>> h = [{"epoch": 1, "valid_auc": 0.7, "valid_logloss": 0.5}, {"epoch": 2, "valid_auc": 0.8, "valid_logloss": 0.9}]
        >>> kept_epoch(h, {"auc": 0.7, "logloss": 0.5}), kept_epoch(h, {"auc": 0.75, "logloss": 0.4}), kept_epoch(h, {})
        (1, 0, -1)
    """
    if not valid:
        return -1
    for record in history:
        if all(record.get(f"valid_{k}") == v for k, v in valid.items() if k in ("auc", "logloss")):
            return int(record["epoch"])
    return 0


def trained_of(result: CompactResult, world_size: int) -> WorkerResult:
    """The compact model's training outcome in the shape the evaluate/summary code reads."""
    history = result.history
    fit = FitResult(history=history, best_epoch=kept_epoch(history, result.valid), best=dict(result.valid),
                    train_rows=int(sum(r["examples_per_s"] * r["epoch_seconds"] for r in history)),
                    train_seconds=float(sum(r["epoch_seconds"] for r in history)), epochs_done=len(history))
    return WorkerResult(fit, dict(result.valid), "", result.checkpoint_dir, world_size)


def run_search_stage(spec, tracker, prepared: PreparedData, run_dir: Path):
    """The train stage of a search pipeline: phases, then the compact model as the pipeline's model.

    Returns ``(compact spec, compact prepared, trained, search summary)``; logs the compact feature map.
    """
    compact_spec, compact, result = run_search(spec, tracker, prepared, run_dir)
    tracker.log_artifact(compact.artifact_dir, "feature_map_compact")
    trained = trained_of(result, max(spec.distributed.workers, 1))
    tracker.log_history(trained.fit.history, [])
    summary = {"method": spec.embedding.name, "phases": [p.name for p in SEARCHES[spec.embedding.name](spec.embedding)],
               **result.extra}
    return compact_spec, compact, trained, summary


def run_baseline(spec, tracker, prepared: PreparedData, run_dir: Path, evaluate_stage) -> dict:
    """The full backbone with the same budget: ``{test: {auc, logloss}, embedding_params, valid}``."""
    from ctr.embeddings.tables import embedding_param_count

    bspec = baseline_spec(spec)
    bdir = Path(run_dir) / "baseline"
    bdir.mkdir(exist_ok=True)
    with tracker.stage("baseline"):
        record = ChildRun(tracker, f"{spec.name}/baseline", {"phase.model": spec.model.name})
        status = "FAILED"
        try:
            trained = train_stage.run(bspec, prepared, bdir, on_report=record.log_epoch)
            model, test = evaluate_stage.run(bspec, prepared, trained.checkpoint_dir, bdir)
            params = embedding_param_count(model)
            record.log_metrics({**{f"test_{k}": v for k, v in test.items()}, "embedding_params": params})
            status = "FINISHED"
        finally:
            record.end(status)
        tracker.log_metrics({**{f"baseline_test_{k}": v for k, v in test.items()},
                             "baseline_embedding_params": params})
    return {"model": spec.model.name, "embedding": bspec.embedding.name, "test": test, "embedding_params": params,
            "valid": trained.valid, "best_epoch": trained.fit.best_epoch}
