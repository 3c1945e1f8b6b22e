"""`make bench`: scaling numbers for Ray training and prepare.

* training examples/s on 1 worker (in process) and 2 Ray Train workers, same synthetic data: two
  epochs per run, the first one a warm-up (allocator, thread pools, Ray actors), the second one
  measured; ``--repeats`` runs per worker count (median, min and max reported);
* per-worker peak RSS for one embedding table that exceeds a worker's memory budget but fits when
  row-wise sharded over two gloo ranks (rows generated per shard, never the full table per rank);
* peak RSS of ``prepare`` (synthetic generation excluded) at 10^6 and 10^7 rows;
* what one worker holds of the largest prepared train split at 1, 2 and 4 workers: rows read, peak
  RSS and seconds to read its share and walk one epoch of its batches (each rank reads only its range).

Each measurement runs in its own subprocess. Writes ``bench-results/ray_scale.{json,md}``.

    python -m benchmarks.ray_scale [--train-rows 50000] [--repeats 3] [--table-rows 6000000] [--budget-mb 1500]
                                   [--prepare-rows 1000000 10000000]
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path("bench-results")
CACHE = Path(".ctr_cache/bench")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _spec(rows: int, workers: int, extra: list[str] = ()):
    from pipelines.spec import load_spec

    sets = [f"synthetic.rows={rows}", "synthetic.max_cardinality=100000",
            f"data.train={CACHE}/synthetic_{rows}.parquet", f"data.cache_dir={CACHE}",
            "train.epochs=2", "train.patience=5", "train.progress=false", "train.batch_size=1024", f"distributed.workers={workers}",
            "register.enabled=false", *extra]
    return load_spec("pipelines/examples/synthetic.yaml", sets)


def _prepare_spec(rows: int):
    """The prepare/shard_read variants' spec: 10^6-cardinality synthetic data, its own prepare cache."""
    return _spec(rows, 1, ["synthetic.max_cardinality=1000000", f"data.cache_dir={CACHE}/prepare_{rows}"])


def train_speed(args) -> dict:
    from pipelines.stages import prepare as prepare_stage
    from pipelines.stages.train import run as train

    spec = _spec(args.train_rows, args.workers)
    prepared = prepare_stage.run(spec)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train(spec, prepared, Path(tmp))
        wall = time.perf_counter() - start
    warm, h = result.fit.history[0], result.fit.history[-1]  # epoch 1 warms up; epoch 2 is measured
    return {"workers": args.workers, "examples_per_s": h["examples_per_s"], "epoch_seconds": h["epoch_seconds"],
            "warmup_examples_per_s": warm["examples_per_s"], "wall_seconds": wall, "valid_auc": h["valid_auc"],
            "train_rows": prepared.rows["train"], "rows_read_rank0": result.rows_read.get("train"),
            "driver_peak_rss_mb": _rss_mb()}


def _big_table_rank(rank: int, world: int, args, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from ctr.distributed.env import destroy_process_group, init_process_group
    from ctr.distributed.sharding import ShardingConfig, shard_model
    from ctr.train.optim import OptimConfig, attach_fused_optimizer

    torch.set_num_threads(1)
    init_process_group(rank, world)
    ebc = EmbeddingBagCollection([EmbeddingBagConfig(name="big", embedding_dim=args.dim, num_embeddings=args.table_rows,
                                                     feature_names=["f"])], device=torch.device("meta"))
    model = torch.nn.ModuleDict({"ebc": ebc})
    model.forward = model["ebc"].forward  # a one-table model for the memory probe
    attach_fused_optimizer(model, OptimConfig())
    before = _rss_mb()
    dmp = shard_model(model, ShardingConfig(types=["row_wise"] if world > 1 else ["table_wise"]), True,
                      torch.device("cpu"), seed=1)  # every rank looks up 512 ids
    gen = torch.Generator().manual_seed(rank)
    for _ in range(5):
        ids = torch.randint(0, args.table_rows, (512,), generator=gen)
        kjt = KeyedJaggedTensor.from_lengths_sync(["f"], ids, torch.ones(512, dtype=torch.int32))
        dmp(kjt).values().sum().backward()
    Path(out, f"rank{rank}.json").write_text(json.dumps({"rank": rank, "peak_rss_mb": _rss_mb(),
                                                         "rss_before_shard_mb": before}))
    del dmp
    destroy_process_group()


def big_table(args) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_big_table_rank, args=(args.workers, args, port, tmp), nprocs=args.workers,
                           join=True, start_method="spawn")
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(args.workers)]
    table_mb = args.table_rows * args.dim * 4 / 2**20
    return {"workers": args.workers, "table_mb": table_mb, "budget_mb": args.budget_mb,
            "peak_rss_mb": [r["peak_rss_mb"] for r in ranks],
            "fits_budget": all(r["peak_rss_mb"] <= args.budget_mb for r in ranks)}


def prepare_rss(args) -> dict:
    from ctr.data.synthetic import write_synthetic_if_missing
    from pipelines.stages import prepare as prepare_stage

    spec = _prepare_spec(args.rows)
    shutil.rmtree(spec.data.cache_dir, ignore_errors=True)  # measure a real prepare, never a cache hit
    path = Path(spec.data.train)
    if not path.is_file():  # generated in a child so its memory is not counted here
        subprocess.run([sys.executable, "-c", "import sys; from ctr.data.synthetic import write_synthetic_if_missing "
                        "as w; w(sys.argv[1], int(sys.argv[2]), 7, 1000000)", str(path), str(args.rows)], check=True)
    del write_synthetic_if_missing
    start = time.perf_counter()
    spec = spec.__class__(**{**spec.__dict__, "synthetic": None})
    prepared = prepare_stage.run(spec)
    return {"rows": args.rows, "peak_rss_mb": _rss_mb(), "seconds": time.perf_counter() - start,
            "cache_hit": prepared.cache_hit, "input_mb": path.stat().st_size / 2**20}


def shard_read(args) -> dict:
    from ctr.data.loader import BatchIterator, rank_rows
    from ctr.data.prepare import count_encoded, read_encoded
    from pipelines.stages import prepare as prepare_stage

    spec = _prepare_spec(args.rows)
    spec = spec.__class__(**{**spec.__dict__, "synthetic": None})
    prepared = prepare_stage.run(spec)
    if not prepared.cache_hit:
        raise SystemExit("shard_read runs after the prepare variant at the same --rows (it reads that cache)")
    path, schema = prepared.split_paths["train"], prepared.artifact.schema
    before, start = _rss_mb(), time.perf_counter()
    total = count_encoded(path)
    lo, hi = rank_rows(total, 0, args.workers)
    share = read_encoded(path, schema, rows=(lo, hi))
    read_s = time.perf_counter() - start
    it = BatchIterator(share, 4096, shuffle=True, seed=0, world_size=args.workers, total_rows=total)
    start, seen = time.perf_counter(), 0
    for rows, _ in it.local_batches():  # the epoch's index work (batches themselves are built per step)
        seen += len(rows)
    return {"rows": total, "workers": args.workers, "rows_read": len(share), "rows_in_epoch": seen,
            "read_seconds": read_s, "epoch_index_seconds": time.perf_counter() - start,
            "peak_rss_mb": _rss_mb(), "rss_before_read_mb": before}


def _child(variant: str, args, **over) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.ray_scale", "--variant", variant]
    for k, v in {**vars(args), **over}.items():
        if k not in ("variant", "prepare_rows", "repeats", "parts") and v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _spread(runs: list[dict]) -> dict:
    rates = sorted(r["examples_per_s"] for r in runs)
    return {**runs[0], "examples_per_s": rates[len(rates) // 2], "examples_per_s_min": rates[0],
            "examples_per_s_max": rates[-1], "repeats": len(runs), "runs": runs}


PARTS = ("train", "big_table", "prepare", "shard_read")


def parent(args) -> None:
    # interleave the worker counts so slow drift of the machine hits both alike
    old = json.loads((OUT / "ray_scale.json").read_text()) if (OUT / "ray_scale.json").is_file() else {}
    missing = [p for p in PARTS if p not in args.parts and p not in old]
    if missing:
        raise SystemExit(f"--parts {' '.join(args.parts)}: no earlier result for {', '.join(missing)} in "
                         f"{OUT / 'ray_scale.json'}; measure them too")
    res = {p: old[p] for p in PARTS if p not in args.parts}
    if "train" in args.parts:
        runs = {w: [] for w in (1, 2)}
        for _ in range(args.repeats):
            for w in runs:
                runs[w].append(_child("train", args, workers=w))
        res["train"] = [_spread(r) for r in runs.values()]
    if "big_table" in args.parts:
        res["big_table"] = [_child("table", args, workers=w) for w in (1, 2)]
    if "prepare" in args.parts:
        res["prepare"] = [_child("prepare", args, rows=n) for n in args.prepare_rows]
    if "shard_read" in args.parts:
        res["shard_read"] = [_child("shard_read", args, rows=max(args.prepare_rows), workers=w) for w in (1, 2, 4)]
    OUT.mkdir(exist_ok=True)
    (OUT / "ray_scale.json").write_text(json.dumps(res, indent=2))
    md = [f"Ray scaling, synthetic Criteo-like data, {os.cpu_count()}-core CPU", "",
          f"Training: {args.train_rows} rows, examples/s of epoch 2 (epoch 1 is a warm-up), median "
          f"[min, max] of {args.repeats} runs; rows held = train rows worker 0 read", "",
          "| training | examples/s | epoch s | wall s (incl. Ray start) | valid AUC | rows held |",
          "|---|---:|---:|---:|---:|---:|"]
    md += [f"| {r['workers']} worker(s) | {r['examples_per_s']:.0f} [{r['examples_per_s_min']:.0f}, "
           f"{r['examples_per_s_max']:.0f}] | {r['epoch_seconds']:.1f} | {r['wall_seconds']:.1f} | "
           f"{r['valid_auc']:.4f} | {r['rows_read_rank0']} of {r['train_rows']} |" for r in res["train"]]
    md += ["", f"One table of {args.table_rows} x {args.dim} fp32 ({res['big_table'][0]['table_mb']:.0f} MB), "
           f"per-worker budget {args.budget_mb} MB peak RSS:", "",
           "| gloo ranks | per-rank peak RSS MB | within budget |", "|---|---|---|"]
    md += [f"| {r['workers']} | {', '.join(f'{x:.0f}' for x in r['peak_rss_mb'])} | {r['fits_budget']} |"
           for r in res["big_table"]]
    md += ["", "| prepare rows | peak RSS MB | seconds | input MB |", "|---:|---:|---:|---:|"]
    md += [f"| {r['rows']} | {r['peak_rss_mb']:.0f} | {r['seconds']:.1f} | {r['input_mb']:.0f} |"
           for r in res["prepare"]]
    md += ["", f"One worker's share of the {max(args.prepare_rows)}-row train split (rank 0 reads only its "
           "row range):", "", "| workers | rows read | read s | peak RSS MB (before reading) |",
           "|---:|---:|---:|---:|"]
    md += [f"| {r['workers']} | {r['rows_read']} of {r['rows']} | {r['read_seconds']:.1f} | "
           f"{r['peak_rss_mb']:.0f} ({r['rss_before_read_mb']:.0f}) |" for r in res["shard_read"]]
    (OUT / "ray_scale.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=["train", "table", "prepare", "shard_read"])
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                   help="what to measure (default all); the others are kept from the last ray_scale.json")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--train-rows", type=int, default=50_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--table-rows", type=int, default=6_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--budget-mb", type=int, default=1500)
    p.add_argument("--prepare-rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    args = p.parse_args()
    if args.variant is None:
        parent(args)
        return
    fn = {"train": train_speed, "table": big_table, "prepare": prepare_rss, "shard_read": shard_read}[args.variant]
    print(json.dumps(fn(args)))


if __name__ == "__main__":
    main()
