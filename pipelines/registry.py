"""MLflow model registry: list versions, show a version's lineage, promote with aliases, fetch bundles."""

import re
from dataclasses import dataclass, field
from pathlib import Path

from ctr.errors import CtrError
from pipelines.tracking import connect
from pipelines.tracking_auth import auth_error, auth_errors

REF = re.compile(r"^(?:models:/)?(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))?$")


@dataclass
class VersionInfo:
    name: str
    version: str
    aliases: list[str]
    run_id: str
    test_auc: str
    created: int
    test_logloss: str = ""
    tags: dict = field(default_factory=dict)


def list_versions(uri: str, name: str | None = None) -> list[VersionInfo]:
    client = connect(uri)
    from mlflow.exceptions import MlflowException

    try:
        models = [client.get_registered_model(name)] if name else client.search_registered_models()
    except MlflowException as exc:
        raise auth_error(exc, uri) or CtrError(f"no registered model {name!r}; see `ctr models list`") from None
    out = []
    for m in models:
        for v in client.search_model_versions(f"name='{m.name}'"):
            aliases = [a for a, ver in (m.aliases or {}).items() if str(ver) == str(v.version)]
            tags = dict(v.tags or {})
            out.append(VersionInfo(m.name, str(v.version), aliases, v.run_id or "", tags.get("test_auc", ""),
                                   int(v.creation_timestamp or 0), tags.get("test_logloss", ""), tags))
    return sorted(out, key=lambda r: (r.name, int(r.version)))


def resolve(client, ref: str):
    """``NAME``, ``NAME/VERSION`` or ``NAME@ALIAS`` (optionally ``models:/``-prefixed) → a ModelVersion."""
    from mlflow.exceptions import MlflowException

    m = REF.match(ref.strip())
    if m is None:
        raise CtrError(f"{ref!r} is not NAME, NAME/VERSION or NAME@ALIAS")
    name, version, alias = m["name"], m["version"], m["alias"]
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if version:
            return client.get_model_version(name, version)
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException as exc:
        what = f"alias @{alias}" if alias else f"version {version}" if version else "versions"
        raise auth_error(exc, client.tracking_uri) or CtrError(
            f"model {name!r} has no {what}; see `ctr models list`") from None
    if not versions:
        raise CtrError(f"no registered model {name!r}; see `ctr models list`")
    return max(versions, key=lambda v: int(v.version))


def describe(uri: str, ref: str) -> dict:
    """A model version's lineage: its run (status, duration, source), metrics, datasets and config."""
    client = connect(uri)
    import mlflow
    from mlflow.exceptions import MlflowException

    v = resolve(client, ref)
    model = client.get_registered_model(v.name)
    run = client.get_run(v.run_id) if v.run_id else None
    out = {"name": v.name, "version": str(v.version),
           "aliases": [a for a, ver in (model.aliases or {}).items() if str(ver) == str(v.version)],
           "created": int(v.creation_timestamp or 0), "source": v.source, "tags": dict(v.tags or {}),
           "run": None, "datasets": [], "config": None}
    if run is None:
        return out
    info, data = run.info, run.data
    end = info.end_time or 0
    out["run"] = {"id": info.run_id, "name": info.run_name, "status": info.status,
                  "experiment_id": info.experiment_id,
                  "duration_s": (end - info.start_time) / 1000 if end else None,
                  "user": data.tags.get("mlflow.user", ""), "source": data.tags.get("mlflow.source.name", ""),
                  "git_commit": data.tags.get("mlflow.source.git.commit", ""),
                  "description": data.tags.get("mlflow.note.content", ""),
                  "metrics": {k: val for k, val in data.metrics.items() if not k.startswith("stage_seconds")}}
    for d in run.inputs.dataset_inputs if run.inputs else []:
        context = next((t.value for t in d.tags if t.key == "mlflow.data.context"), "")
        out["datasets"].append({"context": context, "name": d.dataset.name, "digest": d.dataset.digest,
                                "source": d.dataset.source, "profile": d.dataset.profile})
    try:
        out["config"] = mlflow.artifacts.load_text(f"runs:/{info.run_id}/config.yaml")
    except (MlflowException, OSError):  # runs logged before the config artifact existed
        out["config"] = None
    return out


def promote(uri: str, name: str, version: str, alias: str) -> None:
    """Point ``alias`` (e.g. ``champion``) at ``name`` version ``version``."""
    client = connect(uri)
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise auth_error(exc, uri) or CtrError(f"model {name!r} has no version {version}; see `ctr models list`") \
            from None
    with auth_errors(uri):
        client.set_registered_model_alias(name, alias, str(version))


def download_bundle(uri: str, model_uri: str, dst: str | Path) -> Path:
    """Fetch the bundle folder of a registered model (``models:/name/3`` or ``models:/name@champion``)."""
    connect(uri)
    import mlflow

    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst))
    bundle = Path(local) / "artifacts" / "bundle"
    if not bundle.is_dir():
        raise CtrError(f"{model_uri} holds no ctr bundle (looked for artifacts/bundle)")
    return bundle
