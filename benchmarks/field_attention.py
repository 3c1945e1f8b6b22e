"""The fused field-attention kernel against ``scaled_dot_product_attention`` at AutoInt's shapes.

One attention call (no projections) on ``[B, L, 3, H, d]`` inputs: forward alone, and forward plus
backward, median of ``--reps`` timed calls after 3 warm-up calls, same inputs for both paths.

    python -m benchmarks.field_attention [--batch 2048] [--shapes 39x2x8 39x2x32 10x2x8] [--reps 20]

Writes ``bench-results/field_attention.{json,md}``.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ctr.models.layers import field_attention as fa

OUT = Path("bench-results")


def sdpa(qkv: torch.Tensor, scale: float) -> torch.Tensor:
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    return F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2)


def median_ms(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(batch: int, tokens: int, heads: int, width: int, reps: int) -> dict:
    torch.manual_seed(0)
    qkv = torch.randn(batch, tokens, 3, heads, width, requires_grad=True)
    grad = torch.randn(batch, tokens, heads, width)
    scale = width ** -0.5
    row = {"batch": batch, "tokens": tokens, "heads": heads, "width": width}
    for name, fn in (("sdpa", sdpa), ("fused", fa.packed_field_attention)):
        with torch.no_grad():
            row[f"{name}_forward_ms"] = median_ms(lambda fn=fn: fn(qkv, scale), reps)
        row[f"{name}_train_ms"] = median_ms(lambda fn=fn: fn(qkv, scale).backward(grad), reps)
    row["forward_speedup"] = row["sdpa_forward_ms"] / row["fused_forward_ms"]
    row["train_speedup"] = row["sdpa_train_ms"] / row["fused_train_ms"]
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--shapes", nargs="+", default=["39x2x8", "39x2x32", "10x2x8"],
                    help="TOKENSxHEADSxWIDTH (39 = Criteo-like fields, 10 = Frappe)")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    if fa.kernel() is None:
        raise SystemExit(f"the fused kernel is unavailable: {fa.unavailable_reason()}")
    rows = [measure(args.batch, *map(int, shape.split("x")), args.reps) for shape in args.shapes]
    OUT.mkdir(exist_ok=True)
    (OUT / "field_attention.json").write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))
    lines = [f"Field attention, batch {args.batch}, {torch.get_num_threads()} threads, median of {args.reps} calls", "",
             "| tokens × heads × width | SDPA fwd ms | fused fwd ms | × | SDPA fwd+bwd ms | fused fwd+bwd ms | × |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['tokens']} × {r['heads']} × {r['width']} | {r['sdpa_forward_ms']:.2f} | {r['fused_forward_ms']:.2f} | "
              f"{r['forward_speedup']:.1f} | {r['sdpa_train_ms']:.2f} | {r['fused_train_ms']:.2f} | {r['train_speedup']:.1f} |"
              for r in rows]
    (OUT / "field_attention.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
