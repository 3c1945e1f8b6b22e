"""DNIS's phases: ``warm`` → ``search`` → ``materialise`` → ``retrain``. See :mod:`ctr.embeddings.dnis`.

* ``warm`` trains every weight with α fixed at 1 for ``warm_epochs`` (early stopping with ``train.patience``,
  the best epoch kept).
* ``search`` starts from the warm weights (fresh optimiser state) and alternates, per step, a train batch
  (embedding tables only when ``freeze_dense``) with a validation batch that updates α (normalised gradient,
  SGD, clamp): ``TrainRequest(freeze_dense=..., ...)`` with the embedding in ``mode: search``; the worker
  interleaves the α steps. The best validation epoch (embeddings and α) is kept.
* ``materialise`` prunes α by magnitude under the parameter budget (:func:`prune_alpha`: per block the
  largest-α columns, a multiple of 4 of them), writes the mixed-dimension model (``embedding: block_dim``)
  whose block tables hold ``e[:, cols_k] · α[k, cols_k]`` and whose projections put each column back where
  it was, so it predicts exactly as the searched model with the pruned α (:func:`materialise_state`; the
  tests check it). The ids and the feature artifact do not change (DNIS prunes columns, not rows).
* ``retrain`` trains that model from those weights with ``train:`` (fresh optimiser state); the materialised
  weights themselves compete as epoch 0, so the result is never worse on validation than no retraining
  (the paper's retraining is optional).

Artifacts: ``alpha.json`` (α, the block starts and rows, the kept columns, the widths) and plots of α
(heat map) and of the widths per block.
"""

import json
import logging

import numpy as np
import torch

from ctr.embeddings.block_dim import BlockDimConfig
from ctr.embeddings.projection import projection_param_count
from ctr.features.artifact import FeatureArtifact
from ctr.search.common import bars_png, load_trained, retrain_compact, round_up, train_valid
from ctr.search.phases import Phase, PhaseContext, TrainRequest
from ctr.train import checkpoint

log = logging.getLogger("ctr.search")


def phases(config) -> list[Phase]:
    """DNIS's four phases for ``config`` (a ``DNISConfig``)."""
    return [Phase("warm", warm), Phase("search", search), Phase("materialise", materialise),
            Phase("retrain", retrain)]


def warm(ctx: PhaseContext) -> dict:
    """Train with α fixed at 1; keep the best epoch."""
    cfg = ctx.embedding_cfg.model_copy(update={"mode": "warm"})
    train_cfg = ctx.train_cfg.model_copy(update={"epochs": cfg.warm_epochs})
    result = ctx.train(TrainRequest(cfg, train_cfg, str(ctx.artifact_dir), train_valid(ctx.splits),
                                    str(ctx.dir / "checkpoints"), restore_best=True))
    return {"final": str(result.checkpoint_dir), "valid": result.valid, "history": result.fit.history}


def search(ctx: PhaseContext) -> dict:
    """Alternating search from the warm weights; keep the best epoch (embeddings and α)."""
    cfg = ctx.embedding_cfg.model_copy(update={"mode": "search"})
    train_cfg = ctx.train_cfg.model_copy(update={"epochs": cfg.search_epochs})
    if cfg.search_sparse_lr is not None:
        train_cfg = train_cfg.model_copy(update={"optimizer": train_cfg.optimizer.model_copy(
            update={"sparse_lr": cfg.search_sparse_lr})})
    result = ctx.train(TrainRequest(cfg, train_cfg, str(ctx.artifact_dir), train_valid(ctx.splits),
                                    str(ctx.dir / "checkpoints"), init_from=ctx.previous["warm"]["final"],
                                    restore_best=True, freeze_dense=cfg.freeze_dense))
    return {"final": str(result.checkpoint_dir), "valid": result.valid, "history": result.fit.history}


def prune_alpha(alpha: np.ndarray, block_rows: np.ndarray, budget: float) -> list[np.ndarray]:
    """Magnitude pruning of α ``[b, D]`` into per-block column sets whose sizes are multiples of 4.

    Keeping the entries with ``α > t`` gives block ``k`` the width ``w_k(t) = round_up_4(#{c : α_kc > t})``
    (at most ``D``) and ``Σ_k rows_k · w_k(t)`` parameters; ``t`` is the smallest threshold (≥ 0: an entry the
    search clamped to 0 is always pruned) whose parameters fit ``budget``. Block ``k`` keeps its ``w_k``
    largest-α columns (ties to the lower column), returned sorted; the columns added by rounding up are the
    next largest.

    Example::

        >>> a = np.array([[1.0, .9, .8, .7, .6, .5, .4, .3], [.2, 0, 0, 0, .1, 0, 0, 0]])
        >>> [c.tolist() for c in prune_alpha(a, np.array([10, 100]), 10 * 8 + 100 * 4)]
        [[0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 4]]
        >>> [c.tolist() for c in prune_alpha(a, np.array([10, 100]), 10 * 8)]
        [[0, 1, 2, 3, 4, 5, 6, 7], []]
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    rows = np.asarray(block_rows, dtype=np.float64)
    blocks, dim = alpha.shape

    def widths(t: float) -> np.ndarray:
        return np.array([min(dim, round_up(int((alpha[k] > t).sum()))) for k in range(blocks)])

    for t in sorted({0.0, *alpha[alpha > 0].tolist()}):  # ascending: the first that fits keeps the most
        w = widths(t)
        if float((rows * w).sum()) <= budget:
            break
    else:
        w = np.zeros(blocks, dtype=np.int64)
    out = []
    for k in range(blocks):
        order = sorted(range(dim), key=lambda c, k=k: (-alpha[k, c], c))
        out.append(np.array(sorted(order[: int(w[k])]), dtype=np.int64))
    return out


def prune_mask(cols: list[np.ndarray], dim: int) -> torch.Tensor:
    """``[b, D]`` 0/1 mask of the kept columns."""
    mask = torch.zeros(len(cols), dim)
    for k, c in enumerate(cols):
        mask[k, torch.as_tensor(c, dtype=torch.long)] = 1.0
    return mask


def materialise_state(searched, compact, cols: list[np.ndarray]) -> dict:
    """The mixed-dimension model's state from the searched model's: block ``k`` of table ``t`` holds rows
    ``starts_t[k] … starts_t[k+1]`` of ``t``, columns ``cols[k]``, times ``α[k, cols[k]]``; block ``k``'s projection
    maps its ``j``-th column back to column ``cols[k][j]``; every other compact weight (dense layers,
    first-order tables, numeric vectors) is the searched model's."""
    emb = searched.embedding
    src = searched.state_dict()
    alpha = emb.column_alpha().detach()
    own = "embedding.ebc.embedding_bags."
    out = {}
    for key, dst in compact.state_dict().items():
        if key.startswith(own):
            name = key[len(own):-len(".weight")]
            table, k = name.rsplit("@b", 1)
            k = int(k)
            lo, hi = emb.block_starts[table][k], emb.block_starts[table][k + 1]
            c = torch.as_tensor(cols[k], dtype=torch.long)
            value = src[f"{own}{table}.weight"][lo:hi][:, c] * alpha[k, c]
        elif key.startswith("embedding.projection.maps.b"):
            k = int(key[len("embedding.projection.maps.b"):].split(".")[0])
            value = torch.zeros_like(dst)
            value[torch.as_tensor(cols[k], dtype=torch.long), torch.arange(len(cols[k]))] = 1.0
        else:
            value = src[key]
        if tuple(value.shape) != tuple(dst.shape):
            raise ValueError(f"{key}: mixed-dimension shape {tuple(dst.shape)} != gathered {tuple(value.shape)}")
        out[key] = value.detach().clone().to(dst.dtype)
    return out


def materialise(ctx: PhaseContext) -> dict:
    """Prune α under ``param_ratio``; the mixed-dimension model's weights from the searched model."""
    from ctr.embeddings.tables import embedding_param_count
    from ctr.models import build_model

    cfg = ctx.embedding_cfg.model_copy(update={"mode": "search"})
    layout = FeatureArtifact.load(ctx.artifact_dir).layout()
    searched = load_trained(ctx, cfg, ctx.previous["search"]["final"], layout)
    emb = searched.embedding
    dim = emb.embedding_dim
    per_table = emb.block_rows()
    rows = np.array([sum(r[k] for r in per_table.values()) for k in range(emb.num_blocks)])
    full = float(rows.sum() * dim)
    alpha = emb.column_alpha().detach().numpy()
    cols = prune_alpha(alpha, rows, cfg.param_ratio * full)
    widths = [len(c) for c in cols]
    compact_cfg = BlockDimConfig(starts=emb.block_starts, widths=widths, init_std=cfg.init_std, l2=cfg.l2)
    compact = build_model(ctx.model_cfg, layout, compact_cfg)
    compact.load_state_dict(materialise_state(searched, compact, cols))
    root = ctx.dir / "compact"
    checkpoint.save(compact, root / "init")
    kept = float((rows * np.array(widths)).sum())
    doc = {"alpha": emb.alpha.tolist(), "groups": emb.groups, "blocks": list(cfg.blocks), "block_rows": rows.tolist(),
           "starts": emb.block_starts, "columns": [c.tolist() for c in cols], "widths": widths,
           "field_params": kept, "field_params_full": full, "field_params_ratio": kept / max(full, 1.0),
           "embedding_params": embedding_param_count(compact),
           "embedding_params_searched": embedding_param_count(searched)}
    (ctx.dir / "alpha.json").write_text(json.dumps(doc, indent=2))
    ctx.log_artifact(ctx.dir / "alpha.json", "dnis")
    ctx.log_artifact(alpha_png(alpha, widths, rows, ctx.dir / "alpha.png"), "plots")
    names = [f"b{k} ({int(r)} rows)" for k, r in enumerate(rows)]
    ctx.log_artifact(bars_png(names, {"D": [dim] * len(widths), "width (x4)": widths},
                              "DNIS: width per frequency block", ctx.dir / "widths.png"), "plots")
    ctx.log_metrics({"field_params_ratio": doc["field_params_ratio"],
                     **{f"width_b{k}": float(w) for k, w in enumerate(widths)}})
    log.info("DNIS widths per block %s (rows %s): %.1f%% of the field-table parameters", widths, rows.tolist(),
             100 * doc["field_params_ratio"])
    return {"artifact_dir": str(ctx.artifact_dir), "splits": {k: str(v) for k, v in ctx.splits.items()},
            "init": str(root / "init"), "embedding": compact_cfg.model_dump(), "widths": widths,
            "block_rows": rows.tolist(), "field_params_ratio": doc["field_params_ratio"],
            "projection_params": projection_param_count(compact), "alpha": str(ctx.dir / "alpha.json")}


def retrain(ctx: PhaseContext) -> dict:
    """Train the mixed-dimension model from the materialised weights (fresh optimiser state)."""
    made = ctx.previous["materialise"]
    emb = BlockDimConfig.parse(made["embedding"], "embedding")
    extra = {"widths": made["widths"], "block_rows": made["block_rows"],
             "field_params_ratio": made["field_params_ratio"], "projection_params": made["projection_params"],
             "search_valid_auc": ctx.previous["search"]["valid"].get("auc"),
             "warm_valid_auc": ctx.previous["warm"]["valid"].get("auc")}
    return retrain_compact(ctx, emb, made, extra, validate_start=True)


def alpha_png(alpha: np.ndarray, widths: list[int], rows, path):
    """Heat map of α (blocks × columns) with each block's kept width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.3 * alpha.shape[1] + 2), 0.5 * alpha.shape[0] + 1.5))
    im = ax.imshow(alpha, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_yticks(range(alpha.shape[0]), [f"b{k}: {int(r)} rows, w={w}" for k, (r, w) in enumerate(zip(rows, widths,
                                                                                                        strict=True))])
    ax.set_xlabel("embedding column")
    ax.set_title("DNIS α per frequency block (head first)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["materialise_state", "phases", "prune_alpha", "prune_mask"]
