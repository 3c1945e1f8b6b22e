"""OptFS (Lyu et al., WWW 2023): a learnable gate per feature value, learnt by continuation.

Search mode: the looked-up vector of value ``i`` is scaled by ``g_i = σ(τ·m_i) / σ(m_init)``; the
objective gains ``λ · Σ σ(τ·m)`` over the **whole** gate table (every table, every row — not the batch;
see "Updates" below for how it is applied). τ grows geometrically per epoch: ``τ_e = final_temp^(e / (E − 1))`` for
search epoch ``e = 0 … E−1`` (τ_0 = 1, τ_{E−1} = final_temp). Ticket (retrain) mode: hard gate
``g_i = 1[m_i > 0] / σ(m_init)`` (the paper code's constant, kept: a kept value's vector is scaled by
1/σ(m_init), e.g. 1.62 at m_init 0.5).

The phases (see :mod:`ctr.search`): ``search`` trains this module for ``search_epochs`` epochs and
snapshots the weights at the start of epoch ``rewind``; ``materialise`` takes the keep-list
``{i : m_i > 0}`` of the last search epoch, rewinds embeddings and dense layers to the snapshot (the
gates are the final ones, the optimiser is fresh) and folds the hard gate into the kept rows of an
ordinary compact model; ``retrain`` trains that compact model (patience-0 early stopping in the paper,
``train.patience`` here).

Gate layout. The gates of table ``t`` are a TorchRec table ``t@gate`` of the same row count in an
``EmbeddingBagCollection`` of their own (``gate_ebc``), looked up with the **same KJT** (same keys, same
ids) as the embedding rows. FBGEMM's fused kernels need widths divisible by 4, so a gate row is 4 wide and
holds the gate's whole optimiser: ``[m, captured gradient, Adam first moment, Adam second moment]``
(columns :data:`M`, :data:`GRAD`, :data:`ADAM_M1`, :data:`ADAM_V`; 16 bytes per row, the same as 4 copies of
``m`` would cost, and the state shards, checkpoints and rewinds with the row). The sharding plan places
``t@gate`` **like** ``t``: same sharding type, same ranks, same row ranges
(:func:`ctr.distributed.sharding.shard_model` copies the embedding table's placement,
:meth:`OptFSEmbedding.followed_tables`), so a value's gate lives on the rank that holds its row and no
lookup crosses ranks on its account.

Updates: Adam on ``BCE + λ·Σσ(τm)``, like the paper's gate optimiser, over every row. The forward reads
``m`` from column ``M`` but routes its gradient into column ``GRAD`` (``m.detach() + (g − g.detach())``:
same value, the gradient lands on ``g``); the gate table's fused optimiser is SGD at learning rate 1 (the
table's own, whatever ``train.optimizer.sparse`` is), so after the backward column ``GRAD`` holds exactly
``−∂BCE/∂m`` of the looked-up rows (0 elsewhere; it is reset to 0 after every step). After every optimiser
step each rank then applies, to its own shards and with no communication, :meth:`OptFSEmbedding.table_step`:
the penalty's gradient ``λ·τ·σ'(τm)`` is added for every row (looked up or not — the fused kernel never
sees the whole table, which is why the step is outside it) and ``m`` takes a bias-corrected Adam step
(β = 0.9, 0.999, ε = 1e-8) at ``train.optimizer.lr``, the dense learning rate. So λ is on the paper's
scale relative to a BCE over the batch (a sum over the whole table: λ shrinks as the table grows).

First-order weights. FM/DeepFM (and AutoInt+'s wide part) here have a first-order term the paper's
backbones lack; a value's hard gate removes its first-order weight too in the compact model (its id
becomes OOV), so the search gates it as well: ``build_model`` passes the first-order embedding through
:meth:`OptFSEmbedding.gate_first_order`, which scales each sparse field's first-order weight by the
same gate ``g_i`` as its vector (the gates are looked up once per forward and shared).

Pruned values and OOV. Where a value is pruned the compact model's feature artifact drops it, so it
encodes to the OOV id 0 and reads row 0 — the OOV row, itself gated (a zero row when ``m_0 ≤ 0``). The
paper's hard-gated model reads a zero vector for a pruned value; ours reads the (gated) OOV row: a
pruned value is treated as an unknown value. :meth:`OptFSEmbedding.ticket_remap` gives the hard-gated
model with exactly these semantics (pruned ids → 0 before the lookup), which the compact model equals.

Only single-id categorical fields are gated (OptFS's setting); numeric fields (value × vector) are not
feature values and pass ungated. Sequence and history fields are rejected.
"""

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.config import StrictConfig
from ctr.embeddings.base import FieldEmbedding, FieldLayout, require_single_id_fields
from ctr.embeddings.plain import PlainEmbedding, PlainEmbeddingConfig
from ctr.embeddings.tables import GATE_SUFFIX, TABLE_OPTIMIZER

GATE_WIDTH = 4  # FBGEMM's multiple: a gate row is [m, captured gradient, Adam m1, Adam v]
M, GRAD, ADAM_M1, ADAM_V = range(GATE_WIDTH)
CAPTURE_LR = 1.0  # the gate tables' fused SGD learning rate: column GRAD receives exactly -gradient
BETAS, EPS = (0.9, 0.999), 1e-8


class GateOptions(StrictConfig):
    """OptFS's gate options, shared by ``optfs`` and ``unified_optfs`` (:mod:`ctr.embeddings.unified_optfs`).

    Args:
        mask_init (float): initial gate parameter m (0.5 in the paper's code).
        final_temp (float): temperature reached in the last search epoch (paper grid 100…10000).
        search_epochs (int): search epochs E (the retrain phase uses ``train.epochs``).
        rewind (int): 0-based search epoch whose starting weights the retrain starts from (0 = the init).
        penalty (float): λ of ``λ · Σ_all gates σ(τ·m)`` (a sum over the whole table: scale λ down as tables
            grow; the paper's 1e-9…1e-8 is for ~10^6-10^8 rows).
        mode (str): ``search`` (soft gates, set by the search phase) or ``ticket`` (hard gates).
    """

    mask_init: float = 0.5
    final_temp: float = Field(200.0, ge=1.0)
    search_epochs: int = Field(5, ge=1)
    rewind: int = Field(1, ge=0)
    penalty: float = Field(1e-8, ge=0.0)
    mode: Literal["search", "ticket"] = "search"


class OptFSConfig(PlainEmbeddingConfig, GateOptions):
    """YAML ``embedding:`` of OptFS: :class:`GateOptions` plus the plain options ``init_std`` and ``l2``.

    Args:
        name (str): ``optfs``.
        gate_first_order (bool): also gate the first-order weights (FM, DeepFM, AutoInt+ wide part).
    """

    name: Literal["optfs"] = "optfs"
    gate_first_order: bool = True


def temperature(epoch: int, search_epochs: int, final_temp: float) -> float:
    """τ at the start of 0-based search epoch ``epoch``: ``final_temp^(e / (E − 1))``, capped at ``final_temp``.

    Example::

        >>> [round(temperature(e, 3, 100.0), 6) for e in range(4)]
        [1.0, 10.0, 100.0, 100.0]
    """
    if search_epochs <= 1:
        return 1.0 if epoch == 0 else float(final_temp)
    return float(final_temp) ** (min(epoch, search_epochs - 1) / (search_epochs - 1))


class GatedTables:
    """The gate tables of OptFS and their whole-table updates, for any field embedding that has them.

    A user sets, in its ``__init__``: ``config`` (a :class:`GateOptions`), ``gate_ebc`` (one ``<t>@gate``
    table per gated table ``t``: :func:`gate_table_config`), ``gate_tables`` (gated table → gate table name)
    and ``base_tables`` (gated table → the sharded table's name), then calls :meth:`init_gates`.
    """

    def init_gates(self) -> None:
        for weight in self.gate_ebc.parameters():
            setattr(weight, TABLE_OPTIMIZER, ("sgd", CAPTURE_LR))
        self.steps = 0  # Adam steps taken (bias correction; restarts at 0 in a resumed process)
        self.scale = 1.0 / (1.0 / (1.0 + math.exp(-self.config.mask_init)))  # 1 / σ(m_init)
        self.temperature = 1.0

    def start_epoch(self, epoch: int) -> None:
        """Training-loop hook: set τ for 0-based epoch ``epoch`` of the search."""
        cfg = self.config
        self.temperature = temperature(epoch, cfg.search_epochs, cfg.final_temp)

    def gate_of(self, m: torch.Tensor) -> torch.Tensor:
        """Gate values of gate parameters ``m`` in the current mode."""
        if self.config.mode == "ticket":
            return (m > 0).to(m.dtype) * self.scale
        return torch.sigmoid(self.temperature * m) * self.scale

    def gate_params(self, table: str) -> torch.Tensor:
        """``m`` of every row of ``table`` (``[rows]``, detached) from an unsharded model's gate table."""
        return self.gate_ebc.embedding_bags[self.gate_tables[table]].weight.detach()[:, M]

    def gate(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        """Gate values of ``ids`` of ``table`` in the current mode (unsharded model)."""
        return self.gate_of(self.gate_params(table)[ids])

    def captured_gates(self, rows: torch.Tensor) -> torch.Tensor:
        """Gates of looked-up gate rows ``[..., 4]``: the value of column M, the gradient routed to GRAD."""
        return self.gate_of(rows[..., M].detach() + (rows[..., GRAD] - rows[..., GRAD].detach()))

    def followed_tables(self) -> dict[str, str]:
        """Gate table → embedding table whose sharding placement it copies (same type, ranks, rows)."""
        return {self.gate_tables[t]: self.base_tables[t] for t in self.gate_tables}

    def penalty(self) -> torch.Tensor:
        """``λ · Σ_tables Σ_rows σ(τ·m)`` over the whole gate table (unsharded model; for reports and tests)."""
        total = sum(torch.sigmoid(self.temperature * self.gate_params(t)).sum() for t in self.gate_tables)
        return self.config.penalty * total

    def stepped_tables(self) -> list[str]:
        """Tables whose local shards :meth:`table_step` updates after every optimiser step."""
        if self.config.mode != "search" or self.config.penalty == 0:
            return []
        return list(self.gate_tables.values())

    def table_step(self, shards: dict[str, list[torch.Tensor]], lr: float) -> None:
        """One Adam step of every gate on local shards (``[rows, 4]`` each, updated in place): gradient =
        the captured BCE gradient (``−GRAD``) + ``λ·τ·σ'(τm)``; then ``GRAD`` is reset to 0."""
        self.steps += 1
        (b1, b2), t = BETAS, self.steps
        coef = self.config.penalty * self.temperature
        with torch.no_grad():
            for parts in shards.values():
                for w in parts:
                    s = torch.sigmoid(self.temperature * w[:, M])
                    grad = coef * s * (1 - s) - w[:, GRAD] / CAPTURE_LR
                    w[:, ADAM_M1].mul_(b1).add_(grad, alpha=1 - b1)
                    w[:, ADAM_V].mul_(b2).addcmul_(grad, grad, value=1 - b2)
                    denom = (w[:, ADAM_V] / (1 - b2 ** t)).sqrt_().add_(EPS)
                    w[:, M].addcdiv_(w[:, ADAM_M1], denom, value=-lr / (1 - b1 ** t))
                    w[:, GRAD].zero_()

    def keep_lists(self) -> dict[str, np.ndarray]:
        """Table → kept ids ``{i : m_i > 0}`` (sign of m, never σ > 0.5 of anything)."""
        return {t: torch.nonzero(self.gate_params(t) > 0).flatten().cpu().numpy().astype(np.int64)
                for t in self.gate_tables}


def gate_table_config(name: str, rows: int, features: list[str], mask_init: float) -> EmbeddingBagConfig:
    """A ``[rows, 4]`` gate table read by ``features`` (column M starts at ``mask_init``, see
    :func:`ctr.embeddings.tables.table_values`)."""
    return EmbeddingBagConfig(name=name, embedding_dim=GATE_WIDTH, num_embeddings=rows, feature_names=features,
                              pooling=PoolingType.SUM, weight_init_min=float(mask_init),
                              weight_init_max=float(mask_init))


class OptFSEmbedding(GatedTables, PlainEmbedding):
    """Plain tables plus a gate table per table; ``[B, F, D]`` with the sparse fields' vectors gated.

    Args:
        layout (FieldLayout): schema and table sizes.
        dim (int): embedding width (a multiple of 4).
        config (OptFSConfig): method options.
        device (torch.device | None): device of the embedding and gate tables (``meta`` to shard them).

    Example::

        >>> from ctr.features.schema import Schema
        >>> emb = OptFSEmbedding(FieldLayout(Schema(fields=[{"name": "u"}]), {"u": 10}), 8, OptFSConfig())
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["u"], torch.tensor([1, 2]), torch.tensor([1, 1]))
        >>> emb(torch.zeros(2, 0), kjt).shape
        torch.Size([2, 1, 8])
    """

    def __init__(self, layout: FieldLayout, dim: int, config: OptFSConfig,
                 device: torch.device | None = None, prefix: str = "") -> None:
        schema = layout.schema
        require_single_id_fields(layout, "OptFS")
        super().__init__(layout, dim, config, device, prefix)
        self.config = config
        self.field_tables = {f.name: f.table_name for f in schema.sparse_fields}
        self.gate_tables = {t: f"{prefix}{t}{GATE_SUFFIX}" for t in schema.tables}  # table -> its gate table
        self.base_tables = {t: f"{prefix}{t}" for t in schema.tables}
        self.gate_ebc = EmbeddingBagCollection(tables=[
            gate_table_config(self.gate_tables[t], layout.table_sizes[t], [s.name for s in specs], config.mask_init)
            for t, specs in schema.tables.items()], device=device)
        self.init_gates()
        self._first_order_gated = False
        self._shared: tuple[KeyedJaggedTensor, str, torch.Tensor] | None = None

    def field_gates(self, sparse: KeyedJaggedTensor, reader: str = "fields") -> torch.Tensor:
        """``[B, S]`` gates of the batch's sparse fields: one gate-table lookup per forward.

        With first-order gating the model's two readers (``fields``, ``first_order``) both need them: the
        first to ask looks them up, the other reuses them for the same KJT object, so the fused backward
        sees one lookup. A reader never reuses its own lookup (a second forward looks up afresh).
        """
        shared, self._shared = self._shared, None
        if shared is not None and shared[0] is sparse and shared[1] != reader:
            return shared[2]
        pooled = self.gate_ebc(sparse).to_dict()
        rows = torch.stack([pooled[n] for n in self.sparse_names], dim=1)  # [B, S, 4]
        gates = self.captured_gates(rows)
        if self._first_order_gated:
            self._shared = (sparse, reader, gates)
        return gates

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        fields = super().forward(dense, sparse)  # [B, F, D], sparse fields first
        if not self.sparse_names:
            return fields
        gated = fields[:, :len(self.sparse_names)] * self.field_gates(sparse).unsqueeze(-1)  # [B, S, D]
        return torch.cat([gated, fields[:, len(self.sparse_names):]], dim=1)

    def gate_first_order(self, first_order: FieldEmbedding) -> FieldEmbedding:
        """Scale ``first_order``'s sparse fields (``[B, F, 4]``, sparse first) by this method's gates (when
        configured), through a forward hook: the module and its state-dict keys stay the plain ones."""
        if self.config.gate_first_order:
            self._first_order_gated = True
            count = len(self.sparse_names)

            def gated(module, args, weights: torch.Tensor) -> torch.Tensor:
                scaled = weights[:, :count] * self.field_gates(args[1], "first_order").unsqueeze(-1)
                return torch.cat([scaled, weights[:, count:]], dim=1)

            first_order.register_forward_hook(gated)
        return first_order

    def ticket_remap(self, sparse: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """``sparse`` with pruned ids (``m ≤ 0``) replaced by the OOV id 0: the hard-gated model's input."""
        jts = sparse.to_dict()
        values = []
        for key in sparse.keys():
            ids = jts[key].values()
            table = self.field_tables.get(key)
            values.append(ids if table is None else torch.where(self.gate_params(table)[ids] > 0, ids,
                                                                 torch.zeros_like(ids)))
        return KeyedJaggedTensor.from_lengths_sync(sparse.keys(), torch.cat(values), sparse.lengths())
