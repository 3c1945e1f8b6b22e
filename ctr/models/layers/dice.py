"""Dice (DIN's data-adaptive activation) and the activation choice of DIN's towers."""

from typing import Literal

import torch
from torch import nn

DinActivation = Literal["dice", "prelu"]


class Dice(nn.Module):
    """Dice in the paper's form: ``f(s) = p(s)·s + (1 − p(s))·α·s``, ``p(s) = sigmoid((s − E[s]) / sqrt(Var[s] + ε))``.

    ``E``/``Var`` are per-channel statistics of the mini-batch in training and running averages in
    evaluation (a non-affine ``BatchNorm1d`` keeps both); ``α`` is learned per channel, initialised
    to 0. Not the official demo's variant (which never updates its statistics).

    Args:
        num_features (int): channels H of the ``[N, H]`` input.
        eps (float): ε of the standardisation (paper: 1e-8).
        momentum (float): running-statistics momentum.

    Example::

        >>> dice = Dice(4)
        >>> dice(torch.randn(8, 4)).shape
        torch.Size([8, 4])
    """

    def __init__(self, num_features: int, eps: float = 1e-8, momentum: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum, affine=False)
        self.alpha = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.norm(x))  # [N, H]
        return p * x + (1 - p) * self.alpha * x


def activation(name: DinActivation, width: int) -> nn.Module:
    """``Dice(width)`` or a per-channel ``PReLU(width)``."""
    return Dice(width) if name == "dice" else nn.PReLU(width)


def tower(in_dim: int, hidden: tuple[int, ...], act: DinActivation, dropout: float = 0.0) -> nn.Sequential:
    """``[N, in_dim] -> [N, 1]``: (Linear → Dice/PReLU → [Dropout]) per hidden width, then Linear to 1."""
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), activation(act, h)] + ([nn.Dropout(dropout)] if dropout > 0 else [])
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)
