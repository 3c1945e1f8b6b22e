"""Learned projections from per-table (or per-block) widths to the model width.

Search methods that end with tables of different widths (OptEmbed: one width per field; DNIS: one per
frequency block) feed models whose interactions need one width ``D`` for every field (FM's and
DeepFM's inner products, AutoInt's attention). :class:`WidthProjection` holds one bias-free linear map
``W_k ∈ R^{D × w_k}`` per key ``k`` (a table, a block) and maps a ``[..., w_k]`` vector to ``[..., D]``.

Initialisation is the zero-padding identity ``W_k = [I_{w_k}; 0]`` (for ``w_k ≤ D``): a projected vector
is the narrow vector followed by zeros, which is exactly what a prefix (dimension) mask over a ``D``-wide
vector produced in the search. A compact model built from a masked supernet therefore starts as the
same function, and the maps then learn. Keys whose width equals ``D`` get no map (the identity, no
parameters). The projections are dense weights (data-parallel), not table rows: they are not part of
``embedding_params`` (:func:`projection_param_count` reports them).

Example::

    >>> proj = WidthProjection({"a": 4, "b": 8}, 8)
    >>> proj("a", torch.ones(2, 4))[0].tolist()
    [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    >>> proj("b", torch.ones(2, 8)).shape, projection_param_count(proj)
    (torch.Size([2, 8]), 32)
"""

import torch
from torch import nn


class WidthProjection(nn.Module):
    """One learned ``w_k → D`` map per key (none where ``w_k == D``), zero-padding identity at init.

    Args:
        widths (dict[str, int]): key (table or block name) → its width ``w_k``.
        dim (int): the model width ``D``.
    """

    def __init__(self, widths: dict[str, int], dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.widths = dict(widths)
        self.maps = nn.ModuleDict({k: nn.Linear(w, dim, bias=False) for k, w in self.widths.items() if w != dim})
        self.reset_identity()

    def reset_identity(self) -> None:
        """Set every map to the zero-padding identity ``[I; 0]`` (a truncation when ``w_k > D``)."""
        with torch.no_grad():
            for layer in self.maps.values():
                layer.weight.copy_(torch.eye(self.dim, layer.in_features, dtype=layer.weight.dtype))

    def forward(self, key: str, x: torch.Tensor) -> torch.Tensor:
        layer = self.maps[key] if key in self.maps else None
        return x if layer is None else layer(x)


def projection_param_count(module: nn.Module) -> int:
    """Parameters in every :class:`WidthProjection` inside ``module``."""
    return sum(p.numel() for m in module.modules() if isinstance(m, WidthProjection) for p in m.parameters())
