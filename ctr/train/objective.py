"""Training objective: mean BCE on logits plus any regularizers the model or embedding exposes."""

from collections.abc import Callable

import torch
import torch.nn.functional as F

Regularizer = Callable[[], torch.Tensor | None]


class Objective:
    """``loss = BCEWithLogits(logits, labels) + Σ regularizers()``.

    Args:
        regularizers (list[Callable[[], Tensor | None]]): zero-argument callables, e.g. an embedding
            method's ``regularizer`` (OptFS gate penalty, DIN's mini-batch aware L2).
    """

    def __init__(self, regularizers: list[Regularizer] | None = None) -> None:
        self.regularizers = list(regularizers or [])

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, rows: float | None = None,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
        """``rows``: divide the summed BCE by this instead of the batch size (a rank's share of a global
        batch, see ``Batch.loss_rows``); an empty share then contributes zero, not NaN. ``weights``: per-row
        weights of the sum (``Batch.weights``: 0 for padding rows); without ``rows`` the sum is divided by
        the weights' sum."""
        if weights is not None:
            bce = (F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * weights).sum()
            loss = bce / (rows if rows is not None else weights.sum().clamp(min=1.0))
        elif rows is None:
            loss = F.binary_cross_entropy_with_logits(logits, labels)
        else:
            loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / rows
        for reg in self.regularizers:
            extra = reg()
            if extra is not None:
                loss = loss + extra
        return loss


def collect_regularizers(model: torch.nn.Module) -> list[Regularizer]:
    """Every submodule's ``regularizer`` method (FieldEmbedding subclasses define one)."""
    return [m.regularizer for m in model.modules() if callable(getattr(m, "regularizer", None))]
