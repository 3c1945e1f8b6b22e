"""`make bench-peers` scale part: total embedding rows 10^5 → 10^8, where each system stops.

The data is one encoded data set for every system and point: the train split of
``pipelines/examples/synthetic_1m.yaml`` (ctr's ``prepare``: 26 categorical fields, about 1.09M
distinct train values, 13 numeric fields). For a point of ``N`` total rows every categorical field gets
``rows_f ∝`` its vocabulary size with ``Σ rows_f = N``:

* below the vocabulary (``N`` < 1.09M) ids are folded ``id mod rows_f`` (collisions, like hashing);
* above it the tables are padded: rows past the vocabulary exist (allocated, initialised and, for an
  optimiser that updates whole tables, updated every step) but are never looked up, as in a production
  table sized for ids still to come.

Per system and point, each in its own process: training examples/s over a fixed number of steps of
the same model (DeepFM, the pipeline's hyperparameters; ctr: DMP + FBGEMM fused row-wise Adagrad on
the tables, Adam on the rest; peers: Adam on every parameter, their own training loop), the peak
RSS, and the extrapolated time of one epoch of the 480k-row train split. A system *stops* at a point
when its RSS passes ``--mem-gb`` (the process is killed there), when it fails, or when its epoch would
take longer than ``--epoch-limit-s`` (30 minutes); larger points are then not tried for it.

    python -m benchmarks.scale_sweep [--rows 1e5 1e6 1e7 1e8] [--systems ctr deepctr rechub]
        [--steps 60] [--mem-gb 20] [--epoch-limit-s 1800] [--out bench-results/scale_sweep]

Writes ``OUT.json`` and ``OUT.md``.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = "pipelines/examples/synthetic_1m.yaml"
MODEL = "deepfm"


def _spec():
    from pipelines.spec import load_spec

    return load_spec(ROOT / PIPELINE, experiment=MODEL)


def point_data(rows_total: int, out: Path) -> Path:
    """The point's ``dataset.json`` (peers' format) and its train split, ids folded where tables are smaller."""
    import polars as pl

    from pipelines.stages import prepare as prepare_stage

    spec = _spec()
    prepared = prepare_stage.run(spec)
    schema, sizes = prepared.artifact.schema, prepared.artifact.table_sizes()
    natural = {f.name: sizes[f.table_name] for f in schema.sparse_fields}
    total = sum(natural.values())
    rows = {f: max(4, round(rows_total * n / total)) for f, n in natural.items()}
    out.mkdir(parents=True, exist_ok=True)
    train = out / "train.parquet"
    if not train.is_file():
        frame = pl.read_parquet(Path(prepared.split_paths["train"]) / "*.parquet")
        folds = [(pl.col(f) % rows[f]).alias(f) for f in rows if rows[f] < natural[f]]
        frame.with_columns(folds).write_parquet(train)
    doc = {"sparse": [{"name": f, "rows": r} for f, r in rows.items()],
           "dense": [f.name for f in schema.numeric_fields], "label": "_label",
           "splits": {"train": str(train)}, "rows": {"train": int(prepared.rows["train"])},
           "natural_rows": total, "rows_total": sum(rows.values()), "artifact_dir": str(prepared.artifact_dir)}
    path = out / "dataset.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


def ctr_point(dataset_path: str, steps: int, warmup: int) -> dict:
    """One ctr measurement in this process: DMP (world size 1) over tables of the point's sizes."""
    import dataclasses

    import torch

    from ctr.data.loader import BatchIterator
    from ctr.data.prepare import read_encoded
    from ctr.distributed.env import init_process_group
    from ctr.distributed.worker import build_training
    from ctr.features.artifact import FeatureArtifact
    from ctr.features.layout import FieldLayout
    from pipelines.stages.train import make_job

    doc = json.loads(Path(dataset_path).read_text())
    rows = {f["name"]: f["rows"] for f in doc["sparse"]}
    spec = _spec()
    natural_layout = FeatureArtifact.layout

    def layout(self) -> FieldLayout:  # the point's table sizes instead of the vocabulary's
        base = natural_layout(self)
        return FieldLayout(base.schema, {f.table_name: rows[f.name] for f in base.schema.sparse_fields})

    FeatureArtifact.layout = layout
    from pipelines.stages import prepare as prepare_stage

    prepared = prepare_stage.run(spec)
    job = dataclasses.replace(make_job(spec, prepared, Path(dataset_path).parent / "ctr"),
                              splits={"train": doc["splits"]["train"]})
    init_process_group(0, 1, None)
    start = time.perf_counter()
    artifact, model, dmp, optimizer, objective = build_training(job)
    build_s = time.perf_counter() - start
    data = read_encoded(doc["splits"]["train"], artifact.schema)
    batches = iter(BatchIterator(data, spec.train.batch_size, shuffle=True, seed=0))
    dmp.train()
    done = 0
    for i in range(warmup + steps):
        if i == warmup:
            start, done = time.perf_counter(), 0
        batch = next(batches)
        loss = objective(dmp(batch.dense, batch.sparse), batch.labels, batch.loss_rows)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done += batch.size
    seconds = time.perf_counter() - start
    return {"train_examples_per_s": done / seconds, "build_s": build_s, "steps": steps,
            "threads": torch.get_num_threads()}


def _rss_mb(pid: int, key: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def watched(cmd: list[str], mem_mb: float, timeout_s: float) -> dict:
    """Run ``cmd``; kill it when its RSS passes ``mem_mb`` or it runs past ``timeout_s``. Peak RSS from /proc."""
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, stopped = 0.0, None
    while proc.poll() is None:
        peak = max(peak, _rss_mb(proc.pid, "VmHWM"), _rss_mb(proc.pid))
        if peak > mem_mb:
            stopped = f"out of memory (RSS passed {mem_mb / 1024:.0f} GB)"
        elif time.time() - start > timeout_s:
            stopped = f"too slow (no result in {timeout_s:.0f} s)"
        if stopped:
            proc.kill()
            break
        time.sleep(0.1)
    out, err = proc.communicate()
    wall = time.time() - start
    if stopped:
        return {"stopped": stopped, "peak_rss_mb": peak, "wall_s": wall}
    if proc.returncode:
        return {"stopped": f"failed (exit {proc.returncode}): {err.strip().splitlines()[-1] if err.strip() else ''}",
                "peak_rss_mb": peak, "wall_s": wall}
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": peak, "wall_s": wall}


def measure(system: str, dataset: Path, steps: int, warmup: int, mem_mb: float, timeout_s: float) -> dict:
    spec = _spec()
    if system == "ctr":
        cmd = [sys.executable, "-m", "benchmarks.scale_sweep", "--ctr-point", str(dataset), "--steps", str(steps),
               "--warmup", str(warmup)]
    else:
        from benchmarks.peer_compare import ensure_peer_venv, hparams

        hp = {**hparams(spec, MODEL, 1), "max_train_rows": (steps + warmup) * spec.train.batch_size, "sweep": True}
        cmd = [str(ensure_peer_venv()), str(ROOT / "benchmarks/peers/run_peer.py"), "--dataset", str(dataset),
               "--system", system, "--model", MODEL, "--seed", "2021", "--hparams", json.dumps(hp)]
    return watched(cmd, mem_mb, timeout_s)


def markdown(results: list[dict], epoch_rows: int, mem_gb: float, limit_s: float) -> str:
    lines = [f"DeepFM (synthetic_1m hyperparameters), one process per cell, {epoch_rows:,}-row epoch. "
             f"A system stops at RSS > {mem_gb:g} GB, a failure, or an epoch over {limit_s / 60:.0f} min.", "",
             "| total rows | system | examples/s | epoch (extrapolated) | peak RSS MB | outcome | ctr ÷ system |",
             "|---:|---|---:|---:|---:|---|---:|"]
    by = {(r["rows_total"], r["system"]): r for r in results}
    for r in results:
        ctr = by.get((r["rows_total"], "ctr"), {})
        ratio = (f"{ctr['train_examples_per_s'] / r['train_examples_per_s']:.2f}×"
                 if r["system"] != "ctr" and "train_examples_per_s" in r and "train_examples_per_s" in ctr else "")
        eps = f"{r['train_examples_per_s']:,.0f}" if "train_examples_per_s" in r else "—"
        epoch = f"{r['epoch_s']:,.0f} s" if "epoch_s" in r else "—"
        lines.append(f"| {r['rows_total']:.1e} | {r['system']} | {eps} | {epoch} | {r['peak_rss_mb']:,.0f} | "
                     f"{r.get('stopped') or 'ok'} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", type=float, default=[1e5, 1e6, 1e7, 1e8])
    ap.add_argument("--systems", nargs="+", default=["ctr", "deepctr", "rechub"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--mem-gb", type=float, default=20.0)
    ap.add_argument("--epoch-limit-s", type=float, default=1800.0)
    ap.add_argument("--out", default="bench-results/scale_sweep")
    ap.add_argument("--ctr-point", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ctr_point:
        print(json.dumps(ctr_point(args.ctr_point, args.steps, args.warmup)))
        return
    out = ROOT / args.out
    work = out.parent / (out.name + "-data")
    results, stopped = [], set()
    for n in args.rows:
        dataset = point_data(int(n), work / f"rows-{int(n)}")
        doc = json.loads(dataset.read_text())
        for system in args.systems:
            if system in stopped:
                results.append({"system": system, "rows_total": doc["rows_total"], "peak_rss_mb": 0.0,
                                "stopped": "not tried (stopped at a smaller point)"})
                continue
            print(f"{system} at {doc['rows_total']:,} rows ...", file=sys.stderr, flush=True)
            r = measure(system, dataset, args.steps, args.warmup, args.mem_gb * 1024, args.epoch_limit_s)
            r.update({"system": system, "rows_total": doc["rows_total"]})
            if "train_examples_per_s" in r:
                r["epoch_s"] = doc["rows"]["train"] / r["train_examples_per_s"]
                if r["epoch_s"] > args.epoch_limit_s:
                    r["stopped"] = f"too slow (epoch {r['epoch_s'] / 60:.0f} min)"
            if r.get("stopped"):
                stopped.add(system)
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    epoch_rows = json.loads(dataset.read_text())["rows"]["train"]
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"pipeline": PIPELINE, "model": MODEL, "steps": args.steps, "warmup": args.warmup, "mem_gb": args.mem_gb,
            "epoch_limit_s": args.epoch_limit_s, "cpu_count": os.cpu_count()}
    Path(f"{out}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    Path(f"{out}.md").write_text(markdown(results, epoch_rows, args.mem_gb, args.epoch_limit_s))
    print(Path(f"{out}.md").read_text())


if __name__ == "__main__":
    main()
