"""Stage 3: final checkpoint + test split → metrics of the exported (unsharded) model."""

import json
from pathlib import Path

from ctr.data.loader import BatchIterator
from ctr.data.prepare import PreparedData, load_split
from ctr.data.synthetic import oracle_test_split
from ctr.export.bundle import model_from_checkpoint
from ctr.train.evaluate import evaluate
from ctr.train.metrics import auc, logloss


def run(spec, prepared: PreparedData, checkpoint_dir: str, run_dir: Path):
    """Load the checkpoint into a plain model (the one that gets exported) and score the test split."""
    model = model_from_checkpoint(spec.model, spec.embedding, prepared.artifact, checkpoint_dir)
    test = load_split(prepared, "test")
    metrics = evaluate(model, BatchIterator(test, spec.train.eval_batch_size, shuffle=False, seed=0))
    (run_dir / "metrics.json").write_text(json.dumps({"test": metrics}, indent=2))
    return model, metrics


def oracle(spec, prepared: PreparedData) -> dict[str, float] | None:
    """Test AUC/logloss of the synthetic generator's teacher on the same test rows (``None`` if not synthetic)."""
    if spec.synthetic is None:
        return None
    got = oracle_test_split(spec.data)
    if got is None or len(got[0]) != prepared.rows.get("test"):
        return None
    labels, probs = got
    return {"auc": auc(labels, probs), "logloss": logloss(labels, probs)}
