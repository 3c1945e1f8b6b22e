"""DIN's local activation unit: candidate-dependent weights over a masked behaviour history."""

import torch
from torch import nn

from ctr.models.layers.dice import DinActivation, tower


class LocalActivationUnit(nn.Module):
    """``(query [B, E], keys [B, L, E], mask [B, L]) -> interest [B, E]`` = ``Σ_j a(k_j, q) · k_j``.

    ``a`` is an MLP on ``[q, k, q − k, q ⊙ k]`` (the element-wise form every public DIN uses; with
    ``outer=True`` the paper's flattened outer product ``q ⊗ k`` is appended), evaluated on valid positions only, so padded positions never enter the
    scores, the Dice statistics or the sum. Weights are *not* normalised by default (the paper:
    they keep the interest intensity); ``softmax=True`` applies a masked softmax over the history
    (the official demo's choice). A history with no events gives a zero interest vector.

    Args:
        dim (int): key/query width E.
        hidden (tuple[int, ...]): hidden widths of the scoring MLP (official code: 80, 40).
        act (str): ``dice`` or ``prelu``.
        softmax (bool): normalise the weights with a masked softmax.
        outer (bool): also feed the flattened outer product ``q ⊗ k`` (E² more inputs).

    Example::

        >>> unit = LocalActivationUnit(4, (8,), "prelu")
        >>> mask = torch.tensor([[True, True, False], [True, False, False]])
        >>> unit(torch.randn(2, 4), torch.randn(2, 3, 4), mask).shape
        torch.Size([2, 4])
    """

    def __init__(self, dim: int, hidden: tuple[int, ...], act: DinActivation, softmax: bool = False,
                 outer: bool = False) -> None:
        super().__init__()
        self.score = tower(4 * dim + (dim * dim if outer else 0), hidden, act)
        self.softmax = softmax
        self.outer = outer

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = query.unsqueeze(1).expand_as(keys)  # [B, L, E]
        parts = [q, keys, q - keys, q * keys]
        if self.outer:
            parts.append((q.unsqueeze(-1) * keys.unsqueeze(-2)).flatten(-2))  # [B, L, E²]
        feats = torch.cat(parts, dim=-1)  # [B, L, 4E (+ E²)]
        valid = self.score(feats[mask]).squeeze(-1)  # [n_valid]: only real events are scored
        scores = keys.new_zeros(mask.shape).masked_scatter(mask, valid)  # [B, L], 0 at padding
        if self.softmax:
            weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1).nan_to_num(0.0)
        else:
            weights = scores
        return (weights.unsqueeze(-1) * keys).sum(dim=1)  # keys are 0 at padding -> [B, E]
