"""ctr: click-through-rate models on TorchRec with a polars preprocessing path shared by training and serving.

Importing ``ctr`` only checks, from package metadata, that torch / fbgemm_gpu / torchrec form a
known-good set (see :mod:`ctr._stack`); nothing heavy is imported here.
"""

from ctr._stack import check_stack

__version__ = "0.1.0"

check_stack()

__all__ = ["__version__", "check_stack"]
