"""deploy/ manifests agree with constraints.txt and the CLI (no container engine here: parse and cross-check)."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from pipelines.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return {a.lower(): b for a, b in (ln.split("==", 1) for ln in lines if "==" in ln and not ln.startswith("#"))}


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def _images(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image" and isinstance(v, str)] + \
            [i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


def test_every_manifest_parses():
    files = [p for p in DEPLOY.rglob("*.yaml")]
    assert len(files) >= 4
    for p in files:
        assert _docs(str(p.relative_to(DEPLOY))), p


@pytest.mark.parametrize("name", ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml"])
def test_kuberay_runs_the_pinned_ray_and_the_training_image(name):
    doc = _docs(name)[0]
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    assert spec["rayVersion"] == _pins()["ray"]
    assert set(_images(spec)) == {_train_image()}


def _train_image() -> str:
    doc = _docs("cluster.yaml")[0]
    return doc["docker"]["image"]


def test_rayjob_entrypoint_is_a_valid_ctr_command():
    argv = shlex.split(_docs("kuberay/rayjob.yaml")[0]["spec"]["entrypoint"])
    assert argv[0] == "ctr"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.workers == 2 and args.address == "auto"
    assert (ROOT / args.pipeline).is_file()


def test_cluster_launcher_checks_the_pinned_stack_and_starts_the_job_server():
    doc = _docs("cluster.yaml")[0]
    pins = _pins()
    checked = [c for c in doc["setup_commands"] if "check-stack" in c]
    assert checked
    for pin in shlex.split(checked[0])[4:]:
        name, version = pin.split("==")
        assert pins[name] == version, pin
    head = " ".join(doc["head_start_ray_commands"])
    assert "--head" in head and "--dashboard-port=8265" in head
    assert doc["head_node_type"] in doc["available_node_types"]


def test_containerfile_installs_the_constraints_on_the_supported_python():
    text = (DEPLOY / "Containerfile").read_text()
    py = re.search(r"^FROM python:(\d+\.\d+)", text, re.M).group(1)
    requires = re.search(r'requires-python = ">=(\d+\.\d+)', (ROOT / "pyproject.toml").read_text()).group(1)
    assert py == requires
    assert "-r requirements.txt -c constraints.txt" in text and "pip check" in text
    for copied in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / copied).exists(), copied


def test_mlflow_server_uses_postgres_and_proxied_artifacts_with_the_pinned_mlflow():
    from mlflow.cli import server

    compose = _docs("mlflow/compose.yaml")[0]
    argv = shlex.split(compose["services"]["mlflow"]["command"])
    assert argv[:2] == ["mlflow", "server"]
    ctx = server.make_context("server", argv[2:])  # the flags exist in the pinned mlflow
    assert ctx.params["backend_store_uri"].startswith("postgresql")
    assert ctx.params["serve_artifacts"] and ctx.params["artifacts_destination"].startswith("s3://")
    assert compose["services"]["postgres"]["image"] == "postgres:15"
    pinned = re.search(r"mlflow==(\S+)", (DEPLOY / "mlflow" / "Containerfile").read_text()).group(1)
    assert pinned == _pins()["mlflow"]
