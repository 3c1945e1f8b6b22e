"""Multi-head self-attention over field tokens, with a fused CPU kernel for the shapes CTR models use.

AutoInt's interacting block attends over one token per field: a few dozen tokens of width 4–32 per
head. For those, ``scaled_dot_product_attention`` on CPU spends most of a training step on per-matrix
overhead (its flash kernel is tiled for long sequences; batched GEMM on 39 × 8 matrices is no better).
``csrc/field_attention.cpp`` computes one (example, head) pair per task with everything in L1, forward
and backward (the backward recomputes the softmax rather than saving ``[B, H, L, L]``).

The extension is compiled on first use with the machine's compiler (about 25 s on 2 cores) into a
cache keyed by the source (text and path), torch (path and version) and the CPU's instruction-set
flags (it is built with ``-march=native``), then loaded from there.
:func:`field_attention` falls back to ``scaled_dot_product_attention`` whenever the kernel does not
apply (CUDA, float64, attention dropout while training) or cannot be built; the reason is logged once.
``CTR_FUSED_ATTENTION=0`` turns the kernel off; ``CTR_KERNEL_CACHE`` moves the cache.

Both paths take q, k and v packed as ``[B, L, 3, H, d]`` (one projection's ``[B, L, 3·H·d]`` output
viewed per head) and return ``[B, L, H, d]``.
"""

import contextlib
import hashlib
import logging
import os
import platform
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "field_attention.cpp"
CFLAGS = ("-O3", "-march=native", "-fopenmp")
_lock = threading.Lock()
_state: dict[str, ModuleType | str | None] = {"kernel": None, "error": None}


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _cache_dirs(key: str) -> list[Path]:
    """Where to build: ``$CTR_KERNEL_CACHE``, else the user cache, else the temp dir (read-only home)."""
    if os.environ.get("CTR_KERNEL_CACHE"):
        return [Path(os.environ["CTR_KERNEL_CACHE"]) / key]
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ctr" / "kernels" / key
    return [user, Path(tempfile.gettempdir()) / f"ctr-kernels-{os.getuid()}" / key]


def kernel() -> ModuleType | None:
    """The compiled extension (built on first call), or ``None`` if disabled or unbuildable."""
    if _state["kernel"] is not None or _state["error"] is not None:
        return _state["kernel"]  # type: ignore[return-value]
    with _lock:
        if _state["kernel"] is None and _state["error"] is None:
            _state["kernel"], _state["error"] = _build()
            if _state["error"]:
                log.warning("fused field attention off, using scaled_dot_product_attention: %s", _state["error"])
    return _state["kernel"]  # type: ignore[return-value]


def unavailable_reason() -> str | None:
    """Why :func:`kernel` is ``None`` (after it has been called), else ``None``."""
    return _state["error"]  # type: ignore[return-value]


@contextlib.contextmanager
def _build_lock(build_dir: Path) -> Iterator[None]:
    """Hold an OS file lock on ``build_dir`` (released by the OS if the holder dies) and, under it, remove a
    ``lock`` file that torch's own build lock left behind: torch waits for that file to disappear, forever
    when the process that made it was killed mid-build (Ctrl-C during a first run). Every build into our
    cache goes through this lock, so such a file seen while holding it belongs to a dead build."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: torch's lock alone
        yield
        return
    with open(build_dir / "ctr-build.flock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            stale = build_dir / "lock"
            if stale.exists():
                log.warning("removing %s, left by an interrupted kernel build", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build() -> tuple[ModuleType | None, str | None]:
    if os.environ.get("CTR_FUSED_ATTENTION", "1") == "0":
        return None, "CTR_FUSED_ATTENTION=0"
    try:
        from torch.utils import cpp_extension
    except ImportError as exc:  # pragma: no cover - part of every torch wheel
        return None, f"torch.utils.cpp_extension unavailable ({exc})"
    digest = hashlib.sha256()
    # Also the source's path and torch's (as imported, symlinks kept): ninja rebuilds when the compile
    # command changes, so two checkouts or two paths to one venv sharing a build directory would
    # rebuild each other's kernel on every switch.
    for part in (SOURCE.read_bytes(), str(SOURCE.resolve()).encode(), os.path.dirname(torch.__file__).encode(),
                 torch.__version__.encode(), " ".join(CFLAGS).encode(), _cpu_flags().encode()):
        digest.update(part)
    key = digest.hexdigest()[:16]
    build_dir = None
    for candidate in _cache_dirs(key):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            build_dir = candidate
            break
    if build_dir is None:
        return None, f"no writable kernel cache among {[str(d) for d in _cache_dirs(key)]} (set CTR_KERNEL_CACHE)"
    try:
        with _build_lock(build_dir):
            module = cpp_extension.load(
                name=f"ctr_field_attention_{key}", sources=[str(SOURCE)], extra_cflags=list(CFLAGS),
                extra_ldflags=["-fopenmp"], build_directory=str(build_dir), verbose=False)
    except Exception as exc:  # noqa: BLE001 - any build failure means: use the fallback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"building {SOURCE.name} in {build_dir} failed ({first}); needs a C++ compiler and ninja"
    return module, None


@torch.library.custom_op("ctr::field_attention", mutates_args=())
def _fused(qkv: torch.Tensor, scale: float) -> torch.Tensor:
    return kernel().forward(qkv, scale)  # type: ignore[union-attr]


@_fused.register_fake
def _(qkv: torch.Tensor, scale: float) -> torch.Tensor:
    return qkv.new_empty(qkv.shape[:2] + qkv.shape[3:])


@torch.library.custom_op("ctr::field_attention_backward", mutates_args=())
def _fused_backward(grad: torch.Tensor, qkv: torch.Tensor, scale: float) -> torch.Tensor:
    return kernel().backward(grad, qkv, scale)  # type: ignore[union-attr]


@_fused_backward.register_fake
def _(grad: torch.Tensor, qkv: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.empty_like(qkv)


def _setup_context(ctx, inputs, output) -> None:
    qkv, scale = inputs
    ctx.save_for_backward(qkv)
    ctx.scale = scale


def _backward(ctx, grad: torch.Tensor):
    (qkv,) = ctx.saved_tensors
    return _fused_backward(grad.contiguous(), qkv, ctx.scale), None


_fused.register_autograd(_backward, setup_context=_setup_context)


def _attention_flops(qkv_shape) -> int:
    batch, tokens, _, heads, width = qkv_shape
    return 4 * batch * heads * tokens * tokens * width  # q kᵀ and (weights) v, 2 FLOPs per multiply-add


@register_flop_formula(torch.ops.ctr.field_attention)
def _(qkv_shape, scale, *args, **kwargs) -> int:
    return _attention_flops(qkv_shape)


@register_flop_formula(torch.ops.ctr.field_attention_backward)
def _(grad_shape, qkv_shape, scale, *args, **kwargs) -> int:
    return 2 * _attention_flops(qkv_shape)  # dq, dk, dv and d(weights); the recomputed softmax not counted


def fused_applies(qkv: torch.Tensor, dropout_p: float) -> bool:
    """Whether the fused kernel runs for ``qkv`` (``[B, L, 3, H, d]``; builds the kernel if needed)."""
    return (qkv.device.type == "cpu" and qkv.dtype == torch.float32 and qkv.dim() == 5 and qkv.size(2) == 3
            and qkv.size(1) > 0 and dropout_p == 0.0 and kernel() is not None)


def packed_field_attention(qkv: torch.Tensor, scale: float, dropout_p: float = 0.0) -> torch.Tensor:
    """``softmax(q kᵀ · scale) v`` per example and head for ``qkv = [B, L, (q, k, v), H, d]``.

    ``qkv`` is one projection's ``[B, L, 3·H·d]`` output viewed per head; the result is
    ``[B, L, H, d]``. ``dropout_p`` is dropout on the attention weights; pass 0 outside training.

    Example::

        >>> packed_field_attention(torch.randn(2, 5, 3, 4, 8), scale=0.5).shape
        torch.Size([2, 5, 4, 8])
    """
    if qkv.dtype == torch.bfloat16 and qkv.device.type == "cpu":
        qkv = qkv.float()  # bf16 autocast training: the kernel computes in float32 (its cost is not the matmuls')
    if fused_applies(qkv, dropout_p):
        return _fused(qkv.contiguous(), float(scale))
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # [B, H, L, d]
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale).transpose(1, 2)


def field_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                    dropout_p: float = 0.0) -> torch.Tensor:
    """:func:`packed_field_attention` for separate ``[B, L, H, d]`` tensors (packs them: one copy).

    Example::

        >>> q = k = v = torch.randn(2, 5, 3, 4)
        >>> field_attention(q, k, v, scale=0.5).shape
        torch.Size([2, 5, 3, 4])
    """
    return packed_field_attention(torch.stack((q, k, v), dim=2), scale, dropout_p)
