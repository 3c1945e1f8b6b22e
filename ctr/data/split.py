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


def _by_ratio(train: pl.DataFrame, ratios, seed: int, carved: list[str]) -> dict[str, pl.DataFrame]:
    sizes = split_sizes(train.height, ratios, carved)
    perm = np.random.default_rng(seed).permutation(train.height)
    out, start = {}, 0
    for s in ["train", *carved]:
        idx = np.sort(perm[start:start + sizes[s]])
        out[s] = train[idx]
        start += sizes[s]
    return out


def _by_column(train: pl.DataFrame, cfg: DataConfig, carved: list[str]) -> dict[str, pl.DataFrame]:
    col = cfg.split.column
    if col not in train.columns:
        raise DataError(f"split.column {col!r} is not among the columns read: {train.columns}", column=col)
    value = pl.col(col).cast(pl.String)
    listed = [v for s in carved for v in (getattr(cfg.split, s) or [])]
    out = {s: train.filter(value.is_in(getattr(cfg.split, s) or [])) for s in carved}
    if cfg.split.train is None:
        out["train"] = train.filter(~value.is_in(listed) | value.is_null())
    else:
        out["train"] = train.filter(value.is_in(cfg.split.train))
    dropped = train.height - sum(f.height for f in out.values())
    if dropped:
        log.warning("column split on %r: %d row(s) match no split's values and are dropped", col, dropped)
    return out
