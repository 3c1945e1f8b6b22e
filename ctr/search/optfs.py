"""OptFS's phases: ``search`` (soft gates, continuation) → ``materialise`` (keep-lists, rewind, compact
model) → ``retrain`` (the compact model from the rewound weights). See :mod:`ctr.embeddings.optfs`."""

import json
import logging

import torch

from ctr.embeddings.plain import PlainEmbeddingConfig
from ctr.errors import ConfigError
from ctr.features.artifact import FeatureArtifact
from ctr.search.common import keep_report, kept_rows_png, retrain_compact, train_valid, write_compact_data
from ctr.search.compact import compact_state, normalise_keep
from ctr.search.phases import Phase, PhaseContext, TrainRequest
from ctr.train import checkpoint

log = logging.getLogger("ctr.search")


def phases(config) -> list[Phase]:
    """OptFS's three phases for ``config`` (an ``OptFSConfig``)."""
    if config.rewind >= config.search_epochs:
        raise ConfigError(f"rewind {config.rewind} must be a search epoch (0 … {config.search_epochs - 1})",
                          "embedding.rewind")
    return [Phase("search", search), Phase("materialise", materialise), Phase("retrain", retrain)]


def compact_embedding_config(config) -> PlainEmbeddingConfig:
    """The compact model's embedding: plain tables with the search's plain options."""
    return PlainEmbeddingConfig(init_std=config.init_std, l2=config.l2, mba_l2=config.mba_l2)


def search(ctx: PhaseContext) -> dict:
    """Soft gates for ``search_epochs`` epochs (all of them: no early stop; the last state is the outcome),
    snapshotting the weights at the start of epoch ``rewind``."""
    cfg = ctx.embedding_cfg.model_copy(update={"mode": "search"})
    train_cfg = ctx.train_cfg.model_copy(update={"epochs": cfg.search_epochs, "patience": cfg.search_epochs})
    out = ctx.dir / "checkpoints"
    result = ctx.train(TrainRequest(cfg, train_cfg, str(ctx.artifact_dir), train_valid(ctx.splits), str(out),
                                    snapshot_epochs=(cfg.rewind,), restore_best=False))
    return {"final": str(result.checkpoint_dir), "rewind": str(out / f"epoch-start-{cfg.rewind}"),
            "valid": result.valid, "history": result.fit.history}


def rewound_ticket(ctx: PhaseContext, layout):
    """``(ticket config, final model, rewound model)``: the search's last state and its rewind snapshot, both
    hard-gated (unsharded), the snapshot given the final gates (its embeddings and dense layers stay rewound)."""
    from ctr.models import build_model

    found = ctx.previous["search"]
    cfg = ctx.embedding_cfg.model_copy(update={"mode": "ticket"})
    final = build_model(ctx.model_cfg, layout, cfg)
    checkpoint.load(final, found["final"])
    rewound = build_model(ctx.model_cfg, layout, cfg)
    checkpoint.load(rewound, found["rewind"])
    with torch.no_grad():
        rewound.embedding.gate_ebc.load_state_dict(final.embedding.gate_ebc.state_dict())
    return cfg, final, rewound


def materialise(ctx: PhaseContext) -> dict:
    """Keep-lists from the final gates (``m > 0``), a compact artifact and splits, and the compact model's
    initial weights: the rewind snapshot's rows of the kept ids times the hard gate."""
    from ctr.models import build_model

    artifact = FeatureArtifact.load(ctx.artifact_dir)
    layout = artifact.layout()
    cfg, final, rewound = rewound_ticket(ctx, layout)
    keep = {t: normalise_keep(k, layout.table_sizes[t]) for t, k in rewound.embedding.keep_lists().items()}
    scale = {t: rewound.embedding.gate(t, torch.as_tensor(k)).numpy() for t, k in keep.items()}

    root = ctx.dir / "compact"
    small, splits = write_compact_data(ctx, artifact, keep, root)
    compact = build_model(ctx.model_cfg, small.layout(), compact_embedding_config(cfg))
    compact.load_state_dict(compact_state(rewound.state_dict(), compact.state_dict(), keep, scale,
                                          scale_first_order=cfg.gate_first_order))
    checkpoint.save(compact, root / "init")

    report = keep_report(keep, layout.table_sizes, {t: int((final.embedding.gate_params(t) > 0).sum())
                                                    for t in final.embedding.gate_tables})
    (ctx.dir / "keep_lists.json").write_text(json.dumps(
        {t: {"kept_ids": k.tolist(), **report["tables"][t]} for t, k in keep.items()}))
    (ctx.dir / "keep_summary.json").write_text(json.dumps(report, indent=2))
    ctx.log_artifact(ctx.dir / "keep_lists.json", "optfs")
    ctx.log_artifact(ctx.dir / "keep_summary.json", "optfs")
    ctx.log_artifact(kept_rows_png(report, ctx.dir / "kept_rows.png"), "plots")
    ctx.log_metrics({"kept_ratio": report["kept_ratio"], "kept_rows": report["kept_rows"],
                     **{f"kept_ratio/{t}": r["ratio"] for t, r in report["tables"].items()}})
    log.info("OptFS keeps %d of %d feature values (%.1f%%)", report["kept_rows"], report["rows"],
             100 * report["kept_ratio"])
    return {"artifact_dir": str(root / "features"), "splits": splits, "init": str(root / "init"), "report": report}


def retrain(ctx: PhaseContext) -> dict:
    """Train the compact model from the rewound, hard-gated weights (fresh optimiser state)."""
    made = ctx.previous["materialise"]
    return retrain_compact(ctx, compact_embedding_config(ctx.embedding_cfg), made,
                           {"kept_ratio": made["report"]["kept_ratio"], "kept_rows": made["report"]["kept_rows"]})
