"""MLflow model registry: list versions, promote with aliases, resolve a URI to a local bundle."""

from dataclasses import dataclass
from pathlib import Path

from ctr.errors import CtrError
from pipelines.tracking import connect


@dataclass
class VersionInfo:
    name: str
    version: str
    aliases: list[str]
    run_id: str
    test_auc: str
    created: int


def list_versions(uri: str, name: str | None = None) -> list[VersionInfo]:
    client = connect(uri)
    models = [client.get_registered_model(name)] if name else client.search_registered_models()
    out = []
    for m in models:
        for v in client.search_model_versions(f"name='{m.name}'"):
            aliases = [a for a, ver in (m.aliases or {}).items() if str(ver) == str(v.version)]
            out.append(VersionInfo(m.name, str(v.version), aliases, v.run_id or "",
                                   (v.tags or {}).get("test_auc", ""), int(v.creation_timestamp or 0)))
    return sorted(out, key=lambda r: (r.name, int(r.version)))


def promote(uri: str, name: str, version: str, alias: str) -> None:
    """Point ``alias`` (e.g. ``champion``) at ``name`` version ``version``."""
    client = connect(uri)
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise CtrError(f"model {name!r} has no version {version}; see `ctr models list`") from None
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
