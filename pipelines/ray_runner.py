"""Train on N Ray Train workers (``distributed.workers: N > 1``): gloo on CPU, nccl on GPUs.

Without an address Ray starts on this machine, bound to 127.0.0.1; ``address`` (``auto``,
``ray://HOST:10001``) joins a running cluster. The driver drains an event queue fed by rank 0
while ``TorchTrainer.fit`` runs, calling ``on_report``/``on_step`` live (MLflow logging stays here
in ``pipelines/``). ``FailureConfig(max_failures)`` restarts failed workers from the last reported
checkpoint. The run folder must be on storage every node sees (on one machine it always is).
"""

import logging
import os
import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # stay on 127.0.0.1 (stack.md §2)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # noqa: E402
from ray.train.torch import TorchConfig, TorchTrainer  # noqa: E402
from ray.util.queue import Empty, Queue  # noqa: E402

from ctr.distributed.worker import WorkerJob, WorkerResult  # noqa: E402
from ctr.errors import CtrError  # noqa: E402
from pipelines.ray_worker import train_loop  # noqa: E402

log = logging.getLogger("ctr.pipelines")


class RayTrainingError(CtrError):
    """Ray Train gave up (a worker failed more than ``max_failures`` times, or raised an error).

    Example: a planner error on a worker; the message carries the worker's own first line.
    """


@dataclass
class RayRun:
    """How to run: workers, cluster, failure budget and where Ray keeps checkpoints.

    Args:
        workers (int): Ray Train workers (one gloo/nccl rank each).
        storage (str): Ray's ``storage_path`` (checkpoints and run state).
        address (str | None): cluster to join (``auto``, ``ray://HOST:10001``); ``None`` starts Ray here.
        max_failures (int): worker-group restarts from the last checkpoint before giving up.
        use_gpu (bool): one GPU per worker, nccl backend.
        cpus_per_worker (float): CPU slots each worker reserves.
        on_worker (Callable | None): called with ``{"rank", "pid", "world_size"}`` as each worker starts.
    """

    workers: int
    storage: str
    address: str | None = None
    max_failures: int = 0
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    on_worker: Callable[[dict], None] | None = None
    name: str = "ctr-train"
    checkpoints: list[str] = field(default_factory=list)


def ensure_ray(address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray; returns whether this call started it."""
    if ray.is_initialized():
        return False
    if address is None and not os.environ.get("RAY_ADDRESS"):
        address = "local"  # start our own: never attach to a cluster some earlier `ray start` left behind
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False, configure_logging=False)
    return True


def train_on_ray(job: WorkerJob, run: RayRun, on_report: Callable[[dict], None] | None = None,
                 on_step: Callable[[int, float], None] | None = None) -> WorkerResult:
    """Train ``job`` on ``run.workers`` Ray workers; returns rank 0's result (reports forwarded live)."""
    started = ensure_ray(run.address)
    try:
        events = Queue(actor_options={"num_cpus": 0})
        trainer = TorchTrainer(
            train_loop, train_loop_config={"job": job, "events": events},
            torch_config=TorchConfig(backend="nccl" if run.use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=run.workers, use_gpu=run.use_gpu,
                                         resources_per_worker={"CPU": run.cpus_per_worker}),
            run_config=RunConfig(name=run.name, storage_path=str(Path(run.storage).resolve()),
                                 failure_config=FailureConfig(max_failures=run.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)))
        outcome: dict = {}
        thread = threading.Thread(target=_fit, args=(trainer, outcome), daemon=True)
        thread.start()
        result = _drain(events, thread, run, on_report, on_step)
        if "error" in outcome:
            raise RayTrainingError(f"Ray training failed: {_first_line(outcome['error'])}") from None
        if result is None:
            raise RayTrainingError("Ray training ended without a result from rank 0")
        ray_result = outcome["result"]
        run.checkpoints = [c.path for c, _ in (ray_result.best_checkpoints or [])]
        return result
    finally:
        if started:
            ray.shutdown()


def _fit(trainer: TorchTrainer, outcome: dict) -> None:
    try:
        outcome["result"] = trainer.fit()
    except Exception as exc:  # handed to the driver thread, which raises a CtrError
        outcome["error"] = exc


def _drain(events: Queue, thread: threading.Thread, run: RayRun, on_report, on_step) -> WorkerResult | None:
    result, last_step, last_epoch = None, 0, 0
    while True:
        try:
            kind, payload = events.get(timeout=0.2)
        except Empty:
            if not thread.is_alive() and events.empty():
                return result
            continue
        except queue.Empty:  # pragma: no cover - alias of Empty in some Ray versions
            continue
        if kind == "steps" and on_step is not None:
            for step, loss in payload:
                if step > last_step:  # a restarted worker replays steps after its checkpoint
                    on_step(step, loss)
                    last_step = step
        elif kind == "report" and on_report is not None and payload["epoch"] > last_epoch:
            on_report(payload)
            last_epoch = payload["epoch"]
        elif kind == "worker":
            log.info("ray worker rank %d/%d started (pid %d)", payload["rank"], payload["world_size"], payload["pid"])
            if run.on_worker is not None:
                run.on_worker(payload)
        elif kind == "checkpoint":
            log.info("checkpoint reported at epoch %d step %d", payload["epoch"], payload["step"])
        elif kind == "result":
            result = payload


def _first_line(exc: BaseException) -> str:
    """The worker's own exception line (``SomeError: message``, the last one in Ray's traceback text), else the
    first line that mentions an error ("Training failed due to worker errors:" alone says nothing)."""
    text = str(exc).strip()
    raised = [line.strip() for line in text.splitlines() if re.match(r"\s*[\w.]+(Error|Exception): \S", line)]
    if raised:
        return raised[-1][:500]
    for line in text.splitlines():
        if "Error" in line or "error" in line:
            return line.strip()[:500]
    return (text.splitlines() or [type(exc).__name__])[0][:500]
