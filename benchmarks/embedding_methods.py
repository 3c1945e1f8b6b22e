"""`make bench`: the embedding methods side by side on Frappe, each against its own full backbone.

For every method's example pipeline (``optfs``, ``optembed``, ``dnis``: a search ending in a compact model;
``plain`` for reference) this runs ``ctr run PIPELINE --experiment deepfm --set train.seed=S`` in its own
process, reads the summary JSON and times the registered bundle scoring raw test rows in this process.
Per method: test AUC / logloss, the full backbone's (``baseline``, same run), embedding parameters and their
ratio, wall seconds of the whole pipeline (search phases included) and train examples/s of the registered
model's training, and bundle scoring rows/s. Writes ``bench-results/embedding_methods.{json,md}``.

Frappe is read from ``../shared/data/frappe`` (licence: never copied into the repo); absent, the bench
says so and exits 0.

    python -m benchmarks.embedding_methods [--seeds 2021] [--methods plain optfs optembed dnis]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path("bench-results")
PIPELINES = {"plain": "pipelines/examples/frappe.yaml", "optfs": "pipelines/examples/optfs_frappe.yaml",
             "optembed": "pipelines/examples/optembed_frappe.yaml", "dnis": "pipelines/examples/dnis_frappe.yaml"}
DATA = Path("../shared/data/frappe/frappe.validation.libfm")


def run_one(method: str, seed: int, tmp: Path) -> dict:
    summary_path = tmp / f"{method}-{seed}.json"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlruns.db'}"}
    cmd = [sys.executable, "-m", "pipelines.cli", "run", PIPELINES[method], "--experiment", "deepfm",
           "--set", f"train.seed={seed}", "--summary-json", str(summary_path)]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"{method} seed {seed} failed (exit {done.returncode}): {' '.join(cmd)}\n{tail}")
    s = json.loads(summary_path.read_text())
    base = s.get("baseline") or {}
    return {"method": method, "seed": seed, "auc": s["test"]["auc"], "logloss": s["test"]["logloss"],
            "params": s["embedding_params"], "base_auc": base.get("test", {}).get("auc"),
            "base_logloss": base.get("test", {}).get("logloss"), "base_params": base.get("embedding_params"),
            "wall_s": wall, "train_examples_per_s": s["train_examples_per_s"],
            "score_rows_per_s": _score_rate(s["bundle"])}


def _score_rate(bundle_dir: str, rows: int = 4096, repeats: int = 5) -> float:
    """Raw rows/s of ``load_bundle(...).score`` on ``rows`` Frappe rows (median of ``repeats``)."""
    from ctr.data.readers import read_file
    from ctr.export.bundle import load_bundle
    from pipelines.spec import load_spec

    bundle = load_bundle(bundle_dir)
    spec = load_spec(PIPELINES["plain"], experiment="deepfm")
    frame = read_file(spec.data.train, spec.data, spec.features.raw_columns).head(rows)
    batch = frame.select([f.column for f in spec.features.fields]).to_dicts()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        bundle.score(batch)
        times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times)


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return statistics.mean(values) if values else None


def table(results: list[dict]) -> str:
    lines = ["| method | test AUC / logloss | full backbone AUC / logloss | emb. params (ratio) | pipeline wall s | "
             "train ex/s | bundle score rows/s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for method in dict.fromkeys(r["method"] for r in results):
        rows = [r for r in results if r["method"] == method]
        auc, ll, params = _mean(rows, "auc"), _mean(rows, "logloss"), _mean(rows, "params")
        base_auc, base_ll, base_params = _mean(rows, "base_auc"), _mean(rows, "base_logloss"), _mean(rows, "base_params")
        full = f"{base_auc:.4f} / {base_ll:.4f}" if base_auc is not None else "(is the full model)"
        ratio = f" ({params / base_params:.2f})" if base_params else ""
        lines.append(f"| {method} | {auc:.4f} / {ll:.4f} | {full} | {params:,.0f}{ratio} | "
                     f"{_mean(rows, 'wall_s'):.0f} | {_mean(rows, 'train_examples_per_s'):,.0f} | "
                     f"{_mean(rows, 'score_rows_per_s'):,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[2021])
    parser.add_argument("--methods", nargs="+", choices=list(PIPELINES), default=list(PIPELINES))
    args = parser.parse_args(argv)
    if not DATA.is_file():
        print(f"embedding_methods: skipped, {DATA} is absent (Frappe is read from ../shared/data, never copied)")
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for method in args.methods:
                results.append(run_one(method, seed, Path(tmp)))
                print(f"{method} seed {seed}: AUC {results[-1]['auc']:.4f}, {results[-1]['wall_s']:.0f} s", flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "embedding_methods.json").write_text(json.dumps(results, indent=2))
    text = table(results)
    (OUT / "embedding_methods.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
