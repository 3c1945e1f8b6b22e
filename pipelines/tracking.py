"""MLflow run logging: params, per-epoch metrics, artifacts, learning curve, and the pyfunc model.

MLflow is imported only here, in :mod:`pipelines.registry` and in the pyfunc wrapper.
Default store: ``sqlite:///mlruns.db`` in the working directory with artifacts in ``mlartifacts/``
beside it; ``MLFLOW_TRACKING_URI`` overrides (read once, in :mod:`pipelines.cli`).
"""

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("ctr.pipelines")

DEFAULT_URI = "sqlite:///mlruns.db"
PYFUNC_CODE = Path(__file__).with_name("mlflow_model.py")


def _quiet() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def artifact_root_for(uri: str) -> str | None:
    """For a sqlite store, keep artifacts in ``mlartifacts/`` beside the database file."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):]).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


def connect(uri: str):
    """Point MLflow at ``uri`` and return a client."""
    _quiet()
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def ensure_experiment(client, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root_for(uri))


def flat_params(raw: dict, prefix: str = "") -> dict[str, str]:
    """Nested config → ``section.key`` params (lists JSON-encoded, long values truncated)."""
    out: dict[str, str] = {}
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_params(v, key + "."))
        elif key.startswith("features.fields"):
            continue
        else:
            out[key] = (json.dumps(v) if isinstance(v, list) else str(v))[:500]
    return out


def learning_curve_png(history: list[dict], path: Path) -> Path:
    """Train loss and validation AUC/logloss per epoch as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    a.plot(epochs, [h["valid_logloss"] for h in history], "s-", label="valid logloss")
    a.set_xlabel("epoch")
    a.legend()
    b.plot(epochs, [h["valid_auc"] for h in history], "o-", color="tab:green", label="valid AUC")
    b.set_xlabel("epoch")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_run(uri: str, experiment: str, run_name: str, params: dict[str, str], history: list[dict],
            final_metrics: dict[str, float], artifacts: dict[str, Path], tags: dict[str, str]) -> str:
    """Create one MLflow run with params, per-epoch and final metrics and artifact files; returns its id."""
    client = connect(uri)
    from mlflow.entities import Metric, Param

    exp_id = ensure_experiment(client, experiment, uri)
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    rid = run.info.run_id
    items = list(params.items())
    for i in range(0, len(items), 90):
        client.log_batch(rid, params=[Param(k, v) for k, v in items[i:i + 90]])
    metrics = [Metric(k, float(v), 0, h["epoch"]) for h in history for k, v in h.items()
               if k != "epoch" and isinstance(v, (int, float))]
    metrics += [Metric(k, float(v), 0, 0) for k, v in final_metrics.items()]
    for i in range(0, len(metrics), 900):
        client.log_batch(rid, metrics=metrics[i:i + 900])
    for sub, path in artifacts.items():
        if Path(path).is_dir():
            client.log_artifacts(rid, str(path), sub)
        else:
            client.log_artifact(rid, str(path), sub or None)
    client.set_terminated(rid)
    return rid


def log_and_register_model(uri: str, run_id: str, bundle_dir: Path, model_name: str,
                           tags: dict[str, Any]) -> tuple[str, str]:
    """Log the bundle as an MLflow pyfunc (models-from-code: nothing pickled) and register a version.

    Returns ``(models:/<name>/<version>, version)``.
    """
    connect(uri)
    import mlflow

    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts={"bundle": str(bundle_dir)},
            pip_requirements=_requirements(),
            registered_model_name=model_name,
        )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient(tracking_uri=uri)
    for k, v in tags.items():
        client.set_model_version_tag(model_name, version, k, str(v))
    return f"models:/{model_name}/{version}", version


def _requirements() -> list[str]:
    import importlib.metadata as md

    names = ["torch", "torchrec", "fbgemm-gpu-cpu", "polars", "numpy", "pyarrow", "pydantic", "mlflow"]
    return [f"{n}=={md.version(n).split('+')[0]}" for n in names]
