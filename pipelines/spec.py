"""Pipeline spec: one YAML file → typed sections, each owned by the module that consumes it.

Two layouts are accepted:

* flat: top-level ``data``, ``features``, ``model``, ``embedding``, ``train``, ``distributed``, ``register``
  (plus ``description:``, the MLflow run description, and ``baseline:``, a second ``model:`` section
  trained and scored on the same splits for comparison, e.g. ``{name: lr}``);
* ``base:`` defaults plus named ``experiments:`` (FuxiCTR style); each experiment is merged into
  ``base`` section by section and selected with ``--experiment`` (default: the only/first one).

``--set a.b.c=value`` overrides any key of the merged experiment before validation; values are
parsed as YAML scalars (``3`` → int, ``true`` → bool, ``[1, 2]`` → list).
"""

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from ctr.config import StrictConfig
from ctr.data.readers import DataConfig
from ctr.data.synthetic import SyntheticConfig
from ctr.distributed.sharding import ShardingConfig
from ctr.embeddings import parse_embedding_config
from ctr.errors import ConfigError
from ctr.features.schema import Schema
from ctr.models import parse_model_config
from ctr.train.loop import TrainConfig

SECTIONS = ("name", "description", "synthetic", "data", "features", "model", "baseline", "embedding", "train",
            "distributed", "register", "output", "search")


class DistributedConfig(StrictConfig):
    """Args:
        workers (int): training processes; 1 (or 0) trains in this process without Ray, N > 1 trains
            on N Ray Train workers (gloo on CPU, nccl on GPUs).
        device (str): ``cpu`` or ``cuda``.
        sharding (ShardingConfig): allowed sharding types for the planner.
        address (str | None): Ray cluster to join (``auto``, ``ray://HOST:10001``); ``None`` starts Ray here.
        max_failures (int): times Ray restarts failed workers from the last checkpoint.
        cpus_per_worker (float): CPU slots each Ray worker reserves.
    """

    workers: int = 1
    device: Literal["cpu", "cuda"] = "cpu"
    sharding: ShardingConfig = ShardingConfig()
    address: str | None = None
    max_failures: int = 2
    cpus_per_worker: float = 1.0


class RegisterConfig(StrictConfig):
    """Args:
        model_name (str | None): registered model name (default: ``ctr-<pipeline name>``).
        experiment (str | None): MLflow experiment (default: the pipeline name).
        alias (str | None): alias to point at the new version (e.g. ``champion``); ``None`` sets none.
        enabled (bool): log and register in MLflow.
    """

    model_name: str | None = None
    experiment: str | None = None
    alias: str | None = None
    enabled: bool = True


class SyntheticSpec(StrictConfig):
    """Generate Criteo-like data into ``data.train`` before preparing, when that file is missing.

    Args:
        rows (int): rows to generate.
        seed (int): generator seed.
        max_cardinality (int): largest categorical field's cardinality.
        teacher (SyntheticConfig): shape of the data and of the planted teacher (fields, Zipf
            exponent, interaction pairs/triples, logit scales); see :mod:`ctr.data.synthetic`.
    """

    rows: int = 200_000
    seed: int = 7
    max_cardinality: int = 100_000
    teacher: SyntheticConfig = SyntheticConfig()


class OutputConfig(StrictConfig):
    """Args:
        dir (str): where run folders (checkpoints, bundle, summary) are written.
    """

    dir: str = "runs"


@dataclass(frozen=True)
class PipelineSpec:
    """A validated pipeline: one typed config per section plus the merged raw mapping it came from."""

    name: str
    data: DataConfig
    features: Schema
    model: Any
    embedding: Any
    train: TrainConfig
    distributed: DistributedConfig
    register: RegisterConfig
    output: OutputConfig
    synthetic: SyntheticSpec | None
    raw: dict
    source: str
    description: str = ""
    baseline: Any = None

    @property
    def model_name(self) -> str:
        return self.register.model_name or f"ctr-{self.name}"


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    key, value = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path or path[0] not in SECTIONS:
        raise ConfigError(f"--set {item!r}: unknown section {path[0] if path else ''!r}; sections: {', '.join(SECTIONS)}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return path, parsed


def apply_override(raw: dict, path: list[str], value: Any) -> None:
    node = raw
    for i, key in enumerate(path[:-1]):
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set inside a {type(nxt).__name__}", ".".join(path[: i + 1]))
        node = nxt
    node[path[-1]] = value


def _merge(base: dict, exp: dict) -> dict:
    out = copy.deepcopy(base)
    for section, value in (exp or {}).items():
        if isinstance(value, dict) and isinstance(out.get(section), dict):
            out[section] = {**out[section], **value}
        else:
            out[section] = copy.deepcopy(value)
    return out


def select_experiment(doc: dict, experiment: str | None, source: str) -> tuple[str, dict]:
    stem = Path(source).stem
    if "experiments" not in doc:
        if experiment:
            raise ConfigError(f"{source} has no experiments: section; drop --experiment {experiment}")
        return str(doc.get("name") or stem), {k: v for k, v in doc.items()}
    exps = doc["experiments"] or {}
    if not isinstance(exps, dict) or not exps:
        raise ConfigError("expected a non-empty mapping of experiment name → sections", "experiments")
    name = experiment or next(iter(exps))
    if name not in exps:
        raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(exps)}", "experiments")
    merged = _merge(doc.get("base") or {}, exps[name] or {})
    merged.setdefault("name", name)
    return name, merged


def load_spec(path: str | Path, overrides: list[str] | None = None, experiment: str | None = None) -> PipelineSpec:
    """Read, merge, override and validate a pipeline YAML; errors name the YAML path."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"pipeline file {p} not found")
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    name, raw = select_experiment(doc, experiment, str(p))
    for item in overrides or []:
        apply_override(raw, *parse_override(item))
    return build_spec(raw, name, str(p))


def build_spec(raw: dict, name: str, source: str) -> PipelineSpec:
    unknown = sorted(set(raw) - set(SECTIONS) - {"base", "experiments"})
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; sections: {', '.join(SECTIONS)}")
    for required in ("data", "features", "model"):
        if required not in raw:
            raise ConfigError("required section is missing", required)
    if raw.get("search") is not None:
        from pipelines.search import SearchConfig

        SearchConfig.parse(raw["search"], "search")
    return PipelineSpec(
        name=str(raw.get("name") or name),
        data=DataConfig.parse(raw["data"], "data"),
        features=Schema.parse(raw["features"], "features"),
        model=parse_model_config(raw["model"], "model"),
        embedding=parse_embedding_config(raw.get("embedding") or {"name": "plain"}, "embedding"),
        train=TrainConfig.parse(raw.get("train"), "train"),
        distributed=DistributedConfig.parse(raw.get("distributed"), "distributed"),
        register=RegisterConfig.parse(raw.get("register"), "register"),
        output=OutputConfig.parse(raw.get("output"), "output"),
        synthetic=SyntheticSpec.parse(raw["synthetic"], "synthetic") if raw.get("synthetic") is not None else None,
        raw=raw,
        source=source,
        description=_description(raw.get("description")),
        baseline=parse_model_config(raw["baseline"], "baseline") if raw.get("baseline") is not None else None,
    )


def _description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"expected text, got {type(value).__name__}", "description")
    return value.strip()
