"""The contract between a search method's phases and the runner that executes them.

A phase is a plain function ``run(ctx: PhaseContext) -> dict``. It trains through ``ctx.train`` (the
runner decides in-process or on Ray workers), reports through ``ctx.log_metrics`` / ``ctx.log_artifact``
(the runner decides where: a nested MLflow run), writes files under ``ctx.dir`` and returns a JSON-safe
dict of outputs that later phases read from ``ctx.previous[name]``. It knows nothing about MLflow,
Ray or DMP. The runner persists the outputs and a done marker, so a resumed pipeline skips finished phases.

The **last** phase returns a :class:`CompactResult` as a dict (``CompactResult(...).to_json()``): the
compact model the pipeline then evaluates, exports and registers like any other.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainRequest:
    """One training run asked for by a phase.

    Args:
        embedding_cfg: embedding config to build (the search method's, or ``plain`` for a compact model).
        train_cfg: ``TrainConfig`` (a phase sets its own epochs / patience with ``model_copy``).
        artifact_dir (str): feature artifact folder (the original or a compact one).
        splits (dict[str, str]): ``train`` and ``valid`` encoded split folders.
        out_dir (str): checkpoint folder of this run.
        init_from (str | None): DCP model checkpoint to start from.
        snapshot_epochs (tuple[int, ...]): epochs whose starting weights are saved under
            ``out_dir/epoch-start-<e>``.
        restore_best (bool): reload the best validation epoch at the end (else keep the last).
        model_cfg: backbone config; ``None`` = the pipeline's ``model:``.
        on_report (callable | None): per-epoch record callback of the phase (the runner adds its own).
        freeze_dense (bool): train only the embedding tables and the field embedding's own weights (DNIS's
            search); every other weight keeps its starting value.
        validate_start (bool): the starting weights compete as epoch 0 for the kept (best) state.
    """

    embedding_cfg: Any
    train_cfg: Any
    artifact_dir: str
    splits: dict[str, str]
    out_dir: str
    init_from: str | None = None
    snapshot_epochs: tuple[int, ...] = ()
    restore_best: bool = True
    model_cfg: Any = None
    on_report: Callable[[dict], None] | None = None
    freeze_dense: bool = False
    validate_start: bool = False


@dataclass
class PhaseContext:
    """What a phase receives.

    Args:
        model_cfg: the pipeline's backbone config (``model:``).
        embedding_cfg: the search method's config (``embedding:``).
        train_cfg: the pipeline's ``train:`` config.
        artifact_dir (Path): the original feature artifact folder.
        splits (dict[str, Path]): ``train``/``valid``/``test`` encoded split folders.
        dir (Path): this phase's own folder (created by the runner).
        previous (dict[str, dict]): outputs of the phases that ran before, by phase name.
        train (callable): ``train(TrainRequest) -> WorkerResult``.
        log_metrics (callable): ``log_metrics(metrics, step=0)`` into this phase's record.
        log_artifact (callable): ``log_artifact(path, subdir=None)`` into this phase's record.
    """

    model_cfg: Any
    embedding_cfg: Any
    train_cfg: Any
    artifact_dir: Path
    splits: dict[str, Path]
    dir: Path
    previous: dict[str, dict]
    train: Callable[[TrainRequest], Any]
    log_metrics: Callable[..., None] = lambda metrics, step=0: None
    log_artifact: Callable[..., None] = lambda path, subdir=None: None


@dataclass(frozen=True)
class Phase:
    """A named step of a search method (``search``, ``evolve``, ``materialise``, ``retrain`` ...)."""

    name: str
    run: Callable[[PhaseContext], dict]


@dataclass
class CompactResult:
    """The output of a search's last phase: an ordinary model the pipeline evaluates and registers.

    Args:
        embedding (dict): the compact model's ``embedding:`` config (e.g. ``{"name": "plain"}``).
        artifact_dir (str): its feature artifact (pruned values removed, ids renumbered).
        splits (dict[str, str]): ``train``/``valid``/``test`` encoded with that artifact's ids.
        checkpoint_dir (str): the trained compact model (DCP).
        valid (dict): its validation metrics.
        history (list[dict]): its per-epoch records.
        extra (dict): method outputs for the summary (kept ratio, dims ...).
    """

    embedding: dict
    artifact_dir: str
    splits: dict[str, str]
    checkpoint_dir: str
    valid: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> "CompactResult":
        return cls(**doc)
