"""Shared fixtures: tiny real datasets written to temp dirs, the shared data folder, MLflow stores."""

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    return Path(os.environ.get("CTR_SHARED_DATA", REPO.parent / "shared" / "data"))


def require_shared(*parts: str) -> Path:
    path = shared_data().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared dataset not found at {path} (set CTR_SHARED_DATA)")
    return path


TINY_FIELDS = [{"name": f"C{i}"} for i in range(1, 27)] + [
    {"name": f"I{i}", "kind": "numeric", "transform": "log_square"} for i in range(1, 14)]


def tiny_spec_dict(data_path: Path, out_dir: Path, model: dict | None = None) -> dict:
    """A small but real pipeline over synthetic Criteo-like Parquet (26 categorical + 13 numeric fields)."""
    return {
        "name": "tiny",
        "synthetic": {"rows": 6000, "seed": 3, "max_cardinality": 500},
        "data": {"format": "parquet", "train": str(data_path), "split": {"ratios": [0.8, 0.1, 0.1], "seed": 1},
                 "cache_dir": str(out_dir / "cache")},
        "features": {"label": "label", "min_count": 2, "fields": TINY_FIELDS},
        "model": model or {"name": "deepfm", "embedding_dim": 8, "dnn_hidden": [32, 16]},
        "train": {"epochs": 2, "batch_size": 256, "eval_batch_size": 1024, "patience": 1, "progress": False,
                  "optimizer": {"lr": 0.003, "sparse_lr": 0.05}},
        "output": {"dir": str(out_dir / "runs")},
        "register": {"model_name": "ctr-tiny"},
    }


@pytest.fixture
def tiny_spec_file(tmp_path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(tiny_spec_dict(tmp_path / "synthetic.parquet", tmp_path)))
    return p


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
    """Synthetic data prepared once per session: (spec, PreparedData)."""
    from pipelines.spec import build_spec
    from pipelines.stages import prepare as prepare_stage

    root = tmp_path_factory.mktemp("tiny")
    spec = build_spec(tiny_spec_dict(root / "synthetic.parquet", root), "tiny", "tiny.yaml")
    return spec, prepare_stage.run(spec)


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlruns.db'}"
