"""DIN's mini-batch aware L2 (Zhou et al. 2018, §4.1) as a loss term over the batch's unique rows.

Paper update, for every row ``j`` present in mini-batch ``B_m``:
``w_j ← w_j − η (grad_j + λ · w_j / n_j)`` with ``n_j`` the id's train count; rows absent from the
batch are untouched. The loss term ``λ/2 · Σ_{j ∈ uniq(B_m)} ‖w_j‖² / n_j`` has exactly that gradient,
and because it is a function of looked-up vectors it flows through any FBGEMM fused (in-backward)
optimizer; no whole-table weight decay is involved.
"""

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.features.layout import FieldLayout


class MiniBatchAwareL2(nn.Module):
    """``forward(sparse, [(field, vectors [n, D])]) -> λ/2 · Σ_j ‖w_j‖² / n_j`` over unique rows per table.

    ``vectors`` are the rows looked up for the field's ids ``sparse[field].values()`` (same order).
    Ids with a train count of 0 (e.g. OOV when nothing was rare) use ``n_j = 1``.

    Args:
        layout (FieldLayout): schema plus ``table_counts`` (per-id train counts, from the artifact).
        lam (float): λ.

    Example::

        >>> from ctr.features.schema import Schema
        >>> layout = FieldLayout(Schema(fields=[{"name": "u"}]), {"u": 3}, {"u": [0, 4, 1]})
        >>> mba = MiniBatchAwareL2(layout, 1.0)
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["u"], torch.tensor([1, 1]), torch.tensor([1, 1]))
        >>> float(mba(kjt, [("u", torch.ones(2, 2))]))  # one unique row, ‖w‖² = 2, n = 4
        0.25
    """

    def __init__(self, layout: FieldLayout, lam: float) -> None:
        super().__init__()
        if layout.table_counts is None:
            raise ValueError("mba_l2 needs per-id train counts (FieldLayout.table_counts); build it from an artifact")
        self.lam = lam
        schema = layout.schema
        self.table_of = {f.name: f.table_name for f in schema.sparse_fields}
        self.single_fields = [f.name for f in schema.sparse_fields if f.kind == "categorical"]
        self.tables = list(schema.tables)
        for i, table in enumerate(self.tables):
            counts = torch.tensor(layout.table_counts[table], dtype=torch.float32).clamp(min=1.0)
            self.register_buffer(f"counts_{i}", counts, persistent=False)

    def forward(self, sparse: KeyedJaggedTensor, looked_up: list[tuple[str, torch.Tensor]]) -> torch.Tensor:
        total = torch.zeros(())
        for i, table in enumerate(self.tables):
            parts = [(sparse[name].values(), vec) for name, vec in looked_up if self.table_of[name] == table]
            if not parts:
                continue
            ids = torch.cat([p[0] for p in parts])
            vectors = torch.cat([p[1] for p in parts])
            uniq, inverse = torch.unique(ids, return_inverse=True)
            positions = torch.arange(ids.numel(), device=ids.device)
            first = torch.full_like(uniq, ids.numel()).scatter_reduce(0, inverse, positions, "amin")
            counts = getattr(self, f"counts_{i}")[uniq]
            total = total.to(vectors.device) + (vectors[first].pow(2).sum(dim=-1) / counts).sum()
        return 0.5 * self.lam * total
