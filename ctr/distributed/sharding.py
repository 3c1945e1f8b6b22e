"""Sharding plans and ``DistributedModelParallel``: where each table lives.

What a table *is* comes from :mod:`ctr.embeddings.tables`; how it is *updated* from
:mod:`ctr.train.optim`; this module only decides placement (planner + per-table constraints).
"""

from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder, ShardedEmbeddingBagCollection
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from ctr.config import StrictConfig
from ctr.embeddings.tables import table_values

ShardingType = Literal["table_wise", "column_wise", "row_wise", "table_row_wise", "table_column_wise",
                       "data_parallel"]
INIT_BLOCK_ELEMENTS = 1 << 21
CPU_MISSING = {"row_wise", "table_row_wise", "grid_shard"}  # TorchRec lists these for CUDA only


class ShardingConfig(StrictConfig):
    """Args:
        types (list[str] | None): sharding types the planner may use for every table (``None``:
            planner's choice among model-parallel types).
        min_partition (int | None): column-wise shard width (must be a multiple of 4).
    """

    types: list[ShardingType] | None = None
    min_partition: int | None = None


class AllTypesSharder(EmbeddingBagCollectionSharder):
    """Stock sharder that also offers row-wise variants on CPU (they run correctly there, stack.md §3)."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        return super().sharding_types("cuda" if compute_device_type == "cpu" else compute_device_type)


def table_configs_of(model: nn.Module) -> dict[str, EmbeddingBagConfig | EmbeddingConfig]:
    return {c.name: c for m in model.modules() if isinstance(m, EmbeddingBagCollection)
            for c in m.embedding_bag_configs()} | sequence_table_configs_of(model)


def sequence_table_configs_of(model: nn.Module) -> dict[str, EmbeddingConfig]:
    """Unpooled (``EmbeddingCollection``) tables: DIN histories sharing a table with the candidate."""
    return {c.name: c for m in model.modules() if isinstance(m, EmbeddingCollection) for c in m.embedding_configs()}


def _sharders(model: nn.Module, cfg: ShardingConfig) -> list:
    """EBC sharder, plus the stock ``EmbeddingCollectionSharder`` when the model has EC tables
    (on CPU the planner picks row_wise + fused for them, stack.md §9)."""
    sharders: list = [AllTypesSharder() if set(cfg.types or []) & CPU_MISSING else EmbeddingBagCollectionSharder()]
    if sequence_table_configs_of(model):
        sharders.append(EmbeddingCollectionSharder())
    return sharders


def _constraints(tables: dict[str, EmbeddingBagConfig], cfg: ShardingConfig, fused: bool):
    if not fused:  # TorchRec's dense kernel exists only for data-parallel tables
        return {t: ParameterConstraints(sharding_types=["data_parallel"], compute_kernels=["dense"]) for t in tables}
    types = cfg.types or ["table_wise", "column_wise", "table_column_wise"]
    types = [t for t in types if t != "data_parallel"] or ["table_wise"]
    return {t: ParameterConstraints(sharding_types=list(types), compute_kernels=["fused"],
                                    min_partition=cfg.min_partition) for t in tables}


def shard_model(model: nn.Module, cfg: ShardingConfig, fused: bool, device: torch.device,
                seed: int) -> DistributedModelParallel:
    """Plan with TorchRec's planner, wrap in DMP and give every table its deterministic initial rows.
    Row-wise pooled tables on gloo need equal per-rank training batches (:func:`needs_equal_batches`)."""
    tables = table_configs_of(model)
    world = dist.get_world_size()
    sharders = _sharders(model, cfg)
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=world, compute_device=device.type),
                                       constraints=_constraints(tables, cfg, fused))
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    follow_placements(plan, {f: b for m in model.modules() if callable(getattr(m, "followed_tables", None))
                             for f, b in m.followed_tables().items()})
    dmp = DistributedModelParallel(model, device=device, plan=plan, sharders=sharders)
    init_sharded_tables(dmp, tables, seed)
    return dmp


POOLED = (EmbeddingBagCollection, ShardedEmbeddingBagCollection)  # DMP swaps the former for the latter in place


def needs_equal_batches(model: nn.Module, plan) -> list[str]:
    """Row-wise sharded pooled tables (``row_wise``/``table_row_wise`` on an ``EmbeddingBagCollection``) of
    ``model`` under ``plan`` (e.g. ``dmp.plan``) when it is sharded over several gloo ranks. Their forward is a
    reduce-scatter whose backward is an all-gather, which gloo only does for equal sizes; the loader's per-rank
    shares differ by up to one block, so their training batches must be padded to equal size
    (``BatchIterator(equal_batches=True)``). Empty elsewhere (one process, NCCL, or no such table)."""
    if dist.get_world_size() <= 1 or dist.get_backend() != "gloo":
        return []
    return sorted(name for path, module_plan in plan.plan.items()
                  if isinstance(model.get_submodule(path), POOLED)
                  for name, ps in module_plan.items() if ps.sharding_type in ("row_wise", "table_row_wise"))


def init_sharded_tables(dmp: nn.Module, tables: dict[str, EmbeddingBagConfig], seed: int) -> None:
    """Generate each local shard's rows alone (no rank builds a full table); same values at every world size."""
    with torch.no_grad():
        for table, piece, (r0, c0) in _local_pieces(dmp, set(tables)):
            _fill(piece, tables[table], seed, r0, c0, piece.shape[1])


def _local_pieces(dmp: nn.Module, names: set[str]):
    """``(table, tensor, (row0, col0))`` for every piece of tables ``names`` this rank holds: each local
    shard of a sharded table (at its offsets in the whole table), the whole tensor of a replicated or
    unsharded one. The tensors share the tables' storage, so in-place writes reach the tables."""
    for key, value in dmp.state_dict(keep_vars=True).items():
        parts = key.split(".")
        if len(parts) < 3 or parts[-3] not in ("embedding_bags", "embeddings") or parts[-2] not in names:
            continue
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                yield parts[-2], shard.tensor, tuple(shard.metadata.shard_offsets)
        else:
            yield parts[-2], value.data, (0, 0)


def _fill(target: torch.Tensor, cfg, seed: int, row0: int, col0: int, cols: int) -> None:
    """Copy generated rows into ``target`` block by block: scratch memory stays ~8 MB per block."""
    step = max(1, INIT_BLOCK_ELEMENTS // max(cols, 1))
    for r in range(0, target.shape[0], step):
        n = min(step, target.shape[0] - r)
        target[r:r + n].copy_(table_values(cfg, seed, row_start=row0 + r, row_count=n, col_start=col0, col_count=cols))


def local_table_shards(dmp: nn.Module, names: list[str]) -> dict[str, list[torch.Tensor]]:
    """This rank's pieces of tables ``names`` (``[rows, cols]`` views that share the tables' storage, so
    in-place updates reach the tables): the local shards of a sharded table, the whole tensor of a
    replicated or unsharded one, nothing where another rank holds the table."""
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for table, piece, _ in _local_pieces(dmp, set(names)):
        if piece.numel():
            out[table].append(piece)
    return out


def follow_placements(plan, follows: dict[str, str]) -> None:
    """Give each follower table (OptFS's gate table) its base table's placement, in place: the same
    sharding type and ranks and the same row ranges at the follower's own width, so a row's companion
    lives on the rank that holds the row. Column-wise bases (every column shard holds all rows) put the
    follower table-wise on the rank of their first column shard; data-parallel followers stay replicated."""
    from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
    from torchrec.distributed.types import ParameterSharding
    from torchrec.distributed.types import ShardingType as Kind

    where = {name: (path, ps) for path, module_plan in plan.plan.items() for name, ps in module_plan.items()}
    for follower, base in follows.items():
        if follower not in where or base not in where:
            continue
        path, own = where[follower]
        _, ref = where[base]
        if ref.sharding_type == Kind.DATA_PARALLEL.value or ref.sharding_spec is None:
            continue
        width = own.sharding_spec.shards[0].shard_sizes[1] if own.sharding_spec is not None else None
        if width is None:
            continue
        shards = [m for m in ref.sharding_spec.shards if m.shard_offsets[1] == 0]  # the first column block
        kind = ref.sharding_type
        if kind in (Kind.COLUMN_WISE.value, Kind.TABLE_COLUMN_WISE.value):
            kind = Kind.TABLE_WISE.value
        if kind not in (Kind.TABLE_WISE.value, Kind.ROW_WISE.value, Kind.TABLE_ROW_WISE.value):
            continue  # grid shards: the planner's own placement
        spec = EnumerableShardingSpec([ShardMetadata(shard_offsets=[m.shard_offsets[0], 0],
                                                     shard_sizes=[m.shard_sizes[0], width], placement=m.placement)
                                       for m in shards])
        ranks = [m.placement.rank() for m in shards]
        plan.plan[path][follower] = ParameterSharding(sharding_type=kind, compute_kernel=own.compute_kernel,
                                                      ranks=ranks, sharding_spec=spec)


def plan_text(dmp: DistributedModelParallel) -> str:
    return str(dmp.plan)


def gather_rows(array: np.ndarray) -> np.ndarray:
    """Concatenate an array from every rank in rank order (identity at world size 1)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return array
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


def mean_across_ranks(values: list[float]) -> list[float]:
    """Element-wise mean of equal-length float lists over ranks."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()
