"""Stage 1: raw files → fitted FeatureArtifact + encoded Parquet splits (cached by content)."""

import hashlib
import json
import logging
from pathlib import Path

from ctr.data.prepare import PreparedData, prepare
from ctr.data.readers import SPLITS
from ctr.data.synthetic import write_synthetic_if_missing
from pipelines.tracking import DatasetInfo, raw_input_columns

log = logging.getLogger("ctr.pipelines")
LABEL_TYPE = "double"


def run(spec) -> PreparedData:
    """Generate synthetic data first when the spec asks for it, then prepare (or reuse) the splits."""
    synth = spec.synthetic
    if synth is not None:
        path = spec.data.train if isinstance(spec.data.train, str) else spec.data.train[0]
        write_synthetic_if_missing(path, synth.rows, synth.seed, synth.max_cardinality, synth.teacher)
    prepared = prepare(spec.data, spec.features, spec.data.cache_dir)
    log.info("prepared data: %s (%s)", prepared.rows, "cache hit" if prepared.cache_hit else "fresh")
    return prepared


def data_key(prepared: PreparedData) -> str:
    """The prepare stage's sha256 over the inputs (file identity, data config, schema, format)."""
    return json.loads((prepared.root / "prepared.json").read_text())["key"]


def split_digests(prepared: PreparedData) -> dict[str, str]:
    """Split → 16-hex digest derived from :func:`data_key` (changes whenever any input or config does)."""
    key = data_key(prepared)
    return {s: hashlib.sha256(f"{key}:{s}".encode()).hexdigest()[:16] for s in SPLITS}


def dataset_infos(spec, prepared: PreparedData) -> list[DatasetInfo]:
    """What the run's Datasets panel lists for train, valid and test."""
    digests = split_digests(prepared)
    columns = raw_input_columns(spec.features) + [(spec.features.label, LABEL_TYPE)]
    out = []
    for split in SPLITS:
        given = spec.data.files(split)
        carved = given is None
        given = given or spec.data.files("train")
        files = [str(Path(p).resolve()) for p in given]
        profile = {"num_rows": prepared.rows.get(split, 0), "files": files,
                   "encoded": str(prepared.split_paths[split]),
                   "feature_hash": prepared.artifact.content_hash}
        if carved:
            ratios, seed = spec.data.split.ratios, spec.data.split.seed
            profile["carved_from_train"] = (f"column {spec.data.split.column}" if spec.data.split.column
                                            else f"ratios {list(ratios)} seed {seed}")
        skipped = sum(prepared.skipped.get(f, 0) for f in given) if not carved else 0
        if skipped:
            profile["rows_skipped"] = skipped
        out.append(DatasetInfo(f"{Path(files[0]).stem}-{split}", split, digests[split], files[0], columns, profile))
    return out
