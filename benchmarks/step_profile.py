"""`make bench`: the machine's limits, and where one training step's time goes against them.

Two parts, one process, measured back to back:

* **limits** — sgemm GFLOP/s at the model's own matmul shapes (rows = batch × tokens), copy
  bandwidth (a 256 MB ``Tensor.copy_``, bytes read + written per second) and the random row-gather
  rate (``index_select`` of ``batch × fields`` random rows from a table with the model's row count);
* **step** — the real training step (DMP world size 1, FBGEMM fused tables, the pipeline's optimizers)
  split into data (next batch) → lookup (the sharded embedding modules' forward, incl. KJT/DMP input
  and output dist) → dense forward (rest of the forward + loss) → backward (incl. the tables' fused
  optimizer update, which FBGEMM runs inside backward) → optimizer (dense optimizer step).

From the two: achieved dense GFLOP/s (``FlopCounterMode`` over forward + backward of one step, divided
by dense forward + backward seconds) as a fraction of the best sgemm rate at our shapes, and the
lookup's bytes/s (rows × width × 4 bytes looked up) as a fraction of the gather rate.

    python -m benchmarks.step_profile [--pipeline pipelines/examples/frappe.yaml] [--experiment autoint_plus]
                                      [--steps 40] [--warmup 5] [--set KEY.PATH=VALUE ...]

Writes ``bench-results/step_profile.{json,md}``.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

OUT = Path("bench-results")


def _time(fn, reps: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def sgemm_gflops(m: int, k: int, n: int) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    reps = max(3, int(2e9 / max(2 * m * k * n, 1)))  # about 2 GFLOP per shape
    return 2 * m * k * n / _time(lambda: torch.mm(a, b), min(reps, 2000)) / 1e9


def copy_gbs(mbytes: int = 256) -> float:
    x = torch.randn(mbytes * 2**20 // 4)
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / _time(lambda: y.copy_(x), 10) / 1e9


def gather_rate(rows: int, dim: int, lookups: int) -> tuple[float, float]:
    """(rows/s, GB/s) of ``index_select`` of ``lookups`` uniformly random rows of a ``rows × dim`` table."""
    table = torch.randn(rows, dim)
    idx = torch.randint(0, rows, (lookups,))
    sec = _time(lambda: torch.index_select(table, 0, idx), 20)
    return lookups / sec, lookups * dim * 4 / sec / 1e9


class LookupTimer:
    """Wall seconds spent in the outermost sharded embedding modules' forward (one step)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.depth, self.start, self.seconds = 0, 0.0, 0.0
        for module in model.modules():
            if type(module).__name__.startswith("Sharded"):
                module.register_forward_pre_hook(self._enter)
                module.register_forward_hook(self._leave)

    def _enter(self, *_) -> None:
        if self.depth == 0:
            self.start = time.perf_counter()
        self.depth += 1

    def _leave(self, *_) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.seconds += time.perf_counter() - self.start


def matmul_shapes(model: torch.nn.Module, batch) -> list[tuple[int, int, int]]:
    """(rows, inner, cols) of every 2-D matmul (``mm``/``addmm``) in one forward, batched ones flattened."""
    from torch.utils._python_dispatch import TorchDispatchMode

    shapes = set()
    ops = {torch.ops.aten.mm.default: (0, 1), torch.ops.aten.addmm.default: (1, 2)}

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in ops:
                a, b = (args[i] for i in ops[func])
                shapes.add((a.shape[0], a.shape[1], b.shape[1]))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Record():
        model(batch.dense, batch.sparse)
    return sorted(shapes)


def profile_step(spec, steps: int, warmup: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from ctr.data.loader import BatchIterator
    from ctr.data.prepare import read_encoded
    from ctr.distributed.env import destroy_process_group, init_process_group
    from ctr.distributed.worker import build_training
    from ctr.train.loop import training_loss
    from pipelines.stages import prepare as prepare_stage
    from pipelines.stages.train import make_job

    prepared = prepare_stage.run(spec)
    cfg = spec.train
    init_process_group(0, 1, None)
    with tempfile.TemporaryDirectory(prefix="ctr-step-profile-") as run_dir:
        artifact, model, dmp, optimizer, objective = build_training(make_job(spec, prepared, Path(run_dir)))
    train = read_encoded(prepared.split_paths["train"], artifact.schema)
    batches = BatchIterator(train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    batches.set_epoch(0)
    it = iter(batches)
    timer = LookupTimer(dmp)
    dmp.train()
    phases = {k: [] for k in ("data", "lookup", "dense_forward", "backward", "optimizer")}
    rows = 0
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        batch = next(it, None)
        if batch is None:
            batches.set_epoch(step)
            it = iter(batches)
            batch = next(it)
        t1 = time.perf_counter()
        timer.seconds = 0.0
        loss = training_loss(dmp, objective, batch, cfg)
        optimizer.zero_grad()
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        if step >= warmup:
            rows += batch.size
            for k, v in zip(phases, (t1 - t0, timer.seconds, t2 - t1 - timer.seconds, t3 - t2, t4 - t3), strict=True):
                phases[k].append(v)
    # one more step under the FLOP counter (dense matmuls/attention; FBGEMM lookups are not counted)
    batch = next(iter(batches))  # a full batch
    with FlopCounterMode(display=False) as counter:
        loss = training_loss(dmp, objective, batch, cfg)
        optimizer.zero_grad()
        loss.backward()
    optimizer.zero_grad()
    flops = counter.get_total_flops()
    shapes = matmul_shapes(dmp, batch)
    sparse_fields = len(artifact.schema.sparse_fields)
    width = spec.model.embedding_dim
    table_rows = sum(artifact.table_sizes().values())
    dmp.eval()
    del dmp, optimizer, model
    destroy_process_group()
    mean = {k: statistics.mean(v) for k, v in phases.items()}
    return {"phases_s": mean, "step_s": sum(mean.values()), "examples_per_s": rows / sum(sum(v) for v in phases.values()),
            "batch_size": cfg.batch_size, "flops_per_step": flops, "matmul_shapes": shapes,
            "sparse_fields": sparse_fields, "embedding_dim": width, "table_rows": table_rows}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default="pipelines/examples/frappe.yaml")
    ap.add_argument("--experiment", default="autoint_plus")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="pipeline override")
    args = ap.parse_args(argv)
    from pipelines.spec import load_spec

    spec = load_spec(args.pipeline, ["train.progress=false", *args.set], experiment=args.experiment)
    step = profile_step(spec, args.steps, args.warmup)
    gemm = {f"{m}x{k}x{n}": sgemm_gflops(m, k, n) for m, k, n in step["matmul_shapes"]}
    lookups = step["batch_size"] * step["sparse_fields"]
    gather_rows_s, gather_gbs = gather_rate(max(step["table_rows"], lookups), step["embedding_dim"], lookups)
    limits = {"sgemm_gflops": gemm, "sgemm_best_gflops": max(gemm.values()), "copy_gbs": copy_gbs(),
              "gather_rows_per_s": gather_rows_s, "gather_gbs": gather_gbs}
    ph = step["phases_s"]
    dense_s = ph["dense_forward"] + ph["backward"]
    achieved = step["flops_per_step"] / dense_s / 1e9
    lookup_gbs = lookups * step["embedding_dim"] * 4 / ph["lookup"] / 1e9 if ph["lookup"] else float("nan")
    derived = {"dense_gflops": achieved, "dense_fraction_of_sgemm": achieved / limits["sgemm_best_gflops"],
               "lookup_gbs": lookup_gbs, "lookup_fraction_of_gather": lookup_gbs / gather_gbs}
    doc = {"pipeline": args.pipeline, "experiment": args.experiment, "threads": torch.get_num_threads(),
           "step": step, "limits": limits, "derived": derived}
    OUT.mkdir(exist_ok=True)
    (OUT / "step_profile.json").write_text(json.dumps(doc, indent=2))
    lines = [f"Step profile: {args.pipeline} `{args.experiment}`, batch {step['batch_size']}, "
             f"{torch.get_num_threads()} threads, mean of {args.steps} steps after {args.warmup} warm-up", "",
             "| phase | ms / step | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {v * 1e3:.2f} | {v / step['step_s']:.0%} |" for k, v in ph.items()]
    lines += [f"| **step** | {step['step_s'] * 1e3:.2f} | {step['examples_per_s']:.0f} examples/s |", "",
              "| limit | measured | our step | fraction |", "|---|---:|---:|---:|",
              f"| sgemm GFLOP/s (best of our {len(gemm)} matmul shapes) | {limits['sgemm_best_gflops']:.1f} | "
              f"{achieved:.2f} (dense fwd + backward, {step['flops_per_step'] / 1e9:.3f} GFLOP/step) | "
              f"{derived['dense_fraction_of_sgemm']:.1%} |",
              f"| random row gather GB/s ({lookups} rows of {step['embedding_dim']} floats) | {gather_gbs:.2f} | "
              f"{lookup_gbs:.3f} (lookup) | {derived['lookup_fraction_of_gather']:.1%} |",
              f"| copy GB/s | {limits['copy_gbs']:.1f} | | |", "",
              "sgemm at each shape (rows × in × out → GFLOP/s): "
              + ", ".join(f"{s} → {g:.1f}" for s, g in gemm.items())]
    text = "\n".join(lines) + "\n"
    (OUT / "step_profile.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
