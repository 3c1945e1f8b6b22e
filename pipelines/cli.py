"""``ctr`` command line: ``run``, ``models list|promote``, ``synth``.

The only place environment variables are read (``MLFLOW_TRACKING_URI``). A :class:`ctr.errors.CtrError`
becomes one line on stderr and exit status 2; no traceback for user mistakes.
"""

import argparse
import json
import logging
import os
import sys
import warnings

from ctr.errors import CtrError


def _tracking_uri() -> str:
    from pipelines.tracking import DEFAULT_URI

    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def cmd_run(args) -> int:
    from pipelines.run import run_pipeline
    from pipelines.spec import load_spec

    spec = load_spec(args.pipeline, args.set, args.experiment)
    summary = run_pipeline(spec, _tracking_uri())
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=2, default=str)
    test = summary["test"]
    print(f"model      {summary['model']} ({summary['embedding']} embedding, {summary['workers']} worker(s))")
    print(f"test AUC   {test['auc']:.4f}")
    print(f"logloss    {test['logloss']:.4f}" + (f"   GAUC {test['gauc']:.4f}" if "gauc" in test else ""))
    print(f"speed      {summary['train_examples_per_s']:.0f} train examples/s; best epoch {summary['best_epoch']}")
    print(f"model URI  {summary['model_uri']}   (run {summary['run_id']})")
    return 0


def cmd_models_list(args) -> int:
    from pipelines.registry import list_versions

    rows = list_versions(_tracking_uri(), args.name)
    if not rows:
        print("no registered models")
        return 0
    print(f"{'name':32} {'version':>7}  {'aliases':16} {'test_auc':>8}  run_id")
    for r in rows:
        print(f"{r.name:32} {r.version:>7}  {','.join(r.aliases) or '-':16} {r.test_auc or '-':>8}  {r.run_id}")
    return 0


def cmd_models_promote(args) -> int:
    from pipelines.registry import promote

    promote(_tracking_uri(), args.name, args.version, args.alias)
    print(f"{args.name} version {args.version} is now @{args.alias}")
    return 0


def cmd_synth(args) -> int:
    from ctr.data.synthetic import write_synthetic_if_missing

    path = write_synthetic_if_missing(args.out, args.rows, args.seed, args.max_cardinality)
    print(f"synthetic data at {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctr", description="CTR training pipelines and model registry")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="prepare → train → evaluate → register a pipeline")
    r.add_argument("pipeline", help="pipeline YAML")
    r.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config key")
    r.add_argument("--experiment", help="experiment name (for base/experiments specs)")
    r.add_argument("--summary-json", help="write the run summary here")
    r.set_defaults(fn=cmd_run)
    m = sub.add_parser("models", help="registered models").add_subparsers(dest="models_cmd", required=True)
    ml = m.add_parser("list", help="list registered model versions")
    ml.add_argument("--name")
    ml.set_defaults(fn=cmd_models_list)
    mp = m.add_parser("promote", help="point an alias at a version")
    mp.add_argument("name")
    mp.add_argument("version")
    mp.add_argument("--alias", default="champion")
    mp.set_defaults(fn=cmd_models_promote)
    s = sub.add_parser("synth", help="write synthetic Criteo-like Parquet data")
    s.add_argument("--out", required=True)
    s.add_argument("--rows", type=int, default=200_000)
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--max-cardinality", type=int, default=100_000)
    s.set_defaults(fn=cmd_synth)
    return p


def setup_logging(verbose: bool) -> None:
    """Our loggers at INFO; third-party chatter (FBGEMM logs on the root logger) only when ``-v``."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("ctr").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        for noisy in ("torchrec", "fbgemm_gpu", "torch.distributed", "torch.fx", "alembic", "mlflow"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(torchrec|torch|mlflow)\..*")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.fn(args)
    except CtrError as exc:
        print(f"ctr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ctr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
