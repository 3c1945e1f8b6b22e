"""Multi-layer perceptron used by DNN, DeepFM and AutoInt+."""

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from ctr.config import StrictConfig
from ctr.models.layers.init import init_dense_

Activation = Literal["relu", "tanh", "sigmoid", "prelu"]
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "prelu": nn.PReLU,
}


@dataclass(frozen=True)
class MLPSpec:
    """Hidden layers of an :class:`MLP`.

    Args:
        hidden (tuple[int, ...]): hidden widths, e.g. ``(400, 400)``; empty = a single linear map.
        activation (str): ``relu``, ``tanh``, ``sigmoid`` or ``prelu``.
        dropout (float): dropout after every hidden activation (0 = none).
        batchnorm (bool): ``BatchNorm1d`` between each hidden linear layer and its activation.
    """

    hidden: tuple[int, ...] = (400, 400)
    activation: Activation = "relu"
    dropout: float = 0.0
    batchnorm: bool = False


class MLP(nn.Module):
    """``[B, I] -> [B, O]``: (Linear → [BatchNorm] → activation → [Dropout]) per hidden width, then
    an optional output ``Linear`` without activation.

    Args:
        in_dim (int): input width I.
        spec (MLPSpec): hidden widths, activation, dropout, batch norm.
        out_dim (int | None): width of a final linear layer; ``None`` ends after the last hidden
            block (then O = the last hidden width).

    Example::

        >>> mlp = MLP(8, MLPSpec(hidden=(16, 4)), out_dim=1)
        >>> mlp(torch.randn(3, 8)).shape
        torch.Size([3, 1])
    """

    def __init__(self, in_dim: int, spec: MLPSpec, out_dim: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in spec.hidden:
            layers.append(nn.Linear(width, hidden))
            if spec.batchnorm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(_ACTIVATIONS[spec.activation]())
            if spec.dropout > 0:
                layers.append(nn.Dropout(spec.dropout))
            width = hidden
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        if not layers:
            raise ValueError("MLP needs hidden layers or an out_dim")
        self.layers = nn.Sequential(*layers)
        self.out_dim = width
        init_dense_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DNNOptions(StrictConfig):
    """The ``dnn_*`` keys shared by every model config that has an MLP tower.

    Args:
        dnn_hidden (tuple[int, ...]): hidden widths of the MLP.
        dnn_activation (str): ``relu``, ``tanh``, ``sigmoid`` or ``prelu``.
        dnn_dropout (float): dropout after each hidden layer.
        dnn_batchnorm (bool): batch norm before each hidden activation.
    """

    dnn_hidden: tuple[PositiveInt, ...] = (400, 400)
    dnn_activation: Activation = "relu"
    dnn_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    dnn_batchnorm: bool = False

    def mlp_spec(self) -> MLPSpec:
        return MLPSpec(self.dnn_hidden, self.dnn_activation, self.dnn_dropout, self.dnn_batchnorm)
