"""The composition root of ``ctr run``: prepare → train → evaluate → register, one run folder each."""

import json
import logging
import time
from pathlib import Path

from pipelines.spec import PipelineSpec
from pipelines.stages import evaluate as evaluate_stage
from pipelines.stages import prepare as prepare_stage
from pipelines.stages import register as register_stage
from pipelines.stages import train as train_stage

log = logging.getLogger("ctr.pipelines")


def run_pipeline(spec: PipelineSpec, tracking_uri: str) -> dict:
    """Run every stage and return the summary (also written to ``<run dir>/summary.json``)."""
    start = time.perf_counter()
    run_dir = Path(spec.output.dir) / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{int(start * 1e3) % 1000:03d}"
    run_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare_stage.run(spec)
    trained = train_stage.run(spec, prepared, run_dir)
    model, test = evaluate_stage.run(spec, prepared, trained.checkpoint_dir, run_dir)
    bundle_dir = register_stage.export(spec, model, prepared, run_dir)
    summary = {
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
        "run_dir": str(run_dir),
        "bundle": str(bundle_dir),
        "model_uri": None,
        "run_id": None,
        "registered_model": None,
        "version": None,
    }
    if spec.register.enabled:
        reg = register_stage.run(spec, tracking_uri, run_dir, bundle_dir, trained, test, prepared)
        summary.update(reg, registered_model=spec.model_name)
    summary["seconds"] = time.perf_counter() - start
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
