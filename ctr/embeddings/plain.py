"""Plain embedding: one table per sparse field (or per shared ``table``), numeric fields as value × vector.

Tables read by an unpooled history (``pooling: none``) sit in an ``EmbeddingCollection`` shared with
the candidate's field; the rest in an ``EmbeddingBagCollection``.
"""

import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm.jagged_to_padded_dense)
import torch
from pydantic import Field
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.config import StrictConfig
from ctr.embeddings.base import FieldEmbedding, FieldLayout, SequenceFields, padded_history, sequence_fields
from ctr.embeddings.mba import MiniBatchAwareL2
from ctr.embeddings.sequence_tables import bag_layout, sequence_table_configs, sequence_table_names
from ctr.embeddings.tables import table_configs
from ctr.errors import ConfigError


class PlainEmbeddingConfig(StrictConfig):
    """Args:
        name (str): always ``plain``.
        init_std (float | None): embedding init scale (uniform with this std); ``None`` = TorchRec default.
        l2 (float): in-batch L2 penalty ``l2 · mean_B Σ_F ‖e‖²`` on the looked-up sparse field vectors,
            added to the loss. It reaches only rows used in the batch (through the fused backward), so
            it stays sparse; FBGEMM's CPU row-wise Adagrad ignores its own ``weight_decay``.
        mba_l2 (float): DIN's mini-batch aware L2 λ: ``λ/2 · Σ_j ‖w_j‖² / n_j`` over the *unique* rows
            ``j`` looked up in the batch (categorical fields and histories; ``n_j`` = train count of
            the id from the artifact), so a plain SGD step moves ``w_j`` by ``-lr · λ · w_j / n_j``
            and rows absent from the batch are untouched. A loss term: works with FBGEMM fused optimizers.
    """

    name: str = "plain"
    init_std: float | None = 0.01
    l2: float = Field(0.0, ge=0.0)
    mba_l2: float = Field(0.0, ge=0.0)


class NumericFieldEmbedding(nn.Module):
    """Numeric field m → ``value_m · v_m`` (one learned vector per field, AutoInt's convention).

    Args:
        num_numeric (int): number of numeric fields N.
        dim (int): vector width D.

    Example::

        >>> emb = NumericFieldEmbedding(2, 4)
        >>> emb(torch.ones(3, 2)).shape
        torch.Size([3, 2, 4])
    """

    def __init__(self, num_numeric: int, dim: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_numeric, dim) * init_std)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return dense.unsqueeze(-1) * self.weight.unsqueeze(0)  # [B, N, 1] * [1, N, D] -> [B, N, D]


class PlainEmbedding(FieldEmbedding):
    """Stock TorchRec lookups; output ``[B, F, D]`` with sparse fields first, then numeric.

    Args:
        layout (FieldLayout): schema and fitted table sizes (and counts, for ``mba_l2``).
        dim (int): embedding width D (a multiple of 4).
        config (PlainEmbeddingConfig): method options.
        device (torch.device | None): build tables on ``meta`` to shard them without allocating.

    Example::

        >>> from ctr.features.schema import Schema
        >>> s = Schema(fields=[{"name": "u"}, {"name": "x", "kind": "numeric"}])
        >>> emb = PlainEmbedding(FieldLayout(s, {"u": 10}), 8, PlainEmbeddingConfig())
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["u"], torch.tensor([1, 2]), torch.tensor([1, 1]))
        >>> emb(torch.ones(2, 1), kjt).shape
        torch.Size([2, 2, 8])
    """

    def __init__(self, layout: FieldLayout, dim: int, config: PlainEmbeddingConfig,
                 device: torch.device | None = None, prefix: str = "") -> None:
        super().__init__()
        if layout.hashed_tables:
            raise ConfigError(f"tables {list(layout.hashed_tables)} are hash-encoded (no vocabulary); use "
                              "embedding hashed or unified, or encoding: vocab in the features", "embedding.name")
        schema = layout.schema
        self.num_fields = layout.num_fields
        self.embedding_dim = dim
        self.sparse_names = [f.name for f in schema.sparse_fields]
        self.field_names = self.sparse_names + [f.name for f in schema.numeric_fields]
        self.history_names = [f.name for f in schema.history_fields]
        self.candidate_names = [candidate_of(schema, f) for f in schema.history_fields]
        self.max_len = max([f.max_len for f in schema.history_fields], default=1)
        shared = set(sequence_table_names(schema))
        self.ec_names = [f.name for f in schema.sparse_fields if f.table_name in shared]
        bags = bag_layout(layout)
        self.bag_names = [f.name for f in bags.schema.sparse_fields] if bags is not None else []
        self.ebc = EmbeddingBagCollection(
            tables=table_configs(bags, dim, prefix=prefix, init_std=config.init_std,
                                 widths=self.table_widths(layout, dim, config)), device=device) \
            if bags is not None else None
        self.ec = EmbeddingCollection(
            tables=sequence_table_configs(layout, dim, prefix=prefix, init_std=config.init_std), device=device) \
            if shared else None
        self.numeric = NumericFieldEmbedding(layout.num_numeric, dim, config.init_std or 0.01) \
            if layout.num_numeric else None
        self.l2 = config.l2
        self.mba = MiniBatchAwareL2(layout, config.mba_l2) if config.mba_l2 > 0 else None
        self._penalty: torch.Tensor | None = None

    def table_widths(self, layout: FieldLayout, dim: int, config) -> dict[str, int] | None:
        """Per-table widths of the pooled tables (``None``: all ``dim``); methods with mixed widths override it."""
        return None

    def to_model_width(self, field: str, pooled: torch.Tensor) -> torch.Tensor:
        """A pooled field vector ``[B, w]`` → ``[B, D]``; the identity here (every table is ``D`` wide)."""
        return pooled

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        return self._lookup(dense, sparse)[0]

    def forward_sequences(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> SequenceFields:
        return sequence_fields(*self._lookup(dense, sparse))

    def _lookup(self, dense: torch.Tensor, sparse: KeyedJaggedTensor
                ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        vecs: dict[str, torch.Tensor] = {}  # field -> [B, D]
        rows: list[tuple[str, torch.Tensor]] = []  # field, looked-up vectors [n, D] (for MBA)
        if self.ebc is not None:
            pooled = self.ebc(sparse).to_dict()
            for name in self.bag_names:
                vecs[name] = self.to_model_width(name, pooled[name])
        history, mask = [], torch.zeros(0)
        if self.ec is not None:
            jts = self.ec(sparse)
            for name in self.ec_names:
                jt = jts[name]
                rows.append((name, jt.values()))
                if name in self.history_names:
                    padded, vecs[name], mask = padded_history(jt.values(), jt.offsets(), self.max_len)
                    history.append(padded)
                else:
                    vecs[name] = jt.values()  # one id per row -> [B, D]
        parts = [torch.stack([vecs[n] for n in self.sparse_names], dim=1)]  # [B, S, D]
        if self.training:
            self._penalty = self._penalties(parts[0], sparse, vecs, rows)
        if self.numeric is not None:
            parts.append(self.numeric(dense))  # [B, N, D]
        return torch.cat(parts, dim=1), history, mask

    def _penalties(self, sparse_vecs: torch.Tensor, sparse: KeyedJaggedTensor, vecs: dict[str, torch.Tensor],
                   rows: list[tuple[str, torch.Tensor]]) -> torch.Tensor | None:
        penalty = None
        if self.l2 > 0:
            penalty = self.l2 * sparse_vecs.pow(2).sum(dim=(1, 2)).mean()
        if self.mba is not None:
            single = [(n, vecs[n]) for n in self.bag_names if n in self.mba.single_fields]
            mba = self.mba(sparse, single + rows)
            penalty = mba if penalty is None else penalty + mba
        return penalty

    def regularizer(self) -> torch.Tensor | None:
        """The L2 / MBA penalty of the last training forward (``None`` when both are 0); consumed once."""
        penalty, self._penalty = self._penalty, None
        return penalty


def candidate_of(schema, history) -> str:
    """The categorical field sharing ``history``'s table: the candidate the history is compared with."""
    for f in schema.sparse_fields:
        if f.kind == "categorical" and f.table_name == history.table_name:
            return f.name
    raise ValueError(f"history field {history.name!r} (table {history.table_name!r}) needs a categorical "
                     "candidate field naming the same table")
