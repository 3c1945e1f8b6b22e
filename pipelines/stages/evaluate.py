"""Stage 3: final checkpoint + test split → metrics of the exported (unsharded) model."""

import json
from pathlib import Path

from ctr.data.loader import BatchIterator
from ctr.data.prepare import PreparedData, load_split
from ctr.export.bundle import model_from_checkpoint
from ctr.train.evaluate import evaluate


def run(spec, prepared: PreparedData, checkpoint_dir: str, run_dir: Path):
    """Load the checkpoint into a plain model (the one that gets exported) and score the test split."""
    model = model_from_checkpoint(spec.model, spec.embedding, prepared.artifact, checkpoint_dir)
    test = load_split(prepared, "test")
    metrics = evaluate(model, BatchIterator(test, spec.train.eval_batch_size, shuffle=False, seed=0))
    (run_dir / "metrics.json").write_text(json.dumps({"test": metrics}, indent=2))
    return model, metrics
