"""Factorization-machine second-order interaction, shared by FM and DeepFM."""

import torch
from torch import nn


class FMInteraction(nn.Module):
    """``[B, F, D] -> [B]``: Σ_{i<j} ⟨v_i, v_j⟩ computed as ``0.5 · Σ_d ((Σ_f v)² − Σ_f v²)``.

    Numeric fields take part as ``value · v_m`` (the embedding module already scaled them).
    The module has no parameters.

    Args:
        None: the interaction is parameter-free.

    Example::

        >>> v = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # B=1, F=2, D=2
        >>> FMInteraction()(v)  # <v1, v2> = 1·3 + 2·4
        tensor([11.])
    """

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        square_of_sum = embeddings.sum(dim=1).pow(2)  # [B, D]
        sum_of_square = embeddings.pow(2).sum(dim=1)  # [B, D]
        return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)  # [B]
