"""OptEmbed's phases: ``supernet`` → ``evolve`` → ``materialise`` → ``retrain``. See :mod:`ctr.embeddings.optembed`.

* ``supernet`` trains the supernet for ``supernet_epochs`` (early stopping on validation AUC with
  ``train.patience``; the best epoch is kept) and saves the **initial weights** (start of epoch 0).
* ``evolve`` loads the supernet unsharded, fixes the row mask from the final thresholds
  (``keep_t = {i : ‖e_i‖ > θ_t}``) and runs :func:`ctr.search.evolution.evolve` over per-table widths; the
  fitness is the supernet's validation AUC at those widths (prefix masks; rows masked as fixed). Ties go
  to the smaller compact model; with ``param_budget`` candidates over the cap score ``-inf`` (an addition
  to the paper, whose fitness ignores size).
* ``materialise`` writes the compact artifact (pruned values removed: they encode to OOV id 0), the
  remapped splits, and the compact model's initial weights: the **saved initial weights** of the kept
  rows, their first ``d_t`` columns in a table ``round_up_4(d_t)`` wide (the rest zero), the OOV row zeroed
  when the mask pruned it, zero-padding identity projections to ``D``, every other weight (dense layers,
  first-order rows of the kept ids) from the initial weights. So the compact model starts as exactly the
  masked supernet at its initial weights (:func:`materialise_state` applied to the final supernet gives
  the compact model that predicts as the masked supernet does; the tests check both).
* ``retrain`` trains that compact model (``embedding: mixed_dim``) with ``train:``.
"""

import json
import logging
import math
from pathlib import Path

import numpy as np

from ctr.embeddings.mixed_dim import MixedDimConfig
from ctr.embeddings.optembed import dim_choices
from ctr.embeddings.projection import projection_param_count
from ctr.errors import ConfigError
from ctr.features.artifact import FeatureArtifact
from ctr.search.common import (
    bars_png,
    keep_report,
    kept_rows_png,
    load_trained,
    memory_batches,
    retrain_compact,
    round_up,
    train_valid,
    write_compact_data,
)
from ctr.search.compact import compact_state, normalise_keep
from ctr.search.evolution import evolve as run_evolution
from ctr.search.phases import Phase, PhaseContext, TrainRequest
from ctr.train import checkpoint
from ctr.train.evaluate import evaluate

log = logging.getLogger("ctr.search")


def phases(config) -> list[Phase]:
    """OptEmbed's four phases for ``config`` (an ``OptEmbedConfig``)."""
    if config.top_k < 2 and config.crossover_num:
        raise ConfigError("crossover needs top_k >= 2 parents; fix: raise top_k", "embedding.top_k")
    return [Phase("supernet", supernet), Phase("evolve", evolve), Phase("materialise", materialise),
            Phase("retrain", retrain)]


def compact_embedding_config(config, widths: dict[str, int]) -> MixedDimConfig:
    """The compact model's embedding: mixed-width tables with the search's plain options."""
    return MixedDimConfig(widths=widths, init_std=config.init_std, l2=config.l2, mba_l2=config.mba_l2)


def supernet(ctx: PhaseContext) -> dict:
    """Train the supernet; keep its best epoch; save the initial weights (``epoch-start-0``)."""
    cfg = ctx.embedding_cfg
    train_cfg = ctx.train_cfg.model_copy(update={"epochs": cfg.supernet_epochs})
    out = ctx.dir / "checkpoints"
    result = ctx.train(TrainRequest(cfg, train_cfg, str(ctx.artifact_dir), train_valid(ctx.splits), str(out),
                                    snapshot_epochs=(0,), restore_best=True))
    return {"final": str(result.checkpoint_dir), "init": str(out / "epoch-start-0"), "valid": result.valid,
            "history": result.fit.history}


def load_supernet(ctx: PhaseContext, path: str, layout=None):
    """The supernet (unsharded, eval mode) with the checkpoint at ``path``."""
    return load_trained(ctx, ctx.embedding_cfg, path, layout)


def evolve(ctx: PhaseContext) -> dict:
    """Fixed rows from the final thresholds; per-table widths by evolution on validation AUC."""
    cfg = ctx.embedding_cfg
    artifact = FeatureArtifact.load(ctx.artifact_dir)
    layout = artifact.layout()
    model = load_supernet(ctx, ctx.previous["supernet"]["final"], layout)
    emb = model.embedding
    raw = emb.keep_lists()
    keep = {t: normalise_keep(k, layout.table_sizes[t]) for t, k in raw.items()}
    batches = memory_batches(ctx.splits["valid"], artifact.schema, ctx.train_cfg.eval_batch_size)
    tables = emb.tables

    def cost(widths: tuple[int, ...]) -> float:
        return float(sum(len(keep[t]) * round_up(d) for t, d in zip(tables, widths, strict=True)))

    budget = None if cfg.param_budget is None else cfg.param_budget * sum(
        layout.table_sizes[t] * emb.embedding_dim for t in tables)

    def fitness(widths: tuple[int, ...]) -> float:
        if budget is not None and cost(widths) > budget:
            return float("-inf")  # over the parameter cap: never evaluated, never chosen over a feasible one
        emb.dims = dict(zip(tables, widths, strict=True))
        return evaluate(model, batches)["auc"]

    emb.dims = None
    full = evaluate(model, batches)["auc"]
    result = run_evolution(fitness, len(tables), dim_choices(emb.embedding_dim, cfg.dim_step), cfg.generations,
                           cfg.mutation_num + cfg.crossover_num, cfg.mutation_num, cfg.crossover_num, cfg.top_k,
                           cfg.mutation_prob, cfg.search_seed, cost,
                           lambda rec: ctx.log_metrics({k: v for k, v in (("best_valid_auc", rec["best_fitness"]),
                                                                          ("generation_valid_auc", rec["generation_best"]))
                                                        if math.isfinite(v)}, step=rec["generation"]))
    if not math.isfinite(result.fitness):
        raise ConfigError(f"no evaluated candidate fits param_budget {cfg.param_budget}; fix: raise the budget or "
                          "run more generations / a larger population", "embedding.param_budget")
    emb.dims = None
    dims = dict(zip(tables, result.best, strict=True))
    widths = {t: round_up(d) for t, d in dims.items()}
    report = keep_report(keep, layout.table_sizes, {t: len(k) for t, k in raw.items()})
    (ctx.dir / "keep_lists.json").write_text(json.dumps({t: k.tolist() for t, k in keep.items()}))
    (ctx.dir / "row_zeroed.json").write_text(json.dumps({t: bool(0 not in set(raw[t].tolist())) for t in tables}))
    doc = {"dims": dims, "widths": widths, "thresholds": dict(zip(tables, emb.thresholds.detach().tolist(), strict=True)),
           "valid_auc": result.fitness, "valid_auc_full_dims": full, "evaluated": result.evaluated,
           "history": result.history, "keep": report}
    (ctx.dir / "search.json").write_text(json.dumps(doc, indent=2))
    for name in ("keep_lists.json", "search.json"):
        ctx.log_artifact(ctx.dir / name, "optembed")
    ctx.log_artifact(kept_rows_png(report, ctx.dir / "kept_rows.png", "OptEmbed"), "plots")
    ctx.log_artifact(bars_png(tables, {"D": [emb.embedding_dim] * len(tables), "width (x4)": list(widths.values()),
                                       "searched dim": list(dims.values())},
                              "OptEmbed: dims per field", ctx.dir / "dims.png"), "plots")
    ctx.log_metrics({"kept_ratio": report["kept_ratio"], "kept_rows": report["kept_rows"], "valid_auc": result.fitness,
                     "valid_auc_full_dims": full, "candidates_evaluated": result.evaluated})
    log.info("OptEmbed keeps %d of %d rows; dims %s (valid AUC %.5f, full dims %.5f)", report["kept_rows"],
             report["rows"], dims, result.fitness, full)
    return {"dims": dims, "widths": widths, "keep_lists": str(ctx.dir / "keep_lists.json"),
            "row_zeroed": str(ctx.dir / "row_zeroed.json"), "report": report, "valid_auc": result.fitness,
            "valid_auc_full_dims": full}


def materialise_state(supernet_model, compact_model, keep: dict[str, np.ndarray], dims: dict[str, int],
                      row_zeroed: dict[str, bool]) -> dict:
    """The compact model's state from a supernet's: kept rows, first ``dims[t]`` columns (zero-padded to the
    table width), the OOV row zeroed where the mask pruned it, projections at the zero-padding identity."""
    compact_model.embedding.projection.reset_identity()
    scale = {t: np.where((np.asarray(k) == 0) & row_zeroed.get(t, False), 0.0, 1.0) for t, k in keep.items()}
    return compact_state(supernet_model.state_dict(), compact_model.state_dict(), keep, scale, dims=dims,
                         own_prefixes=("embedding.projection.",))


def materialise(ctx: PhaseContext) -> dict:
    """Compact artifact and splits; the compact model's initial weights from the supernet's initial weights."""
    from ctr.models import build_model

    found = ctx.previous["evolve"]
    artifact = FeatureArtifact.load(ctx.artifact_dir)
    layout = artifact.layout()
    keep = {t: np.asarray(k, dtype=np.int64) for t, k in json.loads(Path(found["keep_lists"]).read_text()).items()}
    row_zeroed = json.loads(Path(found["row_zeroed"]).read_text())
    init = load_supernet(ctx, ctx.previous["supernet"]["init"], layout)
    root = ctx.dir / "compact"
    small, splits = write_compact_data(ctx, artifact, keep, root)
    emb = compact_embedding_config(ctx.embedding_cfg, found["widths"])
    compact = build_model(ctx.model_cfg, small.layout(), emb)
    compact.load_state_dict(materialise_state(init, compact, keep, found["dims"], row_zeroed))
    checkpoint.save(compact, root / "init")
    return {"artifact_dir": str(root / "features"), "splits": splits, "init": str(root / "init"),
            "embedding": emb.model_dump(), "projection_params": projection_param_count(compact)}


def retrain(ctx: PhaseContext) -> dict:
    """Train the compact model from the gathered initial weights (fresh optimiser state)."""
    made, found = ctx.previous["materialise"], ctx.previous["evolve"]
    emb = MixedDimConfig.parse(made["embedding"], "embedding")
    extra = {"kept_ratio": found["report"]["kept_ratio"], "kept_rows": found["report"]["kept_rows"],
             "dims": found["dims"], "widths": found["widths"], "projection_params": made["projection_params"],
             "evolve_valid_auc": found["valid_auc"], "supernet_valid_auc_full_dims": found["valid_auc_full_dims"]}
    return retrain_compact(ctx, emb, made, extra)
