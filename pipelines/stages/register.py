"""Stage 4: export the serving bundle, log the run to MLflow and register a new model version."""

import json
import logging
from pathlib import Path

import yaml

from ctr.data.readers import read_file
from ctr.export.bundle import save_bundle
from pipelines import tracking

log = logging.getLogger("ctr.pipelines")
EXAMPLE_ROWS = 4


def example_rows(spec) -> list[dict]:
    """A few raw rows (feature columns only) from the test (else train) source for the bundle manifest."""
    source = spec.data.test or spec.data.train
    path = source if isinstance(source, str) else source[0]
    wanted = spec.features.raw_columns
    frame = read_file(path, spec.data, wanted).head(EXAMPLE_ROWS)
    fields = [f.column for f in spec.features.fields]
    return frame.select([c for c in fields if c in frame.columns]).to_dicts()


def export(spec, model, prepared, run_dir: Path) -> Path:
    return save_bundle(model, spec.model, spec.embedding, prepared.artifact, run_dir / "bundle", example_rows(spec))


def run(spec, uri: str, run_dir: Path, bundle_dir: Path, trained, test: dict, prepared) -> dict:
    """Log params/metrics/artifacts, register the model; returns ``{"run_id", "model_uri", "version"}``."""
    (run_dir / "config.yaml").write_text(yaml.safe_dump(spec.raw, sort_keys=False))
    (run_dir / "sharding_plan.txt").write_text(trained.plan)
    (run_dir / "history.json").write_text(json.dumps(trained.fit.history, indent=2))
    artifacts = {"": run_dir / "config.yaml", "plan": run_dir / "sharding_plan.txt",
                 "feature_map": Path(prepared.artifact_dir), "history": run_dir / "history.json"}
    if trained.fit.history:
        artifacts["plots"] = tracking.learning_curve_png(trained.fit.history, run_dir / "learning_curve.png")
    final = {f"test_{k}": v for k, v in test.items()}
    final.update({f"best_valid_{k}": v for k, v in trained.valid.items()})
    final["best_epoch"] = trained.fit.best_epoch
    final["train_examples_per_s"] = trained.fit.train_rows / max(trained.fit.train_seconds, 1e-9)
    params = tracking.flat_params({k: v for k, v in spec.raw.items() if k != "features"})
    params["features.count"] = str(len(spec.features.fields))
    tags = {"ctr.pipeline": spec.name, "ctr.model": spec.model.name, "ctr.source": spec.source}
    run_id = tracking.log_run(uri, spec.register.experiment or spec.name, spec.name, params,
                              trained.fit.history, final, artifacts, tags)
    model_uri, version = tracking.log_and_register_model(
        uri, run_id, bundle_dir, spec.model_name,
        {"test_auc": f"{test.get('auc', float('nan')):.5f}", "model": spec.model.name, "run_id": run_id})
    if spec.register.alias:
        from pipelines.registry import promote

        promote(uri, spec.model_name, version, spec.register.alias)
    log.info("registered %s version %s (%s)", spec.model_name, version, model_uri)
    return {"run_id": run_id, "model_uri": model_uri, "version": version}
