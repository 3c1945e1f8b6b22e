"""Stage 4: export the serving bundle and register it (with signature and lineage) as a model version."""

import logging
from pathlib import Path

from ctr.data.readers import read_file
from ctr.export.bundle import save_bundle

log = logging.getLogger("ctr.pipelines")
EXAMPLE_ROWS = 4


def example_rows(spec) -> list[dict]:
    """A few raw rows (feature columns only) from the test (else train) source for the bundle manifest.

    Only the first rows are scanned (a margin for skipped malformed rows), never the whole file.
    """
    source = spec.data.test or spec.data.train
    path = source if isinstance(source, str) else source[0]
    wanted = spec.features.raw_columns
    frame = read_file(path, spec.data, wanted, limit=EXAMPLE_ROWS * 8).head(EXAMPLE_ROWS)
    fields = [f.column for f in spec.features.fields]
    return frame.select([c for c in fields if c in frame.columns]).to_dicts()


def typed_rows(spec, rows: list[dict]) -> list[dict]:
    """Raw rows as the signature types them: numeric fields as floats (``None`` when missing), the rest text."""
    numeric = {f.column for f in spec.features.numeric_fields}

    def cast(col, value):
        if value is None:
            return None
        return float(value) if col in numeric else str(value)

    return [{c: cast(c, v) for c, v in row.items()} for row in rows]


def export(spec, model, prepared, run_dir: Path) -> Path:
    return save_bundle(model, spec.model, spec.embedding, prepared.artifact, run_dir / "bundle", example_rows(spec))


def run(spec, tracker, bundle_dir: Path, test: dict, lineage: dict[str, str]) -> dict:
    """Log the bundle as the run's model, register a version, tag it; returns ``{"model_uri", "version"}``.

    ``lineage`` (data digests, feature hash, config and feature-map URIs) becomes model-version tags.
    """
    tags = {"model": spec.model.name, "run_id": tracker.run_id, **lineage}
    tags.update({f"test_{k}": f"{v:.0f}" if float(v).is_integer() else f"{v:.5f}" for k, v in test.items()})
    model_uri, version = tracker.log_model(bundle_dir, spec.model_name, spec.features,
                                           typed_rows(spec, example_rows(spec)), tags)
    if spec.register.alias:
        from pipelines.registry import promote

        promote(tracker.uri, spec.model_name, version, spec.register.alias)
    log.info("registered %s version %s (%s)", spec.model_name, version, model_uri)
    return {"model_uri": model_uri, "version": version}
