"""Mechanical checks of the layout rules that import-linter cannot express."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["ctr", "pipelines", "serving"]
MAX_LINES = 400


def _py_files():
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if "_proto" not in path.parts:
                yield path


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_ctr_distributed_imports_torchrec_distributed():
    offenders = [str(p.relative_to(ROOT)) for p in _py_files()
                 if any(m.startswith("torchrec.distributed") for m in _imports(p))
                 and "ctr/distributed" not in p.as_posix()]
    assert offenders == []


def test_ctr_never_imports_ray_mlflow_grpc():
    bad = {"ray", "mlflow", "grpc", "pipelines", "serving"}
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "ctr").rglob("*.py")
                 if any(m.split(".")[0] in bad for m in _imports(p))]
    assert offenders == []


def test_mlflow_only_in_tracking_registry_pyfunc():
    allowed = {"pipelines/tracking.py", "pipelines/tracking_auth.py", "pipelines/registry.py", "pipelines/mlflow_model.py",
               "serving/model_store.py"}
    offenders = [str(p.relative_to(ROOT)) for p in _py_files()
                 if any(m.split(".")[0] == "mlflow" for m in _imports(p))
                 and p.relative_to(ROOT).as_posix() not in allowed]
    assert offenders == []


@pytest.mark.parametrize("sub", ["ctr/models", "ctr/embeddings", "ctr/features/tensorize.py"])
def test_traceable_modules_have_no_future_annotations(sub):
    target = ROOT / sub
    files = [target] if target.is_file() else list(target.rglob("*.py"))
    assert files
    offenders = [str(p) for p in files if "from __future__ import annotations" in p.read_text()]
    assert offenders == []


def test_files_stay_small():
    big = {str(p.relative_to(ROOT)): n for p in _py_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}
