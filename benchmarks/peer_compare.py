"""`make bench-peers`: ctr side by side with deepctr-torch and torch-rechub on the same encoded data.

For every data set × model × seed, in this order and each in its own process:

* **ctr**: ``ctr run PIPELINE --experiment MODEL --set train.seed=SEED`` (DMP + FBGEMM fused tables);
* **deepctr**, **rechub**: ``benchmarks/peers/run_peer.py`` in the peers' virtualenv (``.bench-peers``,
  created on first use from ``benchmarks/peers/requirements.txt``: PyPI releases, same torch), fed
  ctr's ``prepare`` output of the same pipeline (same split, ids and OOV rows; numeric fields as
  ctr transformed them), with the pipeline's hyperparameters wherever the library exposes them.

Recorded per run: test AUC and logloss, training examples/s (rows × epochs / training seconds), peak
RSS (``/usr/bin/time``), wall seconds from process start to the end of the first epoch. The table
gives mean ± std over seeds and ctr's throughput ratio to each peer. Writes
``benchmarks/results/peers.{json,md}``; ``--mlflow-experiment`` also logs the table to MLflow.

    python -m benchmarks.peer_compare [--data frappe criteo] [--models deepfm autoint_plus]
        [--seeds 2021 2022 2023] [--systems ctr deepctr rechub] [--max-epochs N]
    python -m benchmarks.peer_compare --data movielens --models din --name peers_din   # DIN, MovieLens-100k
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

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / ".bench-peers"
PEER_REQS = ROOT / "benchmarks/peers/requirements.txt"
RESULTS = ROOT / "benchmarks/results"
DATA = {"frappe": "pipelines/examples/frappe.yaml", "criteo": "pipelines/examples/criteo_sample.yaml",
        "synthetic_1m": "pipelines/examples/synthetic_1m.yaml",  # ≥ 10^6 embedding rows, 1 epoch
        "movielens": "pipelines/examples/din_ml100k.yaml"}  # behaviour histories: model din only
TABULAR_MODELS = ["deepfm", "autoint_plus"]
MODELS_OF = {"movielens": ["din"]}  # data sets whose pipeline has other models than TABULAR_MODELS
CTR_AUTOINT = {
    False: "AutoInt+ runs the `paper` interacting block (no bias/ReLU on Q/K/V/W_Res, no LayerNorm) with per-head "
           "width d' = D / heads, the block both peers implement (`--reference-autoint` keeps the pipeline's own)",
    True: "AutoInt+ with the pipeline's own `reference` block and attention_dim (`--reference-autoint`)",
}
DIFFERENCES = {
    "deepctr": "Adam on every parameter incl. tables; whole-table L2 1e-5 on embeddings (its default) instead of "
               "ctr's in-batch L2",
    "rechub": "Adam on every parameter incl. tables, no embedding L2; its MLP always has batch norm; attention "
              "scores scaled by 1/sqrt(d'); dense fields as Linear(1, D)",
}
DIN_DIFFERENCES = {
    "deepctr": "DIN: Adam on every parameter incl. tables; Dice in the attention MLP and ReLU in the tower (ctr: the "
               "pipeline's activation in both); whole-table L2 1e-6 (its default) instead of ctr's mini-batch aware "
               "L2; masked softmax over the history as the pipeline",
    "rechub": "DIN: Adam on every parameter incl. tables; Dice in the attention MLP and in the tower (fixed by its "
              "DIN), batch norm in both; padded "
              "history positions are not masked (they read a learnable padding row, inside the softmax); no "
              "embedding regularisation",
}


def matched_sets(spec, model: str, reference_autoint: bool) -> list[str]:
    """``--set`` overrides that give ctr's model the peers' architecture where the pipeline's differs."""
    if model.startswith("autoint") and not reference_autoint:
        return [f"model.attention_dim={spec.model.embedding_dim // spec.model.num_heads}", "model.variant=paper"]
    return []


def ensure_peer_venv() -> Path:
    py = PEER_VENV / "bin/python"
    stamp = PEER_VENV / ".installed"
    if not stamp.is_file() or stamp.stat().st_mtime < PEER_REQS.stat().st_mtime:
        print(f"creating the peers' virtualenv {PEER_VENV} (first use)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(PEER_REQS)],
                       check=True)
        stamp.touch()
    return py


def hparams(spec, model: str, max_epochs: int | None) -> dict:
    m, t = spec.model, spec.train
    return {"embedding_dim": m.embedding_dim, "dnn_hidden": list(getattr(m, "dnn_hidden", [])),
            "dnn_dropout": getattr(m, "dnn_dropout", 0.0), "dnn_batchnorm": getattr(m, "dnn_batchnorm", False),
            "attention_layers": getattr(m, "attention_layers", 0), "num_heads": getattr(m, "num_heads", 1),
            "attention_hidden": list(getattr(m, "attention_hidden", [])),
            "attention_softmax": getattr(m, "attention_softmax", False),
            "batch_size": t.batch_size, "eval_batch_size": t.eval_batch_size, "lr": t.optimizer.lr,
            "epochs": min(t.epochs, max_epochs or t.epochs), "patience": t.patience, "monitor": t.monitor}


def dataset_file(spec, out: Path) -> Path:
    """Run ctr's prepare (cached) and describe its encoded splits for the peers."""
    from pipelines.stages import prepare as prepare_stage

    prepared = prepare_stage.run(spec)
    schema, sizes = prepared.artifact.schema, prepared.artifact.table_sizes()
    pooled = [f.name for f in schema.sparse_fields if f.kind == "sequence" and f.pooling != "none"]
    if pooled:
        raise SystemExit(f"peer_compare: pooled sequence fields {pooled} have no peer equivalent here")
    cands = {f.table_name: f.name for f in schema.sparse_fields if f.kind == "categorical"}
    doc = {"sparse": [{"name": f.name, "rows": sizes[f.table_name]} for f in schema.sparse_fields
                      if f.kind == "categorical"],
           "sequences": [{"name": f.name, "rows": sizes[f.table_name], "max_len": f.max_len,
                          "candidate": cands[f.table_name]} for f in schema.history_fields],
           "dense": [f.name for f in schema.numeric_fields], "label": "_label",
           "splits": {s: str(Path(p) / "*.parquet") for s, p in prepared.split_paths.items()},
           "rows": prepared.rows}
    path = out / "dataset.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


def timed(cmd: list[str], env: dict | None = None) -> tuple[str, float, float]:
    """stdout, peak RSS MB (``/usr/bin/time``) and the wall-clock start of ``cmd``."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        start = time.time()
        out = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], check=False, capture_output=True,
                             text=True, env=env, cwd=ROOT)
        if out.returncode:
            raise RuntimeError(f"{' '.join(cmd[:4])}... failed:\n{out.stderr[-3000:]}")
        return out.stdout, int(rss.read().strip().splitlines()[-1]) / 1024, start


def run_ctr(pipeline: str, model: str, seed: int, max_epochs: int | None, tmp: Path, extra: list[str]) -> dict:
    summary = tmp / f"ctr-{model}-{seed}.json"
    sets = [f"train.seed={seed}", "train.progress=false", f"output.dir={tmp / 'runs'}", *extra]
    sets += [f"train.epochs={max_epochs}"] if max_epochs else []
    cmd = [str(ROOT / ".venv/bin/ctr"), "run", pipeline, "--experiment", model, "--summary-json", str(summary)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlruns.db'}"}
    _, rss, start = timed(cmd, env)
    doc = json.loads(summary.read_text())
    return {"system": "ctr", "model": model, "seed": seed, "test": doc["test"], "best_epoch": doc["best_epoch"],
            "epochs_run": doc["epochs_run"], "train_examples_per_s": doc["train_examples_per_s"],
            "first_epoch_end_s": doc["first_epoch_end_unix"] - start, "peak_rss_mb": rss}


def run_peer(py: Path, system: str, dataset: Path, model: str, seed: int, hp: dict) -> dict:
    cmd = [str(py), str(ROOT / "benchmarks/peers/run_peer.py"), "--dataset", str(dataset), "--system", system,
           "--model", model, "--seed", str(seed), "--hparams", json.dumps(hp)]
    stdout, rss, start = timed(cmd)
    doc = json.loads(stdout.strip().splitlines()[-1])
    doc["first_epoch_end_s"] = doc.pop("first_epoch_end_unix") - start
    doc["peak_rss_mb"] = rss
    return doc


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: list[dict]) -> list[dict]:
    rows = []
    for key in dict.fromkeys((r["data"], r["model"], r["system"]) for r in runs):
        group = [r for r in runs if (r["data"], r["model"], r["system"]) == key]
        row = {"data": key[0], "model": key[1], "system": key[2], "seeds": len(group)}
        for metric in ("auc", "logloss"):
            row[metric], row[f"{metric}_std"] = _mean_std([r["test"][metric] for r in group])
        for f in ("train_examples_per_s", "peak_rss_mb", "first_epoch_end_s", "best_epoch"):
            row[f] = statistics.fmean(r[f] for r in group)
        rows.append(row)
    for row in rows:
        ours = next((r for r in rows if (r["data"], r["model"], r["system"]) == (row["data"], row["model"], "ctr")), None)
        row["ctr_speed_ratio"] = ours["train_examples_per_s"] / row["train_examples_per_s"] if ours else None
    return rows


def markdown(rows: list[dict], note: str, reference_autoint: bool = False) -> str:
    lines = [note, "", "| data | model | system | test AUC | test logloss | train ex/s | ctr speed × | peak RSS MB "
             "| 1st epoch end s | best epoch |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = "" if r["system"] == "ctr" or r["ctr_speed_ratio"] is None else f"{r['ctr_speed_ratio']:.2f}"
        lines.append(f"| {r['data']} | {r['model']} | {r['system']} | {r['auc']:.4f} ± {r['auc_std']:.4f} | "
                     f"{r['logloss']:.4f} ± {r['logloss_std']:.4f} | {r['train_examples_per_s']:.0f} | {ratio} | "
                     f"{r['peak_rss_mb']:.0f} | {r['first_epoch_end_s']:.1f} | {r['best_epoch']:.1f} |")
    lines += ["", "How each peer differs from ctr's settings (everything else is the pipeline's):", ""]
    if any(r["model"] != "din" for r in rows):
        lines += [f"* **{k}**: {v}" for k, v in DIFFERENCES.items()]
    if any(r["model"] == "din" for r in rows):
        lines += [f"* **{k}** {v}" for k, v in DIN_DIFFERENCES.items()]
    autoint = "; " + CTR_AUTOINT[reference_autoint] if any(r["model"].startswith("autoint") for r in rows) else ""
    lines += ["* **ctr**: FBGEMM fused row-wise Adagrad on the tables (`sparse_lr`), Adam on dense weights" + autoint]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=list(DATA), choices=list(DATA))
    ap.add_argument("--models", nargs="+", default=TABULAR_MODELS,
                    help="models to run where the data's pipeline has them (movielens: din)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[2021, 2022, 2023])
    ap.add_argument("--systems", nargs="+", default=["ctr", "deepctr", "rechub"])
    ap.add_argument("--max-epochs", type=int, default=None, help="cap every system's epochs (quick runs)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--name", default="peers", help="stem of the result files (e.g. peers_din)")
    ap.add_argument("--mlflow-experiment", default=None)
    ap.add_argument("--ctr-set", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="extra override for ctr's runs only (e.g. train.precision=bf16); listed in the table's notes")
    ap.add_argument("--reference-autoint", action="store_true",
                    help="ctr's AutoInt+ keeps the pipeline's reference block instead of the peers' architecture")
    args = ap.parse_args(argv)
    from pipelines.spec import load_spec

    py = ensure_peer_venv() if set(args.systems) - {"ctr"} else None
    if "ctr" in args.systems:
        from ctr.models.layers import field_attention

        field_attention.kernel()  # build (or load) AutoInt's attention kernel here, not inside a timed epoch
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="ctr-peers-") as tmp_name:
        tmp = Path(tmp_name)
        for data in args.data:
            for model in [m for m in args.models if m in MODELS_OF.get(data, TABULAR_MODELS)]:
                spec = load_spec(str(ROOT / DATA[data]), experiment=model)
                dataset = dataset_file(spec, tmp)
                hp = hparams(spec, model, args.max_epochs)
                extra = matched_sets(spec, model, args.reference_autoint) + list(args.ctr_set)
                hp["ctr_sets"] = extra
                for seed in args.seeds:
                    for system in args.systems:
                        t0 = time.perf_counter()
                        r = (run_ctr(DATA[data], model, seed, args.max_epochs, tmp, extra) if system == "ctr"
                             else run_peer(py, system, dataset, model, seed, hp))
                        r.update(data=data, hparams=hp, wall_s=time.perf_counter() - t0)
                        runs.append(r)
                        print(f"{data} {model} {system} seed {seed}: AUC {r['test']['auc']:.4f} logloss "
                              f"{r['test']['logloss']:.4f} {r['train_examples_per_s']:.0f} ex/s", file=sys.stderr)
    rows = aggregate(runs)
    note = (f"ctr vs peers, {os.cpu_count()} CPU cores, seeds {args.seeds}"
            + (f", epochs capped at {args.max_epochs}" if args.max_epochs else "")
            + (f"; ctr runs with --set {' '.join(args.ctr_set)}" if args.ctr_set else "")
            + f"; load average at the end {os.getloadavg()[0]:.1f}")
    text = markdown(rows, note, args.reference_autoint)
    (out / f"{args.name}.json").write_text(json.dumps({"rows": rows, "runs": runs, "note": note}, indent=2))
    (out / f"{args.name}.md").write_text(text)
    print(text)
    if args.mlflow_experiment:
        import mlflow

        mlflow.set_experiment(args.mlflow_experiment)
        with mlflow.start_run(run_name="peers"):
            mlflow.log_text(text, f"{args.name}.md")
            mlflow.log_dict({"rows": rows, "runs": runs}, f"{args.name}.json")


if __name__ == "__main__":
    main()
