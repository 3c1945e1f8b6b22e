"""``ctr submit`` and ``ctr jobs``: run a pipeline as a Ray job through the Job Submission API.

The job's entrypoint first checks that the cluster runs the same pinned stack as this machine
(torch, torchrec, fbgemm, ray, mlflow, polars; ``check_stack``), then runs ``ctr run`` there. The
runtime environment carries the tracking URI and, with ``working_dir``, uploads a folder (pipeline
file and small inputs) that becomes the job's working directory.
"""

import logging
import os
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from ray.job_submission import JobStatus, JobSubmissionClient  # noqa: E402

from ctr.errors import CtrError  # noqa: E402

log = logging.getLogger("ctr.pipelines")
PINNED = ("torch", "torchrec", "fbgemm-gpu-cpu", "ray", "mlflow", "polars")
AGENT_WAIT_S = 60
TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


class JobError(CtrError):
    """A Ray job could not be submitted, found or followed.

    Example: ``--address http://head:8265`` with no dashboard listening there.
    """


def pinned_stack() -> list[str]:
    """``name==version`` of the packages a job must find on the cluster."""
    out = []
    for name in PINNED:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return out


def check_stack(pins: list[str]) -> None:
    """Raise :class:`JobError` naming the first package whose installed version differs from its pin."""
    for pin in pins:
        name, want = pin.split("==")
        try:
            got = metadata.version(name)
        except metadata.PackageNotFoundError:
            got = "missing"
        if got != want:
            raise JobError(f"the cluster has {name} {got}, the submitter pinned {want}; install the pinned stack "
                           "(deploy/Containerfile) on every node")


REACH = ("the job server is reachable only inside the cluster: `kubectl port-forward svc/ctr-head-svc 8265:8265` "
         "(KubeRay) or `ray dashboard deploy/cluster.yaml`, then --address http://127.0.0.1:8265")


def auth_help(address: str) -> str:
    """What to do when the job server at ``address`` refuses the request for want of Ray's token."""
    return (f"the Ray job server at {address} refused the request (token authentication): export "
            "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<the cluster's token> (KubeRay: kubectl get secret ctr-ray-auth "
            "-o jsonpath='{.data.auth_token}' | base64 -d)")


def _refused(exc: BaseException, address: str) -> JobError | None:
    from ray.exceptions import AuthenticationError

    if isinstance(exc, AuthenticationError):
        return JobError(auth_help(address))
    return None


def client(address: str) -> JobSubmissionClient:
    from ray.exceptions import AuthenticationError

    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise JobError(auth_help(address)) from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise JobError(f"no Ray job server at {address} ({str(exc).splitlines()[0][:200]}); "
                       f"pass the dashboard address, e.g. http://HEAD:8265; {REACH}") from None


def entrypoint(pipeline: str, overrides: list[str], experiment: str | None, python: str = "python") -> str:
    pins = " ".join(pinned_stack())
    run = [python, "-m", "pipelines.cli", "run", pipeline] + [a for o in overrides for a in ("--set", o)]
    if experiment:
        run += ["--experiment", experiment]
    check = [python, "-m", "pipelines.submit", "check-stack", *pins.split()]
    return f"{shlex.join(check)} && {shlex.join(run)}"


def submit(address: str, pipeline: str, overrides: list[str], *, experiment: str | None = None,
           tracking_uri: str, working_dir: str | None = None, python: str = "python") -> str:
    """Submit ``ctr run PIPELINE`` as a Ray job; returns the submission id."""
    # the job's driver joins the cluster in the submitter's auth mode; a token cluster's pods carry the
    # token themselves (a Secret), so it never travels in the runtime env (Ray shows that to anyone)
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONUNBUFFERED": "1"}
    runtime_env: dict = {"env_vars": env}
    if working_dir:
        if not Path(working_dir).is_dir():
            raise JobError(f"--working-dir {working_dir}: not a folder")
        runtime_env["working_dir"] = working_dir
    elif not Path(pipeline).is_absolute():
        pipeline = str(Path(pipeline).resolve())
    c, deadline = client(address), time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return c.submit_job(entrypoint=entrypoint(pipeline, overrides, experiment, python),
                                runtime_env=runtime_env,
                                metadata={"ctr.pipeline": Path(pipeline).name, "ctr.stack": " ".join(pinned_stack())})
        except Exception as exc:
            refused = _refused(exc, address)
            if refused is not None:
                raise refused from None
            if not isinstance(exc, RuntimeError):
                raise
            # a freshly started head answers before its job agent is up: Ray says "try again later"
            if "No available agent" in str(exc) and time.monotonic() < deadline:
                time.sleep(2)
                continue
            raise JobError(f"submission refused: {str(exc).splitlines()[0][:300]}") from None


def wait(address: str, job_id: str, timeout_s: float, poll_s: float = 1.0) -> JobStatus:
    """Poll until the job ends (or ``timeout_s``); returns its last status."""
    c, deadline = client(address), time.monotonic() + timeout_s
    while True:
        status = status_of(c, job_id)
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(poll_s)


def status_of(c: JobSubmissionClient, job_id: str) -> JobStatus:
    from ray.exceptions import AuthenticationError

    try:
        return c.get_job_status(job_id)
    except AuthenticationError:
        raise JobError(auth_help(c.get_address())) from None
    except RuntimeError:
        raise JobError(f"no job {job_id!r} on this cluster; `ctr jobs list` shows the ids") from None


def jobs(address: str) -> list[dict]:
    from ray.exceptions import AuthenticationError

    rows = []
    try:
        listed = client(address).list_jobs()
    except AuthenticationError:
        raise JobError(auth_help(address)) from None
    for j in listed:
        rows.append({"id": j.submission_id or j.job_id, "status": str(j.status.value), "entrypoint": j.entrypoint,
                     "start": j.start_time, "end": j.end_time, "message": j.message or ""})
    return sorted(rows, key=lambda r: r["start"] or 0)


def logs(address: str, job_id: str) -> str:
    c = client(address)
    status_of(c, job_id)
    return c.get_job_logs(job_id)


def stop(address: str, job_id: str) -> bool:
    c = client(address)
    status_of(c, job_id)
    return c.stop_job(job_id)


if __name__ == "__main__":  # the job's first command: python -m pipelines.submit check-stack PIN...
    if len(sys.argv) >= 2 and sys.argv[1] == "check-stack":
        try:
            check_stack(sys.argv[2:])
        except JobError as exc:
            print(f"ctr: error: {exc}", file=sys.stderr)
            sys.exit(2)
        print("stack matches: " + " ".join(sys.argv[2:]))
