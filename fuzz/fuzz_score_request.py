"""atheris fuzz target: arbitrary bytes through the scorer's request path.

bytes → ScoreRequest (protobuf) → rows → RowEncoder (validation + preprocessing) → int8 model → scores.
Every input must end in finite scores or an :class:`~ctr.errors.InvalidRequestError`
(INVALID_ARGUMENT); any other exception is a crash and atheris reports it with the input.
The model is a small DeepFM built here on a schema with all three field kinds.

    python fuzz/fuzz_score_request.py -max_total_time=60 [-rss_limit_mb=4096] [corpus_dir]
"""

import sys

import atheris

with atheris.instrument_imports(include=["serving", "ctr.features"]):
    from ctr.errors import InvalidRequestError
    from serving.batcher import MicroBatcher
    from serving.client import build_request
    from serving.servicer import RequestLimits, decode_request, parse_request


def build_scorer():
    import tempfile

    import polars as pl
    import torch

    from ctr.embeddings import parse_embedding_config
    from ctr.export.bundle import load_bundle, save_bundle
    from ctr.features.artifact import FeatureArtifact
    from ctr.features.schema import Schema
    from ctr.models import build_model, parse_model_config
    from serving.scorer import ModelVersion, Scorer

    schema = Schema.model_validate({"label": "y", "fields": [
        {"name": "user"}, {"name": "item"}, {"name": "hist", "kind": "sequence", "table": "item", "max_len": 5},
        {"name": "price", "kind": "numeric", "transform": "standardize"},
        {"name": "count", "kind": "numeric", "transform": "log_square"}, {"name": "score", "kind": "numeric"}]})
    train = pl.DataFrame({"user": ["u1", "u2", "u3", "u1"] * 10, "item": ["a", "b", "c", "d"] * 10,
                          "hist": ["a|b", "", "c|d|a", "b"] * 10, "price": ["1", "2.5", "", "4"] * 10,
                          "count": ["0", "3", "100", ""] * 10, "score": ["0.1", "0.2", "0.3", "0.4"] * 10,
                          "y": [1.0, 0.0, 1.0, 0.0] * 10})
    artifact = FeatureArtifact.fit(train, schema)
    torch.manual_seed(0)
    cfg = parse_model_config({"name": "deepfm", "embedding_dim": 8, "dnn_hidden": [16]})
    emb = parse_embedding_config({"name": "plain", "init_std": 0.05})
    model = build_model(cfg, artifact.layout(), emb).eval()
    rows = train.drop("y").head(4).to_dicts()
    out = save_bundle(model, cfg, emb, artifact, tempfile.mkdtemp(prefix="ctr-fuzz-"), rows)
    return Scorer(load_bundle(out), ModelVersion("fuzz", "1"), "int8"), rows


SCORER, SEED_ROWS = build_scorer()
BATCHER = MicroBatcher(max_batch=256).start()
LIMITS = RequestLimits(max_examples=256)


FIELDS = ["user", "item", "hist", "price", "count", "score"]


def structured(data: bytes) -> bytes:
    """Build a well-formed request whose names, kinds and values come from the fuzzer's bytes."""
    fdp = atheris.FuzzedDataProvider(data)

    def value():
        kind = fdp.ConsumeIntInRange(0, 7)
        if kind == 0:
            return None
        if kind == 1:
            return fdp.ConsumeInt(8)
        if kind == 2:
            return fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeFloat()
        if kind == 3:
            return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 64))
        if kind == 4:
            return [fdp.ConsumeUnicodeNoSurrogates(8) for _ in range(fdp.ConsumeIntInRange(0, 12))]
        if kind == 5:
            return [fdp.ConsumeInt(4) for _ in range(fdp.ConsumeIntInRange(0, 12))]
        if kind == 6:
            return [fdp.ConsumeFloat() for _ in range(fdp.ConsumeIntInRange(0, 4))]
        return str(fdp.ConsumeRegularFloat())

    def row(extra: bool):
        names = [f for f in FIELDS if fdp.ConsumeIntInRange(0, 9) > 0]
        if extra and fdp.ConsumeIntInRange(0, 9) == 0:
            names.append(fdp.ConsumeUnicodeNoSurrogates(6))
        return {n: value() for n in names}

    context = row(False) if fdp.ConsumeBool() else None
    rows = [row(True) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    return build_request(rows, context=context).SerializeToString()


def score_bytes(data: bytes) -> None:
    if data[:1] == b"S":  # structure-aware half: reach preprocessing and the model, not only the parser
        data = structured(data[1:])
    try:
        rows = decode_request(parse_request(data), LIMITS)
        cols = SCORER.encode(rows)
        probs = BATCHER.submit(SCORER, cols, timeout=30)
    except InvalidRequestError:
        return
    assert len(probs) == len(rows), (len(probs), len(rows))
    assert ((probs >= 0) & (probs <= 1)).all(), probs


def seeds() -> list[bytes]:
    """A few valid requests (for the corpus): the bundle's rows, a context request, lists and numbers."""
    return [b"S" + bytes(range(256)), b"S" + b"\x01" * 300, build_request(SEED_ROWS).SerializeToString(),
            build_request([{"item": "a", "hist": ["a", "b"], "price": 2.0, "count": 7, "score": None}],
                          context={"user": "u1"}).SerializeToString()]


def main() -> None:
    import os
    import tempfile

    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):  # no corpus dir given: start from the seeds
        corpus = tempfile.mkdtemp(prefix="ctr-fuzz-corpus-")
        for i, s in enumerate(seeds()):
            with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
                f.write(s)
        args.append(corpus)
    atheris.Setup(args, score_bytes)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
