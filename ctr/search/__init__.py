"""Embedding search methods: several phases ending in a compact, ordinary model.

A *search method* is an embedding method (registered in :data:`ctr.embeddings.METHODS`, used as
``embedding: {name: optfs, ...}``) that also declares phases here: ``SEARCHES[name](config) -> [Phase]``.
``ctr run`` (``pipelines/search.py``) runs them in order from one YAML, each as a nested MLflow run under
the pipeline's run, with its own metrics and artifacts; a phase that finished (its ``done.json``) is
reused when the pipeline is resumed with ``search.resume_from: <earlier run dir>``.

The building blocks (all free of MLflow, Ray and DMP):

* :mod:`ctr.search.phases` — ``Phase(name, run)``, ``PhaseContext`` (configs, split folders, the outputs
  of earlier phases, and callbacks: ``train(TrainRequest)``, ``log_metrics``, ``log_artifact``),
  ``TrainRequest`` (an embedding config, a train config, an artifact and splits, ``init_from`` a saved
  model, ``snapshot_epochs`` whose starting weights are kept, ``restore_best``), and ``CompactResult``,
  what the last phase returns.
* :mod:`ctr.search.compact` — keep-lists → a compact :class:`~ctr.features.artifact.FeatureArtifact`
  (pruned values removed from the vocabulary, so they encode to OOV id 0 at serving time), remapped
  encoded splits, and ``compact_state`` gathering the kept rows (and scaling them) into the compact
  model's state dict. The compact model is built by ``ctr.models.build_model`` with ``plain`` tables.
* Training hooks: a field embedding may define ``start_epoch(epoch)`` (called by the training loop
  before each epoch: temperatures, schedules); ``regularizer()`` adds loss terms.

* :mod:`ctr.search.common` — the steps phases share: compact data, the compact model's retrain, in-memory
  validation batches, keep reports and bar charts.
* :mod:`ctr.search.evolution` — an evolutionary search over one discrete choice per gene, driven by an
  ``evaluate(candidate) -> fitness`` callback (OptEmbed's per-field dims).

Bilevel searches (DNIS): a field embedding with a true ``bilevel`` property gets, after every train step, a
validation-batch step from the training worker (``alpha_grad`` / ``apply_alpha_grad``), and
``TrainRequest(freeze_dense=True)`` keeps the dense network fixed while the tables train.

Mixed widths (OptEmbed per field; DNIS per frequency block, ``embedding: block_dim``): the compact model uses ``embedding: mixed_dim`` (one table per field
or block with its own width, a multiple of 4) and :class:`~ctr.embeddings.projection.WidthProjection`
(a learned per-table map to the model width, zero-padding identity at init) so FM / DeepFM / AutoInt see
equal widths; ``compact_state(dims=..., own_prefixes=...)`` gathers prefix columns into the narrower
tables. Retraining from saved initial weights is ``TrainRequest(snapshot_epochs=(0,))`` in the supernet
phase and ``init_from`` later.
"""

from collections.abc import Callable

from ctr.search import dnis, optembed, optfs, unified_optfs
from ctr.search.phases import CompactResult, Phase, PhaseContext, TrainRequest

SEARCHES: dict[str, Callable[[object], list[Phase]]] = {
    "optfs": optfs.phases,
    "optembed": optembed.phases,
    "dnis": dnis.phases,
    "unified_optfs": unified_optfs.phases,
}


def is_search(embedding_cfg) -> bool:
    """Whether ``embedding_cfg`` names a search method (its pipeline runs phases instead of one train)."""
    return getattr(embedding_cfg, "name", None) in SEARCHES


__all__ = ["SEARCHES", "CompactResult", "Phase", "PhaseContext", "TrainRequest", "is_search"]
