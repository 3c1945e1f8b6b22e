"""Inference copies of a trained model: embedding tables on FBGEMM's quantized table-batched kernels.

:func:`quantize_for_inference` swaps every TorchRec ``EmbeddingBagCollection`` of an unsharded,
eval-mode float model for TorchRec's quantized collection, backed by one
``IntNBitTableBatchedEmbeddingBagsCodegen`` per collection (one fused kernel for all its tables).
Dense layers stay fp32. ``none`` keeps the float model as it is.

Expected error against fp32 (``../shared/docs/stack.md`` §4): fp16 ~1e-4, int8 ~1e-3, int4 ~3e-2
absolute on probabilities; :data:`SMOKE_TOLERANCE` is what a loaded model must reproduce of the
bundle's recorded example scores before a scorer accepts it.
"""

import copy
from typing import Literal

import torch
from torchrec.inference.modules import quantize_inference_model
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection
from torchrec.quant.embedding_modules import EmbeddingCollection as QuantEmbeddingCollection

from ctr.errors import ConfigError

FLOAT_TABLES = (EmbeddingBagCollection, EmbeddingCollection, torch.nn.EmbeddingBag)
QUANT_TABLES = (QuantEmbeddingBagCollection, QuantEmbeddingCollection)

Quant = Literal["int8", "int4", "fp16", "none"]
QUANT_DTYPES: dict[str, torch.dtype] = {"int8": torch.qint8, "int4": torch.quint4x2, "fp16": torch.half}
SMOKE_TOLERANCE: dict[str, float] = {"none": 1e-5, "fp16": 2e-3, "int8": 2e-2, "int4": 1e-1}


def quantize_for_inference(model: torch.nn.Module, quant: str = "int8", inplace: bool = False) -> torch.nn.Module:
    """A copy of ``model`` (unsharded, float) whose embedding tables use FBGEMM ``quant`` kernels.

    Args:
        model (nn.Module): a float model as :func:`ctr.export.bundle.load_bundle` returns it.
        quant (str): ``int8`` | ``int4`` | ``fp16`` | ``none`` (the float model itself).
        inplace (bool): swap the tables of ``model`` itself instead of a copy (saves the float
            tables' memory when the float model is no longer needed).

    Raises:
        ConfigError: unknown ``quant``.

    Example::

        >>> qmodel = quantize_for_inference(bundle.model, "int8")  # doctest: +SKIP
    """
    if quant == "none":
        return model.eval()
    if quant not in QUANT_DTYPES:
        raise ConfigError(f"unknown quantization {quant!r}; use one of int8, int4, fp16, none", "quant")
    qmodel = (model if inplace else copy.deepcopy(model)).eval()
    quantize_inference_model(qmodel, quantization_dtype=QUANT_DTYPES[quant])
    return qmodel


def embedding_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the embedding tables of ``model`` (float or quantized, scale/bias included)."""
    total = 0
    for module in model.modules():
        if isinstance(module, (torch.nn.EmbeddingBag, torch.nn.Embedding)):  # leaves of EBC/EC and plain bags
            total += module.weight.numel() * module.weight.element_size()
        elif isinstance(module, QUANT_TABLES):
            total += sum(b.numel() * b.element_size() for name, b in module.named_buffers()
                         if name.startswith(("embedding_bags.", "embeddings.")) and name.endswith(".weight"))
    return total


def compile_dense(model: torch.nn.Module) -> list[str]:
    """``torch.compile`` (inductor, dynamic batch size) every direct child of ``model`` that holds
    weights but no embedding collection — the interaction and MLP towers; the FBGEMM table lookups
    stay eager (dynamo cannot trace their TorchScript objects). Compilation happens on the first
    calls (run a warm-up before serving). Returns the names of the compiled children.
    """
    compiled = []
    for name, child in list(model.named_children()):
        has_tables = any(isinstance(m, FLOAT_TABLES + QUANT_TABLES) for m in child.modules())
        if has_tables or not any(True for _ in child.parameters()):
            continue
        setattr(model, name, torch.compile(child, dynamic=True))
        compiled.append(name)
    return compiled
