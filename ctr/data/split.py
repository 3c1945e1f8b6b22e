"""Deterministic train/valid/test split: given files win; missing splits are carved out of train.

A ratio split draws one seeded numpy permutation of the train rows and cuts it into exact sizes
(ratios renormalised over train plus the carved splits). A column split sends rows to the split
whose value list holds the row's value of ``split.column``. Rows keep their source order.
"""

import logging

import numpy as np
import polars as pl

from ctr.data.readers import SPLITS, DataConfig
from ctr.errors import DataError

log = logging.getLogger("ctr.data")


def split_frames(frames: dict[str, pl.DataFrame], cfg: DataConfig) -> dict[str, pl.DataFrame]:
    """Return ``{"train", "valid", "test"} → frame``.

    Args:
        frames: ``train`` (required) plus the ``valid``/``test`` frames read from given files.
        cfg: the data config; ``cfg.split`` says how to carve the splits that have no file.
    """
    missing = [s for s in SPLITS[1:] if s not in frames]
    if not missing:
        return {s: frames[s] for s in SPLITS}
    train = frames["train"]
    if cfg.split.column is not None:
        carved = _by_column(train, cfg, missing)
    else:
        carved = _by_ratio(train, cfg.split.ratios, cfg.split.seed, missing)
    out = {s: carved[s] if s in carved else frames[s] for s in SPLITS}
    log.info("split: %s", ", ".join(f"{s} {out[s].height} rows" + (" (carved)" if s in missing else "")
                                    for s in SPLITS))
    for s in SPLITS:
        if out[s].height == 0:
            log.warning("split %s is empty", s)
    return out


def split_sizes(n: int, ratios: tuple[float, float, float], carved: list[str]) -> dict[str, int]:
    """Exact row counts for train and the carved splits (ratios renormalised over them)."""
    weights = {"train": ratios[0], **{s: ratios[SPLITS.index(s)] for s in carved}}
    total = sum(weights.values())
    sizes = {s: int(round(n * w / total)) for s, w in weights.items() if s != "train"}
    sizes["train"] = n - sum(sizes.values())
    if sizes["train"] < 0:  # rounding can overshoot by one on tiny inputs
        sizes[carved[-1]] += sizes["train"]
        sizes["train"] = 0
    return sizes


def ratio_codes(n: int, ratios, seed: int, carved: list[str]) -> np.ndarray:
    """Split code (index into ``SPLITS``) of each of ``n`` train rows under a ratio split.

    One seeded permutation of ``range(n)`` cut into the exact :func:`split_sizes` (train first, then
    the carved splits in order); 1 byte per row, so a streaming ``prepare`` can assign rows to splits
    without holding them.
    """
    sizes = split_sizes(n, ratios, carved)
    perm = np.random.default_rng(seed).permutation(n)
    codes = np.zeros(n, dtype=np.uint8)
    start = 0
    for s in ["train", *carved]:
        codes[perm[start:start + sizes[s]]] = SPLITS.index(s)
        start += sizes[s]
    return codes


def column_code_expr(cfg: DataConfig, carved: list[str]) -> pl.Expr:
    """Split code of a row under a column split (null: the row matches no split's values)."""
    value = pl.col(cfg.split.column).cast(pl.String)
    listed = [v for s in carved for v in (getattr(cfg.split, s) or [])]
    code = pl.lit(None, pl.UInt8)
    if cfg.split.train is None:
        code = pl.when(~value.is_in(listed) | value.is_null()).then(pl.lit(0, pl.UInt8)).otherwise(code)
    else:
        code = pl.when(value.is_in(cfg.split.train)).then(pl.lit(0, pl.UInt8)).otherwise(code)
    for s in carved:
        code = pl.when(value.is_in(getattr(cfg.split, s) or [])).then(pl.lit(SPLITS.index(s), pl.UInt8)).otherwise(code)
    return code


def _by_ratio(train: pl.DataFrame, ratios, seed: int, carved: list[str]) -> dict[str, pl.DataFrame]:
    codes = ratio_codes(train.height, ratios, seed, carved)
    return {s: train.filter(pl.Series(codes == SPLITS.index(s))) for s in ["train", *carved]}


def _by_column(train: pl.DataFrame, cfg: DataConfig, carved: list[str]) -> dict[str, pl.DataFrame]:
    col = cfg.split.column
    if col not in train.columns:
        raise DataError(f"split.column {col!r} is not among the columns read: {train.columns}", column=col)
    codes = train.select(column_code_expr(cfg, carved).alias("_split"))["_split"]
    out = {s: train.filter(codes == SPLITS.index(s)) for s in ["train", *carved]}
    dropped = train.height - sum(f.height for f in out.values())
    if dropped:
        log.warning("column split on %r: %d row(s) match no split's values and are dropped", col, dropped)
    return out
