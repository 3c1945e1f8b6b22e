"""Steps every search method's phases share: compact data, the retrain of the compact model, in-memory
validation batches for fitness evaluations, and bar-chart artifacts."""

import math
from pathlib import Path

import numpy as np

from ctr.embeddings.tables import FBGEMM_DIM_MULTIPLE
from ctr.features.artifact import FeatureArtifact
from ctr.search.compact import compact_artifact, remap_of, remap_split
from ctr.search.phases import CompactResult, PhaseContext, TrainRequest
from ctr.train import checkpoint


def round_up(dim: int) -> int:
    """The smallest multiple of 4 (FBGEMM) that is ``≥ dim``."""
    return int(math.ceil(dim / FBGEMM_DIM_MULTIPLE) * FBGEMM_DIM_MULTIPLE)


def load_trained(ctx: PhaseContext, embedding_cfg, path: str, layout=None):
    """The pipeline's backbone with ``embedding_cfg``, unsharded, in eval mode, with the checkpoint at ``path``."""
    from ctr.models import build_model

    layout = layout or FeatureArtifact.load(ctx.artifact_dir).layout()
    model = build_model(ctx.model_cfg, layout, embedding_cfg)
    checkpoint.load(model, path)
    return model.eval()


def train_valid(splits: dict) -> dict[str, str]:
    """The ``train`` and ``valid`` entries of ``splits`` as strings (what a training run reads)."""
    return {k: str(v) for k, v in splits.items() if k in ("train", "valid")}


def write_compact_data(ctx: PhaseContext, artifact: FeatureArtifact, keep: dict[str, np.ndarray],
                       root: Path) -> tuple[FeatureArtifact, dict[str, str]]:
    """The compact artifact (``root/features``) and every split remapped to its ids (``root/<split>``)."""
    sizes = artifact.table_sizes()
    small = compact_artifact(artifact, keep)
    small.save(root / "features")
    remaps = {t: remap_of(k, sizes[t]) for t, k in keep.items()}
    splits = {name: str(remap_split(path, root / name, artifact.schema, remaps)) for name, path in ctx.splits.items()}
    return small, splits


def retrain_compact(ctx: PhaseContext, embedding_cfg, made: dict, extra: dict, validate_start: bool = False) -> dict:
    """Train the compact model (``made``: the materialise phase's ``artifact_dir``, ``splits``, ``init``) from
    its materialised weights with a fresh optimiser; returns the :class:`CompactResult` as a dict.
    ``validate_start``: the materialised weights themselves compete as epoch 0 (a model materialised from
    trained weights)."""
    result = ctx.train(TrainRequest(embedding_cfg, ctx.train_cfg, made["artifact_dir"], train_valid(made["splits"]),
                                    str(ctx.dir / "checkpoints"), init_from=made["init"],
                                    validate_start=validate_start))
    return CompactResult(embedding=embedding_cfg.model_dump(), artifact_dir=made["artifact_dir"],
                         splits=made["splits"], checkpoint_dir=str(result.checkpoint_dir), valid=result.valid,
                         history=result.fit.history, extra=extra).to_json()


def memory_batches(path: str | Path, schema, batch_size: int) -> list:
    """Every batch of an encoded split, read once and kept in memory (a search evaluates it many times)."""
    from ctr.data.loader import BatchIterator
    from ctr.data.prepare import read_encoded

    return list(BatchIterator(read_encoded(path, schema), batch_size, shuffle=False, seed=0))


def bars_png(names: list[str], series: dict[str, list[float]], title: str, path: Path, log_scale: bool = False) -> Path:
    """Overlaid bar chart, one bar per name and series (later series drawn on top)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(names) + 2), 3.5))
    x = np.arange(len(names))
    colors = ["#cccccc", "#1f77b4", "#ff7f0e"]
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x, values, color=colors[i % len(colors)], label=label)
    ax.set_xticks(x, names, rotation=90, fontsize=7)
    if log_scale:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def keep_report(keep: dict[str, np.ndarray], sizes: dict[str, int], kept: dict[str, int]) -> dict:
    """Per-table rows, kept rows (``kept[t]``: rows the method keeps, the OOV row counted only when kept) and
    compact rows (``len(keep[t])``: the OOV row always), and the overall ratio kept / rows."""
    tables = {t: {"rows": int(sizes[t]), "kept": int(kept[t]), "ratio": int(kept[t]) / max(int(sizes[t]), 1),
                  "compact_rows": len(k)} for t, k in keep.items()}
    rows = sum(r["rows"] for r in tables.values())
    total = sum(r["kept"] for r in tables.values())
    return {"rows": rows, "kept_rows": total, "kept_ratio": total / max(rows, 1), "tables": tables}


def kept_rows_png(report: dict, path: Path, method: str = "OptFS") -> Path:
    """Bar chart: rows and kept rows per table."""
    names = list(report["tables"])
    return bars_png(names, {"rows": [report["tables"][t]["rows"] for t in names],
                            "kept": [report["tables"][t]["kept"] for t in names]},
                    f"{method}: {report['kept_rows']} of {report['rows']} feature values kept", path, log_scale=True)
