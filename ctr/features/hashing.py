"""Stable, seeded 64-bit hashing of raw categorical values: the vocabulary-free id path.

Spec ``ctr-hash/1`` (saved in the feature artifact; a model trained under one spec is never
scored under another):

1. The value's canonical text (:mod:`ctr.features.values`: integers as decimal text, missing →
   ``NULL_TOKEN``) is encoded as UTF-8 and zero-padded to a multiple of 8 bytes; the padded bytes
   are read as little-endian unsigned 64-bit words ``w_0 … w_{k-1}``.
2. ``h = fmix((seed + 1) · GOLDEN + byte_length)``; then for each word ``h = fmix((h ^ w_i) + GOLDEN)``,
   where ``fmix`` is the SplitMix64 finaliser and all arithmetic wraps modulo 2^64. The length in
   the initial state keeps ``"a"`` and ``"a\\0"`` apart. The 64-bit result, reinterpreted as a
   signed Int64, is the field's encoded id (:func:`hash_texts`).
3. A lookup of chunk ``c`` of table ``t`` (a feature, or the features sharing a table) reads row
   ``(fmix(h ^ salt(t, c)) >> 1) mod rows`` with ``salt(t, c) = hash_text(f"{t}\\x1f{c}", seed)``
   (:func:`chunk_rows`). ``fmix`` is a bijection, so different salts give independent rows.

Everything is written here with numpy / Python integer operations (no ``hash()``, no polars or
numpy hashing whose output may change between releases); the torch version of step 3 runs inside
the model, so training, the bundle and the gRPC scorer share it. ``tests/ctr/features/test_hashing.py``
pins golden values.
"""

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

if TYPE_CHECKING:  # the torch version below only uses tensor operators: this module never imports torch
    import torch

SPEC = "ctr-hash/1"
MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_BLOCK = 1 << 16  # strings hashed per vectorised block (bounds the padded byte matrix)


def fmix_int(z: int) -> int:
    """SplitMix64 finaliser on a Python int (the reference every vectorised version must match)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * _M1) & MASK64
    z = ((z ^ (z >> 27)) * _M2) & MASK64
    return z ^ (z >> 31)


def hash_text(text: str, seed: int = 0) -> int:
    """Reference (scalar, pure Python) hash of one canonical text → unsigned 64-bit int.

    Example::

        >>> hash_text("a", 0) == hash_text("a", 0) != hash_text("a", 1)
        True
    """
    data = text.encode("utf-8")
    h = fmix_int((seed + 1) * GOLDEN + len(data))
    padded = data + b"\0" * (-len(data) % 8)
    for i in range(0, len(padded), 8):
        h = fmix_int((h ^ int.from_bytes(padded[i:i + 8], "little")) + GOLDEN)
    return h


def _fmix_np(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def hash_texts(texts: Sequence[str] | Iterable[str], seed: int = 0) -> np.ndarray:
    """Vectorised :func:`hash_text` over many canonical texts → ``int64`` array (the bits reinterpreted).

    Strings are processed in blocks: a block's UTF-8 bytes go into one zero-padded ``[n, 8k]`` byte
    matrix read as ``[n, k]`` little-endian words; words past a string's end are skipped by masking.
    """
    texts = list(texts)
    out = np.empty(len(texts), dtype=np.uint64)
    start = np.uint64(((seed + 1) * GOLDEN) & MASK64)
    with np.errstate(over="ignore"):
        for b0 in range(0, len(texts), _BLOCK):
            raw = [t.encode("utf-8") for t in texts[b0:b0 + _BLOCK]]
            lengths = np.fromiter((len(r) for r in raw), dtype=np.int64, count=len(raw))
            words = max(1, int(-(-lengths.max(initial=0) // 8)))
            buf = np.zeros((len(raw), words * 8), dtype=np.uint8)
            flat = np.frombuffer(b"".join(raw), dtype=np.uint8)
            rows = np.repeat(np.arange(len(raw)), lengths)
            cols = np.arange(flat.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            buf[rows, cols] = flat
            w = buf.view("<u8").astype(np.uint64)  # [n, words]
            h = _fmix_np(start + lengths.astype(np.uint64))
            nwords = -(-lengths // 8)
            for i in range(words):
                mixed = _fmix_np((h ^ w[:, i]) + np.uint64(GOLDEN))
                h = np.where(nwords > i, mixed, h)
            out[b0:b0 + len(raw)] = h
    return out.view(np.int64)


def hash_series(texts: pl.Series, seed: int = 0) -> pl.Series:
    """A String series of canonical texts → Int64 hash ids (each distinct text hashed once)."""
    uniq = texts.unique()
    codes = pl.Series(hash_texts(uniq.to_list(), seed), dtype=pl.Int64)
    return texts.replace_strict(uniq, codes, return_dtype=pl.Int64)


def hash_list_series(lists: pl.Series, seed: int = 0) -> pl.Series:
    """A List(String) series of canonical tokens → List(Int64) hash ids, element by element (as :func:`hash_series`)."""
    flat = lists.explode(empty_as_null=False, keep_nulls=False)
    uniq = flat.unique()
    codes = pl.Series(hash_texts(uniq.to_list(), seed), dtype=pl.Int64)
    return lists.list.eval(pl.element().replace_strict(uniq, codes, return_dtype=pl.Int64))


def chunk_salt(table: str, chunk: int, seed: int = 0) -> int:
    """Salt of chunk ``chunk`` of ``table`` as a signed int64 (the form a torch tensor holds)."""
    salt = hash_text(f"{table}\x1f{chunk}", seed)
    return salt - (1 << 64) if salt >= 1 << 63 else salt


def chunk_rows_np(ids: np.ndarray, salt: int, rows: int) -> np.ndarray:
    """Reference numpy version of :func:`chunk_rows` (for tests and offline checks)."""
    z = np.asarray(ids, dtype=np.int64).view(np.uint64) ^ np.array(salt, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        z = _fmix_np(z)
    return ((z >> np.uint64(1)) % np.uint64(rows)).astype(np.int64)


def _shr(z: "torch.Tensor", k: int) -> "torch.Tensor":
    """Logical right shift of int64 bits (torch's ``>>`` on int64 is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _wrap(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


_M1_S, _M2_S = _wrap(_M1), _wrap(_M2)


def chunk_rows(ids: "torch.Tensor", salt: int, rows: int) -> "torch.Tensor":
    """Row of each encoded id (int64 hash bits) in a ``rows``-row table for one (table, chunk) salt.

    Torch int64 arithmetic wraps like uint64 modulo 2^64, so this equals :func:`chunk_rows_np`.

    Example::

        >>> import torch
        >>> ids = torch.from_numpy(hash_texts(["x", "y"]))
        >>> bool((chunk_rows(ids, chunk_salt("t", 0), 10) < 10).all())
        True
    """
    z = ids ^ salt
    z = (z ^ _shr(z, 30)) * _M1_S
    z = (z ^ _shr(z, 27)) * _M2_S
    z = z ^ _shr(z, 31)
    return _shr(z, 1) % rows  # non-negative after the shift, so % is the plain remainder
