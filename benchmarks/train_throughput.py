"""`make bench`: training throughput of AutoInt+ here vs. the same model on plain PyTorch.

Both variants train one epoch on the same synthetic Criteo-like data (same batches, same model
config); each runs in its own subprocess so peak RSS is per variant. Prints a table with the
ratio and writes ``bench-results/train_throughput.{json,md}``.

    python -m benchmarks.train_throughput [--rows 300000] [--batch-size 2048] [--max-cardinality 1000000]
                                          [--min-count 1]
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

OUT = Path("bench-results")


def _spec(args):
    from pipelines.spec import load_spec

    sets = [f"synthetic.rows={args.rows}", f"synthetic.max_cardinality={args.max_cardinality}",
            f"data.train=.ctr_cache/synthetic/bench_{args.rows}_{args.max_cardinality}.parquet",
            f"train.batch_size={args.batch_size}", "train.epochs=1", "train.progress=false",
            f"features.min_count={args.min_count}"]
    return load_spec("pipelines/examples/synthetic.yaml", sets)


def run_ctr(args) -> dict:
    """This project: DMP (world size 1) + FBGEMM fused row-wise Adagrad tables + Adam dense."""
    import tempfile

    from pipelines.stages import prepare as prepare_stage
    from pipelines.stages.train import run as train

    spec = _spec(args)
    prepared = prepare_stage.run(spec)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(spec, prepared, Path(tmp))
    h = result.fit.history[0]
    return {"examples_per_s": h["examples_per_s"], "epoch_seconds": h["epoch_seconds"],
            "valid_auc": h["valid_auc"], "valid_logloss": h["valid_logloss"],
            "table_rows": sum(prepared.artifact.table_sizes().values())}


def run_plain(args) -> dict:
    """Baseline: identical AutoInt+ with nn.EmbeddingBag tables and torch.optim.Adam on everything."""
    import torch

    from benchmarks.plain_torch import TorchEmbeddingBags
    from ctr.data.loader import BatchIterator
    from ctr.data.prepare import load_split
    from ctr.distributed.worker import seed_everything
    from ctr.models import MODELS
    from ctr.train.evaluate import evaluate
    from pipelines.stages import prepare as prepare_stage

    spec = _spec(args)
    prepared = prepare_stage.run(spec)
    seed_everything(spec.train.seed)
    layout = prepared.artifact.layout()
    model_cls = MODELS[spec.model.name][1]
    emb = TorchEmbeddingBags(layout, spec.model.embedding_dim)
    model = model_cls(emb, None, spec.model)
    opt = torch.optim.Adam(model.parameters(), lr=spec.train.optimizer.lr)
    train = load_split(prepared, "train")
    it = BatchIterator(train, spec.train.batch_size, shuffle=True, seed=spec.train.seed)
    it.set_epoch(0)
    rows, start = 0, time.perf_counter()
    model.train()
    for batch in it:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch.dense, batch.sparse), batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rows += batch.size
    seconds = time.perf_counter() - start
    valid = load_split(prepared, "valid")
    m = evaluate(model, BatchIterator(valid, spec.train.eval_batch_size, shuffle=False, seed=0))
    return {"examples_per_s": rows / seconds, "epoch_seconds": seconds, "valid_auc": m["auc"],
            "valid_logloss": m["logloss"], "table_rows": sum(layout.table_sizes.values())}


def child(args) -> None:
    res = (run_ctr if args.variant == "ctr" else run_plain)(args)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res))


def parent(args) -> None:
    OUT.mkdir(exist_ok=True)
    # prepare once (cached) so neither variant pays for preprocessing
    subprocess.run([sys.executable, "-m", "benchmarks.train_throughput", "--variant", "prepare", *_fwd(args)], check=True)
    results = {}
    for variant in ("ctr", "plain"):
        out = subprocess.run([sys.executable, "-m", "benchmarks.train_throughput", "--variant", variant, *_fwd(args)],
                             check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    ratio = results["ctr"]["examples_per_s"] / results["plain"]["examples_per_s"]
    lines = [f"AutoInt+ training, synthetic Criteo-like, {args.rows} rows (80% train), batch {args.batch_size}, "
             f"{results['ctr']['table_rows']} embedding rows x 16 dims (min_count {args.min_count}), 1 epoch, CPU",
             "", "| variant | train examples/s | epoch s | peak RSS MB | valid AUC | valid logloss |",
             "|---|---:|---:|---:|---:|---:|"]
    names = {"ctr": "ctr (TorchRec DMP + FBGEMM fused rowwise Adagrad)", "plain": "plain nn.EmbeddingBag + Adam"}
    for v, r in results.items():
        lines.append(f"| {names[v]} | {r['examples_per_s']:.0f} | {r['epoch_seconds']:.1f} | {r['peak_rss_mb']:.0f} "
                     f"| {r['valid_auc']:.4f} | {r['valid_logloss']:.4f} |")
    lines += ["", f"throughput ratio ctr / plain: **{ratio:.2f}x**"]
    text = "\n".join(lines)
    print(text)
    (OUT / "train_throughput.md").write_text(text + "\n")
    (OUT / "train_throughput.json").write_text(json.dumps({"args": vars(args), "results": results, "ratio": ratio},
                                                          indent=2))


def _fwd(args) -> list[str]:
    return ["--rows", str(args.rows), "--batch-size", str(args.batch_size),
            "--max-cardinality", str(args.max_cardinality), "--min-count", str(args.min_count)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--max-cardinality", type=int, default=1_000_000)
    p.add_argument("--min-count", type=int, default=1, help="vocabulary min count (1 keeps every id: big tables)")
    p.add_argument("--variant", choices=["ctr", "plain", "prepare"])
    args = p.parse_args()
    if args.variant == "prepare":
        from pipelines.stages import prepare as prepare_stage

        prepare_stage.run(_spec(args))
    elif args.variant:
        child(args)
    else:
        from ctr.models.layers import field_attention

        field_attention.kernel()  # build (or load) the attention kernel before the variants' timed epochs
        parent(args)


if __name__ == "__main__":
    main()
