"""Model store: resolve a registry URI to a verified :class:`~serving.scorer.Scorer`, and hot-swap it.

``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` are resolved through the MLflow registry (the
bundle lives under the model's ``artifacts/bundle``); a plain folder path loads a bundle directly.
A candidate is accepted only if the bundle verifies (format, hashes, float example scores), its
tables quantize, and the quantized model reproduces the recorded example scores
(:meth:`Scorer.smoke_check`). With an alias, :meth:`ModelStore.poll` follows it: a new version is
loaded beside the serving one and swapped in with one reference assignment, so no request fails
during a swap; a version that fails any check is refused (once, logged with the reason by
:class:`ReloadPolicy`) and the old one keeps serving.
"""

import logging
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ctr.errors import ArtifactError, CtrError
from ctr.export.bundle import load_bundle
from ctr.features.row_encoder import MissingPolicy
from serving.scorer import ModelVersion, Scorer

log = logging.getLogger("ctr.serving")
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``--model`` value: registry name + version or alias, or a local bundle folder."""

    uri: str
    name: str
    version: str | None = None
    alias: str | None = None
    path: Path | None = None

    @classmethod
    def parse(cls, uri: str) -> "ModelRef":
        m = _MODEL_URI.match(uri)
        if m:
            return cls(uri, m["name"], m["version"], m["alias"])
        path = Path(uri)
        if path.is_dir():
            return cls(uri, path.resolve().name, "local", path=path)
        raise CtrError(f"--model {uri!r}: expected models:/NAME@ALIAS, models:/NAME/VERSION or a bundle folder")


class ReloadPolicy:
    """Decides whether a candidate version is tried, and records why one was refused or accepted."""

    def __init__(self) -> None:
        self.refused: dict[str, str] = {}
        self.accepted: list[str] = []

    def should_try(self, current: str | None, candidate: str) -> bool:
        return candidate != current and candidate not in self.refused

    def refuse(self, candidate: str, reason: str) -> None:
        self.refused[candidate] = reason
        log.warning("refused model version %s, keeping the current one: %s", candidate, reason)

    def accept(self, candidate: str, smoke_diff: float) -> None:
        self.accepted.append(candidate)
        log.info("serving model version %s (example scores within %.2g of the recorded ones)", candidate, smoke_diff)


class ModelStore:
    """Holds the serving :class:`Scorer` (``store.current``) and replaces it when the alias moves.

    Args:
        ref (ModelRef | str): what to serve.
        tracking_uri (str | None): MLflow store for ``models:/`` references.
        quant (str): table quantization for every loaded version.
        missing (str): missing-feature policy (see :class:`~ctr.features.row_encoder.RowEncoder`).
        compile (bool): ``torch.compile`` the dense towers of every loaded version.
        on_swap (callable | None): called with the new scorer after each swap (metrics).
    """

    def __init__(self, ref: ModelRef | str, tracking_uri: str | None = None, quant: str = "int8",
                 missing: MissingPolicy = "error", compile: bool = False,
                 on_swap: Callable[[Scorer], None] | None = None) -> None:
        self.ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        self.tracking_uri = tracking_uri
        self.quant, self.missing, self.compile = quant, missing, compile
        self.policy = ReloadPolicy()
        self.on_swap = on_swap
        self.current: Scorer | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- loading -------------------------------------------------------------------------------
    def load(self) -> Scorer:
        """Load the referenced version and make it current; raises :class:`CtrError` if it is unusable."""
        version = self._resolve()
        scorer = self._load_version(version)
        self._swap(scorer, 0.0)
        return scorer

    def _client(self):
        import mlflow

        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
        return mlflow.MlflowClient(tracking_uri=self.tracking_uri)

    def _resolve(self) -> str:
        if self.ref.path is not None or self.ref.version is not None:
            return self.ref.version or "local"
        from mlflow.exceptions import MlflowException

        try:
            return str(self._client().get_model_version_by_alias(self.ref.name, self.ref.alias).version)
        except MlflowException as exc:
            raise CtrError(f"{self.ref.uri}: cannot resolve the alias ({_first_line(exc)}); "
                           "check `ctr models list`") from None

    def _load_version(self, version: str) -> Scorer:
        if self.ref.path is not None:
            return self._scorer_from(self.ref.path, version, str(self.ref.path))
        import mlflow
        from mlflow.exceptions import MlflowException

        uri = f"models:/{self.ref.name}/{version}"
        tmp = Path(tempfile.mkdtemp(prefix="ctr-serve-"))
        try:
            try:
                self._client()
                local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp))
            except MlflowException as exc:
                raise CtrError(f"{uri}: cannot download the model ({_first_line(exc)})") from None
            return self._scorer_from(_bundle_dir(Path(local), uri), version, uri)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # everything is in memory once loaded

    def _scorer_from(self, bundle_dir: Path, version: str, source: str) -> Scorer:
        bundle = load_bundle(bundle_dir)
        scorer = Scorer(bundle, ModelVersion(self.ref.name, version, source), self.quant, self.missing,
                        compile=self.compile)
        scorer.smoke_diff = scorer.smoke_check()
        return scorer

    def _swap(self, scorer: Scorer, smoke: float) -> None:
        with self._lock:
            self.current = scorer  # one reference assignment: requests in flight keep their scorer
        self.policy.accept(scorer.version.version, getattr(scorer, "smoke_diff", smoke))
        if self.on_swap is not None:
            self.on_swap(scorer)

    # -- following an alias --------------------------------------------------------------------
    def poll(self) -> bool:
        """Check the alias once; load, verify and swap in a new version. Returns whether it swapped."""
        if self.ref.alias is None:
            return False
        try:
            candidate = self._resolve()
        except CtrError as exc:
            log.warning("cannot resolve %s: %s", self.ref.uri, exc)
            return False
        current = self.current.version.version if self.current else None
        if not self.policy.should_try(current, candidate):
            return False
        try:
            scorer = self._load_version(candidate)
        except CtrError as exc:
            self.policy.refuse(candidate, str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - any failure of a candidate must not stop serving
            self.policy.refuse(candidate, f"{type(exc).__name__}: {_first_line(exc)}")
            return False
        self._swap(scorer, 0.0)
        return True

    def start_polling(self, interval_s: float) -> None:
        """Poll the alias every ``interval_s`` seconds in a daemon thread (no-op without an alias)."""
        if self.ref.alias is None or interval_s <= 0:
            return
        self._thread = threading.Thread(target=self._poll_loop, args=(interval_s,), name="ctr-model-poll",
                                        daemon=True)
        self._thread.start()

    def _poll_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _bundle_dir(model_dir: Path, uri: str) -> Path:
    """The bundle folder inside a downloaded MLflow model: the pyfunc's ``bundle`` artifact (MLmodel)."""
    import yaml

    rel = "artifacts/bundle"
    mlmodel = model_dir / "MLmodel"
    if mlmodel.is_file():
        meta = yaml.safe_load(mlmodel.read_text()) or {}
        artifacts = ((meta.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}
        rel = (artifacts.get("bundle") or {}).get("path", rel)
    bundle = model_dir / rel
    if not (bundle / "manifest.json").is_file():
        raise ArtifactError(f"{uri} holds no ctr bundle (looked for {rel}/manifest.json); register models "
                            "with `ctr run`")
    return bundle


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
