"""Parameter–AUC sweep: ``unified`` vs ``hashed`` at equal budgets vs collisionless ``plain``.

Runs ``ctr run PIPELINE --experiment E --set embedding.budget=B --set train.seed=S`` for every
budget and seed (``plain`` once per seed), one run at a time, reads each summary JSON and prints a
Markdown table of mean test AUC (± std over seeds) and ``embedding_params``. Optionally logs the
table and a parameter–AUC plot to one MLflow run (``--mlflow-experiment``).

Usage::

    MLFLOW_TRACKING_URI=sqlite:////tmp/ue/mlruns.db PYTHONPATH=$PWD \\
        python -m benchmarks.unified_budget pipelines/examples/unified_criteo.yaml \\
        --budgets 0.1 0.25 0.5 1.0 --seeds 2021 --out /tmp/ue/criteo.json
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def run_one(pipeline: str, experiment: str, seed: int, budget: float | None, out: Path,
            sets: list[str] | None = None) -> dict:
    tag = f"{experiment}-{budget if budget is not None else 'full'}-{seed}"
    summary = out.parent / f"{out.stem}-{tag}.json"
    if not summary.is_file():
        cmd = [sys.executable, "-m", "pipelines.cli", "run", pipeline, "--experiment", experiment,
               "--set", f"train.seed={seed}", "--summary-json", str(summary)]
        if budget is not None:
            cmd += ["--set", f"embedding.budget={budget}"]
        for item in sets or []:
            cmd += ["--set", item]
        done = subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:  # say which run failed and why, then stop (finished runs are kept and reused)
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise SystemExit(f"run {tag} failed (exit {done.returncode}): {' '.join(cmd)}\n{tail}")
    data = json.loads(summary.read_text())
    return {"experiment": experiment, "budget": budget if budget is not None else 1.0, "seed": seed,
            "auc": data["test"]["auc"], "logloss": data["test"]["logloss"], "params": data["embedding_params"]}


def table(rows: list[dict]) -> str:
    keys = sorted({(r["budget"], r["experiment"]) for r in rows})
    lines = ["| budget | method | embedding_params | test AUC (mean ± std) | seeds |", "|---|---|---|---|---|"]
    for budget, exp in keys:
        sel = [r for r in rows if r["budget"] == budget and r["experiment"] == exp]
        aucs = [r["auc"] for r in sel]
        std = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        lines.append(f"| {budget:.0%} | {exp} | {sel[0]['params']} | {statistics.mean(aucs):.4f} ± {std:.4f} "
                     f"| {len(aucs)} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for exp in sorted({r["experiment"] for r in rows}):
        pts = {}
        for r in rows:
            if r["experiment"] == exp:
                pts.setdefault(r["params"], []).append(r["auc"])
        xs = sorted(pts)
        ax.plot(xs, [statistics.mean(pts[x]) for x in xs], "o-", label=exp)
    ax.set_xlabel("embedding parameters")
    ax.set_ylabel("test AUC")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def _missing_data(pipeline: str) -> str | None:
    """The pipeline's train file when it is absent and no synthetic generator would write it, else None."""
    from pipelines.spec import load_spec

    spec = load_spec(pipeline)  # no experiment named: the first one
    train = Path(spec.data.train)
    return None if train.exists() or spec.synthetic is not None else str(train)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[2021])
    parser.add_argument("--methods", nargs="+", default=["unified", "hashed"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mlflow-experiment", default=None)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="extra override for every run (e.g. train.optimizer.sparse_lr=0.01); repeatable")
    args = parser.parse_args(argv)
    missing = _missing_data(args.pipeline)
    if missing:
        print(f"unified_budget: skipped, {missing} is absent (real data is read from ../shared/data, never copied)")
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        rows.append(run_one(args.pipeline, "plain", seed, None, args.out, args.sets))
        for budget in args.budgets:
            for method in args.methods:
                rows.append(run_one(args.pipeline, method, seed, budget, args.out, args.sets))
                args.out.write_text(json.dumps(rows, indent=2))
    text = table(rows)
    print(text)
    if args.mlflow_experiment:
        import mlflow

        png = args.out.with_suffix(".png")
        plot(rows, png)
        mlflow.set_experiment(args.mlflow_experiment)
        with mlflow.start_run(run_name=f"{Path(args.pipeline).stem}-budget-sweep"):
            mlflow.log_artifact(str(png))
            mlflow.log_text(text, "budget_table.md")
            mlflow.log_dict(rows, "budget_rows.json")


if __name__ == "__main__":
    main()
