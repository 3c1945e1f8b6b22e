"""Known-good torch / fbgemm_gpu / torchrec sets, checked from package metadata (no imports).

A mismatched set (the classic one: torchrec beside a CUDA fbgemm-gpu build, or an fbgemm_gpu
built for another torch) otherwise crashes with an undefined-symbol error deep inside
``import fbgemm_gpu``. Reading ``importlib.metadata`` costs microseconds and imports nothing.
"""

import importlib.metadata as md
import os

from ctr.errors import StackError

# torch base version -> (fbgemm dist name, fbgemm version, torchrec version)
KNOWN_GOOD: tuple[tuple[str, str, str, str], ...] = (
    ("2.13.0", "fbgemm-gpu-cpu", "1.8.0", "1.8.0"),
)

INSTALL_HINT = "run `make install` (or: pip install -r requirements.txt -c constraints.txt) in a fresh .venv"


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _base(version: str | None) -> str | None:
    return None if version is None else version.split("+", 1)[0]


def installed_stack() -> dict[str, str | None]:
    """Versions of the stack as pip sees them (``None`` where a dist is missing)."""
    fbgemm_cpu = _version("fbgemm-gpu-cpu")
    fbgemm_gpu = _version("fbgemm-gpu")
    return {
        "torch": _version("torch"),
        "fbgemm-gpu-cpu": fbgemm_cpu,
        "fbgemm-gpu": fbgemm_gpu,
        "torchrec": _version("torchrec"),
    }


def check_stack() -> None:
    """Raise :class:`StackError` in one sentence unless the installed set is known to work.

    ``CTR_SKIP_STACK_CHECK=1`` disables the check (for people trying a new combination).
    """
    if os.environ.get("CTR_SKIP_STACK_CHECK") == "1":
        return
    got = installed_stack()
    torch_v, trec_v = _base(got["torch"]), _base(got["torchrec"])
    fb_cpu, fb_gpu = got["fbgemm-gpu-cpu"], got["fbgemm-gpu"]
    for good_torch, fb_dist, good_fb, good_trec in KNOWN_GOOD:
        cpu_ok = fb_dist == "fbgemm-gpu-cpu" and _base(fb_cpu) == good_fb
        # the project's metadata-only shim is named fbgemm-gpu with a "+cpushim" local version
        shim_or_absent = fb_gpu is None or fb_gpu.endswith("+cpushim")
        if torch_v == good_torch and trec_v == good_trec and cpu_ok and shim_or_absent:
            return
    found = ", ".join(f"{k} {v or 'missing'}" for k, v in got.items())
    wanted = "; ".join(f"torch {t} + {d} {f} + torchrec {r}" for t, d, f, r in KNOWN_GOOD)
    raise StackError(
        f"Installed stack is not a known-good set ({found}); ctr needs {wanted} — {INSTALL_HINT}, "
        "or set CTR_SKIP_STACK_CHECK=1 to try anyway."
    )
