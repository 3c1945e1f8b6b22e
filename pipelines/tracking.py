"""MLflow tracking of one ``ctr run``: a run that lives as long as the pipeline, live metrics, lineage.

:class:`RunTracker` opens the run when the pipeline starts (status RUNNING) and closes it FINISHED,
FAILED (tags ``ctr.error`` / ``ctr.failed_stage``, the log as an artifact) or KILLED (Ctrl-C,
SIGTERM). Per-epoch metrics arrive through plain callbacks (``log_epoch`` / ``log_step``) with real
timestamps and ``step = epoch``; stages are timed as ``stage_seconds/<stage>``. With tracking
disabled (``register.enabled: false``) every method is a no-op and nothing touches MLflow.

MLflow is imported only here, in :mod:`pipelines.tracking_auth`, :mod:`pipelines.registry` and the pyfunc wrapper.
Default store: ``sqlite:///mlruns.db`` in the working directory with artifacts in ``mlartifacts/``
beside it; ``MLFLOW_TRACKING_URI`` overrides (read once, in :mod:`pipelines.cli`).
"""

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.tracking_auth import auth_errors

log = logging.getLogger("ctr.pipelines")

DEFAULT_URI = "sqlite:///mlruns.db"
PYFUNC_CODE = Path(__file__).with_name("mlflow_model.py")
STEP_FLUSH_EVERY = 100  # buffered per-step losses written in batches of this many (and at each epoch)
STEP_FLUSH_SECONDS = 10.0
RAW_TYPES = {"categorical": "string", "sequence": "string", "numeric": "double"}


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
    """Point MLflow at ``uri`` and return a client.

    For an HTTP server one cheap request checks the credentials first, so a missing login fails
    here with :class:`TrackingAuthError` rather than halfway through a pipeline.
    """
    _quiet()
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    if uri.startswith(("http://", "https://")):
        with auth_errors(uri):
            client.search_experiments(max_results=1)
    return client


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
        elif key.startswith("features.fields") or key == "description":
            continue
        else:
            out[key] = (json.dumps(v) if isinstance(v, list) else str(v))[:500]
    return out


def raw_input_columns(schema) -> list[tuple[str, str]]:
    """``(raw column, MLflow type)`` of every input field: categoricals and sequences are the strings
    the readers produce, numerics doubles (ints are accepted and upcast)."""
    out: dict[str, str] = {}
    for f in schema.fields:
        out.setdefault(f.column, RAW_TYPES[f.kind])
    return list(out.items())


def model_signature(schema):
    """Signature of the pyfunc: raw inputs by name and type → ``probability`` (float32 per row)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec(t, name) for name, t in raw_input_columns(schema)])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("float", "probability")]))


@dataclass
class DatasetInfo:
    """One split as the run's Datasets panel shows it (built by the prepare stage, no MLflow types).

    Args:
        name (str): dataset name (source file stem + split).
        context (str): ``train``, ``valid`` or ``test``.
        digest (str): digest derived from the prepare stage's content key.
        source (str): path or URI of the raw source file.
        columns (list[tuple[str, str]]): raw columns read and their MLflow types.
        profile (dict): row count and provenance (files, carved-from, encoded folder).
    """

    name: str
    context: str
    digest: str
    source: str
    columns: list[tuple[str, str]]
    profile: dict = field(default_factory=dict)


def _dataset(info: DatasetInfo):
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, Schema

    class SplitDataset(MetaDataset):
        @property
        def profile(self):
            return info.profile

        def to_dict(self):
            return {**super().to_dict(), "profile": json.dumps(info.profile)}

    schema = Schema([ColSpec(t, n) for n, t in info.columns])
    return SplitDataset(resolve_dataset_source(info.source), info.name, info.digest, schema)


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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:1000]


class RunTracker:
    """The MLflow run of one pipeline; every method is a no-op when ``enabled`` is false.

    Args:
        uri (str): tracking URI.
        enabled (bool): ``register.enabled`` of the spec.
    """

    def __init__(self, uri: str, enabled: bool = True) -> None:
        self.uri, self.enabled = uri, enabled
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.stage_name = ""
        self.stage_seconds: dict[str, float] = {}
        self.epochs_logged = 0
        self._steps: list = []
        self._last_flush = time.monotonic()
        self._client = None

    # lifecycle -------------------------------------------------------------------------------
    @contextmanager
    def run(self, experiment: str, run_name: str, tags: dict[str, str], description: str | None = None,
            log_file: Path | None = None):
        """Open the run (RUNNING); close it FINISHED, FAILED or KILLED with the log file attached."""
        if not self.enabled:
            yield self
            return
        self._start(experiment, run_name, tags, description)
        status, error = "FINISHED", None
        try:
            yield self
        except (KeyboardInterrupt, SystemExit) as exc:
            status, error = "KILLED", exc
            raise
        except BaseException as exc:
            status, error = "FAILED", exc
            raise
        finally:
            self._end(status, error, log_file)

    def _start(self, experiment: str, run_name: str, tags: dict[str, str], description: str | None) -> None:
        self._client = connect(self.uri)
        import mlflow

        with auth_errors(self.uri):
            self.experiment_id = ensure_experiment(self._client, experiment, self.uri)
            run = mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name, tags=tags,
                                   description=description or None)
        self.run_id = run.info.run_id
        log.info("MLflow run %s (experiment %r) is RUNNING at %s", self.run_id, experiment, self.uri)

    def _end(self, status: str, error: BaseException | None, log_file: Path | None) -> None:
        import mlflow

        try:
            self.flush()
            if error is not None:
                what = "interrupted" if status == "KILLED" else _one_line(error)
                self.set_tags({"ctr.error": what, "ctr.error_type": type(error).__name__,
                               "ctr.failed_stage": self.stage_name})
            if log_file is not None and Path(log_file).is_file():  # FileHandler flushes every record
                self._client.log_artifact(self.run_id, str(log_file))
        finally:
            mlflow.end_run(status=status)
        log.info("MLflow run %s ended %s", self.run_id, status)

    @contextmanager
    def stage(self, name: str):
        """Time a stage: tag ``ctr.stage`` while it runs, metric ``stage_seconds/<name>`` after."""
        self.stage_name = name
        self.set_tags({"ctr.stage": name})
        start = time.perf_counter()
        yield
        self.stage_seconds[name] = time.perf_counter() - start
        self.log_metrics({f"stage_seconds/{name}": self.stage_seconds[name]})

    # logging ---------------------------------------------------------------------------------
    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import RunTag

        self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, params: dict[str, str]) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Param

        items = list(params.items())
        for i in range(0, len(items), 90):
            self._client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[i:i + 90]])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Numeric values of ``metrics`` at ``step``, timestamped now."""
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(batch), 900):
            self._client.log_batch(self.run_id, metrics=batch[i:i + 900])

    def log_epoch(self, record: dict) -> None:
        """Training callback: one epoch's record (``epoch``, ``train_loss``, ``valid_*`` ...) at ``step = epoch``."""
        if self.run_id is None:
            return
        self.flush()
        self.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))
        self.epochs_logged += 1

    def log_step(self, step: int, loss: float) -> None:
        """Training callback: one step's loss as ``batch_loss`` (buffered, written in batches)."""
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        self._steps.append(Metric("batch_loss", float(loss), int(time.time() * 1000), int(step)))
        if len(self._steps) >= STEP_FLUSH_EVERY or time.monotonic() - self._last_flush > STEP_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.run_id is None or not self._steps:
            return
        steps, self._steps = self._steps, []
        self._client.log_batch(self.run_id, metrics=steps)
        self._last_flush = time.monotonic()

    def log_history(self, history: list[dict], step_losses: list[float]) -> None:
        """After training: log the history only if nothing arrived live (a runner without live reports)."""
        if self.run_id is None or self.epochs_logged:
            return
        for i, loss in enumerate(step_losses):
            self.log_step(i + 1, loss)
        for record in history:
            self.log_epoch(record)

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        if self.run_id is None:
            return
        if Path(path).is_dir():
            self._client.log_artifacts(self.run_id, str(path), subdir)
        else:
            self._client.log_artifact(self.run_id, str(path), subdir)

    def log_datasets(self, infos: list[DatasetInfo]) -> None:
        """``mlflow.log_input`` for every split (the run's Datasets panel)."""
        if self.run_id is None:
            return
        import mlflow

        for info in infos:
            mlflow.log_input(_dataset(info), context=info.context)

    def artifact_uri(self, path: str) -> str:
        return f"runs:/{self.run_id}/{path}"

    def log_model(self, bundle_dir: Path, model_name: str, schema, input_example: list[dict],
                  tags: dict[str, Any]) -> tuple[str, str]:
        """Log the bundle as a pyfunc (models-from-code, signature + input example) and register it.

        Returns ``(models:/<name>/<version>, version)``.
        """
        import mlflow
        import pandas as pd

        with auth_errors(self.uri):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PYFUNC_CODE),
                artifacts={"bundle": str(bundle_dir)},
                pip_requirements=_requirements(),
                signature=model_signature(schema),
                input_example=pd.DataFrame(input_example) if input_example else None,
                registered_model_name=model_name,
            )
            version = str(info.registered_model_version)
            for k, v in tags.items():
                self._client.set_model_version_tag(model_name, version, k, str(v))
        return f"models:/{model_name}/{version}", version


def _requirements() -> list[str]:
    import importlib.metadata as md

    names = ["torch", "torchrec", "fbgemm-gpu-cpu", "polars", "numpy", "pyarrow", "pydantic", "mlflow"]
    return [f"{n}=={md.version(n).split('+')[0]}" for n in names]
