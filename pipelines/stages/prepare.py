"""Stage 1: raw files → fitted FeatureArtifact + encoded Parquet splits (cached by content)."""

import logging

from ctr.data.prepare import PreparedData, prepare
from ctr.data.synthetic import write_synthetic_if_missing

log = logging.getLogger("ctr.pipelines")


def run(spec) -> PreparedData:
    """Generate synthetic data first when the spec asks for it, then prepare (or reuse) the splits."""
    synth = spec.synthetic
    if synth is not None:
        path = spec.data.train if isinstance(spec.data.train, str) else spec.data.train[0]
        write_synthetic_if_missing(path, synth.rows, synth.seed, synth.max_cardinality)
    prepared = prepare(spec.data, spec.features, spec.data.cache_dir)
    log.info("prepared data: %s (%s)", prepared.rows, "cache hit" if prepared.cache_hit else "fresh")
    return prepared
