"""Serving fixtures: bundles of every model built on the session's tiny synthetic data, raw request rows."""

from pathlib import Path

import pytest
import torch

from ctr.data.readers import read_file
from ctr.embeddings import parse_embedding_config
from ctr.export.bundle import save_bundle
from ctr.models import build_model, parse_model_config

MODEL_CONFIGS = {
    "lr": {"name": "lr"},
    "fm": {"name": "fm", "embedding_dim": 8},
    "dnn": {"name": "dnn", "embedding_dim": 8, "dnn_hidden": [32, 16]},
    "deepfm": {"name": "deepfm", "embedding_dim": 8, "dnn_hidden": [32, 16]},
    "autoint": {"name": "autoint", "embedding_dim": 8, "attention_layers": 2, "attention_dim": 8},
    "autoint_plus": {"name": "autoint_plus", "embedding_dim": 8, "attention_layers": 2, "attention_dim": 8,
                     "dnn_hidden": [32]},
}

# random init scales that keep each model's scores spread over (0, 1) without saturating
INIT_STD = {"lr": 0.1, "fm": 0.03, "dnn": 0.2, "deepfm": 0.03, "autoint": 0.1, "autoint_plus": 0.1}


@pytest.fixture(scope="session")
def raw_rows(tiny_prepared) -> list[dict]:
    """500 raw rows (feature columns only, as a client would send them) of the tiny synthetic data."""
    spec, _ = tiny_prepared
    frame = read_file(spec.data.train, spec.data, spec.features.raw_columns).head(500)
    return frame.select([f.column for f in spec.features.fields]).to_dicts()


def make_bundle(tiny_prepared, raw_rows, out: Path, model: str = "deepfm", seed: int = 0,
                init_std: float | None = None) -> Path:
    """A bundle of ``model`` with random weights large enough that scores spread over (0, 1)."""
    spec, prepared = tiny_prepared
    torch.manual_seed(seed)
    init_std = INIT_STD[model] if init_std is None else init_std
    model_cfg = parse_model_config(MODEL_CONFIGS[model])
    emb_cfg = parse_embedding_config({"name": "plain", "init_std": init_std})
    net = build_model(model_cfg, prepared.artifact.layout(), emb_cfg)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "embedding_bags" in name:
                p.uniform_(-init_std * 3 ** 0.5, init_std * 3 ** 0.5)
    net.eval()
    return save_bundle(net, model_cfg, emb_cfg, prepared.artifact, out, raw_rows[:4])


@pytest.fixture(scope="session")
def bundle_factory(tiny_prepared, raw_rows, tmp_path_factory):
    cache: dict = {}

    def get(model: str = "deepfm", seed: int = 0) -> Path:
        if (model, seed) not in cache:
            cache[(model, seed)] = make_bundle(tiny_prepared, raw_rows,
                                               tmp_path_factory.mktemp(f"bundle-{model}-{seed}"), model, seed)
        return cache[(model, seed)]

    return get


PYFUNC_CODE = Path(__file__).resolve().parents[2] / "pipelines" / "mlflow_model.py"


def register_bundle(tracking_uri: str, name: str, bundle_dir: Path) -> str:
    """Log ``bundle_dir`` as a version of registered model ``name`` the way ``ctr run`` does; returns the version."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    exp = client.get_experiment_by_name("serving-tests")
    exp_id = exp.experiment_id if exp else client.create_experiment(
        "serving-tests", artifact_location=(db.parent / "artifacts").as_uri())  # never ./mlruns in the repo
    with mlflow.start_run(experiment_id=exp_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(PYFUNC_CODE),
                                       artifacts={"bundle": str(bundle_dir)}, registered_model_name=name,
                                       pip_requirements=["ctr"])
    return str(info.registered_model_version)
