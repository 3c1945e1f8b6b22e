"""Scorer: a loaded bundle ready to answer requests — validate → encode → quantized model → sigmoid.

No gRPC here: :mod:`serving.servicer` translates protobuf to rows and back. Encoding
(:class:`~ctr.features.row_encoder.RowEncoder`) and prediction are separate steps so that the
micro-batcher can encode each request in its own handler thread and run the model once on the
rows of several requests.
"""

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ctr.errors import ArtifactError
from ctr.export.bundle import Bundle
from ctr.export.quantize import SMOKE_TOLERANCE, compile_dense, embedding_bytes, quantize_for_inference
from ctr.features.row_encoder import MissingPolicy, RowEncoder
from ctr.features.tensorize import EncodedColumns

log = logging.getLogger("ctr.serving")


@dataclass
class ModelVersion:
    """Where a scorer's model came from: registered name and version (or a local path)."""

    name: str
    version: str
    source: str = ""
    loaded_at: float = field(default_factory=time.time)


class Scorer:
    """Score raw rows with one bundle's preprocessing and a (quantized) copy of its model.

    Args:
        bundle (Bundle): the loaded, verified serving bundle.
        version (ModelVersion): what to report in responses and metrics.
        quant (str): ``int8`` (default) | ``int4`` | ``fp16`` | ``none``; see :mod:`ctr.export.quantize`.
        missing (str): ``error`` (every feature must be sent) or ``null`` (absent = missing value).
        compile (bool): ``torch.compile`` the dense towers (see :func:`ctr.export.quantize.compile_dense`)
            and warm them up on the bundle's example request (tens of seconds, once per load).
        model (nn.Module | None): use this model instead of quantizing the bundle's (benchmarks).

    Example::

        >>> scorer = Scorer(load_bundle("runs/x/bundle"), ModelVersion("ctr-x", "1"))  # doctest: +SKIP
        >>> scorer.score([{"C1": "68fd1e64", "I1": 3}])  # doctest: +SKIP
        array([0.231], dtype=float32)
    """

    def __init__(self, bundle: Bundle, version: ModelVersion, quant: str = "int8",
                 missing: MissingPolicy = "error", compile: bool = False,
                 model: torch.nn.Module | None = None) -> None:
        self.version = version
        self.quant = quant if model is None else "custom"
        self.manifest = bundle.manifest
        self.encoder = RowEncoder(bundle.artifact, missing=missing)
        self.model = model if model is not None else quantize_for_inference(bundle.model, quant, inplace=True)
        self.model.eval()
        self.embedding_bytes = embedding_bytes(self.model)
        self._example = (bundle.manifest.get("example") or {})
        self.compiled = compile_dense(self.model) if compile else []
        if self.compiled:
            self._warm_up()

    def _warm_up(self) -> None:
        """Run the compiled model at batch sizes 1 and >1 so requests never wait for compilation."""
        rows = self._example.get("rows") or []
        if not rows:
            return
        start = time.perf_counter()
        cols = self.encode(rows[:1])
        self.predict(cols)
        self.predict(EncodedColumns.concat([self.encode(rows)] * 3))
        log.info("compiled %s in %.1f s", ", ".join(self.compiled), time.perf_counter() - start)

    @property
    def feature_names(self) -> list[str]:
        return self.encoder.columns

    def encode(self, rows: Sequence[Mapping]) -> EncodedColumns:
        """Validate and encode raw rows (raises InvalidRequestError naming the field)."""
        return self.encoder.encode(rows)

    def predict(self, cols: EncodedColumns) -> np.ndarray:
        """Probabilities ``[B]`` (float32) for encoded rows."""
        batch = cols.batch(slice(0, len(cols)))
        with torch.inference_mode():
            return torch.sigmoid(self.model(batch.dense, batch.sparse)).numpy()

    def score(self, rows: Sequence[Mapping]) -> np.ndarray:
        return self.predict(self.encode(rows))

    @property
    def history_columns(self) -> list[str]:
        """Raw columns of the unpooled behaviour history (DIN); empty for other models."""
        fields = getattr(self.encoder.schema, "history_fields", [])
        return [f.column for f in fields] if hasattr(self.model, "score_candidates") else []

    def takes_context(self, context: Mapping) -> bool:
        """Whether a request's shared ``context`` carries the whole history, so it is embedded once."""
        cols = self.history_columns
        return bool(cols) and all(c in context for c in cols)

    def score_with_context(self, context: Mapping, examples: Sequence[Mapping]) -> np.ndarray:
        """One user's ``context`` (history included) against N candidate ``examples``: the history is
        encoded and embedded once (``model.score_candidates``); equals scoring the N merged rows."""
        history = set(self.history_columns)
        merged = [{**e, **context} for e in examples]
        user = self.encode(merged[:1]).batch(slice(0, 1))
        cands = self.encode([{k: (None if k in history else v) for k, v in m.items()} for m in merged])
        batch = cands.batch(slice(0, len(cands)))
        with torch.inference_mode():
            logits = self.model.score_candidates(user.dense, user.sparse, batch.dense, batch.sparse)
            return torch.sigmoid(logits).numpy()

    def smoke_check(self) -> float:
        """Score the bundle's recorded example request; raise if it drifts beyond the quantization's tolerance.

        Returns the max absolute difference to the recorded float scores.
        """
        rows, expected = self._example.get("rows") or [], self._example.get("scores") or []
        if not rows:
            raise ArtifactError(f"{self.version.source}: the bundle has no example request to smoke-test; "
                                "re-export it with `ctr run`")
        got = self.score(rows)
        diff = float(np.max(np.abs(got - np.asarray(expected, dtype=np.float32))))
        tol = SMOKE_TOLERANCE.get(self.quant, SMOKE_TOLERANCE["int8"])
        if not np.isfinite(diff) or diff > tol:
            raise ArtifactError(f"{self.version.source}: example request scores differ from the recorded ones by "
                                f"{diff:.4g} (> {tol} allowed for {self.quant}); refusing this model")
        return diff
