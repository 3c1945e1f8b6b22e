"""Evaluation: run a model over batches without gradients and compute metrics."""

from collections.abc import Callable, Iterable

import numpy as np
import torch

from ctr.features.tensorize import Batch
from ctr.train.metrics import summarize

Gather = Callable[[np.ndarray], np.ndarray]


def predict(model: torch.nn.Module, batches: Iterable[Batch]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Probabilities, labels and group codes (``None`` without a group column) for every row of ``batches``."""
    was_training = model.training
    model.eval()
    probs, labels, groups = [], [], []
    with torch.no_grad():
        for batch in batches:
            probs.append(torch.sigmoid(model(batch.dense, batch.sparse)).float().cpu().numpy())
            labels.append(batch.labels.cpu().numpy())
            if batch.groups is not None:
                groups.append(batch.groups.cpu().numpy())
    model.train(was_training)
    return _cat(probs), _cat(labels), (_cat(groups) if groups else None)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)


def evaluate(model: torch.nn.Module, batches: Iterable[Batch], gather: Gather | None = None) -> dict[str, float]:
    """Metrics over all rows; ``gather`` concatenates arrays across ranks (identity in one process)."""
    probs, labels, groups = predict(model, batches)
    if gather is not None:
        probs, labels = gather(probs), gather(labels)
        groups = gather(groups) if groups is not None else None
    return summarize(labels, probs, groups)
