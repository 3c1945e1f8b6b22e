"""``unified_optfs``'s phases: OptFS's ``search`` (soft gates on the shared rows, continuation) →
``materialise`` (rows with ``m > 0`` kept, rewind, a pruned ``unified`` model) → ``retrain``.

The compact model is ``embedding: unified`` with ``kept_rows``: each gated sub-table holds its kept rows
(rewound, times the hard gate ``1/σ(m_init)``) after one shared row for every pruned row (zero at the
start, as the hard gate makes a pruned row), and a saved row map from the full sub-table's rows. The
feature artifact and the encoded splits are the search's own: hashing does not change.
See :mod:`ctr.embeddings.unified_optfs`.
"""

import json
import logging

import numpy as np
import torch

from ctr.errors import ConfigError
from ctr.features.artifact import FeatureArtifact
from ctr.search.common import keep_report, kept_rows_png, retrain_compact
from ctr.search.optfs import rewound_ticket, search
from ctr.search.phases import Phase, PhaseContext
from ctr.train import checkpoint

log = logging.getLogger("ctr.search")
WEIGHT = "embedding.ebc.embedding_bags.{}.weight"
ROW_MAP = "embedding.row_maps.{}"


def phases(config) -> list[Phase]:
    """The three phases for ``config`` (a ``UnifiedOptFSConfig``)."""
    if config.rewind >= config.search_epochs:
        raise ConfigError(f"rewind {config.rewind} must be a search epoch (0 … {config.search_epochs - 1})",
                          "embedding.rewind")
    return [Phase("search", search), Phase("materialise", materialise), Phase("retrain", retrain)]


def pruned_state(ticket_state: dict, compact_state: dict, keep: dict[str, np.ndarray], scale: float) -> dict:
    """The compact model's state from a hard-gated (ticket) model's: gated sub-table ``t`` keeps rows
    ``keep[t]`` (× ``scale``) at rows ``1..K`` after a zero row 0, and its row map sends them there (every
    other row to 0); all other entries are copied. Gate tables are dropped."""
    out = {key: ticket_state[key].clone() for key, value in compact_state.items()
           if key in ticket_state and ticket_state[key].shape == value.shape}
    for table, ids in keep.items():
        weight = ticket_state[WEIGHT.format(table)]
        rows = torch.zeros(len(ids) + 1, weight.shape[1], dtype=weight.dtype)
        rows[1:] = weight[torch.as_tensor(ids, dtype=torch.long)] * scale
        row_map = torch.zeros(weight.shape[0], dtype=torch.int32)
        row_map[torch.as_tensor(ids, dtype=torch.long)] = torch.arange(1, len(ids) + 1, dtype=torch.int32)
        out[WEIGHT.format(table)] = rows
        out[ROW_MAP.format(table)] = row_map
    missing = sorted(set(compact_state) - set(out))
    if missing:
        raise KeyError(f"compact state entries without a source: {missing}")
    return out


def materialise(ctx: PhaseContext) -> dict:
    """Kept rows from the final gates (``m > 0``) and the pruned ``unified`` model's initial weights: the
    rewind snapshot's kept rows times the hard gate, its dense layers and other tables as they were."""
    from ctr.models import build_model

    layout = FeatureArtifact.load(ctx.artifact_dir).layout()
    cfg, _, rewound = rewound_ticket(ctx, layout)
    keep = rewound.embedding.keep_lists()  # sub-table -> kept rows (no OOV row: rows are not values)
    compact_cfg = cfg.unified(kept_rows={t: len(k) + 1 for t, k in keep.items()})
    compact = build_model(ctx.model_cfg, layout, compact_cfg)
    compact.load_state_dict(pruned_state(rewound.state_dict(), compact.state_dict(), keep, rewound.embedding.scale))
    root = ctx.dir / "compact"
    checkpoint.save(compact, root / "init")

    rows = {t: int(rewound.embedding.space_rows["bag"]) for t in keep}
    report = keep_report(keep, rows, {t: len(k) for t, k in keep.items()})
    (ctx.dir / "keep_summary.json").write_text(json.dumps(report, indent=2))
    ctx.log_artifact(ctx.dir / "keep_summary.json", "unified_optfs")
    ctx.log_artifact(kept_rows_png(report, ctx.dir / "kept_rows.png", "Unified + OptFS"), "plots")
    ctx.log_metrics({"kept_ratio": report["kept_ratio"], "kept_rows": report["kept_rows"],
                     **{f"kept_ratio/{t}": r["ratio"] for t, r in report["tables"].items()}})
    log.info("Unified + OptFS keeps %d of %d shared rows (%.1f%%)", report["kept_rows"], report["rows"],
             100 * report["kept_ratio"])
    return {"artifact_dir": str(ctx.artifact_dir), "splits": {k: str(v) for k, v in ctx.splits.items()},
            "init": str(root / "init"), "report": report, "embedding": compact_cfg.model_dump()}


def retrain(ctx: PhaseContext) -> dict:
    """Train the pruned ``unified`` model from its materialised weights (fresh optimiser state)."""
    from ctr.embeddings import UnifiedEmbeddingConfig

    made = ctx.previous["materialise"]
    report = made["report"]
    return retrain_compact(ctx, UnifiedEmbeddingConfig(**made["embedding"]), made,
                           {"kept_ratio": report["kept_ratio"], "kept_rows": report["kept_rows"],
                            "row_map_entries": report["rows"]})
