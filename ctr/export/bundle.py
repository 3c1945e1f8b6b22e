"""Serving bundle: a folder that scores raw rows without any training code or pickles.

Layout::

    manifest.json   format version, library versions, model + embedding config, feature-artifact
                    hash, an example request (raw rows) and the scores it must produce
    model.pt        the unsharded model's state dict (loaded with ``weights_only=True``)
    features/       the FeatureArtifact fitted on train (vocabularies, numeric stats, schema)

:func:`load_bundle` rebuilds the model from the registry, refuses a bundle whose library versions, feature hash or
format does not match, and checks that the example request still gives the recorded scores.
"""

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from ctr._stack import installed_stack
from ctr.embeddings import parse_embedding_config
from ctr.errors import ArtifactError, SchemaMismatchError
from ctr.features.artifact import FeatureArtifact
from ctr.features.tensorize import EncodedColumns
from ctr.features.transform import FeatureTransform
from ctr.models import build_model, parse_model_config
from ctr.train import checkpoint

FORMAT = "ctr-bundle/1"
EXAMPLE_TOLERANCE = 1e-5
STACK_KEYS = ("torch", "torchrec", "fbgemm-gpu-cpu")  # the libraries whose kernels and layouts a bundle depends on


@dataclass
class Bundle:
    """A loaded bundle: the float model in eval mode, the fitted features and the manifest."""

    model: torch.nn.Module
    artifact: FeatureArtifact
    manifest: dict
    path: Path

    @property
    def transform(self) -> FeatureTransform:
        if not hasattr(self, "_transform"):
            self._transform = FeatureTransform(self.artifact)
        return self._transform

    def score(self, rows: pl.DataFrame | list[dict]) -> np.ndarray:
        """CTR probabilities for raw rows (feature name → raw value), through the training transform."""
        cols = EncodedColumns.from_frame(self.transform.apply(rows), self.artifact.schema)
        with torch.no_grad():
            batch = cols.batch(slice(0, len(cols)))
            return torch.sigmoid(self.model(batch.dense, batch.sparse)).numpy()

    def score_candidates(self, row: dict, candidates: list[dict]) -> np.ndarray:
        """One user against N candidates: probabilities ``[N]`` equal to ``score([{**row, **c} for c in candidates])``.

        ``row`` holds the user's raw fields (behaviour histories, user and context fields);
        each candidate holds the raw fields that change per candidate (e.g. ``item``, ``genres``).
        For models with ``score_candidates`` (DIN) the history is encoded and embedded once and
        the N candidate rows carry empty histories; other models score the N merged rows.
        """
        merged = [{**row, **c} for c in candidates]
        if not hasattr(self.model, "score_candidates") or not candidates:
            return self.score(merged) if candidates else np.zeros(0, dtype=np.float32)
        schema = self.artifact.schema
        history = {f.column for f in schema.history_fields}
        user = EncodedColumns.from_frame(self.transform.apply([row]), schema).batch(slice(0, 1))
        rows = [{k: ("" if k in history else v) for k, v in m.items()} for m in merged]
        cands = EncodedColumns.from_frame(self.transform.apply(rows), schema).batch(slice(0, len(rows)))
        with torch.no_grad():
            logits = self.model.score_candidates(user.dense, user.sparse, cands.dense, cands.sparse)
            return torch.sigmoid(logits).numpy()


def _build(manifest: dict, artifact: FeatureArtifact) -> torch.nn.Module:
    model_cfg = parse_model_config(manifest["model"])
    emb_cfg = parse_embedding_config(manifest["embedding"])
    model = build_model(model_cfg, artifact.layout(), emb_cfg)
    model.eval()
    return model


def model_from_checkpoint(model_cfg, embedding_cfg, artifact: FeatureArtifact, ckpt_dir: str | Path):
    """Unsharded float model loaded from a DCP checkpoint written at any world size."""
    model = build_model(model_cfg, artifact.layout(), embedding_cfg)
    checkpoint.load(model, ckpt_dir)
    model.eval()
    return model


def save_bundle(model: torch.nn.Module, model_cfg, embedding_cfg, artifact: FeatureArtifact,
                out_dir: str | Path, example_rows: list[dict]) -> Path:
    """Write a bundle folder; ``example_rows`` (raw rows) and their scores go into the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    artifact.save(out / "features")
    torch.save(model.state_dict(), out / "model.pt")
    manifest = {
        "format": FORMAT,
        "model": {"name": model_cfg.name, **model_cfg.model_dump()},
        "embedding": embedding_cfg.model_dump(),
        "feature_hash": artifact.content_hash,
        "model_sha256": _sha256(out / "model.pt"),
        "versions": {**installed_stack(), "python": platform.python_version()},
        "example": {"rows": example_rows, "scores": []},
    }
    bundle = Bundle(model, artifact, manifest, out)
    manifest["example"]["scores"] = [float(s) for s in bundle.score(example_rows)] if example_rows else []
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return out


def load_bundle(path: str | Path, verify_example: bool = True) -> Bundle:
    """Load and verify a bundle folder (format, hashes, example scores)."""
    root = Path(path)
    mf = root / "manifest.json"
    if not mf.is_file():
        raise ArtifactError(f"{root} is not a ctr bundle: manifest.json is missing; export a model with `ctr run`")
    manifest = json.loads(mf.read_text())
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{mf}: bundle format {manifest.get('format')!r} is not {FORMAT!r}; re-export the model")
    _check_versions(manifest, mf)
    if _sha256(root / "model.pt") != manifest["model_sha256"]:
        raise ArtifactError(f"{root / 'model.pt'}: checksum differs from the manifest; the bundle was modified")
    artifact = FeatureArtifact.load(root / "features")
    if artifact.content_hash != manifest["feature_hash"]:
        raise SchemaMismatchError(f"{root}: feature artifact hash {artifact.content_hash[:12]} does not match "
                                  f"the manifest's {manifest['feature_hash'][:12]}; re-export the model")
    model = _build(manifest, artifact)
    model.load_state_dict(torch.load(root / "model.pt", weights_only=True))
    bundle = Bundle(model, artifact, manifest, root)
    example = manifest.get("example") or {}
    if verify_example and example.get("rows"):
        got = bundle.score(example["rows"])
        if not np.allclose(got, example["scores"], atol=EXAMPLE_TOLERANCE):
            raise ArtifactError(f"{root}: example request scores {got[:3]} differ from the recorded "
                                f"{example['scores'][:3]}; the runtime does not reproduce this model")
    return bundle


def _check_versions(manifest: dict, mf: Path) -> None:
    """Refuse a bundle exported with another torch / torchrec / FBGEMM than the one installed here."""
    recorded = manifest.get("versions") or {}
    installed = installed_stack()
    differ = [f"{k} {recorded.get(k)} (installed {installed.get(k)})" for k in STACK_KEYS
              if recorded.get(k) != installed.get(k)]
    if differ:
        raise ArtifactError(f"{mf}: the bundle was exported with {', '.join(differ)}; serve it with the stack "
                            "it was trained with, or re-export it with this one")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
