"""A follower table (OptFS's gate table) takes its base table's placement: same type, ranks and row ranges."""

import pytest
from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
from torchrec.distributed.types import EmbeddingModuleShardingPlan, ParameterSharding, ShardingPlan

from ctr.distributed.sharding import follow_placements


def _ps(kind: str, shards: list[tuple[int, int, int, int, int]]) -> ParameterSharding:
    """shards: (row offset, col offset, rows, cols, rank)."""
    spec = EnumerableShardingSpec([ShardMetadata([r0, c0], [n, w], f"rank:{rank}/cpu") for r0, c0, n, w, rank in shards])
    return ParameterSharding(sharding_type=kind, compute_kernel="fused", ranks=[s[4] for s in shards],
                             sharding_spec=spec)


@pytest.mark.parametrize("kind, base, want_kind, want", [
    ("row_wise", [(0, 0, 50, 16, 0), (50, 0, 50, 16, 1)], "row_wise", [(0, 50, 0), (50, 50, 1)]),
    ("table_wise", [(0, 0, 100, 16, 1)], "table_wise", [(0, 100, 1)]),
    ("column_wise", [(0, 0, 100, 8, 1), (0, 8, 100, 8, 0)], "table_wise", [(0, 100, 1)]),
])
def test_follower_gets_the_base_rows_on_the_same_ranks(kind, base, want_kind, want):
    plan = ShardingPlan({
        "embedding.ebc": EmbeddingModuleShardingPlan({"t": _ps(kind, base)}),
        "embedding.gate_ebc": EmbeddingModuleShardingPlan({"t@gate": _ps("table_wise", [(0, 0, 100, 4, 0)])}),
    })
    follow_placements(plan, {"t@gate": "t"})
    got = plan.plan["embedding.gate_ebc"]["t@gate"]
    assert got.sharding_type == want_kind and got.compute_kernel == "fused"
    assert got.ranks == [rank for _, _, rank in want]
    assert [(m.shard_offsets, m.shard_sizes, m.placement.rank()) for m in got.sharding_spec.shards] == \
        [([r0, 0], [n, 4], rank) for r0, n, rank in want]
