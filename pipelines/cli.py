"""``ctr`` command line: ``run``, ``submit``, ``jobs``, ``models list|show|promote``, ``synth``, ``serve``, ``score``.

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

    spec = load_spec(args.pipeline, args.set + _distributed_overrides(args), args.experiment)
    summary = run_pipeline(spec, _tracking_uri())
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=2, default=str)
    test = summary["test"]
    print(f"model      {summary['model']} ({summary['embedding']} embedding, {summary['workers']} worker(s))")
    print(f"test AUC   {test['auc']:.4f}" + _comparisons(summary))
    print(f"logloss    {test['logloss']:.4f}" + (f"   GAUC {test['gauc']:.4f}" if "gauc" in test else ""))
    print(f"speed      {summary['train_examples_per_s']:.0f} train examples/s; best epoch {summary['best_epoch']}; "
          f"{summary['seconds']:.0f}s in all")
    print(f"model URI  {summary['model_uri']}   (run {summary['run_id']})")
    return 0


def _distributed_overrides(args) -> list[str]:
    """``--workers N`` / ``--address A`` are shortcuts for ``--set distributed.workers=N`` / ``.address=A``."""
    out = []
    if args.workers is not None:
        if args.workers < 1:
            raise CtrError(f"--workers {args.workers}: need at least 1 worker")
        out.append(f"distributed.workers={args.workers}")
    if args.address:
        out.append(f"distributed.address={args.address}")
    return out


def _comparisons(summary: dict) -> str:
    parts = []
    if summary.get("baseline"):
        parts.append(f"baseline {summary['baseline']['model']} {summary['baseline']['test']['auc']:.4f}")
    if summary.get("oracle"):
        parts.append(f"oracle (generator's true CTR) {summary['oracle']['test']['auc']:.4f}")
    return f"   vs {', '.join(parts)} on the same test rows" if parts else ""


def cmd_models_list(args) -> int:
    from pipelines.registry import list_versions

    rows = list_versions(_tracking_uri(), args.name)
    if not rows:
        print("no registered models")
        return 0
    print(f"{'name':32} {'version':>7}  {'aliases':16} {'test_auc':>8} {'logloss':>8}  run_id")
    for r in rows:
        print(f"{r.name:32} {r.version:>7}  {','.join(r.aliases) or '-':16} {r.test_auc or '-':>8} "
              f"{r.test_logloss or '-':>8}  {r.run_id}")
    return 0


def cmd_models_show(args) -> int:
    from pipelines.registry import describe

    d = describe(_tracking_uri(), args.ref)
    print(f"model      {d['name']} version {d['version']}" + (f"  @{', @'.join(d['aliases'])}" if d["aliases"] else ""))
    tags = d["tags"]
    print(f"test       AUC {tags.get('test_auc', '-')}  logloss {tags.get('test_logloss', '-')}")
    print(f"artifacts  {d['source']}")
    run = d["run"]
    if run:
        took = f"{run['duration_s']:.1f}s" if run["duration_s"] is not None else "still running"
        print(f"run        {run['id']} ({run['name']}, {run['status']}, {took}) by {run['user'] or '?'}")
        print(f"source     {run['source']}" + (f" @ git {run['git_commit'][:12]}" if run["git_commit"] else ""))
        if run["description"]:
            print(f"about      {run['description']}")
    print(f"features   hash {tags.get('feature_hash', '-')[:16]}  ({tags.get('feature_map', '-')})")
    print(f"data       digest {tags.get('data_digest', '-')}")
    for ds in d["datasets"]:
        rows = (json.loads(ds["profile"]) if ds["profile"] else {}).get("num_rows", "?")
        print(f"  {ds['context']:6} {ds['digest']}  {rows:>9} rows  {json.loads(ds['source']).get('uri', ds['source'])}")
    if d["config"]:
        print(f"config     ({tags.get('config', 'run artifact config.yaml')})")
        print("  " + d["config"].rstrip().replace("\n", "\n  "))
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


def cmd_serve(args) -> int:
    from serving.server import ServerSettings, serve

    serve(ServerSettings(
        model=args.model, tracking_uri=_tracking_uri(), host=args.host, port=args.port,
        metrics_port=args.metrics_port, quant=args.quant, missing=args.missing, compile=args.compile,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_examples=args.max_examples,
        workers=args.workers, torch_threads=args.threads, poll_seconds=args.poll_seconds,
        grace_seconds=args.grace_seconds, max_concurrent_rpcs=args.max_concurrent_rpcs,
        request_timeout_s=args.request_timeout, tls_cert=args.tls_cert, tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca))
    return 0


def cmd_score(args) -> int:
    from serving.rows_file import score_file

    n = score_file(args.addr, args.input, args.output, args.batch_size, args.timeout,
                   tls={"tls_ca": args.tls_ca, "tls_cert": args.tls_cert, "tls_key": args.tls_key})
    if args.output:
        print(f"scored {n} rows -> {args.output}", file=sys.stderr)
    return 0


def cmd_submit(args) -> int:
    from pipelines import submit

    uri = args.tracking_uri or _tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + os.path.abspath(uri.removeprefix("sqlite:///"))  # the job runs in another folder
    sets = args.set + ([f"distributed.workers={args.workers}"] if args.workers else [])
    job_id = submit.submit(args.address, args.pipeline, sets, experiment=args.experiment, tracking_uri=uri,
                           working_dir=args.working_dir, python=args.python)
    print(f"submitted {job_id} to {args.address}")
    if args.wait:
        status = submit.wait(args.address, job_id, args.wait)
        print(f"{job_id} {status.value}")
        return 0 if status.value == "SUCCEEDED" else 1
    return 0


def cmd_jobs(args) -> int:
    from pipelines import submit

    if args.jobs_cmd == "list":
        for j in submit.jobs(args.address):
            print(f"{j['id']:36} {j['status']:10} {j['entrypoint'].split(' && ')[-1][:90]}")
    elif args.jobs_cmd == "status":
        print(submit.status_of(submit.client(args.address), args.job_id).value)
    elif args.jobs_cmd == "logs":
        print(submit.logs(args.address, args.job_id), end="")
    else:
        print(f"{args.job_id} " + ("stopping" if submit.stop(args.address, args.job_id) else "already finished"))
    return 0


SUBMIT_EPILOG = """\
reaching the job server (deploy/): it listens only inside the cluster.
  KubeRay:   kubectl port-forward svc/ctr-head-svc 8265:8265
             (or run ctr submit in a pod labelled ctr.io/ray-client=true: --address http://ctr-head-svc:8265)
  launcher:  ray dashboard deploy/cluster.yaml        (SSH tunnel to localhost:8265)
  then:      ctr submit PIPELINE.yaml --address http://127.0.0.1:8265
token: the deploy/kuberay clusters run Ray's token authentication; the client sends
  "Authorization: Bearer <token>" when these are set:
  export RAY_AUTH_MODE=token
  export RAY_AUTH_TOKEN=$(kubectl get secret ctr-ray-auth -o jsonpath='{.data.auth_token}' | base64 -d)
MLflow: the job logs with the cluster's MLflow login (Secret ctr-mlflow-login), not the submitter's.
"""


def _add_submit(sub) -> None:
    su = sub.add_parser(
        "submit", help="run a pipeline as a Ray job on a cluster (Job Submission API)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SUBMIT_EPILOG)
    su.add_argument("pipeline", help="pipeline YAML (relative to --working-dir when given)")
    su.add_argument("--address", required=True, help="Ray dashboard/job server, e.g. http://HEAD:8265")
    su.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config key")
    su.add_argument("--experiment")
    su.add_argument("--workers", type=int, help="Ray Train workers for the job")
    su.add_argument("--working-dir", help="folder uploaded as the job's working directory")
    su.add_argument("--tracking-uri", help="MLflow tracking URI the job logs to (default: MLFLOW_TRACKING_URI)")
    su.add_argument("--python", default="python", help="interpreter on the cluster nodes")
    su.add_argument("--wait", type=float, default=0, metavar="SECONDS", help="wait for the job to finish")
    su.set_defaults(fn=cmd_submit)
    j = sub.add_parser("jobs", help="Ray jobs on a cluster").add_subparsers(dest="jobs_cmd", required=True)
    for name, helptext in (("list", "list jobs"), ("status", "a job's status"), ("logs", "a job's output"),
                           ("stop", "stop a job")):
        jp = j.add_parser(name, help=helptext)
        jp.add_argument("--address", required=True, help="Ray dashboard/job server, e.g. http://HEAD:8265")
        if name != "list":
            jp.add_argument("job_id")
        jp.set_defaults(fn=cmd_jobs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctr", description="CTR training pipelines and model registry")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="prepare → train → evaluate → register a pipeline")
    r.add_argument("pipeline", help="pipeline YAML")
    r.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config key")
    r.add_argument("--experiment", help="experiment name (for base/experiments specs)")
    r.add_argument("--summary-json", help="write the run summary here")
    r.add_argument("--workers", type=int, help="train on N Ray Train workers (1: in this process, no Ray)")
    r.add_argument("--address", help="Ray cluster to join for N > 1 workers: auto or ray://HOST:10001")
    r.set_defaults(fn=cmd_run)
    _add_submit(sub)
    m = sub.add_parser("models", help="registered models").add_subparsers(dest="models_cmd", required=True)
    ml = m.add_parser("list", help="list registered model versions")
    ml.add_argument("--name")
    ml.set_defaults(fn=cmd_models_list)
    ms = m.add_parser("show", help="a version's lineage: run, data digests, config")
    ms.add_argument("ref", metavar="NAME[/VERSION|@ALIAS]", help="registered model (latest version), a version or an alias")
    ms.set_defaults(fn=cmd_models_show)
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
    sv = sub.add_parser("serve", help="serve a registered model over gRPC (quantized FBGEMM tables)")
    sv.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a bundle folder")
    sv.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 for every interface)")
    sv.add_argument("--port", type=int, default=50051)
    sv.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port (off if unset)")
    sv.add_argument("--quant", choices=["int8", "int4", "fp16", "none"], default="int8")
    sv.add_argument("--missing", choices=["error", "null"], default="error",
                    help="an absent feature is an error (default) or a missing value")
    sv.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                    help="torch.compile the dense towers at load (tens of seconds per load; see the README's bench)")
    sv.add_argument("--max-batch", type=int, default=512, help="most rows per model call")
    sv.add_argument("--max-wait-ms", type=float, default=0.0, help="micro-batching wait for more requests")
    sv.add_argument("--max-examples", type=int, default=4096, help="most examples per request")
    sv.add_argument("--workers", type=int, default=16, help="gRPC handler threads")
    sv.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    sv.add_argument("--poll-seconds", type=float, default=10.0, help="alias poll interval (0: no hot reload)")
    sv.add_argument("--grace-seconds", type=float, default=10.0, help="drain time for in-flight requests")
    sv.add_argument("--max-concurrent-rpcs", type=int, default=128,
                    help="requests admitted at once (more: RESOURCE_EXHAUSTED)")
    sv.add_argument("--request-timeout", type=float, default=10.0, help="longest a request may take, seconds")
    sv.add_argument("--tls-cert", help="PEM certificate chain: serve over TLS (with --tls-key)")
    sv.add_argument("--tls-key", help="PEM private key of --tls-cert")
    sv.add_argument("--tls-client-ca", help="PEM CA bundle: require client certificates it signed (mutual TLS)")
    sv.set_defaults(fn=cmd_serve)
    sc = sub.add_parser("score", help="score JSON-lines rows against a running scorer")
    sc.add_argument("--addr", default="127.0.0.1:50051", help="HOST:PORT of `ctr serve`")
    sc.add_argument("--input", required=True, help="JSON lines: one object of raw feature values per line")
    sc.add_argument("--output", help="write JSON lines {\"probability\": p} here (default: stdout)")
    sc.add_argument("--batch-size", type=int, default=512)
    sc.add_argument("--timeout", type=float, default=30.0, help="deadline per request, seconds")
    sc.add_argument("--tls-ca", help="PEM CA that signed the server's certificate (enables TLS)")
    sc.add_argument("--tls-cert", help="PEM client certificate (servers with mutual TLS)")
    sc.add_argument("--tls-key", help="PEM private key of --tls-cert")
    sc.set_defaults(fn=cmd_score)
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
