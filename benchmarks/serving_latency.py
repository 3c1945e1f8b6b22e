"""`make bench` (serving part): gRPC latency and QPS of the scorer variants, side by side, in one run.

Model: AutoInt+ as in the demo (39 fields: 26 categorical + 13 numeric, dim 16, 3×2-head attention,
DNN 400×400) with vocabularies fit on synthetic Criteo-like data (min count 1, so ≥ 10^6 table
rows); weights random (latency does not depend on them; accuracy of int8 is measured on the
Criteo sample by ``tests/serving/test_criteo_int8.py`` and here as max |Δp| against float).

Variants, each behind the same gRPC server (micro-batching, max batch 512) in its own process:

* ``int8`` — what ``ctr serve`` runs: request rows → RowEncoder → FBGEMM int8 TBE, eager dense towers;
* ``int8-compiled`` — the same with ``--compile`` (torch.compile'd dense towers);
* ``float-embeddingbag`` — RowEncoder → one float ``torch.nn.EmbeddingBag`` per table, eager dense;
* ``bundle-score`` — the foundation's ``Bundle.score`` path: polars FeatureTransform (``replace_strict``
  against each vocabulary) → float TorchRec EBC, eager.

Load: a client process sends pre-built requests of batch 1, 64 and 512 with 1 and 16 concurrent
clients (threads, one channel each) for ``--seconds`` per cell; p50/p99 latency, QPS (requests/s)
and examples/s; the server's resident memory after warm-up and at the end. Client and server
share the machine's cores (2 here), so the numbers include the client's cost.

    python -m benchmarks.serving_latency [--rows 1000000] [--seconds 4] [--variants int8,float-embeddingbag,...]
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path("bench-results")
WORK = OUT / "serving"
VARIANTS = ["int8", "int8-compiled", "float-embeddingbag", "bundle-score"]
BATCHES = (1, 64, 512)
CONCURRENCY = (1, 16)


# ---------------------------------------------------------------- the model under test
def build_bundle(rows: int, max_cardinality: int) -> Path:
    """Fit vocabularies on synthetic data and save an AutoInt+ bundle (cached under bench-results/)."""
    import polars as pl

    from ctr.data.synthetic import write_synthetic_if_missing
    from ctr.embeddings import parse_embedding_config
    from ctr.export.bundle import save_bundle
    from ctr.features.artifact import FeatureArtifact
    from ctr.features.schema import Schema
    from ctr.models import build_model, parse_model_config

    out = WORK / f"bundle_{rows}_{max_cardinality}"
    if (out / "manifest.json").is_file():
        return out
    data = write_synthetic_if_missing(f".ctr_cache/synthetic/serving_{rows}_{max_cardinality}.parquet", rows, 11,
                                      max_cardinality)
    raw = pl.read_parquet(data).cast(pl.String)
    fields = ([{"name": f"I{i}", "kind": "numeric", "transform": "log_square"} for i in range(1, 14)]
              + [{"name": f"C{i}"} for i in range(1, 27)])
    schema = Schema.model_validate({"label": "label", "min_count": 1, "fields": fields})
    artifact = FeatureArtifact.fit(raw, schema)
    torch.manual_seed(0)
    model_cfg = parse_model_config({"name": "autoint_plus", "embedding_dim": 16})
    emb_cfg = parse_embedding_config({"name": "plain", "init_std": 0.1})
    model = build_model(model_cfg, artifact.layout(), emb_cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embedding_bags" in name:
                p.uniform_(-0.17, 0.17)
    request_rows = raw.select([f["name"] for f in fields]).head(4096).to_dicts()
    save_bundle(model, model_cfg, emb_cfg, artifact, out, request_rows[:4])
    (out / "bench_rows.json").write_text(json.dumps(request_rows))
    return out


class _EmbeddingBagTables(torch.nn.Module):
    """Drop-in for a TorchRec EBC at inference: one float ``nn.EmbeddingBag`` per table, same weights."""

    def __init__(self, ebc) -> None:
        super().__init__()
        self.features = []  # (feature name, table name, mode)
        self.bags = torch.nn.ModuleDict()
        for cfg in ebc.embedding_bag_configs():
            weight = ebc.embedding_bags[cfg.name].weight.detach()
            mode = "mean" if cfg.pooling.name == "MEAN" else "sum"
            self.bags[cfg.name] = torch.nn.EmbeddingBag.from_pretrained(weight, freeze=True, mode=mode)
            self.features += [(f, cfg.name) for f in cfg.feature_names]

    def forward(self, kjt):
        per_key = kjt.to_dict()
        pooled = {f: self.bags[t](per_key[f].values(), per_key[f].offsets()[:-1]) for f, t in self.features}
        return _Pooled(pooled)


class _Pooled:
    def __init__(self, d):
        self.d = d

    def to_dict(self):
        return self.d


def make_scorer(variant: str, bundle_dir: Path):
    from ctr.export.bundle import load_bundle
    from ctr.features.tensorize import EncodedColumns
    from serving.scorer import ModelVersion, Scorer

    bundle = load_bundle(bundle_dir)
    version = ModelVersion("bench-autoint-plus", variant, str(bundle_dir))
    if variant in ("int8", "int8-compiled"):
        return Scorer(bundle, version, "int8", compile=variant == "int8-compiled")
    if variant == "float-embeddingbag":
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        model = bundle.model
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, EmbeddingBagCollection):
                    setattr(module, name, _EmbeddingBagTables(child))
        return Scorer(bundle, version, model=model.eval())

    class BundleScorePath(Scorer):
        """The foundation's path: polars FeatureTransform per request + float TorchRec EBC."""

        def encode(self, rows):
            self.encoder.check_names({k for r in rows for k in r})
            return EncodedColumns.from_frame(bundle.transform.apply(rows), bundle.artifact.schema)

    return BundleScorePath(bundle, version, model=bundle.model)


# ---------------------------------------------------------------- server process
def serve(args) -> None:
    from serving.server import ScoringServer, ServerSettings

    scorer = make_scorer(args.variant, Path(args.bundle))
    srv = ScoringServer(ServerSettings(model=args.bundle, port=0, poll_seconds=0, max_batch=512, workers=32),
                        scorer=scorer).start()
    print(json.dumps({"port": srv.port, "pid": os.getpid(), "compiled": scorer.compiled if hasattr(
        scorer, "compiled") else [], "embedding_mb": scorer.embedding_bytes / 2**20}), flush=True)
    srv.wait()


def _rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            key, value = line.split(":")
            fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


# ---------------------------------------------------------------- load generator
def load(addr: str, requests: list, concurrency: int, seconds: float) -> dict:
    from serving.client import ScorerClient

    clients = [ScorerClient(addr, timeout=60) for _ in range(concurrency)]
    for c in clients:  # warm-up, connections established
        c.score_request(requests[0])
    lat: list[list[float]] = [[] for _ in clients]
    errors = [0]
    stop = time.perf_counter() + seconds

    def worker(i: int) -> None:
        c, k = clients[i], i
        while time.perf_counter() < stop:
            req = requests[k % len(requests)]
            k += 1
            t = time.perf_counter()
            try:
                c.score_request(req)
            except Exception:  # noqa: BLE001 - counted
                errors[0] += 1
                continue
            lat[i].append(time.perf_counter() - t)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    for c in clients:
        c.close()
    all_lat = np.array([x for per in lat for x in per])
    return {"requests": int(all_lat.size), "errors": errors[0], "qps": all_lat.size / wall,
            "p50_ms": float(np.percentile(all_lat, 50) * 1e3), "p99_ms": float(np.percentile(all_lat, 99) * 1e3)}


def measure_variant(variant: str, bundle_dir: Path, rows: list[dict], seconds: float) -> dict:
    from serving.client import build_request

    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.serving_latency", "serve", "--variant", variant,
                             "--bundle", str(bundle_dir)], stdout=subprocess.PIPE, text=True)
    info = json.loads(proc.stdout.readline())
    addr = f"127.0.0.1:{info['port']}"
    out = {"variant": variant, "embedding_mb": info["embedding_mb"], "cells": []}
    try:
        out["rss_ready_mb"] = _rss_mb(proc.pid)[0]
        for batch in BATCHES:
            requests = [build_request(rows[(i * batch) % len(rows):][:batch] or rows[:batch]) for i in range(8)]
            for conc in CONCURRENCY:
                cell = load(addr, requests, conc, seconds)
                cell.update(batch=batch, concurrency=conc, examples_per_s=cell["qps"] * batch)
                out["cells"].append(cell)
                print(f"  {variant:20} batch {batch:4} x{conc:<3} p50 {cell['p50_ms']:8.2f} ms  "
                      f"p99 {cell['p99_ms']:8.2f} ms  {cell['qps']:8.1f} req/s", flush=True)
        from serving.client import ScorerClient

        with ScorerClient(addr) as c:
            out["probe"] = c.score_request(build_request(rows[:512])).probabilities.tolist()
        out["rss_end_mb"], out["rss_peak_mb"] = _rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return out


def report(results: list[dict], args) -> str:
    by = {r["variant"]: r for r in results}
    lines = [f"AutoInt+ scorer over gRPC on 127.0.0.1, 39 fields, {by[results[0]['variant']]['table_rows']:,} "
             f"embedding rows × 16, {os.cpu_count()} CPU cores shared by client and server, "
             f"{args.seconds:g} s per cell", "",
             "| variant | batch | clients | p50 ms | p99 ms | QPS | examples/s | server RSS MB (ready / peak) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for c in r["cells"]:
            lines.append(f"| {r['variant']} | {c['batch']} | {c['concurrency']} | {c['p50_ms']:.2f} | "
                         f"{c['p99_ms']:.2f} | {c['qps']:.1f} | {c['examples_per_s']:.0f} | "
                         f"{r['rss_ready_mb']:.0f} / {r['rss_peak_mb']:.0f} |")
    lines += ["", "| variant | embedding tables MB | max abs Δp vs float (512 rows) |", "|---|---:|---:|"]
    ref = np.array(by["float-embeddingbag"]["probe"]) if "float-embeddingbag" in by else None
    for r in results:
        diff = "-" if ref is None else f"{np.abs(np.array(r['probe']) - ref).max():.2e}"
        lines.append(f"| {r['variant']} | {r['embedding_mb']:.1f} | {diff} |")
    if "int8" in by:
        lines += ["", "QPS ratio of `int8` (what `ctr serve` runs) to each other variant, same batch and clients:", "",
                  "| vs | " + " | ".join(f"b{b}×{c}" for b in BATCHES for c in CONCURRENCY) + " |",
                  "|---|" + "---:|" * (len(BATCHES) * len(CONCURRENCY))]
        mine = {(c["batch"], c["concurrency"]): c["qps"] for c in by["int8"]["cells"]}
        for r in results:
            if r["variant"] == "int8":
                continue
            other = {(c["batch"], c["concurrency"]): c["qps"] for c in r["cells"]}
            lines.append(f"| {r['variant']} | " + " | ".join(f"{mine[k] / other[k]:.2f}x" for k in mine) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="bench", choices=["bench", "serve"])
    p.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows the vocabularies are fit on")
    p.add_argument("--max-cardinality", type=int, default=10_000_000)
    p.add_argument("--seconds", type=float, default=4.0, help="load per cell")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--bundle", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode == "serve":
        serve(args)
        return
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    WORK.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    bundle_dir = build_bundle(args.rows, args.max_cardinality)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    from ctr.features.artifact import FeatureArtifact

    table_rows = sum(FeatureArtifact.load(bundle_dir / "features").table_sizes().values())
    print(f"bundle ready in {time.perf_counter() - t:.0f} s: {table_rows:,} embedding rows, "
          f"model {manifest['model']['name']}", flush=True)
    rows = json.loads((bundle_dir / "bench_rows.json").read_text())
    results = []
    for variant in args.variants.split(","):
        r = measure_variant(variant, bundle_dir, rows, args.seconds)
        r["table_rows"] = table_rows
        results.append(r)
    text = report(results, args)
    print("\n" + text)
    (OUT / "serving_latency.json").write_text(json.dumps(results, indent=2))
    (OUT / "serving_latency.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
