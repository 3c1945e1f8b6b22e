"""Compact models from a search: keep-lists → a smaller feature artifact, remapped splits, gathered rows.

A search method decides, per table, which ids (rows) survive. The compact model is an ordinary
dense model on an ordinary :class:`~ctr.features.artifact.FeatureArtifact` whose vocabulary holds only
the kept values, renumbered ``1..K`` in their old order. A pruned value is therefore *absent* from the
vocabulary and encodes to the OOV id 0, exactly as a value never seen in training: preprocessing stays
the one path from raw values to ids, and ``load_bundle`` / the gRPC scorer load the result unchanged.

Row 0 (OOV) is always kept: the compact table's row 0 is what both unseen and pruned values read.

Example::

    >>> import numpy as np
    >>> remap_of(np.array([0, 2, 5]), 6).tolist()   # old id -> new id; pruned ids -> 0
    [0, 0, 1, 0, 0, 2]
"""

from pathlib import Path

import numpy as np
import polars as pl

from ctr.features.artifact import FeatureArtifact


def normalise_keep(keep: np.ndarray, rows: int) -> np.ndarray:
    """Sorted unique kept ids in ``[0, rows)`` with the OOV id 0 always first."""
    keep = np.unique(np.asarray(keep, dtype=np.int64))
    if keep.size and (keep[0] < 0 or keep[-1] >= rows):
        raise ValueError(f"keep-list ids must lie in [0, {rows}), got [{keep[0]}, {keep[-1]}]")
    return keep if keep.size and keep[0] == 0 else np.concatenate([[0], keep]).astype(np.int64)


def remap_of(keep: np.ndarray, rows: int) -> np.ndarray:
    """``[rows]`` int64 array: old id → new id (kept ids renumbered in order, pruned ids → 0)."""
    keep = normalise_keep(keep, rows)
    remap = np.zeros(rows, dtype=np.int64)
    remap[keep] = np.arange(len(keep), dtype=np.int64)
    return remap


def compact_artifact(artifact: FeatureArtifact, keep: dict[str, np.ndarray]) -> FeatureArtifact:
    """The artifact with only the kept values of each table in ``keep`` (other tables unchanged).

    Counts stay with their values; the OOV row's count gains the counts of the pruned values (they are
    OOV now), so per-id train counts (DNIS, MBA) stay truthful.
    """
    sizes = artifact.table_sizes()
    parts = []
    for table, frame in artifact.vocab.partition_by("table", as_dict=True, maintain_order=True).items():
        name = table[0]
        if name not in keep:
            parts.append(frame)
            continue
        remap = remap_of(keep[name], sizes[name])
        ids = frame["id"].to_numpy()
        new = remap[ids]
        kept = (new > 0) | (ids == 0)
        pruned_count = int(frame["count"].to_numpy()[~kept].sum())
        out = frame.with_columns(pl.Series("id", new)).filter(pl.Series(kept))
        out = out.with_columns(pl.when(pl.col("id") == 0).then(pl.col("count") + pruned_count)
                               .otherwise(pl.col("count")).alias("count"))
        parts.append(out)
    vocab = pl.concat(parts) if parts else artifact.vocab
    return FeatureArtifact(artifact.schema, vocab, artifact.numeric)


def remap_split(src: str | Path, dst: str | Path, schema, remaps: dict[str, np.ndarray]) -> Path:
    """Rewrite an encoded split (folder of ``part-*.parquet`` or one file) with ids remapped per table.

    Only single-id (categorical) columns are remapped here; sequence columns are lists and go through
    ``list.eval`` with the same table remap.
    """
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("*.parquet")) if src.is_dir() else [src]
    for f in files:
        frame = pl.read_parquet(f)
        cols = []
        for spec in schema.sparse_fields:
            remap = remaps.get(spec.table_name)
            if remap is None or spec.name not in frame.columns:
                continue
            table = pl.Series(remap)
            if spec.kind == "categorical":
                cols.append(pl.Series(spec.name, remap[frame[spec.name].to_numpy()]).cast(frame[spec.name].dtype))
            else:
                col = frame[spec.name]
                cols.append(col.list.eval(pl.element().map_batches(
                    lambda s, t=table: pl.Series(t.to_numpy()[s.to_numpy()]).cast(s.dtype))).alias(spec.name))
        frame.with_columns(cols).write_parquet(dst / f.name)
    return dst


TABLE_KEY = "embedding_bags."


def table_of(key: str) -> str | None:
    """The table config name of a state-dict key of an ``EmbeddingBagCollection`` weight, else ``None``."""
    if TABLE_KEY not in key or not key.endswith(".weight"):
        return None
    return key.split(TABLE_KEY, 1)[1][: -len(".weight")]


def compact_state(source: dict, target: dict, keep: dict[str, np.ndarray],
                  row_scale: dict[str, "np.ndarray"] | None = None, scaled_prefix: str = "embedding.",
                  dims: dict[str, int] | None = None, own_prefixes: tuple[str, ...] = (),
                  scale_first_order: bool = False) -> dict:
    """Fill ``target`` (a compact model's state dict) from ``source`` (the full model's).

    Table weights of a table ``t`` in ``keep`` (also its first-order ``lin_t``) take rows
    ``source[keep[t]]``; rows of keys under ``scaled_prefix`` (the model's field embedding) are multiplied
    by ``row_scale[t]`` (one factor per kept row, e.g. OptFS's hard gate) and, for a table in ``dims``, keep
    their first ``dims[t]`` columns, zero-padded to the compact table's width (OptEmbed's prefix mask in a
    table rounded up to a multiple of 4). Keys starting with one of ``own_prefixes`` keep ``target``'s own
    values (e.g. projections that exist only in the compact model). ``scale_first_order``: the kept rows of
    ``lin_t`` are multiplied by ``row_scale[t]`` too (OptFS's gated first-order weights). Every other key of ``target`` is
    copied from ``source`` and must have the same shape.

    Returns:
        dict: ``target`` filled (new tensors).
    """
    import torch

    from ctr.models.layers.linear import FIRST_ORDER_PREFIX

    row_scale, dims = row_scale or {}, dims or {}
    out = {}
    for key, dst in target.items():
        if own_prefixes and key.startswith(own_prefixes):
            out[key] = dst.detach().clone()
            continue
        if key not in source:
            raise KeyError(f"compact model key {key!r} is not in the full model's state")
        src = source[key]
        name = table_of(key)
        table = None if name is None else (name[len(FIRST_ORDER_PREFIX):] if name.startswith(FIRST_ORDER_PREFIX)
                                           and name[len(FIRST_ORDER_PREFIX):] in keep else name)
        value = src.detach()
        if table in keep:
            value = value[torch.as_tensor(keep[table], dtype=torch.long)]
        value = value.clone()
        if scale_first_order and table in row_scale and name == FIRST_ORDER_PREFIX + table:
            value = value * torch.as_tensor(row_scale[table], dtype=value.dtype).unsqueeze(-1)
        if table is not None and key.startswith(scaled_prefix) and name == table:
            if table in row_scale:
                value = value * torch.as_tensor(row_scale[table], dtype=value.dtype).unsqueeze(-1)
            if table in dims:
                value = prefix_columns(value, dims[table], dst.shape[-1])
        if tuple(value.shape) != tuple(dst.shape):
            raise ValueError(f"{key}: compact shape {tuple(dst.shape)} != gathered {tuple(value.shape)}")
        out[key] = value
    return out


def prefix_columns(rows, keep: int, width: int):
    """``rows[:, :keep]`` zero-padded to ``width`` columns (``keep ≤ width``)."""
    import torch

    if keep > width:
        raise ValueError(f"cannot keep {keep} columns in a table {width} wide")
    out = torch.zeros(rows.shape[0], width, dtype=rows.dtype)
    out[:, :keep] = rows[:, :keep]
    return out
