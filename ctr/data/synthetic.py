"""Synthetic Criteo-like data with a planted teacher, for demos and benchmarks (no downloads).

Columns: ``label`` (0/1), ``I1..I13`` (non-negative counts, ~10% null) and ``C1..C26`` (strings).
Each categorical field draws Zipf-distributed ids (exponent ``zipf_exponent``) from a cardinality
spread log-uniformly between ``min_cardinality`` and ``max_cardinality``. The label is drawn from
``sigmoid(logit)`` with::

    logit = bias + Σ_fields w_f(id)                         (first order)
                 + Σ_pairs <v_f(id_f), v_g(id_g)> / √d       (second order, latent dim d)
                 + Σ_triples u_f(id_f) u_g(id_g) u_h(id_h)   (third order)
                 + Σ_numeric a_j z_j                         (standardised log counts)

Per-value parameters are never stored: ``w``, ``v`` and ``u`` come from splitmix64 hashes of
(id, field, role, seed), so 10^7-value fields cost no memory. The bias is solved so that the
positive rate is ``positive_rate``. Component scales give the interaction terms most of the signal,
so a model that learns interactions beats logistic regression by a clear AUC margin.

Files written by :func:`generate` also hold ``oracle_ctr``, the teacher's probability
``sigmoid(logit)`` of each row: the best any model can do on this data. :func:`oracle_metrics`
scores it on the same test split ``prepare`` carves, so a demo can print model vs oracle AUC.
Pipelines never read it as a feature (the schema lists the inputs).
"""

import logging
import math
import os
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import polars as pl

from ctr.config import StrictConfig
from ctr.data.readers import DataConfig
from ctr.data.split import split_frames

log = logging.getLogger("ctr.data")
MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
ORACLE_COLUMN = "oracle_ctr"


class SyntheticConfig(StrictConfig):
    """Shape of the synthetic data and of its teacher.

    Args:
        num_numeric (int): numeric columns ``I1..``.
        num_categorical (int): categorical columns ``C1..``.
        min_cardinality (int): smallest categorical cardinality.
        zipf_exponent (float): Zipf exponent of the categorical ids.
        numeric_null_rate (float): share of missing numeric values.
        positive_rate (float): target share of positive labels.
        latent_dim (int): dimension of the hidden second-order vectors.
        num_pairs (int): field pairs with a second-order term.
        num_triples (int): field triples with a third-order term.
        scales (tuple[float, float, float, float]): std of the first-order, second-order, third-order
            and numeric parts of the logit.
    """

    num_numeric: int = 13
    num_categorical: int = 26
    min_cardinality: int = 10
    zipf_exponent: float = 1.15
    numeric_null_rate: float = 0.1
    positive_rate: float = 0.25
    latent_dim: int = 4
    num_pairs: int = 30
    num_triples: int = 12
    scales: tuple[float, float, float, float] = (0.8, 1.4, 1.0, 0.4)


@dataclass
class SyntheticData:
    """A generated table and the teacher's logit, split into its parts (for checks and tests).

    Args:
        frame (pl.DataFrame): ``label``, ``I*``, ``C*`` columns.
        parts (dict[str, np.ndarray]): ``first``, ``second``, ``third``, ``numeric`` logit parts.
        bias (float): the solved bias.
        cardinalities (dict[str, int]): categorical field → cardinality it was drawn from.
        interactions (list[tuple[str, ...]]): the planted field pairs and triples.
    """

    frame: pl.DataFrame
    parts: dict[str, np.ndarray]
    bias: float
    cardinalities: dict[str, int]
    interactions: list[tuple[str, ...]]

    @property
    def logit(self) -> np.ndarray:
        return self.bias + sum(self.parts.values())

    @property
    def probability(self) -> np.ndarray:
        """The teacher's click probability of each row (the label was drawn from it)."""
        return 1.0 / (1.0 + np.exp(-self.logit))


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hashed_uniforms(ids: np.ndarray, field: int, role: int, seed: int, k: int = 1) -> list[np.ndarray]:
    """``k`` (≤ 4) unit-variance pseudo-random values in [-√3, √3] per (id, field, role, seed).

    One splitmix64 hash per id; each value takes 16 of its bits (65,536 levels).
    """
    key = splitmix64(np.array([(seed * 1_000_003 + field * 1_009 + role * 7_919) & 0xFFFFFFFFFFFFFFFF],
                              dtype=np.uint64))[0]
    chunks = splitmix64(ids.view(np.uint64) ^ key).view(np.uint16).reshape(-1, 4)
    scale = np.float32(2.0 * math.sqrt(3.0) / 65536.0)
    shift = np.float32(math.sqrt(3.0) - scale / 2)
    return [chunks[:, i].astype(np.float32) * scale - shift for i in range(k)]


def cardinalities(num_fields: int, max_cardinality: int, min_cardinality: int, seed: int) -> list[int]:
    """Log-uniformly spaced cardinalities from min to max, assigned to fields in a seeded order."""
    lo, hi = math.log(min_cardinality), math.log(max(max_cardinality, min_cardinality))
    steps = [round(math.exp(lo + (hi - lo) * k / max(num_fields - 1, 1))) for k in range(num_fields)]
    order = np.random.default_rng(seed).permutation(num_fields)
    return [int(steps[i]) for i in order]


def zipf_ids(rng: np.random.Generator, n: int, cardinality: int, exponent: float) -> np.ndarray:
    """0-based ids with P(id = r - 1) ∝ r^-exponent, r ≤ cardinality (continuous inverse-CDF)."""
    u = rng.random(n)
    a = 1.0 - exponent
    top = (cardinality + 1.0) ** a - 1.0
    ranks = np.floor((u * top + 1.0) ** (1.0 / a)).astype(np.int64)
    return np.clip(ranks, 1, cardinality) - 1


def sample(n_rows: int, seed: int = 7, max_cardinality: int = 10**7,
           config: SyntheticConfig | None = None) -> SyntheticData:
    """Generate ``n_rows`` rows in memory (vectorised numpy), deterministically from ``seed``."""
    cfg = config or SyntheticConfig()
    rng = np.random.default_rng(seed)
    cards = cardinalities(cfg.num_categorical, max_cardinality, cfg.min_cardinality, seed)
    ids = [zipf_ids(rng, n_rows, k, cfg.zipf_exponent) for k in cards]
    counts, z = _numeric(rng, n_rows, cfg)
    parts, interactions = _teacher(rng, ids, z, cfg, seed)
    bias = _solve_bias(sum(parts.values()), cfg.positive_rate)
    logit = bias + sum(parts.values())
    label = (rng.random(n_rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
    frame = _frame(label, counts, ids, seed)
    names = [f"C{j + 1}" for j in range(cfg.num_categorical)]
    named = [tuple(names[f] for f in group) for group in interactions]
    return SyntheticData(frame, parts, bias, dict(zip(names, cards, strict=True)), named)


def _numeric(rng, n: int, cfg: SyntheticConfig) -> tuple[list[pl.Series], np.ndarray]:
    series, zs = [], np.zeros((n, cfg.num_numeric))
    for j in range(cfg.num_numeric):
        mu, sigma = rng.uniform(0.0, 4.0), rng.uniform(0.5, 1.5)
        normal = rng.standard_normal(n)
        values = np.floor(np.exp(mu + sigma * normal)).astype(np.int64)
        missing = rng.random(n) < cfg.numeric_null_rate
        zs[:, j] = np.where(missing, 0.0, normal)
        series.append(pl.Series(f"I{j + 1}", values).scatter(np.flatnonzero(missing), None))
    return series, zs


def _teacher(rng, ids: list[np.ndarray], z: np.ndarray, cfg: SyntheticConfig,
             seed: int) -> tuple[dict[str, np.ndarray], list[tuple[int, ...]]]:
    n, nf = z.shape[0], len(ids)
    s1, s2, s3, s4 = cfg.scales
    scalars = [hashed_uniforms(ids[f], f, 0, seed, 2) for f in range(nf)]  # first-order w, third-order u
    first = sum(w for w, _ in scalars) * (s1 / math.sqrt(nf))
    pairs = _pick(rng, list(combinations(range(nf), 2)), cfg.num_pairs)
    latent = {f: _latent(ids[f], f, seed, cfg.latent_dim) for f in sorted({f for p in pairs for f in p})}
    second = np.zeros(n)
    for f, g in pairs:
        second += sum(a * b for a, b in zip(latent[f], latent[g], strict=True))
    second *= s2 / math.sqrt(max(len(pairs), 1) * cfg.latent_dim)
    triples = _pick(rng, list(combinations(range(nf), 3)), cfg.num_triples)
    scalar = {f: scalars[f][1] for f in sorted({f for t in triples for f in t})}
    third = np.zeros(n)
    for f, g, h in triples:
        third += scalar[f] * scalar[g] * scalar[h]
    third *= s3 / math.sqrt(max(len(triples), 1))
    weights = rng.standard_normal(z.shape[1])
    numeric = z @ weights * (s4 / math.sqrt(max(float(weights @ weights), 1e-12)))
    return {"first": first, "second": second, "third": third, "numeric": numeric}, pairs + triples


def _latent(ids: np.ndarray, field: int, seed: int, dim: int) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for role in range(1, 1 + (dim + 3) // 4):
        out += hashed_uniforms(ids, field, role, seed, min(4, dim - len(out)))
    return out


def _pick(rng, options: list[tuple], k: int) -> list[tuple]:
    if not options or k <= 0:
        return []
    chosen = rng.choice(len(options), size=min(k, len(options)), replace=False)
    return [options[i] for i in sorted(chosen)]


def _solve_bias(score: np.ndarray, rate: float) -> float:
    lo, hi = -20.0, 20.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(mid + score)))) < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _frame(label: np.ndarray, counts: list[pl.Series], ids: list[np.ndarray], seed: int) -> pl.DataFrame:
    cols = [pl.Series("label", label)] + counts
    names = []
    for f, values in enumerate(ids):
        salt = np.uint64((seed * 2_654_435_761 + f * 40_503) & 0xFFFFFFFF)
        names.append(f"C{f + 1}")  # _mix32 is bijective on 32 bits: distinct ids stay distinct values
        cols.append(pl.Series(names[-1], _mix32(values.view(np.uint64) + salt).view(np.int64)))
    return pl.DataFrame(cols).with_columns(pl.col(names).cast(pl.String))


def _mix32(x: np.ndarray) -> np.ndarray:
    m = np.uint64(0xFFFFFFFF)
    x = x & m
    x = ((x ^ (x >> np.uint64(16))) * np.uint64(0x7FEB352D)) & m
    x = ((x ^ (x >> np.uint64(15))) * np.uint64(0x846CA68B)) & m
    return x ^ (x >> np.uint64(16))


def generate(n_rows: int, path: str | Path, seed: int = 7, max_cardinality: int = 10**7,
             config: SyntheticConfig | None = None) -> Path:
    """Write ``n_rows`` synthetic rows to a Parquet file and return its path."""
    data = sample(n_rows, seed, max_cardinality, config)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # a temporary name of this process's own: concurrent runs that generate the same file (a sweep started
    # on a fresh checkout) each write theirs and the last rename wins, with identical content
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    data.frame.with_columns(pl.Series(ORACLE_COLUMN, data.probability)).write_parquet(tmp)
    tmp.replace(out)
    log.info("wrote %d synthetic rows to %s (positive rate %.3f)", n_rows, out, float(data.frame["label"].mean()))
    return out


def write_synthetic_if_missing(path: str | Path, n_rows: int, seed: int = 7, max_cardinality: int = 10**7,
                               config: SyntheticConfig | None = None) -> Path:
    """Generate the file unless it already exists (the demo calls this before ``prepare``)."""
    out = Path(path)
    if out.is_file():
        log.info("synthetic data already at %s", out)
        return out
    return generate(n_rows, out, seed, max_cardinality, config)


def oracle_test_split(data_cfg: DataConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """Labels and teacher probabilities (``oracle_ctr``) of the test split ``prepare`` uses.

    The test file(s) when ``data.test`` is given, else the rows a ratio split carves out of the
    (single) train file with the same seed. ``None`` when the data has no oracle column (not written
    by :func:`generate`) or the split cannot be reproduced (column split, several train files, or a
    format other than parquet).
    """
    test_files, train_files = data_cfg.files("test"), data_cfg.files("train") or []
    if data_cfg.format != "parquet" or (test_files is None and (data_cfg.split.column or len(train_files) != 1)):
        return None
    wanted = ["label", ORACLE_COLUMN]
    try:
        if test_files is not None:
            frame = pl.concat([pl.read_parquet(p, columns=wanted) for p in test_files])
        else:
            frames = {"train": pl.read_parquet(train_files[0], columns=wanted)}
            if data_cfg.files("valid") is not None:  # only test is carved; its rows depend on train alone
                frames["valid"] = frames["train"].head(0)
            frame = split_frames(frames, data_cfg)["test"]
    except (pl.exceptions.ColumnNotFoundError, pl.exceptions.SchemaError, OSError):
        return None
    return frame["label"].to_numpy(), frame[ORACLE_COLUMN].to_numpy()
