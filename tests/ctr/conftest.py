"""Fixtures shared by the DIN tests under tests/ctr (models and distributed)."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def din_prepared(tmp_path_factory):
    from pipelines.spec import build_spec
    from pipelines.stages import prepare as prepare_stage

    spec = build_spec(din_raw(tmp_path_factory.mktemp("din")), "din_tiny", "din_tiny.yaml")
    return spec, prepare_stage.run(spec)


def din_raw(root) -> dict:
    """A tiny MovieLens-like event log (users with a taste for one genre) under ``root`` and its DIN spec."""
    rng = np.random.default_rng(0)
    users, items = 60, 40
    taste = rng.integers(0, 4, users)
    rows = []
    for u in range(users):
        for t in range(14):
            i = int(rng.integers(items))
            rows.append(f"u{u},i{i},{5 if i % 4 == taste[u] else int(rng.integers(1, 4))},{t}")
    (root / "events.csv").write_text("user,item,rating,ts\n" + "\n".join(rows) + "\n")
    (root / "items.csv").write_text("item,genre\n" + "\n".join(f"i{i},g{i % 4}" for i in range(items)) + "\n")
    raw = {
        "data": {"format": "events", "train": str(root / "events.csv"), "cache_dir": str(root / "cache"),
                 "events": {"items": {"path": str(root / "items.csv")}, "timestamp": "ts", "side": ["genre"],
                            "label": "rating >= 4", "max_len": 8, "negatives": 1},
                 "split": {"column": "split", "train": ["train"], "valid": ["valid"], "test": ["test"]}},
        "features": {"label": "label", "group": "user", "fields": [
            {"name": "user"}, {"name": "item"}, {"name": "genre"},
            {"name": "hist_item", "kind": "sequence", "table": "item", "pooling": "none", "max_len": 8},
            {"name": "hist_genre", "kind": "sequence", "table": "genre", "pooling": "none", "max_len": 8}]},
        "model": {"name": "din", "embedding_dim": 8, "attention_hidden": [8], "dnn_hidden": [16]},
        "embedding": {"name": "plain", "init_std": 0.05, "mba_l2": 0.01},
        "train": {"epochs": 1, "batch_size": 128, "eval_batch_size": 512, "progress": False, "seed": 3},
        "output": {"dir": str(root / "runs")},
    }
    return raw
