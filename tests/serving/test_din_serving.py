"""DIN over gRPC: unpooled histories served through the same RowEncoder and quantized tables; a request with
one user context and many candidates embeds the history once and equals scoring the merged rows."""

import numpy as np
import polars as pl
import pytest

from ctr.embeddings import parse_embedding_config
from ctr.export.bundle import load_bundle, save_bundle
from ctr.features.artifact import FeatureArtifact
from ctr.features.schema import Schema
from ctr.models import build_model, parse_model_config
from serving.client import ScorerClient
from serving.server import ScoringServer, ServerSettings

pytestmark = pytest.mark.slow
CONTEXT = ("user", "hist_item", "hist_genres")


EMBEDDINGS = {"plain": {"name": "plain", "init_std": 0.3},
              "unified": {"name": "unified", "budget": 0.5, "chunks": 2, "chunk_dim": 4, "init_std": 0.3}}


@pytest.fixture(scope="module", params=list(EMBEDDINGS))
def din_bundle(tmp_path_factory, request):
    import torch

    hashing = {"encoding": "hash", "hash_min_cardinality": 20} if request.param == "unified" else {}
    schema = Schema.model_validate({"label": "y", "group": "user", **hashing, "fields": [
        {"name": "user"}, {"name": "item"}, {"name": "genres"},
        {"name": "hist_item", "kind": "sequence", "table": "item", "pooling": "none", "max_len": 6},
        {"name": "hist_genres", "kind": "sequence", "table": "genres", "pooling": "none", "max_len": 6}]})
    rng = np.random.default_rng(0)
    n = 600
    items = rng.integers(0, 40, n)
    hist = [rng.integers(0, 40, rng.integers(0, 9)) for _ in range(n)]
    frame = pl.DataFrame({
        "user": [f"u{x}" for x in rng.integers(0, 30, n)], "item": [f"i{x}" for x in items],
        "genres": [f"g{x % 6}" for x in items],
        "hist_item": ["|".join(f"i{x}" for x in h) for h in hist],
        "hist_genres": ["|".join(f"g{x % 6}" for x in h) for h in hist],
        "y": rng.integers(0, 2, n).astype(float)})
    artifact = FeatureArtifact.fit(frame, schema)
    torch.manual_seed(0)
    cfg = parse_model_config({"name": "din", "embedding_dim": 8, "dnn_hidden": [16]})
    emb = parse_embedding_config(EMBEDDINGS[request.param])
    model = build_model(cfg, artifact.layout(), emb).eval()
    if request.param == "unified":  # user and item hashed and multiplexed, history items like the candidate
        assert artifact.hashed_tables == ["user", "item"] and model.embedding.chunk_ec is not None
    rows = frame.drop("y").head(200).to_dicts()
    path = save_bundle(model, cfg, emb, artifact, tmp_path_factory.mktemp("din") / "bundle", rows[:4])
    return path, rows


@pytest.mark.parametrize("quant, tol", [("none", 1e-6), ("int8", 0.01)])
def test_din_served_equals_offline_and_context_path(din_bundle, quant, tol):
    path, rows = din_bundle
    bundle = load_bundle(path)
    offline = bundle.score(rows)
    assert offline.std() > 0.02
    srv = ScoringServer(ServerSettings(model=str(path), port=0, quant=quant, poll_seconds=0)).start()
    try:
        assert srv.store.current.history_columns == ["hist_item", "hist_genres"]
        with ScorerClient(f"127.0.0.1:{srv.port}") as c:
            np.testing.assert_allclose(c.score(rows).probabilities, offline, atol=tol, rtol=0)
            # one user (with a 5-event history) against 30 candidates, history in the shared context
            user = next(r for r in rows if r["hist_item"].count("|") >= 4)
            context = {k: user[k].split("|") if k.startswith("hist") else user[k] for k in CONTEXT}
            candidates = [{"item": r["item"], "genres": r["genres"]} for r in rows[:30]]
            got = c.score(candidates, context=context).probabilities
            merged = [{**cand, **{k: user[k] for k in CONTEXT}} for cand in candidates]
            np.testing.assert_allclose(got, c.score(merged).probabilities, atol=1e-6, rtol=0)
            np.testing.assert_allclose(got, bundle.score(merged), atol=tol, rtol=0)
            assert np.unique(got.round(6)).size > 5  # the candidates really differ
            unseen = [{**rows[0], "hist_item": "never-a|never-b", "hist_genres": "g1|g2", "item": "never-c"}]  # new
            np.testing.assert_allclose(c.score(unseen).probabilities, bundle.score(unseen), atol=tol, rtol=0)
    finally:
        srv.stop(0)
